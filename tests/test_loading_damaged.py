"""Damaged checkpoints are reported as damage (cem_checks.loading): real files written by torch.save,
torch.jit.save and safetensors, then truncated or overwritten. Only an intact file that needs full unpickling is
reported as untrusted; a pickled class that cannot be imported names the class and the fix. Independent of
spandrel: every state_dict is loaded with an explicit arch."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from cem_checks.errors import CheckpointError, UntrustedCheckpointError
from cem_checks.loading import CLI_OPTIONS, load_model, load_state_dict
from nets import ConvStack

X = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def build():
    return ConvStack((1, 1))


def member_span(path: Path, suffix: str) -> tuple[int, int]:
    """(offset, size) of the bytes of the zip member whose name ends with ``suffix`` (torch stores them
    uncompressed): the local file header is 30 bytes, then the name and the extra field."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def overwrite(path: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))
    return path


def truncate(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def legacy_pickle_ends(path: Path) -> list[int]:
    """Where each of the 5 pickles at the start of a legacy torch.save file ends (the storage bytes follow)."""
    fh, ends = io.BytesIO(path.read_bytes()), []
    for _ in range(5):
        for _ in pickletools.genops(fh):
            pass
        ends.append(fh.tell())
    return ends


def error_of(path: Path, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch=build, **kwargs)
    return err.value


def assert_damage(path: Path, *words: str) -> None:
    """``path`` is reported as damaged, with and without trust=True, and never as untrusted."""
    for trust in (False, True):
        err = error_of(path, trust=trust)
        text = str(err)
        assert type(err) is CheckpointError, text
        assert str(path) in text and "damaged" in text, text
        for word in words:
            assert word in text, text
        assert "trust=True" not in text and "re-save it" in text


@pytest.fixture
def state_dict_zip(tmp_path) -> Path:
    torch.save(build().state_dict(), tmp_path / "sd.pth")
    assert torch.equal(load_model(tmp_path / "sd.pth", arch=build)(X), build()(X))  # intact: loads
    return tmp_path / "sd.pth"


def test_bytes_overwritten_inside_data_pkl_are_damage_not_an_untrusted_file(state_dict_zip):
    offset, size = member_span(state_dict_zip, "data.pkl")
    overwrite(state_dict_zip, offset + size // 2, b"\xff" * 8)
    assert_damage(state_dict_zip, "data.pkl", "CRC-32")


def test_bytes_overwritten_inside_a_tensor_are_caught_by_the_crc(state_dict_zip):
    """torch's reader does not check CRCs: without the check these weights would load silently changed."""
    offset, _ = member_span(state_dict_zip, "data/0")
    overwrite(state_dict_zip, offset, b"\x00" * 8)
    assert_damage(state_dict_zip, "data/0", "CRC-32")


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.99])
def test_a_truncated_zip_says_truncated(state_dict_zip, fraction):
    truncate(state_dict_zip, int(state_dict_zip.stat().st_size * fraction))
    assert_damage(state_dict_zip, "zip archive", "truncated or damaged", "central directory")


def test_a_zip_whose_data_pkl_does_not_parse_is_damaged(state_dict_zip, tmp_path):
    """A consistent archive (CRCs written for the cut bytes) whose pickle stops short: the pickle is checked."""
    rebuilt = tmp_path / "rebuilt.pth"
    with zipfile.ZipFile(state_dict_zip) as zin, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, data[:len(data) // 2] if info.filename.endswith("data.pkl") else data)
    assert_damage(rebuilt, "data.pkl is damaged", "ValueError")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_a_damaged_torchscript_archive(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(build()).save(str(path))
    offset, _ = member_span(path, "data/0")
    overwrite(path, offset, b"\x7f" * 4)
    with pytest.raises(CheckpointError, match=r"m\.pt'? is damaged: the zip member .*data/0 fails its CRC-32 check"):
        load_model(path)
    truncate(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"m\.pt'? is damaged: the zip archive .* is truncated or damaged"):
        load_model(path)


def test_a_truncated_legacy_pickle_says_truncated(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(build().state_dict(), path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_model(path, arch=build)(X), build()(X))  # intact: loads
    whole = path.read_bytes()
    ends = legacy_pickle_ends(path)
    # inside the magic number, the system info, the object (its GLOBALs are read), and the storage keys
    for cut in (3, ends[1] + 5, (ends[2] + ends[3]) // 2, ends[3] - 1, ends[4] - 2):
        path.write_bytes(whole[:cut])
        assert_damage(path, "the pickle data is truncated or damaged: the file is truncated", f"{cut} bytes")
    # inside the raw storage bytes that follow the pickles (8-byte count, then the elements, per storage)
    for cut in (ends[4] + 4, (ends[4] + len(whole)) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        assert_damage(path, "the file is truncated: the tensor data of storage", f"the file has {cut} bytes")


def test_legacy_storages_of_several_dtypes_and_shared_storages(tmp_path):
    """The storage walk follows each storage's element size (float16, int64, bool, ...) and shared storages."""
    path = tmp_path / "mixed.pth"
    sd = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()  # int64 counter
    base = torch.arange(20.0)
    sd.update(half=torch.ones(5, dtype=torch.float16), flags=torch.ones(3, dtype=torch.bool), a=base[:10],
              b=base[5:15])
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    loaded = load_state_dict(path)
    assert loaded["half"].dtype == torch.float16 and torch.equal(loaded["b"], base[5:15])
    whole = path.read_bytes()
    for cut in (len(whole) - 1, legacy_pickle_ends(path)[4] + 9):
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=r"the file is truncated: the tensor data of storage '\d+' ends at "
                                                  rf"byte \d+, the file has {cut} bytes"):
            load_state_dict(path)


def test_a_truncated_pickled_module_is_damage_not_a_reason_to_trust_it(tmp_path):
    """The safe loader stops at the first class the pickle names, before reaching the cut: the pickle is parsed
    first, so the file is reported as damaged rather than as needing trust=True."""
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Conv2d(3, 3, 3), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UntrustedCheckpointError, match=r"it names torch\.nn\.modules\.conv\.Conv2d.*pass trust=True"):
        load_model(path)  # intact: untrusted, the only case that suggests trust=True
    ends, whole = legacy_pickle_ends(path), path.read_bytes()
    for cut in ((ends[2] + ends[3]) // 2, len(whole) - 20):  # inside the module's pickle; inside its weights
        path.write_bytes(whole[:cut])
        for trust in (False, True):
            with pytest.raises(CheckpointError) as err:
                load_model(path, trust=trust)
            assert type(err.value) is CheckpointError and "the file is truncated" in str(err.value)
            assert "trust=True" not in str(err.value)


def test_a_truncated_plain_pickle(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(build().state_dict(), protocol=2))
    with pytest.raises(UntrustedCheckpointError, match=r"it names torch\.storage\._load_from_bytes"):
        load_model(path, arch=build)  # intact: tensors pickled by pickle itself need full unpickling
    assert torch.equal(load_model(path, arch=build, trust=True)(X), build()(X))
    truncate(path, path.stat().st_size - 3)
    assert_damage(path, "the file is truncated: it ends inside pickle 1")


def test_truncated_and_damaged_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(build().state_dict(), str(path))
    whole = path.read_bytes()
    (header_len,) = struct.unpack("<Q", whole[:8])
    assert torch.equal(load_model(path, arch=build)(X), build()(X))
    path.write_bytes(whole[:-10])  # the last tensor's bytes cut short
    assert_damage(path, "the safetensors file is truncated", f"up to byte {len(whole)}", f"has {len(whole) - 10} bytes")
    path.write_bytes(whole[:8 + header_len // 2])  # cut inside the JSON header
    assert_damage(path, "the safetensors file is truncated", f"announces {header_len} bytes of JSON")
    colon = whole.index(b":", 8)
    path.write_bytes(whole[:colon] + b"#" + whole[colon + 1:])  # one byte of the JSON header overwritten
    assert_damage(path, "the safetensors header is not valid JSON")
    with pytest.raises(CheckpointError, match="damaged"):
        load_state_dict(path)


# ---------------------------------------------------------------------------------- trust=True loads
@pytest.fixture
def vanishing_module_file(tmp_path, monkeypatch) -> Path:
    """A whole module pickled from a module (``vanishing_nets``) that is gone once the file is written."""
    module = types.ModuleType("vanishing_nets")

    class Net(ConvStack):
        pass

    Net.__module__, Net.__qualname__ = "vanishing_nets", "Net"
    module.Net = Net
    monkeypatch.setitem(sys.modules, "vanishing_nets", module)
    torch.save(Net((1, 1)), tmp_path / "whole.pth")
    monkeypatch.delitem(sys.modules, "vanishing_nets")
    return tmp_path / "whole.pth"


def test_a_pickled_class_that_cannot_be_imported(vanishing_module_file):
    with pytest.raises(UntrustedCheckpointError, match=r"it names vanishing_nets\.Net"):
        load_model(vanishing_module_file)
    with pytest.raises(CheckpointError) as err:
        load_model(vanishing_module_file, trust=True)
    text = str(err.value)
    assert type(err.value) is CheckpointError and isinstance(err.value.__cause__, ModuleNotFoundError)
    assert str(vanishing_module_file) in text and "class cannot be imported" in text
    assert "No module named 'vanishing_nets'" in text
    assert "make the module 'vanishing_nets' importable" in text and "PYTHONPATH" in text
    assert "torch.save(model.state_dict(), path)) and pass arch=" in text


def test_a_class_defined_in_the_saving_script(tmp_path, monkeypatch):
    main = sys.modules["__main__"]

    class ScriptNet(ConvStack):
        pass

    ScriptNet.__module__, ScriptNet.__qualname__ = "__main__", "ScriptNet"
    monkeypatch.setattr(main, "ScriptNet", ScriptNet, raising=False)
    torch.save(ScriptNet((1, 1)), tmp_path / "script.pth")
    monkeypatch.delattr(main, "ScriptNet")
    with pytest.raises(CheckpointError, match=r"the class ScriptNet was defined in the script that saved the file "
                                              r"\(module __main__\).*move the class into a module"):
        load_model(tmp_path / "script.pth", trust=True)


def test_messages_for_a_command_line_name_its_flags(vanishing_module_file, tmp_path):
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(vanishing_module_file, options=CLI_OPTIONS)
    assert "pass --trust" in str(err.value) and "trust=True" not in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_model(vanishing_module_file, trust=True, options=CLI_OPTIONS)
    assert "pass --arch MODULE:CALLABLE" in str(err.value) and "arch=" not in str(err.value)


def test_a_factory_that_raises_is_a_checkpoint_error(state_dict_zip):
    def needs_arguments(width):
        return ConvStack((1, 1), width=width)

    with pytest.raises(CheckpointError, match=r"arch=.*needs_arg.* raised TypeError when called without "
                                              r"arguments.*a factory must build the module with no arguments"):
        load_model(state_dict_zip, arch=needs_arguments)
