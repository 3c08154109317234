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
# # 00 · Setup and data
#
# *No exercises here: this is `../00_setup_and_data.py`, copied beside the exercises so that the day
# starts in this folder. Run it from the top, then open `01_patch_embedding.py`.*
#
# Before we build a Vision Transformer and train it with DINO, we make sure that the machine is
# ready and we look at the images it will learn from. Everything in this course runs on a laptop
# CPU; a GPU only makes the longer runs shorter.
#
# Where this notebook sits:
#
# ```
# images ──► patches (01) ──► attention (02) ──► ViT (03) ──► multi-crop (04) ──► DINO loss (05)
#   ▲                                                                                   │
#   └── here: which images, where they live          EMA teacher, training (06) ◄───────┘
#                                                    attention maps (07), kNN / linear probe (08)
# ```
#
# In this notebook we
# 1. check the Python / PyTorch installation, the number of threads and the device;
# 2. find the **data root** and learn how to move it, and what happens when a dataset is missing;
# 3. look at **Imagenette**, the course dataset: a grid of images per class and the class counts;
# 4. look at the photos we use for pictures in later notebooks;
# 5. measure the number every learned feature must beat: **weighted kNN on raw pixels**.

# %%
import os
import platform
import sys
import tempfile
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision

import vitdino_core
from vitdino_core import (
    DatasetNotFoundError,
    build_dataset,
    data_root,
    knn_classifier,
    raw_pixel_features,
)
from vitdino_core.data import DATASETS, IMAGENETTE_96, find_imagenette, is_course_copy, where_lines
from vitdino_core.notebook import photo, save_figure, setup

env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer images, every cell still runs

# %% [markdown]
# ## 1. The environment
#
# `setup(seed=0)` above seeded every random number generator (Python, NumPy, PyTorch), chose the
# device and found the data root. Here is the rest of what matters for this course.
#
# A word on **bfloat16**. Training on a GPU runs in bf16 "mixed precision" (notebook 09): the big
# matrix products in 16 bits, the sums that need precision in 32. On a CPU bf16 tensors always
# *work*, but they are only *fast* on CPUs with bf16 units (AVX512-BF16 or AMX on recent Intel / AMD
# server chips, some ARM chips). `torch.backends.cpu.get_cpu_capability()` tells which vector unit
# PyTorch's kernels use; with `AVX2` (most laptops) stay in float32, which is what the course does
# on a CPU anyway (`precision: auto` means bf16 on a GPU, float32 on a CPU).

# %%
cpu_capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "SVE256", ...
x = torch.randn(64, 64, dtype=torch.bfloat16)  # (64, 64) bf16
bf16_works = bool(torch.isfinite((x @ x).float()).all())  # bf16 math runs on every CPU
bf16_fast = cpu_capability in ("AVX512", "SVE256")  # bf16 units possible only with these

rows = {
    "python": sys.version.split()[0],
    "platform": f"{platform.system()} {platform.machine()}",
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
    "vitdino_core": vitdino_core.__version__,
    "threads (torch.get_num_threads)": torch.get_num_threads(),
    "device": str(env.device),
    "CUDA GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    "CPU capability": cpu_capability,
    "bf16 on CPU": (
        f"works: {bf16_works}; fast: "
        + ("maybe (needs AVX512-BF16/AMX)" if bf16_fast else "no, use float32")
    ),
    "fast mode (CI / VITDINO_FAST)": FAST,
}
for key, value in rows.items():
    print(f"{key:>32} : {value}")

torch_version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
assert torch_version >= (2, 4), "the course needs torch >= 2.4 (pip install -e '.[dev]')"
assert bf16_works

# %% [markdown]
# PyTorch uses one thread per physical core by default. On a shared machine you can lower it with
# `torch.set_num_threads(n)` (or `OMP_NUM_THREADS=n` before starting Jupyter) so that two notebooks
# don't fight over the same cores.

# %% [markdown]
# ## 2. The data root
#
# Every dataset is looked for under one folder, the **data root**:
#
# * `$VITDINO_DATA` if that environment variable is set,
# * otherwise `data/` at the top of the repository.
#
# To move it, set the variable *before* starting Jupyter, e.g.
# `export VITDINO_DATA=/big/disk/datasets && make lab`; or, inside a running notebook,
# `os.environ["VITDINO_DATA"] = "/big/disk/datasets"` (the root is read every time a dataset is
# built). `python -m vitdino_core.data where` prints it from a terminal, with what it holds;
# `make lab` prints the same before it opens JupyterLab:

# %%
root = data_root()
print("\n".join(where_lines(root)))
assert root == env.data_root

# %% [markdown]
# ### When Imagenette is missing
#
# Imagenette is looked for as `imagenette-96/`, `imagenette2-160/`, `imagenette2-320/`, ... under
# the data root, each with `train/` and `val/` folders of WordNet ids. If none is there, get the
# course copy once, from a terminal in the repository:
#
# ```
# python -m vitdino_core.data download imagenette-96
# ```
#
# It downloads Imagenette (1.5 GB, resumable: run it again after an interruption), makes the 96 px
# copy (about 50 MB) in `<data root>/imagenette-96/` and prints where it put it. Without a network
# it says so in one line; then copy an `imagenette-96/` folder from a machine that has it and point
# `VITDINO_DATA` at the folder that holds it.
#
# Building the dataset without it raises a `DatasetNotFoundError` whose message says where it looked
# and the ways out. Let us see the message by pointing the data root at an empty folder for a
# moment:

# %%
with tempfile.TemporaryDirectory() as empty, mock.patch.dict(os.environ, {"VITDINO_DATA": empty}):
    try:
        build_dataset("imagenette", "train")
        raise AssertionError("an empty data root cannot hold Imagenette")
    except DatasetNotFoundError as err:
        print(f"{type(err).__name__}: {err}")
        missing_error = err

assert isinstance(missing_error, FileNotFoundError)  # catch it as a FileNotFoundError if you prefer
assert data_root() == root  # the real data root is back

# %% [markdown]
# ## 3. Datasets by name
#
# `build_dataset(name, split)` knows a few datasets by name. Each yields `(image, label)` pairs
# where the image is a PIL RGB image (a transform turns it into a tensor later). DINO never reads
# the labels while training: they are used only to *evaluate* the features (notebook 08).

# %%
ABOUT = {
    "imagenette": "10 easy ImageNet classes; the course dataset (download imagenette-96)",
    "folder": "any folder of images, nested or flat: data_path='/my/photos' (for your own data)",
    "cifar10": "torchvision CIFAR-10, 32 px, 10 classes (needs a download)",
    "mnist": "torchvision MNIST digits, 28 px grayscale shown as RGB (needs a download)",
    "fashion_mnist": "torchvision Fashion-MNIST, 28 px (needs a download)",
    "digits": "scikit-learn's 8 px digits, always offline (1797 images, 80/20 split)",
    "random": "noise images with random labels, for sanity runs with no data at all",
}
assert set(ABOUT) == set(DATASETS), "vitdino_core knows a dataset this table does not describe"
for name in DATASETS:
    print(f"{name:>14} : {ABOUT[name]}")

digits = build_dataset("digits", "train")  # offline, always there
print(
    f"\ndigits: {len(digits)} train images, first one {digits[0][0].size} px, label {digits[0][1]}"
)

# %% [markdown]
# ## 4. Imagenette, 96 pixels
#
# [Imagenette](https://github.com/fastai/imagenette) is a 10-class subset of ImageNet picked to be
# easy to tell apart: a fish, a dog, a cassette player, a chain saw, a church, a French horn, a
# garbage truck, a gas pump, a golf ball and a parachute. It has the same train/val file lists as
# Imagenette v2: 9,469 training and 3,925 validation images.
#
# The course uses a copy in which every image is a **96 x 96** RGB JPEG (each was first squashed to
# 224 x 224, then resized to 96 x 96). Why so small?
#
# * **Speed on a CPU.** A ViT's cost grows with the number of tokens $N = (H/p)(W/p)$, and
#   attention's with $N^2$. At 96 px with 8 px patches an image is $12 \times 12 = 144$ tokens; at
#   224 px with 16 px patches it would be 196, with 8 px patches 784.
# * **It is DINO's own local-crop size.** DINO trains on 224 px "global" and 96 px "local" crops;
#   here the whole image is 96 px and the crops are smaller still (notebook 04).
# * **The whole split fits in memory** and loads in seconds, so evaluation (notebook 08) takes
#   moments.
#
# The price: fine detail is gone, so accuracies are lower than on full-size images.
#
# `is_course_copy` tells whether the folder is exactly that copy: the Imagenette v2 file names and
# the recipe (recorded in `DATASET.json` by the download, else judged by the image size). Numbers
# quoted in this course, like the baseline in section 6, hold for that copy.

# %%
try:
    train_set = build_dataset("imagenette", "train")
    val_set = build_dataset("imagenette", "val")
except DatasetNotFoundError as err:  # stop here with the one line that says what to run
    raise SystemExit(str(err)) from None
imagenette_folder = find_imagenette(data_root(), "train").parent
course_copy = is_course_copy(imagenette_folder)
which = "the course copy" if course_copy else "not the course copy: numbers will differ"
print(f"Imagenette from {imagenette_folder}: {which}")
print(
    f"train: {len(train_set)} images | val: {len(val_set)} images | "
    f"{len(train_set.classes)} classes"
)
print("classes:", ", ".join(train_set.classes))

img, label = train_set[0]
x = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (H, W, 3) uint8 -> (3, H, W)
print(
    f"one image: PIL {img.mode} {img.size} -> tensor {tuple(x.shape)} {x.dtype}, "
    f"label {label} = {train_set.classes[label]}"
)

assert train_set.classes == val_set.classes and len(train_set.classes) == 10
assert x.shape[0] == 3 and x.dtype == torch.uint8

# %% [markdown]
# A few training images of each class, one class per row:

# %%
per_class = 6 if FAST else 10
targets = np.array(train_set.targets)  # (N_train,) class index per image
rng = np.random.default_rng(env.seed)
n_classes = len(train_set.classes)
fig_w, fig_h = per_class * 0.95 + 1.4, n_classes * 0.95 + 0.4  # inches: room for the class names
fig, axes = plt.subplots(
    n_classes,
    per_class,
    figsize=(fig_w, fig_h),
    gridspec_kw={
        "wspace": 0.04,
        "hspace": 0.04,
        "left": 1.4 / fig_w,
        "right": 0.995,
        "bottom": 0.005,
        "top": 1 - 0.4 / fig_h,
    },
)
for c, name in enumerate(train_set.classes):
    picks = rng.choice(np.flatnonzero(targets == c), size=per_class, replace=False)  # (per_class,)
    for j, i in enumerate(picks):
        ax = axes[c, j]
        ax.imshow(train_set[int(i)][0])
        ax.set_xticks([]), ax.set_yticks([])
        if j == 0:
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
fig.suptitle(f"Imagenette-96: {per_class} random training images per class", y=0.995)
save_figure(fig, "00_imagenette_grid")
plt.show()

# %% [markdown]
# ### How many images per class?
#
# A kNN classifier votes with neighbours, so a class with many more images would win more votes by
# sheer numbers. Imagenette is nearly balanced:

# %%
train_counts = np.bincount(train_set.targets, minlength=10)  # (10,) images per class
val_counts = np.bincount(val_set.targets, minlength=10)  # (10,)
pos = np.arange(10)
fig, ax = plt.subplots(figsize=(9, 3.6))
ax.bar(pos - 0.2, train_counts, width=0.4, label=f"train ({train_counts.sum()})")
ax.bar(pos + 0.2, val_counts, width=0.4, label=f"val ({val_counts.sum()})")
ax.set_xticks(pos, train_set.classes, rotation=30, ha="right")
ax.set_ylabel("images")
ax.set_title("Imagenette: images per class")
ax.set_ylim(0, 1.25 * train_counts.max())
ax.legend(ncol=2, loc="upper center")
fig.tight_layout()
plt.show()

for name, n_train, n_val in zip(train_set.classes, train_counts, val_counts):
    print(f"{name:>17}: {n_train:4d} train  {n_val:4d} val")
assert train_counts.sum() == len(train_set) and val_counts.sum() == len(val_set)
assert train_counts.min() > 0.8 * train_counts.max() and val_counts.min() > 0.8 * val_counts.max()

# %% [markdown]
# ## 5. Photos for pictures
#
# Some pictures (patch grids in 01, attention maps in 02 and 07) are nicer on a large photo than on
# a 96 px thumbnail. `photo(name)` returns one as a PIL RGB image, offline: `grace_hopper`,
# `china` and `flower` ship inside matplotlib and scikit-learn, `astronaut`, `chelsea`, `coffee`
# and `rocket` inside scikit-image (all three are installed with the course). A file in
# `<data root>/photos` whose name holds the photo's name comes first.

# %%
names = ["grace_hopper", "china", "flower", "astronaut", "chelsea", "coffee", "rocket"]
photos = {}
for name in names:
    try:
        photos[name] = photo(name)
    except FileNotFoundError as err:  # the message says how to get it
        print(f"{name}: not available: {err}")
print("available:", ", ".join(f"{n} {p.size[0]}x{p.size[1]}" for n, p in photos.items()))

ncols = min(len(photos), 4)  # rows of 4: the figure fits the notebook's width
nrows = -(-len(photos) // ncols)
fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.7 * nrows), squeeze=False)
for ax in axes.flat:
    ax.axis("off")
for ax, (name, im) in zip(axes.flat, photos.items()):
    ax.imshow(im)
    ax.set_title(f"{name}\n{im.size[0]}x{im.size[1]}")
fig.tight_layout()
plt.show()

assert {"grace_hopper", "china", "flower"} <= set(photos)  # the offline three never fail

# %% [markdown]
# ## 6. What "good features" will mean: the raw-pixel baseline
#
# DINO learns without labels, so we judge its features from outside (notebook 08): freeze the
# network, turn each image into one vector $f(x)$ (the CLS token), and ask how well a very simple
# classifier does.
#
# * **Weighted kNN** (as in DINO's `eval_knn.py`): for a validation image, take the $k = 20$
#   training features with the largest cosine similarity $s_i$ and let each vote for its class with
#   weight $e^{s_i / T}$, $T = 0.07$. The class with the largest total wins. No training, no tuning.
# * **Linear probe**: logistic regression on the frozen features.
#
# On ImageNet, DINO's ViT-S/16 reaches 74.5% (kNN) and 77.0% (linear); ViT-B/16 76.1% / 78.2%.
#
# To read such numbers we need a floor. The simplest "feature" is the image itself: shrink it to 32
# x 32, flatten the $3 \cdot 32 \cdot 32 = 3072$ pixel values into a vector, L2-normalise it, and
# run the same kNN. On the whole course copy of Imagenette-96 this gives **28.3%** at 32 px (24.0%
# at 96 px), against 10% for guessing; another copy (other sizes, other resampling) gives a somewhat
# different number. Any feature worth learning must beat that clearly. Let us measure it (in fast
# mode on a random subset, so the number moves by a few points):

# %%
if FAST:
    sub = np.random.default_rng(0)
    train_idx = sub.choice(len(train_set), 2000, replace=False)  # a random 2000 of the 9469
    val_idx = sub.choice(len(val_set), 500, replace=False)  # a random 500 of the 3925
    knn_train = torch.utils.data.Subset(train_set, train_idx.tolist())
    knn_val = torch.utils.data.Subset(val_set, val_idx.tolist())
else:
    knn_train, knn_val = train_set, val_set

# (N_train, 3072) unit rows and (N_train,) labels
train_x, train_y = raw_pixel_features(knn_train, size=32, desc="train pixels")
val_x, val_y = raw_pixel_features(knn_val, size=32, desc="val pixels")  # (N_val, 3072), (N_val,)
print(f"features: train {tuple(train_x.shape)}, val {tuple(val_x.shape)}")

top1 = knn_classifier(train_x, train_y, val_x, val_y, k=20, T=0.07)
print(
    f"raw-pixel weighted kNN (32 px, k=20, T=0.07): {top1:.1f}% top-1 "
    f"on {len(val_y)} val images; chance 10%"
)

assert torch.allclose(train_x.norm(dim=1), torch.ones(len(train_x)))
assert top1 > 15, "raw pixels should beat chance (10%) clearly"
if not FAST and course_copy:
    assert abs(top1 - 28.3) < 0.3, "on the full course copy the raw-pixel baseline is 28.3%"
elif not FAST:
    print(
        f"Not the course copy, so the baseline depends on your images: yours is {top1:.1f}% "
        f"(28.3% on the course copy: python -m vitdino_core.data download {IMAGENETTE_96})"
    )

# %% [markdown]
# Keep the 28.3% (or your own copy's number) in mind. Notebook 08 runs the very same kNN on the CLS
# token of a randomly initialised ViT and of a DINO-trained one: training should lift it far above
# the pixels, without a single label.
#
# ## What we built
#
# * We checked the installation: versions, threads, device, and whether bf16 is worth using on this
#   CPU.
# * We know where data lives (`$VITDINO_DATA`, else `data/`), how to move it, and what the error
#   says when Imagenette is missing.
# * We looked at Imagenette-96: ten nearly balanced classes, 9,469 training and 3,925 validation
#   images.
# * We measured the floor for learned features: weighted kNN on raw 32 px pixels.
#
# Next, **01 · Patch embedding**: how a ViT turns one of these images into a sequence of tokens.
#
# ## Exercises
#
# 1. Run the raw-pixel kNN at `size=16` and `size=96`. Why can *fewer* pixels classify *better*?
#    (Hint: what does cosine similarity between two large images mostly compare?)
# 2. Change `k` (1, 5, 20, 100) and `T` (0.02, 0.07, 1.0). Which matters more here, and why does a
#    small $T$ make the vote close to "the nearest neighbour decides"?
# 3. Load a folder of your own photos with `build_dataset("folder", "train",
#    data_path="/path/to/photos")` and show a few. How many `classes` does it find, and why does
#    DINO not care?
