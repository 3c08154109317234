"""Time the DINO head's weight-normalised last layer both ways and print one JSON object.

    python benchmarks/head_last_layer.py                  # the CPU anchor: 256 -> 65536, student 64 rows, teacher 16, fp32
    python benchmarks/head_last_layer.py --device cuda --student-rows 768 --teacher-rows 128

The last layer maps the 256-wide bottleneck to out_dim = 65536 logits with W = g v / ||v|| row by row.
`layer`: calling the weight_norm-parametrised nn.Linear, as the official DINO code does: every call
writes W out (65536 x 256, 67 MB in fp32), and its backward writes dL/dW before turning it into dL/dv.
`by_hand`: `vitdino_core.dino_loss.weight_norm_linear`, (x v^T) * (g / ||v||) with hand-written
gradients, where the only out_dim x bottleneck tensor written is dL/dv itself. Timed as a training step
uses the layer: the student's forward + backward (gradients set to None first, as the optimizer's
`zero_grad` leaves them) and the teacher's forward without a graph. On a CPU the minor page faults per
call are counted too: a fresh buffer above glibc's mmap threshold is faulted in page by page.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

from timing import median_seconds  # noqa: E402

from vitdino_core.dino_loss import DINOHead, weight_norm_linear  # noqa: E402

WAYS = {"layer": lambda x, layer: layer(x), "by_hand": weight_norm_linear}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bottleneck", type=int, default=256)
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--student-rows", type=int, default=64, help="crops through the student per step (anchor: 8 x 8)")
    p.add_argument("--teacher-rows", type=int, default=16, help="global crops through the teacher per step (anchor: 8 x 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (0 = PyTorch's default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=15)
    return p.parse_args(argv)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_way(way: str, layer: nn.Module, args, device: torch.device) -> dict:
    fn = WAYS[way]
    g = torch.Generator(device=device).manual_seed(0)
    x_student = torch.randn(args.student_rows, args.bottleneck, generator=g, device=device, requires_grad=True)
    x_teacher = torch.randn(args.teacher_rows, args.bottleneck, generator=g, device=device)
    dy = torch.randn(args.student_rows, args.out_dim, generator=g, device=device)

    def student():
        for p in (*layer.parameters(), x_student):
            p.grad = None
        fn(x_student, layer).backward(dy)  # (rows, K) forward, then dL/dx and dL/dv

    def teacher():
        with torch.no_grad():
            fn(x_teacher, layer)  # (rows, K)

    out = {}
    for name, call in (("student_forward_backward", student), ("teacher_forward", teacher)):
        f0 = minor_faults()
        seconds = median_seconds(call, device, args.warmup, args.repeat)
        faults = (minor_faults() - f0) / (args.warmup + args.repeat)
        out[name] = {"ms": seconds * 1e3, "minor_faults_per_call": faults if device.type == "cpu" else None}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = DINOHead(args.bottleneck, args.out_dim, nlayers=1, bottleneck_dim=args.bottleneck).last_layer.to(device)
    x = torch.randn(8, args.bottleneck, device=device)
    with torch.no_grad():
        max_diff = (WAYS["by_hand"](x, layer) - WAYS["layer"](x, layer)).abs().max().item()
    result = {
        "benchmark": "head_last_layer",
        "config": vars(args),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "weight_mb": args.out_dim * args.bottleneck * 4 / 1e6,
        "max_abs_diff_by_hand_vs_layer": max_diff,
        "ways": {way: time_way(way, layer, args, device) for way in WAYS},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
