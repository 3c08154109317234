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
# # 07 · Attention maps
#
# The most striking picture in the DINO paper (Caron et al., 2021, Fig. 1 and 3) is not a number: it
# is the attention of the **class token** in the last layer of a self-supervised ViT, drawn over the
# image. Without a single label or mask, the heads light up the main object, and different heads
# pick out different parts. This notebook draws those maps, builds them by hand, and turns them into
# masks the way the paper does.
#
# ```
# image (1, 3, S, S) ──► patch_embed + cls_token + pos_embed ──► blocks[:-1] ──► blocks[-1]
#                                                                  norm1, attn.qkv │
#              ┌───────────────────────────────────────────────────────────────────┘
#              ▼
#              A = softmax(q k^T / sqrt(d))   (1, heads, N+1, N+1)    one matrix per head
#              A[:, :, 0, 1:]                 (1, heads, N)           CLS row, patch columns
#              .reshape(1, heads, h, w)       one heat map per head   ──► masks (60% of mass)
# ```
#
# $S$ is the image size, $p$ the patch size, $h = w = S / p$ and $N = h w$: for the shipped model at
# its 72 px training size, a $6 \times 6$ grid of $N = 36$ patches. The cells print these numbers
# for the weights in use.
#
# **Which weights?** The notebook shows the DINO teacher shipped in
# `checkpoints/dino_imagenette96.pth` (ViT-tiny/12 trained on 72 px crops of Imagenette's training
# images, labels never used), or the file named by the environment variable `VITDINO_CHECKPOINT`.
# The shipped model is **small and was trained on a CPU**: 5.5M parameters, 96 px images, about a
# hundred epochs on a 2-core CPU. Its pictures are modest: heads that are more selective than
# chance, masks that sometimes find the object and sometimes a corner. To see the paper's pictures,
# run the same notebook on an official DINO file:
#
# ```
# # fetches dino_deitsmall8_pretrain.pth into the data root
# python -m vitdino_core.data download dino_vits8
# VITDINO_CHECKPOINT=/path/dino_deitsmall8_pretrain.pth make lab
# ```
#
# With an official /8 model at 480 px the heads outline the objects (each head a different part),
# the 60% masks are clean foreground silhouettes, and the PCA colours of section 7 paint the same
# part in the same colour across different images. Every figure's title names the weights it shows.
# When there is no file at all, every picture is drawn with a **randomly initialised** backbone of
# the same kind, and the titles say so.
#
# In this notebook we
# 1. compute the last-layer CLS attention per head by hand and check it against
#    `get_last_selfattention` and `vitdino_core.cls_attention`;
# 2. build DINO's thresholded masks (the patches holding 60% of the attention) by hand and check
#    them against `vitdino_core.threshold_masks`;
# 3. draw per-head maps and masks on photos and on Imagenette validation images;
# 4. put trained and random weights side by side and measure how concentrated their attention is;
# 5. feed larger images than the model was trained on (positions interpolated) to get finer maps.

# %%
import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from vitdino_core import (
    build_dataset,
    cls_attention,
    denormalize,
    load_image,
    overlay_masks,
    plot_attention_heads,
    threshold_masks,
    upsample,
)
from vitdino_core.attention_maps import mask_coverage, tint_masks
from vitdino_core.exercises import assert_checked, check_cls_attention, check_threshold_mask, pick
from vitdino_core.notebook import photo, save_figure, setup

env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer images in the statistics, every cell runs

# %% [markdown]
# ## 0. Which weights are we looking at?
#
# `course_weights()` reads `$VITDINO_CHECKPOINT` if it is set, else
# `checkpoints/dino_imagenette96.pth`, and returns the teacher backbone, a label for figure titles,
# a line saying what the weights are, and a randomly initialised backbone of the same shape as the
# baseline. A shipped file holds `{"teacher": backbone weights (fp16), "config": the training
# config}` and a `.json` record beside it; an official DINO file holds the weights only, and the
# architecture, depth and patch size are read from their shapes. A variable that names a missing
# file or weights that are not finite stops here with one line saying what to do.

# %%
from vitdino_core.notebook import course_weights

weights = course_weights("cpu")  # the teacher of $VITDINO_CHECKPOINT or the shipped file, eval mode
trained, random_model = weights.trained, weights.random  # trained is None without any checkpoint
WEIGHTS = weights.label  # names the weights in every figure title
ARCH, PATCH, IMG = weights.arch, weights.patch_size, weights.image_size
TRAINED_TAG = f"DINO teacher: {WEIGHTS}" if trained is not None else None
RANDOM_TAG = f"RANDOM init {ARCH}/{PATCH}"

MODEL = weights.model  # the model most pictures show: the trained one, else the random one
TAG = TRAINED_TAG if trained is not None else RANDOM_TAG + ": no trained checkpoint yet"
HEADS, GRID, DEPTH = weights.num_heads, weights.grid, weights.depth
print(weights.summary())

# %% [markdown]
# ## 1. The CLS token's attention, by hand
#
# Recall the last block (notebooks 02-03). The tokens $X \in \mathbb{R}^{(N+1) \times D}$ go through
# `norm1`, then `attn.qkv` gives per head $h$ the queries, keys and values
# $Q_h, K_h, V_h \in \mathbb{R}^{(N+1) \times d}$ with $d = D / H$, and
#
# $$A_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d}}\right)
#   \in \mathbb{R}^{(N+1) \times (N+1)} .$$
#
# Row 0 of $A_h$ says how the CLS token, whose final state *is* the image's feature, mixes the
# tokens. Dropping column 0 (what CLS takes from itself) leaves one weight per patch,
# $A_h[0, 1{:}]$, and the $N = h w$ weights fold back into the $h \times w$ patch grid in the same
# row-major order in which `patch_embed` flattened it.
#
# We run every block but the last as it is, then open up the last one as far as its queries and
# keys.

# %%
x = load_image(photo("grace_hopper"), IMG, PATCH)  # (1, 3, IMG, IMG): resized, cropped, normalised
B, _, H, W = x.shape
h, w = H // PATCH, W // PATCH  # the patch grid
N = h * w  # patches
D = MODEL.embed_dim
d = D // HEADS  # head dimension
print(
    f"{H} x {W} px image, {PATCH} px patches: {h} x {w} grid, N = {N} patches; D = {D}, {HEADS} "
    f"heads of d = {d}; {DEPTH - 1} blocks run as they are, then block {DEPTH - 1} opened"
)

with torch.no_grad():
    tokens = MODEL.patch_embed(x)  # (1, N, D)
    tokens = torch.cat([MODEL.cls_token.expand(B, -1, -1), tokens], dim=1)  # (1, N+1, D)
    tokens = tokens + MODEL.pos_embed  # (1, N+1, D): the training grid, no interpolation needed
    for blk in MODEL.blocks[:-1]:
        tokens = blk(tokens)  # (1, N+1, D)
    last = MODEL.blocks[-1]
    y = last.norm1(tokens)  # (1, N+1, D): pre-norm
    qkv = last.attn.qkv(y).reshape(B, N + 1, 3, HEADS, d)  # (1, N+1, 3, heads, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (1, heads, N+1, d)
print("queries", tuple(q.shape), "keys", tuple(k.shape))

# %% [markdown]
# ### Exercise `cls_attention` · difficulty 1 · 10 min
#
# Write `cls_attention_by_hand(q, k, h, w)`:
#
# * **input** the last block's queries and keys, `q` and `k` of shape $(B, H, N+1, d)$ (token 0 is
#   CLS, then the $N = h \cdot w$ patches in row-major order), and the grid size $h \times w$;
# * **output** the CLS maps $(B, H, h, w)$: the attention matrix
#   $A = \mathrm{softmax}(q k^\top / \sqrt{d})$, row 0 (what CLS draws from each token) without its
#   column 0, folded to the patch grid.
#
# The check uses a non-square grid ($3 \times 5$), so a fold in the wrong order shows.
#
# <details><summary>Hint</summary>
#
# `q @ k.transpose(-2, -1)` is $(B, H, N+1, N+1)$ with one row per query; the softmax normalises
# each row: `dim=-1`. `A[:, :, 0, 1:]` is CLS's row without CLS, and `.reshape(B, H, h, w)` folds it
# row by row.
#
# </details>


# %%
def cls_attention_by_hand(q: torch.Tensor, k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """q, k (B, heads, N+1, d) -> the CLS token's attention to each patch, (B, heads, h, w)."""
    ### BEGIN SOLUTION
    # task: softmax(q k^T / sqrt(d)), row 0 minus column 0, folded
    A = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, heads, N+1, N+1)
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)  # (B, heads, h, w)
    ### END SOLUTION


# %%
check_cls_attention(cls_attention_by_hand)

# %% [markdown]
# The core model computes the same matrix in `get_last_selfattention` (its last block runs the
# explicit softmax path of `Attention`), and `vitdino_core.cls_attention` takes row 0, drops column
# 0 and folds the grid. `cls_attention_fn` is yours once its check passes, the core's until then.

# %%
cls_attention_fn = pick("cls_attention", cls_attention_by_hand)
maps_by_hand = cls_attention_fn(q, k, h, w)  # (1, heads, h, w)
A = MODEL.get_last_selfattention(x)  # (1, heads, N+1, N+1)
torch.testing.assert_close(maps_by_hand, cls_attention(MODEL, x))  # (1, heads, h, w)
torch.testing.assert_close(A.sum(dim=-1), torch.ones(B, HEADS, N + 1))  # rows are distributions
cls_row = A[:, :, 0, :]  # (1, heads, N+1): what CLS draws from every token
print("attention matrices", tuple(A.shape), "-> CLS maps", tuple(maps_by_hand.shape))
for i in range(HEADS):
    print(
        f"head {i}: CLS keeps {cls_row[0, i, 0]:.3f} for itself, gives "
        f"{cls_row[0, i, 1:].sum():.3f} to the patches; largest patch weight "
        f"{cls_row[0, i, 1:].max():.3f} (uniform: {1 / N:.3f})"
    )
print("CLS maps by hand == vitdino_core.cls_attention")

# %% [markdown]
# The path from the matrix to the map, for head 0: row 0 of the $(N+1) \times (N+1)$ matrix, without
# its first entry, is a vector of $N$ patch weights; folded, it is an $h \times w$ picture the size
# of the patch grid.

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 7.6), gridspec_kw={"width_ratios": [1, 1.3]})
axes = axes.ravel()  # (4,): matrix, row 0, folded, over the image
im = axes[0].imshow(A[0, 0].numpy(), cmap="viridis")
axes[0].add_patch(plt.Rectangle((-0.5, -0.5), N + 1, 1, fill=False, ec="red", lw=2))
axes[0].set(title="head 0: A (N+1 x N+1), row 0 in red", xlabel="key token", ylabel="query token")
fig.colorbar(im, ax=axes[0], fraction=0.046)
axes[1].bar(range(1, N + 1), cls_row[0, 0, 1:].numpy(), color="tab:red")
axes[1].axhline(1 / N, color="gray", ls=":", lw=1)
axes[1].text(1, 1 / N, " uniform 1/N", va="bottom", color="gray")
axes[1].set(
    title="A[0, 1:]: CLS -> each patch", xlabel="patch index (row-major)", ylabel="attention weight"
)
im = axes[2].imshow(maps_by_hand[0, 0].numpy(), cmap="inferno")
axes[2].set(title=f"folded to {h} x {w}", xticks=[], yticks=[])
fig.colorbar(im, ax=axes[2], fraction=0.046)
axes[3].imshow(denormalize(x[0]).permute(1, 2, 0).numpy())
axes[3].imshow(upsample(maps_by_hand[0, 0], PATCH).numpy(), cmap="inferno", alpha=0.55)
axes[3].set(title="over the image", xticks=[], yticks=[])
fig.suptitle(f"From attention matrix to attention map ({TAG})")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Masks: the patches that hold 60% of the attention
#
# A heat map has no natural threshold, so the DINO paper (Sec. 4.2.2, Fig. 4, and its
# `visualize_attention.py`) keeps, for each head, the **smallest set of most-attended patches whose
# weights add up to a fraction $\tau$ of the map's mass**, with $\tau = 0.6$:
#
# 1. normalise the map to sum 1: $p_i = a_i / \sum_j a_j$;
# 2. sort ascending, $p_{(1)} \le \dots \le p_{(N)}$, and take the cumulative sum
#    $c_m = \sum_{i \le m} p_{(i)}$;
# 3. drop the patches whose cumulative sum stays $\le 1 - \tau$ (the least attended 40% of the
#    mass), keep the rest;
# 4. put the kept/dropped flags back in patch order (the official code does it with `argsort` of the
#    sort indices).
#
# A flat map needs about 60% of the patches to hold 60% of the mass; a sharp map needs only a few.

# %% [markdown]
# ### Exercise `threshold_mask` · difficulty 2 · 15 min
#
# Write `threshold_mask_by_hand(attn_map, keep=0.6)`:
#
# * **input** one attention map $(h, w)$ (its values need not sum to 1) and the fraction `keep`;
# * **output** a boolean mask $(h, w)$, `True` for the patches kept by steps 1-4 above.
#
# The check tries `keep` = 0.3, 0.6 and 0.9, sharp and flat maps, maps summing to less and to more
# than 1.
#
# <details><summary>Hint</summary>
#
# `val, idx = t.sort()` also returns where each sorted value came from; `idx.argsort()` is the way
# back: `flags_sorted[idx.argsort()]` puts each flag at its patch. `cumsum(dim=0)` adds up.
#
# </details>


# %%
def threshold_mask_by_hand(attn_map: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """One (h, w) map -> (h, w) bool: the most-attended patches holding `keep` of the mass."""
    ### BEGIN SOLUTION
    # task: normalise, sort, cumsum, keep where > 1 - keep, unsort
    flat = attn_map.flatten()  # (h*w,)
    val, idx = flat.sort()  # (h*w,) ascending, and where each value came from
    val = val / val.sum()  # (h*w,): sums to 1
    cumval = val.cumsum(dim=0)  # (h*w,): mass of the 1, 2, ... least attended patches
    kept_sorted = cumval > 1 - keep  # (h*w,) in sorted order: drop the bottom 40% of the mass
    return kept_sorted[idx.argsort()].reshape(attn_map.shape)  # (h, w): back to patch order
    ### END SOLUTION


# %%
check_threshold_mask(threshold_mask_by_hand)

# %% [markdown]
# `threshold_mask_fn` is yours once its check passes, the core's until then. One mask per head of
# the photo above, against `vitdino_core.threshold_masks`:

# %%
threshold_mask_fn = pick("threshold_mask", threshold_mask_by_hand)
# (heads, h, w)
masks_by_hand = torch.stack([threshold_mask_fn(maps_by_hand[0, i]) for i in range(HEADS)])
masks_core = threshold_masks(maps_by_hand)  # (1, heads, h, w) bool
assert torch.equal(masks_by_hand, masks_core[0])
for i in range(HEADS):
    held = maps_by_hand[0, i][masks_by_hand[i]].sum() / maps_by_hand[0, i].sum()
    assert held >= 0.6 - 1e-6
    print(
        f"head {i}: keeps {int(masks_by_hand[i].sum()):2d} of {N} patches, "
        f"holding {held:.1%} of its attention"
    )
print("masks by hand == vitdino_core.threshold_masks")

# %% [markdown]
# The cumulative curve shows the rule at work: sort the patches from most to least attended and add
# up their weights; the mask is everything left of where the curve crosses 60%. The dashed diagonal
# is a perfectly flat map.

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
for i in range(HEADS):
    p = maps_by_hand[0, i].flatten()  # (N,)
    p = (p / p.sum()).sort(descending=True).values  # (N,) most attended first
    ax.plot(
        range(1, N + 1),
        p.cumsum(0).numpy(),
        marker=".",
        label=f"head {i}: {int(masks_by_hand[i].sum())} patches",
    )
ax.plot([0, N], [0, 1], "k--", lw=0.8, label="flat map")
ax.axhline(0.6, color="red", lw=0.8)
ax.text(N, 0.61, "60% of the mass", ha="right", va="bottom", color="red")
ax.set(
    xlabel="number of most-attended patches",
    ylabel="cumulative attention",
    xlim=(0, N),
    ylim=(0, 1.02),
    title=f"How many patches hold 60%? ({TAG})",
)
ax.legend()
plt.show()

# %% [markdown]
# From here on we use `vitdino_core.cls_attention` and `vitdino_core.threshold_masks`, plus two
# drawing helpers: `plot_attention_heads` (the image, one map per head, their mean) and
# `overlay_masks` (each head's mask in its own colour). Both return a matplotlib figure.

# %%
attn_gh = cls_attention(MODEL, x)  # (1, heads, h, w)
display(
    plot_attention_heads(x[0], attn_gh[0], title=f"grace_hopper, CLS attention per head ({TAG})")
)
display(overlay_masks(x[0], threshold_masks(attn_gh)[0], title=f"grace_hopper, 60% masks ({TAG})"))

# %% [markdown]
# ## 3. Maps on photos and on Imagenette
#
# Now several photos at once: one row per image, one column per head, then all the heads' masks
# together, each head in its own colour (head 0 blue, head 1 orange, head 2 green; where masks
# overlap the colours mix). Each heat map is coloured on **its own** range (black = its least
# attended patch, yellow = its most attended), so even a nearly flat map looks contrasted: the masks
# column and the numbers in section 4 tell flat from sharp. The masks are tinted by
# `vitdino_core.attention_maps.tint_masks`, the drawing step of `overlay_masks`.


# %%
def as_picture(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) array in [0, 1]."""
    return denormalize(image).permute(1, 2, 0).numpy()  # (H, W, 3)


def attention_grid(images: torch.Tensor, names: list[str], model, title: str):
    """Rows: images; columns: the image, each head's CLS map, the mean map, all heads' 60% masks."""
    attn = cls_attention(model, images)  # (n, heads, h, w)
    masks = threshold_masks(attn)  # (n, heads, h, w)
    heads = attn.shape[1]
    ncols = heads + 3
    panel = min(1.9, 10.4 / ncols)  # inches: the figure fits the notebook's width
    fig, axes = plt.subplots(
        len(images), ncols, figsize=(panel * ncols, panel * len(images) + 0.6), squeeze=False
    )
    for r in range(len(images)):
        panels = (
            [as_picture(images[r])]
            + [attn[r, i].numpy() for i in range(heads)]
            + [attn[r].mean(0).numpy(), tint_masks(images[r], masks[r])]
        )
        titles = (
            ["image"]
            + [f"head {i}" for i in range(heads)]
            + ["mean of heads", "60% masks,\ncolour = head"]
        )
        for c, (panel, t) in enumerate(zip(panels, titles)):
            axes[r, c].imshow(panel, cmap="inferno" if panel.ndim == 2 else None)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(t)
        axes[r, 0].set_ylabel(names[r])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


PHOTO_NAMES = []
for name in ["grace_hopper", "astronaut", "chelsea", "coffee", "rocket", "china", "flower"]:
    try:
        photo(name)
        PHOTO_NAMES.append(name)
    except FileNotFoundError as err:  # the message says how to get it
        print(f"skipped: {err}")
PHOTO_NAMES = PHOTO_NAMES[:5]
photos = torch.cat([load_image(photo(n), IMG, PATCH) for n in PHOTO_NAMES])  # (n, 3, IMG, IMG)
fig = attention_grid(
    photos, PHOTO_NAMES, MODEL, f"Last-layer CLS attention on photos at {IMG} px ({TAG})"
)
plt.show()

# %% [markdown]
# The photos are much larger than the $S \times S$ pixels the model sees at its training size: a
# patch is $1/h$ of the image side, so a map has only $N$ cells (printed below). The Imagenette
# images are what the shipped model was trained on (from the training split; these are from the
# validation split, never seen): one per class.

# %%
print(f"at {IMG} px a patch is 1/{GRID} of the image side: {GRID * GRID} cells per map")
val_pil = build_dataset("imagenette", "val")  # PIL images
# (10,) first val image of each class
first_of_class = [val_pil.targets.index(c) for c in range(len(val_pil.classes))]
picks = first_of_class[:4] if FAST else first_of_class[:8]
val_images = torch.cat([load_image(val_pil[i][0], IMG, PATCH) for i in picks])  # (n, 3, IMG, IMG)
val_names = [val_pil.classes[val_pil.targets[i]] for i in picks]
print("classes:", ", ".join(val_names))
fig = attention_grid(
    val_images, val_names, MODEL, f"CLS attention on Imagenette val images ({TAG})"
)
plt.show()

# %% [markdown]
# ## 4. Trained versus random initialisation
#
# The same images through the DINO teacher and through an untrained network of the same shape. For
# each, the mean of the heads' maps and all heads' 60% masks. A random ViT has tiny weights
# (truncated normal, std 0.02), so its scores $q \cdot k / \sqrt{d}$ are all close to 0 and its
# softmax rows are close to uniform: its masks must spread over most of the image. Anything that
# concentrates on the object was learned.
#
# Two choices make the panels comparable. The maps are drawn as **attention relative to uniform**
# ($N \cdot a_i$: 1 means the patch gets its fair share $1/N$) on **one colour scale** for the whole
# figure, so a flat map looks flat. And the number in each mask panel is the **per-head coverage**,
# the fraction of patches in one head's 60% mask, averaged over the heads: the same measure as the
# bar chart below (the union of the heads' masks, which the tinted picture shows, is larger).

# %%
compare = torch.cat([photos[:2], val_images[:3]])  # (5, 3, IMG, IMG)
compare_names = PHOTO_NAMES[:2] + val_names[:3]
models = ([(TRAINED_TAG, trained)] if trained is not None else []) + [(RANDOM_TAG, random_model)]
# tag -> (n, heads, h, w)
compare_attn = {tag: cls_attention(model, compare) for tag, model in models}
# one colour scale for every map
VMAX = max(float((a.mean(1) * GRID**2).max()) for a in compare_attn.values())
ncols = 1 + 2 * len(models)
fig, axes = plt.subplots(
    len(compare),
    ncols,
    figsize=(1.95 * ncols + 0.6, 2.0 * len(compare) + 0.6),
    squeeze=False,
    layout="constrained",
)
for col, (tag, attn) in enumerate(compare_attn.items()):
    masks = threshold_masks(attn)  # (n, heads, h, w)
    # (n,): fraction of patches in one head's mask, mean over heads
    cover = mask_coverage(masks).mean(1)
    for r in range(len(compare)):
        ax_map, ax_mask = axes[r, 1 + 2 * col], axes[r, 2 + 2 * col]
        # 1 = uniform
        im = ax_map.imshow((attn[r].mean(0) * GRID**2).numpy(), cmap="inferno", vmin=0, vmax=VMAX)
        ax_mask.imshow(tint_masks(compare[r], masks[r]))
        ax_mask.text(
            1,
            4,
            f"{cover[r]:.0%}",
            color="white",
            bbox=dict(fc="black", alpha=0.6, lw=0),
        )
        if r == 0:
            short = textwrap.fill(tag.split(":")[0], 15)  # "RANDOM init\nvit_tiny/12"
            ax_map.set_title(f"{short}\nmean x N")
            ax_mask.set_title(f"{short}\n60% masks")
for r in range(len(compare)):
    axes[r, 0].imshow(as_picture(compare[r]))
    axes[r, 0].set_ylabel(compare_names[r])
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
axes[0, 0].set_title("image")
fig.colorbar(im, ax=axes[:, 1:], fraction=0.02, label="attention relative to uniform (1 = 1/N)")
if trained is not None:
    fig.suptitle(f"Trained vs random init at {IMG} px: {WEIGHTS}")
else:
    fig.suptitle(
        "RANDOM init only: no trained checkpoint yet.\nThe DINO teacher's columns appear here once "
        "checkpoints/dino_imagenette96.pth exists.",
    )
save_figure(fig, "07_attention_masks")
plt.show()

# %% [markdown]
# Pictures can flatter, so we also measure, over many validation images, two things per head:
#
# * **mask coverage**: the fraction of the $N$ patches needed to hold 60% of the attention (about
#   0.6 for a flat map);
# * **normalised entropy** of the map, $-\sum_i p_i \ln p_i / \ln N$: 1 for a flat map, 0 when one
#   patch takes all.

# %%
n_stats = 40 if FAST else 300
stats_idx = torch.randperm(len(val_pil), generator=torch.Generator().manual_seed(0))[
    :n_stats
].tolist()
# (n, 3, IMG, IMG)
stats_images = torch.cat([load_image(val_pil[i][0], IMG, PATCH) for i in stats_idx])


def attention_stats(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, averaged over the images: mask coverage and normalised entropy of the CLS map."""
    # (n, heads, h, w)
    attn = torch.cat([cls_attention(model, chunk) for chunk in stats_images.split(50)])
    coverage = mask_coverage(threshold_masks(attn)).mean(0)  # (heads,)
    p = attn.flatten(2) / attn.flatten(2).sum(-1, keepdim=True)  # (n, heads, N): each map sums to 1
    entropy = (-(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])).mean(0)  # (heads,)
    return coverage, entropy


results = {tag: attention_stats(model) for tag, model in models}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
width = 0.8 / len(results)
for j, (tag, (coverage, entropy)) in enumerate(results.items()):
    xs = np.arange(HEADS) + j * width
    axes[0].bar(xs, coverage.numpy(), width, label=tag)
    axes[1].bar(xs, entropy.numpy(), width, label=tag)
    print(
        f"{tag:>28}: coverage per head {np.round(coverage.numpy(), 2)}, "
        f"entropy {np.round(entropy.numpy(), 3)}"
    )
axes[0].axhline(0.6, color="gray", ls=":", lw=1)
axes[0].set(ylabel="fraction of patches in the 60% mask", ylim=(0, 1))
axes[1].set(ylabel="entropy / ln N", ylim=(0, 1.05))
for ax in axes:
    ax.set(
        xticks=np.arange(HEADS) + width * (len(results) - 1) / 2,
        xticklabels=[f"head {i}" for i in range(HEADS)],
    )
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=len(results), bbox_to_anchor=(0.5, -0.02))
fig.suptitle(
    f"How concentrated is the CLS attention? ({n_stats} val images at {IMG} px; {WEIGHTS})"
)
fig.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

random_coverage, random_entropy = results[RANDOM_TAG]
assert (random_entropy > 0.95).all(), "an untrained ViT's CLS attention is close to uniform"
assert (random_coverage > 0.45).all(), "so its masks need about 60% of the patches"
if trained is not None:
    trained_coverage, trained_entropy = results[TRAINED_TAG]
    sharper = int((trained_coverage < random_coverage - 0.02).sum())  # by more than 2 points
    print(
        f"{WEIGHTS}: mean per-head coverage {trained_coverage.mean():.0%} against random init's "
        f"{random_coverage.mean():.0%}, entropy {trained_entropy.mean():.3f} against "
        f"{random_entropy.mean():.3f}; {sharper} of {HEADS} heads more selective than random "
        "init (coverage lower by more than 2 points)"
    )

# %% [markdown]
# The random network's entropy is almost exactly 1 and its masks cover about 60% of the patches: it
# attends everywhere equally, and the "structure" in its heat maps is colour-scale noise. Whatever a
# trained teacher's heads show beyond that, lower entropy and smaller masks, was learned from
# nothing but agreement between crops; the last printed line compares the weights in use with it.
# How far training gets depends on training time. The official ViT-S/16 trained 300 epochs on
# ImageNet and its heads pick out objects. The shipped checkpoint trained 111 epochs on a 2-core CPU
# and is early in that process: its heads are more selective than the random network's (their 60%
# masks cover clearly fewer patches), but in the pictures they follow the objects only now and then:
# on some images the mean attention peaks on the object, on others in a corner or on the background.
# A longer run (notebook 09: the GPU configs), or official weights through `VITDINO_CHECKPOINT`, is
# what changes that.
#
# ## 5. More detail: larger input than in training
#
# A model sees at its training size a grid of only $h \times w$ patches, so its maps are coarse (the
# shipped model, trained on 72 px crops: $6 \times 6$). The ViT itself does not care about the
# number of tokens: feed it an image twice as large and there are four times as many patches, each
# still $p \times p$ pixels. Only the position embeddings have a fixed grid;
# `interpolate_pos_encoding` resizes them bicubically from the training grid to the new one (as the
# official DINO code does). Any size that is a multiple of the patch works. The official attention
# pictures use the same trick: /8 models trained at 224 px, drawn at 480 px (a $60 \times 60$ grid).
#
# One colour scale for the whole figure: a map over $n$ patches averages $1/n$, so we draw $n \cdot
# a_i$, the attention **relative to uniform**, which means the same at every size (1 = a fair
# share).

# %%
BIG = 3 * IMG if IMG < 160 else 480  # a small model: 3x its training size; 224 px: the paper's 480
sizes = [IMG, PATCH * round((IMG + BIG) / 2 / PATCH), PATCH * round(BIG / PATCH)]  # 3 sizes
DETAIL = sizes[1]  # the size the next sections draw at: finer than training, not far from it
for size in sizes[1:]:
    g = size // PATCH
    # (1, g*g+1, D)
    pos = MODEL.interpolate_pos_encoding(torch.zeros(1, g * g + 1, MODEL.embed_dim), size, size)
    assert pos.shape == (1, g * g + 1, MODEL.embed_dim)
    print(
        f"{size} px: {g} x {g} = {g * g} patches; "
        f"pos_embed {tuple(MODEL.pos_embed.shape)} -> {tuple(pos.shape)}"
    )

hires_names = PHOTO_NAMES[:3]
hires = {
    # (1, heads, size/p, size/p)
    (name, size): cls_attention(MODEL, load_image(photo(name), size, PATCH))
    for name in hires_names
    for size in sizes
}
# (g, g): mean of heads, 1 = uniform
rel = {key: a[0].mean(0) * a[0, 0].numel() for key, a in hires.items()}
# one scale, top 1% clipped
VMAX = float(torch.quantile(torch.cat([r.flatten() for r in rel.values()]), 0.99))
fig, axes = plt.subplots(
    len(hires_names),
    2 * len(sizes),
    figsize=(1.6 * 2 * len(sizes) + 0.8, 1.75 * len(hires_names) + 0.8),
    squeeze=False,
    layout="constrained",
)
for r, name in enumerate(hires_names):
    for c, size in enumerate(sizes):
        img = load_image(photo(name), size, PATCH)  # (1, 3, size, size)
        im = axes[r, 2 * c].imshow(rel[name, size].numpy(), cmap="inferno", vmin=0, vmax=VMAX)
        axes[r, 2 * c + 1].imshow(tint_masks(img[0], threshold_masks(hires[name, size])[0]))
        if r == 0:
            g = size // PATCH
            axes[r, 2 * c].set_title(f"{size} px: map\n{g} x {g} patches")
            axes[r, 2 * c + 1].set_title(f"{size} px:\n60% masks")
    axes[r, 0].set_ylabel(name)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, fraction=0.015, label="attention x number of patches (1 = uniform)")
fig.suptitle(
    f"One model at three input sizes (mean attention, 60% masks), positions interpolated:\n"
    f"{WEIGHTS}"
)
save_figure(fig, "07_attention_resolutions")
plt.show()

# %% [markdown]
# Larger inputs give finer maps for free, up to a point: at the largest size the patches are much
# smaller parts of the object than anything the model saw in training (the shipped model: 72 px
# global crops and 36 px local crops), so the maps can get noisier again. The DINO paper's crisp
# masks come from ViT-S/8 and ViT-B/8, where every patch is 8 pixels of a 224 px crop; with such a
# file in `VITDINO_CHECKPOINT` this figure shows 224, 352 and 480 px.
#
# ## 6. The CLS attention across depth
#
# Section 1 opened the last block. Every block has its own attention matrix, and row 0 of each says
# what the CLS token gathers at that depth. `vitdino_core.attention_maps.cls_attention_by_layer`
# runs the blocks one by one and asks each for its weights (`Block.forward(x,
# return_attention=True)`, the explicit softmax path), giving `(B, depth, heads, h, w)`; its last
# entry is `cls_attention`. Below: the mean over heads, relative to uniform, on one colour scale
# (the top 1% of values clipped so that a few hot patches do not wash out the rest), and the
# normalised entropy per block for the trained and the random network.

# %%
from vitdino_core.attention_maps import attention_entropy, cls_attention_by_layer

# (3, 3, S, S)
depth_images = torch.cat(
    [
        load_image(photo(PHOTO_NAMES[0]), DETAIL, PATCH),
        torch.cat([load_image(val_pil[i][0], DETAIL, PATCH) for i in picks[:2]]),
    ]
)
depth_names = [PHOTO_NAMES[0]] + val_names[:2]
by_layer = cls_attention_by_layer(MODEL, depth_images)  # (3, depth, heads, g, g)
assert by_layer.shape[1] == DEPTH  # one map per block
# (3, depth, g, g): mean of heads, 1 = uniform
rel_layers = by_layer.mean(2) * by_layer[0, 0, 0].numel()
VMAX = float(torch.quantile(rel_layers.flatten(), 0.99))

WRAP = min(DEPTH, 6)  # blocks per row: at most 6, so that the figure fits a notebook's width
ROWS = -(-DEPTH // WRAP)  # rows of blocks per image
n_rows = ROWS * len(depth_images)
fig = plt.figure(figsize=(1.4 * (WRAP + 1) + 0.8, 1.45 * n_rows + 3.6), layout="constrained")
top, bottom = fig.subfigures(2, 1, height_ratios=[1.45 * n_rows, 3.6])
axes = top.subplots(n_rows, WRAP + 1, squeeze=False)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
for r in range(len(depth_images)):
    axes[r * ROWS, 0].imshow(as_picture(depth_images[r]))
    axes[r * ROWS, 0].set_title(depth_names[r])
    for k in range(1, ROWS):
        axes[r * ROWS + k, 0].axis("off")
    for b in range(ROWS * WRAP):
        ax = axes[r * ROWS + b // WRAP, b % WRAP + 1]
        if b >= DEPTH:
            ax.axis("off")
            continue
        im = ax.imshow(rel_layers[r, b].numpy(), cmap="inferno", vmin=0, vmax=VMAX)
        ax.set_title(f"block {b}")
top.colorbar(im, ax=axes, fraction=0.02, label="x uniform")
top.suptitle(f"CLS attention in every block, mean of heads, at {DETAIL} px:\n{WEIGHTS}")

ax = bottom.subplots()
# (n, 3, IMG, IMG): val images at the training size
depth_stats = stats_images[: 20 if FAST else 100]
depth_entropy = {}  # tag -> (depth,) mean normalised entropy per block
for tag, model in models:
    ent = attention_entropy(cls_attention_by_layer(model, depth_stats))  # (n, depth, heads)
    mean, spread = ent.mean(dim=(0, 2)), ent.mean(0).std(1)  # (depth,): over images, then heads
    ax.errorbar(range(DEPTH), mean.numpy(), yerr=spread.numpy(), marker="o", capsize=3, label=tag)
    print(f"{tag:>40}: entropy / ln N per block {np.round(mean.numpy(), 3)}")
    depth_entropy[tag] = mean
if trained is not None:
    gap = depth_entropy[RANDOM_TAG] - depth_entropy[TRAINED_TAG]  # (depth,): > 0 = more selective
    most = f"; the largest gap in block {int(gap.argmax())}" if (gap > 0.02).any() else ""
    print(
        f"{WEIGHTS}: {int((gap > 0.02).sum())} of {DEPTH} blocks more selective than random init "
        f"(entropy lower by more than 0.02){most}"
    )
ax.set(
    xlabel="block",
    ylabel="entropy / ln N",
    xticks=range(DEPTH),
    title=(
        "How flat is the CLS attention at each depth?\n"
        f"{len(depth_stats)} val images at {IMG} px; bars: spread over heads"
    ),
)
ax.legend()
save_figure(fig, "07_attention_depth")
plt.show()

# the last block is section 1's map
assert torch.allclose(by_layer[:, -1], cls_attention(MODEL, depth_images))

# %% [markdown]
# The random network is flat (entropy about 1) in every block: nothing in its weights prefers one
# patch. A block whose entropy sits below that line has learned to be selective; the last printed
# line counts those blocks for the weights in use and names the one with the largest gap. In the
# shipped model every block has, but not in the same way, and the maps show that its selective
# blocks pick small groups of patches, an edge or a corner as often as the object. The DINO paper
# draws the last block because that is where, after a long training, the heads segment objects; with
# an official file the last row of maps above looks like the paper's Fig. 1.
#
# ## 7. What the patch features know: PCA as colours
#
# The attention maps are one row of one matrix. The **patch tokens** themselves
# (`forward_features(x)[:, 1:]`, after the final norm) hold far more: DINOv2's paper (Oquab et al.,
# 2023, Fig. 1) shows them by principal component analysis.
#
# 1. Put the patch features of several images together and compute their first principal component;
#    threshold it (here at 0.5 after scaling to $[0, 1]$) to separate foreground from background.
#    Its sign is arbitrary; we flip it so that the image border, more often background, is the low
#    end.
# 2. Fit 3 components on the **foreground** patches of all the images together, scale each to $[0,
#    1]$ and show them as red, green and blue on the patch grid, background black. Fitted jointly,
#    one colour means one direction in feature space in every image: with a strong model, the same
#    part of different objects (heads, wheels, legs) gets the same colour.
#
# One change for a small model: the largest variation among the patches of several images is then
# which image they come from (its overall colour and light), so we first subtract each image's mean
# patch feature (`center_per_image`), and the components describe what varies *inside* the images.

# %%
from vitdino_core.attention_maps import center_per_image, patch_features, pca_foreground, pca_rgb

pca_names = PHOTO_NAMES[:4] + val_names[:4]
# (8, 3, S, S)
pca_images = torch.cat(
    [load_image(photo(n), DETAIL, PATCH) for n in PHOTO_NAMES[:4]]
    + [load_image(val_pil[i][0], DETAIL, PATCH) for i in picks[:4]]
)
feats = center_per_image(patch_features(MODEL, pca_images))  # (8, g, g, D)
first, foreground = pca_foreground(feats)  # (8, g, g) in [0, 1], (8, g, g) bool
rgb = pca_rgb(feats, foreground)  # (8, g, g, 3), background black
print(
    f"patch features {tuple(feats.shape)}; foreground: "
    + ", ".join(
        f"{n} {f:.0%}" for n, f in zip(pca_names, foreground.float().mean(dim=(1, 2)).tolist())
    )
)

PANEL = min(1.9, 9.2 / len(pca_images))  # inches: the figure fits the notebook's width
fig, axes = plt.subplots(
    4,
    len(pca_images),
    figsize=(PANEL * len(pca_images) + 1.2, 4 * PANEL + 1.4),
    squeeze=False,
    layout="constrained",
)
for i in range(len(pca_images)):
    axes[0, i].imshow(as_picture(pca_images[i]))
    axes[0, i].set_title(pca_names[i])
    # one scale: fitted on all images
    im = axes[1, i].imshow(first[i].numpy(), cmap="viridis", vmin=0, vmax=1)
    axes[2, i].imshow(tint_masks(pca_images[i], foreground[i][None]))
    axes[3, i].imshow(rgb[i].numpy())
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
for r, label in enumerate(["image", "1st component", "foreground (> 0.5)", "3 components as RGB"]):
    axes[r, 0].set_ylabel(label)
fig.colorbar(im, ax=axes[1], fraction=0.015)
fig.suptitle(
    f"PCA of last-layer patch features, fitted over all {len(pca_images)} images at {DETAIL} px:\n"
    f"{WEIGHTS}",
)
save_figure(fig, "07_pca_parts")
plt.show()
assert (rgb[~foreground] == 0).all() and foreground.any()

# %% [markdown]
# With the shipped model the first component splits each image into two regions that follow large
# structures (for example a uniform against the wall and flag behind it, or a person against the
# sky) more often than objects, and the colours are mostly local texture and shade. With an official
# /8 model the first component is a clean figure/ground segmentation and the RGB colours mark object
# parts consistently across images: that is what "the features know the parts" means, and it is what
# made DINO's patch features useful for segmentation and correspondence.
#
# ## 8. Patch-to-patch correspondence between two photos
#
# If patch features describe what a patch shows, the same part in two different images should have
# similar features. For two images, compute the cosine similarity of every patch of one with every
# patch of the other, and keep the **mutual nearest neighbours**: patch $i$ of A and $j$ of B match
# when $j$ is $i$'s most similar patch in B *and* $i$ is $j$'s in A. `mutual_nearest_patches`
# returns the most similar of those pairs; we draw a line between the matched patch centres,
# coloured by similarity on one scale for the whole figure. Each pair of images is shown with the
# trained features and with the random network's.

# %%
from matplotlib.colors import Normalize

from vitdino_core.attention_maps import mutual_nearest_patches


def two_of_class(c: int) -> list[int]:
    """The first two val images of class c."""
    return [i for i, t in enumerate(val_pil.targets) if t == c][:2]


TOP = 15
pair_classes = [1, 4]  # English springer, church
pairs = [
    torch.cat([load_image(val_pil[i][0], DETAIL, PATCH) for i in two_of_class(c)])
    for c in pair_classes
]
matches = []  # (row title, pair images, index in A, index in B, similarity)
for c, pair in zip(pair_classes, pairs):
    for tag, model in models:
        fa, fb = patch_features(model, pair)  # (g, g, D) each
        ia, ib, sim = mutual_nearest_patches(fa, fb, top=TOP)  # (m,), (m,), (m,)
        matches.append((f"{val_pil.classes[c]}: {tag}", pair, ia, ib, sim))
        print(
            f"{val_pil.classes[c]:>18}, {tag}: {len(ia)} mutual matches shown, "
            f"cosine similarity {sim.min():.2f} to {sim.max():.2f}"
        )
norm = Normalize(min(float(m[4].min()) for m in matches), max(float(m[4].max()) for m in matches))
cmap = plt.get_cmap("plasma")

fig, axes = plt.subplots(
    len(models),
    len(pairs),
    figsize=(4.7 * len(pairs) + 0.8, 2.6 * len(models) + 0.6),
    squeeze=False,
    layout="constrained",
)
for n, (title, pair, ia, ib, sim) in enumerate(matches):
    ax, g = axes[n % len(models), n // len(models)], DETAIL // PATCH  # rows: models, columns: pairs
    ax.imshow(
        np.concatenate([as_picture(pair[0]), np.ones((DETAIL, 8, 3)), as_picture(pair[1])], axis=1)
    )
    for a, b, s_ab in zip(ia.tolist(), ib.tolist(), sim.tolist()):
        (ya, xa), (yb, xb) = divmod(a, g), divmod(b, g)  # row-major patch index -> grid row, column
        ax.plot(
            [(xa + 0.5) * PATCH, (xb + 0.5) * PATCH + DETAIL + 8],
            [(ya + 0.5) * PATCH, (yb + 0.5) * PATCH],
            "-o",
            color=cmap(norm(s_ab)),
            lw=1.2,
            ms=3,
        )
    ax.set_title(f"{title.split(':')[0]}, {len(ia)} matches\n{title.split(': ')[1]}")
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(
    plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.02, label="cosine similarity"
)
shown = f"{WEIGHTS} (top) and random init (bottom)" if trained is not None else RANDOM_TAG
fig.suptitle(f"Top-{TOP} mutual nearest patches at {DETAIL} px:\n{shown}")
save_figure(fig, "07_correspondence")
plt.show()

# %% [markdown]
# The random network's features are a fixed random function of the pixels: its best matches reach
# a similarity close to 1 (its features point in similar directions, as notebook 08 shows) and its
# lines join patches that look alike in colour and brightness. With the shipped model the trained
# features' similarities stay well below that (the printed ranges), and many lines still join
# background to background or texture to texture. With an official /8 model at 480 px the lines
# join the same parts (eye to eye, ear to ear) across different dogs: the property that DINO
# features are used for in correspondence and retrieval.
#
# ## What we built
#
# * the last-layer CLS attention by hand: tokens through every block but the last, `norm1`, `qkv`,
#   $\mathrm{softmax}(QK^\top/\sqrt{d})$, row 0 without its first column, folded to the patch grid;
#   equal to `get_last_selfattention` and `vitdino_core.cls_attention`;
# * DINO's masks by hand: normalise, sort, cumulative sum, keep the patches above the bottom 40% of
#   the mass; equal to `vitdino_core.threshold_masks`;
# * per-head maps and masks on photos and Imagenette images, trained next to random init, and two
#   numbers (per-head mask coverage, entropy) that separate a learned attention from a uniform one;
# * finer maps from larger inputs, with the position embeddings interpolated;
# * the CLS attention in every block (`cls_attention_by_layer`), the patch features as PCA colours
#   (`pca_foreground`, `pca_rgb`), and patch correspondences between images
#   (`mutual_nearest_patches`).
#
# Every picture here can be redrawn with official weights:
# `VITDINO_CHECKPOINT=/path/dino_deitsmall8_pretrain.pth`.
#
# Next, **08 · Linear probe**: attention maps show *where* the model looks; the kNN and linear-probe
# accuracies measure *what* its features know.
#
# ## More to try
#
# 1. Change `keep` in `threshold_masks` from 0.6 to 0.3 and 0.9. How does the coverage of the
#    trained and the random model change? Which value separates them best?
# 2. Look inside an earlier layer: adapt the by-hand cell of section 1 to open block 5 instead of
#    the last one (run `MODEL.blocks[:5]`, then take `MODEL.blocks[5]`'s attention) and draw each
#    head's CLS map, which section 6 averaged. Check your maps against
#    `cls_attention_by_layer(MODEL, x)[:, 5]`.
# 3. Train your own model for a few minutes (notebook 06 or `python -m vitdino_core.train --config
#    workshop_tiny`), export it with `vitdino_core.export_backbone`, set `VITDINO_CHECKPOINT` to the
#    file and rerun this notebook. How do the maps change with training time?

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["cls_attention", "threshold_mask"])
