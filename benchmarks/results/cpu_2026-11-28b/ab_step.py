"""A/B of one change to the project's step, in one process: two trainers stepped in turn, one with the change ("new")
and one without ("old"); prints the median of the per-round ratios new / old as JSON.

    python benchmarks/results/cpu_2026-11-28b/ab_step.py VARIANT ROUNDS [train_step args...]

VARIANT (each swaps one function of vitdino_core for the "new" trainer's steps):
  patch_embed      PatchEmbed as one matmul on a CPU (new, what vitdino_core runs) against the convolution (old)
  attention_rule   bf16 on a CPU: the explicit attention only when gradients are needed, the fused kernel for the
                   teacher (new, tried and not kept) against the rule in vitdino_core (old)
  attention_by_hand  attention_by_hand_not_kept.py: training on a CPU, attention with a hand-written backward
                   (new, tried and not kept) against vitdino_core's attention (old)
  head_last_layer  bf16 autocast on a CPU: the head's last layer by hand in fp32 (new, tried and not kept) against
                   the layer in bf16, as vitdino_core calls it (old)
"""
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

import train_step as ts  # noqa: E402
import vitdino_core.attention as A  # noqa: E402
import vitdino_core.dino_loss as L  # noqa: E402
from vitdino_core.patch_embedding import PatchEmbed, check_image_batch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_by_hand_not_kept as by_hand  # noqa: E402


def conv_patch_embed(self, x):
    check_image_batch(x, self.patch_size, self.in_chans)
    return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


def head_by_hand_in_fp32(x, layer):
    """weight_norm_linear with its autocast branch replaced: by hand in fp32 on a CPU, the layer on a GPU."""
    wn = layer.parametrizations.weight
    if torch.is_autocast_enabled(x.device.type) and x.device.type != "cpu":
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return L._WeightNormLinear.apply(x.float(), wn.original0, wn.original1)


VARIANTS = {  # name: the swaps that make the "new" step, (owner, attribute, value); modules look these up at every call
    "patch_embed": [(PatchEmbed, "forward", PatchEmbed.forward)],
    "attention_rule": [(A, "_explicit_is_faster",
                        lambda q: q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad)],
    "attention_by_hand": [(A.Attention, "forward", by_hand.forward), (A, "_explicit_is_faster", by_hand._explicit_is_faster)],
    "head_last_layer": [(L, "weight_norm_linear", head_by_hand_in_fp32)],
}
OLD = {"patch_embed": [(PatchEmbed, "forward", conv_patch_embed)]}  # the others: "old" is vitdino_core as it is

swaps = VARIANTS[sys.argv[1]]
ways = {"new": swaps, "old": OLD.get(sys.argv[1], [(o, a, getattr(o, a)) for o, a, _ in swaps])}
rounds = int(sys.argv[2])
args = ts.parse_args(sys.argv[3:])
torch.set_num_threads(2)
modes = {w: ts.Mode(args, reference=False) for w in ("old", "new")}


def step(w):
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
print(json.dumps({"command": " ".join(sys.argv), "old_median_s": statistics.median(t["old"]),
                  "new_median_s": statistics.median(t["new"]), "new_over_old_median": statistics.median(ratio),
                  "min": min(ratio), "max": max(ratio), "rounds": rounds, "last_loss": losses,
                  "new_over_old_per_round": ratio}))
