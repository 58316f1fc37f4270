"""The ``cem`` console command: ``cem map`` (one map to .npz), ``cem run`` (a checkpoint's map as an HTML report
or JSON results), ``cem gate`` (a receptive-field bound checked by the support stage alone, for shell CI) and
``cem report`` (the HTML report of one or more JSON results files, merged).

``cem map``, ``cem run`` and ``cem gate`` load the model with the same options (one argument group: ``--model``,
``--arch``, ``--trust``) and run the same job (``--image``, ``--task``, ``--roi``, ...). ``cem gate --within R``
and ``cem run --assert-receptive-field R`` (without ``--map``) run the support stage only, as the pytest
fixture's receptive-field assertion does (:class:`cem_checks.LazyMap`): a ring test "does anything beyond R px
change the ROI output?" and a binary search for the support radius, tens of forward passes where a map takes
thousands. Error messages name the command's flags (``--arch``, ``--block-size``), not the keyword arguments of
the Python API. The output's extension picks its format (``-o map.npz``; ``-o report.html`` or
``-o results.json``); any other extension, or a folder, is a usage error before anything is loaded.

Exit codes (:data:`EXIT_CODES`):

- 0: done;
- 1: a checked causal property failed (``cem run --assert-receptive-field``, ``cem gate``); the results are still
  written;
- 2: a usage, input or loading error (a bad flag value, a missing or damaged checkpoint, image or results file,
  an unwritable output; any :class:`~cem_checks.errors.CEMError` the library raises), reported as one
  ``cem: error:`` line;
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
    EXIT_PROPERTY_FAILED: "a checked causal property failed (cem run --assert-..., cem gate; the results are still "
                          "written)",
    EXIT_USAGE: "usage, input or loading error (bad flag value; missing, damaged or unreadable model, image, patch "
                "bank or results file; unwritable output)",
    EXIT_INTERNAL: "internal error: an unexpected exception (rerun with --traceback to see where it was raised)",
}

REPORT_HELP = """\
Render one HTML report from one or more JSON results files (pytest --cem-json, cem run -o FILE.json).
Several files are merged.

The shards of one run (pytest --cem-shard K/N --cem-json shard-K.json on each machine) merge into the results of
the whole run: every test once (a cem_sweep test, which runs on every shard, becomes one entry: its sweeps joined
into the whole sweeps, their assertions recomputed over all the items, its outcome the worst of its shards'), so
the counts are those of an unsharded run. Refused (exit code 2, naming the field): the same shard twice, shards
of another N, shards that differ in seed, mode, patches, shard_by or shard_scope, a shard beside a file that is
not one, and the shards of two different sweeps under one test (another model id, settings or split). Missing
shards (a lone 0/2 included) are merged and named in a note.

Other files are runs of their own (e.g. split by pytest-split without --cem-shard): every test, map and property
outcome of every file, in file order, with the summary counts recomputed. A test id present in more than one file
is kept from each and labelled with its source file name, e.g. "test_x.py::test_a [run-2.json]".

"cem report merge a.json b.json -o report.html" is the same as "cem report a.json b.json -o report.html".
An output ending in .json writes the merged JSON results instead of HTML (.html or .htm); another extension is
refused.
"""

GATE_HELP = """\
Check a receptive-field bound for shell CI: does anything farther than --within PX (input px, Chebyshev distance
from the ROI's footprint) change the ROI output at all? Runs the support stage alone, as the pytest fixture's
receptive-field assertion does: one ring test (every input pixel farther than PX replaced at once with random
natural patches, whatever the block size; 3 joint draws; the ROI output compared bit for bit with the baseline),
then a binary search for the support radius in pixels; when something lies beyond PX, a few more group tests find
blocks that change the ROI output without other blocks. Tens of forward passes where a map takes thousands. Prints the verdict, the support
radius, the group tests and the forward passes; -o writes the HTML report (.html) or the JSON results (.json) of
the support stage, as cem run does. Exit code 0 when nothing beyond PX changes the ROI output, 1 when something
does, 2 for bad input, 3 for an internal error.

example: cem gate --model dncnn.pt --arch nets:DnCNN --image clean.png --task dn25 --roi 40,40,16 --within 20
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


def _radius(flag: str, example: int) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value >= 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a distance; expected a finite number >= 0 of input px (the Chebyshev "
                f"distance from the ROI's footprint), e.g. {flag} {example}"
            )
        return value

    return convert


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


def _map_options(mode: bool = True) -> argparse.ArgumentParser:
    """The settings of a map (cem map, cem run; cem gate without ``--mode``, which the support stage does not
    read): one argument group."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("map settings", "the map to compute (see cem_checks.compute_cem)")
    g.add_argument("--image", required=True, help="clean image file")
    g.add_argument("--task", required=True, type=_task, help="sr<scale> | dn<sigma> | dr, e.g. sr4, dn50, dr")
    g.add_argument("--roi", required=True, type=_parse_roi, metavar="X,Y,SIZE", help="region of interest in output px")
    g.add_argument("--block-size", type=_block_size, default=None, metavar="PX",
                   help="block side in input pixels (default: 8 output px)")
    if mode:
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
    sub = parser.add_subparsers(dest="command", metavar="{map,run,gate,report}", required=True)
    common, loader, settings = _common_options(), _loader_options(), _map_options()
    report_options = _report_options()

    m = sub.add_parser(
        "map", parents=[common, loader, settings],
        help="compute the causal effect map of a checkpoint and save it (.npz)",
        description="Load a checkpoint, compute its causal effect map and save it as an .npz file "
                    "(cem_checks.CEMResult.load reads it). Exit code 0, 2 for bad input, 3 for an internal error.",
    )
    m.add_argument("-o", "--output", required=True, help="where to write the result: a file name ending in .npz")

    r = sub.add_parser(
        "run", parents=[common, loader, settings, report_options],
        help="compute the map of a checkpoint and write an HTML report (or JSON results)",
        description="Load a checkpoint (TorchScript, safetensors or torch.save; see "
                    "cem_checks.loading.load_model), compute its causal effect map, optionally check a property, "
                    "and write the HTML report (or JSON results when -o ends in .json). With "
                    "--assert-receptive-field alone only the support stage runs (as cem gate; --map computes the "
                    "full map too). Exit code 0, 1 when the checked property fails, 2 for bad input, 3 for an "
                    "internal error.",
    )
    r.add_argument("--assert-receptive-field", type=_radius("--assert-receptive-field", 20), default=None,
                   metavar="R", help="check that nothing beyond R input px of the ROI changes its output (support "
                                     "radius <= R); alone, it runs the support stage only (as cem gate)")
    r.add_argument("--map", action="store_true",
                   help="compute the full map even when the asked properties need the support stage only")
    r.add_argument("-o", "--output", required=True,
                   help="report.html (or .htm) for the HTML report, results.json for the JSON results")

    g = sub.add_parser(
        "gate", parents=[common, loader, _map_options(mode=False), report_options],
        help="check a receptive-field bound with the support stage alone (for shell CI)",
        description=GATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--within", required=True, type=_radius("--within", 20), metavar="PX",
                   help="the bound (required: a receptive field is the model's own): pass when nothing farther "
                        "than PX input px from the ROI's footprint changes the ROI output, e.g. --within 20 for "
                        "a DnCNN of 20 3x3 convolutions")
    g.add_argument("-o", "--output", default=None,
                   help="also write report.html (or .htm) or results.json (the support stage's map and verdict)")

    rep = sub.add_parser("report", parents=[common],
                         help="render (and merge) JSON results files into one HTML report",
                         description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("files", nargs="+", metavar="RESULTS.json", help="results files, merged in this order")
    rep.add_argument("-o", "--output", required=True,
                     help="report.html (or .htm), or merged.json for the merged JSON results")
    rep.add_argument("--all", action="store_true", help="open passing properties in the report")
    return parser


def _report_options() -> argparse.ArgumentParser:
    """The options of the commands that write a report of one job (cem run, cem gate)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--all", action="store_true", help="open passing properties in the HTML report")
    p.add_argument("--max-image-px", type=_max_image_px, default=DEFAULT_MAX_IMAGE_PX, metavar="N",
                   help="longest side (px) of the model input and output images embedded in the report or JSON "
                        f"(larger ones are downscaled); 0 embeds none (default: {DEFAULT_MAX_IMAGE_PX})")
    return p


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
#: What each kind of output writes, by the extension of ``-o``: the map file (cem map) or a report (cem run,
#: cem gate, cem report).
OUTPUT_FORMATS: dict[str, dict[str, str]] = {
    "map": {".npz": "the map"},
    "report": {".html": "the HTML report", ".htm": "the HTML report", ".json": "the JSON results"},
}


def _output_problem(command: str, path: str | None, kind: str) -> str | None:
    """Why ``cem COMMAND -o PATH`` cannot write its output (None when it can): ``path`` is a folder, or its
    extension is not one of :data:`OUTPUT_FORMATS` ``[kind]``. Checked before anything is loaded."""
    if path is None:
        return None
    formats = OUTPUT_FORMATS[kind]
    example = "map.npz" if kind == "map" else "report.html"
    if path.endswith(("/", os.sep)) or Path(path).is_dir():
        return f"-o {path!r} is a folder; name the file to write in it, e.g. -o {os.path.join(path, example)}"
    if Path(path).suffix.lower() not in formats:
        kinds = "; ".join(f"{suffix}: {what}" for suffix, what in formats.items())
        return (f"-o {path!r} has the extension {Path(path).suffix or '(none)'!r}, which cem {command} does not write; "
                f"the extension picks the format ({kinds}), e.g. -o {example}")
    return None


def _load_model(args: argparse.Namespace) -> Any:
    """The model of ``--model`` / ``--arch`` / ``--trust``; raises :class:`~cem_checks.errors.CEMError` (a module
    or factory that calls ``sys.exit()`` while the model loads too: it built no model)."""
    from .errors import CheckpointError
    from .loading import CLI_OPTIONS, load_model, resolve_arch

    if args.trust and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that a pickled module's classes import from the current folder
    try:
        arch = resolve_arch(args.arch, option="--arch")
        return load_model(args.model, arch, trust=args.trust, options=CLI_OPTIONS)
    except SystemExit as exc:
        what = f"the factory --arch {args.arch} (or its module)" if args.arch else f"loading --model {args.model}"
        raise CheckpointError(
            f"{what} raised SystemExit({exc.code!r}) (sys.exit() or exit() called) instead of building the model; "
            "a factory must return an nn.Module: remove the exit call, or guard a script's entry point with "
            "`if __name__ == '__main__':`."
        ) from exc


def _job(args: argparse.Namespace) -> tuple[Any, Any]:
    """Check the device, load the model and make its job with the settings shared by ``cem map``, ``cem run``
    and ``cem gate``: ``(model, LazyMap)``, whose stages run on first need (the full map, or the support stage
    alone). Raises :class:`~cem_checks.errors.CEMError`."""
    from . import LazyMap, resolve_device
    from .engine import Job

    resolve_device(args.device)  # an absent device fails before the checkpoint is read
    model = _load_model(args)
    job = Job(model, args.image, task=args.task, roi=args.roi, block_size=args.block_size, patches=args.patches,
              mode=getattr(args, "mode", DEFAULT_MODE), seed=args.seed, device=args.device, cache_dir=args.cache_dir)
    return model, LazyMap(job)


def _write_results(document: dict, out: Path, show_passing: bool) -> str:
    """Write a results document as JSON when ``out`` ends in .json, else as the HTML report."""
    from .records import write_document
    from .reporting.html import write_report

    if out.suffix.lower() == ".json":
        return write_document(document, out)
    return write_report(document, out, show_passing=show_passing)


def _result_line(result: Any) -> str:
    """One line of numbers of a map, or of the support stage alone."""
    from .result import SupportResult

    grid = f"{result.rows}x{result.cols} blocks, base PSNR {result.base_psnr:.2f} dB"
    cost = f"{result.forward_passes} forward passes in {result.wall_s:.1f} s"
    if isinstance(result, SupportResult):
        radius = "not searched" if result.radius_px is None else f"{result.radius_px} px"
        return f"support stage {grid}, support radius {radius}, {result.group_tests} group tests, {cost}"
    from .metrics import support_radius

    c = result.effect
    radius = "n/a (every block overlaps the ROI)" if result.roi_mask.all() else f"{support_radius(result)} px"
    return f"map {grid}, effect range [{c.min():+.3f}, {c.max():+.3f}] dB, support radius {radius}, {cost}"


def _document(args: argparse.Namespace, model: Any, result: Any, properties: list[dict]) -> dict:
    """The results document of one job of ``cem run`` / ``cem gate``: one test entry holding the map (or
    support stage) summary and the checked properties."""
    from .records import record_test, result_summary, results_document

    failed = any(not p.get("passed") for p in properties)
    x, y, s = args.roi
    nodeid = f"cem {args.command} {Path(args.model).name} on {Path(args.image).name} ({args.task}, ROI {x},{y},{s})"
    summary = result_summary(result, max_image_px=args.max_image_px)
    if summary.get("model") == "RecursiveScriptModule":  # a TorchScript archive: name the scripted class
        summary["model"] = str(getattr(model, "original_name", "") or Path(args.model).name)
    entry = record_test(nodeid, outcome="failed" if failed else "passed", duration_s=result.wall_s,
                        maps=[summary], properties=properties,
                        message="\n".join(p.get("message") or "" for p in properties if not p.get("passed")) or None)
    settings = {
        "command": args.command, "model_file": str(args.model), "arch": args.arch, "image": str(args.image),
        "task": args.task, "roi": list(args.roi), "block_size": args.block_size, "mode": getattr(args, "mode", None),
        "seed": args.seed, "device": args.device, "max_image_px": args.max_image_px,
    }
    return results_document([entry], settings=settings, exitstatus=1 if failed else 0)


# ------------------------------------------------------------------------------------------ cem map
def _cmd_map(args: argparse.Namespace) -> int:
    problem = _output_problem("map", args.output, "map")
    if problem:
        return _error(problem)
    try:
        _, lazy = _job(args)
        result = lazy.map()
    except OSError as exc:  # a file that cannot be read (typed errors: main)
        return _error(str(exc))
    try:
        path = result.save(args.output)
    except OSError as exc:
        return _error(f"cannot write -o {args.output!r}: {exc}")
    print(f"{_result_line(result)} -> {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ cem run, cem gate
def _run_job(args: argparse.Namespace, within: float | None, full_map: bool) -> int:
    """What ``cem run`` and ``cem gate`` share: the job's full map (``full_map``) or its support stage alone, the
    receptive-field bound ``within`` checked when given (on the map, or by the support stage as the pytest
    fixture's assertion does), the results written to ``-o`` when given, and the exit code."""
    from .checks import check_receptive_field_within, with_map_hint
    from .records import property_line, property_record

    problem = _output_problem(args.command, args.output, "report")
    if problem:
        return _error(problem)
    out = None if args.output is None else Path(args.output)
    try:
        model, lazy = _job(args)
        if full_map:
            lazy.map()
        properties = []
        if within is not None:
            outcome = check_receptive_field_within(lazy, within)
            hint = f"see the map in {out}" if out is not None else "write the map with -o report.html"
            properties.append(property_record(with_map_hint(outcome, hint)))
        result = lazy.result
    except OSError as exc:  # a file that cannot be read (typed errors: main)
        return _error(str(exc))
    failed = any(not p.get("passed") for p in properties)
    written = None
    if out is not None:
        try:
            written = _write_results(_document(args, model, result, properties), out, show_passing=args.all)
        except OSError as exc:
            return _error(f"cannot write -o {str(out)!r}: {exc}")
    print(_result_line(result))
    for p in properties:
        print(property_line(p))
        if not p.get("passed") and p.get("message"):
            print(p["message"])
    if written is not None:
        print(f"{'JSON results' if out.suffix.lower() == '.json' else 'HTML report'}: {written}")
    return EXIT_PROPERTY_FAILED if failed else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    within = args.assert_receptive_field
    # the receptive-field bound is a support question: the full map only when asked, or when nothing else is
    return _run_job(args, within, full_map=args.map or within is None)


def _cmd_gate(args: argparse.Namespace) -> int:
    return _run_job(args, args.within, full_map=False)


# ------------------------------------------------------------------------------------------ cem report
def _cmd_report(args: argparse.Namespace) -> int:
    from .errors import CEMError
    from .records import load_document, merge_documents, recount_summary
    from .shards import document_shard

    files = list(args.files)
    if files[0] == "merge" and not Path("merge").is_file():
        files = files[1:]  # "cem report merge a.json b.json": the alias spelling
        if not files:
            return _error("cem report merge got no results files to merge; name them before -o, e.g. cem report "
                          "merge shard-0.json shard-1.json -o report.html")
    problem = _output_problem("report", args.output, "report")
    if problem:
        return _error(problem)
    out = Path(args.output)
    try:
        documents = [load_document(f) for f in files]
        # the summary is always recounted from the tests (merge_documents does it for several files, and for a lone
        # shard of a run, whose missing shards it notes)
        whole = len(documents) == 1 and document_shard(documents[0]) is None
        document = recount_summary(documents[0]) if whole else merge_documents(documents, files)
    except (CEMError, OSError) as exc:
        return _error(str(exc))
    for note in document.get("merge_notes") or []:
        print(f"cem: note: {note}", file=sys.stderr)
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
    shards = document.get("shards")
    of = f" (shards {', '.join(map(str, shards['merged']))} of {shards['n']})" if shards else ""
    print(
        f"{len(files)} results file{'' if len(files) == 1 else 's'}{of}: {s.get('tests')} tests, {s.get('maps')} maps, "
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "map": _cmd_map, "run": _cmd_run, "gate": _cmd_gate, "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cem`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code
    (:data:`EXIT_CODES`). Usage errors exit through argparse (``SystemExit(2)``); every typed error of the
    library (:class:`~cem_checks.errors.CEMError`) is a ``cem: error:`` line and exit code 2."""
    from .errors import CEMError

    show_traceback = "--traceback" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CEMError as exc:  # bad input, a file that cannot be read, a model that cannot run
        return _error(str(exc))
    except Exception as exc:  # anything the commands do not report themselves: never exit 1 (a failed property)
        return _internal_error(exc, show_traceback)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
