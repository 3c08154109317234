"""Where a run computes: the device rule ("auto"), the precision rule, and torchrun's process group.

One rule for the whole package: "auto" means the first CUDA GPU when one is visible, else the CPU.
Training, evaluation and the notebooks all ask `resolve_device`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistEnv:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs,
    gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    return env


def resolve_device(name: str = "auto", env: DistEnv | None = None) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device; under torchrun, cuda means
    this process's GPU."""
    env = env or DistEnv()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name!r} but no CUDA GPU is visible; use device=cpu or device=auto"
            )
        return torch.device(
            "cuda", env.local_rank if env.distributed or name == "cuda" else int(name.split(":")[1])
        )
    if name != "cpu":
        raise ConfigError(f"device={name!r} is not auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 autocast on GPU, fp32 on CPU. bf16 on CPU is an opt-in for CPUs
    with bf16 units."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_units_for(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies `dtype` matrices in hardware: bf16 needs AVX512-BF16 or AMX, fp16
    needs AMX-FP16. Asked of torch.cpu's capability probes (private, so looked up with getattr:
    missing means no)."""

    def has(probe: str) -> bool:
        fn = getattr(getattr(torch, "cpu", None), probe, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # a probe that fails says nothing: assume the units are missing
            return False

    if dtype == torch.bfloat16:
        return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
    if dtype == torch.float16:
        return has("_is_amx_fp16_supported")
    return True


def slow_precision(dtype: torch.dtype, device: torch.device) -> str:
    """A warning when `dtype` autocast will be slower than fp32 on this device (a CPU without units
    for it), else ''."""
    if device.type != "cpu" or dtype == torch.float32 or cpu_has_units_for(dtype):
        return ""
    name, units = {
        torch.bfloat16: ("bf16", "AVX512-BF16 or AMX"),
        torch.float16: ("fp16", "AMX-FP16"),
    }[dtype]
    return (
        f"precision={name} on this CPU is slow: it has no {units} units, so {name} matrix products"
        " are emulated; precision=fp32 (--set precision=fp32) is faster here"
    )
