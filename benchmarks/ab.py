"""Two variants of the project's step in one process, stepped in turn with the order swapped every round: the A/B
behind the `ab_step.py` scripts in results/. A variant is a list of swaps (owner, attribute, value), set before
each of its trainer's steps, so that a module's function or a class's method is replaced for that trainer only."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import train_step as ts
import vitdino_core.dino_loss as L


def ab_steps(ways: dict[str, list[tuple[object, str, object]]], rounds: int, args: argparse.Namespace) -> dict:
    """Time `rounds` steps of each of ways["old"] and ways["new"] (after 2 warm-up steps each): medians, per-round
    ratios new / old (< 1: new is faster) and the last losses."""
    args = argparse.Namespace(**{**vars(args), "repeat": max(args.repeat, rounds + 2)})  # schedules for 2 warm-ups + rounds
    torch.set_num_threads(args.threads)
    modes = {w: ts.Mode(args, reference=False) for w in ("old", "new")}

    def step(w: str) -> tuple[float, float]:
        for owner, attr, value in ways[w]:
            setattr(owner, attr, value)
        t0 = time.perf_counter()
        loss = modes[w].step()
        return time.perf_counter() - t0, float(loss)

    for _ in range(2):
        for w in modes:
            step(w)
    t, losses = {"old": [], "new": []}, {}
    for r in range(rounds):
        for w in (("old", "new") if r % 2 == 0 else ("new", "old")):
            dt, losses[w] = step(w)
            t[w].append(dt)
    ratio = [n / o for n, o in zip(t["new"], t["old"])]
    return {"old_median_s": statistics.median(t["old"]), "new_median_s": statistics.median(t["new"]),
            "new_over_old_median": statistics.median(ratio), "min": min(ratio), "max": max(ratio), "rounds": rounds,
            "last_loss": losses, "new_over_old_per_round": ratio, "old_s": t["old"], "new_s": t["new"]}


# ----------------------------------------------------------------------------- the project's code as it was, for "old"

def head_layer_under_autocast(x: torch.Tensor, layer) -> torch.Tensor:
    """weight_norm_linear before 2026-12-01: the weight-normalised layer itself under autocast (W written out and
    cast), by hand only without autocast."""
    wn = layer.parametrizations.weight
    if torch.is_autocast_enabled(x.device.type):
        return layer(x)  # (B, K)
    return L._WeightNormLinear.apply(x, wn.original0, wn.original1)  # (B, K)


# ----------------------------------------------------------------------------- several ways at once

def ab_ways(ways: dict[str, list[tuple[object, str, object]]], rounds: int, args: argparse.Namespace,
            base: str = "as_is") -> dict:
    """Like `ab_steps` for any number of ways: every round steps each way once, in an order rotated every round, with
    every swapped attribute restored before a way's own swaps are set. Per way: its median step and the median of
    the per-round ratios way / `base` (> 1: the way is slower than the base)."""
    args = argparse.Namespace(**{**vars(args), "repeat": max(args.repeat, rounds + 2)})
    torch.set_num_threads(args.threads)
    names = list(ways)
    originals = {(id(o), a): (o, a, getattr(o, a)) for swaps in ways.values() for o, a, _ in swaps}
    modes = {w: ts.Mode(args, reference=False) for w in names}

    def step(w: str) -> tuple[float, float]:
        for o, a, v in originals.values():
            setattr(o, a, v)
        for o, a, v in ways[w]:
            setattr(o, a, v)
        t0 = time.perf_counter()
        loss = modes[w].step()
        return time.perf_counter() - t0, float(loss)

    for _ in range(2):
        for w in names:
            step(w)
    t, losses = {w: [] for w in names}, {}
    for r in range(rounds):
        k = r % len(names)
        for w in names[k:] + names[:k]:
            dt, losses[w] = step(w)
            t[w].append(dt)
    for o, a, v in originals.values():
        setattr(o, a, v)
    out = {"rounds": rounds, "base": base, "ways": {}}
    for w in names:
        ratio = [x / b for x, b in zip(t[w], t[base])]
        out["ways"][w] = {"median_s": statistics.median(t[w]), "over_base_median": statistics.median(ratio),
                          "min": min(ratio), "max": max(ratio), "last_loss": losses[w], "step_s": t[w],
                          "over_base_per_round": ratio}
    return out
