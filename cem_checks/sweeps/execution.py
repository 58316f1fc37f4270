"""Running a sweep's maps: :func:`run_image` (the work of one image, what executors run), the local process pool
and its workers, the sweep's cache files of finished items and its progress over items."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import Executor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..errors import CacheWarning, CEMError, CEMInputError, DeviceError, describe_value
from .table import _result_class


def _resolve_devices(devices: Any) -> list[str]:
    import torch

    from ..devices import resolve_device

    if devices == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise DeviceError("devices='all' asks for one worker per CUDA device, but this machine has none "
                              f"(torch {torch.__version__}); use workers=N for N CPU processes, or run without devices=.")
        return [f"cuda:{i}" for i in range(n)]
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Iterable):
        raise CEMInputError(f"devices={describe_value(devices)} must be 'all' (one worker per CUDA device) or a list of "
                            "devices, e.g. ['cuda:0', 'cuda:1'].")
    out = [str(resolve_device(d)) for d in devices]
    if not out:
        raise CEMInputError("devices=[] is empty; pass 'all', a list such as ['cuda:0', 'cuda:1'], or leave it None.")
    return out


# ------------------------------------------------------------------------------------- the workers
#: The device of this process when it is a worker of a sweep's local pool (set by its initializer).
_WORKER_DEVICE: str | None = None


def _init_worker(slots: Any, threads: int | None) -> None:
    """Initializer of a local pool's worker: take a device from ``slots`` (a queue), set torch's threads."""
    global _WORKER_DEVICE
    if slots is not None:
        _WORKER_DEVICE = slots.get()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _write_item(result: Any, path: Path) -> None:
    """Write an item file atomically; a failed write warns and the sweep goes on."""
    try:
        result.save(path)
    except OSError as exc:
        warnings.warn(f"cannot write sweep cache file {str(path)!r} ({exc}); this item is not cached.", CacheWarning,
                      stacklevel=3)


def run_image(model: Any, name: str, image: Any, rois: list, stage: str, kwargs: dict[str, Any], *,
              tags: list | None = None, paths: list | None = None) -> list:
    """The work of one image of a sweep, what executors run: the result of every ROI of ``rois``, in order.

    ``kwargs`` are the keyword arguments of :func:`~cem_checks.compute_cem` (``stage="map"``) or
    :func:`~cem_checks.compute_support` (``stage="support"``; ``within`` None unless given), ``task`` included.
    ``name`` labels errors. ``tags`` (one JSON-safe dict per ROI) are stored as ``result.meta["sweep_item"]``;
    ``paths`` (one per ROI) are where each finished result is written (atomically) as soon as it is done, so a
    killed sweep keeps its finished items. In a worker of a sweep's local device pool, ``device`` is the worker's.
    """
    from ..engine import compute_support
    from ..engine.job import Job, map_many

    kwargs = dict(kwargs)
    if _WORKER_DEVICE is not None:
        kwargs["device"] = _WORKER_DEVICE
    out: list[Any] = [None] * len(rois)

    def finished(j: int, result: Any) -> None:
        if tags is not None:
            result = replace(result, meta={**result.meta, "sweep_item": tags[j]})
        if paths is not None and paths[j] is not None:
            _write_item(result, Path(paths[j]))
        out[j] = result

    if stage == "map":
        # one job per ROI; map_many lets the ROIs read their draws from shared forwards where the draws run on the
        # full input (paper mode; global models in fast mode), with maps identical to separate runs; a map computed
        # alone is written as soon as it is done
        jobs = []
        for roi in rois:
            try:
                jobs.append(Job(model, image, roi=roi, **kwargs))
            except CEMError as exc:
                exc.add_note(f"(sweep: image {name!r}, roi {tuple(roi)})")
                raise
        try:
            map_many(jobs, on_result=finished)
        except CEMError as exc:
            where = f"roi {tuple(rois[0])}" if len(rois) == 1 else f"rois {[tuple(r) for r in rois]}"
            exc.add_note(f"(sweep: image {name!r}, {where})")
            raise
        return out
    for j, roi in enumerate(rois):
        try:
            finished(j, compute_support(model, image, roi=roi, **kwargs))
        except CEMError as exc:
            exc.add_note(f"(sweep: image {name!r}, roi {tuple(roi)})")
            raise
    return out


def _validate_progress(progress: Any) -> None:
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise CEMInputError(f"progress={progress!r} must be True (a bar), False (silent), None (a bar on a terminal, "
                            "log lines otherwise) or a function receiving the log lines.")


class _Progress:
    """The sweep's own progress over items: a tqdm bar, log lines (after 10 s, at most every 10 s), or nothing."""

    def __init__(self, progress: Any, total: int, cached: int):
        from ..progress import LOG_EVERY_S

        self.total, self.done, self.cached = total, cached, cached
        self.t0 = time.monotonic()
        self.last = float("-inf")
        self.every = LOG_EVERY_S
        self.bar = None
        self.write = None
        if progress is True or (progress is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=cached, desc="CEM sweep", unit="item", leave=False, file=sys.stderr)
        elif progress is None:
            self.write = lambda line: print(line, file=sys.stderr, flush=True)
        elif callable(progress):
            self.write = progress

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.write is not None:
            now = time.monotonic()
            if now - self.t0 >= self.every and (now - self.last >= self.every or self.done >= self.total):
                self.write(f"cem sweep: {self.done}/{self.total} items ({self.cached} cached), {now - self.t0:.0f} s")
                self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load_item(path: Path, stage: str, tag: dict) -> Any | None:
    """A cached item written for ``tag``, or None (absent, unreadable or written for another item)."""
    if not path.is_file():
        return None
    try:
        result = _result_class(stage).load(path)
        if result.meta.get("sweep_item", {}).get("key") != tag["key"]:
            raise ValueError("written for another item")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is treated the same way
        warnings.warn(f"ignoring sweep cache file {str(path)!r} ({type(exc).__name__}: {exc}); the item is computed "
                      "again.", CacheWarning, stacklevel=3)
        return None
    return result


def _run(model: Any, todo: dict[str, list], by_name: dict, stage: str, call_kwargs: dict, tags: dict,
         folder: Path | None, pool: Executor | None, on_done: Callable[[str, list], None]) -> None:
    """Run :func:`run_image` for every image of ``todo`` (name -> [(index, roi)]) in this process (``pool``
    None) or on ``pool``; ``on_done(name, results)`` as each image finishes."""

    def args(name: str) -> tuple[tuple, dict]:
        pending = todo[name]
        paths = None if folder is None else [str(folder / f"item-{idx}.npz") for idx, _ in pending]
        return ((model, name, by_name[name], [roi for _, roi in pending], stage, call_kwargs),
                {"tags": [tags[idx] for idx, _ in pending], "paths": paths})

    if pool is None:
        for name in todo:
            a, kw = args(name)
            on_done(name, run_image(*a, **kw))
        return
    futures = {}
    for name in todo:
        a, kw = args(name)
        futures[pool.submit(run_image, *a, **kw)] = name
    try:
        for fut in as_completed(futures):
            on_done(futures[fut], fut.result())  # a worker's error names the image and ROI (run_image)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _forward_passes_spent(done: list) -> int:
    """The forward passes the model ran for ``done`` ((image name, result) pairs): a result read from forwards
    shared with the other ROIs of its image (``meta["shared"]``) counts its image's passes once per image."""
    spent, seen = 0, set()
    for name, r in done:
        shared = (r.meta or {}).get("shared")
        if shared is None:
            spent += int(r.forward_passes)
        elif name not in seen:
            seen.add(name)
            spent += int(shared["image_forward_passes"])
    return spent


def _local_pool(n_workers: int, devices: list[str] | None, threads: int | None) -> Executor:
    """A spawn-context process pool of ``n_workers``; with ``devices``, each worker takes one (round-robin)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    slots = None
    if devices:
        slots = ctx.Queue()
        for k in range(n_workers):
            slots.put(devices[k % len(devices)])
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, threads))
