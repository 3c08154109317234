"""Attention with its backward written by hand: tried on CPUs and not kept (see README.md).

Not a copy of vitdino_core/attention.py but what this variant added to it: a third path, `explicit_attention`, and
the rule that picks it. `forward` replaces `Attention.forward` (ab_step.py's `attention_by_hand` swaps it in,
with this file's `_explicit_is_faster`); anything the new path does not serve goes to the original forward.
"""

from __future__ import annotations

import torch

from vitdino_core.attention import Attention

_original_forward = Attention.forward


def forward(self: Attention, x: torch.Tensor, return_attention: bool = False):
    """Attention.forward with one more path: training on a CPU, where `_by_hand_is_faster` says so."""
    p = self.attn_drop.p if self.training else 0.0
    if return_attention or p > 0.0 or not _by_hand_is_faster(self, x):
        return _original_forward(self, x, return_attention)
    return self.proj_drop(self.proj(explicit_attention(self.qkv(x), self.num_heads, self.scale)))  # (B, N, C)


def explicit_attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v straight from the (B, N, 3C) output of `qkv`, returned as (B, N, C), with the
    backward written by hand (_ExplicitAttention). No attention dropout."""
    return _ExplicitAttention.apply(qkv, num_heads, scale)


class _ExplicitAttention(torch.autograd.Function):
    """O = P V with P = softmax(S), S = scale * Q K^T, per head. Given dO, with P kept from the forward:

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(P * dP)),   dQ = scale * dS K,   dK = scale * dS^T Q

    (dS is the softmax's backward, dS_ij = P_ij (dP_ij - sum_l P_il dP_il), computed by PyTorch's own kernel)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        B, N, C3 = qkv.shape
        C = C3 // 3
        H, d = num_heads, C // num_heads
        qkvh = qkv.view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).reshape(3, B * H, N, d)  # (3, B*H, N, d): one copy
        q, k, v = qkvh.unbind(0)  # 3 x (B*H, N, d)
        s = torch.baddbmm(qkv.new_empty(1, 1, 1), q, k.transpose(1, 2), beta=0, alpha=scale)  # (B*H, N, N): scale * q k^T
        attn = s.softmax(dim=-1)  # (B*H, N, N), rows sum to 1
        del s
        out = torch.bmm(attn, v)  # (B*H, N, d)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(qkvh, attn)
            ctx.scale = scale
        return out.view(B, H, N, d).transpose(1, 2).reshape(B, N, C)  # (B, N, C): heads side by side

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        qkvh, attn = ctx.saved_tensors
        q, k, v = qkvh.unbind(0)  # 3 x (B*H, N, d)
        BH, N, d = q.shape
        B, C = d_out.shape[0], d_out.shape[2]
        H = BH // B
        dO = d_out.reshape(B, N, H, d).transpose(1, 2).reshape(BH, N, d)  # (B*H, N, d)
        d_attn = torch.bmm(dO, v.transpose(1, 2))  # (B*H, N, N): dP = dO V^T
        ds = torch._softmax_backward_data(d_attn, attn, -1, attn.dtype)  # (B*H, N, N): P * (dP - rowsum(P * dP)), one pass
        dqkvh = torch.empty_like(qkvh)  # (3, B*H, N, d)
        torch.baddbmm(dqkvh[0], ds, k, beta=0, alpha=ctx.scale, out=dqkvh[0])  # dQ = scale * dS K
        torch.baddbmm(dqkvh[1], ds.transpose(1, 2), q, beta=0, alpha=ctx.scale, out=dqkvh[1])  # dK = scale * dS^T Q
        torch.bmm(attn.transpose(1, 2), dO, out=dqkvh[2])  # dV = P^T dO
        d_qkv = dqkvh.view(3, B, H, N, d).permute(1, 3, 0, 2, 4).reshape(B, N, 3 * C)  # (B, N, 3C): one copy
        return d_qkv, None, None


def _by_hand_is_faster(attn: Attention, x: torch.Tensor) -> bool:
    """True when training on a CPU at sequence lengths where `explicit_attention` beat the fused kernel, forward and
    backward of one ViT-S/16 attention on 2 threads of an AVX-512/AMX CPU (torch 2.14; batch x tokens ~ 3,150):
    fp32 14 vs 16 ms at 101 tokens, 21 vs 22 ms at 197 (even at 65, slower at 37 and 257 tokens and above); bf16
    10 vs 27 ms at 197 tokens and 7 vs 45 ms at 37, where the fused backward is slow at every length measured.
    Without gradients (the teacher, evaluation) the fused forward is the faster one."""
    if x.device.type != "cpu" or not (torch.is_grad_enabled() and attn.qkv.weight.requires_grad):
        return False
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype  # the dtype qkv comes out in
    return dtype == torch.bfloat16 or 64 < x.shape[1] <= 256


def _explicit_is_faster(q: torch.Tensor) -> bool:
    """True on a CPU in bf16 when gradients are needed but `explicit_attention` cannot serve (attention dropout):
    there the fused kernel's backward is the slow one. Benchmarks override this rule to try other cases."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad and torch.is_grad_enabled()
