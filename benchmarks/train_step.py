"""Time one full DINO training step and print one JSON object.

    # ViT-S/16 + DINOHead(65536), batch 8, 2x224 + 6x96, fp32, 2 threads, CPU
    python benchmarks/train_step.py
    # the project's step and the official-style step, side by side
    python benchmarks/train_step.py --compare
    # the same, their steps timed in turn (for a shared machine)
    python benchmarks/train_step.py --compare --paired
    python benchmarks/train_step.py --arch vit_base --device cuda --dtype bf16 --batch 64 \\
        --local-crops 10

A step is what training runs: teacher forward (2 global crops), student forward (all crops), DINO
loss, backward, per-parameter gradient clipping, AdamW, EMA update of the teacher. The project's
step is `vitdino_core.training.trainer.DINOTrainer.train_step` itself, fed a fixed synthetic batch.
`--reference` re-creates the execution strategy of the official DINO code (the patch embedding as a
convolution, explicit softmax attention, the residual add and drop path as three passes, the head's
weight-normalised weight written out on every call, a Python loop over view pairs in the loss, a
`.item()` per parameter in clipping, a Python loop for the EMA, for-loop AdamW) with the project's
modules, so both can be timed on the same machine in one run.

Times are the median of --repeat steps after --warmup steps. FLOPs are counted analytically (matmuls
and the patch-embedding convolution only) and compared with a large matmul of the same dtype timed
on the same device in the same run. Small models multiply small matrices, which no library runs at
the large-matmul rate, so the script also times the step's own matmul shapes alone
(`own_matmuls_alone`): `fraction_of_step_in_own_matmuls` near 1 means the step is all matmul at the
speed this library reaches for those shapes, and what is left to win is in the matmuls themselves.
`--profile N` then runs N more steps under torch.profiler and sorts their kernels (GPU) or operators
(CPU) by kind: matmul, attention, element-wise, normalisation, optimizer, copies.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

from timing import sync  # noqa: E402

from vitdino_core.attention import Attention, softmax_attention  # noqa: E402
from vitdino_core.dino_loss import DINOHead, DINOLoss  # noqa: E402
from vitdino_core.ema_training import cancel_gradients_last_layer, get_params_groups  # noqa: E402
from vitdino_core.training.config import make_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402
from vitdino_core.vision_transformer import ARCHS, Block, VisionTransformer  # noqa: E402

HEAD_DIMS = (2048, 256)  # DINOHead hidden and bottleneck widths (3 layers)
SDPA_BACKENDS = {
    "auto": None,
    "flash": "flash",
    "efficient": "mem_efficient",
    "cudnn": "cudnn",
    "math": "math",
}


def allow_only_sdpa(name: str) -> None:
    """Process-wide: let scaled_dot_product_attention use only this kernel (eager and compiled
    graphs alike). Compiled graphs get an inductor cache of their own per kernel: torch 2.11's
    cache key leaves the SDPA choice out (pytorch/pytorch#185449), so a graph compiled earlier
    with another kernel would be reused."""
    if SDPA_BACKENDS[name] is None:
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_sdpa_{name}"
    )
    for backend in ("flash", "mem_efficient", "cudnn", "math"):
        getattr(torch.backends.cuda, f"enable_{backend}_sdp")(backend == SDPA_BACKENDS[name])


def explicit_attention_upto(max_tokens: int) -> None:
    """Process-wide experiment: `Attention` takes its explicit softmax path for sequences of at most
    `max_tokens` tokens. A fused kernel works in tiles of 64-128 tokens, so a 96 px crop at patch 12
    (65 tokens) leaves most of each tile empty; the explicit path's (N x N) matrices are small
    there. 0 leaves the rule as it is."""
    if max_tokens <= 0:
        return
    rule = Attention.attend  # the module's own rule (a fast module's included)

    def attend(self, q, k, v, return_attention=False):  # k: (B, H, N, d)
        if k.shape[-2] <= max_tokens:
            return softmax_attention(q, k, v, self.scale, self.attn_drop)
        return rule(self, q, k, v, return_attention)

    Attention.attend = attend  # an experiment for this process only, never the package's way


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_small", choices=sorted(ARCHS))
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument(
        "--batch", type=int, default=8, help="images per step (each gives 2 + local-crops crops)"
    )
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16 = autocast, weights stay fp32",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones (the project's step only)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode with --compile, e.g. max-autotune-no-cudagraphs",
    )
    p.add_argument(
        "--sdpa",
        default="auto",
        choices=sorted(SDPA_BACKENDS),
        help="the only scaled_dot_product_attention kernel allowed (auto: PyTorch picks)",
    )
    p.add_argument(
        "--explicit-attention-upto",
        type=int,
        default=0,
        metavar="N",
        help=(
            "the project's step computes attention explicitly (softmax of the N x N matrix) for"
            " sequences of at most N tokens, with the fused kernel for longer ones (0: the"
            " project's own rule)"
        ),
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (0 = PyTorch's default)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument(
        "--matmul-size",
        type=int,
        default=0,
        help="n of the n x n x n peak matmul (0: 2048 on CPU, 8192 on GPU)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help=(
            "after timing, run N more steps under torch.profiler and add where their time went"
            " (kernels on a GPU, operators on a CPU, by kind) to the JSON as `profile`"
        ),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--reference",
        action="store_true",
        help="time the official-style step instead of the project's",
    )
    mode.add_argument(
        "--compare", action="store_true", help="time both and report reference / ours"
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help=(
            "with --compare: keep both in memory and time their steps in turn, for a ratio that a"
            " machine whose speed drifts (a shared host) does not skew"
        ),
    )
    p.add_argument(
        "--reference-dtype",
        choices=["fp32", "bf16"],
        default=None,
        help=(
            "the official-style step's dtype (default: --dtype), e.g. --dtype bf16"
            " --reference-dtype fp32 pairs ours in bf16 with the reference in fp32"
        ),
    )
    args = p.parse_args(argv)
    if args.reference_dtype is None:
        args.reference_dtype = args.dtype
    if args.paired and not args.compare:
        p.error("--paired only applies to --compare")
    if args.profile < 0:
        p.error(f"--profile takes a number of steps >= 0, got {args.profile}")
    return args


# ----------------------------------------------------------------------------- analytic FLOPs


def vit_forward_flops(
    arch: str, patch: int, size: int, cls_only_last_block: bool = True
) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one image through the backbone; norms, GELU, softmax
    left out.

    `cls_only_last_block`: the last block computes the CLS token's row alone, as a fast backbone
    (`fast=True`, what the trainer builds) does (keys and values of all T tokens; query, attention
    row, proj and MLP of one). False: every token through every block, as the official code (and the
    official-style reference) computes it."""
    D, depth = ARCHS[arch].embed_dim, ARCHS[arch].depth
    n = (size // patch) ** 2  # patches
    T = n + 1  # tokens incl. CLS
    full = depth - 1 if cls_only_last_block else depth  # blocks that compute every token
    last = (
        2.0 * (T * 2 * D * D + (D * D + D * D + 2 * D * 4 * D)) if cls_only_last_block else 0.0
    )  # k, v of T; q, proj, MLP of 1
    return {
        "patch_embed": 2.0 * n * (3 * patch * patch) * D,
        "qkv_proj_mlp": (
            full * 2.0 * T * (3 * D * D + D * D + 2 * D * 4 * D) + last
        ),  # qkv, proj, fc1, fc2
        "attention": (
            full * 2 * 2.0 * T * T * D + (2 * 2.0 * T * D if cls_only_last_block else 0.0)
        ),  # Q K^T and A V, all heads
    }


def head_forward_flops(arch: str, out_dim: int) -> dict[str, float]:
    """DINOHead per sample: 3-layer MLP to the bottleneck, then the weight-normalised last layer."""
    D = ARCHS[arch].embed_dim
    hidden, bottleneck = HEAD_DIMS
    return {
        "head_mlp": 2.0 * (D * hidden + hidden * hidden + hidden * bottleneck),
        "head_last_layer": 2.0 * bottleneck * out_dim,
    }


DROP_PATH_RATE = 0.1  # the benchmark's trainer (DINO's rate for ViT-S)


def step_flops(args, cls_only_last_block: bool = True) -> dict[str, float]:
    """FLOPs of one step: student forward of all crops, teacher forward of the globals, backward =
    2x student forward. `cls_only_last_block` as in `vit_forward_flops`: True counts what the
    project's step computes, False the official."""
    B, c = args.batch, cls_only_last_block
    per_global = {
        **vit_forward_flops(args.arch, args.patch_size, args.global_size, c),
        **head_forward_flops(args.arch, args.out_dim),
    }
    per_local = {
        **vit_forward_flops(args.arch, args.patch_size, args.local_size, c),
        **head_forward_flops(args.arch, args.out_dim),
    }
    teacher = 2 * B * sum(per_global.values())
    student = 2 * B * sum(per_global.values()) + args.local_crops * B * sum(per_local.values())
    return {
        "teacher_forward": teacher,
        "student_forward": student,
        "student_backward": 2 * student,
        "total": teacher + 3 * student,
        "per_global_crop_forward": per_global,
        "per_local_crop_forward": per_local,
    }


def expected_skipped_flops(args, drop_path_rate: float = DROP_PATH_RATE) -> float:
    """FLOPs of one step that fast blocks (`Block.forward_kept`, on a CPU) leave out in expectation:
    a student block i of `depth` drops each branch of a sample with probability rate * i / (depth
    - 1); the last block (CLS-only) is not skipped. Forward and backward (2x) of the student's
    blocks; the model's FLOP count (`step_flops`) keeps them in."""
    depth = ARCHS[args.arch].depth

    def block(
        size: int,
    ) -> float:  # one full block's forward FLOPs for one image (all tokens, every block alike)
        full = vit_forward_flops(args.arch, args.patch_size, size, cls_only_last_block=False)
        return (full["qkv_proj_mlp"] + full["attention"]) / depth

    p_sum = sum(
        drop_path_rate * i / max(depth - 1, 1) for i in range(depth - 1)
    )  # expected drops per sample
    per_sample = 2 * block(args.global_size) + args.local_crops * block(args.local_size)
    return 3 * args.batch * per_sample * p_sum


# ----------------------------------------------------------------------------- device helpers


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if os.path.exists("/proc/cpuinfo")
        else platform.processor()
    )
    return f"{model} ({os.cpu_count()} logical CPUs)"


def cpu_flags() -> dict[str, bool]:
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        line = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    try:
        for ln in open("/proc/self/status"):
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) * 1024, "peak RSS (VmHWM, reset before the timed steps)"
    except OSError:
        pass
    kb = resource.getrusage(
        resource.RUSAGE_SELF
    ).ru_maxrss  # KiB on Linux: the process's lifetime peak
    return kb * 1024, "peak RSS (ru_maxrss, process lifetime)"


def cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime, r.ru_stime


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int, budget_s: float = 20.0) -> dict:
    """FLOP/s of an n x n @ n x n matmul: the best of a few runs after one warm-up (fewer if it is
    slow)."""
    g = torch.Generator(device=device).manual_seed(
        0
    )  # drawn where they are used: no host-side randn of large matrices
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    times, t_start = [], time.perf_counter()
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - t_start > budget_s:
            break
    best = min(times[1:] or times)
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "s": best,
        "flop_per_s": 2.0 * n**3 / best,
        "runs": len(times),
    }


def step_gemms(args, cls_only_last_block: bool = True) -> list[dict]:
    """Every matmul shape (M, K, N) of one step, with how often the step runs it forward.

    Rows M are tokens of all crops of one resolution (the backbone's linears), patches (the patch
    embedding, counted as the matmul it equals) or crops (the head, and the last block's CLS rows
    with `cls_only_last_block`). The teacher runs the globals' matmuls forward; the student runs all
    of them forward and backward (two more matmuls each: input and weight gradients).
    """
    D, depth = ARCHS[args.arch].embed_dim, ARCHS[args.arch].depth
    hidden, bottleneck = HEAD_DIMS
    full = depth - 1 if cls_only_last_block else depth  # blocks that compute every token
    gemms = []
    for size, crops, teacher in (
        (args.global_size, 2 * args.batch, True),
        (args.local_size, args.local_crops * args.batch, False),
    ):
        if crops == 0:
            continue
        n = (size // args.patch_size) ** 2
        M = crops * (n + 1)
        shapes = [
            (crops * n, 3 * args.patch_size**2, D, 1),  # patch embedding
            (M, D, 3 * D, full),
            (M, D, D, full),
            (M, D, 4 * D, full),
            (M, 4 * D, D, full),
        ]  # qkv, proj, fc1, fc2
        if (
            cls_only_last_block
        ):  # the last block: k, v of every token; q, proj, fc1, fc2 of the CLS rows
            shapes += [
                (M, D, 2 * D, 1),
                (crops, D, D, 2),
                (crops, D, 4 * D, 1),
                (crops, 4 * D, D, 1),
            ]
        shapes += [
            (crops, D, hidden, 1),
            (crops, hidden, hidden, 1),
            (crops, hidden, bottleneck, 1),
            (crops, bottleneck, args.out_dim, 1),
        ]
        gemms += [
            dict(M=m, K=k, N=nn_, forward_count=c * (2 if teacher else 1), backward_count=c)
            for m, k, nn_, c in shapes
        ]
    return gemms


def shape_matmul_time(
    args,
    dtype: torch.dtype,
    device: torch.device,
    repeat: int = 3,
    cls_only_last_block: bool = True,
) -> dict:
    """Seconds the step's own matmuls take when run alone, back to back: the attainable floor for
    its shapes.

    Each shape is timed forward (x @ W^T), for the input gradient (dy @ W) and for the weight
    gradient (dy^T @ x), best of `repeat` after one warm-up. Dividing by the step time says how much
    of the step is matmul work at this library's speed for these shapes; the rest is everything else
    (norms, GELU, softmax, attention, copies, optimizer, framework overhead).
    """
    g = torch.Generator(device=device).manual_seed(0)

    def best(fn) -> float:
        times = []
        for _ in range(repeat + 1):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        return min(times[1:])

    gemms, total_s, total_flop = step_gemms(args, cls_only_last_block), 0.0, 0.0
    for s in gemms:
        x = torch.randn(s["M"], s["K"], generator=g, device=device).to(dtype)  # (M, K)
        w = torch.randn(s["N"], s["K"], generator=g, device=device).to(
            dtype
        )  # (N, K) as nn.Linear stores it
        dy = torch.randn(s["M"], s["N"], generator=g, device=device).to(dtype)  # (M, N)
        fwd, grad_in, grad_w = (
            best(lambda: x @ w.t()),
            best(lambda: dy @ w),
            best(lambda: dy.t() @ x),
        )  # (M,N) (M,K) (N,K)
        total_s += s["forward_count"] * fwd + s["backward_count"] * (grad_in + grad_w)
        total_flop += (
            2.0 * s["M"] * s["K"] * s["N"] * (s["forward_count"] + 2 * s["backward_count"])
        )
    return {
        "s": total_s,
        "flop": total_flop,
        "flop_per_s": total_flop / total_s,
        "shapes": len(gemms),
    }


# ----------------------------------------------------------------------------- the project's step


class SyntheticImages(torch.utils.data.Dataset):
    """Placeholder dataset: DINOTrainer needs one to build its sampler; the timed steps
    never read it."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        raise RuntimeError("the benchmark feeds train_step directly; the loader is never iterated")


def make_trainer(args, steps: int, compile_backbones: bool = False) -> DINOTrainer:
    """A DINOTrainer on the benchmark's config: one step per epoch, enough epochs for
    every timed step."""
    cfg = make_config(
        dict(
            dataset="random",
            arch=args.arch,
            patch_size=args.patch_size,
            out_dim=args.out_dim,
            drop_path_rate=DROP_PATH_RATE,
            global_crops_size=args.global_size,
            local_crops_size=args.local_size,
            local_crops_number=args.local_crops,
            batch_size_per_gpu=args.batch,
            epochs=steps + 1,
            warmup_epochs=0,
            freeze_last_layer=0,  # steady state: last layer trains
            device=args.device,
            precision=args.dtype,
            compile=compile_backbones,
            compile_mode=args.compile_mode,
            grad_checkpointing=args.grad_checkpointing,
            threads=args.threads,
            num_workers=0,
            output_dir=tempfile.gettempdir(),
            run_name="train_step_benchmark",
        )
    )
    return DINOTrainer(cfg, dataset=SyntheticImages(args.batch), quiet=True)


def synthetic_crops(args, device: torch.device) -> list[torch.Tensor]:
    """[globals (2B, 3, G, G), locals (N*B, 3, L, L)], normalised-image-like values, fixed across
    steps."""
    g = torch.Generator().manual_seed(0)
    B = args.batch
    crops = [
        torch.randn(2 * B, 3, args.global_size, args.global_size, generator=g)
    ]  # (2B, 3, G, G)
    if args.local_crops:
        crops.append(
            torch.randn(args.local_crops * B, 3, args.local_size, args.local_size, generator=g)
        )  # (N*B, 3, L, L)
    return [c.to(device) for c in crops]


class Marks:
    """Timestamps of phase boundaries: perf_counter on CPU, CUDA events on a GPU
    (no extra syncs)."""

    def __init__(self, device: torch.device):
        self.device, self.t = device, {}

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.t[name] = ev
        else:
            self.t[name] = time.perf_counter()

    def elapsed(self, a: str, b: str) -> float:
        if self.device.type == "cuda":
            return self.t[a].elapsed_time(self.t[b]) / 1000.0
        return self.t[b] - self.t[a]


PHASES = [
    ("teacher_forward", "start", "teacher_end"),
    ("student_forward", "teacher_end", "student_end"),
    ("loss", "student_end", "loss_end"),
    ("backward", "loss_end", "backward_end"),
    ("clip_optimizer_ema", "backward_end", "end"),
]


def instrument(trainer: DINOTrainer, marks: Marks) -> None:
    """Mark phase ends inside DINOTrainer.train_step with hooks; the step's code is untouched."""
    trainer.teacher.register_forward_hook(lambda *a: marks("teacher_end"))
    trainer.student.register_forward_hook(lambda *a: marks("student_end"))
    trainer.loss_fn.register_forward_hook(
        lambda *a: marks("loss_end")
    )  # includes the teacher statistics
    unscale = trainer.scaler.unscale_

    def unscale_and_mark(opt):  # train_step calls scaler.unscale_ right after backward
        marks("backward_end")
        return unscale(opt)

    trainer.scaler.unscale_ = unscale_and_mark


def ours_step(trainer: DINOTrainer, crops, marks: Marks) -> torch.Tensor:
    marks("start")
    loss = trainer.train_step(*crops)  # (2B, 3, G, G), (N*B, 3, L, L)
    marks("end")
    return loss


# ----------------------------------------------------------------------------- the official-style
# step


def official_attention_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """Official DINO Attention.forward: the N x N attention matrix is materialised in forward and
    backward."""
    B, N, C = x.shape
    qkv = (
        self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    )  # (3, B, H, N, d)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
    attn = self.attn_drop(attn.softmax(dim=-1))
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
    return self.proj_drop(self.proj(x))


def official_drop_path(
    x: torch.Tensor, drop_prob: float = 0.0, training: bool = False
) -> torch.Tensor:
    """Official DINO drop_path: three passes over the branch (div, mul, then the residual add in the
    block)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)  # (B, 1, 1)
    random_tensor.floor_()  # binarize
    return x.div(keep_prob) * random_tensor  # (B, N, D)


def official_block_forward(self: Block, x: torch.Tensor) -> torch.Tensor:
    """Official DINO Block.forward: x + drop_path(branch), not the project's fused addcmul."""
    y = self.attn(self.norm1(x))  # (B, N, D)
    p, training = getattr(self.drop_path, "drop_prob", 0.0), self.drop_path.training
    x = x + official_drop_path(y, p, training)  # (B, N, D)
    return x + official_drop_path(self.mlp(self.norm2(x)), p, training)  # (B, N, D)


def official_head_forward(self: DINOHead, x: torch.Tensor) -> torch.Tensor:
    """Official DINOHead.forward: the weight-normalised last layer writes out its weight W = g v /
    ||v|| every call."""
    x = self.mlp(x)  # (B, bottleneck)
    x = F.normalize(x, dim=-1, p=2)  # (B, bottleneck)
    return self.last_layer(x)  # (B, K)


class OfficialDINOLoss(DINOLoss):
    """Official DINOLoss.forward: a Python loop over (teacher view, student view) pairs, log_softmax
    inside it."""

    def forward(self, student_output, teacher_output, epoch):
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp(epoch)
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total_loss, n_loss_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def official_clip_gradients(model: nn.Module, clip: float) -> list[float]:
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())  # one host sync per parameter
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def official_vit_forward(self: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Official DINO VisionTransformer.forward: every token through every block, then the CLS token
    is taken."""
    x = self.prepare_tokens(x)  # (B, N+1, D)
    for blk in self.blocks:
        x = blk(x)  # (B, N+1, D)
    x = self.norm(x)  # (B, N+1, D)
    return x[:, 0]  # (B, D)


def to_official_style(trainer: DINOTrainer) -> None:
    """Swap in the official execution strategy: backbone forward (all tokens through the last
    block), patch embedding, attention, residual + drop path, head, loss, optimizer (for-loop
    AdamW)."""
    for m in list(trainer.student.modules()) + list(trainer.teacher.modules()):
        if hasattr(m, "fast"):
            m.fast = False  # the plain modules; their forwards are replaced below in any case
        if isinstance(m, VisionTransformer):
            m.forward = official_vit_forward.__get__(m)
        elif isinstance(m, Attention):
            m.forward = official_attention_forward.__get__(m)
        elif isinstance(m, Block):
            m.forward = official_block_forward.__get__(m)
        elif isinstance(m, DINOHead):
            m.forward = official_head_forward.__get__(m)
    cfg = trainer.cfg
    trainer.loss_fn = OfficialDINOLoss(
        cfg.out_dim,
        cfg.ncrops,
        cfg.warmup_teacher_temp,
        cfg.teacher_temp,
        cfg.warmup_teacher_temp_epochs,
        cfg.epochs,
        cfg.student_temp,
        cfg.center_momentum,
    ).to(trainer.device)
    trainer.optimizer = torch.optim.AdamW(get_params_groups(trainer.student), foreach=False)


def official_step(tr: DINOTrainer, crops, marks: Marks) -> torch.Tensor:
    """The body of the official `train_one_epoch` loop (fp32 / autocast branch), on the trainer's
    objects."""
    marks("start")
    it, epoch, cfg = tr.step, tr.epoch, tr.cfg
    for i, group in enumerate(tr.optimizer.param_groups):
        group["lr"] = tr.lr_schedule[it]
        if i == 0:
            group["weight_decay"] = tr.wd_schedule[it]
    images = [
        im.to(tr.device, non_blocking=True) for im in crops
    ]  # one tensor per view, as the official loader gives
    with torch.autocast(tr.device.type, dtype=tr.amp_dtype, enabled=tr.amp_dtype != torch.float32):
        teacher_output = tr.teacher(images[:2])
        marks("teacher_end")
        student_output = tr.student(images)
        marks("student_end")
        loss = tr.loss_fn(student_output, teacher_output, epoch)
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"loss is {loss.item()}")
    marks("loss_end")
    tr.optimizer.zero_grad()
    loss.backward()
    marks("backward_end")
    official_clip_gradients(tr.student, cfg.clip_grad)
    cancel_gradients_last_layer(epoch, tr.student, cfg.freeze_last_layer)
    tr.optimizer.step()
    with torch.no_grad():
        m = tr.momentum_schedule[it]
        for param_q, param_k in zip(tr.student.parameters(), tr.teacher.parameters()):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
    sync(tr.device)
    loss.item()  # metric_logger.update(loss=loss.item())
    tr.step += 1
    marks("end")
    return loss.detach()


def per_view(crops: list[torch.Tensor], args) -> list[torch.Tensor]:
    """[globals (2B,...), locals (N*B,...)] -> one (B, 3, h, w) tensor per view."""
    return [v for c in crops for v in c.split(args.batch)]


# ----------------------------------------------------------------------------- where the time goes

# the first pattern that matches a kernel's (GPU) or operator's (CPU) name gives its kind. Order
# matters: cuDNN's
# attention kernels contain "gemm", inductor names a fused pointwise kernel after the ops it
# absorbed
# (triton_poi_fused_convolution_gelu is element-wise work), and convolutions run as implicit GEMMs
KINDS = [
    ("attention", r"flash|fmha|sdpa|scaled_dot_product|attention|_attn"),
    ("matmul", r"^triton_tem"),  # inductor's matmul templates
    ("elementwise", r"^triton_poi"),
    ("normalization_softmax", r"layer_norm|softmax|welford|_norm"),
    ("reduction", r"^triton_(red|per)|reduce|\bsum\b|^aten::(sum|mean|amax|max)$"),
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm|im2col"),
    (
        "matmul",
        r"gemm|nvjet|cutlass|cublas|xmma|splitk|linear|^aten::(mm|addmm|bmm|baddbmm|matmul)$",
    ),  # linear: also
    # mkl::_mkl_linear and mkldnn::_linear_pointwise, which compiled CPU graphs call
    ("optimizer_ema", r"adam|multi_tensor|foreach|lerp"),
    ("copy_fill", r"copy|memcpy|memset|fill|cat|clone|contiguous|index|gather|scatter|^aten::to$"),
    (
        "views_allocation",
        r"^aten::(view|_unsafe_view|reshape|_reshape_alias|transpose|as_strided|t|expand|unsqueeze|squeeze|"
        r"select|slice|detach|alias|permute|unbind|split|split_with_sizes|chunk|narrow|empty\w*|resize_)$",
    ),
    (
        "elementwise",
        r"elementwise|vectorized|gelu|add|mul|div|sub|where|exp|pow|sqrt|clamp|neg|bernoulli|uniform",
    ),
]


COMPILED_REGION = re.compile(r"CompiledFunction|Torch-Compiled Region|cpp_fused")


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, low)), "other")


def profile_steps(m: "Mode", steps: int, top: int = 25) -> dict:
    """Run `steps` steps under torch.profiler: per step, the time of each kernel (GPU) or operator's
    own time (CPU), summed by name and by kind. On a GPU `device_busy_s` against the step's wall
    time shows idle gaps (the host not keeping up); on a CPU the operators' self times sum to about
    the step (intra-op threads run inside their operator)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    device = m.trainer.device
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            m.step()
        sync(device)
    wall = (time.perf_counter() - t0) / steps
    rows = []
    for e in prof.key_averages():
        if (
            cuda
        ):  # kernels only: a CPU operator's device time repeats that of the kernels it launched
            if e.device_type != DeviceType.CUDA:
                continue
            t = getattr(e, "self_device_time_total", 0) or getattr(
                e, "device_time_total", 0
            )  # the same for a kernel
            kind = kind_of(e.key)
        elif e.key.startswith(("aten::", "mkldnn::", "mkl::", "onednn::")):
            t, kind = e.self_cpu_time_total, kind_of(e.key)
        elif COMPILED_REGION.search(
            e.key
        ):  # inductor's C++ kernels are not recorded one by one: their time is here
            t, kind = e.self_cpu_time_total, "compiled_cpu_kernels"
        else:
            # Python-side ranges and autograd wrappers: their own time is bookkeeping, the work is
            # in the ops
            continue
        if t > 0:
            rows.append(
                {
                    "name": e.key,
                    "kind": kind,
                    "calls_per_step": e.count / steps,
                    "s_per_step": t / 1e6 / steps,
                }
            )
    rows.sort(key=lambda r: -r["s_per_step"])
    busy = sum(r["s_per_step"] for r in rows)
    kinds: dict[str, float] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["s_per_step"]
    by_kind = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
    return {
        "steps": steps,
        "what": (
            "CUDA kernels (device time)" if cuda else "aten operators (self CPU time, main thread)"
        ),
        "profiled_step_s": wall,  # with the profiler's own overhead
        "device_busy_s" if cuda else "operators_s": busy,
        "by_kind_s": by_kind,
        "by_kind_fraction": {k: v / busy for k, v in by_kind.items()} if busy else {},
        "top": [{**r, "name": r["name"][:160]} for r in rows[:top]],
        "distinct_names": len(rows),
    }


def profile_or_error(m: "Mode", steps: int) -> dict:
    try:
        return profile_steps(m, steps)
    except Exception as e:  # the timings stand without it
        return {"error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------- timing


def args_for(args, reference: bool) -> argparse.Namespace:
    """The arguments one implementation runs with: the reference's dtype is --reference-dtype."""
    return (
        argparse.Namespace(**{**vars(args), "dtype": args.reference_dtype}) if reference else args
    )


class Mode:
    """One implementation's trainer, crops and step function, and the measurements of
    its timed steps."""

    def __init__(self, args, reference: bool):
        self.args = args = args_for(args, reference)  # this implementation's arguments (its dtype)
        self.reference = reference
        steps = args.warmup + args.repeat + args.profile
        self.trainer = make_trainer(
            args, steps, compile_backbones=args.compile and not reference
        )  # the reference never compiles
        self.trainer.student.train()
        self.trainer.teacher.train()
        self.crops = synthetic_crops(args, self.trainer.device)
        self.marks = Marks(self.trainer.device)
        if reference:
            to_official_style(self.trainer)
            self.crops, self.step_fn = per_view(self.crops, args), official_step
        else:
            instrument(self.trainer, self.marks)
            self.step_fn = ours_step
        self.wall, self.user, self.system = [], [], []
        self.phases = {name: [] for name, _, _ in PHASES}
        self.peaks: list[int] = []
        self.loss = None
        self.rng = self._rng_state()  # its own random stream (stochastic depth), as if it ran alone

    def _rng_state(self):
        cuda = self.trainer.device.type == "cuda"
        return torch.get_rng_state(), (
            torch.cuda.get_rng_state(self.trainer.device) if cuda else None
        )

    def _restore_rng(self) -> None:
        cpu, cuda = self.rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.trainer.device)

    def step(self) -> torch.Tensor:
        """One step on this implementation's own random stream (saving and restoring it takes
        microseconds)."""
        self._restore_rng()
        loss = self.step_fn(self.trainer, self.crops, self.marks)
        self.rng = self._rng_state()
        return loss

    def timed_step(self, track_peak: bool = False) -> None:
        device = self.trainer.device
        if track_peak:
            reset_peak_memory(device)
        u0, s0 = cpu_times()
        t0 = time.perf_counter()
        self.loss = self.step()
        sync(device)
        self.wall.append(time.perf_counter() - t0)
        u1, s1 = cpu_times()
        self.user.append(u1 - u0)
        self.system.append(s1 - s0)
        for name, a, b in PHASES:
            self.phases[name].append(self.marks.elapsed(a, b))
        if track_peak:
            self.peaks.append(peak_memory(device)[0])

    def summary(
        self, matmul: dict, own_gemms: dict, peak: int, peak_kind: str, load: list[float]
    ) -> dict:
        args = self.args
        flops = step_flops(
            args, cls_only_last_block=not self.reference
        )  # what this implementation computes
        med = statistics.median(self.wall)
        return {
            "implementation": "official_style_reference" if self.reference else "vitdino",
            "description": (
                "official DINO execution strategy re-created with the project's modules: every"
                " token through the last block, the patch embedding as a convolution, explicit"
                " softmax attention, x + drop_path(branch) in three passes, the head's"
                " weight-normalised W written out, per-pair Python loss loop, per-parameter"
                " clipping with .item(), Python-loop EMA, AdamW foreach=False, loss.item() every"
                " step"
                if self.reference
                else "vitdino_core.training.trainer.DINOTrainer.train_step"
            ),
            "step_s_median": med,
            "step_s": self.wall,
            "user_cpu_s_median": statistics.median(self.user),
            "user_cpu_s": self.user,
            "sys_cpu_s_median": statistics.median(self.system),
            "cpu_utilisation": (
                statistics.median(self.user) / med / max(torch.get_num_threads(), 1)
                if self.trainer.device.type == "cpu"
                else None
            ),
            "images_per_s": args.batch / med,
            "crops_per_s": args.batch * (2 + args.local_crops) / med,
            "breakdown_s_median": {name: statistics.median(v) for name, v in self.phases.items()},
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "model_flop_per_step": flops["total"],
            "model_flop_breakdown": flops,
            "all_tokens_flop_per_step": step_flops(args, cls_only_last_block=False)[
                "total"
            ],  # the official count
            # left out of the model's count: a CPU step skips them
            "expected_flop_skipped_by_drop_path": (
                expected_skipped_flops(args)
                if not self.reference and args.device == "cpu" and not args.compile
                else 0.0
            ),
            "achieved_flop_per_s": flops["total"] / med,
            "matmul": matmul,
            "fraction_of_matmul_peak": flops["total"] / med / matmul["flop_per_s"],
            "own_matmuls_alone": own_gemms,
            "fraction_of_step_in_own_matmuls": (
                own_gemms["s"] / med
            ),  # 1.0 = nothing but matmuls at their standalone speed
            "loss": float(self.loss),
            "load_average_before_after": load,
        }


def reference_rates(
    args, device: torch.device, implementations: tuple[bool, ...]
) -> tuple[dict, dict]:
    """Per implementation ({reference: ...}): the attainable matmul rate of its dtype, and its own
    matmul shapes timed alone (the reference's last block computes every token, ours the CLS rows).
    """
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    dtypes = {
        ref: torch.bfloat16 if args_for(args, ref).dtype == "bf16" else torch.float32
        for ref in implementations
    }
    rates = {dtype: matmul_rate(dtype, device, n) for dtype in set(dtypes.values())}
    own = {
        ref: shape_matmul_time(args, dtypes[ref], device, cls_only_last_block=not ref)
        for ref in implementations
    }
    return {ref: rates[dtypes[ref]] for ref in implementations}, own


def run_mode(args, reference: bool) -> dict:
    m = Mode(args, reference)
    device = m.trainer.device
    matmul, own_gemms = reference_rates(args, device, (reference,))
    for _ in range(args.warmup):
        m.step()
    sync(device)
    reset_peak_memory(device)
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        m.timed_step()
    peak, peak_kind = peak_memory(device)
    out = m.summary(
        matmul[reference],
        own_gemms[reference],
        peak,
        peak_kind,
        [load_before[0], os.getloadavg()[0]],
    )
    if args.profile:
        out["profile"] = profile_or_error(m, args.profile)
    del m
    gc.collect()
    return out


def run_paired(args) -> dict:
    """Both implementations in memory, timed step by step in turn (the order swapped every round),
    so that a machine whose speed drifts during the run (other tenants, clocks) slows both alike:
    the ratio of each round's two steps is the figure to trust on a shared machine."""
    ours, ref = Mode(args, reference=False), Mode(args, reference=True)
    device = ours.trainer.device
    matmul, own_gemms = reference_rates(args, device, (False, True))
    for _ in range(args.warmup):
        ours.step()
        ref.step()
    sync(device)
    load_before = os.getloadavg()
    for i in range(args.repeat):
        for m in (ours, ref) if i % 2 == 0 else (ref, ours):
            m.timed_step(track_peak=True)
    load = [load_before[0], os.getloadavg()[0]]
    kind = (
        "peak RSS (VmHWM) during this implementation's steps, both implementations resident"
        if device.type == "cpu"
        else "torch.cuda.max_memory_allocated during this implementation's steps, both resident"
    )
    out = {
        name: m.summary(matmul[m.reference], own_gemms[m.reference], max(m.peaks), kind, load)
        for name, m in (("ours", ours), ("reference", ref))
    }
    if args.profile:
        for name, m in (("ours", ours), ("reference", ref)):
            out[name]["profile"] = profile_or_error(m, args.profile)
    ratios = [a / b for a, b in zip(ours.wall, ref.wall)]
    out["ours_over_reference_per_round"] = ratios
    out["ours_over_reference_paired_median"] = statistics.median(ratios)
    return out


def describe(args) -> dict:
    device = torch.device(args.device)
    info = {
        "config": {
            k: getattr(args, k)
            for k in (
                "arch",
                "patch_size",
                "global_size",
                "local_size",
                "local_crops",
                "batch",
                "out_dim",
                "dtype",
                "reference_dtype",
                "compile",
                "compile_mode",
                "sdpa",
                "device",
                "threads",
                "warmup",
                "repeat",
                "grad_checkpointing",
                "profile",
                "explicit_attention_upto",
            )
        },
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cpu":
        info["cpu_flags"] = cpu_flags()
        info["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return info


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU is visible")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    allow_only_sdpa(args.sdpa)
    explicit_attention_upto(args.explicit_attention_upto)
    if args.compare:
        if args.paired:
            paired = run_paired(args)
            ours, ref = paired.pop("ours"), paired.pop("reference")
        else:
            paired = {}
            ours, ref = run_mode(args, reference=False), run_mode(args, reference=True)
        result = {
            "benchmark": "train_step",
            **describe(args),
            "step_s_median": ours["step_s_median"],
            "images_per_s": ours["images_per_s"],
            "ours": ours,
            "reference": ref,
            "reference_over_ours_wall": ref["step_s_median"] / ours["step_s_median"],
            "reference_over_ours_user_cpu": (
                ref["user_cpu_s_median"] / max(ours["user_cpu_s_median"], 1e-12)
            ),
            "timing": (
                "paired: the two steps in turn, both resident"
                if args.paired
                else "one implementation after the other"
            ),
            **paired,
        }
    else:
        result = {
            "benchmark": "train_step",
            **describe(args),
            **run_mode(args, reference=args.reference),
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
