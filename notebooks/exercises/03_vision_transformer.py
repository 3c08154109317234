# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The Vision Transformer
#
# *Exercise version.* Write the functions marked `NotImplementedError`; each check cell
# tells you what is wrong or that it passed. The complete notebook is `../03_vision_transformer.py`.
# (Made by `make exercises` from it; edits here are yours, `make exercises` overwrites them.)
#
# We have the two pieces that touch the data: the patch embedding (01) turns an image into tokens,
# and self-attention (02) lets the tokens talk to each other. A Vision Transformer (Dosovitskiy et
# al., 2021) is little more than these two, plus an MLP, layer norms and residual connections,
# stacked twelve times, with one extra **class token** whose final state is the feature of the whole
# image. DINO uses exactly this network, unchanged, as both its student and its teacher.
#
# ```
# image (B, 3, H, W)
#   │  patch_embed.proj: conv p x p, stride p                       (01)
#   ▼
# patch tokens (B, N, D) ──► prepend cls_token, add pos_embed ──► (B, N+1, D)
#   │
#   │  blocks.0 … blocks.11, each:   x = x + attn(norm1(x))           (02 + this notebook)
#   │                                x = x + mlp(norm2(x))
#   ▼
# norm ──► take token 0 (the class token) ──► image feature (B, D) ──► DINO head (05)
# ```
#
# In this notebook we
# 1. build the **MLP** and the **pre-norm block** by hand on top of `vitdino_core.Attention`, and
#    check them against `vitdino_core.Block`;
# 2. add **stochastic depth** (drop path) and its linear rule over depth;
# 3. add the **class token** and learned **position embeddings**, and see why positions are needed
#    at all;
# 4. assemble a whole ViT by hand, with the official parameter names, and check it against
#    `vitdino_core.VisionTransformer`;
# 5. count parameters of ViT-Ti/S/B (official DINO numbers, and our ViT-B/12 with ~86M) and see
#    where they live;
# 6. look at what position embeddings learn, and run one network at several image sizes by
#    interpolating them.

# %%
import math
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdino_core import (
    Attention,
    Block,
    DropPath,
    Mlp,
    PatchEmbed,
    VisionTransformer,
    vit_base,
    vit_small,
    vit_tiny,
)
from vitdino_core.data import eval_transform
from vitdino_core.exercises import (
    assert_checked,
    check_block,
    check_drop_path,
    check_mlp,
    check_prepare_tokens,
    check_vit_forward,
    pick,
)
from vitdino_core.notebook import load_course_backbone, photo, save_figure, setup

setup(seed=0)  # seeds every RNG, picks the device, prints what it chose

# %% [markdown]
# ## 1. The MLP: the same small network on every token
#
# After attention has mixed information *across* tokens, each token is processed *on its own* by a
# two-layer perceptron, the same weights for every token:
#
# $$\mathrm{MLP}(x) = W_2\, \mathrm{GELU}(W_1 x + b_1) + b_2, \qquad
#   W_1 \in \mathbb{R}^{4D \times D},\; W_2 \in \mathbb{R}^{D \times 4D}.$$
#
# The hidden layer is 4 times wider than the token (`mlp_ratio = 4`). The non-linearity is the GELU,
# $\mathrm{GELU}(x) = x\,\Phi(x)$ with $\Phi$ the standard normal CDF: a smooth ReLU that lets a
# little negative signal through.

# %%
xs = torch.linspace(-4, 4, 200)  # (200,)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(xs, F.relu(xs), "--", label="ReLU")
ax.plot(xs, F.gelu(xs), label=r"GELU $= x\,\Phi(x)$")
ax.set(xlabel="x", ylabel="activation", title="GELU, the MLP's non-linearity")
ax.axhline(0, color="gray", lw=0.5)
ax.legend()
plt.show()


# %% [markdown]
# ### Exercise `mlp` · difficulty 1 · 5 min
#
# Write `mlp_by_hand(x, fc1, fc2)`:
#
# * **input** tokens `x` of shape $(\dots, D)$ (any leading axes), and the two layers
#   `fc1 = nn.Linear(D, hidden)` and `fc2 = nn.Linear(hidden, D)`;
# * **output** $\mathrm{MLP}(x)$ as in the formula above, shape $(\dots, D)$.
#
# <details><summary>Hint</summary>
#
# An `nn.Linear` is called like a function: `fc1(x)`. The GELU is `F.gelu`, the exact one (not its
# tanh approximation); nothing comes after `fc2`.
#
# </details>


# %%
def mlp_by_hand(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """(..., D) -> (..., D): fc1, GELU, fc2, applied to each token on its own."""
    raise NotImplementedError("fc1, then the GELU, then fc2")


# %% tags=["raises-exception"]
check_mlp(mlp_by_hand)

# %% [markdown]
# A module with the core's parameter names (`fc1`, `fc2`) holds the weights; its `forward` is
# `mlp_fn`, your function once its check passes.

# %%
mlp_fn = pick("mlp", mlp_by_hand)


class MyMlp(nn.Module):
    """fc1 (D -> hidden), GELU, fc2 (hidden -> D): applied to each token independently."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlp_fn(x, self.fc1, self.fc2)  # (B, N, D)


D, heads = 96, 3
my_mlp = MyMlp(D, 4 * D)
core_mlp = Mlp(D, 4 * D)
# same names (fc1, fc2), so the weights copy over exactly
my_mlp.load_state_dict(core_mlp.state_dict())
x = torch.randn(2, 65, D)  # (B, N+1, D): 2 images, 64 patches + class token, D = 96
torch.testing.assert_close(my_mlp(x), core_mlp(x))  # (2, 65, 96)

# "on every token independently": the MLP of token 5 does not depend on any other token
torch.testing.assert_close(my_mlp(x)[:, 5], my_mlp(x[:, 5:6])[:, 0])
print(
    "MyMlp == vitdino_core.Mlp;",
    sum(p.numel() for p in my_mlp.parameters()),
    "parameters = 8 D^2 + 5 D =",
    8 * D**2 + 5 * D,
)


# %% [markdown]
# ## 2. Stochastic depth (drop path)
#
# Every block holds two **residual branches**, $x + f(x)$ where $f$ is attention or the MLP.
# Stochastic depth (Huang et al., 2016), used by DeiT and DINO, trains a deep network as an ensemble
# of shallower ones: during training, for each *sample* of the batch, each branch is dropped with
# probability $p$,
#
# $$x + \frac{m}{1-p}\, f(x), \qquad m \sim \mathrm{Bernoulli}(1-p) \text{ (one coin per sample)},$$
#
# and the kept branches are scaled by $1/(1-p)$ so that the *expected* output is unchanged. At
# evaluation time nothing is dropped. It is not dropout: dropout zeroes single activations, drop
# path removes a whole branch for a whole image, so that sample sees a network with one block fewer.
# (Training goes one step further: the trainer builds its model with `fast=True`, and a fast
# block does not compute a dropped branch at all: the same result, less work; notebook 09,
# appendix A.4.)
#
# ### Exercise `drop_path` · difficulty 2 · 10 min
#
# Write `drop_path_by_hand(x, p, training)`:
#
# * **input** a branch's output `x` of shape $(B, \dots)$ (any number of axes after the batch), the
#   drop probability `p` and whether the model is `training`;
# * **output** a tensor of the same shape: `x` itself when not training or when $p = 0$; otherwise
#   each sample is either all zeros (probability $p$) or `x / (1 - p)`.
#
# Draw the coins as the official DINO code does, so that the same seed drops the same samples as
# `vitdino_core`: one uniform number $u$ per sample from `torch.rand`, and the sample is kept where
# $\lfloor (1 - p) + u \rfloor = 1$.
#
# <details><summary>Hint</summary>
#
# `torch.rand((B,) + (1,) * (x.ndim - 1))` gives one number per sample, shaped $(B, 1, \dots, 1)$
# so that it broadcasts over the rest of `x`; `.floor()` turns $1 - p + u$ into 0 or 1.
#
# </details>


# %%
def drop_path_by_hand(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero the whole branch x for a random subset of samples (probability p), rescale the rest."""
    raise NotImplementedError("x if eval or p = 0; else drop whole samples, rescale the rest")


# %% tags=["raises-exception"]
check_drop_path(drop_path_by_hand)

# %%
drop_path_fn = pick("drop_path", drop_path_by_hand)
branch = torch.ones(8, 4, 2)  # (B=8, N=4, D=2): a branch output of all ones
torch.manual_seed(2)
out = drop_path_fn(branch, p=0.25, training=True)  # (8, 4, 2)
print("per-sample value after drop path (p = 0.25):", [round(v, 4) for v in out[:, 0, 0].tolist()])
print("   dropped samples are 0, kept ones are 1 / 0.75 =", round(1 / 0.75, 4))

big = drop_path_fn(torch.ones(20000, 1, 1), p=0.25, training=True)  # (20000, 1, 1)
print(
    f"mean over 20,000 samples: {big.mean():.3f} (expectation 1: the rescaling keeps it unbiased)"
)

# the core draws its coins as DINO does, floor(keep_prob + U); your coins may come another way
# (torch.bernoulli, a comparison with rand): then the same seed gives other samples, the same rule
core_dp = DropPath(0.25).train()
torch.manual_seed(2)
mine = drop_path_fn(branch, 0.25, training=True)
torch.manual_seed(2)
core = core_dp(branch)  # (8, 4, 2)
same_coins = torch.equal(mine, core)
values = torch.cat([mine.unique(), core.unique()])  # each sample: dropped (0) or kept, x / 0.75
assert all(min(abs(v), abs(v - 1 / 0.75)) < 1e-5 for v in values.tolist())
torch.testing.assert_close(DropPath(0.25).eval()(branch), branch)  # evaluation: identity
print(
    "vitdino_core.DropPath: the same rule (0 or 1/keep_prob per sample; identity in eval)"
    + (", and the same coins from the same seed" if same_coins else "; your coins differ from it")
)


# %% [markdown]
# ## 3. The pre-norm Transformer block
#
# The ViT paper's equations (2) and (3): a LayerNorm *before* each branch, the branch's output added
# to the residual stream,
#
# $$z'_\ell = z_{\ell-1} + \mathrm{MSA}\big(\mathrm{LN}(z_{\ell-1})\big), \qquad
#   z_\ell = z'_\ell + \mathrm{MLP}\big(\mathrm{LN}(z'_\ell)\big).$$
#
# This is **pre-norm**. The original Transformer normalised *after* the addition (post-norm);
# putting the norm inside the branch leaves an untouched identity path from the input to the output
# of the whole network, which makes deep stacks train stably without a careful learning-rate
# warm-up. The norms are LayerNorms over the $D$ features of each token ($\epsilon = 10^{-6}$ as in
# DINO and timm), and attention is the multi-head `Attention` of notebook 02, imported from the core
# package.
#
# ### Exercise `block` · difficulty 2 · 10 min
#
# Write `block_by_hand(x, block, drop_prob, training)`:
#
# * **input** tokens `x` of shape $(B, N, D)$; a `block` that holds the four pieces `block.norm1`,
#   `block.attn`, `block.norm2`, `block.mlp` (call each like a function; `block.attn(t)` returns
#   $(B, N, D)$); the drop-path probability and whether the model is training;
# * **output** the block's output $(B, N, D)$, pre-norm as in the equations above, with each
#   branch passed through `drop_path_fn(branch, drop_prob, training)` before it is added.
#
# <details><summary>Hint</summary>
#
# Two lines, each of the form `x = x + drop_path_fn(<branch>(<norm>(x)), drop_prob, training)`.
# The second line reads the `x` that the first one produced.
#
# </details>


# %%
def block_by_hand(
    x: torch.Tensor, block: nn.Module, drop_prob: float = 0.0, training: bool = False
) -> torch.Tensor:
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch under drop path."""
    raise NotImplementedError("the attention step, then the MLP step; pre-norm, with drop path")


# %% tags=["raises-exception"]
check_block(block_by_hand)

# %%
block_fn = pick("block", block_by_hand)


class MyBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)), each branch under stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_prob: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)  # notebook 02
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MyMlp(dim, int(dim * mlp_ratio))
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_fn(x, self, self.drop_prob, self.training)  # (B, N, D)


core_block = Block(
    D,
    heads,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_path=0.2,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
)
my_block = MyBlock(D, heads, drop_prob=0.2)
print("parameter names:", [k for k in core_block.state_dict()])
my_block.load_state_dict(core_block.state_dict())  # strict: every name matches

my_block.eval()
core_block.eval()
torch.testing.assert_close(my_block(x), core_block(x))  # (2, 65, 96)

my_block.train()  # with drop path on: the same coins from the same seed
core_block.train()
torch.manual_seed(3)
mine = my_block(x)
torch.manual_seed(3)
torch.testing.assert_close(mine, core_block(x))
print("MyBlock == vitdino_core.Block, in eval mode and in train mode (drop path p = 0.2)")

# %% [markdown]
# DINO gives deeper blocks a higher drop probability: the **linear rule** of stochastic depth,
# $p_\ell = p_{\max} \cdot \ell / (L - 1)$ for block $\ell = 0, \dots, L-1$, so the first block is
# never dropped and the last is dropped with $p_{\max}$ (`drop_path_rate`, 0.1 in DINO). We read the
# probabilities back from a core ViT-S/16 built on the `meta` device (shapes only, no memory, no
# time).

# %%
depth, rate = 12, 0.1
dpr_by_hand = [rate * i / (depth - 1) for i in range(depth)]  # linear rule

with torch.device("meta"):
    vits = vit_small(patch_size=16, drop_path_rate=rate)
dpr_core = [
    blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0 for blk in vits.blocks
]
np.testing.assert_allclose(dpr_core, dpr_by_hand)

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(range(depth), dpr_core, color="tab:purple")
ax.set(
    xlabel="block index",
    ylabel="drop probability",
    xticks=range(depth),
    title=f"Stochastic depth, linear rule (drop_path_rate = {rate})",
)
plt.show()
kept = 2 * sum(1 - p for p in dpr_core)
print(f"on average a training sample goes through {kept:.2f} of the {2 * depth} residual branches")

# %% [markdown]
# ## 4. Tokens: the class token and learned positions
#
# The input to the first block is the ViT paper's equation (1):
#
# $$z_0 = [\,x_\text{class};\; x_p^1 E;\; x_p^2 E;\; \dots;\; x_p^N E\,] + E_{pos},
#   \qquad E_{pos} \in \mathbb{R}^{(N+1) \times D}.$$
#
# * $x_p^i E$ are the $N$ patch tokens from notebook 01 (`patch_embed`).
# * $x_\text{class}$ (`cls_token`) is one learned vector, the same for every image, put in front of
#   the sequence. It owns no pixels: it can only gather information by attending to the patches, and
#   after the last block its state, normalised, *is* the image's feature. DINO trains exactly this
#   vector.
# * $E_{pos}$ (`pos_embed`) is one learned vector per position, added to the token at that position,
#   the class token's slot included. Both start as small random numbers (truncated normal, std
#   0.02).
#
# ### Exercise `prepare_tokens` · difficulty 1 · 10 min
#
# Write `prepare_tokens_by_hand(images, patch_embed, cls_token, pos_embed)`, equation (1):
#
# * **input** `images` $(B, 3, H, W)$, the `patch_embed` module (notebook 01; it returns
#   $(B, N, D)$), `cls_token` of shape $(1, 1, D)$ and `pos_embed` of shape $(1, N+1, D)$;
# * **output** $z_0$ of shape $(B, N+1, D)$: the class token first, then the $N$ patch tokens, each
#   plus its position embedding.
#
# <details><summary>Hint</summary>
#
# `cls_token.expand(B, -1, -1)` gives one copy per image, $(B, 1, D)$, without copying memory;
# `torch.cat([...], dim=1)` puts it in front of the patch tokens. Add `pos_embed` after that, so
# that row 0 of it lands on the class token.
#
# </details>


# %%
def prepare_tokens_by_hand(
    images: torch.Tensor, patch_embed: nn.Module, cls_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N+1, D): [class token; patch tokens] + position embeddings."""
    raise NotImplementedError("[cls_token; patch tokens] + pos_embed, shape (B, N+1, D)")


# %% tags=["raises-exception"]
check_prepare_tokens(prepare_tokens_by_hand)

# %% [markdown]
# We build the sequence for one photo, with `prepare_fn` (yours once its check passes).

# %%
prepare_fn = pick("prepare_tokens", prepare_tokens_by_hand)
img_size, patch = 96, 12
image = eval_transform(img_size)(photo("grace_hopper")).unsqueeze(0)  # (1, 3, 96, 96), normalised
patch_embed = PatchEmbed(img_size, patch, 3, D)  # notebook 01
cls_token = nn.Parameter(torch.zeros(1, 1, D))  # (1, 1, D)
pos_embed = nn.Parameter(torch.zeros(1, patch_embed.num_patches + 1, D))  # (1, N+1, D)
nn.init.trunc_normal_(cls_token, std=0.02)
nn.init.trunc_normal_(pos_embed, std=0.02)

with torch.no_grad():
    tokens = prepare_fn(image, patch_embed, cls_token, pos_embed)  # (1, 65, 96): 64 patches + CLS
print(
    "patch tokens",
    tuple(patch_embed(image).shape),
    "-> with class token and positions",
    tuple(tokens.shape),
)


# %% [markdown]
# **Why positions?** Attention compares every token with every other token and the MLP treats each
# token on its own: nothing in a block knows *where* a token came from. Without `pos_embed`,
# shuffling the patches of an image, a jigsaw puzzle, permutes the patch tokens and leaves the class
# token's output exactly the same. The network would see an image as a *bag* of patches. We check
# that with the whole ViT below, once it is built.
#
# ## 5. A whole ViT, by hand
#
# Patch embedding, class token, positions, `depth` blocks with the linear drop-path rule, a final
# LayerNorm, and the class token's output as the feature. Every parameter gets its official
# DINO/timm name.
#
# ### Exercise `vit_forward` · difficulty 2 · 10 min
#
# Write `vit_forward_by_hand(images, vit)`, the whole forward pass:
#
# * **input** `images` $(B, 3, H, W)$ and a `vit` with the parts `vit.patch_embed`, `vit.cls_token`,
#   `vit.pos_embed`, `vit.blocks` (a list of blocks, each called as `blk(x)`) and `vit.norm`;
# * **output** the image feature $(B, D)$: the class token after the last block and the final norm.
#
# Use `prepare_fn` from the previous exercise for the tokens.
#
# <details><summary>Hint</summary>
#
# Tokens $(B, N+1, D)$, then `for blk in vit.blocks: x = blk(x)`, then `vit.norm`, then keep token 0
# with `[:, 0]`.
#
# </details>


# %%
def vit_forward_by_hand(images: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D): tokens, every block, the final norm, the class token."""
    raise NotImplementedError("tokens, every block, the final norm, then the class token: (B, D)")


# %% tags=["raises-exception"]
check_vit_forward(vit_forward_by_hand)

# %% [markdown]
# Our ViT holds its parameters under the official names; its `forward` is `vit_forward_fn`, built
# from your blocks (`MyBlock`, `MyMlp`): every piece you wrote, together.

# %%
vit_forward_fn = pick("vit_forward", vit_forward_by_hand)


class MyViT(nn.Module):
    def __init__(
        self,
        img_size=96,
        patch_size=12,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # (1, 1, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))  # (1, N+1, D)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear rule
        self.blocks = nn.ModuleList(
            [MyBlock(embed_dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_forward_fn(x, self)  # (B, D): the class token after the final norm


cfg = dict(img_size=96, patch_size=12, embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.1)
my_vit = MyViT(**cfg)
# qkv_bias=True, mlp_ratio=4, LayerNorm eps 1e-6 by default, as in DINO
core_vit = VisionTransformer(**cfg)
assert list(my_vit.state_dict()) == list(core_vit.state_dict()), "the names differ"
my_vit.load_state_dict(core_vit.state_dict())  # strict=True: same names, same shapes
my_vit.eval()
core_vit.eval()

batch = torch.cat([image, image.flip(-1)])  # (2, 3, 96, 96): the photo and its mirror image
with torch.no_grad():
    feat_mine, feat_core = my_vit(batch), core_vit(batch)  # (2, 96) each
torch.testing.assert_close(feat_mine, feat_core)
print("MyViT == vitdino_core.VisionTransformer, feature shape", tuple(feat_core.shape))

# %% [markdown]
# The official layout of names: this is what lets official DINO (and timm) weights load into
# `vitdino_core.VisionTransformer` with `strict=True`, and what you will read in their code.

# %%
for name, t in core_vit.state_dict().items():
    if name.startswith("blocks.") and not name.startswith("blocks.0."):
        continue
    print(f"  {name:28s} {str(tuple(t.shape)):>14s}")
print(f"  blocks.1 … blocks.{cfg['depth'] - 1}: the same names as blocks.0")

# %% [markdown]
# Now the jigsaw test. We cut the photo into its 8 x 8 grid of patches, shuffle them, and compare
# the class token's output on the original and on the puzzle: once with the positions set to zero,
# once with them.


# %%
def shuffle_patches(img: torch.Tensor, p: int, perm: torch.Tensor) -> torch.Tensor:
    """Rearrange the p x p patches of (B, C, H, W) images in the order `perm`: a jigsaw puzzle."""
    B, C, H, W = img.shape
    h, w = H // p, W // p
    # (B, N, C, p, p)
    t = img.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C, p, p)
    t = t[:, perm]  # (B, N, C, p, p): the same patches, in another order
    return t.reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)  # (B, C, H, W)


perm = torch.randperm(core_vit.patch_embed.num_patches, generator=torch.Generator().manual_seed(0))
puzzle = shuffle_patches(image, patch, perm)  # (1, 3, 96, 96)

no_pos = VisionTransformer(**cfg).eval()
no_pos.load_state_dict(core_vit.state_dict())
with torch.no_grad():
    no_pos.pos_embed.zero_()
    same = (no_pos(image) - no_pos(puzzle)).abs().max().item()
    differ = (core_vit(image) - core_vit(puzzle)).abs().max().item()
assert same < 1e-4 and differ > 100 * same

mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # (3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)  # (3, 1, 1)
fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
for ax, im, title in zip(axes, (image, puzzle), ("original", "patches shuffled")):
    ax.imshow((im[0] * std + mean).clamp(0, 1).permute(1, 2, 0))
    ax.set(title=title, xticks=[], yticks=[])
fig.suptitle("Two inputs for the class token", y=1.0)
plt.show()
print(
    f"largest change of the class-token feature, no positions:   {same:.1e}"
    "  (the network sees a bag of patches)"
)
print(
    f"largest change of the class-token feature, with positions: {differ:.1e}"
    "  (small: positions start small, std 0.02)"
)

# %% [markdown]
# From here on we use `vitdino_core.VisionTransformer` and its builders `vit_tiny`, `vit_small`,
# `vit_base`.
#
# ## 6. How big is a ViT, and where do the parameters live?
#
# Count by hand, with $D$ the width, $p$ the patch size and $N$ the number of patches:
#
# | part | parameters |
# |---|---|
# | `patch_embed.proj` (conv $p \times p$, 3 -> D) | $3p^2 D + D$ |
# | `cls_token`, `pos_embed` | $D + (N+1) D$ |
# | per block: `attn.qkv` + `attn.proj` | $(3D^2 + 3D) + (D^2 + D) = 4D^2 + 4D$ |
# | per block: `mlp.fc1` + `mlp.fc2` | $(4D^2 + 4D) + (4D^2 + D) = 8D^2 + 5D$ |
# | per block: `norm1`, `norm2` | $4D$ |
# | final `norm` | $2D$ |
#
# So each block holds $12 D^2 + 13 D$, and the blocks hold almost everything. The ViT sizes in
# DINO's code: Ti(ny) $D = 192$ with 3 heads, S(mall) $D = 384$ with 6 heads, B(ase) $D = 768$ with
# 12 heads, all 12 blocks deep with heads of 64 dimensions. A patch of 12 instead of 16 at (about)
# the same 224-pixel image size means more tokens (19 x 19 = 361 at 228 pixels instead of 14 x 14 =
# 196) but almost the same parameters: only the patch projection and the position table change. We
# build the models on the `meta` device, which records shapes without allocating or initialising
# anything.


# %%
def vit_params_by_hand(D: int, depth: int, patch: int, img: int) -> int:
    N = (img // patch) ** 2
    per_block = (4 * D * D + 4 * D) + (8 * D * D + 5 * D) + 4 * D  # attention + MLP + 2 LayerNorms
    return (3 * patch * patch * D + D) + D + (N + 1) * D + depth * per_block + 2 * D


rows = []
with torch.device("meta"):
    for name, build, letter in (
        ("vit_tiny", vit_tiny, "Ti"),
        ("vit_small", vit_small, "S"),
        ("vit_base", vit_base, "B"),
    ):
        for p in (16, 12):
            m = build(patch_size=p)  # default image size: the multiple of p nearest 224
            n = sum(t.numel() for t in m.parameters())
            img = m.patch_embed.img_size
            assert n == vit_params_by_hand(m.embed_dim, len(m.blocks), p, img)
            rows.append(
                (f"ViT-{letter}/{p}", m.embed_dim, m.num_heads, img, m.patch_embed.num_patches, n)
            )

print(f"{'model':10s} {'D':>4s} {'heads':>5s} {'image':>6s} {'patches':>8s} {'parameters':>12s}")
for model, dim, h, img, npatch, n in rows:
    print(f"{model:10s} {dim:4d} {h:5d} {img:5d}px {npatch:8d} {n:12,d}  ({n / 1e6:.2f}M)")

params = {r[0]: r[-1] for r in rows}
assert params["ViT-S/16"] == 21_665_664  # official DINO ViT-S/16: 21.67M
assert params["ViT-B/16"] == 85_798_656  # official DINO ViT-B/16: 85.80M
# ours: ~86M
assert params["ViT-B/12"] == 85_667_328 and round(params["ViT-B/12"] / 1e6, 2) == 85.67

# %%
with torch.device("meta"):
    vitb = vit_base(patch_size=12)
groups = {
    "attention (qkv, proj)": 0,
    "MLP (fc1, fc2)": 0,
    "LayerNorms": 0,
    "embeddings (patch, cls, pos)": 0,
}
for name, t in vitb.named_parameters():
    if ".attn." in name:
        groups["attention (qkv, proj)"] += t.numel()
    elif ".mlp." in name:
        groups["MLP (fc1, fc2)"] += t.numel()
    elif "norm" in name:
        groups["LayerNorms"] += t.numel()
    else:
        groups["embeddings (patch, cls, pos)"] += t.numel()
total = sum(groups.values())
assert total == params["ViT-B/12"]

fig, ax = plt.subplots(figsize=(7, 2.8))
names, counts = list(groups), np.array(list(groups.values())) / 1e6
ax.barh(names, counts, color=["tab:blue", "tab:orange", "tab:gray", "tab:green"])
for i, c in enumerate(counts):
    ax.text(c + 0.5, i, f"{c:.2f}M ({100 * c / counts.sum():.1f}%)", va="center")
ax.invert_yaxis()
ax.set(
    xlabel="parameters (millions)",
    xlim=(0, counts.max() * 1.35),
    title=f"Where the {total / 1e6:.2f}M parameters of ViT-B/12 live",
)
fig.tight_layout()
save_figure(fig, "03_vitb12_parameters")
plt.show()

# %% [markdown]
# Two thirds of the weights are in the MLPs ($8D^2$ per block against $4D^2$ for attention), and the
# embeddings that make the network a *vision* model are under 1%. (Compute is another matter:
# attention's $N \times N$ scores grow with the square of the number of tokens, notebook 02.)
#
# ## 7. What do position embeddings learn?
#
# `pos_embed` is just a table of $N+1$ learned vectors; nobody tells the network that position 9 is
# below position 1. A good way to see what it learned (the ViT paper's Figure 7): for every patch
# position, the cosine similarity of its embedding with the embeddings of all the other positions,
# drawn as a small heat map at that position. We start with a freshly initialised network.


# %%
def plot_pos_similarity(pos: torch.Tensor, title: str):
    """Grid of heat maps: tile (i, j) = cosine similarity of position (i, j)'s embedding with
    every position."""
    # (N, D): patch positions only, unit length
    pe = F.normalize(pos[0, 1:].detach().float(), dim=-1)
    side = math.isqrt(pe.shape[0])
    sim = (pe @ pe.T).reshape(side, side, side, side)  # (row, col, row', col')
    # (s, s, s+1, s+1): a blank line between tiles
    tiles = F.pad(sim, (0, 1, 0, 1), value=float("nan"))
    mosaic = tiles.permute(0, 2, 1, 3).reshape(side * (side + 1), side * (side + 1))  # one image
    fig, ax = plt.subplots(figsize=(5.6, 5))
    im = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=-1, vmax=1)
    ticks = np.arange(side) * (side + 1) + side / 2 - 0.5
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=range(1, side + 1),
        yticklabels=range(1, side + 1),
        xlabel="input patch column",
        ylabel="input patch row",
        title=title,
    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    return fig


fig = plot_pos_similarity(
    core_vit.pos_embed, "Position embeddings at random initialisation (8 x 8 grid)"
)
plt.show()

# %% [markdown]
# **Nothing**: each tile has one bright pixel, its own position (similarity 1 with itself), and
# everything else is close to 0, because independent random vectors in $D$ dimensions are nearly
# orthogonal. At initialisation, position 1 is as "close" to position 2 as to position 64. Any 2-D
# structure must be learned.
#
# The project ships a DINO checkpoint trained on imagenette-96 (`checkpoints/dino_imagenette96.pth`;
# the environment variable `VITDINO_CHECKPOINT` can name another one, an official DINO file
# included). When it is there, `load_course_backbone` loads its **teacher backbone** (the network
# DINO keeps for evaluation): `torch.load(..., weights_only=True)`, the teacher's weights without
# the `backbone.` prefix and the DINO head, the architecture and patch size read from the weights'
# shapes, and a strict `load_state_dict`. We draw the same picture from its learned `pos_embed`.
# When there is no checkpoint (a fresh clone without the file), we draw a fixed 2-D sine-cosine
# embedding instead, to show what position structure looks like: the hand-made recipe of the
# original Transformer and of MAE (sines and cosines of the row and of the column, at geometrically
# spaced frequencies, here chosen to suit an 8 x 8 grid). It is **not** learned.

# %%
trained, info = load_course_backbone("cpu")  # $VITDINO_CHECKPOINT or the shipped file, or None
if trained is not None:
    structured_pos = trained.pos_embed.detach()  # (1, 1+side*side, D)
    side = math.isqrt(structured_pos.shape[1] - 1)  # the grid the weights were trained on
    structured_title = (
        f"LEARNED: teacher of {info['label']}\n"
        f"{info['arch']}/{info['patch_size']} ({side} x {side} grid)"
    )
    print(
        f"loaded the teacher backbone of {info['path']}: {info['arch']},"
        f" patch {info['patch_size']}, {side} x {side} grid"
    )
else:
    side, dim = 8, 96
    pos = torch.arange(side, dtype=torch.float32)  # (s,)
    # geometrically spaced frequencies, from pi/2 (half a turn every 2 patches) down to pi/16
    # (over the whole grid)
    steps = torch.arange(dim // 4, dtype=torch.float32) / (dim // 4 - 1)  # (D/4,) from 0 to 1
    freqs = (math.pi / 2) * (1 / side) ** steps  # (D/4,)
    ang_y = pos[:, None, None] * freqs  # (s, 1, D/4): angle of each row
    ang_x = pos[None, :, None] * freqs  # (1, s, D/4): angle of each column
    waves = [torch.sin(ang_y), torch.cos(ang_y), torch.sin(ang_x), torch.cos(ang_x)]
    grid = torch.cat([w.expand(side, side, -1) for w in waves], dim=-1)  # (s, s, D)
    # (1, 1+s*s, D)
    structured_pos = torch.cat([torch.zeros(1, dim), grid.reshape(side * side, dim)]).unsqueeze(0)
    structured_title = (
        "NOT LEARNED: fixed 2-D sine-cosine positions\n"
        "(no checkpoint found; what structure looks like)"
    )
    print(f"no checkpoint ({info['label']}): showing a fixed sine-cosine embedding instead")

fig = plot_pos_similarity(structured_pos, structured_title)
save_figure(fig, "03_position_similarity")
plt.show()

# %% [markdown]
# With structure, each tile shows a bright blob around its own position that fades with distance,
# and often brighter bands along the same row and the same column: nearby patches get similar
# embeddings, and the network has rediscovered the 2-D layout of the image from the data alone (ViT
# paper, Figure 7). Learned embeddings are noisier than the hand-made sine-cosine ones, and on small
# data sets or short trainings the structure is only partly there.
#
# ## 8. Other image sizes: interpolating the positions
#
# `pos_embed` has one row per position of the grid the network was built for. Feed a larger image
# and there are more patches than rows. DINO's answer (`interpolate_pos_encoding`): view the table
# as a $D$-channel image of size $s \times s$, resize it **bicubically** to the new grid
# $h \times w$, and keep the class token's entry as it is. Patches then get the embedding of the
# place they occupy *relative to the image*. This is how DINO's networks, trained at 224 pixels, are
# used on 480-pixel images for attention maps, and how the same network sees 224-pixel global crops
# and 96-pixel local crops (notebook 04).
#
# One detail decides whether official weights give official features: DINO asks for the resize by
# *scale factor*, $(h + 0.1)/s$, not by output size. The $0.1$ guards against $s \cdot h/s$ rounding
# down to $h - 1$, and the factor also fixes where the new grid reads the old one: output row $i$
# samples input row $(i + \tfrac12)\, s/(h + 0.1) - \tfrac12$, a little off the
# $(i + \tfrac12)\, s/h - \tfrac12$ that `size=(h, w)` would give.


# %%
def interpolate_positions_by_hand(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, 1+s*s, D) -> (1, 1+h*w, D): bicubic resize of the patch grid, class token unchanged."""
    s = math.isqrt(pos.shape[1] - 1)
    grid = pos[:, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)  # (1, D, s, s): a D-channel image
    # (1, D, h, w), as DINO
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / s, (w + 0.1) / s), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)  # (1, h*w, D)
    return torch.cat([pos[:, :1], grid], dim=1)  # (1, 1+h*w, D)


with torch.no_grad():
    # 96 px (8 x 8) -> 228 px (19 x 19)
    mine = interpolate_positions_by_hand(core_vit.pos_embed, 19, 19)
    # (1, 362, 96)
    core = core_vit.interpolate_pos_encoding(torch.zeros(1, 1 + 19 * 19, D), 228, 228)
torch.testing.assert_close(mine, core)
print(
    "interpolate_positions_by_hand == VisionTransformer.interpolate_pos_encoding:",
    tuple(core.shape),
)

# %% [markdown]
# What interpolation does to the structure: the similarity of the centre patch to every other
# position, on the native grid and on a grid 2.4 times finer (the embedding shown above).

# %%
big = round(side * 2.4)
resized = interpolate_positions_by_hand(structured_pos, big, big)  # (1, 1+big*big, D)
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
for ax, pos, s in zip(axes, (structured_pos, resized), (side, big)):
    pe = F.normalize(pos[0, 1:], dim=-1)  # (s*s, D)
    centre = (s // 2) * s + s // 2
    im = ax.imshow((pe @ pe[centre]).reshape(s, s).numpy(), cmap="viridis", vmin=-1, vmax=1)
    ax.set(title=f"{s} x {s} grid", xticks=[], yticks=[])
fig.colorbar(im, ax=axes, fraction=0.046, label="cosine similarity to the centre patch")
fig.suptitle(structured_title.split("\n")[0])
plt.show()

# %% [markdown]
# Now a real ViT-B/12, our ~86M-parameter model. It is built for 228-pixel images (19 x 19 = 361
# patches). We run one photo at its native size and at 96 pixels (8 x 8 = 64 patches, positions
# interpolated): the feature has the same size, the number of tokens and the cost change. An image
# that is not a multiple of the patch size cannot be cut into patches and gets a clear error.

# %%
torch.manual_seed(0)
vitb = vit_base(patch_size=12).eval()  # random weights: this is about shapes and cost
print(
    f"ViT-B/12: {sum(t.numel() for t in vitb.parameters()):,} parameters,"
    f" built for {vitb.patch_embed.img_size} px"
)
for size in (228, 96):
    x_img = eval_transform(size)(photo("grace_hopper")).unsqueeze(0)  # (1, 3, size, size)
    with torch.no_grad():
        tokens = vitb.prepare_tokens(x_img)  # (1, 1+N, 768): positions interpolated when needed
        feat = vitb(x_img)  # (1, 768)
    print(
        f"  {size:3d} px: {tokens.shape[1] - 1:3d} patches + cls -> tokens {tuple(tokens.shape)},"
        f" feature {tuple(feat.shape)}"
    )

try:
    vitb(torch.zeros(1, 3, 100, 100))
except ValueError as e:
    print("100 px:", e)
else:
    raise AssertionError("a 100 px image should be refused")
del vitb

# %% [markdown]
# ## 9. Looking inside: attention weights and intermediate layers
#
# Two doors into the network that DINO's tools use:
#
# * `get_last_selfattention(x)`: the attention weights of the last block, (B, heads, N+1, N+1). Row
#   0 is where the class token looks; notebook 07 turns it into DINO's famous object masks.
# * `get_intermediate_layers(x, n)`: the normalised tokens after each of the last `n` blocks, (B,
#   N+1, D) each. DINO's linear evaluation of ViT-S concatenates the class tokens of the last 4
#   blocks.

# %%
with torch.no_grad():
    attn = core_vit.get_last_selfattention(batch)  # (2, 3, 65, 65)
    layers = core_vit.get_intermediate_layers(batch, n=4)  # 4 x (2, 65, 96)
print("get_last_selfattention:", tuple(attn.shape), " = (B, heads, N+1, N+1)")
print("get_intermediate_layers(n=4):", [tuple(t.shape) for t in layers], " = n x (B, N+1, D)")
torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 65))  # every row is a distribution
# the last layer's class token is the feature
torch.testing.assert_close(layers[-1][:, 0], feat_core)
linear_eval_feature = torch.cat([t[:, 0] for t in layers], dim=-1)  # (2, 4 * 96)
print("class tokens of the last 4 blocks, concatenated:", tuple(linear_eval_feature.shape))

# %% [markdown]
# ## What we built
#
# * The **MLP** (fc1, GELU, fc2) and the **pre-norm block** $x + \mathrm{attn}(\mathrm{LN}(x))$,
#   $x + \mathrm{MLP}(\mathrm{LN}(x))$, on top of notebook 02's attention: equal to
#   `vitdino_core.Block` (exercises `mlp`, `block`).
# * **Stochastic depth**: whole residual branches dropped per sample, rescaled by $1/(1-p)$, with
#   $p$ growing linearly over depth (exercise `drop_path`).
# * The **class token** and **learned positions**; without positions the ViT sees a bag of patches
#   (exercise `prepare_tokens`).
# * A whole ViT by hand with the official names, equal to `vitdino_core.VisionTransformer`
#   (exercise `vit_forward`); ViT-S/16
#   and ViT-B/16 have exactly the official DINO parameter counts, our ViT-B/12 has 85.67M, two
#   thirds of them in the MLPs.
# * Position embeddings start with no structure; interpolating them bicubically runs one network at
#   any size that is a multiple of the patch.
#
# Next, notebook 04 makes the inputs DINO feeds this network: two global and several local crops of
# each image.
#
# ## More to try
#
# 1. Post-norm: write a block that computes $\mathrm{LN}(x + \mathrm{attn}(x))$ and
#    $\mathrm{LN}(x + \mathrm{MLP}(x))$ instead. Stack 12 of each at random initialisation and plot
#    the standard deviation of the residual stream after every block for both. Which one keeps an
#    identity path from input to output?
# 2. What would ViT-L/16 ($D = 1024$, 24 blocks, 16 heads) weigh? Use `vit_params_by_hand`, then
#    check it with `VisionTransformer(embed_dim=1024, depth=24, num_heads=16)` on the `meta` device.
#    The ViT paper lists 307M: how much of the difference would a 1000-class classification head
#    explain?
# 3. Interpolate the position grid down and up again (8 -> 4 -> 8, and 8 -> 16 -> 8) with
#    `interpolate_positions_by_hand`. Which round trip loses information, and how does that show in
#    the similarity picture?

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["mlp", "drop_path", "block", "prepare_tokens", "vit_forward"])
