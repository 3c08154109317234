"""A/B in one process: PatchEmbed as one matmul on CPU (new) against the convolution (old), two trainers stepped in turn.
usage: ab_patch_embed.py ROUNDS [train_step args...], e.g. ab_patch_embed.py 16 --dtype bf16 --repeat 18 --warmup 2"""
import sys, time, statistics, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
import torch
import train_step as ts
from vitdino_core.patch_embedding import PatchEmbed, check_image_batch
rounds = int(sys.argv[1]); args = ts.parse_args(sys.argv[2:]); torch.set_num_threads(2)
new_fwd = PatchEmbed.forward
def old_fwd(self, x):
    check_image_batch(x, self.patch_size, self.in_chans)
    return self.proj(x).flatten(2).transpose(1, 2)
fwds = {"new": new_fwd, "old": old_fwd}
modes = {w: ts.Mode(args, reference=False) for w in ("old", "new")}
def step(w):
    PatchEmbed.forward = fwds[w]
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
