"""The ``cem`` command's error paths, per subcommand: the loader options shared by ``cem map`` and ``cem run``,
messages in the command's own flags, and the exit codes (0 done, 1 only for a failed property, 2 usage / input /
loading errors, 3 an unexpected exception, never 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import cem_checks
from cem_checks.cli import EXIT_CODES, in_flag_terms, main
from nets import TINY_NET_SOURCE, ConvStack

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

MAP_ARGS = ["--task", "dn25", "--roi", "8,8,8", "--block-size", "4", "--device", "cpu"]


@pytest.fixture
def image(natural32_png):
    return natural32_png


@pytest.fixture
def state_dict(tmp_path) -> str:
    torch.save(ConvStack().state_dict(), tmp_path / "sd.pt")  # what nets:ConvStack builds
    return str(tmp_path / "sd.pt")


@pytest.fixture
def whole_module(tmp_path, monkeypatch, request) -> Path:
    """``models/tinynets_exit.py`` and ``models/tiny.pth``, a torch.save of a whole ``TinyNet``; ``models`` is on
    sys.path for the test."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tinynets_exit.py").write_text(TINY_NET_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    request.addfinalizer(lambda: sys.modules.pop("tinynets_exit", None))
    import tinynets_exit

    torch.save(tinynets_exit.TinyNet(), folder / "tiny.pth")
    return folder / "tiny.pth"


def cem(capsys, *args) -> tuple[int, str, str]:
    """Run ``cem ARGS`` in process: (exit code, stdout, stderr); argparse's usage errors give their exit code."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def output_of(command: str, tmp_path: Path) -> str:
    return str(tmp_path / ("m.npz" if command == "map" else "r.json"))


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("command", ["map", "run"])
def test_both_commands_share_the_model_loading_group(command, capsys):
    code, out, _ = cem(capsys, command, "--help")
    assert code == 0
    group = out[out.index("model loading:"):out.index("map settings:")]
    for flag in ("--model CKPT", "--arch MODULE:CALLABLE", "--trust"):
        assert flag in group


@pytest.mark.parametrize("command", ["map", "run"])
def test_a_state_dict_needs_arch_and_loads_with_it(command, state_dict, image, tmp_path, capsys):
    out = output_of(command, tmp_path)
    code, _, err = cem(capsys, command, "--model", state_dict, "--image", image, *MAP_ARGS, "-o", out)
    assert code == 2 and err.startswith("cem: error: ")
    assert "sd.pt' holds a state_dict" in err and "pass --arch MODULE:CALLABLE" in err
    assert "arch=" not in err and "Traceback" not in err and not Path(out).exists()
    code, stdout, err = cem(capsys, command, "--model", state_dict, "--arch", "nets:ConvStack", "--image", image,
                            *MAP_ARGS, "-o", out)
    assert code == 0, err
    assert "map 8x8 blocks" in stdout and Path(out).is_file()


@pytest.mark.parametrize("command", ["map", "run"])
def test_a_whole_module_needs_trust_and_loads_with_it(command, whole_module, image, tmp_path, capsys):
    out = output_of(command, tmp_path)
    code, _, err = cem(capsys, command, "--model", whole_module, "--image", image, *MAP_ARGS, "-o", out)
    assert code == 2 and "it names tinynets_exit.TinyNet" in err and "pass --trust" in err
    assert "trust=True" not in err and not Path(out).exists()
    code, _, err = cem(capsys, command, "--model", whole_module, "--trust", "--image", image, *MAP_ARGS, "-o", out)
    assert code == 0, err
    assert Path(out).is_file()


@pytest.mark.parametrize("command", ["map", "run"])
def test_a_torchscript_archive_refuses_arch_naming_the_flag(command, tmp_path, image, capsys):
    scripted = tmp_path / "m.pt"
    _save_script(ConvStack((1, 1)), scripted)
    code, _, err = cem(capsys, command, "--model", scripted, "--arch", "nets:ConvStack", "--image", image,
                       *MAP_ARGS, "-o", output_of(command, tmp_path))
    assert code == 2 and "is a TorchScript archive, which holds its own architecture; call without --arch" in err


def _save_script(module: torch.nn.Module, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in newer torch
        torch.jit.script(module).save(str(path))


# ------------------------------------------------------------------------------------------ flag values
#: flag arguments -> words of the usage error (argparse: exit code 2 before anything is loaded)
BAD_FLAGS = {
    "task": (["--task", "sr0"], "--task 'sr0' is not a task name; expected sr<scale> with scale >= 1"),
    "block size": (["--block-size", "0"], "--block-size '0' is not a block side in input pixels; expected an "
                                          "integer >= 1, e.g. --block-size 8"),
    "seed": (["--seed", "x"], "--seed 'x' is not a seed; expected an integer >= 0"),
    "device": (["--device", "gpu"], "--device 'gpu' is not a device; expected auto, cpu, cuda, cuda:N or mps"),
    "roi": (["--roi", "8,8"], "--roi '8,8' is not a region of interest; expected X,Y,SIZE in output pixels"),
    "mode": (["--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
}


@pytest.mark.parametrize("command", ["map", "run"])
@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flag_values_are_usage_errors_naming_the_flag(command, name, state_dict, image, tmp_path, capsys):
    args, words = BAD_FLAGS[name]
    settings = dict(zip(MAP_ARGS[::2], MAP_ARGS[1::2]))
    settings.update(zip(args[::2], args[1::2]))
    code, _, err = cem(capsys, command, "--model", state_dict, "--arch", "nets:ConvStack", "--image", image,
                       *[v for kv in settings.items() for v in kv], "-o", output_of(command, tmp_path))
    assert code == 2 and words in err, err
    assert f"usage: cem {command}" in err and "Traceback" not in err


def _with(args: list[str], **flags: str) -> list[str]:
    settings = dict(zip(args[::2], args[1::2]))
    settings.update({f"--{k.replace('_', '-')}": v for k, v in flags.items()})
    return [v for kv in settings.items() for v in kv]


#: what fails once the image and the model are known -> (flags, words of the error)
BAD_INPUTS = {
    "absent device": (dict(device="cuda:63"), ["--device cuda:63 "]),
    "misaligned roi": (dict(task="sr2", roi="3,3,8"), ["not aligned with the x2 scale", "e.g. use --roi 2,2,8."]),
    "block larger than the image": (dict(block_size="64"), ["smaller than one block of 64 input px",
                                                            "a smaller --block-size."]),
    "roi outside the image": (dict(roi="30,30,8"), ["outside the 32x32 (width x height) model output"]),
}


@pytest.mark.parametrize("command", ["map", "run"])
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_exit_2_in_the_commands_flags(command, name, tmp_path, image, capsys):
    flags, words = BAD_INPUTS[name]
    scripted = tmp_path / "m.pt"
    _save_script(ConvStack((1, 1)), scripted)
    out = output_of(command, tmp_path)
    code, _, err = cem(capsys, command, "--model", scripted, "--image", image, *_with(MAP_ARGS, **flags), "-o", out)
    assert code == 2 and err.startswith("cem: error: "), err
    for word in words:
        assert word in err, err
    assert "device=" not in err and "roi=" not in err and "block_size" not in err
    assert not Path(out).exists()


@pytest.mark.parametrize("command", ["map", "run"])
def test_unusable_cache_dir_image_and_output_exit_2(command, state_dict, image, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    base = ["--model", state_dict, "--arch", "nets:ConvStack"]
    code, _, err = cem(capsys, command, *base, "--image", image, *MAP_ARGS, "--cache-dir", blocker / "cache",
                       "-o", output_of(command, tmp_path))
    assert code == 2 and f"--cache-dir {blocker / 'cache'} cannot be created or written" in err, err
    code, _, err = cem(capsys, command, *base, "--image", tmp_path / "nope.png", *MAP_ARGS,
                       "-o", output_of(command, tmp_path))
    assert code == 2 and "nope.png" in err
    out = blocker / ("m.npz" if command == "map" else "r.json")
    code, _, err = cem(capsys, command, *base, "--image", image, *MAP_ARGS, "-o", out)
    assert code == 2 and f"cannot write -o {str(out)!r}" in err, err


# ------------------------------------------------------------------------------------------ exit codes
def test_run_exits_1_only_for_a_failed_property(state_dict, image, tmp_path, capsys):
    base = ["run", "--model", state_dict, "--arch", "nets:ConvStack", "--image", image, *MAP_ARGS]
    code, out, _ = cem(capsys, *base, "--assert-receptive-field", "0", "-o", tmp_path / "r.json")
    assert code == 1 and "receptive_field_within FAILED" in out and (tmp_path / "r.json").is_file()
    code, out, _ = cem(capsys, *base, "--assert-receptive-field", "20", "-o", tmp_path / "r.json")
    assert code == 0 and "receptive_field_within passed" in out


@pytest.mark.parametrize("command", ["map", "run", "gate"])
def test_an_unexpected_exception_exits_3_with_a_traceback_hint(command, state_dict, image, tmp_path, capsys,
                                                                monkeypatch):
    from cem_checks.engine import Job

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside\nsecond line")

    monkeypatch.setattr(Job, "map", broken)  # cem map, cem run
    monkeypatch.setattr(Job, "support", broken)  # cem gate
    args = [command, "--model", state_dict, "--arch", "nets:ConvStack", "--image", image, *MAP_ARGS,
            "-o", output_of(command, tmp_path), *(["--within", "3"] if command == "gate" else [])]
    code, _, err = cem(capsys, *args)
    assert code == 3
    assert err.splitlines() == [
        "cem: internal error: ZeroDivisionError: a bug deep inside",
        "cem: this is an error cem does not expect (exit code 3); rerun the same command with --traceback to print "
        "the traceback, and report it with the command that raised it.",
    ]
    code, _, err = cem(capsys, *args, "--traceback")
    assert code == 3 and err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert "cem: internal error: ZeroDivisionError: a bug deep inside" in err and "rerun" not in err


def test_an_unexpected_exception_after_the_map_is_not_a_failed_property(state_dict, image, tmp_path, capsys,
                                                                         monkeypatch):
    import cem_checks.checks

    def broken(*args, **kwargs):
        raise KeyError("bound")

    monkeypatch.setattr(cem_checks.checks, "check_receptive_field_within", broken)
    code, _, err = cem(capsys, "run", "--model", state_dict, "--arch", "nets:ConvStack", "--image", image, *MAP_ARGS,
                       "--assert-receptive-field", "0", "-o", tmp_path / "r.json")
    assert code == 3 and "cem: internal error: KeyError: 'bound'" in err


def test_report_error_paths(tmp_path, capsys, monkeypatch):
    code, _, err = cem(capsys, "report", tmp_path / "absent.json", "-o", tmp_path / "r.html")
    assert code == 2 and err.startswith("cem: error: ") and "absent.json" in err
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = cem(capsys, "report", tmp_path / "bad.json", "-o", tmp_path / "r.html")
    assert code == 2 and "bad.json" in err
    code, _, err = cem(capsys, "report", "-o", tmp_path / "r.html")
    assert code == 2 and "usage: cem report" in err
    import cem_checks.records

    def broken(*args, **kwargs):
        raise IndexError("out of range")

    monkeypatch.setattr(cem_checks.records, "load_document", broken)
    code, _, err = cem(capsys, "report", tmp_path / "bad.json", "-o", tmp_path / "r.html")
    assert code == 3 and "cem: internal error: IndexError: out of range" in err
    assert not (tmp_path / "r.html").exists()


def test_no_command_is_a_usage_error_and_help_lists_the_exit_codes(capsys):
    code, _, err = cem(capsys)
    assert code == 2 and "usage: cem" in err and "required" in err
    code, out, _ = cem(capsys, "--help")
    assert code == 0 and "exit codes:" in out
    for exit_code, meaning in EXIT_CODES.items():
        assert f"  {exit_code}  {meaning}" in out


# ------------------------------------------------------------------------------------------ messages
@pytest.mark.parametrize("message, expected", [
    ("device='cuda' was requested; use device='cpu' or 'auto'.", "--device cuda was requested; use --device cpu or 'auto'."),
    ("e.g. use roi=(2, 2, 8).", "e.g. use --roi 2,2,8."),
    ("use a larger image or a smaller block_size.", "use a larger image or a smaller --block-size."),
    ("block_size=0 must be an integer >= 1.", "--block-size 0 must be an integer >= 1."),
    ("cache_dir='/x y' cannot be created", "--cache-dir '/x y' cannot be created"),
    # not keyword arguments of a flag: left alone
    ("FastOptions.seed=3 and --arch=nets:X and my_roi=(1, 2) and eval mode", None),
    ("roi (x=30, y=30, size=8) reaches column 38", None),
])
def test_library_messages_are_written_in_the_commands_flags(message, expected):
    assert in_flag_terms(message) == (message if expected is None else expected)
