"""The sweep itself: :func:`sweep` (the maps of every item, in this process, on a local pool or on an executor;
sharded, cached and resumable)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from ..errors import CEMInputError, ImageError, describe_value, validate_int
from .execution import _forward_passes_spent, _load_item, _local_pool, _Progress, _resolve_devices, _run, \
    _validate_progress, _write_item
from .items import _EXECUTION, SWEEP_CACHE_VERSION, _image_list, _key_value, _make_items, _settings_value, \
    _validate_kwargs
from .rois import _energies_mixed, _luma
from .table import SHARD_BY, STAGES, Sweep, SweepItem, _json_safe, _validate_shard


def sweep(model: Any, images: Any, *, task: Any, rois: Any, stage: str = "map", workers: int | None = None,
          devices: Any = None, executor: Executor | None = None, shard: tuple[int, int] | None = None,
          shard_by: str = "item",
          cache_dir: str | os.PathLike | None = None, context_radius: float | None = None, progress: Any = None,
          **compute_cem_kwargs: Any) -> Sweep:
    """Causal effect maps (or their support stage alone) of every ROI of every image, and their table.

    Args:
        model: as :func:`~cem_checks.compute_cem`; with workers or an executor it is pickled to them.
        images: a folder (its image files, sorted by name), an image path, a list of paths, PIL images, HxWxC
            arrays or CxHxW tensors, or a dict name -> image. Names: the file stem, the dict key, or
            ``"image<k>"`` for the k-th non-path entry of a list.
        task: as :func:`~cem_checks.compute_cem` (``"dn25"``, ``cem_checks.SuperResolution(4)``, ...).
        rois: a list of ``(x, y, size)`` (output px) used for every image, or a callable receiving each clean
            image as a float (3, H, W) tensor in [0, 1] and returning its list (e.g. :func:`roi_sample`).
            Every ROI must lie inside its image as the engine trims it (whole blocks tile the input) and be
            aligned with the task's scale (:class:`~cem_checks.errors.ROIError` naming the image and the ROI).
            An error raised by the callable becomes a :class:`~cem_checks.errors.ROIError` naming the image and
            the callable (the original is its ``__cause__``). A ROI repeated for one image is kept once, with a
            :class:`~cem_checks.errors.DuplicateROIWarning` naming it (twice, it would count twice in the table
            and in every statistic over it).
        stage: ``"map"`` (:func:`~cem_checks.compute_cem` per item) or ``"support"``
            (:func:`~cem_checks.compute_support`, ``within`` None unless given: the support radius).
        workers: run the images on a local process pool (spawn) of that many CPU processes, each with torch
            threads ``max(1, cores // workers)`` unless ``threads`` is given.
        devices: ``"all"`` (one worker per CUDA device) or a list of devices; with ``workers`` too, the workers
            take the devices round-robin. Each worker runs its maps on its device (so ``device=`` is refused).
        executor: any :class:`concurrent.futures.Executor` (e.g. ``distributed.Client(...).get_executor()``):
            :func:`run_image` is submitted per image; not shut down by the sweep. Thread-based executors share the
            model object between their threads: keep such a model on one device.
            Without workers, devices or executor the maps run in this process, one after the other.
        shard: ``(K, N)``: only the items whose index is K modulo N (:attr:`Sweep.shard`); merge the shards
            with :meth:`Sweep.merge`.
        shard_by: ``"item"`` (default: items split one by one, index % N == K, the most even split) or
            ``"image"`` (whole images, position in ``images`` % N == K: every ROI of an image on one shard, so the
            ROIs keep sharing their forwards; uneven when images hold different numbers of ROIs).
        cache_dir: resumable sweeps: each finished item is written atomically to
            ``<cache_dir>/sweep-<key>/item-<index>.npz`` (``key``: a hash of the model's weights (or
            ``cache_key`` for a plain callable), the task, stage, map settings, patch bank, device type and every
            item's image hash and ROI) and a rerun reads it back instead of computing it; the maps also get
            ``cache_dir``, so an item killed mid-way resumes from its finished chunks of draws. The folder may be
            shared by the workers (and by shards).
        context_radius: radius in input px of the frame's ``context_share_beyond`` column (the share of the
            absolute effect mass beyond it); None (default) leaves that column NaN.
        progress: the sweep's progress over items, counted as each image finishes: True a bar, False nothing,
            None a bar on a terminal and log lines otherwise, or a function receiving those log lines (as a map's
            progress: after 10 s, at most every 10 s, and the last one when the sweep has run that long). The
            maps themselves run silently.
        **compute_cem_kwargs: the keyword arguments of every map (:func:`~cem_checks.compute_cem` for stage
            ``"map"``: ``block_size``, ``mode``, ``seed``, ``coarse``, ``fine``, ``device``, ...;
            :func:`~cem_checks.compute_support` for ``"support"``: ``draws``, ``within``, ``max_tests``, ...).

    Returns:
        a :class:`Sweep`. Caller errors raise before any forward pass: :class:`~cem_checks.errors.ImageError`
        (images), :class:`~cem_checks.errors.ROIError` (rois), :class:`~cem_checks.errors.CEMInputError` (the
        rest), :class:`~cem_checks.errors.DeviceError` (devices).
    """
    t_start = time.perf_counter()
    import torch

    from ..cache import digest
    from ..engine.runner import model_name
    from ..images import load_image
    from ..tasks import describe_task, parse_task

    if stage not in STAGES:
        raise CEMInputError(f"stage={stage!r} is not one of {', '.join(map(repr, STAGES))}: 'map' computes a causal "
                            "effect map per item, 'support' only its exact support stage.")
    if not callable(model):
        raise CEMInputError(f"model {describe_value(model)} is not callable; pass an nn.Module or a function mapping a "
                            "(B, 3, h, w) float tensor in [0, 1] to (B, 3, H, W).")
    shard = None if shard is None else _validate_shard(shard)
    if shard_by not in SHARD_BY:
        raise CEMInputError(f"shard_by={shard_by!r} is not one of {', '.join(map(repr, SHARD_BY))}: 'item' splits the "
                            "items one by one (index % N == K), 'image' keeps every ROI of an image on one shard.")
    _validate_progress(progress)
    if context_radius is not None:
        from ..metrics import validate_radius

        context_radius = validate_radius("context_radius", context_radius)
    kwargs = dict(compute_cem_kwargs)
    full = _validate_kwargs(stage, kwargs)
    task_obj = parse_task(task)
    scale = int(task_obj.scale)
    block = full["block_size"] if full["block_size"] is not None else max(1, 8 // scale)

    # ------------------------------------------------------------------------ how it runs
    if executor is not None and (workers is not None or devices is not None):
        raise CEMInputError("executor= runs the images on your executor, workers= and devices= configure the default "
                            "local pool: pass one or the other.")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise CEMInputError(f"executor={describe_value(executor)} has no submit(); pass a concurrent.futures.Executor "
                            "(e.g. ProcessPoolExecutor(), or distributed.Client(...).get_executor()).")
    if workers is not None:
        workers = validate_int("workers", workers, 1)
    device_list = None
    if devices is not None:
        if "device" in kwargs:
            raise CEMInputError(f"device={kwargs['device']!r} and devices={devices!r} were both given; with devices= "
                                "each worker runs on its own device: drop device=.")
        device_list = _resolve_devices(devices)
    pooled = workers is not None or device_list is not None
    n_workers = workers if workers is not None else (len(device_list) if device_list else None)
    if pooled and kwargs.get("threads") is None:
        from ..engine.runner import usable_cores

        kwargs["threads"] = max(1, usable_cores() // n_workers)

    # ------------------------------------------------------------------------ images and items
    loaded = []
    for name, source in _image_list(images):
        try:
            loaded.append((name, load_image(source)))
        except ImageError as exc:
            raise ImageError(f"image {name!r}: {exc}") from None
    items_all, image_hashes = _make_items(loaded, rois, task_obj, block)
    by_name = dict(loaded)
    position = {name: k for k, (name, _) in enumerate(loaded)}
    selected = [it for it in items_all
                if shard is None or (it[0] if shard_by == "item" else position[it[1]]) % shard[1] == shard[0]]

    # ------------------------------------------------------------------------ settings and cache key
    model_id = None
    cache_key = kwargs.get("cache_key")
    if isinstance(model, torch.nn.Module):
        from ..cache import hash_model

        model_id = hash_model(model)
    elif cache_key is not None:
        model_id = f"key:{cache_key}"
    items_key = digest([(name, image_hashes[name], roi) for _, name, roi in items_all])
    settings = {key: _settings_value(key, full[key]) for key in sorted(full) if key not in _EXECUTION}
    settings.update(
        stage=stage, task=task_obj.name, task_params=_json_safe(describe_task(task_obj)), model=model_name(model),
        model_id=model_id, block_size=block, scale=scale, context_radius_px=context_radius, n_items=len(items_all),
        items_key=items_key, images=[name for name, _ in loaded],
        execution=_json_safe({"device": _settings_value("device", full.get("device")), "workers": n_workers,
                              "devices": device_list, "threads": kwargs.get("threads"),
                              "executor": None if executor is None else type(executor).__name__,
                              "shard_by": shard_by}),
    )
    folder = None
    if cache_dir is not None:
        from ..devices import resolve_device
        from ..engine.cachekey import model_identity
        from ..tasks import task_cache_identity

        device_types = sorted({torch.device(d).type for d in device_list}) if device_list else \
            [resolve_device(full.get("device", "auto")).type]
        material = {"version": SWEEP_CACHE_VERSION, "model": model_identity(model, cache_key),
                    "task": task_cache_identity(task_obj), "stage": stage, "device": device_types,
                    "kwargs": {k: _key_value(k, v) for k, v in sorted(full.items()) if k not in _EXECUTION},
                    "items": [(name, image_hashes[name], list(roi)) for _, name, roi in items_all]}
        key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
        folder = Path(cache_dir) / f"sweep-{key}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CEMInputError(f"cache_dir={str(cache_dir)!r} cannot be created or written: {exc}. Pass a writable "
                                "folder.") from exc
        kwargs["cache_dir"] = str(cache_dir)
        settings["execution"]["cache_key"] = key

    # ------------------------------------------------------------------------ cached items
    call_kwargs = {**kwargs, "task": task_obj, "progress": False}
    if stage == "support":
        call_kwargs.setdefault("within", None)
    tags = {idx: {"index": idx, "image": name, "roi": list(roi), "image_sha256": image_hashes[name],
                  "key": digest(settings["items_key"], idx, name, image_hashes[name], roi)}
            for idx, name, roi in selected}
    results: dict[int, Any] = {}
    if folder is not None:
        for idx, _, _ in selected:
            cached = _load_item(folder / f"item-{idx}.npz", stage, tags[idx])
            if cached is not None:
                results[idx] = cached
    n_cached = len(results)
    todo: dict[str, list] = {}
    for idx, name, roi in selected:
        if idx not in results:
            todo.setdefault(name, []).append((idx, roi))

    # ------------------------------------------------------------------------ run
    bar = _Progress(progress, len(selected), n_cached)
    computed: set[int] = set()

    def on_done(name: str, got: list) -> None:
        for (idx, _), r in zip(todo[name], got):
            results[idx] = r
            computed.add(idx)
            if folder is not None and not (folder / f"item-{idx}.npz").exists():
                _write_item(r, folder / f"item-{idx}.npz")  # the worker's disk may not be this one
        bar.update(len(got))

    own = _local_pool(n_workers, device_list, kwargs.get("threads")) if pooled and todo else None
    failed = True
    try:
        _run(model, todo, by_name, stage, call_kwargs, tags, folder, executor if executor is not None else own, on_done)
        failed = False
    finally:
        bar.close()
        if own is not None:  # after a failure, do not wait for the maps still running
            own.shutdown(wait=not failed, cancel_futures=True)

    order = [idx for idx, _, _ in selected]
    item_of = {idx: (name, roi) for idx, name, roi in selected}
    energies: dict[int, float] = {}
    for name in {item_of[i][0] for i in order}:
        luma = _luma(by_name[name])
        idxs = [i for i in order if item_of[i][0] == name]
        for i, e in zip(idxs, _energies_mixed(luma, [item_of[i][1] for i in idxs])):
            energies[i] = float(e)
    items = [SweepItem(i, item_of[i][0], item_of[i][1], energies[i]) for i in order]
    out = [results[i] for i in order]
    done = [results[i] for i in order if i in computed]
    read = int(sum(r.forward_passes for r in done))
    spent = _forward_passes_spent([(item_of[i][0], results[i]) for i in order if i in computed])
    counts = {"items": len(items), "items_computed": len(done), "items_cached": len(items) - len(done),
              "forward_passes": spent, "forward_passes_saved": read - spent,
              "maps_wall_s": float(sum(r.wall_s for r in done)), "wall_s": time.perf_counter() - t_start}
    return Sweep(items, out, stage, settings, shard, counts)
