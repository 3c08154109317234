"""The project's speed tricks as they were in the model modules, each undone in one way of a multi-way A/B.

    python benchmarks/ab_tricks_before.py ROUNDS [train_step args...]

Ways: as_is; no_cls_only (every token through the last block); no_head_by_hand (the head's last layer called as a
layer); no_small (the fused residual + drop path, qkv split by chunk, the CPU clipping branch, the loss's algebraic
rewrite, the EMA as one lerp and the patch embedding as a matmul, all undone); no_attention_rule (fused attention in
CPU bf16 too). Prints one JSON object.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_step as ts  # noqa: E402
from ab import ab_ways  # noqa: E402
import vitdino_core.attention as A  # noqa: E402
import vitdino_core.dino_loss as L  # noqa: E402
import vitdino_core.patch_embedding as P  # noqa: E402
import vitdino_core.train as T  # noqa: E402
import vitdino_core.vision_transformer as V  # noqa: E402


def all_tokens_forward(self, x):
    return self.head(self.forward_features(x)[:, 0])


def plain_add_drop_path(x, branch, drop_prob=0.0, training=False):
    return x + V.drop_path(branch, drop_prob, training)


def plain_attention_forward(self, x, return_attention=False):
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    x, attn = self._attend(q, k, v, return_attention)
    x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))
    return (x, attn) if return_attention else x


@torch.no_grad()
def plain_clip_gradients(model, clip):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.unbind(0)))
    return norms


def plain_loss_forward(self, student_output, teacher_output, epoch, teacher_probs=None):
    log_p = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(self.ncrops)
    if teacher_probs is None:
        teacher_probs = self.teacher_probs(teacher_output, epoch)
    total, n = 0.0, 0
    for iq, q in enumerate(teacher_probs.chunk(2)):
        for v, lp in enumerate(log_p):
            if v != iq:
                total = total + (-q * lp).sum(-1).mean()
                n += 1
    self.update_center(teacher_output)
    return total / n


@torch.no_grad()
def plain_update_teacher(student, teacher, momentum):
    for s, t in zip(student.parameters(), teacher.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def plain_patch_embed_forward(self, x):
    P.check_image_batch(x, self.patch_size, self.in_chans)
    return self.forward_conv(x)


WAYS = {
    "as_is": [],
    "no_cls_only": [(V.VisionTransformer, "forward", all_tokens_forward)],
    "no_head_by_hand": [(L, "weight_norm_linear", lambda x, layer: layer(x))],
    "no_small": [(V, "add_drop_path", plain_add_drop_path), (A.Attention, "forward", plain_attention_forward),
                 (T, "clip_gradients", plain_clip_gradients), (L.DINOLoss, "forward", plain_loss_forward),
                 (T, "update_teacher", plain_update_teacher), (P.PatchEmbed, "forward", plain_patch_embed_forward)],
    "no_attention_rule": [(A, "_explicit_is_faster", lambda k: False)],
}

if __name__ == "__main__":
    args = ts.parse_args(sys.argv[2:])
    ways = dict(WAYS)
    if args.dtype != "bf16":
        ways.pop("no_attention_rule")  # the rule only acts in CPU bf16
    print(json.dumps({"command": "python " + " ".join(sys.argv), **ab_ways(ways, int(sys.argv[1]), args)}))
