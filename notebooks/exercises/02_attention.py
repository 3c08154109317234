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
# # 02 · Attention
#
# *Exercise version.* Write the functions marked `NotImplementedError`; each check cell
# tells you what is wrong or that it passed. The complete notebook is `../02_attention.py`.
# (Made by `make exercises` from it; edits here are yours, `make exercises` overwrites them.)
#
# After the patch embedding (01) every patch is a token, but each token knows only its own 16 x 16
# pixels. **Self-attention** is the one place in a Transformer where tokens exchange information:
# every token asks every other token "how relevant are you to me?" and takes a weighted average of
# their answers. It is also what makes DINO's famous pictures: the attention of the class token in
# the last layer, drawn over the image, outlines the objects (notebook 07).
#
# ```
# tokens (B, N, D)
#   │  qkv: one Linear D -> 3D, split into H heads of size d = D/H
#   ▼
# Q, K, V (B, H, N, d)
#   │  A = softmax(Q K^T / sqrt(d))        (B, H, N, N)   every row sums to 1
#   │  A V                                 (B, H, N, d)
#   ▼  concatenate the heads, proj: Linear D -> D
# tokens (B, N, D) ──► MLP, residuals, norms: the Transformer block (03)
# ```
#
# In this notebook we
# 1. compute scaled dot-product attention by hand and check it against PyTorch's fused kernel;
# 2. see *why* the scores are divided by $\sqrt{d}$: without it, softmax saturates as $d$ grows;
# 3. build multi-head attention with one `reshape` and check it against `vitdino_core.Attention`, on
#    both of its paths (explicit softmax and fused kernel);
# 4. draw the attention matrices of a (randomly initialised) attention layer on a real photo;
# 5. count what attention costs as the number of tokens $N$ grows: the $N \times N$ matrix in
#    memory.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vitdino_core import Attention, PatchEmbed
from vitdino_core.exercises import assert_checked, check_attention, check_multi_head_attention, pick
from vitdino_core.notebook import photo, save_figure, setup

setup(seed=0)  # seeds every RNG, picks the device, prints what it chose

# %% [markdown]
# ## 1. Scaled dot-product attention, by hand
#
# Each token $n$ has a **query** $q_n$ (what am I looking for?), a **key** $k_n$ (what do I
# contain?) and a **value** $v_n$ (what do I pass on?), all vectors of size $d$. Stacked as rows
# they form $Q, K, V \in \mathbb{R}^{N \times d}$, and
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V .$$
#
# Read it in three steps:
# 1. **scores** $S = Q K^\top / \sqrt{d}$, an $N \times N$ matrix: $S_{nm}$ says how well query $n$
#    matches key $m$;
# 2. **weights** $A = \mathrm{softmax}(S)$ taken along each *row*:
#    $A_{nm} = e^{S_{nm}} / \sum_{m'} e^{S_{nm'}}$, so every row is a probability distribution over
#    the tokens ($A_{nm} \ge 0$, $\sum_m A_{nm} = 1$);
# 3. **output** $A V$: token $n$ receives $\sum_m A_{nm} v_m$, an average of the values weighted by
#    relevance.
#
# ### Exercise `attention` · difficulty 1 · 10 min
#
# Write `attention_by_hand(q, k, v, scale=True)`:
#
# * **input** queries `q` of shape $(\dots, n, d)$, keys `k` and values `v` of shape
#   $(\dots, N, d)$; leading axes (batch, heads) come along unchanged, and $n$ may differ from $N$;
# * **output** the pair `(output, weights)`: `weights` $= \mathrm{softmax}(q k^\top / \sqrt{d})$,
#   shape $(\dots, n, N)$, every row summing to 1, and `output` $=$ `weights @ v`, $(\dots, n, d)$;
# * with `scale=False` leave out the division by $\sqrt{d}$ (section 2 compares the two).
#
# The check tries four shapes, with and without the scale, against the core's attention.
#
# <details><summary>Hint</summary>
#
# `k.transpose(-2, -1)` swaps the last two axes of the keys, so `q @ k.transpose(-2, -1)` has shape
# $(\dots, n, N)$: one row per query. The softmax normalises each row over the keys: `dim=-1`.
#
# </details>


# %%
def attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: bool = True):
    """softmax(q k^T / sqrt(d)) v over the last two axes; returns (output, weights)."""
    d = q.shape[-1]
    raise NotImplementedError("return (output, weights), weights = softmax(q k^T / sqrt(d))")


# %% tags=["raises-exception"]
check_attention(attention_by_hand)

# %% [markdown]
# From here on `attention_fn` is your function once its check passes, the core's until then.

# %%
attention_fn = pick("attention", attention_by_hand)
N, d = 5, 8
q, k, v = torch.randn(3, N, d).unbind(0)  # 3 x (N, d): five tokens, eight dimensions
out, weights = attention_fn(q, k, v)  # (N, d), (N, N)
print("attention weights (rows = queries, columns = keys):")
print(weights.numpy().round(3))
print("row sums:", weights.sum(dim=-1).numpy().round(6))

torch.testing.assert_close(weights.sum(dim=-1), torch.ones(N))  # every row is a distribution
# PyTorch's fused kernel agrees
torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
# token 2 = weighted sum of the values
torch.testing.assert_close(out[2], (weights[2, :, None] * v).sum(0))
print("attention_fn == F.scaled_dot_product_attention")

# %% [markdown]
# ## 2. Why divide by $\sqrt{d}$?
#
# If the entries of $q$ and $k$ are independent with mean 0 and variance 1, their dot product
# $q \cdot k = \sum_{i=1}^{d} q_i k_i$ is a sum of $d$ such products: mean 0, **variance $d$**. So
# the scores grow like $\sqrt{d}$ with the head size. Softmax of large numbers is nearly one-hot:
# all the weight goes to the single largest score, the other tokens are ignored, and the gradient
# through softmax ($\partial A_{nm} / \partial S_{nm} = A_{nm}(1 - A_{nm})$) almost vanishes, so the
# model stops learning *where* to look. Dividing by $\sqrt{d}$ brings the variance back to 1
# whatever the head size (Vaswani et al., 2017).
#
# We measure it: random $q, k$ for 64 keys, and the **entropy** of each attention row,
# $H(A_n) = -\sum_m A_{nm} \ln A_{nm}$: $\ln 64 \approx 4.16$ for uniform attention, $0$ for
# one-hot.

# %%
keys, queries = 64, 256
dims = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def row_entropy(w: torch.Tensor) -> torch.Tensor:
    return -(w * w.clamp_min(1e-12).log()).sum(dim=-1)  # (..., N, N) -> (..., N)


g = torch.Generator().manual_seed(0)
stats = {"scaled": [], "unscaled": []}
for dim in dims:
    q = torch.randn(queries, dim, generator=g)  # (256, dim)
    k = torch.randn(keys, dim, generator=g)  # (64, dim)
    v = torch.zeros(keys, 1)  # (64, 1): values do not matter here
    for name, scale in (("scaled", True), ("unscaled", False)):
        _, w = attention_fn(q, k, v, scale=scale)  # w: (256, 64)
        stats[name].append(
            (
                row_entropy(w).mean().item(),
                w.max(dim=-1).values.mean().item(),
                (w * (1 - w)).max(dim=-1).values.mean().item(),
            )
        )

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for name, style in (("scaled", "o-"), ("unscaled", "s--")):
    entropy, top_weight, _ = zip(*stats[name])
    label = r"softmax$(QK^\top/\sqrt{d})$" if name == "scaled" else r"softmax$(QK^\top)$"
    axes[0].plot(dims, entropy, style, label=label)
    axes[1].plot(dims, top_weight, style, label=label)
axes[0].axhline(math.log(keys), color="gray", lw=0.8, ls=":")
axes[0].text(dims[0], math.log(keys) - 0.3, "uniform: ln 64", color="gray")
axes[0].set(
    xscale="log",
    xlabel="head dimension d",
    ylabel="mean row entropy (nats)",
    title="How spread out is each row?",
)
axes[1].set(
    xscale="log",
    xlabel="head dimension d",
    ylabel="mean largest weight in a row",
    ylim=(0, 1.05),
    title="How much goes to the top key?",
)
for ax in axes:
    ax.legend()
fig.suptitle(f"Random q, k ~ N(0, 1): {queries} queries over {keys} keys", y=1.02)
fig.tight_layout()
save_figure(fig, "02_softmax_saturation")
plt.show()

i64 = dims.index(64)
print(
    f"d = 64 (a ViT head): entropy {stats['scaled'][i64][0]:.2f} nats scaled"
    f" vs {stats['unscaled'][i64][0]:.2f} unscaled;"
    f" top weight {stats['scaled'][i64][1]:.2f} vs {stats['unscaled'][i64][1]:.2f}"
)
scaled_entropy = [s[0] for s in stats["scaled"]]
unscaled_entropy = [s[0] for s in stats["unscaled"]]
# with the scale, the spread hardly depends on d
assert max(scaled_entropy) - min(scaled_entropy) < 0.5
# without it, rows collapse towards one-hot as d grows
assert unscaled_entropy[-1] < 0.5 * scaled_entropy[-1]

# %% [markdown]
# With the scale, the rows are equally spread at every $d$ (the curve is flat). Without it, the rows
# turn one-hot as $d$ grows: at $d = 64$, the head size of ViT-S and ViT-B, most of the weight
# already sits on one key. (DINO meets the same knob again in notebook 05: dividing by a
# *temperature* before a softmax to make it sharper or flatter on purpose.)
#
# ## 3. Multi-head attention
#
# One attention map can only express one notion of "relevant". A ViT runs $H$ attentions side by
# side, each on its own $d = D/H$ slice, and mixes their outputs:
#
# $$\mathrm{head}_h = \mathrm{Attention}(X W^Q_h,\, X W^K_h,\, X W^V_h), \qquad
# \mathrm{MSA}(X) = [\mathrm{head}_1; \dots; \mathrm{head}_H]\, W^O .$$
#
# In code all $3H$ projections are **one** `Linear(D, 3D)` (DINO and timm call it `qkv`), followed
# by one `reshape` and one `permute`:
#
# ```
# qkv(x)                      (B, N, 3D)
# .reshape(B, N, 3, H, d)     (B, N, 3, H, d)   split 3D into (q/k/v, head, dim)
# .permute(2, 0, 3, 1, 4)     (3, B, H, N, d)   q, k, v first; heads next to the batch
# ```
#
# After that, the heads are just one more batch axis: `q @ k.transpose(-2, -1)` computes all
# $B \cdot H$ attention matrices at once. `proj` is $W^O$. With ViT-S sizes: $D = 384$, $H = 6$,
# $d = 64$.
#
# ### Exercise `multi_head_attention` · difficulty 2 · 15 min
#
# Write `multi_head_attention_by_hand(x, qkv, proj, num_heads)`:
#
# * **input** tokens `x` of shape $(B, N, D)$; `qkv`, an `nn.Linear(D, 3D)` whose $3D$ outputs are
#   $[q \mid k \mid v]$, each made of $H$ heads of $d = D/H$ features; `proj`, an `nn.Linear(D, D)`;
#   the number of heads $H$;
# * **output** the pair `(out, weights)`: `out` $(B, N, D)$ is `proj` of the $H$ heads' outputs
#   put side by side, `weights` $(B, H, N, N)$ are the heads' attention weights.
#
# Use `attention_fn` from the first exercise for the attention itself.
#
# <details><summary>Hint</summary>
#
# Follow the box above to get `q, k, v`, each $(B, H, N, d)$. After `attention_fn`, the output is
# $(B, H, N, d)$: bring the heads back next to $d$ with `transpose(1, 2)`, giving $(B, N, H, d)$,
# before you `reshape` to $(B, N, D)$.
#
# </details>


# %%
def multi_head_attention_by_hand(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, num_heads: int):
    """(B, N, D) -> (out (B, N, D), weights (B, H, N, N)) with H heads of d = D / H features."""
    B, N, D = x.shape  # (B, N, D)
    raise NotImplementedError("qkv(x) -> q, k, v (B, H, N, d); attend; merge the heads; proj")


# %% tags=["raises-exception"]
check_multi_head_attention(multi_head_attention_by_hand)

# %% [markdown]
# A module with DINO's parameter names holds the weights; its `forward` is `mha_fn`: yours once
# its check passes.

# %%
mha_fn = pick("multi_head_attention", multi_head_attention_by_hand)


class MyAttention(nn.Module):
    """Multi-head self-attention; parameter names as in DINO (qkv, proj)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # all of W^Q, W^K, W^V for all heads
        self.proj = nn.Linear(dim, dim)  # W^O

    def forward(self, x: torch.Tensor):
        return mha_fn(x, self.qkv, self.proj, self.num_heads)  # (B, N, D), (B, H, N, N)


D, H = 384, 6
mine = MyAttention(D, H)
x = torch.randn(2, 50, D)  # (B=2, N=50, D=384)
with torch.no_grad():
    y_mine, attn_mine = mine(x)  # (2, 50, 384), (2, 6, 50, 50)
print("output", tuple(y_mine.shape), "| attention", tuple(attn_mine.shape))

# %% [markdown]
# Is the `reshape` really "$H$ separate attentions"? Run each head on its own slice of the weights,
# in a loop, and compare. Rows $h d \dots (h+1) d - 1$ of the query block of `qkv.weight` are
# $W^Q_h$; likewise for keys (the next $D$ rows) and values (the last $D$ rows).

# %%
with torch.no_grad():
    Wq, Wk, Wv = mine.qkv.weight.split(D)  # 3 x (D, D): rows are output features
    bq, bk, bv = mine.qkv.bias.split(D)  # 3 x (D,)
    hd = D // H
    heads = []
    for h in range(H):
        rows = slice(h * hd, (h + 1) * hd)
        q_h = x @ Wq[rows].T + bq[rows]  # (B, N, d)
        k_h = x @ Wk[rows].T + bk[rows]  # (B, N, d)
        v_h = x @ Wv[rows].T + bv[rows]  # (B, N, d)
        heads.append(attention_fn(q_h, k_h, v_h)[0])  # (B, N, d)
    y_loop = mine.proj(torch.cat(heads, dim=-1))  # (B, N, H*d) -> (B, N, D)
torch.testing.assert_close(y_loop, y_mine)
print("one reshape == a loop over", H, "single-head attentions")

# %% [markdown]
# ### Checked against `vitdino_core.Attention`
#
# The core module has the same parameters (`qkv`, `proj`), so our weights load into it directly. Its
# `forward(x, return_attention=False)` has two paths that must agree:
#
# * `return_attention=True`: the explicit softmax, as above; it returns the $(B, H, N, N)$ weights
#   too (attention maps in notebook 07 use it);
# * the default: PyTorch's fused `F.scaled_dot_product_attention`, which never stores the
#   $N \times N$ matrix (flash / memory-efficient kernels; section 5 shows what that saves).

# %%
core = Attention(D, num_heads=H, qkv_bias=True)
core.load_state_dict(mine.state_dict())  # same names, same shapes
with torch.no_grad():
    y_explicit, attn_core = core(x, return_attention=True)  # (2, 50, 384), (2, 6, 50, 50)
    y_fused = core(x)  # (2, 50, 384) via F.scaled_dot_product_attention

torch.testing.assert_close(y_explicit, y_mine, rtol=0, atol=1e-5)
torch.testing.assert_close(attn_core, attn_mine, rtol=0, atol=1e-5)
torch.testing.assert_close(y_fused, y_mine, rtol=0, atol=1e-5)
torch.testing.assert_close(attn_core.sum(dim=-1), torch.ones(2, H, 50))  # rows sum to 1
assert (attn_core >= 0).all()
print(
    "MyAttention == vitdino_core.Attention (explicit and fused paths), max |diff| fused vs mine:",
    f"{(y_fused - y_mine).abs().max():.1e}",
)

# %% [markdown]
# From here on we use `vitdino_core.Attention` (inside every ViT block it is `blocks[i].attn`).
#
# ## 4. Attention matrices on a real photo
#
# Let us feed real patch tokens through an attention layer and look at the $N \times N$ matrices,
# one per head. The photo (224 px) goes through a `PatchEmbed` with patch 16 (196 tokens,
# $D = 384$), a `LayerNorm` (the ViT block normalises before attention, notebook 03), and the
# attention layer above. **All weights are random**: nothing has been trained. Whatever structure
# appears comes from the image itself: patches that look alike (sky, uniform, face) produce similar
# queries and keys.


# %%
def center_square(img: Image.Image, size: int) -> Image.Image:
    """Crop the largest centred square, then resize it to size x size (as in 01)."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.crop(box).resize((size, size), Image.BICUBIC)


def to_input(img: Image.Image) -> torch.Tensor:
    """PIL image -> ImageNet-normalised batch of one: (1, 3, H, W)."""
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((t - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)  # (1, 3, H, W)


size, p = 224, 16
crop = center_square(photo("grace_hopper"), size)
image = to_input(crop)  # (1, 3, 224, 224)
torch.manual_seed(0)
patch_embed = PatchEmbed(size, p, 3, D)
norm = nn.LayerNorm(D)
with torch.no_grad():
    tokens = norm(patch_embed(image))  # (1, 196, 384)
    _, attn = core(tokens, return_attention=True)  # (1, 6, 196, 196)
grid = size // p
print("tokens", tuple(tokens.shape), "| attention", tuple(attn.shape))

fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.4))
for h, ax in enumerate(axes.flat):
    shown = ax.imshow(attn[0, h].numpy(), cmap="viridis")
    ax.set_title(f"head {h}")
    if h >= 3:
        ax.set_xlabel("key token (attended to)")
    if h % 3 == 0:
        ax.set_ylabel("query token (attending)")
    fig.colorbar(shown, ax=ax, fraction=0.046)
fig.suptitle(
    f"Attention matrices A = softmax(QK^T/sqrt(d)), {grid * grid} patch tokens,"
    " random weights; every row sums to 1"
)
fig.tight_layout()
save_figure(fig, "02_attention_matrices")
plt.show()

torch.testing.assert_close(attn.sum(dim=-1), torch.ones(1, H, grid * grid))

# %% [markdown]
# The matrices are large and hard to read as a whole: the bright *columns* are keys that many
# queries like, the *bands* are rows of the image (tokens $14 i \dots 14 i + 13$ are grid row $i$).
# A row is easier: pick one query patch and draw its 196 weights back on the $14 \times 14$ grid.
# Below, the query is a patch on the face (yellow square); each panel is one head, its colours
# scaled from its own smallest to largest weight.

# %%
qi, qj = 6, 7  # grid row and column of the query patch
query = qi * grid + qj  # its token index
rows = attn[0, :, query].reshape(H, grid, grid)  # (H, 196) -> (H, 14, 14): one map per head

ncols = -(-(H + 1) // 2)  # two rows: the figure fits the notebook's width
fig, axes = plt.subplots(2, ncols, figsize=(2.5 * ncols, 5.8))
axes = axes.ravel()  # (2 * ncols,): the query patch, then one panel per head
axes[0].imshow(crop)
axes[0].add_patch(plt.Rectangle((qj * p, qi * p), p, p, fill=False, edgecolor="yellow", lw=2))
axes[0].set_title("query patch")  # colours below are scaled per panel
for h in range(H):
    axes[h + 1].imshow(crop)
    axes[h + 1].imshow(
        rows[h].numpy(),
        cmap="inferno",
        alpha=0.7,
        extent=(0, size, size, 0),
        interpolation="nearest",
    )
    axes[h + 1].set_title(f"head {h}: max {rows[h].max():.3f}")
for ax in axes:
    ax.axis("off")
fig.suptitle(
    f"Where token {query} looks, per head (random weights; uniform would be"
    f" {1 / grid**2:.4f} everywhere)",
    y=1.02,
)
fig.tight_layout()
plt.show()

entropy = row_entropy(attn[0]).mean(dim=-1)  # (H,): mean row entropy per head
print(
    "mean row entropy per head:",
    entropy.numpy().round(2),
    f"(uniform: ln {grid * grid} = {math.log(grid * grid):.2f})",
)

# %% [markdown]
# With random weights the rows are close to uniform (entropy near $\ln 196 \approx 5.28$): every
# token takes almost the plain average of all the others, tilted a little towards patches whose
# colours make similar keys. That is the honest starting point of training. In notebook 07 the same
# picture for a DINO-trained ViT shows heads that pick out the object, its parts or the background,
# without a single label.
#
# ## 5. What attention costs
#
# The scores $Q K^\top$ are an $N \times N$ matrix per head and per image. Computing them costs
# $O(N^2 d)$ multiply-adds, and *storing* them costs $B \cdot H \cdot N^2$ numbers. Both grow with
# the square of the number of tokens, which is why patch size matters so much (01: halving the patch
# quadruples $N$, so attention becomes 16 times dearer).
#
# PyTorch's fused `F.scaled_dot_product_attention` computes the same result block by block with a
# running softmax (the "flash attention" idea), so the full matrix never exists in memory. (How
# the two paths compare in time is measured in notebook 09, Appendix A.)
#
# And the memory of that matrix, for a batch of images, in float32 (4 bytes), *per layer*. Training
# must keep it for the backward pass in every one of the 12 layers unless the fused kernel is used:


# %%
def attention_matrix_bytes(batch: int, heads: int, n_tokens: int, bytes_per_number: int = 4) -> int:
    return batch * heads * n_tokens * n_tokens * bytes_per_number


settings = [  # (name, image size, patch, heads)
    ("ViT-S/16, 224 px", 224, 16, 6),
    ("ViT-B/12, 228 px", 228, 12, 12),
    ("ViT-S/8, 224 px", 224, 8, 6),
    ("ViT-S/8, 96 px (Imagenette-96)", 96, 8, 6),
    ("ViT-S/8, 480 px (one image for a map)", 480, 8, 6),
]
batch = 64
print(
    f"{'model, image':>38} {'N+1':>6} {'one image, one layer':>22}"
    f" {f'batch {batch} x 12 layers':>22}"
)
for name, img_size, patch, heads in settings:
    n = (img_size // patch) ** 2 + 1  # patches + CLS
    one = attention_matrix_bytes(1, heads, n)
    print(f"{name:>38} {n:6d} {one / 2**20:18.1f} MiB {batch * 12 * one / 2**30:18.1f} GiB")

# the formula matches what the explicit path really allocates
assert attn.numel() * attn.element_size() == attention_matrix_bytes(1, H, grid * grid)

# %% [markdown]
# ViT-S/8 at 224 px needs about 14 MiB per image per layer just for these weights; a training batch
# of 64 through 12 layers would need over 10 GiB for them alone. That is why
# `vitdino_core.Attention` uses the fused kernel unless the weights are asked for, and why DINO's
# attention-map pictures are computed one image at a time.
#
# ## What we built
#
# * `attention_by_hand` (exercise `attention`): $\mathrm{softmax}(QK^\top / \sqrt{d})\,V$ in three
#   lines, equal to `F.scaled_dot_product_attention`; every row of $A$ sums to 1;
# * why $\sqrt{d}$: the scores' variance grows like $d$, and softmax saturates to one-hot without
#   the scale;
# * multi-head attention (exercise `multi_head_attention`) as `qkv` $\to$ `reshape(B, N, 3, H, d)`
#   $\to$ `permute(2, 0, 3, 1, 4)`, equal to a loop over $H$ heads and to `vitdino_core.Attention`
#   on both its explicit and fused paths;
# * attention matrices and one query's map per head on a real photo, with random weights (notebook
#   07 redraws them for a trained model);
# * the cost: work and memory both grow like $N^2$; the fused kernel avoids storing the matrix.
#
# Next, **03 · Vision Transformer**: attention, an MLP, residual connections and layer norms make a
# block; twelve blocks, a class token and position embeddings make ViT.
#
# ## More to try
#
# 1. Causal attention: mask the scores with $-\infty$ above the diagonal before the softmax (so
#    token $n$ only sees tokens $\le n$) and compare with
#    `F.scaled_dot_product_attention(q, k, v, is_causal=True)`. Why does a ViT not use a mask?
# 2. Permute the input tokens of `core` with a random permutation. Show that the output is permuted
#    in the same way (attention is *permutation-equivariant*), which is why ViT needs position
#    embeddings.
# 3. In section 4, multiply `core.qkv.weight` by 3 and redraw the query map. How do the entropy and
#    the maps change, and what does this have in common with the $\sqrt{d}$ experiment?

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["attention", "multi_head_attention"])
