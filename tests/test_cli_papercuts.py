"""Regression tests of the ``cem`` command's small failures: outputs whose extension the command does not write,
a folder as output, ``cem report merge`` without files, typed errors of the library (exit 2, never 3), flags
checked before anything loads, and a model factory that calls ``sys.exit()``."""

from __future__ import annotations

import sys

import pytest
import torch

from nets import ConvStack

from test_cli_gate import JOB, cem, model_args  # noqa: F401 (model_args: a fixture)

#: each command's extra flags and a good output name
COMMANDS = {"map": ([], "m.npz"), "run": ([], "r.html"), "gate": (["--within", "3"], "g.json")}


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model: the error must come first."""
    import cem_checks.cli

    def loaded(args):
        raise AssertionError("the model was loaded before the usage error")

    monkeypatch.setattr(cem_checks.cli, "_load_model", loaded)


@pytest.mark.parametrize("command, output, words", [
    ("map", "map.html", "-o 'OUT' has the extension '.html', which cem map does not write; the extension picks the "
                        "format (.npz: the map), e.g. -o map.npz"),
    ("run", "e.pdf", "-o 'OUT' has the extension '.pdf', which cem run does not write; the extension picks the format "
                     "(.html: the HTML report; .htm: the HTML report; .json: the JSON results), e.g. -o report.html"),
    ("gate", "g", "-o 'OUT' has the extension '(none)', which cem gate does not write"),
])
def test_an_output_extension_the_command_does_not_write_is_refused(command, output, words, model_args, tmp_path,
                                                                    capsys, no_loading):
    out = tmp_path / output
    extra, _ = COMMANDS[command]
    code, _, err = cem(capsys, command, *model_args, *extra, "-o", out)
    assert code == 2 and err.startswith(f"cem: error: {words.replace('OUT', str(out))}") and err.count("\n") == 1
    assert not list(tmp_path.glob(output + "*"))  # neither map.html nor map.html.npz


def test_report_refuses_an_output_extension_it_does_not_write(tmp_path, capsys):
    code, _, err = cem(capsys, "report", tmp_path / "absent.json", "-o", tmp_path / "r.pdf")
    assert code == 2 and "'.pdf', which cem report does not write" in err


@pytest.mark.parametrize("command", [*COMMANDS, "report"])
def test_a_folder_as_output_is_a_usage_error(command, model_args, tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.chdir(tmp_path)
    args = ["results.json"] if command == "report" else [*model_args, *COMMANDS[command][0]]
    for folder in (".", str(tmp_path) + "/"):
        code, _, err = cem(capsys, command, *args, "-o", folder)
        assert code == 2, err
        assert err.startswith(f"cem: error: -o {folder!r} is a folder; name the file to write in it, e.g. -o ")


def test_report_merge_without_files_names_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cem(capsys, "report", "merge", "-o", "x.html")
    assert code == 2
    assert err == ("cem: error: cem report merge got no results files to merge; name them before -o, e.g. cem report "
                   "merge shard-0.json shard-1.json -o report.html\n")
    assert "cannot read the results file 'merge'" not in err and not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_typed_error_of_the_engine_exits_2(command, model_args, tmp_path, capsys):
    # a ROI that leaves no block outside it (the whole 32x32 image): the engine's ROIError, before any draw; any
    # CEMError is a usage/input error, never an internal one
    args = list(model_args)
    args[args.index("--roi") + 1] = "0,0,32"
    extra, output = COMMANDS[command]
    code, _, err = cem(capsys, command, *args, *extra, "-o", tmp_path / output)
    assert code == 2 and err.startswith("cem: error: roi (0, 0, 32) covers every block") and "internal" not in err
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "wide"])
def test_a_bad_receptive_field_bound_is_refused_before_anything_loads(bad, model_args, tmp_path, capsys, no_loading):
    code, _, err = cem(capsys, "run", *model_args, "--assert-receptive-field", bad, "-o", tmp_path / "r.json")
    assert code == 2
    assert f"--assert-receptive-field {bad!r} is not a distance; expected a finite number >= 0 of input px" in err


def test_an_arch_factory_that_exits_is_a_loading_error(tmp_path, natural32_png, capsys, monkeypatch):
    torch.save(ConvStack().state_dict(), tmp_path / "sd.pt")
    (tmp_path / "quitting.py").write_text("import sys\n\ndef build():\n    sys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "quitting", raising=False)
    code, out, err = cem(capsys, "run", "--model", "sd.pt", "--arch", "quitting:build", "--image", natural32_png, *JOB,
                         "-o", "r.json")
    assert code == 2 and out == ""
    assert err.startswith("cem: error: the factory --arch quitting:build (or its module) raised SystemExit(0)")
    assert "a factory must return an nn.Module" in err and not (tmp_path / "r.json").exists()
