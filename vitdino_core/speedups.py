"""The speed tricks of the training step, in one place: `apply_speedups(model)`, which the trainer calls.

The model modules (patch_embedding, attention, vision_transformer, dino_loss) compute DINO as the paper
and the official code write it. A trick lives here only if it saves at least 3% of a measured training
step; notebook 09 explains each one, and benchmarks/PERFORMANCE.md holds the measurements. Each is the
same maths as the plain module, so the step's value and every gradient stay the same (tests compare them):

    cls_only_last_block   nothing reads the last block's other N outputs (the feature is the CLS token
                          after the final norm), so that block computes the CLS row alone: keys and values
                          of every token, but the query, attention row, projection and MLP of one token
    explicit_attention    on a CPU in bf16, attention as the explicit softmax of q k^T: PyTorch's fused
                          CPU kernel is the slow path in that dtype (fused everywhere else)
    skip_dropped_branches stochastic depth as Huang et al. (2016) meant it: a sample whose residual branch
                          is dropped does not compute that branch. The coins are drawn first (the same draw
                          as `drop_path`), then attention or MLP runs on the kept samples only (on a CPU,
                          eager; elsewhere the plain block, which needs no host sync for the coins)

`apply_speedups` binds the trick's forward to each matching module (an instance attribute, so a deep copy,
the EMA teacher, keeps it); deleting that attribute (`remove_speedups`) gives the plain module back.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention, softmax_attention
from .vision_transformer import Block, VisionTransformer


# ----------------------------------------------------------------------------- the CLS-only last block

def attention_cls(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """`attn(x)[:, :1]`, (B, N, C) -> (B, 1, C), with one query: the CLS token still attends to every token."""
    B, N, C = x.shape
    H, d = attn.num_heads, attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias  # (3C, C), (3C,): rows [q | k | v]
    q = F.linear(x[:, :1], w[:C], None if b is None else b[:C])  # (B, 1, C): the CLS token's query only
    kv = F.linear(x, w[C:], None if b is None else b[C:])  # (B, N, 2C): keys and values of every token
    kv = kv.reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4)  # (2, B, H, N, d)
    out, _ = attn.attend(q.reshape(B, 1, H, d).transpose(1, 2), kv[0], kv[1])  # (B, H, 1, d)
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B, 1, C)))  # (B, 1, C)


def block_cls(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """`blk(x)[:, :1]`, (B, N, D) -> (B, 1, D): the block's output for the CLS token alone."""
    x_cls = x[:, :1] + blk.drop_path(attention_cls(blk.attn, blk.norm1(x)))  # (B, 1, D)
    return x_cls + blk.drop_path(blk.mlp(blk.norm2(x_cls)))  # (B, 1, D): the MLP of one token


def forward_cls_only_last_block(self: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """`VisionTransformer.forward` with the last block computing the CLS row alone: the same (B, D) feature."""
    x = self.prepare_tokens(x)  # (B, N+1, D)
    for blk in self.blocks[:-1]:
        x = self._run_block(blk, x)  # (B, N+1, D)
    x = self._run_block(MethodType(block_cls, self.blocks[-1]), x)  # (B, 1, D)
    return self.head(self.norm(x[:, 0]))  # (B, D)


# ----------------------------------------------------------------------------- explicit attention on a CPU in bf16

def attend_explicit_on_cpu_bf16(self: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                return_attention: bool = False):
    """`Attention.attend`, with the explicit softmax also on a CPU in bf16, where it is the faster path."""
    if k.device.type == "cpu" and k.dtype == torch.bfloat16:
        return softmax_attention(q, k, v, self.scale, self.attn_drop)  # (B, H, n, d), (B, H, n, N)
    return Attention.attend(self, q, k, v, return_attention)


# ----------------------------------------------------------------------------- stochastic depth that skips the dropped

def _coin_dtype(y_like: torch.Tensor) -> torch.dtype:
    """The dtype `drop_path` draws its coins in: the branch's output dtype (the autocast dtype under autocast)."""
    if torch.is_autocast_enabled(y_like.device.type):
        return torch.get_autocast_dtype(y_like.device.type)
    return y_like.dtype


def add_kept_branch(x: torch.Tensor, branch, drop_path: nn.Module) -> torch.Tensor:
    """`x + drop_path(branch(x))`, (B, N, D), with `branch` computed only for the samples whose coin keeps it."""
    p = getattr(drop_path, "drop_prob", 0.0)
    if p == 0.0 or not drop_path.training or x.device.type != "cpu" or torch.compiler.is_compiling():
        return x + drop_path(branch(x))  # the plain residual
    keep_prob = 1 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, 1): one coin per sample, as drop_path draws them
    coins = (keep_prob + torch.rand(shape, dtype=_coin_dtype(x), device=x.device)).floor_()  # 1 = keep
    kept = coins.flatten().nonzero().squeeze(1)  # (b,): the samples that keep their branch
    if len(kept) in (0, x.shape[0]):  # nobody dropped, or everybody (the branch's weights still take part, at 0)
        return x + branch(x).div(keep_prob) * coins  # (B, N, D): the plain drop_path with these coins
    y = branch(x[kept]).div(keep_prob)  # (b, N, D): the branch of the kept samples alone
    return x.index_add(0, kept, y.to(x.dtype))  # (B, N, D): a dropped sample's row stays x


def block_skip_dropped(self: Block, x: torch.Tensor, return_attention: bool = False):
    """`Block.forward`, each residual branch computed only for the samples that keep it."""
    if return_attention:
        return Block.forward(self, x, return_attention=True)
    x = add_kept_branch(x, lambda t: self.attn(self.norm1(t)), self.drop_path)  # (B, N, D)
    return add_kept_branch(x, lambda t: self.mlp(self.norm2(t)), self.drop_path)  # (B, N, D)


# ----------------------------------------------------------------------------- applying them

SPEEDUPS = {  # name: (module class, attribute, the trick's function)
    "cls_only_last_block": (VisionTransformer, "forward", forward_cls_only_last_block),
    "explicit_attention": (Attention, "attend", attend_explicit_on_cpu_bf16),
    "skip_dropped_branches": (Block, "forward", block_skip_dropped),
}


def apply_speedups(model: nn.Module, names=tuple(SPEEDUPS)) -> nn.Module:
    """Bind each named trick to every matching module inside `model` (in place); returns `model`."""
    for name in names:
        cls, attr, fn = SPEEDUPS[name]
        for m in model.modules():
            if isinstance(m, cls):
                setattr(m, attr, MethodType(fn, m))
    return model


def remove_speedups(model: nn.Module, names=tuple(SPEEDUPS)) -> nn.Module:
    """Undo `apply_speedups` for the named tricks: the modules' own (plain) methods again."""
    for name in names:
        cls, attr, _ = SPEEDUPS[name]
        for m in model.modules():
            if isinstance(m, cls):
                m.__dict__.pop(attr, None)
    return model
