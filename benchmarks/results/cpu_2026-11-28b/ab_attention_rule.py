"""A/B in one process: Attention's CPU bf16 rule with the explicit path only when gradients are needed, the fused
kernel for the teacher (new, tried and not kept) against the rule in vitdino_core (explicit always in bf16 on a CPU),
two trainers stepped in turn. usage: ab_attention_rule.py ROUNDS [train_step args...]"""
import sys, time, statistics, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
import torch
import train_step as ts
import vitdino_core.attention as A
rounds = int(sys.argv[1])
args = ts.parse_args(sys.argv[2:])
torch.set_num_threads(2)
rules = {"new": lambda q: q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad,  # tried, not kept
         "old": lambda q: q.device.type == "cpu" and q.dtype == torch.bfloat16}  # the rule in vitdino_core
modes = {w: ts.Mode(args, reference=False) for w in ("old", "new")}
def step(w):
    A._explicit_is_faster = rules[w]
    t0 = time.perf_counter(); loss = modes[w].step(); return time.perf_counter() - t0, float(loss)
for _ in range(2):
    for w in modes: step(w)
t = {"old": [], "new": []}; losses = {}
for r in range(rounds):
    for w in (("old", "new") if r % 2 == 0 else ("new", "old")):
        dt, losses[w] = step(w); t[w].append(dt)
ratio = [n / o for n, o in zip(t["new"], t["old"])]
print(json.dumps({"command": " ".join(sys.argv), "old_median_s": statistics.median(t["old"]), "new_median_s": statistics.median(t["new"]),
                  "new_over_old_median": statistics.median(ratio), "min": min(ratio), "max": max(ratio), "rounds": rounds,
                  "last_loss": losses, "new_over_old_per_round": ratio}))
