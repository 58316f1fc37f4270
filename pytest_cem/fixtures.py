"""The plugin's fixtures: thin shims over :mod:`cem_checks` bound to the resolved settings of each test.

- ``cem``: ``cem(model, image, **engine_kwargs) -> LazyMap``: the map of :func:`cem_checks.compute_cem` with the
  test's settings (call keywords > marker > CLI > ini > default), computed stage by stage on first need
  (:mod:`cem_checks.lazy`), and recorded for the report with what ran;
- ``cem_sweep``: ``cem_sweep(model, images, rois=..., **kwargs) -> Sweep``: :func:`cem_checks.sweeps.sweep` over
  many (image, ROI) items with the same settings precedence as ``cem`` (``--cem-shard K/N`` computes shard K of N
  of the items), recorded for the report with the assertions made over it (``check_over`` / ``assert_over``);
- ``cem_settings``: the test's :class:`~pytest_cem.options.CEMSettings`;
- ``cem_device``: the ``torch.device`` of the test (skips the test when that device is absent);
- ``cem_patches``: the natural patch bank (``--cem-patches`` or the bundled one);
- ``cem_images``: the bundled natural images, name -> path;
- ``cem_load_model``: ``cem_load_model(path, arch=None, trust=None)`` (see :mod:`cem_checks.loading`);
- ``cem_baseline``: ``cem_baseline(result, name=None, **kwargs)`` asserts that the map matches its stored
  regression baseline (created when missing; ``--cem-regen`` / ``--cem-regen-all`` rewrite).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from .options import CEMSettings, engine_keywords, keyword_only
from .session import BASELINE_OWNERS_KEY, PATCH_CACHE_KEY, records_for, settings_for, summary_image_px


def _patch_bank(config: pytest.Config, source: Any):
    """The patch bank of ``source`` (None: the bundled bank), loaded once per session for a path or None."""
    from cem_checks import load_patches

    if source is not None and not isinstance(source, str):
        return load_patches(source)
    cache = config.stash.setdefault(PATCH_CACHE_KEY, {})
    if source not in cache:
        cache[source] = load_patches(source)
    return cache[source]


def _progress_lines(config: pytest.Config):
    """Where a map's progress goes in a pytest run: log lines through the terminal reporter (a long map writes
    one per stage and at most one every 10 s, see :mod:`cem_checks.progress`), or nowhere under ``-q`` and in
    pytest-xdist workers (their terminal output is not shown)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0 or hasattr(config, "workerinput"):
        return False
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        return reporter.write_line

    def write(line: str) -> None:
        # during the test pytest captures its output (at the file-descriptor level by default): suspend that, as
        # pytest's own live logging does, so the line reaches the terminal or the CI log, not the test's capture
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return write


class CEMRunner:
    """``cem(model, image, **kwargs)``: the map of :func:`cem_checks.compute_cem` with the test's settings, as a
    :class:`cem_checks.LazyMap` whose stages run on first need: a receptive-field assertion runs only the support
    stage (a few group tests), anything else the full map (reusing those tests). ``kwargs`` are any keyword
    arguments of ``compute_cem`` and win over the settings; they are checked at once. What ran is recorded for
    the report at the end of the test. ``results`` lists the maps of this test."""

    def __init__(self, item: pytest.Item, settings: CEMSettings, device: Any):
        self._item = item
        self.settings = settings
        self.device = device
        self.results: list = []

    def __call__(self, model: Any, image: Any, **kwargs: Any):
        from cem_checks import LazyMap
        from cem_checks.engine import Job
        from cem_checks.errors import SettingsError

        allowed = engine_keywords()
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise SettingsError(
                f"cem(...) got unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed))} (the keyword arguments of cem_checks.compute_cem)."
            )
        kw = self.settings.engine_kwargs()
        kw["device"] = self.device
        kw["progress"] = _progress_lines(self._item.config)
        kw.update(kwargs)
        for required, example in (("task", "task='dn50'"), ("roi", "roi=(40, 40, 16)")):
            if kw.get(required) is None:
                raise SettingsError(
                    f"cem(...) needs {required}, and neither the call nor @pytest.mark.cem gave it; pass "
                    f"cem(model, image, {example}) or mark the test @pytest.mark.cem({example})."
                )
        if "patches" not in kwargs:
            kw["patches"] = _patch_bank(self._item.config, kw.get("patches"))
        result = LazyMap(Job(model, image, **kw))
        records_for(self._item).pending.append((result, summary_image_px(self.settings, self._item.config)))
        self.results.append(result)
        return result


def sweep_keywords(stage: str | None = None) -> tuple[str, ...]:
    """What ``cem_sweep(...)`` accepts: the keyword-only arguments of :func:`cem_checks.sweeps.sweep` (``task``,
    ``rois``, ``stage``, ``shard``, ...) and those of the maps of ``stage`` (:func:`cem_checks.compute_cem` for
    ``"map"``, :func:`cem_checks.compute_support` for ``"support"``, both for None), but ``roi``."""
    from cem_checks import compute_cem, compute_support
    from cem_checks.sweeps import sweep

    maps = {"map": (compute_cem,), "support": (compute_support,)}.get(stage, (compute_cem, compute_support))
    names = dict.fromkeys(keyword_only(sweep) + tuple(n for f in maps for n in keyword_only(f)))
    names.pop("roi", None)
    return tuple(names)


class SweepRunner:
    """``cem_sweep(model, images, rois=..., **kwargs)``: :func:`cem_checks.sweeps.sweep` with the test's settings
    (call keywords > ``@pytest.mark.cem`` > ``--cem-*`` > ini > defaults, as ``cem``), returning the
    :class:`cem_checks.sweeps.Sweep`. ``kwargs`` are the keyword arguments of ``sweep`` (``task``, ``stage``,
    ``workers``, ``executor``, ``context_radius``, ...) and of ``compute_cem`` (``block_size``, ``mode``, ...), but
    not ``roi``: a sweep's ROIs are ``rois`` (a marker's ``roi`` is left out). ``--cem-shard K/N`` (ini
    ``cem_shard``) passes ``shard=(K, N)`` unless the call gives ``shard=``. Each sweep is recorded for the report
    at the end of the test, with the assertions made over it (``check_over`` / ``assert_over``) and the maps of
    their worst items. ``sweeps`` lists the sweeps of this test."""

    def __init__(self, item: pytest.Item, settings: CEMSettings, device: Any):
        self._item = item
        self.settings = settings
        self.device = device
        self.sweeps: list = []

    def __call__(self, model: Any, images: Any, rois: Any = None, **kwargs: Any):
        from cem_checks.errors import SettingsError
        from cem_checks.sweeps import sweep

        if "roi" in kwargs:
            raise SettingsError(
                f"cem_sweep(...) got roi={kwargs['roi']!r}; a sweep takes rois=: a list of (x, y, size) used for every "
                "image, or a callable image -> list, e.g. rois=cc.roi_grid((64, 64), 16) or "
                "rois=lambda image: cc.roi_sample(image, 4, 16, texture='flat').")
        allowed = set(sweep_keywords())
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise SettingsError(
                f"cem_sweep(...) got unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed))} (the keyword arguments of cem_checks.sweeps.sweep and, but roi, of "
                "cem_checks.compute_cem and compute_support).")
        # the settings' values that the stage's maps take (a marker's roi is cem(...)'s: a sweep's ROIs are rois=;
        # mode, coarse, ... are no arguments of the support stage)
        stage_keys = set(sweep_keywords(kwargs.get("stage", "map")))
        kw = {k: v for k, v in self.settings.engine_kwargs().items() if k in stage_keys}
        if "devices" not in kwargs:
            kw["device"] = self.device
        kw["progress"] = _progress_lines(self._item.config)
        if self.settings.shard is not None:
            kw["shard"] = tuple(self.settings.shard)
            kw["shard_by"] = self.settings.shard_by
        kw.update(kwargs)
        if rois is not None:
            kw["rois"] = rois
        if kw.get("task") is None:
            raise SettingsError(
                "cem_sweep(...) needs task, and neither the call nor @pytest.mark.cem gave it; pass "
                "cem_sweep(model, images, rois=..., task='dn50') or mark the test @pytest.mark.cem(task='dn50').")
        if kw.get("rois") is None:
            raise SettingsError(
                "cem_sweep(...) needs rois: a list of (x, y, size) in output px used for every image, or a callable "
                "image -> list; e.g. cem_sweep(model, images, rois=[(8, 8, 16), (40, 40, 16)]) or "
                "rois=lambda image: cc.roi_sample(image, 4, 16, texture='flat').")
        # the patch bank's source (None: the bundled bank, or a path) goes as it is: the sweep's settings describe it
        result = sweep(model, images, **kw)
        records_for(self._item).pending_sweeps.append((result, summary_image_px(self.settings, self._item.config)))
        self.sweeps.append(result)
        if not len(result) and result.shard is not None:
            # more shards than items: this shard has nothing to assert over (recorded, so a merge is complete)
            k, n = result.shard
            pytest.skip(f"shard {k}/{n} of this sweep holds none of its {result.settings.get('n_items')} items (items "
                        f"go to shard index % {n}); the other shards compute them")
        return result


@pytest.fixture
def cem_settings(request: pytest.FixtureRequest) -> CEMSettings:
    """The resolved settings of this test: ``@pytest.mark.cem`` > ``--cem-*`` > ini ``cem_*`` > defaults."""
    return settings_for(request.node)


@pytest.fixture
def cem_device(cem_settings: CEMSettings):
    """The ``torch.device`` of this test's maps; skips the test when this machine lacks that device.

    Under pytest-xdist with several GPUs, ``cuda`` (or ``auto``) without an index puts worker ``gwN`` on
    ``cuda:{N % gpu_count}``, spreading the workers over the GPUs."""
    import os

    import torch

    from cem_checks import resolve_device, spread_device
    from cem_checks.errors import DeviceError

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = spread_device(cem_settings.device, os.environ.get("PYTEST_XDIST_WORKER"), gpus)
    try:
        return resolve_device(device)
    except DeviceError as exc:
        pytest.skip(f"cem device {cem_settings.device!r} is not available: {exc}")


@pytest.fixture
def cem_patches(request: pytest.FixtureRequest, cem_settings: CEMSettings):
    """The natural patch bank (:class:`cem_checks.PatchBank`) of this test: ``--cem-patches`` or the bundled one."""
    return _patch_bank(request.config, cem_settings.patches)


@pytest.fixture(scope="session")
def cem_images() -> dict[str, Path]:
    """The bundled natural images (name -> path of a PNG); see ``cem_checks/data/NOTICE.md``."""
    from cem_checks import bundled_images

    return dict(bundled_images())


@pytest.fixture
def cem(request: pytest.FixtureRequest, cem_settings: CEMSettings, cem_device: Any) -> CEMRunner:
    """``cem(model, image, roi=..., task=...) -> CEMResult``: a causal effect map with this test's settings,
    recorded (with every property checked during the test) for the report."""
    return CEMRunner(request.node, cem_settings, cem_device)


@pytest.fixture
def cem_sweep(request: pytest.FixtureRequest, cem_settings: CEMSettings, cem_device: Any) -> SweepRunner:
    """``cem_sweep(model, images, rois=..., task=...) -> Sweep``: causal effect maps (or support stages) of every
    (image, ROI) item with this test's settings (:func:`cem_checks.sweeps.sweep`; ``--cem-shard K/N`` computes shard
    K of N), recorded with the assertions made over it (``check_over`` / ``assert_over``) for the report."""
    return SweepRunner(request.node, cem_settings, cem_device)


@pytest.fixture
def cem_load_model(cem_settings: CEMSettings):
    """``cem_load_model(path, arch=None, trust=None) -> nn.Module`` (eval mode, CPU): TorchScript, a state_dict
    with ``arch`` (or spandrel), safetensors; whole pickled modules only with ``trust=True`` or
    ``--cem-trust-checkpoints``. See :mod:`cem_checks.loading`."""
    from cem_checks.loading import load_model

    def load(path: Any, arch: Any = None, *, trust: bool | None = None):
        return load_model(path, arch, trust=cem_settings.trust_checkpoints if trust is None else trust)

    return load


def _safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``_``, ``.`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "_"


def baseline_name(text: str) -> str:
    """A file name for ``text`` (a test name or a baseline's ``name=``), one per text: ``text`` itself when it is
    made of letters, digits, ``_``, ``.`` and ``-`` only; else the sanitised text (:func:`_safe_name`) plus ``-``
    and the first 8 hex digits of the SHA-256 of ``text`` (``"test_x[model A]"`` -> ``"test_x_model_A-<hash>"``),
    so ids that sanitise alike, such as ``"model A"`` and ``"model/A"``, get different files."""
    if re.fullmatch(r"[\w.-]+", text):
        return text
    return f"{_safe_name(text)}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def _owner(nodeid: str, name: str | None) -> str:
    return f"{nodeid!r}" + (f" (name={name!r})" if name else "")


@pytest.fixture
def cem_baseline(request: pytest.FixtureRequest, cem_settings: CEMSettings):
    """``cem_baseline(result, name=None, **kwargs)``: assert that ``result`` matches its regression baseline.

    The baseline lives at ``<baseline_dir>/<test file path without .py>/<test name>[-<name>]`` (``.npz`` +
    ``.json``, see :mod:`cem_checks.baseline`; names made file-safe by :func:`baseline_name`); ``kwargs`` go to
    :func:`cem_checks.compare_to_baseline` (``atol_db``, ``use_ci``, ``compare_support``). A missing baseline is
    created and the test fails saying so; ``--cem-regen`` rewrites baselines that differ, ``--cem-regen-all``
    every baseline. Returns the outcome.

    Raises :class:`cem_checks.errors.BaselineError` when another test of the session (of this process, under
    pytest-xdist) already used the same file (compared case-insensitively: the files must stay apart on
    case-insensitive file systems too), and when this baseline is missing but the file an earlier pytest-cem
    named it (by sanitising alone, which could give two tests one file) exists: rename that file or regenerate.
    """
    from cem_checks import assert_matches_baseline
    from cem_checks.baseline import baseline_paths
    from cem_checks.errors import BaselineError, SettingsError

    item = request.node
    module = Path(str(item.nodeid).split("::")[0])
    folder = Path(cem_settings.baseline_dir) / module.parent / module.stem
    used = records_for(item).baseline_names
    owners = item.config.stash.setdefault(BASELINE_OWNERS_KEY, {})

    def check(result: Any, name: str | None = None, **kwargs: Any):
        __tracebackhide__ = True
        if "regen" in kwargs:
            raise SettingsError("cem_baseline takes no regen=; use pytest --cem-regen or --cem-regen-all.")
        if name is not None and not isinstance(name, str):
            raise SettingsError(f"name={name!r} must be a string naming the baseline within the test, e.g. 'roi_a'.")
        key = name or ""
        if key in used:
            raise SettingsError(
                f"cem_baseline was already called{f' with name={name!r}' if name else ' without a name'} in this test; "
                "give each baseline of a test its own name=, e.g. cem_baseline(result, name='roi_b')."
            )
        stem = folder / (baseline_name(item.name) + (f"-{baseline_name(name)}" if name else ""))
        owner = _owner(item.nodeid, name)
        first = owners.setdefault(str(stem).casefold(), (owner, stem))
        if first[0] != owner:
            case = "" if first[1].name == stem.name else (
                f" ({first[1].name} and {stem.name} differ in letter case only, and case-insensitive file systems "
                "hold them as one file)")
            raise BaselineError(
                f"cem_baseline: {owner} and {first[0]} resolve to the same baseline file {stem}.npz{case}; one would "
                "compare against, and --cem-regen overwrite, the other's map. Give one of the two tests a baseline "
                "name of its own, e.g. cem_baseline(result, name='alt')."
            )
        used.add(key)
        legacy = folder / (_safe_name(item.name) + (f"-{_safe_name(name)}" if name else ""))
        if (cem_settings.regen_mode is None and legacy != stem and str(legacy).casefold() not in owners
                and not any(p.exists() for p in baseline_paths(stem))):
            found = [p for p in baseline_paths(legacy) if p.exists()]
            if found:
                new_npz, new_json = (shlex.quote(str(p)) for p in baseline_paths(stem))
                old_npz, old_json = (shlex.quote(str(p)) for p in baseline_paths(legacy))
                raise BaselineError(
                    f"cem_baseline: {owner} has no baseline at {baseline_paths(stem)[0]}, but {found[0]} exists: "
                    "the name earlier pytest-cem versions gave it by sanitising the test id alone, which can give "
                    "two tests one file (e.g. ids 'model A' and 'model/A'). If that file is this test's baseline, "
                    "rename it: "
                    f"mv {old_npz} {new_npz}; mv {old_json} {new_json} (git mv under version control); else run "
                    "pytest --cem-regen to create this test's own baseline."
                )
        return assert_matches_baseline(result, stem, regen=cem_settings.regen_mode, **kwargs)

    return check
