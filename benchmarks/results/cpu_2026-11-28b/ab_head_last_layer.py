"""A/B in one process: under bf16 autocast on a CPU, the head's last layer by hand in fp32 (new, tried and not kept)
against calling the layer in bf16 as vitdino_core does (old), two trainers stepped in turn.
usage: ab_head_last_layer.py ROUNDS [train_step args...], e.g. ab_head_last_layer.py 16 --dtype bf16 --repeat 18 --warmup 2"""
import sys, time, statistics, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
import torch
import train_step as ts
import vitdino_core.dino_loss as L


def by_hand_in_fp32(x, layer):
    """weight_norm_linear with its autocast branch replaced: by hand in fp32 on a CPU, the layer on a GPU."""
    wn = layer.parametrizations.weight
    if torch.is_autocast_enabled(x.device.type) and x.device.type != "cpu":
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return L._WeightNormLinear.apply(x.float(), wn.original0, wn.original1)


rounds = int(sys.argv[1]); args = ts.parse_args(sys.argv[2:]); torch.set_num_threads(2)
ways = {"new": by_hand_in_fp32, "old": L.weight_norm_linear}
modes = {w: ts.Mode(args, reference=False) for w in ("old", "new")}
def step(w):
    L.weight_norm_linear = ways[w]  # DINOHead.forward looks the function up in its module at every call
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
