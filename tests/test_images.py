"""Loading clean images: every accepted form, RGBA and grayscale handled explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cem_checks as cc


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)


def test_all_forms_load_to_the_same_tensor(rgb, tmp_path):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    forms = [
        rgb,
        rgb.astype(np.float32) / 255,
        Image.fromarray(rgb),
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        torch.from_numpy(rgb).permute(2, 0, 1),
    ]
    ref = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for f in forms:
        t = cc.load_image(f)
        assert t.shape == (3, 6, 5) and t.dtype == torch.float32
        torch.testing.assert_close(t, ref, atol=1e-7, rtol=0)


def test_opaque_rgba_drops_alpha_silently(rgb, tmp_path):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    torch.testing.assert_close(cc.load_image(tmp_path / "a.png"), cc.load_image(rgb))
    torch.testing.assert_close(cc.load_image(rgba), cc.load_image(rgb))


def test_translucent_rgba_warns_and_keeps_the_stored_colours(rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 10
    with pytest.warns(cc.ImageConversionWarning, match="1 pixels below 255"):
        t = cc.load_image(Image.fromarray(rgba, "RGBA"))
    torch.testing.assert_close(t, cc.load_image(rgb))


def test_grayscale_is_replicated_to_three_channels(rgb):
    gray = rgb[..., 0]
    for form in (gray, gray[..., None], Image.fromarray(gray, "L"), torch.from_numpy(gray)):
        t = cc.load_image(form)
        assert t.shape == (3, 6, 5)
        assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
        torch.testing.assert_close(t[0], torch.from_numpy(gray).float() / 255)


def test_16_bit_grayscale_png(tmp_path):
    arr = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    t = cc.load_image(tmp_path / "g16.png")
    torch.testing.assert_close(t[1].double(), torch.from_numpy(arr / 65535.0), atol=1e-6, rtol=0)


def test_real_demo_image_is_rgba_and_loads_as_rgb(shared_data):
    t = cc.load_image(shared_data / "demo_1.png")
    assert t.shape == (3, 256, 256)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 2), np.uint8), "unsupported shape"),
        (np.zeros((3, 4, 4, 2)), "unsupported shape"),
        (np.full((4, 4, 3), 255.0), r"values in \[255, 255\]; expected \[0, 1\]"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "dtype int64"),
        (torch.zeros(2, 3, 4, 4), "unsupported shape"),
        ([[0, 1]], "not supported"),
        ("/no/such/image.png", "does not exist"),
    ],
)
def test_bad_images(bad, match):
    with pytest.raises(cc.ImageError, match=match):
        cc.load_image(bad)


def test_unreadable_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(cc.ImageError, match="cannot read image"):
        cc.load_image(tmp_path / "x.png")
