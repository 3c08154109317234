"""Each speed trick of the model's `fast` path against the same step without it, in one process;
prints one JSON.

    python benchmarks/ab.py ROUNDS [--tricks A,B] [train_step args...]    # e.g. 10 --dtype bf16

Ways: `all` (the trainer as built, `fast: true`: every trick on) and `without_<name>` for each
trick: that trainer's student and teacher with the `fast` flag turned off on the instances of the
one class whose branch it is (`TRICKS`). On a CPU in fp32 `explicit_attention` does nothing and is
left out. `--tricks` keeps only the named ones' ways. Every round steps each way once, in an order
rotated every round, so that a machine whose speed drifts slows all of them alike. Per way: the
median step, and the median of the per-round ratios way / all (> 1: the step is slower without the
trick, which then saves 1 - 1 / ratio of the step without it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import train_step as ts

from vitdino_core.attention import Attention
from vitdino_core.vision_transformer import Block, VisionTransformer

TRICKS = {  # name: the class whose `fast` flag turns the trick on (each module reads its own flag)
    "cls_only_last_block": VisionTransformer,  # forward: the last block computes the CLS row alone
    "explicit_attention": Attention,  # attend: the explicit softmax on a CPU in bf16
    # forward_kept: a dropped residual branch is not computed (CPU, training)
    "skip_dropped_branches": Block,
}


def turn_off(model: torch.nn.Module, tricks) -> None:
    """The plain path for the named tricks: `fast = False` on the instances of their classes inside
    `model`."""
    kinds = tuple(TRICKS[n] for n in tricks)
    for m in model.modules():
        if kinds and isinstance(m, kinds):
            m.fast = False


def ab_ways(
    ways: dict[str, tuple[str, ...]], rounds: int, args: argparse.Namespace, base: str = "all"
) -> dict:
    """ways: name -> the tricks turned off in that way's trainer. Steps `rounds` rounds after 2
    warm-ups."""
    args = argparse.Namespace(
        **{**vars(args), "repeat": max(args.repeat, rounds + 2)}
    )  # schedules for every step
    torch.set_num_threads(args.threads)
    names = list(ways)
    modes = {}
    for w in names:
        modes[w] = ts.Mode(args, reference=False)
        for model in (modes[w].trainer.student, modes[w].trainer.teacher):
            turn_off(model, ways[w])

    def step(w: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        loss = float(modes[w].step())
        return time.perf_counter() - t0, loss

    for _ in range(2):
        for w in names:
            step(w)
    t, losses = {w: [] for w in names}, {}
    for r in range(rounds):
        k = r % len(names)
        for w in names[k:] + names[:k]:
            dt, losses[w] = step(w)
            t[w].append(dt)
    out = {"rounds": rounds, "base": base, "ways": {}}
    for w in names:
        ratio = [x / b for x, b in zip(t[w], t[base])]
        out["ways"][w] = {
            "removed": list(ways[w]),
            "median_s": statistics.median(t[w]),
            "over_base_median": statistics.median(ratio),
            "min": min(ratio),
            "max": max(ratio),
            "last_loss": losses[w],
            "step_s": t[w],
            "over_base_per_round": ratio,
        }
    return out


def default_ways(args: argparse.Namespace, tricks=tuple(TRICKS)) -> dict[str, tuple[str, ...]]:
    unknown = set(tricks) - set(TRICKS)
    if unknown:
        raise SystemExit(f"--tricks: unknown {sorted(unknown)}; the tricks are {list(TRICKS)}")
    acting = [
        n
        for n in tricks
        if not (n == "explicit_attention" and args.dtype != "bf16" and args.device == "cpu")
    ]
    return {"all": (), **{f"without_{n}": (n,) for n in acting}}


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    rest, tricks = list(argv[1:]), tuple(TRICKS)
    if "--tricks" in rest:
        i = rest.index("--tricks")
        tricks = tuple(rest[i + 1].split(","))
        del rest[i : i + 2]
    args = ts.parse_args(rest)
    out = {
        "command": "python benchmarks/ab.py " + " ".join(argv),
        **ab_ways(default_ways(args, tricks), int(argv[0]), args),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
