"""The ``cem`` console command: ``cem map`` (one map to .npz), ``cem run`` (a checkpoint's map as an HTML report
or JSON results) and ``cem report`` (the HTML report of one or more JSON results files, merged).

``cem map`` and ``cem run`` load the model with the same options (one argument group: ``--model``, ``--arch``,
``--trust``) and compute the map with the same settings (``--image``, ``--task``, ``--roi``, ...). Error messages
name the command's flags (``--arch``, ``--block-size``), not the keyword arguments of the Python API.

Exit codes (:data:`EXIT_CODES`):

- 0: done;
- 1: a checked causal property failed (``cem run --assert-receptive-field``); the results are still written;
- 2: a usage, input or loading error (a bad flag value, a missing or damaged checkpoint, image or results file,
  an unwritable output), reported as one ``cem: error:`` line;
- 3: an internal error: an exception cem does not expect, reported as one ``cem: internal error:`` line and a
  hint; ``--traceback`` prints its traceback too.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .constants import DEFAULT_DEVICE, DEFAULT_MAX_IMAGE_PX, DEFAULT_MODE, DEFAULT_SEED, DEVICE_NAMES, DEVICE_RE, MODES

EXIT_OK = 0
EXIT_PROPERTY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
#: exit code -> meaning (shown by ``cem --help``)
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_PROPERTY_FAILED: "a checked causal property failed (cem run --assert-...; the results are still written)",
    EXIT_USAGE: "usage, input or loading error (bad flag value; missing, damaged or unreadable model, image, patch "
                "bank or results file; unwritable output)",
    EXIT_INTERNAL: "internal error: an unexpected exception (rerun with --traceback to see where it was raised)",
}

REPORT_HELP = """\
Render one HTML report from one or more JSON results files (pytest --cem-json, cem run -o FILE.json).
Several files are merged, as the shards of one CI matrix run on different machines: every test, map and property
outcome of every file, in file order, with the summary counts recomputed. A test id present in more than one
file is kept from each and labelled with its source file name, e.g. "test_x.py::test_a [shard-2.json]".
The shards of a sweep (pytest --cem-shard K/N on each machine) merge into one sweep: its items in index order,
its aggregates recomputed (the same as an unsharded run's), the assertions of each shard kept.
"cem report merge a.json b.json -o report.html" is the same as "cem report a.json b.json -o report.html".
An output ending in .json writes the merged JSON results instead of HTML.
"""

TASK_NAMES = "sr<scale> with scale >= 1 (e.g. sr4), dn<sigma> with sigma in [0, 255] (e.g. dn50) or dr"


# ------------------------------------------------------------------------------------------ argument types
def _parse_roi(text: str) -> tuple[int, int, int]:
    try:
        x, y, s = (int(v) for v in text.split(","))
    except ValueError:
        x = y = s = -1
    if min(x, y) < 0 or s < 1:
        raise argparse.ArgumentTypeError(
            f"--roi {text!r} is not a region of interest; expected X,Y,SIZE in output pixels (X, Y >= 0, SIZE >= 1), "
            "e.g. --roi 40,40,16"
        )
    return x, y, s


def _int_at_least(flag: str, low: int, example: int, what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not {what}; expected an integer >= {low}, e.g. {flag} {example}"
            )
        return value

    return convert


_block_size = _int_at_least("--block-size", 1, 8, "a block side in input pixels")
_seed = _int_at_least("--seed", 0, 0, "a seed")


def _max_image_px(text: str) -> int:
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


def _device(text: str) -> str:
    name = text.strip().lower()
    if not DEVICE_RE.match(name):
        raise argparse.ArgumentTypeError(f"--device {text!r} is not a device; expected {DEVICE_NAMES}, e.g. --device cpu")
    return name


def _task(text: str) -> str:
    from .errors import CEMInputError
    from .tasks import parse_task

    try:
        parse_task(text)
    except CEMInputError:
        raise argparse.ArgumentTypeError(f"--task {text!r} is not a task name; expected {TASK_NAMES}") from None
    return text


# ------------------------------------------------------------------------------------------ the parser
def _common_options() -> argparse.ArgumentParser:
    """The options of every command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--traceback", action="store_true",
                   help=f"on an internal error (exit code {EXIT_INTERNAL}), print the traceback")
    return p


def _loader_options() -> argparse.ArgumentParser:
    """The options of the commands that load a model (cem map, cem run): one argument group."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(
        "model loading", "how the checkpoint becomes a model (see cem_checks.loading.load_model)"
    )
    g.add_argument("--model", required=True, metavar="CKPT",
                   help="checkpoint file: TorchScript (torch.jit.save), safetensors or torch.save (a state_dict, or "
                        "a whole module with --trust)")
    g.add_argument("--arch", default=None, metavar="MODULE:CALLABLE",
                   help="builds the module for a state_dict: a class with from_state_dict or a factory returning "
                        "an nn.Module, e.g. mypkg.nets:build or path/to/nets.py:build (the current folder is "
                        "importable); 'spandrel' detects the architecture (optional extra pytest-cem[spandrel])")
    g.add_argument("--trust", action="store_true",
                   help="allow full unpickling of a torch.save of a whole module (runs code named in the file; "
                        "the classes it names must be importable, e.g. from the current folder)")
    return p


def _map_options() -> argparse.ArgumentParser:
    """The settings of a map (cem map, cem run): one argument group."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("map settings", "the map to compute (see cem_checks.compute_cem)")
    g.add_argument("--image", required=True, help="clean image file")
    g.add_argument("--task", required=True, type=_task, help="sr<scale> | dn<sigma> | dr, e.g. sr4, dn50, dr")
    g.add_argument("--roi", required=True, type=_parse_roi, metavar="X,Y,SIZE", help="region of interest in output px")
    g.add_argument("--block-size", type=_block_size, default=None, metavar="PX",
                   help="block side in input pixels (default: 8 output px)")
    g.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=f"default: {DEFAULT_MODE}")
    g.add_argument("--seed", type=_seed, default=DEFAULT_SEED, metavar="N", help=f"default: {DEFAULT_SEED}")
    g.add_argument("--cache-dir", default=None, metavar="DIR", help="folder for resumable partial results")
    g.add_argument("--device", type=_device, default=DEFAULT_DEVICE,
                   help=f"{DEVICE_NAMES} (default: {DEFAULT_DEVICE})")
    g.add_argument("--patches", default=None, metavar="PATH",
                   help=".npy patch bank or folder of images (default: the bundled natural patches)")
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="cem", description="Causal effect maps of low-level vision models.",
        epilog=f"exit codes:\n{codes}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{map,run,report}", required=True)
    common, loader, settings = _common_options(), _loader_options(), _map_options()

    m = sub.add_parser(
        "map", parents=[common, loader, settings],
        help="compute the causal effect map of a checkpoint and save it (.npz)",
        description="Load a checkpoint, compute its causal effect map and save it as an .npz file "
                    "(cem_checks.CEMResult.load reads it). Exit code 0, 2 for bad input, 3 for an internal error.",
    )
    m.add_argument("-o", "--output", required=True, help="where to write the result (.npz)")

    r = sub.add_parser(
        "run", parents=[common, loader, settings],
        help="compute the map of a checkpoint and write an HTML report (or JSON results)",
        description="Load a checkpoint (TorchScript, safetensors or torch.save; see "
                    "cem_checks.loading.load_model), compute its causal effect map, optionally check a property, "
                    "and write the HTML report (or JSON results when -o ends in .json). Exit code 0, 1 when the "
                    "checked property fails, 2 for bad input, 3 for an internal error.",
    )
    r.add_argument("--assert-receptive-field", type=float, default=None, metavar="R",
                   help="check that nothing beyond R input px of the ROI affects it (support radius <= R)")
    r.add_argument("--all", action="store_true", help="open passing properties in the HTML report")
    r.add_argument("--max-image-px", type=_max_image_px, default=DEFAULT_MAX_IMAGE_PX, metavar="N",
                   help="longest side (px) of the model input and output images embedded in the report or JSON "
                        f"(larger ones are downscaled); 0 embeds none (default: {DEFAULT_MAX_IMAGE_PX})")
    r.add_argument("-o", "--output", required=True, help="report.html, or results.json for the JSON results")

    rep = sub.add_parser("report", parents=[common],
                         help="render (and merge) JSON results files into one HTML report",
                         description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("files", nargs="+", metavar="RESULTS.json", help="results files, merged in this order")
    rep.add_argument("-o", "--output", required=True, help="report.html, or merged.json for the merged JSON results")
    rep.add_argument("--all", action="store_true", help="open passing properties in the report")
    return parser


# ------------------------------------------------------------------------------------------ messages
#: the Python keyword arguments of the library that the commands set with a flag of their own
_KEYWORD_FLAGS = {
    "block_size": "--block-size", "cache_dir": "--cache-dir", "device": "--device", "mode": "--mode",
    "patches": "--patches", "roi": "--roi", "seed": "--seed", "task": "--task",
}
_KEYWORD_VALUE = re.compile(
    r"(?<![\w.-])(?P<kw>" + "|".join(_KEYWORD_FLAGS) + r")=(?:'(?P<str>[^']*)'|\((?P<tuple>[^()]*)\)|(?P<bare>[\w.:/-]+))"
)
_KEYWORD_WORD = re.compile(r"(?<![\w.-])(?P<kw>" + "|".join(k for k in _KEYWORD_FLAGS if "_" in k) + r")\b(?!=)")


def in_flag_terms(message: str) -> str:
    """``message`` (a library error) with the keyword arguments the commands set by flags written as those flags:
    ``device='cpu'`` -> ``--device cpu``, ``roi=(0, 0, 4)`` -> ``--roi 0,0,4``, ``a smaller block_size`` ->
    ``a smaller --block-size``."""

    def flag_value(m: re.Match) -> str:
        if m.group("str") is not None:
            value = shlex.quote(m.group("str"))
        elif m.group("tuple") is not None:
            value = ",".join(v.strip() for v in m.group("tuple").split(","))
        else:
            value = m.group("bare")
        return f"{_KEYWORD_FLAGS[m.group('kw')]} {value}"

    message = _KEYWORD_VALUE.sub(flag_value, message)
    return _KEYWORD_WORD.sub(lambda m: _KEYWORD_FLAGS[m.group("kw")], message)


def _error(message: str) -> int:
    print(f"cem: error: {in_flag_terms(message)}", file=sys.stderr)
    return EXIT_USAGE


def _internal_error(exc: BaseException, show_traceback: bool) -> int:
    if show_traceback:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"cem: internal error: {type(exc).__name__}{': ' + first if first else ''}", file=sys.stderr)
    hint = "" if show_traceback else "rerun the same command with --traceback to print the traceback, and "
    print(f"cem: this is an error cem does not expect (exit code {EXIT_INTERNAL}); {hint}report it with the command "
          "that raised it.", file=sys.stderr)
    return EXIT_INTERNAL


# ------------------------------------------------------------------------------------------ shared steps
def _load_model(args: argparse.Namespace) -> Any:
    """The model of ``--model`` / ``--arch`` / ``--trust``; raises :class:`~cem_checks.errors.CEMError`."""
    from .loading import CLI_OPTIONS, load_model, resolve_arch

    if args.trust and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that a pickled module's classes import from the current folder
    arch = resolve_arch(args.arch, option="--arch")
    return load_model(args.model, arch, trust=args.trust, options=CLI_OPTIONS)


def _compute(args: argparse.Namespace) -> Any:
    """Check the device, load the model and compute its map with the settings shared by ``cem map`` and
    ``cem run``; raises :class:`~cem_checks.errors.CEMError`."""
    from . import compute_cem, resolve_device

    resolve_device(args.device)  # an absent device fails before the checkpoint is read
    model = _load_model(args)
    result = compute_cem(
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
    return model, result


def _write_results(document: dict, out: Path, show_passing: bool) -> str:
    """Write a results document as JSON when ``out`` ends in .json, else as the HTML report."""
    from .records import write_document
    from .reporting.html import write_report

    if out.suffix.lower() == ".json":
        return write_document(document, out)
    return write_report(document, out, show_passing=show_passing)


# ------------------------------------------------------------------------------------------ cem map
def _cmd_map(args: argparse.Namespace) -> int:
    from .errors import CEMError

    try:
        _, result = _compute(args)
    except (CEMError, OSError) as exc:  # bad input, or a file that cannot be read
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
    return EXIT_OK


# ------------------------------------------------------------------------------------------ cem run
def _cmd_run(args: argparse.Namespace) -> int:
    from .checks import check_receptive_field_within, with_map_hint
    from .errors import CEMError
    from .records import map_summary, property_record, record_test, results_document

    out = Path(args.output)
    try:
        model, result = _compute(args)
        properties = []
        if args.assert_receptive_field is not None:
            outcome = check_receptive_field_within(result, args.assert_receptive_field)
            properties.append(property_record(with_map_hint(outcome, f"see the map in {out}")))
    except (CEMError, OSError) as exc:  # bad input, or a file that cannot be read
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
        return _error(f"cannot write -o {str(out)!r}: {exc}")
    c = result.effect
    print(
        f"map {result.rows}x{result.cols} blocks, base PSNR {result.base_psnr:.2f} dB, effect range "
        f"[{c.min():+.3f}, {c.max():+.3f}] dB, support radius {entry['maps'][0]['support_radius_px']} px, "
        f"{result.forward_passes} forward passes in {result.wall_s:.1f} s"
    )
    for p in properties:
        print(f"{p['name']} {'passed' if p.get('passed') else 'FAILED'}: {p['measured_text']}; bound {p['bound_text']}")
    print(f"{'JSON results' if out.suffix.lower() == '.json' else 'HTML report'}: {written}")
    return EXIT_PROPERTY_FAILED if failed else EXIT_OK


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
    except (CEMError, OSError) as exc:
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
        return _error(f"cannot write -o {str(out)!r}: {exc}")
    s = document.get("summary") or {}
    print(
        f"{len(files)} results file{'' if len(files) == 1 else 's'}: {s.get('tests')} tests, {s.get('maps')} maps, "
        f"{s.get('properties')} properties ({s.get('failed_properties')} failed) -> {written}"
    )
    for t in document.get("tests") or []:
        for w in t.get("sweeps") or []:
            shards = w.get("merged_shards") if isinstance(w, dict) else None
            if shards:
                missing = "" if w.get("complete") else " (incomplete: some shards are missing)"
                print(f"sweep of {t.get('nodeid')} merged from {len(shards)} of {shards[0][1]} shards: "
                      f"{w.get('n_items')} items{missing}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"map": _cmd_map, "run": _cmd_run, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cem`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code
    (:data:`EXIT_CODES`). Usage errors exit through argparse (``SystemExit(2)``)."""
    show_traceback = "--traceback" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except Exception as exc:  # anything the commands do not report themselves: never exit 1 (a failed property)
        return _internal_error(exc, show_traceback)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
