"""Multi-head self-attention, the only place where tokens talk to each other.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   one such map per head.

Two paths compute the same thing: PyTorch's fused `scaled_dot_product_attention`, which never
materialises the N x N matrix, and the explicit softmax, used when the attention weights are
wanted (attention maps, notebooks 02 and 07).

`fast=True` (set by `VisionTransformer(fast=True)`, which training uses) takes the explicit softmax
on a CPU in bf16 too, where PyTorch's fused kernel is the slow path; `forward_cls` is the CLS row
alone, for the last block of a fast ViT. Notebook 09 measures both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fast: bool = False,
    ):
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
        self.fast = fast  # the explicit softmax on a CPU in bf16 (the faster path there)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d) each
        x, attn = self.attend(q, k, v, return_attention)  # (B, H, N, d), (B, H, N, N) or None
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C): the heads side by side again
        x = self.proj_drop(self.proj(x))  # (B, N, C)
        return (x, attn) if return_attention else x

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """`self(x)[:, :1]`, (B, N, C) -> (B, 1, C), with one query: the CLS token still attends to
        every token."""
        B, N, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias  # (3C, C), (3C,): rows [q | k | v]
        q = F.linear(
            x[:, :1], w[:C], None if b is None else b[:C]
        )  # (B, 1, C): the CLS token's query only
        kv = F.linear(
            x, w[C:], None if b is None else b[C:]
        )  # (B, N, 2C): keys and values of every token
        kv = kv.reshape(B, N, 2, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4
        )  # (2, B, H, N, d)
        q = q.reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, d)
        x, _ = self.attend(q, kv[0], kv[1])  # (B, H, 1, d)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, 1, C)))  # (B, 1, C)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_attention: bool = False
    ):
        """softmax(q k^T * scale) v for (B, H, n, d) queries and (B, H, N, d) keys and values: the
        explicit softmax when the weights are wanted (or, when fast, on a CPU in bf16), else the
        fused kernel. Returns the output (B, H, n, d) and the weights (B, H, n, N), or None when
        fused."""
        if return_attention or (self.fast and k.device.type == "cpu" and k.dtype == torch.bfloat16):
            return softmax_attention(
                q, k, v, self.scale, self.attn_drop
            )  # (B, H, n, d), (B, H, n, N)
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p), None  # (B, H, n, d)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, fast={self.fast}"


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    dropout: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit path: softmax(q k^T * scale) v, with the attention weights materialised and
    returned."""
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, n, N)
    attn = attn.softmax(dim=-1)  # each row sums to 1
    return (attn if dropout is None else dropout(attn)) @ v, attn  # (B, H, n, d), (B, H, n, N)
