"""Time the patch embedding three ways and print one JSON object.

    python benchmarks/patch_embed.py  # ViT-S/16 at the CPU anchor's crops, fp32, CPU
    python benchmarks/patch_embed.py --device cuda --dtype bf16 --dim 768 --patch-size 12 \\
        --sizes 228 96 --crops 128 640

The patch embedding is a ViT's only convolution (kernel = stride = patch), and the same maths as one
linear layer on the flattened patches. This times it, plus the class-token concatenation that
follows it in `prepare_tokens`, forward and forward + backward (weights only: images need no
gradient), as * `default`: the convolution, `patch_embed.proj`, in the default memory layout; *
`channels_last`: the convolution with images stored (B, H, W, C), which convolution libraries often
  prefer, so that its output is already token-major (input and weight converted; the input's
  conversion is timed too, as a loader would have to do it);
* `matmul`: `patchify` (a reshape copy of the patches) and one matmul with the conv's weight
flattened
  to (D, C*p*p), the form notebook 01 builds by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

import torch.nn.functional as F  # noqa: E402
from timing import median_seconds  # noqa: E402

from vitdino_core.patch_embedding import PatchEmbed, patchify  # noqa: E402

WAYS = ("default", "channels_last", "matmul")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 96], help="crop sizes")
    p.add_argument(
        "--crops",
        type=int,
        nargs="+",
        default=[16, 48],
        help="crops at each size (the anchor: batch 8)",
    )
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (0 = PyTorch's default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    if len(args.crops) != len(args.sizes):
        p.error(
            f"--crops needs one count per --sizes entry, got {len(args.crops)} for"
            f" {len(args.sizes)}"
        )
    return args


def embed_fn(embed: PatchEmbed, way: str):
    """(B, 3, S, S) images -> (B, N, D) tokens, computed `way`."""
    fmt = torch.channels_last if way == "channels_last" else torch.contiguous_format
    embed.proj.to(memory_format=fmt)
    if way == "matmul":  # the same weights as one linear layer on the flattened patches
        return lambda x: F.linear(
            patchify(x, embed.patch_size), embed.proj.weight.flatten(1), embed.proj.bias
        )  # (B, N, D)
    return lambda x: embed(x.contiguous(memory_format=fmt))  # (B, N, D)


def time_way(embed: PatchEmbed, images: torch.Tensor, way: str, args) -> dict:
    embed_tokens = embed_fn(embed, way)
    cls = torch.zeros(1, 1, args.dim, device=images.device)  # (1, 1, D)
    autocast = torch.autocast(
        images.device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"
    )

    def tokens() -> torch.Tensor:
        with autocast:
            x = embed_tokens(images)  # (B, N, D)
            return torch.cat((cls.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)  # (B, N+1, D)

    def forward():
        with torch.no_grad():
            tokens()

    def forward_backward():
        tokens().float().sum().backward()

    out = tokens().detach().float()
    return {
        "forward_ms": 1e3 * median_seconds(forward, images.device, args.warmup, args.repeat),
        "forward_backward_ms": (
            1e3 * median_seconds(forward_backward, images.device, args.warmup, args.repeat)
        ),
        "out": out,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU is visible")
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "patch_embed",
        "config": vars(args),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shapes": [],
    }
    g = torch.Generator().manual_seed(0)
    for size, crops in zip(args.sizes, args.crops):
        torch.manual_seed(0)
        embed = PatchEmbed(size, args.patch_size, 3, args.dim).to(device)
        images = torch.randn(crops, 3, size, size, generator=g).to(device)  # (B, 3, S, S)
        timed = {way: time_way(embed, images, way, args) for way in WAYS}
        outs = {way: t.pop("out") for way, t in timed.items()}
        diff = max((outs[way] - outs["default"]).abs().max().item() for way in WAYS)
        fb = {way: t["forward_backward_ms"] for way, t in timed.items()}
        entry = {
            "crops": crops,
            "size": size,
            **timed,
            "max_abs_diff": diff,
            "channels_last_over_default_forward_backward": fb["channels_last"] / fb["default"],
            "matmul_over_default_forward_backward": fb["matmul"] / fb["default"],
        }
        result["shapes"].append(entry)
        print(f"{crops} x {size} px: {entry}", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
