"""Multi-head self-attention, the only place where tokens talk to each other.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   one such map per head.

Two paths compute the same thing: PyTorch's fused `scaled_dot_product_attention`, which never
materialises the N x N matrix, and the explicit softmax, used when the attention weights are
wanted (attention maps, notebooks 02 and 07).
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
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d) each
        x, attn = self.attend(q, k, v, return_attention)  # (B, H, N, d), (B, H, N, N) or None
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C): the heads side by side again
        x = self.proj_drop(self.proj(x))  # (B, N, C)
        return (x, attn) if return_attention else x

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_attention: bool = False):
        """softmax(q k^T * scale) v for (B, H, n, d) queries and (B, H, N, d) keys and values: the explicit softmax
        when the weights are wanted, else the fused kernel. Returns the output (B, H, n, d) and the weights
        (B, H, n, N), or None when fused."""
        if return_attention:
            return softmax_attention(q, k, v, self.scale, self.attn_drop)
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p), None  # (B, H, n, d)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      dropout: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit path: softmax(q k^T * scale) v, with the attention weights materialised and returned."""
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, n, N)
    attn = attn.softmax(dim=-1)  # each row sums to 1
    return (attn if dropout is None else dropout(attn)) @ v, attn  # (B, H, n, d), (B, H, n, N)
