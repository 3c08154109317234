"""A one-minute check that the model builds and runs: `python -m vitdino_core.sanity`.

Builds a ViT (ViT-B/12 at 228 px by default), prints its parameter count, runs one forward
pass on a random batch of 2 and one `get_last_selfattention`, and checks shapes, finiteness and
that every attention row sums to 1. The exit code is non-zero if anything is wrong.

    python -m vitdino_core.sanity                       # ViT-B/12, 228 px
    python -m vitdino_core.sanity --arch vit_small --patch-size 16 --img-size 224
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .vision_transformer import ARCHS, build_vit, default_img_size, model_name


def run_sanity(
    arch: str = "vit_base",
    patch_size: int = 12,
    img_size: int | None = None,
    batch_size: int = 2,
    seed: int = 0,
) -> list[str]:
    """Build, count, run; print what happens and return the list of problems found
    (empty = all good)."""
    torch.manual_seed(seed)
    img_size = img_size or default_img_size(patch_size)
    name = model_name(arch, patch_size)
    problems: list[str] = []

    model = build_vit(arch, patch_size=patch_size, img_size=img_size).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {n_params:,} parameters ({n_params / 1e6:.2f}M), image size {img_size}, "
        f"{(img_size // patch_size) ** 2} patches + CLS"
    )

    x = torch.randn(batch_size, 3, img_size, img_size)  # (B, 3, H, W)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(x)  # (B, D)
        dt = time.perf_counter() - t0
    print(
        f"forward {tuple(x.shape)} -> {tuple(out.shape)} in {dt * 1000:.0f} ms "
        f"({torch.get_num_threads()} CPU threads)"
    )
    if tuple(out.shape) != (batch_size, model.embed_dim):
        problems.append(
            f"forward output shape {tuple(out.shape)}, expected {(batch_size, model.embed_dim)}"
        )
    if not torch.isfinite(out).all():
        problems.append("forward output has NaN or inf values")

    t0 = time.perf_counter()
    attn = model.get_last_selfattention(x)  # (B, heads, N+1, N+1)
    dt = time.perf_counter() - t0
    n_tokens = (img_size // patch_size) ** 2 + 1
    expected = (batch_size, model.num_heads, n_tokens, n_tokens)
    print(f"get_last_selfattention -> {tuple(attn.shape)} in {dt * 1000:.0f} ms")
    if tuple(attn.shape) != expected:
        problems.append(f"attention shape {tuple(attn.shape)}, expected {expected}")
    else:
        row_err = (attn.sum(-1) - 1).abs().max().item()
        print(f"attention rows sum to 1 (max error {row_err:.1e})")
        if not row_err < 1e-4:
            problems.append(f"attention rows do not sum to 1 (max error {row_err:.3g})")
        if (attn < 0).any():
            problems.append("attention has negative weights")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vitdino_core.sanity", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--arch", default="vit_base", choices=sorted(ARCHS), help="model size (default vit_base)"
    )
    parser.add_argument(
        "--patch-size", type=int, default=12, help="patch size in pixels (default 12)"
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        help=(
            "image side in pixels, a multiple of the patch size (default: the multiple nearest 224)"
        ),
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, help="random images per forward pass (default 2)"
    )
    args = parser.parse_args(argv)
    try:
        problems = run_sanity(args.arch, args.patch_size, args.img_size, args.batch_size)
    except ValueError as e:  # e.g. an image size that is not a multiple of the patch size
        print(f"error: {e}", file=sys.stderr)
        return 2
    if problems:
        for p in problems:
            print(f"FAILED: {p}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
