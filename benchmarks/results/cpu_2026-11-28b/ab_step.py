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
                   the layer in bf16, as vitdino_core called it then (old; it now multiplies by hand in bf16)
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

import train_step as ts  # noqa: E402
from ab import ab_steps, head_layer_under_autocast  # noqa: E402
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
OLD = {"patch_embed": [(PatchEmbed, "forward", conv_patch_embed)],  # the others: "old" is vitdino_core as it is
       "head_last_layer": [(L, "weight_norm_linear", head_layer_under_autocast)]}

swaps = VARIANTS[sys.argv[1]]
ways = {"new": swaps, "old": OLD.get(sys.argv[1], [(o, a, getattr(o, a)) for o, a, _ in swaps])}
print(json.dumps({"command": " ".join(sys.argv), **ab_steps(ways, int(sys.argv[2]), ts.parse_args(sys.argv[3:]))}))
