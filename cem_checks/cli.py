"""The ``cem`` console command: ``cem map`` (one map to .npz), ``cem run`` (a checkpoint's map as an HTML report
or JSON results) and ``cem report`` (the HTML report of one or more JSON results files, merged)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

REPORT_HELP = """\
Render one HTML report from one or more JSON results files (pytest --cem-json, cem run -o FILE.json).
Several files are merged, as the shards of one CI matrix run on different machines: every test, map and property
outcome of every file, in file order, with the summary counts recomputed. A test id present in more than one
file is kept from each and labelled with its source file name, e.g. "test_x.py::test_a [shard-2.json]".
"cem report merge a.json b.json -o report.html" is the same as "cem report a.json b.json -o report.html".
An output ending in .json writes the merged JSON results instead of HTML.
"""


def _parse_roi(text: str) -> tuple[int, int, int]:
    try:
        x, y, s = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: expected X,Y,SIZE in output pixels, e.g. 40,40,16") from None
    return x, y, s


def _max_image_px(text: str) -> int:
    from .reporting.images import DEFAULT_MAX_IMAGE_PX

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"--max-image-px {text!r} is not a size in pixels; expected an integer >= 0 (the longest side of the "
            f"embedded input and output images; 0 embeds none), e.g. --max-image-px {DEFAULT_MAX_IMAGE_PX}"
        )
    return value


def _add_map_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--image", required=True, help="clean image file")
    m.add_argument("--task", required=True, help="sr<scale> | dn<sigma> | dr, e.g. sr4, dn50, dr")
    m.add_argument("--roi", required=True, type=_parse_roi, help="X,Y,SIZE in output pixels")
    m.add_argument("--block-size", type=int, default=None, help="block side in input pixels")
    m.add_argument("--mode", choices=("fast", "paper"), default="fast")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--cache-dir", default=None, help="folder for resumable partial results")
    m.add_argument("--device", default="auto")
    m.add_argument("--patches", default=None, help=".npy patch bank or folder of images")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .reporting.images import DEFAULT_MAX_IMAGE_PX

    parser = argparse.ArgumentParser(prog="cem", description="Causal effect maps of low-level vision models.")
    parser.add_argument("--version", action="version", version=f"cem {__version__}")
    sub = parser.add_subparsers(dest="command")

    m = sub.add_parser("map", help="compute a causal effect map of a TorchScript model and save it (.npz)")
    m.add_argument("--model", required=True, help="TorchScript file (torch.jit.save)")
    _add_map_arguments(m)
    m.add_argument("-o", "--output", required=True, help="where to write the result (.npz)")

    r = sub.add_parser(
        "run", help="compute the map of a checkpoint and write an HTML report (or JSON results)",
        description="Load a checkpoint (TorchScript, safetensors or torch.save state_dict; see "
                    "cem_checks.loading.load_model), compute its causal effect map, optionally check a property, "
                    "and write the HTML report (or JSON results when -o ends in .json). Exit code 0, 1 when the "
                    "checked property fails, 2 for bad input.",
    )
    r.add_argument("--model", required=True, help="checkpoint file: TorchScript, safetensors or torch.save")
    r.add_argument("--arch", default=None, metavar="MODULE:CALLABLE",
                   help="builds the module for a state_dict: a class with from_state_dict or a factory returning "
                        "an nn.Module, e.g. mypkg.nets:build or path/to/nets.py:build (the current folder is "
                        "importable); 'spandrel' detects the architecture")
    r.add_argument("--trust", action="store_true",
                   help="allow full unpickling of a torch.save of a whole module (runs code named in the file; "
                        "the classes it names must be importable, e.g. from the current folder)")
    _add_map_arguments(r)
    r.add_argument("--assert-receptive-field", type=float, default=None, metavar="R",
                   help="check that nothing beyond R input px of the ROI affects it (support radius <= R)")
    r.add_argument("--all", action="store_true", help="open passing properties in the HTML report")
    r.add_argument("--max-image-px", type=_max_image_px, default=DEFAULT_MAX_IMAGE_PX, metavar="N",
                   help="longest side (px) of the model input and output images embedded in the report or JSON "
                        f"(larger ones are downscaled); 0 embeds none (default: {DEFAULT_MAX_IMAGE_PX})")
    r.add_argument("-o", "--output", required=True, help="report.html, or results.json for the JSON results")

    rep = sub.add_parser("report", help="render (and merge) JSON results files into one HTML report",
                         description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("files", nargs="+", metavar="RESULTS.json", help="results files, merged in this order")
    rep.add_argument("-o", "--output", required=True, help="report.html, or merged.json for the merged JSON results")
    rep.add_argument("--all", action="store_true", help="open passing properties in the report")
    return parser


def _error(message: str) -> int:
    print(f"cem: error: {message}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ cem map
def _cmd_map(args: argparse.Namespace) -> int:
    from .errors import CEMError, CheckpointError
    from .loading import CLI_OPTIONS, detect_format, load_model

    try:
        fmt = detect_format(args.model)
        if fmt != "torchscript":
            raise CheckpointError(
                f"--model {args.model!r} is a {'torch.save' if fmt == 'torch' else fmt} checkpoint, not a TorchScript "
                "file; cem map takes a TorchScript file (torch.jit.save). Use cem run --model CKPT [--arch "
                "MODULE:CALLABLE] for other checkpoints."
            )
        model = load_model(args.model, options=CLI_OPTIONS)
        result = _compute(model, args)
    except (CEMError, OSError) as exc:  # bad input, or a file that cannot be read: exit 2, never 1
        return _error(str(exc))
    try:
        path = result.save(args.output)
    except OSError as exc:
        return _error(f"cannot write -o {args.output!r}: {exc}")
    c = result.effect
    print(
        f"map {result.rows}x{result.cols} blocks, base PSNR {result.base_psnr:.2f} dB, effect range "
        f"[{c.min():+.3f}, {c.max():+.3f}] dB, {result.forward_passes} forward passes in {result.wall_s:.1f} s -> {path}"
    )
    return 0


# ------------------------------------------------------------------------------------------ cem run
def _cmd_run(args: argparse.Namespace) -> int:
    from .checks import check_receptive_field_within, with_map_hint
    from .errors import CEMError
    from .loading import CLI_OPTIONS, load_model, resolve_arch
    from .records import map_summary, property_record, record_test, results_document

    out = Path(args.output)
    if args.trust and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that a pickled module's classes import from the current folder
    try:
        arch = resolve_arch(args.arch, option="--arch")
        model = load_model(args.model, arch, trust=args.trust, options=CLI_OPTIONS)
        result = _compute(model, args)
        properties = []
        if args.assert_receptive_field is not None:
            outcome = check_receptive_field_within(result, args.assert_receptive_field)
            properties.append(property_record(with_map_hint(outcome, f"see the map in {out}")))
    except (CEMError, OSError) as exc:  # bad input, or a file that cannot be read: exit 2 (1 is a failed property)
        return _error(str(exc))
    failed = any(not p.get("passed") for p in properties)
    x, y, s = args.roi
    nodeid = f"cem run {Path(args.model).name} on {Path(args.image).name} ({args.task}, ROI {x},{y},{s})"
    summary = map_summary(result, max_image_px=args.max_image_px)
    if summary.get("model") == "RecursiveScriptModule":  # a TorchScript archive: name the scripted class
        summary["model"] = str(getattr(model, "original_name", "") or Path(args.model).name)
    entry = record_test(nodeid, outcome="failed" if failed else "passed", duration_s=result.wall_s,
                        maps=[summary], properties=properties,
                        message="\n".join(p.get("message") or "" for p in properties if not p.get("passed")) or None)
    settings = {
        "model_file": str(args.model), "arch": args.arch, "image": str(args.image), "task": args.task,
        "roi": list(args.roi), "block_size": args.block_size, "mode": args.mode, "seed": args.seed,
        "device": args.device, "max_image_px": args.max_image_px,
    }
    document = results_document([entry], settings=settings, exitstatus=1 if failed else 0)
    try:
        written = _write_results(document, out, show_passing=args.all)
    except OSError as exc:
        return _error(f"cannot write {str(out)!r}: {exc}")
    c = result.effect
    print(
        f"map {result.rows}x{result.cols} blocks, base PSNR {result.base_psnr:.2f} dB, effect range "
        f"[{c.min():+.3f}, {c.max():+.3f}] dB, support radius {entry['maps'][0]['support_radius_px']} px, "
        f"{result.forward_passes} forward passes in {result.wall_s:.1f} s"
    )
    for p in properties:
        print(f"{p['name']} {'passed' if p.get('passed') else 'FAILED'}: {p['measured_text']}; bound {p['bound_text']}")
    print(f"{'JSON results' if out.suffix.lower() == '.json' else 'HTML report'}: {written}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------ cem report
def _cmd_report(args: argparse.Namespace) -> int:
    from .errors import CEMError
    from .records import load_document, merge_documents, recount_summary

    files = list(args.files)
    if files[0] == "merge" and len(files) > 1 and not Path("merge").is_file():
        files = files[1:]  # "cem report merge a.json b.json": the alias spelling
    out = Path(args.output)
    try:
        documents = [load_document(f) for f in files]
        # the summary is always recounted from the tests (merge_documents does it for several files)
        document = recount_summary(documents[0]) if len(documents) == 1 else merge_documents(documents, files)
    except CEMError as exc:
        return _error(str(exc))
    for f, doc in zip(files, documents):
        stored, counted = doc.get("summary") or {}, recount_summary(doc)["summary"]
        wrong = [f"{stored.get(k)!r} {k.replace('_', ' ')} (its tests hold {counted[k]})"
                 for k in ("tests", "maps", "properties", "failed_properties") if stored.get(k) != counted[k]]
        if wrong:
            print(f"cem: note: the stored summary of {f} says {', '.join(wrong)}; the report shows the counts of "
                  "its tests.", file=sys.stderr)
    try:
        written = _write_results(document, out, show_passing=args.all)
    except OSError as exc:
        return _error(f"cannot write {str(out)!r}: {exc}")
    s = document.get("summary") or {}
    print(
        f"{len(files)} results file{'' if len(files) == 1 else 's'}: {s.get('tests')} tests, {s.get('maps')} maps, "
        f"{s.get('properties')} properties ({s.get('failed_properties')} failed) -> {written}"
    )
    return 0


def _write_results(document: dict, out: Path, show_passing: bool) -> str:
    """Write a results document as JSON when ``out`` ends in .json, else as the HTML report."""
    from .records import write_document
    from .reporting.html import write_report

    if out.suffix.lower() == ".json":
        return write_document(document, out)
    return write_report(document, out, show_passing=show_passing)


def _compute(model, args: argparse.Namespace):
    """The map of ``model`` with the settings shared by ``cem map`` and ``cem run``."""
    from . import compute_cem

    return compute_cem(
        model,
        args.image,
        task=args.task,
        roi=args.roi,
        block_size=args.block_size,
        patches=args.patches,
        mode=args.mode,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "report":
        return _cmd_report(args)
    if args.command == "run":
        return _cmd_run(args)
    return _cmd_map(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
