"""Typed errors and warnings raised by :mod:`cem_checks`.

Every caller error says what was wrong, the value received, what was expected and how to fix it.
"""

from __future__ import annotations


class CEMError(Exception):
    """Base class of every error raised by cem_checks."""


class CEMInputError(CEMError, ValueError):
    """An argument of the caller is invalid (wrong type, shape, range or combination)."""


class ROIError(CEMInputError):
    """The region of interest does not fit the output image or is not aligned with the scale."""


class PatchBankError(CEMInputError):
    """The natural patch bank is empty, of the wrong shape or of the wrong dtype."""


class ImageError(CEMInputError):
    """The image cannot be read or has an unsupported shape, dtype or range."""


class DeviceError(CEMError, RuntimeError):
    """The requested device is unknown or not available on this machine."""


class ModelError(CEMError, RuntimeError):
    """The model failed when called, or returned an output of the wrong shape or non-finite values."""


class CEMWarning(UserWarning):
    """Base class of warnings emitted by cem_checks."""


class NondeterministicModelWarning(CEMWarning):
    """Two identical forward passes of the model gave different outputs."""


class OutputRangeWarning(CEMWarning):
    """The model's output lies far outside [0, 1] (e.g. 0-255 or [-1, 1]): the outcome clamps it, so the map is
    meaningless unless the model is wrapped to work in [0, 1]."""


class ImageConversionWarning(CEMWarning):
    """The image was converted in a way that changes what a viewer would see (e.g. translucent alpha)."""


def validate_int(name: str, value: object, low: int) -> int:
    """``value`` as an int when it is an integer (Python or numpy, not a bool) >= ``low``; else
    :class:`CEMInputError` naming ``name`` and the value."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise CEMInputError(f"{name}={value!r} must be an integer >= {low}.")
    return int(value)


def describe_value(value: object, limit: int = 80) -> str:
    """A short, single-line description of ``value`` for error messages."""
    text = repr(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        text = f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BaselineError(CEMInputError):
    """A regression baseline file is unreadable, incomplete, of another format version, or wrongly requested."""


class CacheWarning(CEMWarning):
    """A cache file was unreadable or corrupted and is ignored (its work is recomputed)."""


class PrecisionWarning(CEMWarning):
    """Reduced precision (bf16/fp16) moves ROI PSNR by more than the zero threshold; fp32 is the reference."""


class SettingsError(CEMInputError):
    """A setting of the pytest plugin is invalid: a bad option value, ini value or ``@pytest.mark.cem`` keyword."""


class CheckpointError(CEMInputError):
    """A model checkpoint cannot be loaded: unknown format, missing architecture, or mismatched weights."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs full unpickling (it may run arbitrary code) and the caller did not opt in with
    ``trust=True``."""


class ResultsFileError(CEMInputError):
    """A results file (``--cem-json``) cannot be read: missing, not JSON, not a results document, or of another
    format version."""


class DuplicateROIWarning(CEMWarning):
    """A sweep was given the same ROI of an image more than once: it is computed and counted once."""
