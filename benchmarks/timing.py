"""Timing helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, warmup: int, repeat: int) -> float:
    """Median wall time of `fn()` over `repeat` calls after `warmup` untimed ones, the device synced
    around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
