"""Draw workshop_tiny_bf16_vs_fp32.png from the two runs' metrics.jsonl in this folder:
    python benchmarks/results/cpu_2026-12-01/plot_bf16_vs_fp32.py"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
runs = {p: [r for r in map(json.loads, open(HERE / f"workshop_tiny_200_steps_{p}.jsonl")) if "loss" in r] for p in ("fp32", "bf16")}
steps = [r["step"] for r in runs["fp32"]]
assert steps == [r["step"] for r in runs["bf16"]], "the two runs logged different steps"
fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3))
for p, rows in runs.items():
    ax.plot(steps, [r["loss"] for r in rows], label=p)
ax.set(title="workshop_tiny, 200 steps, AMD Zen 4 CPU", xlabel="step", ylabel="DINO loss")
ax.legend()
bx.plot(steps, [b["loss"] - f["loss"] for b, f in zip(runs["bf16"], runs["fp32"])], color="k", lw=1)
bx.axhline(0, color="0.6", lw=0.8)
bx.set(title="difference at each logged step", xlabel="step", ylabel="bf16 - fp32 (nats)")
fig.tight_layout()
fig.savefig(HERE / "workshop_tiny_bf16_vs_fp32.png", dpi=100)
