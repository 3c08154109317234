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
# # 04 · Multi-crop: the views DINO learns from
#
# *Exercise version.* Write the functions marked `NotImplementedError`; each check cell
# tells you what is wrong or that it passed. The complete notebook is `../04_multicrop.py`.
# (Made by `make exercises` from it; edits here are yours, `make exercises` overwrites them.)
#
# DINO has no labels. What it has is a rule: *two views of the same image should get the same
# output*. The whole job of the data pipeline is to make those views different enough that matching
# them means understanding the image, and not, say, matching colours. DINO's **multi-crop** recipe
# (Caron et al., 2020 and 2021) cuts each image into
#
# * **2 global crops**, each covering 40-100% of the image, resized to 224 x 224: seen by the
#   teacher *and* the student;
# * **N local crops** (8 in DINO), each covering only 5-40%, resized to 96 x 96: seen by the student
#   only;
#
# and then recolours, flips, blurs and solarizes them. The student must predict, from a small local
# crop, what the teacher says about a global view of the whole image: **local-to-global
# correspondence**. Small crops are cheap (96² pixels are 36 patches of 16 instead of 196), so many
# views cost little.
#
# ```
# image ──► global 1 (224)  ─┬─► teacher ──► targets for every other view
#       ──► global 2 (224)  ─┤
#       ──► local 1…N (96)  ─┴─► student ──► predictions      (loss: notebook 05)
# ```
#
# In this notebook we
# 1. build the augmentation pipeline by hand with `torchvision.transforms.v2` and check that it
#    equals `vitdino_core.MultiCropAugmentation`, bit for bit, for the same random seed;
# 2. look at the crops of one photo, and of several Imagenette images;
# 3. draw the crop boxes on the original image and measure the crop areas of global and local views;
# 4. batch the crops view by view (`collate_multicrop`) and run them through the network with one
#    backbone pass per resolution (`MultiCropWrapper`).

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitdino_core import (
    DINOHead,
    MultiCropAugmentation,
    MultiCropWrapper,
    VisionTransformer,
    build_dataset,
    collate_multicrop,
)
from vitdino_core.exercises import assert_checked, check_local_view, check_stack_views, pick
from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD, crop_box
from vitdino_core.notebook import photo, save_figure, setup

torch.set_num_threads(1)  # like a DataLoader worker, which augments one image at a time
env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer images, every cell still runs

# %% [markdown]
# ## 1. The recipe
#
# DINO's augmentations (`DataAugmentationDINO` in the official code), after the crops of BYOL and
# SimCLR:
#
# | view | crop (area) | size | flip | colour jitter (0.4, 0.4, 0.2, 0.1) | gray | blur | solarize |
# |---|---|---|---|---|---|---|---|
# | global 1 | 0.4 - 1.0 | 224 | p 0.5 | p 0.8 | p 0.2 | **p 1.0** | - |
# | global 2 | 0.4 - 1.0 | 224 | p 0.5 | p 0.8 | p 0.2 | p 0.1 | **p 0.2** |
# | local ×N | 0.05 - 0.4 | 96 | p 0.5 | p 0.8 | p 0.2 | p 0.5 | - |
#
# * **RandomResizedCrop**: pick an area fraction uniformly in the range, an aspect ratio
#   log-uniformly in $[3/4, 4/3]$, a random position; cut, and resize to the output size with
#   **bicubic** interpolation.
# * **Colour jitter** changes brightness and contrast by up to ±40%, saturation by ±20%, hue by ±0.1
#   (in random order), 80% of the time: the network cannot match views by their colour histogram.
# * **Gaussian blur** with $\sigma$ uniform in $[0.1, 2]$ (PIL's `radius` in the official code is
#   this $\sigma$). The two global views are *asymmetric*: one is always blurred, the other rarely,
#   but sometimes **solarized** (every pixel $\ge 128$ becomes $255 - $ pixel).
# * Finally, convert to floats in $[0, 1]$ and normalise with the ImageNet mean and standard
#   deviation.
#
# We build the three pipelines with `torchvision.transforms.v2`, which works on uint8 image tensors.

# %%
G, L, n_local = 224, 96, 8  # DINO's sizes: 224-pixel global crops, 8 local crops of 96 pixels
bicubic = v2.InterpolationMode.BICUBIC
blur_kernel = 13  # 2 * ceil(3 * 2.0) + 1: the kernel covers +-3 sigma at the largest sigma


def flip_jitter_gray() -> list:
    return [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply(
            [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
        ),
        v2.RandomGrayscale(p=0.2),
    ]


def blur_by_hand(p: float) -> v2.Transform:
    return v2.RandomApply([v2.GaussianBlur(kernel_size=blur_kernel, sigma=(0.1, 2.0))], p=p)


# uint8 -> normalised float
to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def random_crop(size: int, scale: tuple[float, float]) -> v2.Transform:
    """A random crop of `scale` of the image's area, resized bicubically to size x size."""
    return v2.RandomResizedCrop(size, scale=scale, interpolation=bicubic, antialias=True)


my_global1 = v2.Compose(
    [random_crop(G, (0.4, 1.0)), *flip_jitter_gray(), blur_by_hand(1.0), *to_float]
)
my_global2 = v2.Compose(
    [
        random_crop(G, (0.4, 1.0)),
        *flip_jitter_gray(),
        blur_by_hand(0.1),
        v2.RandomSolarize(threshold=128, p=0.2),
        *to_float,
    ]
)

# %% [markdown]
# ### Exercise `local_view` · difficulty 1 · 10 min
#
# The two global pipelines are written above. Write `local_view_by_hand(size, scale)`, the
# pipeline of one **local** view, from the table's last row:
#
# * **input** the output `size` in pixels and the crop's `scale`, a range of area fractions such as
#   `(0.05, 0.4)`;
# * **output** a `v2.Compose` that turns a uint8 image $(3, H, W)$ into one normalised float crop
#   $(3, \text{size}, \text{size})$.
#
# Use the pieces above (`random_crop`, `flip_jitter_gray()`, `blur_by_hand(p)`, `to_float`) in the
# recipe's order, so that the same seed gives the same crop as `vitdino_core`, bit for bit.
#
# <details><summary>Hint</summary>
#
# Like `my_global1`, with the local crop's size and scale and the local views' blur probability
# (0.5); no solarization.
#
# </details>


# %%
def local_view_by_hand(size: int, scale: tuple[float, float]) -> v2.Compose:
    """uint8 (3, H, W) -> one local view (3, size, size): crop, flip/jitter/gray, blur, float."""
    raise NotImplementedError("return the v2.Compose of one local view, in the recipe's order")


# %% tags=["raises-exception"]
check_local_view(local_view_by_hand)

# %% [markdown]
# With the local pipeline (yours once its check passes), the whole multi-crop augmentation:

# %%
local_view_fn = pick("local_view", local_view_by_hand)
my_local = local_view_fn(L, (0.05, 0.4))


def multicrop_by_hand(image) -> list[torch.Tensor]:
    x = v2.ToImage()(image)  # PIL -> (3, H, W) uint8 tensor
    # 2 x (3, G, G), N x (3, L, L)
    return [my_global1(x), my_global2(x)] + [my_local(x) for _ in range(n_local)]


img = photo("grace_hopper")  # a PIL image, 512 x 600
crops = multicrop_by_hand(img)
print(
    f"photo {img.size[0]} x {img.size[1]} -> {len(crops)} crops:",
    [tuple(c.shape) for c in crops[:3]],
    "...",
)

# %% [markdown]
# The core class applies its transforms in the same order, global 1, then global 2, then the locals,
# so the same seed gives the same random draws, and the same crops to the last bit.

# %%
aug = MultiCropAugmentation(
    global_crops_scale=(0.4, 1.0),
    local_crops_scale=(0.05, 0.4),
    local_crops_number=n_local,
    global_crops_size=G,
    local_crops_size=L,
)
for seed in range(3):
    torch.manual_seed(seed)
    mine = multicrop_by_hand(img)
    torch.manual_seed(seed)
    core = aug(img)
    assert len(mine) == len(core) == aug.ncrops == 2 + n_local
    for a, b in zip(mine, core):
        assert torch.equal(a, b)
print(
    "multicrop_by_hand == vitdino_core.MultiCropAugmentation for 3 seeds"
    f" ({aug.ncrops} crops each, exactly equal)"
)


# %% [markdown]
# From here on we use `MultiCropAugmentation`.
#
# ## 2. What the crops look like
#
# The crops are normalised tensors; to show them we undo the normalisation. The figure keeps the
# true sizes: a global crop is 224 pixels wide, a local one 96.


# %%
def to_display(t: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) crop -> (H, W, 3) numbers in [0, 1] for imshow."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


def show_multicrop(crops: list[torch.Tensor], title: str):
    """2 global crops (tall) and 8 local crops (two rows of four), at their true relative sizes."""
    mosaic = [["g1", "g2", "l1", "l2", "l3", "l4"], ["g1", "g2", "l5", "l6", "l7", "l8"]]
    fig, axd = plt.subplot_mosaic(
        mosaic, figsize=(10.5, 4.2), width_ratios=[G, G, L, L, L, L], layout="constrained"
    )
    notes = ["blur p 1.0", "blur p 0.1, solarize p 0.2"]
    for i, crop in enumerate(crops):
        key = f"g{i + 1}" if i < 2 else f"l{i - 1}"
        axd[key].imshow(to_display(crop))
        label = f"global {i + 1}: {G} px\n{notes[i]}" if i < 2 else f"local {i - 1}\n{L} px"
        axd[key].set_title(label)
        axd[key].set(xticks=[], yticks=[])
    fig.suptitle(title)
    return fig


torch.manual_seed(0)
fig = show_multicrop(
    aug(img),
    "One photo, ten views: 2 global crops (teacher and student) + 8 local crops (student only)",
)
save_figure(fig, "04_multicrop_gallery")
plt.show()

# %% [markdown]
# Notice what the student is asked to do: from a local crop that shows only part of a medal, or one
# eye, under other colours, predict what the teacher says about a view of the whole portrait. Colour
# is useless for this (it is jittered or removed), so the network has to rely on shapes and parts.
#
# The same recipe on Imagenette, the course's data set. Its images are 96 x 96 pixels, so here we
# use 96-pixel global and 48-pixel local crops, 4 local crops per image (the project's
# `imagenette_small` training config uses these sizes).

# %%
imagenette = build_dataset("imagenette", "train")
aug96 = MultiCropAugmentation(local_crops_number=4, global_crops_size=96, local_crops_size=48)
rng = np.random.default_rng(0)
targets = np.array(imagenette.targets)
classes = rng.choice(len(imagenette.classes), size=4 if FAST else 6, replace=False)
picks = [int(rng.choice(np.flatnonzero(targets == c))) for c in classes]

mosaic = [[f"r{r}c{c}" for c in range(7)] for r in range(len(picks))]
fig, axd = plt.subplot_mosaic(
    mosaic, figsize=(10, 1.6 * len(picks)), width_ratios=[96, 96, 96, 48, 48, 48, 48]
)
torch.manual_seed(0)
for r, index in enumerate(picks):
    image, label = imagenette[index]  # PIL 96 x 96, class index
    views = aug96(image)  # 2 x (3, 96, 96), 4 x (3, 48, 48)
    axd[f"r{r}c0"].imshow(image)
    axd[f"r{r}c0"].set_ylabel(imagenette.classes[label])
    for c, view in enumerate(views, start=1):
        axd[f"r{r}c{c}"].imshow(to_display(view))
for key, ax in axd.items():
    ax.set(xticks=[], yticks=[])
for c, name in enumerate(
    ["original", "global 1", "global 2", "local 1", "local 2", "local 3", "local 4"]
):
    axd[f"r0c{c}"].set_title(name)
fig.suptitle("Multi-crop on Imagenette (96 px images: 96 px global, 48 px local crops)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Where the crops come from
#
# `RandomResizedCrop` first draws a box $(top, left, height, width)$ and then resizes what is
# inside. In `torchvision.transforms.v2` the first half is the method `make_params` (`_get_params`
# before torchvision 0.21; `crop_box` from `vitdino_core.multicrop` calls whichever yours has). We
# check that drawing the box and cropping it ourselves gives exactly the transform's output, so the
# boxes we draw are the real ones.

# %%
x = v2.ToImage()(img)  # (3, 600, 512) uint8
H, W = x.shape[-2:]
global_rrc = v2.RandomResizedCrop(G, scale=(0.4, 1.0), interpolation=bicubic, antialias=True)
local_rrc = v2.RandomResizedCrop(L, scale=(0.05, 0.4), interpolation=bicubic, antialias=True)

torch.manual_seed(7)
box = crop_box(global_rrc, x)  # {'top', 'left', 'height', 'width'} in pixels of the original
# (3, 224, 224)
by_hand = TF.resized_crop(x, **box, size=[G, G], interpolation=bicubic, antialias=True)
torch.manual_seed(7)
assert torch.equal(by_hand, global_rrc(x))
print("box", box, "-> crop", tuple(by_hand.shape), "== RandomResizedCrop's output")

# %%
torch.manual_seed(1)
boxes = [("global", crop_box(global_rrc, x)) for _ in range(2)] + [
    ("local", crop_box(local_rrc, x)) for _ in range(6)
]
colors = plt.cm.tab10(np.arange(len(boxes)))

mosaic = [["orig", "orig", f"v{2 * r}", f"v{2 * r + 1}"] for r in range(4)]
fig, axd = plt.subplot_mosaic(mosaic, figsize=(9, 7.6))
axd["orig"].imshow(x.permute(1, 2, 0).numpy())
for i, ((kind, b), color) in enumerate(zip(boxes, colors)):
    name = f"global {i + 1}" if kind == "global" else f"local {i - 1}"
    axd["orig"].add_patch(
        Rectangle(
            (b["left"], b["top"]),
            b["width"],
            b["height"],
            fill=False,
            color=color,
            lw=3 if kind == "global" else 1.8,
            ls="-" if kind == "global" else "--",
        )
    )
    axd["orig"].text(
        b["left"] + 4, b["top"] + 18, name, color="white", bbox=dict(color=color, pad=1)
    )
    size = G if kind == "global" else L
    # (3, size, size)
    crop = TF.resized_crop(x, **b, size=[size, size], interpolation=bicubic, antialias=True)
    ax = axd[f"v{i}"]
    ax.imshow(crop.permute(1, 2, 0).numpy())
    area = b["height"] * b["width"] / (H * W)
    ax.set_title(f"{name}\n{100 * area:.0f}% of the area", color=color)
    ax.set(xticks=[], yticks=[])
    for spine in ax.spines.values():
        spine.set(color=color, lw=2)
axd["orig"].set(title=f"crop boxes on the original ({W} x {H})", xticks=[], yticks=[])
fig.suptitle("Global boxes (solid) cover most of the photo, local boxes (dashed) only parts of it")
fig.tight_layout()
save_figure(fig, "04_crop_boxes")
plt.show()

# %% [markdown]
# How much of the image does each kind of view see? We draw many boxes and look at the area they
# cover. The area fraction is drawn uniformly in the scale range; when the box with the drawn aspect
# ratio does not fit in the image, the transform tries again (up to 10 times) before falling back to
# a centre crop. That is why large global boxes are rarer than the uniform draw suggests: a box of
# 95% of the area only fits if its aspect ratio is close to the photo's own.

# %%
n_boxes = 1000 if FAST else 5000
torch.manual_seed(0)
areas = {}
for kind, rrc in (("global", global_rrc), ("local", local_rrc)):
    bs = [crop_box(rrc, x) for _ in range(n_boxes)]
    areas[kind] = np.array([b["height"] * b["width"] / (H * W) for b in bs])  # (n_boxes,)

fig, ax = plt.subplots(figsize=(7, 3.2))
bins = np.linspace(0, 1, 51)
ax.hist(
    areas["local"], bins=bins, alpha=0.7, label="local crops: scale (0.05, 0.4)", color="tab:orange"
)
ax.hist(
    areas["global"], bins=bins, alpha=0.7, label="global crops: scale (0.4, 1.0)", color="tab:blue"
)
for v in (0.05, 0.4, 1.0):
    ax.axvline(v, color="gray", lw=0.8, ls=":")
ax.set(
    xlabel="fraction of the image's area inside the crop",
    ylabel="number of crops",
    title=f"Crop areas over {n_boxes} draws of each kind",
)
ax.legend()
plt.show()
for kind in ("global", "local"):
    a = areas[kind]
    print(f"{kind:6s}: area {a.min():.3f} - {a.max():.3f}, mean {a.mean():.2f}")
assert 0.39 <= areas["global"].min() and areas["global"].max() <= 1.0
assert 0.045 <= areas["local"].min() and areas["local"].max() <= 0.41

# %% [markdown]
# The two ranges meet at 0.4 but do not overlap: a local view never sees more than 40% of the image,
# a global view never less. A local crop of 5% of a 224-pixel image is about 50 x 50 pixels,
# *upsampled* to 96; a global crop is usually *downsampled* to 224. Resolution is one more thing the
# network must become invariant to.
#
# ## 4. Batching the views: `collate_multicrop`
#
# The data loader gets, for each image, a list of $2 + N$ crops. `collate_multicrop` stacks them
# **view by view**: all images' global 1, then all images' global 2, then all local 1, and so on,
# and concatenates the views of the same size. So a batch of $B$ images becomes one tensor of $2B$
# global crops and one of $NB$ local crops, and row $v B + b$ is view $v$ of image $b$. The loss
# (notebook 05) relies on this order: it cuts the network's output back into $2 + N$ chunks of $B$
# rows, one chunk per view.
#
# ### Exercise `stack_views` · difficulty 2 · 10 min
#
# Write `stack_views_by_hand(crops)`:
#
# * **input** `crops`, a list of $B$ lists (one per image), each holding that image's $2 + N$ views:
#   two global crops $(3, G, G)$, then $N$ local crops $(3, L, L)$;
# * **output** the list `[globals, locals]`: `globals` of shape $(2B, 3, G, G)$ and `locals` of
#   shape $(NB, 3, L, L)$, where row $vB + b$ is view $v$ of image $b$ (local views numbered from
#   0).
#
# <details><summary>Hint</summary>
#
# `torch.stack([views[v] for views in crops])` is view $v$ of every image, $(B, 3, h, w)$.
# `torch.cat` the global ones, then the local ones.
#
# </details>


# %%
def stack_views_by_hand(crops: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """B lists of 2 + N views -> [globals (2B, 3, G, G), locals (NB, 3, L, L)], view-major."""
    raise NotImplementedError("[globals, locals], view-major: row v*B + b is view v of image b")


# %% tags=["raises-exception"]
check_stack_views(stack_views_by_hand)

# %% [markdown]
# `collate_multicrop` does the same for a batch of `(crops, label)` pairs, and returns the labels
# too.

# %%
stack_views_fn = pick("stack_views", stack_views_by_hand)
B = 4
torch.manual_seed(0)
samples = [(aug96(imagenette[i][0]), imagenette[i][1]) for i in picks[:B]]  # B x (6 crops, label)
(globals_, locals_), labels = collate_multicrop(samples)
mine = stack_views_fn([views for views, _ in samples])  # [(2B, 3, 96, 96), (4B, 3, 48, 48)]
assert torch.equal(mine[0], globals_) and torch.equal(mine[1], locals_)
print("globals", tuple(globals_.shape), "= (2 B, 3, 96, 96)")
print("locals ", tuple(locals_.shape), "= (N B, 3, 48, 48)")
print("labels ", tuple(labels.shape), "(never used by DINO)")

assert globals_.shape == (2 * B, 3, 96, 96)
assert locals_.shape == (aug96.local_crops_number * B, 3, 48, 48)
for b, (views, _) in enumerate(samples):  # row v * B + b is view v of image b
    for v in range(2):
        assert torch.equal(globals_[v * B + b], views[v])
    for v in range(aug96.local_crops_number):
        assert torch.equal(locals_[v * B + b], views[2 + v])
print("view-major order checked: row v * B + b is view v of image b")

# %% [markdown]
# ## 5. One backbone pass per resolution: `MultiCropWrapper`
#
# A ViT can take 96- and 48-pixel crops with the same weights, because its position embeddings are
# interpolated to the grid of each size (notebook 03). But a batch must have a single image size.
# The naive loop runs the backbone once per view, $2 + N$ times. DINO's `MultiCropWrapper` groups
# consecutive views of the same size and runs the backbone **once per resolution**, on bigger
# batches, then concatenates the features and applies the head once. We count the backbone calls
# with a forward hook.

# %%
torch.manual_seed(0)
# 6x6 / 3x3 grids
backbone = VisionTransformer(img_size=96, patch_size=16, embed_dim=96, depth=4, num_heads=3).eval()
head = DINOHead(96, 256, hidden_dim=256, bottleneck_dim=64).eval()
wrapper = MultiCropWrapper(backbone, head)

calls = []
hook = backbone.register_forward_hook(lambda mod, inputs, out: calls.append(tuple(inputs[0].shape)))
views = (
    [globals_[v * B : (v + 1) * B] for v in range(2)]
    + [  # 6 x (B, 3, h, w)
        locals_[v * B : (v + 1) * B] for v in range(4)
    ]
)

with torch.no_grad():
    calls.clear()
    naive = torch.cat([head(backbone(view)) for view in views])  # (6 B, 256): one call per view
    naive_calls = list(calls)

    calls.clear()
    grouped = wrapper(views)  # (6 B, 256): one call per resolution
    wrapper_calls = list(calls)

    calls.clear()
    from_batch = wrapper([globals_, locals_])  # what the training loop passes: the collated batch
hook.remove()

torch.testing.assert_close(grouped, naive, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(from_batch, naive, rtol=1e-4, atol=1e-5)
assert len(naive_calls) == 6 and len(wrapper_calls) == 2
print(f"naive loop: {len(naive_calls)} backbone calls, inputs {naive_calls}")
print(f"wrapper:    {len(wrapper_calls)} backbone calls, inputs {wrapper_calls}")
print(
    "same output", tuple(grouped.shape), "= (views x B, out_dim), rows in the same view-major order"
)

# %% [markdown]
# Fewer, larger calls keep the matrix multiplications big (and in training, the backward pass has
# two graphs to walk instead of $2 + N$). Notebook 09, Appendix A, times the two.
#
# ## What we built
#
# * DINO's multi-crop augmentation by hand with `torchvision.transforms.v2`: 2 global crops (40-100%
#   of the image, 224 px) and $N$ local crops (5-40%, 96 px), flip, colour jitter, grayscale,
#   asymmetric blur and solarization; equal, bit for bit, to `vitdino_core.MultiCropAugmentation`
#   for the same seed (exercise `local_view`).
# * Pictures of the views and of the boxes they come from: global views see the scene, local views
#   see parts.
# * `collate_multicrop` stacks views view-major (row $vB + b$ is view $v$ of image $b$; exercise
#   `stack_views`), and
#   `MultiCropWrapper` runs the backbone once per resolution with the same result as one call per
#   view.
#
# Next, notebook 05 turns the network's outputs for these views into DINO's loss: which views the
# teacher sees, which the student sees, and how to compare them without collapsing.
#
# ## More to try
#
# 1. Make the local crops bigger (`local_crops_scale=(0.2, 0.6)`) or the global crops smaller
#    (`global_crops_scale=(0.14, 1.0)`, the range the official code suggests when training without
#    local crops). Redraw the area histogram: where do the two kinds of view now overlap?
# 2. Count the tokens of one training image under DINO's recipe for ViT-S/16 (2 crops of 224, 8 of
#    96) and compare with 10 global crops. Since attention costs about $N^2$, by how much do the
#    local crops cut the cost of attention?
# 3. Solarize only, without the rest of the recipe: `v2.RandomSolarize(threshold=128, p=1.0)` on the
#    photo. Why might a view like this be useful, and why is it applied to only one of the two
#    global views?

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["local_view", "stack_views"])
