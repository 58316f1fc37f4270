"""Patch banks that are not what they seem (cem_checks.patches.load_patches): unreadable .npy files and arrays whose
shape is ambiguous raise PatchBankError naming the source, what is wrong and what is expected; nothing is read
silently as something else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc

RNG = np.random.default_rng(0)
BANK = RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
EXPECTED = "expected an array saved with numpy.save: (N, p, p, 3) or (N, 3, p, p) colour patches"


def npy_error(path) -> str:
    with pytest.raises(cc.PatchBankError) as err:
        cc.load_patches(path)
    text = str(err.value)
    assert f"patch bank file {str(path)!r}" in text and EXPECTED in text, text
    assert "allow_pickle" not in text, text
    return text


def test_an_object_array(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([BANK, "label"], dtype=object), allow_pickle=True)
    assert "it holds an object array (dtype object" in npy_error(tmp_path / "obj.npy")


@pytest.mark.parametrize("content, words", [
    (b"0 1 2\n3 4 5\n", "it is text (numpy.savetxt writes text: use numpy.save)"),
    (b"", "it is empty"),
    (b"\x80\x04K\x01.", "it is a pickle"),
])
def test_a_file_that_is_not_npy(tmp_path, content, words):
    (tmp_path / "bank.npy").write_bytes(content)
    text = npy_error(tmp_path / "bank.npy")
    assert "it does not start with the .npy signature" in text and words in text


def test_an_npz_archive_named_npy(tmp_path):
    np.savez(tmp_path / "bank", patches=BANK)
    (tmp_path / "bank.npz").rename(tmp_path / "bank.npy")
    assert "it is a zip archive (numpy.savez writes .npz archives: save one array with numpy.save)" in npy_error(
        tmp_path / "bank.npy")


def test_a_truncated_npy(tmp_path):
    np.save(tmp_path / "bank.npy", BANK)
    whole = (tmp_path / "bank.npy").read_bytes()
    (tmp_path / "bank.npy").write_bytes(whole[:-100])
    text = npy_error(tmp_path / "bank.npy")
    assert f"it is truncated: its header announces shape (6, 8, 8, 3) uint8 ({BANK.nbytes} bytes of data), the file " \
           f"holds {BANK.nbytes - 100}" in text
    (tmp_path / "bank.npy").write_bytes(whole[:20])  # cut inside the header
    assert "its header is truncated or damaged" in npy_error(tmp_path / "bank.npy")


@pytest.mark.parametrize("make", [lambda a: a, lambda a: a.astype(np.float32) / 255], ids=["uint8", "float"])
def test_one_hwc_patch_is_refused_not_read_as_gray_patches(tmp_path, make):
    one = make(BANK[0])  # (8, 8, 3): one patch
    for source in (one, tmp_path / "one.npy"):
        np.save(tmp_path / "one.npy", one)
        with pytest.raises(cc.PatchBankError) as err:
            cc.load_patches(source)
        text = str(err.value)
        assert "has 3 dimensions (8, 8, 3): that is one 8 x 8 x 3 (h x w x C) image or patch" in text
        assert "add a leading axis: arr[None] (shape (1, 8, 8, 3))" in text
        assert "(N, p, p) gray patches" in text
    bank = cc.load_patches(one[None])  # the fix works
    assert len(bank) == 1
    np.testing.assert_array_equal(bank.patches[0].permute(1, 2, 0).numpy(), BANK[0])


def test_one_chw_tensor_is_refused():
    with pytest.raises(cc.PatchBankError, match=r"3 dimensions \(3, 8, 8\): that is one 3 x 8 x 8 \(C x h x w\) "
                                                r"image or patch, or 3 gray patches.*t\[None\].*t\[:, None\]"):
        cc.load_patches(torch.from_numpy(BANK[0]).permute(2, 0, 1).contiguous())


def test_gray_banks_and_both_colour_layouts_still_load(tmp_path):
    gray = BANK[..., 0]  # (6, 8, 8): the last axis cannot be a channel axis
    g = cc.load_patches(gray)
    assert g.patches.shape == (6, 3, 8, 8) and torch.equal(g.patches[:, 0], torch.from_numpy(gray))
    nhwc = cc.load_patches(BANK)
    np.save(tmp_path / "nchw.npy", BANK.transpose(0, 3, 1, 2))
    assert torch.equal(cc.load_patches(tmp_path / "nchw.npy").patches, nhwc.patches)
    assert torch.equal(cc.load_patches(torch.from_numpy(BANK)).patches, nhwc.patches)  # a channels-last tensor
    # both axes of size 3: numpy arrays are channels-last, tensors channels-first
    cube = RNG.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    assert torch.equal(cc.load_patches(cube).patches, torch.from_numpy(cube.transpose(0, 3, 1, 2)))
    assert torch.equal(cc.load_patches(torch.from_numpy(cube)).patches, torch.from_numpy(cube))


def test_rgba_and_other_channel_counts():
    with pytest.raises(cc.PatchBankError, match=r"has 4 channels \(shape \(6, 8, 8, 4\)\): RGBA\? Drop the alpha "
                                                r"channel \(arr\[\.\.\., :3\]"):
        cc.load_patches(np.concatenate([BANK, BANK[..., :1]], axis=-1))
    with pytest.raises(cc.PatchBankError, match=r"shape \(6, 8, 8, 5\): neither axis 1 nor axis 3 is a channel axis"):
        cc.load_patches(np.zeros((6, 8, 8, 5), np.uint8))


def test_integer_and_out_of_range_banks_say_how_to_convert():
    with pytest.raises(cc.PatchBankError, match=r"dtype int64; expected uint8 or float in \[0, 1\] \(convert 0-255 "
                                                r"integers with arr\.astype\(numpy\.uint8\)\)"):
        cc.load_patches(BANK.astype(np.int64))
    with pytest.raises(cc.PatchBankError,
                       match=r"values outside \[0, 1\] \(from \d+ to \d+\).*divide 0-255 data by 255"):
        cc.load_patches(BANK.astype(np.float32))
    nan = BANK.astype(np.float32) / 255
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(cc.PatchBankError, match=r"has 1 non-finite values"):
        cc.load_patches(nan)
