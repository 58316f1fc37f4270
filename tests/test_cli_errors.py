"""``cem run`` and ``cem map`` on bad input: exit code 2 and a ``cem: error:`` line that names the bad value, what
is wrong and the fix in the command's own flags; never exit 1 (a failed property) and never a traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cem_checks.cli import main
from nets import TINY_NET_SOURCE, ConvStack

EXE = Path(sys.executable).with_name("cem")
RUN = ["--task", "dn25", "--roi", "8,8,8", "--block-size", "4", "--device", "cpu"]


@pytest.fixture
def image(natural32_png):
    return natural32_png


@pytest.fixture
def whole_module(tmp_path, monkeypatch) -> Path:
    """``models/tinynets_cli.py`` and ``models/tiny.pth``, a torch.save of a whole ``tinynets_cli.TinyNet``; the
    module is importable only from ``models``."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tinynets_cli.py").write_text(TINY_NET_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    import tinynets_cli

    torch.save(tinynets_cli.TinyNet(), folder / "tiny.pth")
    monkeypatch.delitem(sys.modules, "tinynets_cli")
    return folder / "tiny.pth"


def cem(*args, cwd):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_a_pickled_module_whose_class_cannot_be_imported(whole_module, image, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cem("run", "--model", whole_module, "--trust", "--image", image, *RUN, "-o", "r.json", cwd=elsewhere)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("cem: error: ")
    assert str(whole_module) in out.stderr and "No module named 'tinynets_cli'" in out.stderr
    assert "make the module 'tinynets_cli' importable here: run from the folder that holds it" in out.stderr
    assert "PYTHONPATH" in out.stderr and "pass --arch MODULE:CALLABLE" in out.stderr
    assert "arch=" not in out.stderr and not (elsewhere / "r.json").exists()
    # the advice works: from the folder that holds the module, the same command loads it
    ok = cem("run", "--model", whole_module, "--trust", "--image", image, *RUN, "-o", elsewhere / "r.json",
             cwd=whole_module.parent)
    assert ok.returncode == 0, ok.stderr
    assert "TinyNet" in (elsewhere / "r.json").read_text()


def test_an_untrusted_module_names_the_trust_flag(whole_module, image, tmp_path, capsys):
    assert main(["run", "--model", str(whole_module), "--image", str(image), *RUN, "-o", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "it names tinynets_cli.TinyNet" in err and "pass --trust" in err and "trust=True" not in err


def _state_dict(tmp_path: Path, dilations=(1, 1, 1)) -> str:
    path = tmp_path / f"sd{len(dilations)}.pt"
    torch.save(ConvStack(dilations).state_dict(), path)  # (1, 1, 1): what nets:ConvStack builds
    return str(path)


def _truncated(tmp_path: Path) -> str:
    path = Path(_state_dict(tmp_path))
    path.write_bytes(path.read_bytes()[:-200])
    return str(path)


def _npy(tmp_path: Path, arr: np.ndarray) -> str:
    np.save(tmp_path / "bank.npy", arr, allow_pickle=True)
    return str(tmp_path / "bank.npy")


#: name -> (the arguments given tmp_path, words of the error)
BAD_RUNS = {
    "missing checkpoint": (lambda t: ["--model", str(t / "nope.pt"), "--arch", "nets:ConvStack"],
                           ["no checkpoint file at", "nope.pt"]),
    "truncated checkpoint": (lambda t: ["--model", _truncated(t), "--arch", "nets:ConvStack"],
                             ["sd3.pt' is damaged: the zip archive", "truncated or damaged"]),
    "weights of another architecture": (lambda t: ["--model", _state_dict(t, (1, 1, 1, 1)), "--arch", "nets:ConvStack"],
                                        ["sd4.pt' do not fit ConvStack", "Check that --arch builds"]),
    "a factory that needs arguments": (lambda t: ["--model", _state_dict(t), "--arch", "nets:PixelShuffleSR.forward"],
                                       ["--arch=", "raised TypeError when called without arguments"]),
    "object .npy patches": (
        lambda t: ["--model", _state_dict(t), "--arch", "nets:ConvStack",
                   "--patches", _npy(t, np.array([{"a": 1}], dtype=object))],
        ["patch bank file", "bank.npy", "object array", "numpy.save"]),
    "one image as patches": (
        lambda t: ["--model", _state_dict(t), "--arch", "nets:ConvStack",
                   "--patches", _npy(t, np.zeros((8, 8, 3), np.uint8))],
        ["bank.npy' has 3 dimensions (8, 8, 3)", "add a leading axis: arr[None]"]),
}


@pytest.mark.parametrize("name", list(BAD_RUNS))
def test_cem_run_bad_inputs_exit_2(name, tmp_path, image, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)  # nets:ConvStack imports from the current folder
    make_args, words = BAD_RUNS[name]
    code = main(["run", *make_args(tmp_path), "--image", str(image), *RUN, "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cem: error: ") and "allow_pickle" not in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_cem_map_bad_models_exit_2(tmp_path, image, capsys):
    def run(model):
        code = main(["map", "--model", str(model), "--image", str(image), *RUN, "-o", str(tmp_path / "m.npz")])
        return code, capsys.readouterr().err

    code, err = run(_state_dict(tmp_path))  # a state_dict without --arch (spandrel absent or not recognising it)
    assert code == 2 and "sd3.pt' holds a state_dict" in err and "pass --arch MODULE:CALLABLE" in err
    script = tmp_path / "m.pt"
    torch.jit.script(ConvStack((1, 1))).save(str(script))
    with zipfile.ZipFile(script) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(script.read_bytes())
    # data.pkl's bytes follow its 30-byte local header, its name and its extra field
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    script.write_bytes(bytes(raw))
    code, err = run(script)
    assert code == 2 and "m.pt' is damaged" in err and "CRC-32" in err, err
    code, err = run(tmp_path / "absent.pt")
    assert code == 2 and "no checkpoint file at" in err
    assert not (tmp_path / "m.npz").exists()
