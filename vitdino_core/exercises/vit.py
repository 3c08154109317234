"""Checks for the exercises of notebooks 01-04: patches, attention, the ViT, multi-crop views.

Each `check_<name>(fn)` calls the learner's `fn` on several shapes, seeds and modes, compares it
with `reference_<name>` (built from the core's pieces, with the exercise's signature: `pick(name,
mine)` falls back to it), and names the likely mistake from its table of wrong answers when they
differ.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from ..attention import Attention, softmax_attention
from ..multicrop import (
    MultiCropAugmentation,
    collate_multicrop,
    flip_and_color_jitter,
    gaussian_blur,
    normalize,
)
from ..patch_embedding import PatchEmbed, patchify
from ..vision_transformer import Block, Mlp, VisionTransformer, drop_path
from . import (
    check,
    close,
    expect_same,
    expect_shape,
    expect_tensor,
    expect_unchanged,
    first_match,
    gen,
    mistake,
    reference,
)

VIT_EXERCISES = [
    "patchify",
    "patch_embed",  # 01
    "attention",
    "multi_head_attention",  # 02
    "mlp",
    "drop_path",
    "block",
    "prepare_tokens",
    "vit_forward",  # 03
    "local_view",
    "stack_views",
]  # 04

__all__ = ["VIT_EXERCISES"] + [
    f"{prefix}_{name}" for name in VIT_EXERCISES for prefix in ("check", "reference")
]


def _pair(result, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise mistake(f"return two tensors: {what}")
    return expect_tensor(result[0], "the output"), expect_tensor(result[1], "the weights")


# ---- 01 · patch embedding ---------------------------------------------------------------------

PATCHIFY_CASES = [
    (2, 3, 8, 8, 4),
    (1, 3, 12, 8, 4),
    (2, 1, 6, 9, 3),
    (3, 3, 32, 48, 16),
    (1, 2, 5, 5, 5),
]


@reference("patchify")
def reference_patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    return patchify(images, patch)


@check("patchify")
def check_patchify(fn: Callable) -> str:
    """fn(images (B, C, H, W), patch p) -> (B, N, C*p*p), patches in raster order, each
    channel-first."""
    for seed, (B, C, H, W, p) in enumerate(PATCHIFY_CASES):
        x = torch.randn(B, C, H, W, generator=gen(seed))
        h, w, N = H // p, W // p, (H // p) * (W // p)
        got = expect_tensor(fn(x.clone(), p))
        want = reference_patchify(x, p)  # (B, N, C*p*p)
        grid = x.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, p)
        expect_shape(
            got,
            want.shape,
            ("B", "N", "C*p*p"),
            known={
                (
                    B,
                    h,
                    w,
                    C * p * p,
                ): (
                    f"shape {(B, h, w, C * p * p)} keeps the grid (h, w); merge it into one axis of"
                    " N = h*w tokens"
                ),
                (
                    B,
                    C * p * p,
                    N,
                ): "the axes N and C*p*p look swapped: one row per patch, (B, N, C*p*p)",
            },
        )
        expect_same(
            got,
            want,
            {
                (
                    "each patch is flattened channel-last, as (p, p, C); flatten it channel-first,"
                    " as (C, p, p), the layout of a conv weight"
                ): (lambda: grid.permute(0, 2, 4, 3, 5, 1).reshape(B, N, -1)),
                (
                    "the patches are numbered column by column; number them row by row (raster"
                    " order: patch (i, j) is token i*w + j)"
                ): (lambda: grid.permute(0, 4, 2, 1, 3, 5).reshape(B, N, -1)),
                "rows and columns inside each patch are swapped; keep (C, row, column) order": (
                    lambda: grid.permute(0, 2, 4, 1, 5, 3).reshape(B, N, -1)
                ),
                (
                    "a plain reshape mixes pixels of different patches: split H and W into (h, p)"
                    " and (w, p), then move the grid axes next to the batch"
                ): lambda: x.reshape(B, N, -1),
                (
                    "the grid axes are not moved before the reshape: pixels of different patches"
                    " are mixed"
                ): lambda: grid.reshape(B, N, -1),
            },
            f"wrong values for images {(B, C, H, W)}, patch {p}: token i*w + j should be the p x p"
            " square at grid row i, column j, flattened as (C, p, p)",
        )
    return f"matches vitdino_core.patchify on {len(PATCHIFY_CASES)} image and patch sizes"


PATCH_EMBED_CASES = [
    (2, 3, 8, 8, 4, 5),
    (1, 3, 12, 8, 4, 48),
    (2, 1, 9, 6, 3, 9),
    (1, 3, 32, 32, 16, 16),
]


@reference("patch_embed")
def reference_patch_embed(
    images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch: int
):
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
        g = gen(seed)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((B, C, H, W), (D, C, p, p), (D,)))
        inputs = (x.clone(), w.clone(), b.clone())
        with torch.no_grad():
            got = expect_tensor(fn(x, w, b, p))
        expect_unchanged(
            inputs, (x, w, b), "your function changed its inputs in place; leave them as they are"
        )
        with torch.no_grad():
            want = F.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2)  # (B, N, D)
        N = want.shape[1]
        expect_shape(
            got,
            want.shape,
            ("B", "N", "D"),
            known={
                (B, D, N): (
                    "the axes N and D look swapped: one row per patch, (B, N, D)" if N != D else ""
                )
            },
        )
        patches = patchify(x, p)  # (B, N, C*p*p)
        expect_same(
            got,
            want,
            {
                "the bias is missing: add it to every token": lambda: want - b,
                "the bias is added twice": lambda: want + b,
                (
                    "the weight is flattened in another order than the patches: flatten each (C,"
                    " p, p) filter channel-first, like the patches"
                ): lambda: patches @ w.permute(0, 2, 3, 1).reshape(D, -1).T + b,
                (
                    "the flattened weight (D, C*p*p) is used untransposed: the patches multiply"
                    " its transpose"
                ): ((lambda: patches @ w.reshape(D, -1) + b) if D == C * p * p else None),
                (
                    "the patches are flattened channel-last but the weight channel-first: flatten"
                    " both the same way"
                ): lambda: (
                    patches.reshape(B, N, C, p * p).transpose(2, 3).reshape(B, N, -1)
                    @ w.reshape(D, -1).T
                    + b
                ),
            },
            f"wrong tokens for images {(B, C, H, W)}, patch {p}, D={D}: token n is patch n"
            " (flattened channel-first) times the flattened weight, plus the bias",
        )
    return f"equals the strided conv on {len(PATCH_EMBED_CASES)} sizes"


# ---- 02 · attention ---------------------------------------------------------------------------

ATTENTION_CASES = [((2, 3), 5, 5, 8), ((1, 2), 4, 7, 16), ((), 6, 6, 4), ((3,), 1, 9, 32)]


@reference("attention")
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: bool = True):
    return softmax_attention(q, k, v, q.shape[-1] ** -0.5 if scale else 1.0)


@check("attention")
def check_attention(fn: Callable) -> str:
    """fn(q (..., n, d), k (..., N, d), v (..., N, d), scale=True) -> (output (..., n, d), weights
    (..., n, N))."""
    for seed, (lead, n, N, d) in enumerate(ATTENTION_CASES):
        g = gen(seed)
        q, k, v = (2 * torch.randn(*lead, m, d, generator=g) for m in (n, N, N))
        batch = [f"batch{i}" for i in range(len(lead))]
        for scale in (True, False):
            out, attn = _pair(fn(q.clone(), k.clone(), v.clone(), scale=scale), "(output, weights)")
            want_out, want_attn = reference_attention(q, k, v, scale)  # (..., n, d), (..., n, N)
            s = q @ k.transpose(-2, -1)  # (..., n, N)
            r = d**-0.5 if scale else 1.0
            expect_shape(attn, want_attn.shape, [*batch, "queries", "keys"], "weights")
            expect_same(
                attn,
                want_attn,
                {
                    (
                        "softmax over the wrong axis: each row of the weights (one query) must sum"
                        " to 1 over the keys, the last axis"
                    ): (lambda: (s * r).softmax(-2)),
                    (
                        "the scores are scaled after the softmax: divide the scores by sqrt(d)"
                        " before it (the rows of the weights must still sum to 1)"
                    ): ((lambda: s.softmax(-1) * r) if scale else None),
                    "missing 1/sqrt(d): the weights are too peaked; divide the scores by sqrt(d)": (
                        (lambda: s.softmax(-1)) if scale else None
                    ),
                    (
                        "scale=False is ignored: without the scale the scores must not be divided"
                        " by sqrt(d)"
                    ): ((lambda: (s * d**-0.5).softmax(-1)) if not scale else None),
                    "the scores are divided by d; divide them by sqrt(d)": (
                        (lambda: (s / d).softmax(-1)) if scale else None
                    ),
                    "the scores are multiplied by sqrt(d); divide them by it": (
                        (lambda: (s * math.sqrt(d)).softmax(-1)) if scale else None
                    ),
                    "the weights are transposed: one row per query, one column per key": (
                        (lambda: want_attn.transpose(-2, -1)) if n == N else None
                    ),
                    (
                        "the weights are the scores before the softmax: take the softmax over the"
                        " keys"
                    ): lambda: s * r,
                },
                f"wrong weights for q {tuple(q.shape)}, k {tuple(k.shape)}, scale={scale}: softmax"
                " of the scaled scores over the keys",
            )
            expect_shape(out, want_out.shape, [*batch, "queries", "d"], "output")
            expect_same(
                out,
                want_out,
                {
                    (
                        "the weights are transposed before multiplying the values: each query's"
                        " row of weights mixes the values"
                    ): ((lambda: attn.transpose(-2, -1) @ v) if n == N else None),
                    (
                        "the output mixes the values with the scores before the softmax: use the"
                        " weights"
                    ): lambda: (s * r) @ v,
                    "the output is scaled once more: the weights already carry the scale": (
                        (lambda: want_out * r) if scale else None
                    ),
                },
                "right weights, wrong output: the output is the weighted sum of the values, with"
                " the weights you return",
            )
    return (
        f"matches vitdino_core's softmax attention on {len(ATTENTION_CASES)} shapes, scaled and not"
    )


MHA_CASES = [(2, 5, 12, 3), (1, 7, 16, 4), (3, 4, 8, 1), (2, 6, 24, 6)]


@reference("multi_head_attention")
def reference_multi_head_attention(
    x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, num_heads: int
):
    attn = Attention(x.shape[-1], num_heads=num_heads, qkv_bias=qkv.bias is not None)
    attn.qkv, attn.proj = qkv, proj
    return attn(x, return_attention=True)  # (B, N, D), (B, H, N, N)


def _mha_variant(x, qkv, proj, H, split="right", merge="right", use_proj=True, scale=None):
    """Multi-head attention with one typical mistake; returns (output, weights)."""
    B, N, D = x.shape
    d = D // H
    t = qkv(x)  # (B, N, 3D)
    if split == "interleaved":
        q, k, v = t.reshape(B, N, H, 3, d).permute(3, 0, 2, 1, 4)  # wrong: (q/k/v) inside each head
    elif split == "no_transpose":
        q, k, v = (s.reshape(B, H, N, d) for s in t.chunk(3, -1))  # wrong: heads cut across tokens
    else:
        q, k, v = t.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
    w = ((q @ k.transpose(-2, -1)) * (scale if scale is not None else d**-0.5)).softmax(
        -1
    )  # (B, H, N, N)
    o = w @ v  # (B, H, N, d)
    o = o.reshape(B, N, D) if merge == "no_transpose" else o.transpose(1, 2).reshape(B, N, D)
    return (proj(o) if use_proj else o), w


@check("multi_head_attention")
def check_multi_head_attention(fn: Callable) -> str:
    """fn(x (B, N, D), qkv Linear(D, 3D), proj Linear(D, D), num_heads) -> (out (B, N, D), weights
    (B, H, N, N))."""
    for seed, (B, N, D, H) in enumerate(MHA_CASES):
        torch.manual_seed(seed)
        qkv, proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        x = torch.randn(B, N, D, generator=gen(seed))
        with torch.no_grad():
            out, attn = _pair(
                fn(x.clone(), qkv, proj, H), "(output (B, N, D), weights (B, H, N, N))"
            )
            want, want_attn = reference_multi_head_attention(x, qkv, proj, H)
            variant = lambda **kw: lambda: _mha_variant(x, qkv, proj, H, **kw)  # noqa: E731
            expect_shape(
                attn,
                want_attn.shape,
                ("B", "H", "N", "N"),
                "weights",
                known={
                    (
                        B,
                        N,
                        N,
                    ): (
                        "the weights are averaged over the heads: return one (N, N) map per head,"
                        " (B, H, N, N)"
                    ),
                    (B, 1, N, N): (
                        "num_heads is ignored: one (N, N) map per head, (B, H, N, N)"
                        if H > 1
                        else ""
                    ),
                },
            )
            expect_shape(out, want.shape, ("B", "N", "D"), "output")
            expect_same(
                (out, attn),
                (want, want_attn),
                {
                    (
                        "q, k, v and the heads are split in the wrong order: qkv(x)'s 3D features"
                        " are q, then k, then v, each H heads of d"
                    ): variant(split="interleaved"),
                    (
                        "heads split wrongly: (B, N, D) reshaped straight to (B, H, N, d) mixes"
                        " tokens; split D into (H, d) first, then move the head axis next to the"
                        " batch"
                    ): variant(split="no_transpose"),
                    (
                        "heads merged wrongly: move the head axis back next to d before the"
                        " reshape to (B, N, D)"
                    ): variant(merge="no_transpose"),
                    "the output projection is missing: finish with proj": variant(use_proj=False),
                    "each head scales by 1/sqrt(d) with d = D / num_heads, not 1/sqrt(D)": variant(
                        scale=D**-0.5
                    ),
                },
                f"wrong output or weights for x {(B, N, D)}, {H} heads: split qkv(x) into q, k, v"
                " of (B, H, N, d), attend per head, merge the heads, project",
            )
    return f"matches vitdino_core.Attention on {len(MHA_CASES)} shapes and head counts"


# ---- 03 · the Vision Transformer --------------------------------------------------------------

MLP_CASES = [((2, 5), 8, 32), ((3,), 16, 64), ((1, 4), 6, 6)]


@reference("mlp")
def reference_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    mlp = Mlp(fc1.in_features, fc1.out_features, fc2.out_features)
    mlp.fc1, mlp.fc2 = fc1, fc2
    return mlp(x)


@check("mlp")
def check_mlp(fn: Callable) -> str:
    """fn(x (..., D), fc1 Linear(D, hidden), fc2 Linear(hidden, D)) -> (..., D)."""
    for seed, (lead, D, hidden) in enumerate(MLP_CASES):
        torch.manual_seed(seed)
        fc1, fc2 = nn.Linear(D, hidden), nn.Linear(hidden, D)
        x = 2 * torch.randn(*lead, D, generator=gen(seed))
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), fc1, fc2))
            want = reference_mlp(x, fc1, fc2)
            expect_shape(got, want.shape, [*(f"batch{i}" for i in range(len(lead))), "D"])
            expect_same(
                got,
                want,
                {
                    "ReLU between the layers; the ViT's MLP uses GELU": lambda: fc2(F.relu(fc1(x))),
                    "GELU's tanh approximation; use the exact GELU (approximate='none')": lambda: (
                        fc2(F.gelu(fc1(x), approximate="tanh"))
                    ),
                    (
                        "no activation between fc1 and fc2: two linear layers in a row are one"
                        " linear layer"
                    ): lambda: fc2(fc1(x)),
                    "an activation after fc2: the MLP ends with the linear layer fc2": lambda: (
                        F.gelu(fc2(F.gelu(fc1(x))))
                    ),
                    (
                        "the activation is applied to the input, before fc1: it goes between fc1"
                        " and fc2"
                    ): lambda: fc2(fc1(F.gelu(x))),
                },
                "wrong values: fc1, then GELU, then fc2",
            )
    return f"matches vitdino_core.Mlp on {len(MLP_CASES)} shapes"


@reference("drop_path")
def reference_drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return drop_path(x, p, training)


def _sample_factors(got: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """One factor per sample when got = factor * x sample by sample, else None."""
    ratio = (got / x).flatten(1)  # (B, rest)
    if (ratio - ratio[:, :1]).abs().max() > 1e-4:
        return None
    return ratio[:, 0]  # (B,)


def _wrong_drop_paths(x: torch.Tensor, p: float) -> dict[str, Callable]:
    """Typical wrong drop paths, drawing the core's coins; each is run with the seed the learner's
    ran with."""
    B, ones = x.shape[0], (1,) * (x.ndim - 1)
    keep = 1 - p
    coins = lambda shape: (keep + torch.rand(shape)).floor()  # noqa: E731
    return {
        (
            "single values are dropped, like dropout; drop whole samples: one coin per sample, a"
            f" mask of shape (B, {', '.join(['1'] * (x.ndim - 1))})"
        ): (lambda: x * coins(x.shape) / keep),
        (
            f"the kept samples are not rescaled: divide them by 1 - p = {keep:g} so the expected"
            " output stays x"
        ): lambda: x * coins((B, *ones)),
        "the kept samples are multiplied by 1 - p; divide by it": lambda: (
            x * coins((B, *ones)) * keep
        ),
        (
            f"drop probability and keep probability swapped: with p = {p} each sample must be"
            " dropped with probability p"
        ): (lambda: x * (p + torch.rand(B, *ones)).floor() / p),
    }


@check("drop_path")
def check_drop_path(fn: Callable) -> str:
    """fn(x (B, ...), p, training) -> x with whole samples zeroed (probability p), the rest scaled
    by 1/(1-p)."""
    x = torch.randn(8, 4, 3, generator=gen(0)) + 3  # (B, N, D), no zeros
    for training in (False, True):
        for p in (0.0, 0.5):
            before = x.clone()
            got = expect_tensor(fn(x, p, training))
            expect_unchanged(
                [before],
                [x],
                f"your function changes its input in place (training={training}, "
                f"p={p}); return a new tensor",
            )
            if (p == 0.0 or not training) and not close(got, x):
                raise mistake(
                    "drops in eval mode: with training=False return x unchanged, whatever p is"
                    if not training
                    else "p = 0 must keep every sample unchanged"
                )
    for seed, (p, shape) in enumerate(
        ((0.25, (4000, 3, 2)), (0.75, (4000, 5)), (0.4, (4000, 2, 2, 2)))
    ):
        x = torch.rand(*shape, generator=gen(seed + 1)) + 1  # (B, ...), no zeros
        torch.manual_seed(seed)
        got = expect_tensor(fn(x.clone(), p, True))
        expect_shape(got, x.shape, ["B", *(f"axis{i}" for i in range(1, x.ndim))])
        factor = _sample_factors(
            got, x
        )  # (B,) or None: compare what it does, not which coins it drew
        kept = factor != 0 if factor is not None else None
        if (
            factor is not None
            and abs(1 - kept.float().mean().item() - p) < 0.04
            and (factor[kept] - 1 / (1 - p)).abs().max() < 1e-4
        ):
            continue
        wrong = {
            label: lambda f=f: (torch.manual_seed(seed), f())[1]
            for label, f in _wrong_drop_paths(x, p).items()
        }
        label = first_match(got, wrong)
        if label:
            raise mistake(label)
        if factor is None:
            raise mistake(
                "single values are dropped, like dropout; drop whole samples: one coin per sample"
            )
        dropped, scale = 1 - kept.float().mean().item(), factor[kept].mean().item()
        if abs(dropped - p) >= 0.04:
            raise mistake(
                f"{dropped:.0%} of the samples were dropped with p = {p}; drop each with"
                " probability p"
            )
        raise mistake(
            f"kept samples are scaled by {scale:.4g}; it should be 1 / (1 - p) = {1 / (1 - p):.4g}"
        )
    return "eval mode, p = 0, whole samples, the drop rate and the 1/(1-p) scale all match"


def _block(D: int, H: int, seed: int) -> Block:
    torch.manual_seed(seed)
    block = Block(
        D, H, mlp_ratio=2.0, qkv_bias=True, norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6)
    ).eval()
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
def reference_block(
    x: torch.Tensor, block: nn.Module, drop_prob: float = 0.0, training: bool = False
):
    x = x + drop_path(block.attn(block.norm1(x)), drop_prob, training)  # (B, N, D)
    return x + drop_path(block.mlp(block.norm2(x)), drop_prob, training)  # (B, N, D)


def _branch_factors(got, x, block, p) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per sample, the factors (a, m) with got = y + m mlp(norm2(y)), y = x + a attn(norm1(x)), each
    factor one of 0, 1, 1/(1-p), 1-p; None when some sample fits none of them."""
    options = [0.0, 1.0, 1 / (1 - p), 1 - p]
    found_a, found_m = torch.full((x.shape[0],), -1.0), torch.full((x.shape[0],), -1.0)
    branch = block.attn(block.norm1(x))  # (B, N, D)
    for a in options:
        y = x + a * branch
        out_mlp = block.mlp(block.norm2(y))
        for m in options:
            cand = y + m * out_mlp  # (B, N, D)
            for b in range(x.shape[0]):
                if found_a[b] < 0 and close(got[b], cand[b]):
                    found_a[b], found_m[b] = a, m
    return None if (found_a < 0).any() else (found_a, found_m)


BLOCK_CASES = [(2, 5, 12, 3), (1, 9, 16, 2), (3, 4, 8, 1)]


@check("block")
def check_block(fn: Callable) -> str:
    """fn(x (B, N, D), block with norm1, attn, norm2, mlp, drop_prob, training) -> (B, N, D),
    pre-norm."""
    for seed, (B, N, D, H) in enumerate(BLOCK_CASES):
        block = _block(D, H, seed)
        x = torch.randn(B, N, D, generator=gen(seed))
        n1, n2, attn, mlp = block.norm1, block.norm2, block.attn, block.mlp
        with torch.no_grad():
            before = x.clone()
            got = expect_tensor(fn(x, block, 0.0, False))
            expect_unchanged(
                [before], [x], "your function changes its input x in place; return a new tensor"
            )
            want = reference_block(x, block)  # pre-norm
            expect_shape(got, want.shape, ("B", "N", "D"))
            expect_same(
                got,
                want,
                {
                    (
                        "post-norm: the norm is applied after the addition; normalise each"
                        " branch's input instead"
                    ): lambda: n2(n1(x + attn(x)) + mlp(n1(x + attn(x)))),
                    "the residual connections are missing: add each branch's output to its input": (
                        lambda: mlp(n2(attn(n1(x))))
                    ),
                    (
                        "the MLP branch reads the block's input; it must read x after the"
                        " attention step"
                    ): lambda: x + attn(n1(x)) + mlp(n2(x)),
                    "norm1 and norm2 are swapped: norm1 goes before attn, norm2 before mlp": (
                        lambda: (x + attn(n2(x))) + mlp(n1(x + attn(n2(x))))
                    ),
                    (
                        "the residual path carries the normalised x; keep x itself on it,"
                        " normalise only the branch's input"
                    ): lambda: _normed_residual(x, block),
                    (
                        "the MLP branch is missing: after the attention step, add the MLP of the"
                        " normalised tokens"
                    ): lambda: x + attn(n1(x)),
                    "the attention branch is missing: add attn of the normalised tokens first": (
                        lambda: x + mlp(n2(x))
                    ),
                },
                "wrong values: first add attn of norm1 of the tokens, then add mlp of norm2 of the"
                " result",
            )
    block, x = (
        _block(8, 2, 7),
        torch.randn(64, 3, 8, generator=gen(7)),
    )  # many samples: both coins show
    with torch.no_grad():
        for training in (False, True):
            before = x.clone()
            torch.manual_seed(1)
            got = expect_tensor(fn(x, block, 0.5, training))
            expect_unchanged(
                [before],
                [x],
                f"your function changes its input x in place (training={training}); "
                "return a new tensor",
            )
            expect_shape(got, x.shape, ("B", "N", "D"))
            if not training:
                expect_same(
                    got,
                    block(x),
                    {},
                    "with training=False drop path must do nothing, whatever drop_prob is",
                )
                continue
            factors = _branch_factors(got, x, block, 0.5)
            if factors is None:
                torch.manual_seed(1)
                whole = drop_path(reference_block(x, block) - x, 0.5, True) + x
                torch.manual_seed(1)
                outside = drop_path(reference_block(x, block), 0.5, True)
                raise mistake(
                    {
                        "x": (
                            "drop path is applied to the block's output, residual included: only"
                            " each branch goes through drop path, before it is added"
                        ),
                        "sum": (
                            "one coin for both branches together: each branch goes through drop"
                            " path on its own, before it is added"
                        ),
                    }.get(
                        first_match(got, {"x": outside, "sum": whole}),
                        "with drop_prob > 0 in training, each branch goes through drop path before"
                        " it is added",
                    )
                )
            a, m = factors
            if ((a == 1) & (m == 1)).all():
                raise mistake(
                    "drop_prob is ignored in training: each branch goes through drop path before it"
                    " is added"
                )
            if ((a == 1) | (m == 1)).any():
                raise mistake(
                    "one branch skips drop path: both the attention and the MLP branch go"
                    " through it"
                )
            if ((a != 0) & (a != 2)).any() or ((m != 0) & (m != 2)).any():
                raise mistake(
                    "the kept branches are not scaled by 1 / (1 - drop_prob): use drop path as in"
                    " the drop_path exercise"
                )
            if torch.equal(a, m):
                raise mistake("both branches share one coin per sample: each branch draws its own")
            if not ((a == 0).any() and (a == 2).any() and (m == 0).any() and (m == 2).any()):
                raise mistake(
                    "drop path never drops (or always drops) a branch with drop_prob = 0.5"
                )
    return (
        f"matches vitdino_core.Block on {len(BLOCK_CASES)} shapes; drop path on each branch in"
        " training only"
    )


def _vit(
    seed: int, img: int = 32, patch: int = 8, D: int = 24, depth: int = 2, H: int = 2
) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=D, depth=depth, num_heads=H
    ).eval()
    with torch.no_grad():  # large, random tokens: a missing or misplaced one shows
        vit.cls_token.normal_(0, 1)
        vit.pos_embed.normal_(0, 1)
        vit.norm.weight.normal_(1.0, 0.5)
    return vit


@reference("prepare_tokens")
def reference_prepare_tokens(
    images: torch.Tensor, patch_embed: nn.Module, cls_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    x = patch_embed(images)  # (B, N, D)
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, D)
    return x + pos_embed  # (B, N+1, D)


PREPARE_CASES = [(1, 32, 8, 24), (3, 32, 8, 24), (2, 36, 12, 16)]


@check("prepare_tokens")
def check_prepare_tokens(fn: Callable) -> str:
    """fn(images (B, 3, H, W), patch_embed, cls_token (1, 1, D), pos_embed (1, N+1, D))
    -> (B, N+1, D)."""
    for seed, (B, img, p, D) in enumerate(PREPARE_CASES):
        vit = _vit(seed, img, p, D, depth=1)
        x = torch.randn(B, 3, img, img, generator=gen(seed))
        N = (img // p) ** 2
        with torch.no_grad():
            want = reference_prepare_tokens(x, vit.patch_embed, vit.cls_token, vit.pos_embed)
            before = [vit.cls_token.clone(), vit.pos_embed.clone()]
            try:
                got = expect_tensor(fn(x.clone(), vit.patch_embed, vit.cls_token, vit.pos_embed))
            except RuntimeError as e:
                if B > 1 and "ize" in str(e):
                    raise mistake(
                        f"works for one image, not for a batch of {B}: the class token (1, 1, D)"
                        " must be repeated (expanded) over the batch before the concatenation"
                    ) from None
                raise
            expect_unchanged(
                before,
                [vit.cls_token, vit.pos_embed],
                "cls_token or pos_embed was changed in place; they are the model's parameters",
            )
            expect_shape(
                got,
                want.shape,
                ("B", "N+1", "D"),
                known={
                    (B, N, D): "the class token is missing: put it in front of the N patch tokens"
                },
            )
            tokens, cls = vit.patch_embed(x), vit.cls_token.expand(B, -1, -1)
            expect_same(
                got,
                want,
                {
                    (
                        "the position embeddings are not added: add pos_embed (1, N+1, D) to every"
                        " token"
                    ): lambda: torch.cat([cls, tokens], 1),
                    (
                        "the class token got no position embedding: pos_embed has N+1 rows and row"
                        " 0 is the class token's; concatenate first, then add"
                    ): lambda: torch.cat([cls, tokens + vit.pos_embed[:, 1:]], 1),
                    "the class token is at the end; put it first, as token 0": lambda: (
                        torch.cat([tokens, cls], 1) + vit.pos_embed
                    ),
                    (
                        "the position embeddings are shifted by one: row 0 belongs to the class"
                        " token, rows 1..N to the patches"
                    ): lambda: torch.cat([cls, tokens + vit.pos_embed[:, :N]], 1),
                },
                "wrong tokens: the class token first, then the patch tokens, plus the position"
                " embeddings",
            )
    return f"matches VisionTransformer.prepare_tokens on {len(PREPARE_CASES)} sizes"


@reference("vit_forward")
def reference_vit_forward(images: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    x = reference_prepare_tokens(
        images, vit.patch_embed, vit.cls_token, vit.pos_embed
    )  # (B, N+1, D)
    for blk in vit.blocks:
        x = blk(x)  # (B, N+1, D)
    return vit.norm(x)[:, 0]  # (B, D)


VIT_CASES = [(2, 32, 8, 24, 2), (1, 36, 12, 16, 1), (3, 32, 8, 24, 3)]


@check("vit_forward")
def check_vit_forward(fn: Callable) -> str:
    """fn(images (B, 3, H, W), vit) -> the class token after the final norm, (B, D)."""
    for seed, (B, img, p, D, depth) in enumerate(VIT_CASES):
        vit = _vit(seed, img, p, D, depth)
        x = torch.randn(B, 3, img, img, generator=gen(seed))
        T = (img // p) ** 2 + 1
        with torch.no_grad():
            got = expect_tensor(fn(x.clone(), vit))
            want = reference_vit_forward(x, vit)  # (B, D)
            expect_shape(
                got,
                want.shape,
                ("B", "D"),
                known={
                    (
                        B,
                        T,
                        D,
                    ): (
                        f"returns all {T} tokens; the image's feature is the class token alone,"
                        " (B, D)"
                    )
                },
            )
            z = vit.prepare_tokens(x)
            for blk in vit.blocks:
                z = blk(z)  # (B, N+1, D)
            expect_same(
                got,
                want,
                {
                    "the final norm is missing: apply vit.norm before taking the class token": (
                        lambda: z[:, 0]
                    ),
                    "this averages all tokens; the image's feature is the class token, token 0": (
                        lambda: vit.norm(z).mean(1)
                    ),
                    (
                        "this averages the patch tokens; the image's feature is the class token,"
                        " token 0"
                    ): lambda: vit.norm(z)[:, 1:].mean(1),
                    "this takes the last token; the class token is token 0": lambda: vit.norm(z)[
                        :, -1
                    ],
                    (
                        "the blocks are not applied: run the tokens through every block in"
                        " vit.blocks"
                    ): lambda: vit.norm(vit.prepare_tokens(x))[:, 0],
                    "only the last block is applied: run the tokens through every block in turn": (
                        (lambda: vit.norm(vit.blocks[-1](vit.prepare_tokens(x)))[:, 0])
                        if depth > 1
                        else None
                    ),
                },
                "wrong feature: tokens, then every block, then the final norm, then the class"
                " token",
            )
    return f"matches VisionTransformer.forward on {len(VIT_CASES)} models"


# ---- 04 · multi-crop --------------------------------------------------------------------------


@reference("local_view")
def reference_local_view(size: int, scale: tuple[float, float]) -> v2.Compose:
    return MultiCropAugmentation(
        local_crops_scale=scale, local_crops_number=1, local_crops_size=size
    ).local_transfo


def _local_variant(
    size, scale, interpolation=v2.InterpolationMode.BICUBIC, blur=0.5, jitter=True, norm=True
):
    steps = [v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True)]
    steps += [flip_and_color_jitter()] if jitter else []
    steps += [gaussian_blur(blur)] if blur else []
    steps += [normalize()] if norm else [v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def _test_image(seed: int, h: int, w: int) -> torch.Tensor:
    small = torch.rand(
        1, 3, 8, 8, generator=gen(seed)
    )  # smooth colour blobs, so blur and crops show
    return (
        (F.interpolate(small, size=(h, w), mode="bilinear")[0] * 255).round().to(torch.uint8)
    )  # (3, h, w)


LOCAL_CASES = [(40, (0.05, 0.4), 100, 120), (32, (0.05, 0.4), 64, 64), (24, (0.1, 0.3), 80, 60)]


@check("local_view")
def check_local_view(fn: Callable) -> str:
    """fn(size, scale) -> a transform: uint8 image (3, H, W) -> one normalised local crop (3, size,
    size)."""
    for size, scale, h, w in LOCAL_CASES:
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
                raise mistake(
                    f"the crop is {got.dtype}; finish with the float conversion and normalisation"
                )
            same_seed = lambda t: lambda: (torch.manual_seed(seed), t(img))[1]  # noqa: E731
            expect_same(
                got,
                want,
                {
                    "the crop covers 40-100% of the image, the global crops' scale; use `scale`": (
                        same_seed(_local_variant(size, (0.4, 1.0)))
                    ),
                    "the crop is resized bilinearly; DINO resizes bicubically": same_seed(
                        _local_variant(size, scale, v2.InterpolationMode.BILINEAR)
                    ),
                    "the local views are blurred with probability 0.5, not always": same_seed(
                        _local_variant(size, scale, blur=1.0)
                    ),
                    "the local views are blurred with probability 0.5, not 0.1": same_seed(
                        _local_variant(size, scale, blur=0.1)
                    ),
                    "the blur is missing: the local views are blurred with probability 0.5": (
                        same_seed(_local_variant(size, scale, blur=0))
                    ),
                    "the flip, colour jitter and grayscale steps are missing": same_seed(
                        _local_variant(size, scale, jitter=False)
                    ),
                    "the crop is not normalised: finish with the ImageNet mean and std": same_seed(
                        _local_variant(size, scale, norm=False)
                    ),
                },
                f"a different crop than vitdino_core's for the same seed ({seed}): the steps are"
                " crop, flip + colour jitter + grayscale, blur (p 0.5), then float and normalise,"
                " in that order",
            )
    return (
        f"the same crops as MultiCropAugmentation's local views for {len(LOCAL_CASES)} sizes and 4"
        " seeds"
    )


@reference("stack_views")
def reference_stack_views(crops: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return collate_multicrop([(c, 0) for c in crops])[0]


STACK_CASES = [(3, 4, 8, 4), (2, 2, 6, 3), (4, 1, 8, 4), (1, 3, 6, 2)]


@check("stack_views")
def check_stack_views(fn: Callable) -> str:
    """fn(crops: B lists of 2 + N views) -> [globals (2B, 3, G, G), locals (N*B, 3, L, L)],
    view-major."""
    for seed, (B, n_local, G, L) in enumerate(STACK_CASES):
        g = gen(seed)
        crops = [
            [torch.randn(3, G, G, generator=g) for _ in range(2)]
            + [torch.randn(3, L, L, generator=g) for _ in range(n_local)]
            for _ in range(B)
        ]
        got = fn([list(c) for c in crops])
        want = reference_stack_views(crops)
        if not isinstance(got, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in got):
            raise mistake("return a list of tensors: [globals, locals]")
        if len(got) != len(want):
            raise mistake(
                f"{len(got)} tensors for {2 + n_local} views of two sizes; concatenate the views of"
                f" the same size: {len(want)} tensor(s)"
            )
        if tuple(got[0].shape[-2:]) == (L, L) and G != L:
            raise mistake("the local views come first: return [globals, locals]")
        for t, w, what in zip(got, want, ("globals", "locals")):
            V = w.shape[0] // B
            size = w.shape[-1]
            expect_shape(
                t,
                w.shape,
                ("views*B", "C", "size", "size"),
                what,
                known={
                    (
                        V,
                        B,
                        3,
                        size,
                        size,
                    ): (
                        f"the {what} are stacked into a new axis (views, B, ...): concatenate them "
                        "along the batch axis instead"
                    ),
                    (
                        B,
                        V,
                        3,
                        size,
                        size,
                    ): (
                        f"the {what} are stacked image by image into (B, views, ...): concatenate "
                        "them view by view along the batch axis"
                    ),
                },
            )
            expect_same(
                t,
                w,
                {
                    (
                        f"the {what} are stacked image by image; stack them view by view: all"
                        " images' view 0, then all images' view 1, ... (row v*B + b is view v of"
                        " image b)"
                    ): lambda: torch.stack([w[v * B + b] for b in range(B) for v in range(V)]),
                },
                f"wrong {what}: row v*B + b must be view v of image b",
            )
    return f"view-major batches for {len(STACK_CASES)} batch sizes"
