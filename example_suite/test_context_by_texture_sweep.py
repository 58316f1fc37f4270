"""Does context help where the ROI's own evidence is weak, and hurt where it is strong? A sweep over flat and
textured ROIs of held-out images, for the plain and the channel-attention denoisers.

The claim (from the paper's lab): a denoiser leans on its context where the ROI itself says little (a flat patch:
the noise dominates its pixels), and that context may hurt where the ROI's own evidence is strong (a textured
patch, whose detail averaging with the surroundings would blur).

The setup: two 64x64 held-out crops of chelsea (the image the example models never saw in training), each
holding both smooth background and textured fur or whiskers; in each, ``cc.roi_sample`` draws 2 ROIs of 16 px from
the flattest third of the 49 ROIs of a grid of step 8 (texture energy: mean squared luma gradient, about 2e-5 to
2e-4 here) and 2 from the most textured third (about 1.2e-3 to 2e-3): 4 ROIs per class, 8 maps per model (8 px
blocks, an 8x8 grid; fast mode with 16 fine draws instead of 50 to keep each map to a few seconds, so the
per-block effects carry the larger standard errors the report shows). The context of a ROI is every block outside
it; its *far* context the blocks beyond the plain DnCNN's receptive radius (7 px), which only the attention
model can see.

What the sweep measured (seed 0; per class the mean over its 4 ROIs, dB summed over the context blocks):

=========================  ==============  =============  ==============  =============
                           dncnn_dn50                     attention_dncnn_dn50
-------------------------  -----------------------------  -----------------------------
per class                  flat            textured       flat            textured
=========================  ==============  =============  ==============  =============
context helps (+dB)        8.23            5.35           7.40            5.45
context hurts (-dB)        0.041           0.023          0.043           0.021
negative share (mass)      0.0053          0.0050         0.0063          0.0037
far context helps (+dB)    0 (exact)       0 (exact)      0               0
far context hurts (-dB)    0 (exact)       0 (exact)      0.017           0
far share (mass)           0 (exact)       0 (exact)      0.0029          0
=========================  ==============  =============  ==============  =============

- Context helps both classes a lot, and flat ROIs more (+8.2 vs +5.4 dB for the plain model, +7.4 vs +5.5 dB with
  attention): the first half of the claim holds as a tendency on these 8 ROIs, not as an established difference
  (the per-ROI values overlap: 4.4 to 12.3 dB flat, 2.4 to 8.8 dB textured).
- Context hardly hurts anywhere: at most 2.1 % of any ROI's effect mass is negative, and the (tiny) harm is not
  larger on textured ROIs; with attention the only harm from beyond 7 px falls on two *flat* ROIs (0.05 and 0.02
  dB). The second half of the claim is not supported by this data.
- Channel attention's far context (beyond 7 px) changes the ROI output of every ROI (support radius 25 to 41 px)
  but moves the ROI PSNR by more than the 0.01 dB zero threshold only for those two flat ROIs, and never helps:
  under 1 % of the effect mass. For the plain DnCNN it is exactly zero, as its receptive field guarantees.

The assertions below hold what is robust in that (the bounds sit well above the measured values); the class
comparison is asserted on the measured direction of the helping context only, and recorded (``record_property``,
printed) for the rest.
"""

from __future__ import annotations

import numpy as np
import pytest

import cem_checks as cc
from example_suite.nets import SmallDnCNN

#: The held-out crops: (top, left) of 64x64 crops of chelsea holding both smooth and textured regions.
CROPS = ((128, 320), (208, 48))
CROP_PX = 64
ROI_PX = 16
ROIS_PER_IMAGE = 2  # per texture class: 4 ROIs per class over the two crops
TEXTURES = ("flat", "textured")
RADIUS = SmallDnCNN.receptive_radius  # 7 px: the plain model's reach; "far" context lies beyond it
SETTINGS = dict(block_size=8, fine=16, context_radius=RADIUS)


def context_db(result: cc.CEMResult, beyond: float = 0.0, sign: str = "positive") -> float:
    """The ``sign`` ("positive": helping, "negative": hurting, as a magnitude) effect mass in dB of the blocks
    outside the ROI farther than ``beyond`` input px from it."""
    far = (~result.roi_mask) & (result.distance > beyond)
    effect = result.effect[far]
    return float(np.maximum(effect if sign == "positive" else -effect, 0.0).sum())


def _rois(texture: str):
    return lambda image: cc.roi_sample(image, ROIS_PER_IMAGE, ROI_PX, seed=0, texture=texture)


@pytest.mark.cem(task="dn50")
@pytest.mark.parametrize("name", ["dncnn_dn50", "attention_dncnn_dn50"])
def test_context_sweep_by_texture(cem_sweep, example_model, held_out, record_property, name):
    model = example_model(name)
    images = {f"chelsea_{top}_{left}": held_out(CROP_PX, top=top, left=left) for top, left in CROPS}
    sweeps = {texture: cem_sweep(model, images, rois=_rois(texture), **SETTINGS) for texture in TEXTURES}

    measured = {}
    for texture, s in sweeps.items():
        # context helps every class: several dB of helping effect mass around the ROI (mean, lower CI end)
        helps = cc.assert_over(s, context_db, at_least=2.0, beyond=0.0, sign="positive",
                               name=f"context_helps_{texture}")
        # ... and hurts little anywhere: at most 5 % of any ROI's effect mass is negative
        cc.assert_over(s, "negative_fraction_mass", at_most=0.05, statistic="max", name=f"context_hurts_little_{texture}")
        if model.receptive_radius is not None:
            # the plain DnCNN: nothing beyond its receptive radius has any effect (exactly zero)
            cc.assert_over(s, "context_share_beyond", at_most=0.0, statistic="max", decision="point",
                           name=f"no_far_context_{texture}")
        else:
            # channel attention: far context exists but carries under 5 % of any ROI's effect mass
            cc.assert_over(s, "context_share_beyond", at_most=0.05, statistic="max", name=f"far_context_small_{texture}")
        frame = s.frame
        measured[texture] = {
            "rois": len(frame),
            "texture_energy": float(frame["texture_energy"].mean()),
            "helps_db": helps.value,
            "hurts_db": float(np.mean([context_db(r, 0.0, "negative") for r in s.results])),
            "negative_share_mass": float(frame["negative_fraction_mass"].mean()),
            "far_helps_db": float(np.mean([context_db(r, RADIUS, "positive") for r in s.results])),
            "far_hurts_db": float(np.mean([context_db(r, RADIUS, "negative") for r in s.results])),
            "far_share_mass": float(frame["context_share_beyond"].mean()),
        }
    record_property("context_by_texture", measured)
    print(f"{name}: " + "; ".join(f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())
                                  for t, m in measured.items()))
    flat, textured = measured["flat"], measured["textured"]
    # the measured direction (a tendency on 4 + 4 ROIs, see the module docstring): context helps flat ROIs more
    assert flat["texture_energy"] < textured["texture_energy"]
    assert flat["helps_db"] > textured["helps_db"], (
        f"{name}: the context helps textured ROIs ({textured['helps_db']:.3g} dB) at least as much as flat ones "
        f"({flat['helps_db']:.3g} dB): update the finding in this module's docstring and the README")
