"""A/B of this session's changes to the project's step, in one process: two trainers stepped in turn, one with the
code as it is ("new") and one with the change undone ("old"); prints the median of the per-round ratios new / old.

    python benchmarks/results/cpu_2026-12-01/ab_step.py VARIANT ROUNDS [train_step args...]

VARIANT:
  cls_only   the last block computes the CLS row alone (new) against every token through it (old)
  head       under CPU autocast the head's last layer by hand in bf16 (new) against calling the layer (old)
  both       the two together: this session's step against the step as it was found
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import train_step as ts  # noqa: E402
from ab import ab_steps, head_layer_under_autocast  # noqa: E402
import vitdino_core.dino_loss as L  # noqa: E402
from vitdino_core.vision_transformer import VisionTransformer  # noqa: E402


def all_tokens_forward(self, x):
    return self.head(self.forward_features(x)[:, 0])  # (B, D): forward() as it was


SWAPS = {"cls_only": [(VisionTransformer, "forward", all_tokens_forward)],
         "head": [(L, "weight_norm_linear", head_layer_under_autocast)]}
SWAPS["both"] = SWAPS["cls_only"] + SWAPS["head"]

swaps = SWAPS[sys.argv[1]]
ways = {"new": [(o, a, getattr(o, a)) for o, a, _ in swaps], "old": swaps}
print(json.dumps({"command": " ".join(sys.argv), **ab_steps(ways, int(sys.argv[2]), ts.parse_args(sys.argv[3:]))}))
