"""Draw two training runs' loss curves and their difference from their metrics.jsonl files, into one
PNG.

    python benchmarks/plot_runs.py A.jsonl B.jsonl OUT.png [--labels fp32 bf16] [--title TEXT]

Used for the bf16-against-fp32 runs in results/ (e.g.
cpu-zen4_cls-only-and-bf16/workshop_tiny_bf16_vs_fp32.png: `python benchmarks/plot_runs.py
results/cpu-zen4_cls-only-and-bf16/workshop_tiny_200_steps_fp32.jsonl
results/cpu-zen4_cls-only-and-bf16/workshop_tiny_200_steps_bf16.jsonl
results/cpu-zen4_cls-only-and-bf16/workshop_tiny_bf16_vs_fp32.png --title "workshop_tiny, 200 steps,
AMD Zen 4 CPU"`).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("out")
    p.add_argument("--labels", nargs=2, default=["fp32", "bf16"])
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    runs = [[r for r in map(json.loads, open(path)) if "loss" in r] for path in (args.a, args.b)]
    steps = [r["step"] for r in runs[0]]
    if steps != [r["step"] for r in runs[1]]:
        raise SystemExit("the two runs logged different steps")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3))
    for label, rows in zip(args.labels, runs):
        ax.plot(steps, [r["loss"] for r in rows], label=label)
    ax.set(title=args.title, xlabel="step", ylabel="DINO loss")
    ax.legend()
    bx.plot(steps, [b["loss"] - a["loss"] for a, b in zip(*runs)], color="k", lw=1)
    bx.axhline(0, color="0.6", lw=0.8)
    bx.set(
        title="difference at each logged step",
        xlabel="step",
        ylabel=f"{args.labels[1]} - {args.labels[0]} (nats)",
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
