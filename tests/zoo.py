"""The spandrel zoo: published restoration and super-resolution architectures built small, with seeded random
weights, as a test bed for the engine (no checkpoint is downloaded).

Each :class:`Arch` builds an eval-mode ``nn.Module`` mapping one image tensor (1, C, H, W) in [0, 1] to an image
(H*scale, W*scale). Where spandrel calls an architecture through a ``call_fn`` (a noise-level channel appended,
the first element of a tuple kept, an output range mapped back to [0, 1]), the builder wraps the module in
:class:`Called`, which does the same. spandrel is imported inside the builders only: importing this module costs
nothing where spandrel is absent (:func:`unavailable` says why).

:data:`SKIPPED` lists the architectures left out, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ARCHS", "REPRESENTATIVE", "SKIPPED", "Arch", "Called", "arch", "names", "unavailable"]


def unavailable() -> str | None:
    """Why the zoo cannot be built here (spandrel or a torchvision matching torch missing), or None."""
    from cem_checks.loading import spandrel_unavailable

    return spandrel_unavailable()


class Called(nn.Module):
    """``call(model, x)``: how spandrel calls ``model`` on an image (its ``call_fn``), as a module."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.model, x)


def _first(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)[0]


def _with_noise_level(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """spandrel's DRUNet / FDnCNN call: a constant noise-level channel (15/255) appended to the image."""
    return model(torch.cat([x, torch.full_like(x[:, :1], 15 / 255)], dim=1))


def _half_range(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x) * 0.5 + 0.5


@dataclass(frozen=True)
class Arch:
    """One zoo architecture: ``build()`` returns the eval-mode module with weights seeded by ``seed``; ``size`` is
    the side of the square model input (input px) meeting its size requirements, ``scale`` its upscaling factor,
    ``channels`` its input channels; ``batch_size`` the engine's (1 for a model that takes one image at a
    time)."""

    name: str
    make: Callable[[], nn.Module]
    size: int = 32
    scale: int = 1
    channels: int = 3
    batch_size: int | str = "auto"

    @property
    def task(self) -> str:
        """The engine task matching the scale: ``sr<scale>``, or ``dn25`` for restoration at scale 1."""
        return f"sr{self.scale}" if self.scale > 1 else "dn25"

    def job(self) -> dict:
        """A tiny job for this architecture: ``image`` (uint8 (h, w, 3), a crop of a bundled natural image whose
        model input is ``size`` px), ``task``, an 8-px ``roi`` at the centre of the output, a ``block_size``
        making a 4x4 grid, and ``batch_size``."""
        import numpy as np

        import cem_checks as cc

        side = self.size * self.scale
        img = cc.load_image(cc.bundled_images()["astronaut"])[:, 150 : 150 + side, 180 : 180 + side]
        c = side // 2 - 4
        return dict(image=(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), task=self.task,
                    roi=(c, c, 8), block_size=self.size // 4, batch_size=self.batch_size)

    def build(self, seed: int = 0) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.make()
        return model.eval()


def _a(module: str, cls: str) -> Callable[..., nn.Module]:
    """The class ``cls`` of ``spandrel.architectures.<module>``, imported when called."""

    def make(**kw) -> nn.Module:
        import importlib

        return getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls)(**kw)

    return make


def _ipt(**kw) -> nn.Module:
    from spandrel.architectures.IPT import IPT, Model

    model = IPT(**kw)

    def call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # spandrel's call: its chopping wrapper, in 0..255
        return Model(m).forward(x * m.rgb_range, m.scale.index(max(m.scale))) / m.rgb_range

    return Called(model, call)


def _restoreformer(**kw) -> nn.Module:
    def call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # spandrel's call: [-1, 1] in and out
        return (m((x - 0.5) / 0.5)[0] + 1) / 2

    return Called(_a("RestoreFormer", "RestoreFormer")(**kw), call)


_WIN = dict(window_size=8, mlp_ratio=2.0)  # transformer SR: one stage, one block, 8x8 windows

ARCHS: list[Arch] = [
    Arch("ATD", lambda: _a("ATD", "ATD")(img_size=32, embed_dim=16, depths=(1,), num_heads=(2,), window_size=8,
                                          category_size=32, num_tokens=8, reducted_dim=4, convffn_kernel_size=3,
                                          upscale=2, upsampler="pixelshuffle"), 32, 2),
    Arch("CRAFT", lambda: _a("CRAFT", "CRAFT")(window_size=8, embed_dim=12, depths=[1], num_heads=[2],
                                               split_size_0=4, split_size_1=8, upscale=2), 32, 2),
    Arch("Compact", lambda: _a("Compact", "Compact")(num_feat=16, num_conv=4, upscale=2), 32, 2),
    Arch("DAT", lambda: _a("DAT", "DAT")(img_size=32, embed_dim=32, split_size=[2, 4], depth=[1], num_heads=[2],
                                         expansion_factor=2.0, upscale=2), 32, 2),
    Arch("DCTLSA", lambda: _a("DCTLSA", "DCTLSA")(nf=10, num_modules=6, num_head=2, upscale=2), 32, 2),
    Arch("DITN", lambda: _a("DITN", "DITN")(dim=12, ITL_blocks=1, SAL_blocks=1, UFONE_blocks=1, patch_size=8,
                                            upscale=2), 32, 2),
    Arch("DRCT", lambda: _a("DRCT", "DRCT")(img_size=32, embed_dim=12, depths=(1,), num_heads=(2,), window_size=8,
                                            gc=8, upscale=2, upsampler="pixelshuffle"), 32, 2),
    Arch("DRUNet", lambda: Called(_a("DRUNet", "DRUNet")(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=1),
                                  _with_noise_level), 32),
    Arch("DnCNN", lambda: _a("DnCNN", "DnCNN")(in_nc=3, out_nc=3, nc=16, nb=5), 32),
    Arch("FDnCNN", lambda: Called(_a("DnCNN", "DnCNN")(in_nc=4, out_nc=3, nc=16, nb=5, mode="FDnCNN"),
                                  _with_noise_level), 32),
    Arch("ESRGAN", lambda: _a("ESRGAN", "ESRGAN")(num_filters=16, num_blocks=1, scale=2), 32, 2),
    Arch("FBCNN", lambda: Called(_a("FBCNN", "FBCNN")(nc=[8, 16, 32, 512], nb=1), _first), 32),
    Arch("FDAT", lambda: _a("FDAT", "FDAT")(scale=2, embed_dim=16, num_groups=1, depth_per_group=1, num_heads=2,
                                            window_size=8, mid_dim=16), 32, 2),
    Arch("FFTformer", lambda: _a("FFTformer", "FFTformer")(dim=8, num_blocks=[1, 1, 1], num_refinement_blocks=1,
                                                           ffn_expansion_factor=1), 32),
    Arch("GRL", lambda: _a("GRL", "GRL")(img_size=32, embed_dim=16, depths=[1], num_heads_window=[1],
                                         num_heads_stripe=[1], window_size=8, stripe_size=[8, 8],
                                         stripe_groups=[None, None], mlp_ratio=2.0, upscale=2,
                                         upsampler="pixelshuffle", anchor_window_down_factor=2), 32, 2),
    Arch("HAT", lambda: _a("HAT", "HAT")(img_size=32, embed_dim=12, depths=(1,), num_heads=(2,), compress_ratio=3,
                                         squeeze_factor=4, num_feat=16, upscale=2, **_WIN), 32, 2),
    Arch("HVICIDNet", lambda: _a("HVICIDNet", "HVICIDNet")(channels=[8, 8, 16, 32], heads=[1, 2, 4, 8]), 32),
    # spandrel's call of IPT (its chopping wrapper) takes one image at a time: a batch of 2 fails inside it
    Arch("IPT", lambda: _ipt(patch_size=24, n_feats=16, num_heads=2, num_layers=1, scale=[2]), 32, 2, batch_size=1),
    Arch("KBNet_l", lambda: _a("KBNet", "KBNet_l")(dim=24, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                                   heads=[1, 2, 4, 8]), 32),
    Arch("KBNet_s", lambda: _a("KBNet", "KBNet_s")(width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                                                   dec_blk_nums=[1, 1]), 32),
    Arch("MMRealSR", lambda: Called(_a("MMRealSR", "MMRealSR")(num_in_ch=3, num_out_ch=3, scale=4, num_feat=16,
                                                               num_block=1, num_grow_ch=8, num_feats=[8, 8, 16, 16],
                                                               num_blocks=[1, 1, 1, 1]), _first), 16, 4),
    Arch("MixDehazeNet", lambda: Called(_a("MixDehazeNet", "MixDehazeNet")(embed_dims=[8, 16, 32, 16, 8],
                                                                           depths=[1, 1, 1, 1, 1]), _half_range), 48),
    Arch("MoESR", lambda: _a("MoESR", "MoESR")(scale=2, dim=16, n_blocks=1, n_block=1, upsample_dim=16), 32, 2),
    Arch("MoSR", lambda: _a("MoSR", "MoSR")(upscale=2, n_block=1, dim=16), 32, 2),
    Arch("NAFNet", lambda: _a("NAFNet", "NAFNet")(width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                                                  dec_blk_nums=[1, 1]), 32),
    Arch("OmniSR", lambda: _a("OmniSR", "OmniSR")(num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=2),
         32, 2),
    Arch("PLKSR", lambda: _a("PLKSR", "PLKSR")(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9), 32, 2),
    Arch("RealPLKSR", lambda: _a("PLKSR", "RealPLKSR")(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9,
                                                       norm_groups=4), 32, 2),
    Arch("RCAN", lambda: _a("RCAN", "RCAN")(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4), 32, 2),
    Arch("RGT", lambda: _a("RGT", "RGT")(img_size=32, embed_dim=12, depth=[1], num_heads=[2], mlp_ratio=2.0,
                                         split_size=[8, 8], upscale=2), 32, 2),
    Arch("RealCUGAN_2x", lambda: _a("RealCUGAN", "UpCunet2x")(), 48, 2),
    Arch("RealCUGAN_2x_fast", lambda: _a("RealCUGAN", "UpCunet2x_fast")(), 48, 2),
    Arch("RestoreFormer", lambda: _restoreformer(n_embed=32, embed_dim=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                 attn_resolutions=(16,), resolution=32, z_channels=16,
                                                 head_size=2), 32),
    Arch("RetinexFormer", lambda: _a("RetinexFormer", "RetinexFormer")(n_feat=8, stage=1, num_blocks=[1, 1, 1]), 32),
    Arch("SAFMN", lambda: _a("SAFMN", "SAFMN")(dim=8, n_blocks=1, upscaling_factor=2), 32, 2),
    Arch("SAFMNBCIE", lambda: _a("SAFMNBCIE", "SAFMNBCIE")(dim=8, n_blocks=1, num_layers=1, upscaling_factor=2),
         32),
    Arch("SCUNet", lambda: _a("SCUNet", "SCUNet")(config=[1] * 7, dim=64, input_resolution=64), 64),
    Arch("SPAN", lambda: _a("SPAN", "SPAN")(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2), 32, 2),
    # SeemoRe's mixture of experts routes one image at a time: a batch of 2 fails inside it
    Arch("SeemoRe", lambda: _a("SeemoRe", "SeemoRe")(scale=2, num_experts=2, num_layers=1, embedding_dim=16,
                                                     global_kernel_size=5, recursive=1), 32, 2, batch_size=1),
    Arch("SwiftSRGAN", lambda: _a("SwiftSRGAN", "SwiftSRGAN")(num_channels=16, num_blocks=1, upscale_factor=2),
         32, 2),
    Arch("Swin2SR", lambda: _a("Swin2SR", "Swin2SR")(img_size=32, embed_dim=12, depths=[1], num_heads=[2],
                                                     upscale=2, upsampler="pixelshuffle", **_WIN), 32, 2),
    Arch("SwinIR", lambda: _a("SwinIR", "SwinIR")(img_size=32, embed_dim=12, depths=[1], num_heads=[2], upscale=2,
                                                  upsampler="pixelshuffle", **_WIN), 32, 2),
    Arch("Uformer", lambda: _a("Uformer", "Uformer")(img_size=64, embed_dim=8, depths=[1] * 9,
                                                     num_heads=[1, 1, 1, 1, 1, 1, 1, 1, 1], win_size=4,
                                                     mlp_ratio=2.0), 64),
]

#: Architectures of spandrel left out of the zoo, and why.
SKIPPED: dict[str, str] = {
    "LaMa": "inpainting: takes an image and a mask (two tensors)",
    "GFPGAN": "face restoration at 512x512 or more (StyleGAN2 decoder) with fresh random noise in every forward",
    "AuraSR": "GigaGAN upsampler: adds fresh random noise to its input in every forward (not a function of the image)",
}


#: A representative subset, quick on 2 cores: plain conv stacks, a U-Net with a noise-level channel, a tuple
#: output, channel attention with the input scaled in place, a U-Net, window attention, an in-place slice update.
#: Tests that run every architecture take the others only on request (CEM_ZOO_ALL=1).
REPRESENTATIVE = ("DnCNN", "DRUNet", "Compact", "FBCNN", "RCAN", "NAFNet", "SwinIR", "PLKSR", "SPAN")


def names() -> list[str]:
    return [a.name for a in ARCHS]


def arch(name: str) -> Arch:
    for a in ARCHS:
        if a.name == name:
            return a
    raise KeyError(f"no zoo architecture named {name!r}; known: {', '.join(names())}")
