"""The plugin's settings: one table of options (:data:`OPTIONS`) from which the command-line flags, the ini keys
and the resolver are made.

Each option ``name`` has the flag ``--cem-<name with dashes>`` and the ini key ``cem_<name>``. A setting is taken
from the first source that gives it (``is not None``; a value of 0 or False counts as given)::

    @pytest.mark.cem(name=...)  >  --cem-name  >  ini cem_name  >  the option's default

Only the options with ``engine=True`` (they are :func:`cem_checks.compute_cem` arguments) can be set by the
marker; the marker also accepts every other keyword-only argument of ``compute_cem`` (``task``, ``roi``,
``block_size``, ...), passed through to it. Relative paths are resolved against the folder pytest was invoked
from (command line), the folder of the ini file (ini) or the rootdir (marker and default).

This module imports no torch: its defaults and value checks come from :mod:`cem_checks.constants` (standard
library only), and a bad value raises :class:`cem_checks.errors.SettingsError` (torch-free too); only
:func:`engine_keywords` imports the engine, when called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from cem_checks.constants import (
    DEFAULT_BASELINE_DIR,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_MAX_IMAGE_PX,
    DEFAULT_MODE,
    DEFAULT_SEED,
    DEVICE_NAMES,
    DEVICE_RE,
    MODES,
)

__all__ = ["OPTIONS", "CEMSettings", "Option", "Sources", "engine_keywords", "marker_kwargs", "resolve_settings"]

SOURCES = ("marker", "cli", "ini", "default")


def _settings_error(message: str) -> Exception:
    from cem_checks.errors import SettingsError

    return SettingsError(message)


# ------------------------------------------------------------------------------------------ converters
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _device(value: Any, where: str) -> str:
    text = str(value).strip().lower() if isinstance(value, str) or type(value).__name__ == "device" else None
    if text is None or not DEVICE_RE.match(text):
        raise _settings_error(
            f"{where}={value!r} is not a device; expected {DEVICE_NAMES} (e.g. {where}=cpu)."
        )
    return text


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def convert(value: Any, where: str) -> str:
        if value not in choices:
            raise _settings_error(
                f"{where}={value!r} is not available; expected one of {', '.join(map(repr, choices))}."
            )
        return value

    return convert


def _int_at_least(low: int) -> Callable[[Any, str], int]:
    def convert(value: Any, where: str) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _settings_error(f"{where}={value!r} must be an integer >= {low}, e.g. {where}={max(low, 0)}.")
        return value

    return convert


def _batch_size(value: Any, where: str) -> int | str:
    if value == "auto":
        return "auto"
    try:
        return _int_at_least(1)(value, where)
    except Exception:
        raise _settings_error(
            f"{where}={value!r} must be 'auto' or an integer >= 1 (images per forward pass), e.g. {where}=8."
        ) from None


def _image_px(value: Any, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _settings_error(
            f"{where}={value!r} is not a size in pixels; expected an integer >= 0 (the longest side of the input "
            f"and output images embedded per map; 0 embeds none), e.g. {where}={DEFAULT_MAX_IMAGE_PX} or {where}=0."
        )
    return value


def _shard(value: Any, where: str) -> tuple[int, int]:
    """``"K/N"`` (or a pair ``(K, N)``): shard K of N, counted from 0 (``0 <= K < N``)."""
    pair = None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        pair = (int(m.group(1)), int(m.group(2))) if m else None
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    if pair is None or pair[1] < 1 or not 0 <= pair[0] < pair[1]:
        k_text = f" (K={pair[0]} is not below N={pair[1]})" if pair is not None and pair[1] >= 1 and pair[0] >= 0 else ""
        raise _settings_error(
            f"{where}={value!r} is not a shard{k_text}; expected K/N with N >= 1 and 0 <= K < N (shard K of N, counted "
            f"from 0: the machines of a CI matrix of N jobs pass 0/N, 1/N, ..., (N-1)/N), e.g. {where}=0/2."
        )
    return pair


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _settings_error(f"{where}={value!r} is not a boolean; expected true or false.")


def _path(value: Any, where: str) -> str:
    import os

    if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
        raise _settings_error(f"{where}={value!r} must be a non-empty path, e.g. {where}=cem-results.json.")
    return str(value)


def _patches(value: Any, where: str) -> Any:
    """A path to a patch bank (.npy or a folder of images), or (marker only) any patch source of the engine."""
    import os

    if isinstance(value, (str, os.PathLike)):
        return _path(value, where)
    return value


# ------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Option:
    """One setting of the plugin.

    ``convert(value, where)`` checks a value from any source and returns it typed (``where`` names the source
    in error messages). ``flag``: a switch (``--cem-x`` takes no value). ``engine``: an argument of
    ``compute_cem`` that ``@pytest.mark.cem`` may set. ``path``: a path resolved against its source's folder.
    """

    name: str
    help: str
    convert: Callable[[Any, str], Any]
    default: Any = None
    flag: bool = False
    engine: bool = False
    path: bool = False
    metavar: str | None = None

    @property
    def cli(self) -> str:
        return "--cem-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "cem_" + self.name

    @property
    def dest(self) -> str:
        return "cem_" + self.name

    def help_text(self) -> str:
        default = "off" if self.flag and not self.default else self.default
        marker = f"; @pytest.mark.cem({self.name}=...) wins" if self.engine else ""
        return f"{self.help} (default: {default}; ini: {self.ini}{marker})"


OPTIONS: tuple[Option, ...] = (
    Option("device", "device of the maps: auto, cpu, cuda, cuda:N or mps; tests asking for an absent device are "
           "skipped", _device, DEFAULT_DEVICE, engine=True, metavar="DEVICE"),
    Option("mode", "estimation procedure: fast (same estimand, less compute) or paper (the published one)",
           _choice(*MODES), DEFAULT_MODE, engine=True, metavar="MODE"),
    Option("seed", "seed of every random draw of the maps", _int_at_least(0), DEFAULT_SEED, engine=True, metavar="N"),
    Option("batch_size", "images per forward pass: auto or an integer", _batch_size, DEFAULT_BATCH_SIZE, engine=True,
           metavar="N"),
    Option("cache_dir", "folder of resumable partial maps", _path, None, engine=True, path=True, metavar="DIR"),
    Option("threads", "torch intra-op threads while a map runs; default: unchanged, except that each pytest-xdist "
           "worker takes max(1, cores // workers)", _int_at_least(1), None, engine=True, metavar="N"),
    Option("patches", "natural patch bank: an .npy of (N, h, w, 3) uint8 patches or a folder of images",
           _patches, None, engine=True, path=True, metavar="PATH"),
    Option("report", "write the HTML report of the causal properties here", _path, None, path=True,
           metavar="PATH"),
    Option("json", "write the maps and property outcomes of every test to this JSON file", _path, None,
           path=True, metavar="PATH"),
    Option("report_all", "list passing properties in the report too", _flag, False, flag=True),
    Option("report_max_image_px", "longest side (px) of the model input and output images embedded per map in the "
           "HTML report and the JSON results (larger images are downscaled); 0 embeds none", _image_px,
           DEFAULT_MAX_IMAGE_PX, metavar="N"),
    Option("baseline_dir", "folder of the regression baselines of cem_baseline", _path, DEFAULT_BASELINE_DIR,
           path=True, metavar="DIR"),
    Option("regen", "rewrite the regression baselines that differ (those tests still fail)", _flag, False,
           flag=True),
    Option("regen_all", "rewrite every regression baseline (those tests pass)", _flag, False, flag=True),
    Option("trust_checkpoints", "let cem_load_model unpickle whole modules (this runs code stored in the file)",
           _flag, False, flag=True),
    Option("junit_maps", "write each test's full map records (per-block grids, images) into --junitxml; by default "
           "only scalar summaries (support radius, counts, effect range, base PSNR, passes)", _flag, False, flag=True),
    Option("shard", "run shard K of N (counted from 0) of the session: the tests, split by a hash of their node id "
           "(the others are deselected), and the items of every cem_sweep, whose tests run on every shard, each "
           "computing its part; `cem report merge` joins the shards' --cem-json results into the whole session",
           _shard, None, metavar="K/N"),
    Option("shard_by", "how --cem-shard splits a sweep: item (one by one, index mod N == K) or image (every ROI of an "
           "image on one shard, so they keep sharing their forwards)", _choice("item", "image"), "item",
           metavar="item|image"),
    Option("shard_scope", "what --cem-shard splits: session (the tests and the items of every cem_sweep), sweeps (the "
           "items of every cem_sweep only, when another plugin splits the tests: pytest-split keeps the cem_sweep "
           "tests on every machine) or auto (sweeps when pytest-split's --splits or pytest-shard's --num-shards "
           "splits the session, else session)", _choice("auto", "session", "sweeps"), "auto",
           metavar="auto|session|sweeps"),
)
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class CEMSettings:
    """Resolved settings of one test (or of the session, without a marker).

    One field per option of :data:`OPTIONS` (paths as absolute strings); ``engine_extra``: the other
    ``compute_cem`` arguments given by the marker (``task``, ``roi``, ...); ``sources``: where each option came
    from (``"marker"``, ``"cli"``, ``"ini"`` or ``"default"``).
    """

    device: str
    mode: str
    seed: int
    batch_size: int | str
    cache_dir: str | None
    threads: int | None
    patches: Any
    report: str | None
    json: str | None
    report_all: bool
    report_max_image_px: int
    baseline_dir: str
    regen: bool
    regen_all: bool
    trust_checkpoints: bool
    junit_maps: bool
    shard: tuple[int, int] | None
    shard_by: str
    shard_scope: str
    engine_extra: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @property
    def regen_mode(self) -> str | None:
        """The ``regen`` argument of :func:`cem_checks.compare_to_baseline`: ``"all"``, ``"mismatch"`` or None."""
        return "all" if self.regen_all else "mismatch" if self.regen else None

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`cem_checks.compute_cem`: the engine options, then the marker's others."""
        kw = {o.name: getattr(self, o.name) for o in OPTIONS if o.engine}
        kw.update(self.engine_extra)
        return kw

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict (non-JSON values, e.g. a patch array given by the marker, as their repr)."""
        def safe(v: Any) -> Any:
            if isinstance(v, tuple) and all(isinstance(x, (bool, int, float, str)) for x in v):
                return list(v)  # e.g. the shard (K, N)
            return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

        rec = {f.name: safe(getattr(self, f.name)) for f in fields(self) if f.name not in ("engine_extra", "sources")}
        rec["engine_extra"] = {k: safe(v) if not isinstance(v, (list, tuple)) else [safe(x) for x in v]
                               for k, v in self.engine_extra.items()}
        rec["sources"] = dict(self.sources)
        return rec


@dataclass(frozen=True)
class Sources:
    """The raw values of the command line and the ini file (None: not given) and the folders relative paths
    are resolved against."""

    cli: Mapping[str, Any]
    ini: Mapping[str, Any]
    cli_dir: Path
    ini_dir: Path
    root_dir: Path

    @classmethod
    def from_config(cls, config: Any) -> "Sources":
        cli = {o.name: config.getoption(o.dest, None) for o in OPTIONS}
        ini = {}
        for o in OPTIONS:
            value = config.getini(o.ini)
            # pytest < 8 reports an unset string key as "" instead of the default None
            ini[o.name] = None if value == "" else value
        inipath = getattr(config, "inipath", None)
        root = Path(config.rootpath)
        return cls(
            cli=cli,
            ini=ini,
            cli_dir=Path(config.invocation_params.dir),
            ini_dir=Path(inipath).parent if inipath is not None else root,
            root_dir=root,
        )


def _where(option: Option, source: str) -> str:
    return {"marker": f"@pytest.mark.cem({option.name})", "cli": option.cli, "ini": f"ini {option.ini}"}.get(
        source, f"default {option.name}"
    )


def resolve_settings(sources: Sources, marker: Mapping[str, Any] | None = None) -> CEMSettings:
    """Apply ``marker > CLI > ini > default`` (``is not None``) to every option and convert the values.

    ``marker`` holds the keywords of ``@pytest.mark.cem`` (already checked by :func:`marker_kwargs`); those that
    are not options go to :attr:`CEMSettings.engine_extra`. Raises :class:`cem_checks.errors.SettingsError` on a
    bad value, naming its source.
    """
    marker = dict(marker or {})
    values: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for o in OPTIONS:
        layers = (
            ("marker", marker.get(o.name) if o.engine else None, sources.root_dir),
            ("cli", sources.cli.get(o.name), sources.cli_dir),
            ("ini", sources.ini.get(o.name), sources.ini_dir),
            ("default", o.default, sources.root_dir),
        )
        for source, raw, base in layers:
            if raw is not None or source == "default":
                break
        value = None if raw is None else o.convert(raw, _where(o, source))
        if o.path and isinstance(value, str):
            value = str((base / Path(value).expanduser()).resolve())
        values[o.name] = value
        chosen[o.name] = source
    extra = {k: v for k, v in marker.items() if k not in OPTIONS_BY_NAME}
    return CEMSettings(**values, engine_extra=extra, sources=chosen)


# ------------------------------------------------------------------------------------------ the marker
def keyword_only(func: Any) -> tuple[str, ...]:
    """The names of the keyword-only arguments of ``func``, in order."""
    import inspect

    return tuple(name for name, p in inspect.signature(func).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


def engine_keywords() -> tuple[str, ...]:
    """The keyword-only arguments of :func:`cem_checks.compute_cem`: what ``@pytest.mark.cem`` and ``cem(...)``
    accept."""
    from cem_checks import compute_cem

    return keyword_only(compute_cem)


def marker_kwargs(markers: list) -> dict[str, Any]:
    """Merge the ``cem`` markers of a test (closest first, as ``item.iter_markers("cem")`` gives them: the closest
    wins) and check them: keywords only, each one a ``compute_cem`` argument."""
    allowed = engine_keywords()
    merged: dict[str, Any] = {}
    for m in reversed(markers):
        if m.args:
            raise _settings_error(
                f"@pytest.mark.cem got positional arguments {m.args!r}; it takes keywords only, e.g. "
                "@pytest.mark.cem(task='dn50', roi=(40, 40, 16))."
            )
        unknown = sorted(set(m.kwargs) - set(allowed))
        if unknown:
            raise _settings_error(
                f"@pytest.mark.cem got unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}. Fix the spelling, or pass other settings on the command "
                "line (pytest --help lists the --cem-* options)."
            )
        merged.update(m.kwargs)
    return merged
