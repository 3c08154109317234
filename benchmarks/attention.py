"""Time scaled_dot_product_attention's kernels at a ViT's attention shapes and print one JSON
object.

    python benchmarks/attention.py --device cuda  # ViT-B/12 at 228 and 96 px, batch 64, bf16
    python benchmarks/attention.py --device cuda --dim 384 --heads 6 --patch-size 16 --sizes 224 96

PyTorch has several fused attention kernels (flash, memory-efficient, cuDNN) and the plain `math`
path; it picks one by itself unless told. This times each one alone, forward and forward + backward,
at the (B, H, N, d) shapes a DINO step gives its backbones: one per crop size, B = images x crops of
that size. `--layout step` (the default) feeds q, k, v as `Attention` makes them, views of one (B,
N, 3C) tensor, i.e. laid out (B, N, H, d) in memory, which the flash kernel takes as it is;
`--layout contiguous` feeds (B, H, N, d)-contiguous tensors, which some kernels copy first. An
unsupported kernel is reported with PyTorch's reason. `explicit` is `Attention`'s own softmax path
(the N x N matrix in memory), `explicit_compiled` the same under torch.compile: for short sequences
(a 96 px crop has 65 tokens at patch 12) a fused kernel's tiles are mostly empty. FLOPs count the
two matmuls, 4 B H N^2 d forward and three times that for forward + backward, as train_step.py
counts. Every kernel's output is compared with the first kernel that ran (max absolute difference).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

from timing import median_seconds  # noqa: E402

from vitdino_core.attention import softmax_attention  # noqa: E402

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
    "auto": None,
}  # auto: whichever PyTorch picks
EXPLICIT = [
    "explicit",
    "explicit_compiled",
]  # Attention's own softmax path, eager and under torch.compile


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention's explicit path (attention maps, bf16 on a CPU): the (B, H, N, N) matrix in the
    input dtype."""
    return softmax_attention(q, k, v, q.shape[-1] ** -0.5)[0]  # (B, H, N, d)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--patch-size", type=int, default=12)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[228, 96],
        help="crop sizes (tokens = (size/patch)^2 + 1)",
    )
    p.add_argument(
        "--crops", type=int, nargs="+", default=[2, 10], help="crops per image at each size"
    )
    p.add_argument("--batch", type=int, default=64, help="images")
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        choices=list(BACKENDS) + EXPLICIT,
        help="default: all (explicit_compiled only on a GPU: compiling takes a while on a CPU)",
    )
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument(
        "--layout",
        default="step",
        choices=["step", "contiguous"],
        help="memory layout of q, k, v (see above)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    if len(args.crops) != len(args.sizes):
        p.error(
            f"--crops needs one count per --sizes entry, got {len(args.crops)} for"
            f" {len(args.sizes)}"
        )
    if args.dim % args.heads:
        p.error(f"--dim {args.dim} must be divisible by --heads {args.heads}")
    if args.backends is None:
        args.backends = (
            list(BACKENDS) + EXPLICIT[:1] + (EXPLICIT[1:] if args.device.startswith("cuda") else [])
        )
    return args


def make_qkv(B: int, H: int, N: int, d: int, args, device, dtype, g) -> tuple[torch.Tensor, tuple]:
    """The leaf tensor that takes the gradients, and q, k, v of shape (B, H, N, d) made from it."""
    if args.layout == "step":  # as Attention.forward: views of the qkv projection's output
        leaf = torch.randn(
            B, N, 3 * H * d, device=device, dtype=dtype, generator=g, requires_grad=True
        )  # (B, N, 3C)
        return leaf, tuple(
            t.view(B, N, H, d).transpose(1, 2) for t in leaf.chunk(3, dim=-1)
        )  # 3 x (B, H, N, d)
    leaf = torch.randn(
        3, B, H, N, d, device=device, dtype=dtype, generator=g, requires_grad=True
    )  # (3, B, H, N, d)
    return leaf, tuple(leaf.unbind(0))  # 3 x (B, H, N, d), each contiguous


def time_backend(name: str, leaf: torch.Tensor, qkv: tuple, args, device) -> dict:
    """Forward and forward + backward of one kernel; its output for the comparison."""
    if name in EXPLICIT:
        fn = (
            torch.compile(explicit_attention, dynamic=False)
            if name == "explicit_compiled"
            else explicit_attention
        )

        def forward():
            return fn(*qkv)  # (B, H, N, d)

    else:

        def forward():
            with nullcontext() if BACKENDS[name] is None else sdpa_kernel(BACKENDS[name]):
                return F.scaled_dot_product_attention(*qkv)  # (B, H, N, d)

    def forward_backward():
        out = forward()  # (B, H, N, d)
        out.backward(grad)  # gradients into the leaf

    grad = torch.ones_like(qkv[0])  # (B, H, N, d)
    try:
        with torch.no_grad():
            out = forward()
    except RuntimeError as e:  # this kernel does not support these inputs or this device
        return {"error": str(e).strip().splitlines()[0]}
    fwd = median_seconds(lambda: forward().sum(), device, args.warmup, args.repeat)
    fwd_bwd = median_seconds(forward_backward, device, args.warmup, args.repeat)
    leaf.grad = None
    return {"forward_s": fwd, "forward_backward_s": fwd_bwd, "out": out}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    H, d = args.heads, args.dim // args.heads
    result = {
        "benchmark": "attention",
        "config": vars(args),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shapes": [],
    }
    g = torch.Generator(device=device).manual_seed(0)
    for size, crops in zip(args.sizes, args.crops):
        B, N = args.batch * crops, (size // args.patch_size) ** 2 + 1
        leaf, qkv = make_qkv(B, H, N, d, args, device, dtype, g)
        flop = 4 * B * H * N * N * d  # QK^T and AV
        entry, first = (
            {"B": B, "H": H, "N": N, "d": d, "size": size, "forward_flop": flop, "backends": {}},
            None,
        )
        for name in args.backends:
            r = time_backend(name, leaf, qkv, args, device)
            if "out" in r:
                out = r.pop("out")
                first = out if first is None else first
                r["max_abs_diff_to_first"] = (out.float() - first.float()).abs().max().item()
                r["forward_tflop_per_s"] = flop / r["forward_s"] / 1e12
                r["forward_backward_tflop_per_s"] = 3 * flop / r["forward_backward_s"] / 1e12
            entry["backends"][name] = r
            print(f"{size} px {name}: {r}", file=sys.stderr)
        result["shapes"].append(entry)
        del leaf, qkv
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
