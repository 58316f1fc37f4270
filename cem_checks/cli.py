"""The ``cem`` console command."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _parse_roi(text: str) -> tuple[int, int, int]:
    try:
        x, y, s = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: expected X,Y,SIZE in output pixels, e.g. 40,40,16") from None
    return x, y, s


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cem", description="Causal effect maps of low-level vision models.")
    parser.add_argument("--version", action="version", version=f"cem {__version__}")
    sub = parser.add_subparsers(dest="command")
    m = sub.add_parser("map", help="compute a causal effect map of a TorchScript model and save it (.npz)")
    m.add_argument("--model", required=True, help="TorchScript file (torch.jit.save)")
    m.add_argument("--image", required=True, help="clean image file")
    m.add_argument("--task", required=True, help="sr<scale> | dn<sigma> | dr, e.g. sr4, dn50, dr")
    m.add_argument("--roi", required=True, type=_parse_roi, help="X,Y,SIZE in output pixels")
    m.add_argument("--block-size", type=int, default=None, help="block side in input pixels")
    m.add_argument("--mode", choices=("fast", "paper"), default="fast")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--cache-dir", default=None, help="folder for resumable partial results")
    m.add_argument("--device", default="auto")
    m.add_argument("--patches", default=None, help=".npy patch bank or folder of images")
    m.add_argument("-o", "--output", required=True, help="where to write the result (.npz)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    import torch

    from . import compute_cem
    from .errors import CEMError

    try:
        try:
            model = torch.jit.load(args.model, map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise CEMError(f"--model {args.model!r} is not a TorchScript file (torch.jit.save): {exc}") from None
        result = compute_cem(
            model,
            args.image,
            task=args.task,
            roi=args.roi,
            block_size=args.block_size,
            patches=args.patches,
            mode=args.mode,
            seed=args.seed,
            device=args.device,
            cache_dir=args.cache_dir,
        )
    except CEMError as exc:
        print(f"cem: error: {exc}", file=sys.stderr)
        return 2
    path = result.save(args.output)
    c = result.effect
    print(
        f"map {result.rows}x{result.cols} blocks, base PSNR {result.base_psnr:.2f} dB, effect range "
        f"[{c.min():+.3f}, {c.max():+.3f}] dB, {result.forward_passes} forward passes in {result.wall_s:.1f} s -> {path}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
