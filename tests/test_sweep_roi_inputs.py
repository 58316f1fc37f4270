"""A sweep's ROIs as given by the caller: an error inside a ``rois`` callable names the image and the callable (typed,
the original as its cause), and a ROI repeated for one image is computed and counted once, with a warning."""

from __future__ import annotations

import numpy as np
import pytest
from nets import ConvStack

import cem_checks as cc
from cem_checks.errors import DuplicateROIWarning, ROIError

SUPPORT = dict(task="dn25", stage="support", block_size=8, within=4, progress=False, device="cpu")


def _noise(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 32, 3)) * 255).round().astype(np.uint8)


def test_an_error_inside_the_rois_callable_names_the_image_and_the_callable():
    def rois_of(image):
        step = 16 // (image.shape[0] - 3)  # a caller's bug: the channels are not the height; a division by zero
        return [(0, 0, step)]

    images = {"first": _noise(1), "second": _noise(2)}
    with pytest.raises(ROIError) as info:
        cc.sweep(ConvStack((1, 1)), images, rois=rois_of, **SUPPORT)
    message = str(info.value)
    assert message.startswith("the rois callable test_an_error_inside_the_rois_callable_names_the_image_and_the_"
                              "callable.<locals>.rois_of raised ZeroDivisionError for image 'first': ")
    assert "must return a list of (x, y, size) ROIs" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # the original, with its traceback


def test_a_repeated_roi_is_computed_and_counted_once_with_a_warning():
    model = ConvStack((1, 1))
    images = {"first": _noise(1), "second": _noise(2)}
    with pytest.warns(DuplicateROIWarning) as record:
        s = cc.sweep(model, images, rois=[(0, 0, 8), (16, 16, 8), (0, 0, 8)], **SUPPORT)
    (w,) = record
    assert str(w.message).startswith(
        "2 ROIs repeated an earlier ROI of the same image and were left out (each item is computed and counted once): "
        "image 'first' roi (0, 0, 8) (rois[0] and [2]); image 'second' roi (0, 0, 8) (rois[0] and [2]).")
    assert w.filename == __file__  # points at the caller's sweep(...)
    assert [(i.index, i.image, i.roi) for i in s.items] == [
        (0, "first", (0, 0, 8)), (1, "first", (16, 16, 8)), (2, "second", (0, 0, 8)), (3, "second", (16, 16, 8))]
    assert s.settings["n_items"] == 4 and len(s.frame) == 4
    # the same table as the sweep given each ROI once
    once = cc.sweep(model, images, rois=[(0, 0, 8), (16, 16, 8)], **SUPPORT)
    assert s.frame.drop(columns="wall_s").equals(once.frame.drop(columns="wall_s"))
    # a callable's repeats too, named by the image it was called for
    with pytest.warns(DuplicateROIWarning, match=r"^2 ROIs repeated .*: image 'first' roi \(8, 8, 8\) "
                                                 r"\(rois\('first'\)\[0\] and \[1\]\); image 'second'"):
        s = cc.sweep(model, images, rois=lambda image: [(8, 8, 8), (8, 8, 8)], **SUPPORT)
    assert len(s) == 2
