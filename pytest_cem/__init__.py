"""pytest-cem: the pytest glue (options, marker, fixtures, hooks) over :mod:`cem_checks`."""

__all__ = ["__version__"]
__version__ = "0.1.0"
