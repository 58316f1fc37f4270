"""Natural patch banks: bundled default, .npy, folders, arrays and tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cem_checks as cc


def test_default_bank_is_10000_natural_8x8_patches_and_reproducible():
    bank = cc.default_patch_bank()
    assert len(bank) == 10000 and bank.patch_shape == (8, 8)
    assert bank.patches.dtype == torch.uint8 and bank.patches.shape == (10000, 3, 8, 8)
    assert bank is cc.load_patches(None)
    assert set(cc.bundled_images()) == {"astronaut", "chelsea", "coffee", "rocket"}
    # natural patches: mostly smooth, neighbouring pixels strongly correlated, not noise
    p = bank.as_float().numpy()
    a, b = p[:, :, :, :-1].ravel(), p[:, :, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert bank.sha256 == cc.patches._default_bank.__wrapped__(2500, 8, 0).sha256


def test_npy_in_the_papers_format(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "bank.npy", arr)
    bank = cc.load_patches(tmp_path / "bank.npy")
    assert len(bank) == 7
    np.testing.assert_array_equal(bank.patches.permute(0, 2, 3, 1).numpy(), arr)
    assert bank.describe()["count"] == 7 and bank.source.startswith("npy:")


def test_folder_of_images_is_cut_into_tiles(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("ignored")
    bank = cc.load_patches(tmp_path)
    assert len(bank) == 2 * 3 + 1
    bank4 = cc.load_patches(tmp_path, patch_size=4)
    assert len(bank4) == 4 * 6 + 4 and bank4.patch_shape == (4, 4)


def test_empty_folder(tmp_path):
    with pytest.raises(cc.PatchBankError, match="holds no image file"):
        cc.load_patches(tmp_path)


def test_arrays_and_tensors():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    a = cc.load_patches(arr)
    t = cc.load_patches(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(a.patches, t.patches) and a.sha256 == t.sha256
    gray = cc.load_patches(arr[..., 0])
    assert gray.patches.shape == (3, 3, 5, 6) and torch.equal(gray.patches[:, 0], gray.patches[:, 2])


def test_hash_changes_with_content():
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    other = arr.copy()
    other[0, 0, 0, 0] = 1
    assert cc.load_patches(arr).sha256 != cc.load_patches(other).sha256


def test_real_paper_bank(shared_data):
    bank = cc.load_patches(shared_data / "div2k_patches_8x8.npy")
    assert len(bank) == 10000 and bank.patch_shape == (8, 8)
