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
# # 01 · Patch embedding
#
# A Transformer reads a *sequence of vectors*. Text gives it one vector per word; an image gives it
# a grid of pixels. The Vision Transformer's first idea (Dosovitskiy et al., 2021, "An Image is
# Worth 16x16 Words") is disarmingly simple: **cut the image into square patches, flatten each
# patch, and multiply it by one shared matrix.** Each patch becomes one token.
#
# ```
# image (B, 3, H, W)
#   │  cut into p x p patches              here: patchify
#   ▼
# patches (B, N, 3·p·p)      N = (H/p)·(W/p)
#   │  one shared linear layer E           here: the projection  ==  a strided Conv2d
#   ▼
# tokens (B, N, D)
#   │  + [CLS] token, + position embeddings          (preview here, built in 03)
#   ▼
# (B, N+1, D) ──► Transformer blocks: attention (02), MLP (03) ──► DINO (04-06)
# ```
#
# In this notebook we
# 1. draw a photo's patch grid and lay the patches out as a mosaic;
# 2. patchify by hand with `reshape` / `permute`, and check it against `vitdino_core.patchify`;
# 3. project the patches with a linear layer, then do *exactly* the same with a strided `Conv2d`
#    and see which weight reshaping makes the two equal;
# 4. load those weights into `vitdino_core.PatchEmbed`, the module every ViT in the course uses;
# 5. count tokens for different patch and image sizes, and meet the error for sizes that don't fit;
# 6. preview the class token and the position embeddings.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from matplotlib.patches import Rectangle
from PIL import Image

from vitdino_core import PatchEmbed, VisionTransformer, patchify
from vitdino_core.exercises import assert_checked, check_patch_embed, check_patchify, pick
from vitdino_core.notebook import photo, save_figure, setup

setup(seed=0)  # seeds every RNG, picks the device, prints what it chose

# %% [markdown]
# ## 1. A photo and its patch grid
#
# We take Grace Hopper's portrait (it ships with matplotlib), crop the centre square and resize it
# to the classic ViT input, $224 \times 224$. With patches of $p = 16$ pixels the image becomes a
# $14 \times 14$ grid: $N = 196$ patches.


# %%
def center_square(img: Image.Image, size: int) -> Image.Image:
    """Crop the largest centred square, then resize it to size x size."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


img = center_square(photo("grace_hopper"), 224)
x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255  # (3, 224, 224) in [0, 1]
x = x.unsqueeze(0)  # (1, 3, 224, 224): a batch of one
B, C, H, W = x.shape
p = 16
print(
    f"image batch {tuple(x.shape)}; patch {p} x {p} -> grid {H // p} x {W // p}"
    f" = {(H // p) * (W // p)} patches"
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
axes[0].imshow(img)
axes[0].set_title(f"{H} x {W} photo")
axes[1].imshow(img)
for k in range(0, H + 1, p):  # grid lines every p pixels
    axes[1].axhline(k - 0.5, color="white", lw=0.6)
    axes[1].axvline(k - 0.5, color="white", lw=0.6)
for i, j in [(0, 0), (0, 1), (1, 0), (6, 7), (13, 13)]:  # a few patches, labelled token i * w + j
    axes[1].text(
        j * p + p / 2,
        i * p + p / 2,
        str(i * (W // p) + j),
        color="black",
        ha="center",
        va="center",
        bbox={"boxstyle": "square,pad=0.15", "facecolor": "yellow", "edgecolor": "none"},
    )
axes[1].set_title(f"cut into {H // p} x {W // p} patches of {p} x {p}\n(numbers: token index)")
for ax in axes:
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
fig.tight_layout()
save_figure(fig, "01_patch_grid")
plt.show()

# %% [markdown]
# The tokens are numbered row by row ("raster order"): patch $(i, j)$ of an $h \times w$ grid is
# token $i \cdot w + j$. The order itself carries no meaning for the Transformer (we come back to
# that in section 7); it only has to be the same everywhere.
#
# ## 2. Patchify by hand
#
# In the paper's notation an image $x \in \mathbb{R}^{H \times W \times C}$ becomes a sequence of
# flattened patches $x_p \in \mathbb{R}^{N \times (P^2 \cdot C)}$ with $N = HW / P^2$. In PyTorch
# this is two `reshape`s and one `permute`, no loop and no copy until the last step:
#
# * split each spatial axis into (which patch, where inside the patch): $H = h \cdot p$,
#   $W = w \cdot p$;
# * move the two "which patch" axes to the front, next to the batch;
# * merge them into one sequence axis $N = h \cdot w$, and merge (channel, row, column) into one
#   vector.
#
# We flatten each patch *channel first*, as $(C, p, p)$, because that is the layout of a
# convolution's weight; the paper writes $(P, P, C)$. A learned linear layer does not care which
# order we pick, as long as it is always the same.
#
# ### Exercise `patchify` · difficulty 1 · 10 min
#
# Write `patchify_by_hand(images, patch)`:
#
# * **input** `images` of shape $(B, C, H, W)$ and the patch size `patch` $= p$, which divides $H$
#   and $W$ (they need not be equal);
# * **output** `(B, N, C*p*p)` with $N = h \cdot w$, $h = H/p$, $w = W/p$: row $i \cdot w + j$ holds
#   the $p \times p$ square at grid row $i$, column $j$, flattened channel-first as $(C, p, p)$.
#
# No loops: two `reshape`s and one `permute`. The check cell below tries your function on five image
# and patch sizes and compares it with `vitdino_core.patchify`.
#
# <details><summary>Hint</summary>
#
# `images.reshape(B, C, h, p, w, p)` splits each spatial axis into (which patch, where inside it).
# Then `permute` the two "which patch" axes $(h, w)$ next to the batch, followed by $(C, p, p)$, and
# merge with one last `reshape`.
#
# </details>


# %%
def patchify_by_hand(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): patches in raster order, each flattened channel-first."""
    B, C, H, W = images.shape  # (B, C, H, W)
    h, w = H // patch, W // patch
    ### BEGIN SOLUTION
    # task: (B, h*w, C*p*p), raster order, patches flattened as (C, p, p)
    t = images.reshape(B, C, h, patch, w, patch)  # (B, C, h, p, w, p): split H and W
    t = t.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p): grid position first
    return t.reshape(B, h * w, C * patch * patch)  # (B, N, C*p*p): one row per patch
    ### END SOLUTION


# %%
check_patchify(patchify_by_hand)

# %% [markdown]
# From here on `patchify_fn` is your function once its check passes, and `vitdino_core.patchify`
# until then, so the rest of the notebook runs either way.

# %%
patchify_fn = pick("patchify", patchify_by_hand, patchify)
patches = patchify_fn(x, p)  # (1, 196, 768)
print("patches:", tuple(patches.shape), "= (batch, tokens N, values per patch 3*16*16)")

# patch (i, j) really is the p x p square at row i, column j of the grid
i, j = 6, 7
square = x[0, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (3, p, p)
assert torch.equal(patches[0, i * (W // p) + j], square.reshape(-1))

# and it is exactly what the core package computes
assert torch.equal(patches, patchify(x, p))
print("patchify_fn == vitdino_core.patchify")

# %% [markdown]
# Undoing the reshapes puts each row back into a $3 \times p \times p$ square. Laying those squares
# out with a small gap shows the image as the Transformer receives it: $N$ separate pieces. The
# sequence starts with the top row of the grid, left to right, then the second row, and so on.

# %%
h, w = H // p, W // p
gap = 2
mosaic = np.ones((h * (p + gap), w * (p + gap), 3))  # white canvas
pieces = patches[0].reshape(h * w, C, p, p).permute(0, 2, 3, 1).numpy()  # (N, p, p, 3) for imshow
for n in range(h * w):
    r, c = divmod(n, w)  # token n sits at grid row r, column c
    mosaic[r * (p + gap) : r * (p + gap) + p, c * (p + gap) : c * (p + gap) + p] = pieces[n]

fig, axd = plt.subplot_mosaic(
    [["mosaic", "matrix"], ["strip", "strip"]],
    figsize=(10, 6.4),
    gridspec_kw={"height_ratios": [6, 1], "width_ratios": [1.1, 1]},
)
axd["mosaic"].imshow(mosaic)
axd["mosaic"].set_title(f"{h * w} patches, each {p} x {p} x 3 = {C * p * p} numbers")
axd["mosaic"].axis("off")
shown = axd["matrix"].imshow(
    patches[0, : 2 * w].numpy(), aspect="auto", cmap="gray", vmin=0, vmax=1
)
axd["matrix"].set_title(f"the same as a matrix: tokens 0 ... {2 * w - 1}\n(one row per patch)")
axd["matrix"].set_xlabel(f"value index 0 ... {C * p * p - 1} (all R, then G, then B)")
axd["matrix"].set_ylabel("token index")
fig.colorbar(shown, ax=axd["matrix"], label="pixel value")
row = np.ones((p, w * (p + gap), 3))
for n in range(w):
    row[:, n * (p + gap) : n * (p + gap) + p] = pieces[n]
axd["strip"].imshow(row)
axd["strip"].set_title(f"the start of the sequence: tokens 0 ... {w - 1}, the top row of the grid")
axd["strip"].axis("off")
fig.tight_layout()
save_figure(fig, "01_patch_mosaic")
plt.show()

# %% [markdown]
# ## 3. From patches to tokens: one shared linear map
#
# Each flattened patch $x_p^n \in \mathbb{R}^{3p^2}$ is mapped to a $D$-dimensional token by the
# same matrix $E \in \mathbb{R}^{(P^2 C) \times D}$ (plus a bias):
#
# $$z^n = x_p^n E + b, \qquad n = 1, \dots, N.$$
#
# "Shared" is the important word: a patch of sky top-left and one bottom-right go through the same
# $E$. Here $3 \cdot 16 \cdot 16 = 768$ numbers go in; we pick $D = 384$, the width of ViT-S (ViT-B
# uses 768).

# %%
D = 384
linear = nn.Linear(C * p * p, D)  # weight (D, 3*p*p) = E^T, bias (D,)
with torch.no_grad():
    tokens_linear = linear(patches)  # (1, 196, 768) @ (768, 384) -> (1, 196, 384)
print(
    "tokens:",
    tuple(tokens_linear.shape),
    "| E^T:",
    tuple(linear.weight.shape),
    "| b:",
    tuple(linear.bias.shape),
)

# %% [markdown]
# ## 4. The same thing as a strided convolution
#
# A `Conv2d` with `kernel_size = stride = p` slides a $p \times p$ window over the image in steps of
# $p$: the windows never overlap and cover every pixel once, so each output position sees exactly
# one patch. Each of its $D$ filters has a weight of shape $(C, p, p)$ and computes a dot product
# with the patch plus a bias: the same $x_p^n E + b$, with $E$'s columns folded into squares.
#
# The only bookkeeping is the shape of the weight: the conv stores $(D, C, p, p)$, the linear layer
# $(D, C \cdot p \cdot p)$. Because we flattened patches channel-first, one `reshape` turns one into
# the other. The conv's output is a $D$-channel image of size $h \times w$;
# `flatten(2).transpose(1, 2)` turns it into the sequence.

# %%
conv = nn.Conv2d(C, D, kernel_size=p, stride=p)  # weight (D, C, p, p), bias (D,)
with torch.no_grad():
    conv.weight.copy_(linear.weight.reshape(D, C, p, p))  # (D, 3*p*p) -> (D, 3, p, p)
    conv.bias.copy_(linear.bias)  # (D,)
    feature_map = conv(x)  # (1, 384, 14, 14): one D-vector per grid cell
    tokens_conv = feature_map.flatten(2).transpose(1, 2)  # (1, 384, 196) -> (1, 196, 384)
print("conv output:", tuple(feature_map.shape), "-> tokens:", tuple(tokens_conv.shape))

torch.testing.assert_close(tokens_conv, tokens_linear)
print("strided conv == linear layer on flattened patches")

# %% [markdown]
# Equal up to float rounding (the two compute the sums in different orders). The weights are stored
# the conv's way: the official DINO and timm code use the conv, so their weights
# (`patch_embed.proj.weight`, shape $(D, 3, p, p)$) load into ours unchanged.
#
# ### Exercise `patch_embed` · difficulty 2 · 10 min
#
# Write `embed_patches_by_hand(images, weight, bias, patch)`: the strided conv's tokens, computed as
# one linear map of the flattened patches.
#
# * **input** `images` $(B, C, H, W)$; the conv's `weight` $(D, C, p, p)$ and `bias` $(D,)$, as
#   `nn.Conv2d` stores them; the patch size $p$;
# * **output** the tokens $(B, N, D)$, equal to `conv(images).flatten(2).transpose(1, 2)`.
#
# <details><summary>Hint</summary>
#
# `patchify_fn(images, patch)` gives $(B, N, C p^2)$, each patch flattened channel-first. Flatten
# the weight in the same order, to $(D, C p^2)$: then each token is a patch times the weight's
# transpose, plus the bias, as in `nn.Linear`.
#
# </details>


# %%
def embed_patches_by_hand(
    images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch: int
) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, D) with a conv's weight (D, C, p, p) and bias (D,), as one matmul."""
    ### BEGIN SOLUTION
    # task: tokens (B, N, D), the conv's output, as one matrix product
    patches = patchify_fn(images, patch)  # (B, N, C*p*p)
    # (D, C, p, p) -> (D, C*p*p), channel-first like the patches
    E = weight.reshape(weight.shape[0], -1)
    return patches @ E.T + bias  # (B, N, C*p*p) @ (C*p*p, D) -> (B, N, D)
    ### END SOLUTION


# %%
check_patch_embed(embed_patches_by_hand)

# %%
embed_fn = pick("patch_embed", embed_patches_by_hand)
with torch.no_grad():
    tokens_mine = embed_fn(x, conv.weight, conv.bias, p)  # (1, 196, 384)
torch.testing.assert_close(tokens_mine, tokens_conv)
print("embed_fn with the conv's weights == the strided conv")

# %% [markdown]
# ## 5. The core module: `vitdino_core.PatchEmbed`
#
# `PatchEmbed(img_size, patch_size, in_chans, embed_dim)` holds exactly this conv (named `proj`, as
# in DINO) and checks the input's shape. We copy our conv's weights into it and compare with both of
# our versions. (It computes the tokens as the conv on every device; which of the two forms is
# faster is an engineering question: notebook 09, Appendix A.)

# %%
patch_embed = PatchEmbed(img_size=H, patch_size=p, in_chans=C, embed_dim=D)
print(
    {name: tuple(t.shape) for name, t in patch_embed.state_dict().items()},
    "| num_patches:",
    patch_embed.num_patches,
)
patch_embed.proj.load_state_dict(conv.state_dict())
with torch.no_grad():
    tokens = patch_embed(x)  # (1, 196, 384)

torch.testing.assert_close(tokens, tokens_linear)
torch.testing.assert_close(tokens, tokens_conv)
assert patch_embed.num_patches == (H // p) * (W // p)
print("vitdino_core.PatchEmbed == our conv == our linear layer")

# %% [markdown]
# From here on the course uses `PatchEmbed` (inside `VisionTransformer` it is `model.patch_embed`).
#
# ## 6. How many tokens?
#
# The number of tokens, $N = (H/p)(W/p)$, sets the cost of everything that follows: the MLPs grow
# like $N$ and attention like $N^2$ (notebook 02). Halving the patch size quadruples $N$. The
# course's models use these combinations:
#
# * **ViT-B/16 at 224 px**: the original ViT and DINO setting, $14 \times 14 = 196$ patches;
# * **ViT-B/12 at 228 px**: `vit_base()`'s default patch is 12, and 224 is not a multiple of 12, so
#   the default image size is the nearest multiple, 228 ($19 \times 19 = 361$ patches);
# * **ViT-S/8 at 96 px**: the Imagenette-96 training setting, $12 \times 12 = 144$ patches.
#
# A "–" in the table marks an image size that the patch size does not divide.

# %%
sizes, patch_sizes = (224, 228, 96), (16, 12, 8)
print(f"{'':>12}" + "".join(f"{f'patch {q}':>22}" for q in patch_sizes))
for size in sizes:
    cells = []
    for q in patch_sizes:
        if size % q:
            cells.append(f"{'–':>22}")
        else:
            n = (size // q) ** 2
            cells.append(f"{f'{size // q}x{size // q} = {n} (+1 CLS)':>22}")
    print(f"{f'{size} px':>12}" + "".join(cells))

for size, q in [(224, 16), (228, 12), (96, 8), (96, 12)]:
    probe = torch.zeros(1, 3, size, size)  # (1, 3, size, size)
    assert patchify(probe, q).shape == (1, (size // q) ** 2, 3 * q * q)

# %%
examples = [(224, 16), (228, 12), (96, 8)]
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9))
for ax, (size, q) in zip(axes, examples):
    ax.imshow(center_square(photo("grace_hopper"), size), extent=(0, size, size, 0))
    for k in range(0, size + 1, q):
        ax.axhline(k, color="white", lw=0.5)
        ax.axvline(k, color="white", lw=0.5)
    ax.add_patch(Rectangle((0, 0), q, q, fill=False, edgecolor="yellow", lw=2))  # one patch
    ax.set_title(f"{size} px, patch {q}: {(size // q) ** 2} tokens")
    ax.set_xticks([0, size]), ax.set_yticks([0, size])
fig.suptitle("The same photo at three (image size, patch size) settings; yellow: one patch")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Sizes that don't fit
#
# If the patch size does not divide the image, the last row and column of pixels would fall off the
# grid (a plain strided conv silently drops them). The core package refuses instead, and its message
# says what to resize to:

# %%
for make_bad_call in (
    lambda: patch_embed(torch.zeros(1, 3, 225, 225)),  # 225 is not a multiple of 16
    lambda: patchify(torch.zeros(1, 3, 224, 224), 12),  # 224 is not a multiple of 12
    lambda: patch_embed(torch.zeros(3, 224, 224)),  # a single image without its batch dimension
):
    try:
        make_bad_call()
        raise AssertionError("this call should have raised a ValueError")
    except ValueError as err:
        print(f"ValueError: {err}\n")

# %% [markdown]
# (A `VisionTransformer` accepts any image size that *is* a multiple of its patch size, not only the
# one it was built for; notebook 03 shows how the position embeddings are resized for that.)
#
# ## 7. Preview of 03: the class token and position embeddings
#
# Patch tokens know *what* is in a patch, not *where* it was. Watch: shuffle the patches of the
# photo and embed the shuffled image. The tokens are the same vectors, only in a different order.

# %%
g = torch.Generator().manual_seed(0)
perm = torch.randperm(h * w, generator=g)  # (N,): a random order of the patches
shuffled_patches = patches[:, perm]  # (1, N, 3*p*p)
shuffled = (
    shuffled_patches.reshape(1, h, w, C, p, p)  # (1, h, w, C, p, p): undo the patchify
    .permute(0, 3, 1, 4, 2, 5)  # (1, C, h, p, w, p)
    .reshape(1, C, H, W)
)  # (1, C, H, W): a scrambled image
with torch.no_grad():
    tokens_shuffled = patch_embed(shuffled)  # (1, N, D)
torch.testing.assert_close(tokens_shuffled, tokens[:, perm])  # the same tokens, reordered

fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.9))
axes[0].imshow(x[0].permute(1, 2, 0).numpy())
axes[0].set_title("original")
axes[1].imshow(shuffled[0].permute(1, 2, 0).numpy())
axes[1].set_title("patches shuffled: the same tokens")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# Self-attention (notebook 02) treats its input as a *set*: reorder the tokens and its output is
# reordered the same way, nothing else changes. So without help, a ViT could not tell these two
# images apart. The ViT adds two learned pieces before the first block:
#
# $$z_0 = [\,x_\text{class};\; x_p^1 E;\; x_p^2 E;\; \dots;\; x_p^N E\,] + E_\text{pos}, \qquad
# E \in \mathbb{R}^{(P^2 C) \times D},\; E_\text{pos} \in \mathbb{R}^{(N+1) \times D}.$$
#
# * **`cls_token`** $x_\text{class} \in \mathbb{R}^{D}$: one extra learned token put in front of the
#   sequence. It belongs to no patch; through attention it gathers information from all of them, and
#   its final state is the image's feature: what DINO trains and what kNN / linear probes read (08).
# * **`pos_embed`** $E_\text{pos}$: one learned vector per position, added to the token there, so
#   that "the same patch at another place" becomes a different token.
#
# Here is that step by hand, checked against a one-block `VisionTransformer` from the core package
# (notebook 03 builds the rest of it):

# %%
vit = VisionTransformer(img_size=H, patch_size=p, embed_dim=D, depth=1, num_heads=6)
print("cls_token", tuple(vit.cls_token.shape), "| pos_embed", tuple(vit.pos_embed.shape))
with torch.no_grad():
    z = vit.patch_embed(x)  # (1, N, D) patch tokens
    z = torch.cat([vit.cls_token.expand(B, -1, -1), z], dim=1)  # (1, N+1, D): CLS first
    z = z + vit.pos_embed  # (1, N+1, D): add one position vector per token
    torch.testing.assert_close(z, vit.prepare_tokens(x))

    # with positions added, the shuffled image no longer gives the same (reordered) tokens
    z_shuffled = vit.prepare_tokens(shuffled)  # (1, N+1, D)
    same = torch.allclose(z_shuffled[:, 1:], z[:, 1:][:, perm])
print("tokens of the shuffled image equal the reordered tokens once positions are added:", same)
assert not same

# %% [markdown]
# ## What we built
#
# * **patchify** by `reshape` / `permute`: $(B, C, H, W) \to (B, N, C p^2)$, row-major over the
#   grid, equal to `vitdino_core.patchify` (exercise `patchify`);
# * the **patch embedding** $z^n = x_p^n E + b$ as a linear layer, and as a `Conv2d` with
#   `kernel_size = stride = p` whose weight is the linear weight reshaped to $(D, C, p, p)$
#   (exercise `patch_embed`);
# * `vitdino_core.PatchEmbed` (`patch_embed.proj`), which the course uses from now on;
# * the token count $N = (H/p)(W/p)$ (196 at 224/16, 361 at 228/12, 144 at 96/8) and the
#   `ValueError` for sizes that do not fit;
# * a first look at `cls_token` and `pos_embed`: without positions, a shuffled image is the same set
#   of tokens.
#
# Next, **02 · Attention**: how the tokens talk to each other.
#
# ## More to try
#
# 1. Flatten patches in the paper's order $(p, p, C)$ instead of $(C, p, p)$: change the `permute`
#    in `patchify_by_hand`. Which reshape of `linear.weight` now makes the conv equal to the linear
#    layer?
# 2. *Overlapping* patches: give the conv `kernel_size=16, stride=8` and count the tokens at 224 px.
#    Why can `patchify_by_hand` no longer produce its input, and how does
#    `torch.nn.functional.unfold` help?
# 3. Set `conv.weight` to 1/768 everywhere and the bias to 0. What does each token's value then
#    mean? Show `feature_map[0, 0]` as an image.
#
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["patchify", "patch_embed"])
