"""Multi-head self-attention, the only place where tokens talk to each other.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   one such map per head.

Two paths compute the same thing: PyTorch's fused `scaled_dot_product_attention` (fast, never
materialises the N x N matrix) and the explicit softmax, used when the attention weights are
wanted (attention maps, notebook 02 and 07) and on a CPU in bf16, where it is the faster one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, N, C = x.shape
        qkv = self.qkv(x)  # (B, N, 3C): [q | k | v], each C = H heads of d
        # the same views as DINO's reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4), but split with chunk: its
        # backward writes the three gradients straight into one (B, N, 3C) tensor (one copy, not two)
        q, k, v = (self._split_heads(t) for t in qkv.chunk(3, dim=-1))  # 3 x (B, H, N, d)
        x, attn = self._attend(q, k, v, return_attention)  # (B, H, N, d), (B, H, N, N) or None
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        x = self.proj_drop(self.proj(x))  # (B, N, C)
        return (x, attn) if return_attention else x

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output of the CLS token alone, (B, N, C) -> (B, 1, C): what `forward(x)[:, :1]` is,
        with one query instead of N. The CLS token still attends to every token, so k and v are computed for all."""
        B, N, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias  # (3C, C), (3C,): rows [q | k | v]
        q = F.linear(x[:, :1], w[:C], None if b is None else b[:C])  # (B, 1, C): the CLS token's query only
        kv = F.linear(x, w[C:], None if b is None else b[C:])  # (B, N, 2C): keys and values of every token
        k, v = (self._split_heads(t) for t in kv.chunk(2, dim=-1))  # 2 x (B, H, N, d)
        x, _ = self._attend(self._split_heads(q), k, v)  # (B, H, 1, d)
        x = x.transpose(1, 2).reshape(B, 1, C)  # (B, 1, C)
        return self.proj_drop(self.proj(x))  # (B, 1, C)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, H, n, d): a view, one head per slice of d channels."""
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_attention: bool = False):
        """softmax(q k^T * scale) v for (B, H, n, d) queries and (B, H, N, d) keys and values: explicit when the
        weights are wanted or where it is the faster path (the rule reads the keys: N tokens), else fused.
        Returns the output (B, H, n, d) and the weights (B, H, n, N), or None when fused."""
        if return_attention or _explicit_is_faster(k):
            return softmax_attention(q, k, v, self.scale, self.attn_drop)
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p), None


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      dropout: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit path: softmax(q k^T * scale) v, with the attention weights materialised and returned."""
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, H, N, N)
    attn = attn.softmax(dim=-1)  # each row sums to 1
    return (attn if dropout is None else dropout(attn)) @ v, attn  # (B, H, N, d), (B, H, N, N)


def _explicit_is_faster(k: torch.Tensor) -> bool:
    """True on a CPU in bf16, where PyTorch's fused attention kernel is the slow path: forward + backward
    of one ViT-S/16 block's attention on 2 threads (torch 2.14) took 29 ms fused vs 12 ms explicit at 197
    tokens, 23 ms vs 3.4 ms at 37 tokens on an Intel CPU with AMX; 50 vs 20 ms and 33 vs 4.0 ms on an AMD
    Zen 4 CPU (AVX512-BF16, no AMX). In fp32 and on GPUs the fused kernel wins."""
    return k.device.type == "cpu" and k.dtype == torch.bfloat16
