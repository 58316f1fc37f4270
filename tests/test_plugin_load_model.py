"""Checkpoint loading (cem_checks.loading and the cem_load_model fixture): each format, and no unpickling of
untrusted files."""

from __future__ import annotations

import pickle
import sys

import pytest
import torch

from cem_checks.errors import CheckpointError, UntrustedCheckpointError
from cem_checks.loading import detect_format, load_model, spandrel_unavailable
from cem_checks.models import DnCNN
from nets import ConvStack
from plugin_inner import make_suite

pytest_plugins = ["pytester"]


SPANDREL_UNAVAILABLE = spandrel_unavailable()
if SPANDREL_UNAVAILABLE is not None:
    SPANDREL_UNAVAILABLE += "; `make test-spandrel` runs these in an environment with spandrel and a matching torchvision"
needs_spandrel = pytest.mark.skipif(SPANDREL_UNAVAILABLE is not None, reason=SPANDREL_UNAVAILABLE or "")

X = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def same(a, b) -> bool:
    with torch.no_grad():
        return torch.equal(a(X), b(X))


# DeprecationWarning in torch 2.13, FutureWarning in 2.14
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript(tmp_path):
    net = ConvStack((1, 1), seed=3)
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    assert detect_format(tmp_path / "m.pt") == "torchscript"
    loaded = load_model(tmp_path / "m.pt")
    assert same(loaded, net) and not loaded.training
    with pytest.raises(CheckpointError, match="holds its own architecture; call without arch"):
        load_model(tmp_path / "m.pt", arch=ConvStack)


def test_state_dict_with_a_factory_a_class_or_an_instance(tmp_path):
    net = ConvStack((1, 1), seed=3)
    torch.save(net.state_dict(), tmp_path / "sd.pth")
    assert same(load_model(tmp_path / "sd.pth", arch=lambda: ConvStack((1, 1), seed=9)), net)
    assert same(load_model(tmp_path / "sd.pth", arch=ConvStack((1, 1), seed=9)), net)
    # wrapped under a training framework's key, with DataParallel's "module." prefix
    torch.save({"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "wrapped.pth")
    assert same(load_model(tmp_path / "wrapped.pth", arch=lambda: ConvStack((1, 1), seed=9)), net)
    dn = DnCNN(features=8, depth=3)
    torch.save(dn.state_dict(), tmp_path / "dncnn.pth")
    assert same(load_model(tmp_path / "dncnn.pth", arch=DnCNN), dn)  # a class with from_state_dict
    with pytest.raises(CheckpointError, match="(?s)do not fit ConvStack.*same architecture"):
        load_model(tmp_path / "sd.pth", arch=lambda: ConvStack((1, 1, 1)))


def test_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    net = ConvStack((1, 1), seed=4)
    save_file(net.state_dict(), str(tmp_path / "m.safetensors"))
    assert detect_format(tmp_path / "m.safetensors") == "safetensors"
    assert same(load_model(tmp_path / "m.safetensors", arch=lambda: ConvStack((1, 1))), net)


def test_a_state_dict_without_arch_asks_for_one_or_spandrel(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `import spandrel` fails, as without the extra
    torch.save(ConvStack((1, 1)).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match=r"pass arch=.*pip install 'pytest-cem\[spandrel\]'"):
        load_model(tmp_path / "sd.pth")


def test_a_spandrel_that_fails_to_import_gives_a_checkpoint_error(tmp_path, monkeypatch):
    """spandrel installed beside a torchvision built for another torch raises RuntimeError on import."""
    fake = tmp_path / "site" / "spandrel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.delitem(sys.modules, "spandrel", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    torch.save(ConvStack((1, 1)).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match=r"spandrel is installed but fails to import beside torch .*"
                       r"RuntimeError: operator torchvision::nms.*torchvision built for this torch.*pass arch="):
        load_model(tmp_path / "sd.pth")


@needs_spandrel
def test_spandrel_detects_the_architecture(tmp_path):
    dn = DnCNN()  # spandrel knows DnCNN (KAIR's layout: model.{0,2,...}.weight)
    torch.save(dn.state_dict(), tmp_path / "dncnn.pth")
    assert same(load_model(tmp_path / "dncnn.pth"), dn)
    assert same(load_model(tmp_path / "dncnn.pth", arch="spandrel"), dn)


@needs_spandrel
def test_spandrel_reports_an_architecture_it_does_not_know(tmp_path):
    torch.save(ConvStack((1, 1)).state_dict(), tmp_path / "sd.pth")  # keys convs.{0,1}.*: no known layout
    with pytest.raises(CheckpointError, match=r"spandrel does not recognise the architecture of .*sd\.pth.*pass arch="):
        load_model(tmp_path / "sd.pth")


@needs_spandrel
def test_the_fixture_loads_with_spandrel(pytester):
    torch.save(DnCNN(features=16, depth=8).state_dict(), pytester.path / "dncnn.pth")
    make_suite(pytester, """
        def test_load(cem_load_model):
            from spandrel.architectures.DnCNN import DnCNN

            model = cem_load_model("dncnn.pth")
            assert isinstance(model, DnCNN) and not model.training
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_whole_modules_need_trust(tmp_path):
    torch.save(torch.nn.Conv2d(3, 3, 3, padding=1), tmp_path / "module.pth")
    with pytest.raises(UntrustedCheckpointError, match=r"pass trust=True.*--cem-trust-checkpoints"):
        load_model(tmp_path / "module.pth")
    assert isinstance(load_model(tmp_path / "module.pth", trust=True), torch.nn.Conv2d)


class _CreatesAFile:
    """Unpickling this object creates a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"weight": torch.zeros(1), "evil": _CreatesAFile(marker)}
    ckpt = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(ckpt, arch=lambda: ConvStack((1, 1)))
    assert "trust=True" in str(err.value) and "run code" in str(err.value)
    assert not marker.exists()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a checkpoint this library reads"):
        load_model(tmp_path / "junk.pth")


def test_the_fixture_takes_trust_from_the_command_line(pytester):
    torch.save(torch.nn.Conv2d(3, 3, 3, padding=1), pytester.path / "module.pth")
    make_suite(pytester, """
        def test_load(cem_load_model, request):
            if request.config.getoption("cem_trust_checkpoints"):
                assert isinstance(cem_load_model("module.pth"), torch.nn.Conv2d)
            else:
                with pytest.raises(cc.errors.UntrustedCheckpointError, match="trust=True"):
                    cem_load_model("module.pth")
                assert isinstance(cem_load_model("module.pth", trust=True), torch.nn.Conv2d)
    """)
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.runpytest("--cem-trust-checkpoints").assert_outcomes(passed=1)


def test_arch_may_be_an_import_string(tmp_path):
    dn = DnCNN()
    torch.save(dn.state_dict(), tmp_path / "dncnn.pth")
    assert same(load_model(tmp_path / "dncnn.pth", arch="cem_checks.models:DnCNN"), dn)
    with pytest.raises(CheckpointError, match=r"arch='cem_checks.models:NoSuchNet': 'cem_checks.models' has no attribute"):
        load_model(tmp_path / "dncnn.pth", arch="cem_checks.models:NoSuchNet")
    with pytest.raises(CheckpointError, match=r"arch='DnCNN': expected MODULE:CALLABLE"):
        load_model(tmp_path / "dncnn.pth", arch="DnCNN")
