"""Checks for the exercises of notebooks 01-04: patches, attention, the ViT, multi-crop views.

Each `check_<name>(fn)` calls the learner's `fn` on several shapes and seeds, compares it with
`vitdino_core`, and names the likely mistake when they differ. Each `reference_<name>` has the same
signature as the exercise and is built from the core's pieces: `pick(name, mine)` falls back to it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from ..attention import Attention, softmax_attention
from ..multicrop import MultiCropAugmentation, collate_multicrop, flip_and_color_jitter, gaussian_blur, normalize
from ..patch_embedding import PatchEmbed, patchify
from ..vision_transformer import Block, Mlp, VisionTransformer, drop_path
from . import check, close, expect_close, expect_shape, expect_tensor, first_match, mistake, reference

__all__ = [
    "check_patchify", "check_patch_embed", "check_attention", "check_multi_head_attention", "check_mlp",
    "check_drop_path", "check_block", "check_prepare_tokens", "check_vit_forward", "check_local_view",
    "check_stack_views",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- 01 · patch embedding ---------------------------------------------------------------------

PATCHIFY_CASES = [(2, 3, 8, 8, 4), (1, 3, 12, 8, 4), (2, 1, 6, 9, 3), (3, 3, 32, 48, 16), (1, 2, 5, 5, 5)]


def _grid(x: torch.Tensor, p: int) -> torch.Tensor:
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)


@reference("patchify")
def reference_patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    return patchify(images, patch)


@check("patchify")
def check_patchify(fn: Callable) -> str:
    """fn(images (B, C, H, W), patch p) -> (B, N, C*p*p), patches in raster order, each channel-first."""
    for seed, (B, C, H, W, p) in enumerate(PATCHIFY_CASES):
        x = torch.randn(B, C, H, W, generator=_gen(seed))
        got = expect_tensor(fn(x.clone(), p))
        want = patchify(x, p)
        N = (H // p) * (W // p)
        if got.ndim == 4 and got.shape[:1] == (B,) and got.shape[1:3] == (H // p, W // p):
            raise mistake(f"shape {tuple(got.shape)} keeps the grid (h, w); merge it into one axis of N = h*w tokens")
        expect_shape(got, want.shape, ("B", "N", "C*p*p"))
        if torch.equal(got, want):
            continue
        t, h, w = _grid(x, p), H // p, W // p
        wrong = first_match(got, {
            "channel_last": t.permute(0, 2, 4, 3, 5, 1).reshape(B, N, -1),
            "columns": t.permute(0, 4, 2, 1, 3, 5).reshape(B, N, -1),
            "inner": t.permute(0, 2, 4, 1, 5, 3).reshape(B, N, -1),
            "reshape": x.reshape(B, N, -1),
        })
        raise mistake({
            "channel_last": "each patch is flattened channel-last, as (p, p, C); flatten it channel-first, "
                            "as (C, p, p), the layout of a conv weight",
            "columns": "the patches are numbered column by column; number them row by row "
                       "(raster order: patch (i, j) is token i*w + j)",
            "inner": "rows and columns inside each patch are swapped; keep (C, row, column) order",
            "reshape": "a plain reshape mixes pixels of different patches: split H and W into (h, p) and "
                       "(w, p), then permute the grid axes next to the batch",
            None: f"wrong values for images {(B, C, H, W)}, patch {p}: token i*w + j should be the p x p "
                  "square at grid row i, column j, flattened as (C, p, p)",
        }[wrong])
    return f"matches vitdino_core.patchify on {len(PATCHIFY_CASES)} image and patch sizes"


PATCH_EMBED_CASES = [(2, 3, 8, 8, 4, 5), (1, 3, 12, 8, 4, 48), (2, 1, 9, 6, 3, 9), (1, 3, 32, 32, 16, 16)]


@reference("patch_embed")
def reference_patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch: int):
    D, C = weight.shape[:2]
    embed = PatchEmbed(images.shape[-1], patch, C, D).to(weight.dtype)
    with torch.no_grad():
        embed.proj.weight.copy_(weight)
        embed.proj.bias.copy_(bias)
        return embed(images)  # (B, N, D)


@check("patch_embed")
def check_patch_embed(fn: Callable) -> str:
    """fn(images (B, C, H, W), weight (D, C, p, p), bias (D,), patch p) -> tokens (B, N, D)."""
    for seed, (B, C, H, W, p, D) in enumerate(PATCH_EMBED_CASES):
        g = _gen(seed)
        x, w, b = torch.randn(B, C, H, W, generator=g), torch.randn(D, C, p, p, generator=g), torch.randn(D, generator=g)
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), w.clone(), b.clone(), p))
        want = F.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2)  # (B, N, D)
        expect_shape(got, want.shape, ("B", "N", "D"))
        if close(got, want, atol=1e-4):
            continue
        patches = patchify(x, p)  # (B, N, C*p*p)
        wrong = first_match(got, {
            "bias": want - b,
            "weight_order": patches @ w.permute(0, 2, 3, 1).reshape(D, -1).T + b,
            "transpose": (patches @ w.reshape(D, -1) + b) if D == C * p * p else want + 1e9,
            "bias_twice": want + b,
        }, atol=1e-4)
        raise mistake({
            "bias": "the bias is missing: add it to every token",
            "bias_twice": "the bias is added twice",
            "weight_order": "the weight is flattened in another order than the patches: reshape (D, C, p, p) "
                            "straight to (D, C*p*p), channel-first like the patches",
            "transpose": "patches @ W with W of shape (D, C*p*p): multiply by its transpose, W.T",
            None: f"wrong tokens for images {(B, C, H, W)}, patch {p}, D={D}: token n is "
                  "patch n (flattened channel-first) times the flattened weight, plus the bias",
        }[wrong])
    return f"equals the strided conv on {len(PATCH_EMBED_CASES)} sizes"


# ---- 02 · attention ---------------------------------------------------------------------------

ATTENTION_CASES = [((2, 3), 5, 5, 8), ((1, 2), 4, 7, 16), ((), 6, 6, 4), ((3,), 1, 9, 32)]


@reference("attention")
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: bool = True):
    return softmax_attention(q, k, v, q.shape[-1] ** -0.5 if scale else 1.0)


def _attention_outputs(result, n: int, N: int):
    if not (isinstance(result, tuple) and len(result) == 2):
        raise mistake("return two tensors: (output, weights)")
    return expect_tensor(result[0], "the output"), expect_tensor(result[1], "the weights")


@check("attention")
def check_attention(fn: Callable) -> str:
    """fn(q (..., n, d), k (..., N, d), v (..., N, d), scale=True) -> (output (..., n, d), weights (..., n, N))."""
    for seed, (lead, n, N, d) in enumerate(ATTENTION_CASES):
        g = _gen(seed)
        q, k, v = (2 * torch.randn(*lead, m, d, generator=g) for m in (n, N, N))
        for scale in (True, False):
            out, attn = _attention_outputs(fn(q.clone(), k.clone(), v.clone(), scale=scale), n, N)
            want_out, want_attn = reference_attention(q, k, v, scale)
            expect_shape(attn, want_attn.shape, [*(f"batch{i}" for i in range(len(lead))), "queries", "keys"],
                         "weights")
            if not close(attn.sum(-1), torch.ones(*lead, n)):
                hint = " (the columns do)" if n == N and close(attn.sum(-2), torch.ones(*lead, N)) else ""
                raise mistake("softmax over the wrong axis: the rows of the weights do not sum to 1" + hint
                              + "; take it over the keys, dim=-1")
            if not close(attn, want_attn):
                scores = q @ k.transpose(-2, -1)  # (..., n, N)
                wrong = first_match(attn, {
                    "missing": scores.softmax(-1), "by_d": (scores / d).softmax(-1),
                    "times": (scores * math.sqrt(d)).softmax(-1), "extra": (scores / math.sqrt(d)).softmax(-1),
                })
                if wrong == "missing" and scale:
                    raise mistake("missing 1/sqrt(d): the weights are too peaked; divide the scores by sqrt(d)")
                if wrong == "extra" and not scale:
                    raise mistake("with scale=False the scores must not be divided by sqrt(d)")
                raise mistake({
                    "by_d": "the scores are divided by d; divide them by sqrt(d)",
                    "times": "the scores are multiplied by sqrt(d); divide them by it",
                }.get(wrong, f"wrong weights for q {tuple(q.shape)}, k {tuple(k.shape)}: "
                             "softmax(q k^T / sqrt(d)) over the keys"))
            expect_shape(out, want_out.shape, [*(f"batch{i}" for i in range(len(lead))), "queries", "d"], "output")
            if not close(out, want_out):
                if n == N and close(out, attn.transpose(-2, -1) @ v):
                    raise mistake("the weights are transposed before multiplying the values: output = weights @ v")
                raise mistake("right weights, wrong output: it is the weighted sum of the values, weights @ v")
    return f"matches vitdino_core's softmax attention on {len(ATTENTION_CASES)} shapes, scaled and not"


MHA_CASES = [(2, 5, 12, 3), (1, 7, 16, 4), (3, 4, 8, 1), (2, 6, 24, 6)]


@reference("multi_head_attention")
def reference_multi_head_attention(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, num_heads: int):
    attn = Attention(x.shape[-1], num_heads=num_heads, qkv_bias=qkv.bias is not None)
    attn.qkv, attn.proj = qkv, proj
    return attn(x, return_attention=True)  # (B, N, D), (B, H, N, N)


def _mha_variant(x, qkv, proj, H, split="right", merge="right", use_proj=True, scale=None):
    B, N, D = x.shape
    d = D // H
    t = qkv(x)  # (B, N, 3D)
    if split == "interleaved":
        q, k, v = t.reshape(B, N, H, 3, d).permute(3, 0, 2, 1, 4)  # wrong: (q/k/v) inside each head
    elif split == "no_transpose":
        q, k, v = (s.reshape(B, H, N, d) for s in t.chunk(3, -1))  # wrong: heads cut across tokens
    else:
        q, k, v = t.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
    w = ((q @ k.transpose(-2, -1)) * (scale if scale is not None else d**-0.5)).softmax(-1)  # (B, H, N, N)
    o = w @ v  # (B, H, N, d)
    o = o.reshape(B, N, D) if merge == "no_transpose" else o.transpose(1, 2).reshape(B, N, D)
    return proj(o) if use_proj else o


@check("multi_head_attention")
def check_multi_head_attention(fn: Callable) -> str:
    """fn(x (B, N, D), qkv Linear(D, 3D), proj Linear(D, D), num_heads) -> (out (B, N, D), weights (B, H, N, N))."""
    for seed, (B, N, D, H) in enumerate(MHA_CASES):
        torch.manual_seed(seed)
        qkv, proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        x = torch.randn(B, N, D, generator=_gen(seed))
        with torch.no_grad():
            result = fn(x.clone(), qkv, proj, H)
            want, want_attn = reference_multi_head_attention(x, qkv, proj, H)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise mistake("return two tensors: (output (B, N, D), weights (B, H, N, N))")
            out, attn = expect_tensor(result[0], "the output"), expect_tensor(result[1], "the weights")
            expect_shape(attn, want_attn.shape, ("B", "H", "N", "N"), "weights")
            expect_shape(out, want.shape, ("B", "N", "D"), "output")
            if close(out, want) and close(attn, want_attn):
                continue
            wrong = first_match(out, {
                "interleaved": _mha_variant(x, qkv, proj, H, split="interleaved"),
                "no_transpose": _mha_variant(x, qkv, proj, H, split="no_transpose"),
                "merge": _mha_variant(x, qkv, proj, H, merge="no_transpose"),
                "proj": _mha_variant(x, qkv, proj, H, use_proj=False),
                "scale_D": _mha_variant(x, qkv, proj, H, scale=D**-0.5),
                "one_head": _mha_variant(x, qkv, proj, 1),
            })
        raise mistake({
            "interleaved": "q, k, v and the heads are split in the wrong order: qkv(x)'s 3D features are "
                           "[q | k | v], each H heads of d; reshape to (B, N, 3, H, d)",
            "no_transpose": "heads split wrongly: reshape to (B, N, H, d) first, then move H next to the batch "
                            "with transpose(1, 2); (B, N, D) -> (B, H, N, d) in one reshape mixes tokens",
            "merge": "heads merged wrongly: transpose (B, H, N, d) back to (B, N, H, d) before the reshape "
                     "to (B, N, D)",
            "proj": "the output projection is missing: finish with proj(...)",
            "scale_D": "each head scales by 1/sqrt(d) with d = D / num_heads, not 1/sqrt(D)",
            "one_head": "num_heads is ignored: this is one attention of width D",
            None: f"wrong output for x {(B, N, D)}, {H} heads: split qkv(x) into q, k, v of "
                  "(B, H, N, d), attend per head, merge the heads, project",
        }[wrong])
    return f"matches vitdino_core.Attention on {len(MHA_CASES)} shapes and head counts"


# ---- 03 · the Vision Transformer --------------------------------------------------------------

@reference("mlp")
def reference_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    mlp = Mlp(fc1.in_features, fc1.out_features, fc2.out_features)
    mlp.fc1, mlp.fc2 = fc1, fc2
    return mlp(x)


@check("mlp")
def check_mlp(fn: Callable) -> str:
    """fn(x (..., D), fc1 Linear(D, hidden), fc2 Linear(hidden, D)) -> (..., D)."""
    cases = [((2, 5), 8, 32), ((3,), 16, 64), ((1, 4), 6, 6)]
    for seed, (lead, D, hidden) in enumerate(cases):
        torch.manual_seed(seed)
        fc1, fc2 = nn.Linear(D, hidden), nn.Linear(hidden, D)
        x = 2 * torch.randn(*lead, D, generator=_gen(seed))
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), fc1, fc2))
            want = reference_mlp(x, fc1, fc2)
            expect_shape(got, want.shape, [*(f"batch{i}" for i in range(len(lead))), "D"])
            if close(got, want):
                continue
            wrong = first_match(got, {
                "relu": fc2(F.relu(fc1(x))), "tanh": fc2(F.gelu(fc1(x), approximate="tanh")),
                "none": fc2(fc1(x)), "after": F.gelu(fc2(F.gelu(fc1(x)))),
            })
        raise mistake({
            "relu": "ReLU between the layers; the ViT's MLP uses GELU (F.gelu or nn.GELU())",
            "tanh": "GELU's tanh approximation; use the exact GELU, F.gelu(x) (approximate='none')",
            "none": "no activation between fc1 and fc2: two linear layers in a row are one linear layer",
            "after": "an activation after fc2: the MLP ends with the linear layer fc2",
            None: "wrong values: fc2(GELU(fc1(x)))",
        }[wrong])
    return f"matches vitdino_core.Mlp on {len(cases)} shapes"


@reference("drop_path")
def reference_drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return drop_path(x, p, training)


@check("drop_path")
def check_drop_path(fn: Callable) -> str:
    """fn(x (B, ...), p, training) -> x with whole samples zeroed (probability p), the rest scaled by 1/(1-p)."""
    x = torch.randn(8, 4, 3, generator=_gen(0)) + 3  # (B, N, D), no zeros
    before = x.clone()
    got = expect_tensor(fn(x, 0.5, False))
    if not torch.equal(x, before):
        raise mistake("your function changes its input in place; return a new tensor")
    if not torch.equal(got, x):
        raise mistake("drops in eval mode: with training=False return x unchanged")
    if not torch.equal(expect_tensor(fn(x, 0.0, True)), x):
        raise mistake("p = 0 must keep every sample unchanged")
    for p, shape in ((0.25, (4000, 3, 2)), (0.75, (4000, 5)), (0.4, (4000, 2, 2, 2))):
        x = torch.rand(*shape, generator=_gen(1)) + 1  # (B, ...), no zeros
        torch.manual_seed(0)
        got = expect_tensor(fn(x.clone(), p, True))
        expect_shape(got, x.shape, ["B", *(f"axis{i}" for i in range(1, x.ndim))])
        ratio = (got / x).flatten(1)  # (B, rest): one factor per sample if whole samples are dropped
        per_sample = (ratio - ratio[:, :1]).abs().max() < 1e-4
        if not per_sample:
            raise mistake("single values are dropped, like dropout; drop whole samples: one coin per sample, "
                          f"a mask of shape (B, {', '.join(['1'] * (x.ndim - 1))})")
        factor, kept = ratio[:, 0], ratio[:, 0] != 0
        dropped = 1 - kept.float().mean().item()
        if abs(dropped - (1 - p)) < 0.05 and abs(p - 0.5) > 0.1:
            raise mistake(f"drop probability and keep probability swapped: {dropped:.0%} of the samples "
                          f"were dropped with p = {p}; p is the chance to drop")
        if abs(dropped - p) > 0.05:
            raise mistake(f"{dropped:.0%} of the samples were dropped with p = {p}; drop each with probability p")
        scale = factor[kept].mean().item()
        if abs(scale - 1) < 1e-4:
            raise mistake(f"the kept samples are not rescaled: divide them by 1 - p = {1 - p} so the "
                          "expected output stays x")
        if abs(scale - (1 - p)) < 1e-4:
            raise mistake("the kept samples are multiplied by 1 - p; divide by it")
        if abs(scale - 1 / (1 - p)) > 1e-4:
            raise mistake(f"kept samples are scaled by {scale:.4g}; it should be 1 / (1 - p) = {1 / (1 - p):.4g}")
        torch.manual_seed(0)
        if not close(got, drop_path(x, p, True)):
            raise mistake("right behaviour, but other coins than vitdino_core's for the same seed: draw them "
                          "as DINO does, u = torch.rand((B, 1, ...)), keep a sample where floor(1 - p + u) = 1")
    return "eval mode, p = 0, whole samples, the drop rate, the 1/(1-p) scale and the coins all match"


def _block(D: int, H: int, seed: int) -> Block:
    torch.manual_seed(seed)
    block = Block(D, H, mlp_ratio=2.0, qkv_bias=True, norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6)).eval()
    with torch.no_grad():  # different norms, so that norm1 and norm2 cannot be mixed up unnoticed
        for norm in (block.norm1, block.norm2):
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    return block


def _normed_residual(x: torch.Tensor, block: Block) -> torch.Tensor:
    x = block.norm1(x)
    x = x + block.attn(x)  # wrong: the residual path carries norm1(x)
    x = block.norm2(x)
    return x + block.mlp(x)


@reference("block")
def reference_block(x: torch.Tensor, block: nn.Module, drop_prob: float = 0.0, training: bool = False):
    x = x + drop_path(block.attn(block.norm1(x)), drop_prob, training)  # (B, N, D)
    return x + drop_path(block.mlp(block.norm2(x)), drop_prob, training)  # (B, N, D)


@check("block")
def check_block(fn: Callable) -> str:
    """fn(x (B, N, D), block with norm1, attn, norm2, mlp, drop_prob, training) -> (B, N, D), pre-norm."""
    cases = [(2, 5, 12, 3), (1, 9, 16, 2), (3, 4, 8, 1)]
    for seed, (B, N, D, H) in enumerate(cases):
        block = _block(D, H, seed)
        x = torch.randn(B, N, D, generator=_gen(seed))
        n1, n2, attn, mlp = block.norm1, block.norm2, block.attn, block.mlp
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), block, 0.0, False))
            want = block(x)  # the core Block: pre-norm
            expect_shape(got, want.shape, ("B", "N", "D"))
            if close(got, want):
                continue
            y = x + attn(n1(x))
            wrong = first_match(got, {
                "post": n2(n1(x + attn(x)) + mlp(n1(x + attn(x)))),
                "residual": mlp(n2(attn(n1(x)))),
                "parallel": x + attn(n1(x)) + mlp(n2(x)),
                "swapped": (x + attn(n2(x))) + mlp(n1(x + attn(n2(x)))),
                "normed_residual": _normed_residual(x, block),
                "one_branch": y,
            })
        raise mistake({
            "post": "post-norm: the norm is applied after the addition; normalise the branch's input "
                    "instead: x + attn(norm1(x)), then x + mlp(norm2(x))",
            "residual": "the residual connections are missing: add each branch's output to x",
            "parallel": "the MLP branch reads the block's input; it must read x after the attention step",
            "swapped": "norm1 and norm2 are swapped: norm1 goes before attn, norm2 before mlp",
            "normed_residual": "the residual path carries the normalised x; keep x itself on it: "
                               "x + attn(norm1(x))",
            "one_branch": "the MLP branch is missing: x + mlp(norm2(x)) after the attention step",
            None: "wrong values: x + attn(norm1(x)), then x + mlp(norm2(x))",
        }[wrong])
    block, x = _block(8, 2, 7), torch.randn(4, 3, 8, generator=_gen(7))
    with torch.no_grad():
        if not close(expect_tensor(fn(x.clone(), block, 0.5, False)), block(x)):
            raise mistake("with training=False drop path must do nothing, whatever drop_prob is")
        torch.manual_seed(1)
        got = expect_tensor(fn(x.clone(), block, 0.5, True))
        torch.manual_seed(1)
        if not close(got, reference_block(x, block, 0.5, True)):
            raise mistake("with drop_prob > 0 in training, each branch goes through drop path before it is "
                          "added: x + drop_path(attn(norm1(x))), then the same for the MLP")
    return f"matches vitdino_core.Block on {len(cases)} shapes, with and without drop path"


def _vit(seed: int, img: int = 32, patch: int = 8, D: int = 24, depth: int = 2, H: int = 2) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=img, patch_size=patch, embed_dim=D, depth=depth, num_heads=H).eval()
    with torch.no_grad():  # large, random tokens: a missing or misplaced one shows
        vit.cls_token.normal_(0, 1)
        vit.pos_embed.normal_(0, 1)
        vit.norm.weight.normal_(1.0, 0.5)
    return vit


@reference("prepare_tokens")
def reference_prepare_tokens(images: torch.Tensor, patch_embed: nn.Module, cls_token: torch.Tensor,
                             pos_embed: torch.Tensor) -> torch.Tensor:
    x = patch_embed(images)  # (B, N, D)
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, D)
    return x + pos_embed  # (B, N+1, D)


@check("prepare_tokens")
def check_prepare_tokens(fn: Callable) -> str:
    """fn(images (B, 3, H, W), patch_embed, cls_token (1, 1, D), pos_embed (1, N+1, D)) -> (B, N+1, D)."""
    cases = [(1, 32, 8, 24), (3, 32, 8, 24), (2, 36, 12, 16)]
    for seed, (B, img, p, D) in enumerate(cases):
        vit = _vit(seed, img, p, D, depth=1)
        x = torch.randn(B, 3, img, img, generator=_gen(seed))
        with torch.no_grad():
            want = vit.prepare_tokens(x)
            try:
                got = expect_tensor(fn(x.clone(), vit.patch_embed, vit.cls_token, vit.pos_embed))
            except RuntimeError as e:
                if B > 1 and "ize" in str(e):
                    raise mistake(f"works for one image, not for a batch of {B}: expand cls_token "
                                  "(1, 1, D) to (B, 1, D) before the concatenation") from None
                raise
            N = (img // p) ** 2
            expect_shape(got, want.shape, ("B", "N+1", "D"))
            if close(got, want):
                continue
            tokens, cls = vit.patch_embed(x), vit.cls_token.expand(B, -1, -1)
            wrong = first_match(got, {
                "no_pos": torch.cat([cls, tokens], 1),
                "cls_no_pos": torch.cat([cls, tokens + vit.pos_embed[:, 1:]], 1),
                "cls_last": torch.cat([tokens, cls], 1) + vit.pos_embed,
                "shifted": torch.cat([cls, tokens + vit.pos_embed[:, :N]], 1),
            })
        raise mistake({
            "no_pos": "the position embeddings are not added: add pos_embed (1, N+1, D) to every token",
            "cls_no_pos": "the class token got no position embedding: pos_embed has N+1 rows and row 0 is "
                          "the class token's; concatenate first, then add",
            "cls_last": "the class token is at the end; put it first, as token 0",
            "shifted": "the position embeddings are shifted by one: row 0 belongs to the class token, "
                       "rows 1..N to the patches",
            None: "wrong tokens: [cls_token; patch_embed(images)] + pos_embed",
        }[wrong])
    return f"matches VisionTransformer.prepare_tokens on {len(cases)} sizes"


@reference("vit_forward")
def reference_vit_forward(images: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    x = reference_prepare_tokens(images, vit.patch_embed, vit.cls_token, vit.pos_embed)  # (B, N+1, D)
    for blk in vit.blocks:
        x = blk(x)  # (B, N+1, D)
    return vit.norm(x)[:, 0]  # (B, D)


@check("vit_forward")
def check_vit_forward(fn: Callable) -> str:
    """fn(images (B, 3, H, W), vit) -> the class token after the final norm, (B, D)."""
    cases = [(2, 32, 8, 24, 2), (1, 36, 12, 16, 1), (3, 32, 8, 24, 3)]
    for seed, (B, img, p, D, depth) in enumerate(cases):
        vit = _vit(seed, img, p, D, depth)
        x = torch.randn(B, 3, img, img, generator=_gen(seed))
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), vit))
            want = vit(x)  # (B, D)
            if got.ndim == 3 and got.shape[0] == B and got.shape[-1] == D:
                raise mistake(f"returns all {got.shape[1]} tokens; the feature is the class token alone, (B, D)")
            expect_shape(got, want.shape, ("B", "D"))
            if close(got, want, atol=1e-4):
                continue
            z = vit.prepare_tokens(x)
            for blk in vit.blocks:
                z = blk(z)  # (B, N+1, D)
            wrong = first_match(got, {
                "no_norm": z[:, 0], "mean": vit.norm(z).mean(1), "mean_patches": vit.norm(z)[:, 1:].mean(1),
                "last": vit.norm(z)[:, -1], "no_blocks": vit.norm(vit.prepare_tokens(x))[:, 0],
            }, atol=1e-4)
        raise mistake({
            "no_norm": "the final norm is missing: apply vit.norm before taking the class token",
            "mean": "this averages all tokens; the image's feature is the class token, token 0",
            "mean_patches": "this averages the patch tokens; the image's feature is the class token, token 0",
            "last": "this takes the last token; the class token is token 0",
            "no_blocks": "the blocks are not applied: run the tokens through every block in vit.blocks",
            None: "wrong feature: tokens, then every block, then vit.norm, then token 0",
        }[wrong])
    return f"matches VisionTransformer.forward on {len(cases)} models"


# ---- 04 · multi-crop --------------------------------------------------------------------------

@reference("local_view")
def reference_local_view(size: int, scale: tuple[float, float]) -> v2.Compose:
    return MultiCropAugmentation(local_crops_scale=scale, local_crops_number=1, local_crops_size=size).local_transfo


def _local_variant(size, scale, interpolation=v2.InterpolationMode.BICUBIC, blur=0.5, jitter=True, norm=True):
    steps = [v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True)]
    steps += [flip_and_color_jitter()] if jitter else []
    steps += [gaussian_blur(blur)]
    steps += [normalize()] if norm else [v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def _test_image(seed: int, h: int, w: int) -> torch.Tensor:
    small = torch.rand(1, 3, 8, 8, generator=_gen(seed))  # smooth colour blobs, so blur and crops show
    return (F.interpolate(small, size=(h, w), mode="bilinear")[0] * 255).round().to(torch.uint8)  # (3, h, w)


@check("local_view")
def check_local_view(fn: Callable) -> str:
    """fn(size, scale) -> a transform: uint8 image (3, H, W) -> one normalised local crop (3, size, size)."""
    cases = [(96, (0.05, 0.4), 200, 240), (48, (0.05, 0.4), 96, 96), (32, (0.1, 0.3), 120, 80)]
    for size, scale, h, w in cases:
        transform = fn(size, scale)
        if not callable(transform):
            raise mistake("return the transform itself (a v2.Compose), not its output")
        core = reference_local_view(size, scale)
        for seed in range(4):
            img = _test_image(seed, h, w)
            torch.manual_seed(seed)
            got = expect_tensor(transform(img.clone()))
            torch.manual_seed(seed)
            want = core(img)
            expect_shape(got, want.shape, ("C", "size", "size"), "crop")
            if got.dtype != torch.float32:
                raise mistake(f"the crop is {got.dtype}; finish with the float conversion and normalisation")
            if torch.equal(got, want):
                continue
            if got.min() >= 0 and got.max() <= 1 and want.min() < 0:
                raise mistake("the crop is not normalised: finish with v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)")
            variants = {
                "scale": _local_variant(size, (0.4, 1.0)), "bilinear": _local_variant(
                    size, scale, v2.InterpolationMode.BILINEAR), "blur1": _local_variant(size, scale, blur=1.0),
                "blur01": _local_variant(size, scale, blur=0.1), "jitter": _local_variant(size, scale, jitter=False),
            }
            wrong = None
            for label, t in variants.items():
                torch.manual_seed(seed)
                if torch.equal(got, t(img)):
                    wrong = label
                    break
            raise mistake({
                "scale": "the crop covers 40-100% of the image, the global crops' scale; use `scale`, 5-40%",
                "bilinear": "the crop is resized bilinearly; DINO resizes bicubically "
                            "(interpolation=v2.InterpolationMode.BICUBIC)",
                "blur1": "the local views are blurred with probability 0.5, not always",
                "blur01": "the local views are blurred with probability 0.5, not 0.1",
                "jitter": "the flip, colour jitter and grayscale steps are missing",
                None: f"a different crop than vitdino_core's for the same seed ({seed}): the steps are "
                      "crop, flip + colour jitter + grayscale, blur (p 0.5), then float and normalise, "
                      "in that order",
            }[wrong])
    return f"the same crops as MultiCropAugmentation's local views for {len(cases)} sizes and 4 seeds"


@reference("stack_views")
def reference_stack_views(crops: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return collate_multicrop([(c, 0) for c in crops])[0]


@check("stack_views")
def check_stack_views(fn: Callable) -> str:
    """fn(crops: B lists of 2 + N views) -> [globals (2B, 3, G, G), locals (N*B, 3, L, L)], view-major."""
    cases = [(3, 4, 8, 4), (2, 2, 6, 3), (4, 1, 8, 4), (1, 3, 6, 2)]
    for seed, (B, n_local, G, L) in enumerate(cases):
        g = _gen(seed)
        crops = [[torch.randn(3, G, G, generator=g) for _ in range(2)]
                 + [torch.randn(3, L, L, generator=g) for _ in range(n_local)] for _ in range(B)]
        got = fn([list(c) for c in crops])
        want = reference_stack_views(crops)
        if not isinstance(got, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in got):
            raise mistake("return a list of tensors: [globals, locals]")
        if len(got) != len(want):
            raise mistake(f"{len(got)} tensors for {2 + n_local} views of two sizes; concatenate the views of "
                          f"the same size: {len(want)} tensor(s)")
        for t, w, what in zip(got, want, ("globals", "locals")):
            expect_shape(t, w.shape, ("views*B", "C", "size", "size"), what)
            if torch.equal(t, w):
                continue
            V = w.shape[0] // B
            image_major = torch.stack([w[v * B + b] for b in range(B) for v in range(V)])
            if torch.equal(t, image_major):
                raise mistake(f"the {what} are stacked image by image; stack them view by view: all images' "
                              "view 0, then all images' view 1, ... (row v*B + b is view v of image b)")
            raise mistake(f"wrong {what}: row v*B + b must be view v of image b")
    return f"view-major batches for {len(cases)} batch sizes"
