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
# # 10 · Beyond DINO: what DINOv2 added
#
# *Exercise version.* Write the functions marked `NotImplementedError`; each check cell
# tells you what is wrong or that it passed. The complete notebook is `../10_dinov2.py`.
# (Made by `make exercises` from it; edits here are yours, `make exercises` overwrites them.)
#
# Notebooks 03-06 built DINO (Caron et al., 2021). The self-supervised ViTs people use today are
# **DINOv2** (Oquab et al., 2023) and its successors. What DINOv2 added to DINO's recipe is small:
# each addition is a few lines on top of what we already have.
#
# * **Masked patches** (iBOT, Zhou et al. 2022). The student sees some patches replaced by a
#   learned mask token and predicts the teacher's prototypes *there*. DINO had a loss on the CLS
#   token only.
# * **Sinkhorn-Knopp centering** (from SwAV, Caron et al. 2020). The teacher's targets of a batch
#   are rescaled so that every prototype gets an equal share. DINO had a running-mean centre $c$.
# * **KoLeo** (Sablayrolles et al. 2019). A regulariser that pushes each image's feature away from
#   its nearest neighbour in the batch.
# * **Registers** (Darcet et al. 2024, "Vision Transformers Need Registers"). A few extra learned
#   tokens with no position, thrown away at the output.
#
# DINOv2 also changed the scale (a ViT-g on 142M curated images), the resolution schedule and many
# engineering details; those are not ideas to build by hand, and we leave them out.
#
# We build each addition by hand, check it against `vitdino_core.dinov2` (whose pieces are pinned
# to the official `facebookresearch/dinov2` code in the tests), and import it from there. The last
# sections put them together: registers in the ViT, and a training run with all of them.
#
# **Exercises.** Four, as in notebooks 01-08: each says what to write, gives a hint (click to open)
# and ends in a check cell that names the likely mistake. Until a check passes, the cells after it
# use `vitdino_core`'s version.

# %%
import csv
import math
import random
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Image, display
from tqdm.auto import tqdm

from vitdino_core import DINOHead, VisionTransformer, build_dataset, cls_attention, load_image
from vitdino_core.data import REPO_ROOT
from vitdino_core.dinov2 import (
    KoLeoLoss,
    MaskingGenerator,
    collate_masks,
    iBOTPatchLoss,
    sinkhorn_knopp_teacher,
)
from vitdino_core.exercises import (
    assert_checked,
    check_ibot_loss,
    check_koleo,
    check_masking,
    check_sinkhorn_knopp,
    pick,
)
from vitdino_core.notebook import course_weights, save_figure, setup

env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer steps and images, every cell still runs

# %% [markdown]
# ## 1. Masked patches: iBOT's block-wise masks
#
# DINO's loss only asks the CLS token to agree across views; nothing asks the **patch tokens** to
# mean anything. iBOT (Zhou et al., 2022) adds masked image modelling in DINO's own terms: hide
# some of the student's patches, and ask the student's output at each hidden patch to predict the
# teacher's prototype distribution for the same patch, which the teacher computed from the whole
# image. The teacher is the EMA of the student (notebook 06), so the targets are learned features,
# not pixels.
#
# Which patches to hide matters. Scattered single patches are easy to fill in from their
# neighbours; DINOv2 (after BEiT) masks **rectangles**: draw a rectangle of random area and aspect,
# place it at random, repeat until enough patches are masked. On the $16 \times 16$ grid of a
# 224 px crop with patch 14, DINOv2 masks half of the global crops, each with a share of its
# patches drawn from $[0.1, 0.5]$.
#
# One rectangle, as the official `MaskingGenerator._mask` draws it (10 tries):
#
# 1. area $a \sim U(\text{min\_num\_patches}, \text{max\_mask\_patches})$, aspect
#    $r = \exp(U(\log 0.3, \log(1/0.3)))$;
# 2. $h = \mathrm{round}(\sqrt{a r})$, $w = \mathrm{round}(\sqrt{a / r})$; if it fits, a random
#    corner;
# 3. keep it if it adds between 1 and `max_mask_patches` new patches; stop at the first try that
#    added any.
#
# We write it with Python's `random` in the same order as the official code, so a seeded `random`
# gives the same masks as `vitdino_core.dinov2.MaskingGenerator`.


# %%
def one_block_by_hand(mask, max_mask_patches, min_num_patches=4, log_aspect=(-1.204, 1.204)):
    """Mask one more rectangle of the (H, W) bool `mask` in place; return how many patches it
    added."""
    H, W = mask.shape
    for _ in range(10):
        area = random.uniform(min_num_patches, max_mask_patches)  # patches in the rectangle
        aspect = math.exp(random.uniform(*log_aspect))  # h / w, log-uniform
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < W and h < H:  # it fits
            top, left = random.randint(0, H - h), random.randint(0, W - w)
            block = mask[top : top + h, left : left + w]  # (h, w), a view into mask
            new = h * w - int(block.sum())  # patches not masked yet
            if 0 < new <= max_mask_patches:
                block.fill_(True)
                return new
    return 0  # no rectangle fitted in 10 tries


def mask_by_hand(H, W, num_masking_patches, max_num_patches):
    """A (H, W) bool mask with about `num_masking_patches` patches masked, in rectangles."""
    mask = torch.zeros(H, W, dtype=torch.bool)  # (H, W)
    count = 0
    while count < num_masking_patches:
        added = one_block_by_hand(mask, min(num_masking_patches - count, max_num_patches))
        if added == 0:
            break  # stop short rather than loop forever
        count += added
    return mask


side = 14  # a 14 x 14 grid, as a 224 px crop with patch 16
generator = MaskingGenerator((side, side), max_num_patches=0.5 * side * side)  # DINOv2's set-up
log_aspect = generator.log_aspect_ratio  # (log 0.3, log 1/0.3)
for n in (10, 40, 98):
    random.seed(n)
    mine = mask_by_hand(side, side, n, 0.5 * side * side)
    random.seed(n)
    core = generator(n)  # (14, 14)
    assert torch.equal(mine, core)
    print(f"{n:3d} patches asked: {int(mine.sum()):3d} masked, the same mask as MaskingGenerator")
print(generator)

# %% [markdown]
# A few masks with growing counts: rectangles, overlapping, sometimes a little short of the target
# when no rectangle fits the remaining count.

# %%
counts = [8, 20, 39, 59, 78, 98]
random.seed(0)
fig, axes = plt.subplots(1, len(counts), figsize=(2.0 * len(counts), 2.3), layout="constrained")
for ax, n in zip(axes, counts):
    m = generator(n)  # (14, 14) bool
    ax.imshow(m.numpy(), cmap="Greys", vmin=0, vmax=1.4)
    ax.set_xticks(np.arange(-0.5, side, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, side, 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(f"{int(m.sum())} of {side * side}\n({n} asked)")
fig.suptitle("Block-wise masks on a 14 x 14 patch grid (dark: masked)")
save_figure(fig, "10_block_masks")
plt.show()

# %% [markdown]
# ### Exercise `masking` · difficulty 2 · 15 min
#
# A batch of global crops gets its masks as in DINOv2's `collate_data_and_cast`. Write
# `masks_by_hand(n_images, n_tokens, mask_generator, mask_ratio_tuple, mask_probability)`:
#
# * **input** the number of images (global crops) in the batch, the patches per image, a
#   `MaskingGenerator` (`mask_generator(count)` returns an $(h, w)$ bool mask), the ratio range
#   $(0.1, 0.5)$ and the share of images to mask, $0.5$;
# * **output** the masks $(n_\text{images}, n_\text{tokens})$, bool, True = masked.
#
# Exactly `n_masked = int(n_images * mask_probability)` images are masked. Their ratios are spread
# over the range: cut it into `n_masked` equal slices, image $i$ draws its ratio uniformly in slice
# $i$ and asks the generator for `int(n_tokens * ratio)` patches. The other images get
# `mask_generator(0)` (nothing masked). Shuffle the list of masks, so that the masked images are
# not always the first ones, then stack and flatten.
#
# <details><summary>Hint</summary>
#
# `torch.linspace(lo, hi, n_masked + 1)` gives the slice edges; `random.uniform(a, b)` draws in
# one; `random.shuffle(list)` shuffles in place; `torch.stack(masks).flatten(1)` is
# $(n_\text{images}, h w)$.
#
# </details>


# %%
def masks_by_hand(
    n_images, n_tokens, mask_generator, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5
):
    """(n_images, n_tokens) bool: the block-wise masks of one batch of global crops."""
    raise NotImplementedError("masks of int(n*p) images, ratios in equal slices, shuffled")


# %% tags=["raises-exception"]
check_masking(masks_by_hand)

# %% [markdown]
# The core's `collate_masks` draws the same masks from the same seed, and also returns what the
# loss needs: the flat indices of the masked patches and a weight per masked patch, 1 / (the
# masked patches of its image).

# %%
masks_fn = pick("masking", masks_by_hand)
n_images, grid = 8, 6  # 8 global crops (4 images x 2 views) on the course's 6 x 6 grid (72 px)
small_generator = MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid)
random.seed(1)
mine = masks_fn(n_images, grid * grid, small_generator)  # (8, 36)
random.seed(1)
batch_masks = collate_masks(n_images, grid * grid, small_generator)
assert torch.equal(mine, batch_masks["collated_masks"])
print("masked patches per crop:", batch_masks["collated_masks"].sum(1).tolist())
print("mask_indices_list", tuple(batch_masks["mask_indices_list"].shape), "into the 8 x 36 patches")
print("masks_weight (first 6):", [round(w, 3) for w in batch_masks["masks_weight"][:6].tolist()])

# %% [markdown]
# ## 2. The mask token and the iBOT patch loss
#
# **The mask token.** A masked patch is not removed (as in MAE): its embedding is **replaced** by a
# learned vector `mask_token` $(1, D)$, before the position embeddings are added, so the network
# still knows *where* the hidden patch is but not what it showed. DINOv2 initialises it at zero.
# Only the student sees masks; the teacher sees the whole crop.
#
# ```
# student:  patches ─► embed ─► where(mask, mask_token, x) ─► + pos ─► blocks ─► head ─► P_s[i]
# teacher:  patches ─► embed ───────────────────────────────► + pos ─► blocks ─► head ─► P_t[i]
#                                                         loss at the masked i: H(P_t[i], P_s[i])
# ```
#
# In `vitdino_core.VisionTransformer` (as in DINOv2) `use_mask_token=True` adds the parameter, and
# `prepare_tokens(x, masks)` does the replacement. By hand, on a tiny model:

# %%
torch.manual_seed(0)
vit = VisionTransformer(img_size=72, patch_size=12, embed_dim=48, depth=2, num_heads=3)
vit_masked = VisionTransformer(
    img_size=72, patch_size=12, embed_dim=48, depth=2, num_heads=3, use_mask_token=True
)
vit_masked.load_state_dict(vit.state_dict(), strict=False)  # the same weights, plus mask_token
with torch.no_grad():
    vit_masked.mask_token.normal_()  # (1, D): as if learned
images = torch.randn(2, 3, 72, 72)  # (B, 3, 72, 72)
masks = batch_masks["collated_masks"][:2]  # (2, 36)

with torch.no_grad():
    x = vit_masked.patch_embed(images)  # (B, N, D) = (2, 36, 48)
    x = torch.where(masks.unsqueeze(-1), vit_masked.mask_token.unsqueeze(0), x)  # (B, N, D)
    x = torch.cat((vit_masked.cls_token.expand(2, -1, -1), x), dim=1)  # (B, 1+N, D)
    x = x + vit_masked.pos_embed  # (B, 1+N, D): positions for masked patches too
    torch.testing.assert_close(x, vit_masked.prepare_tokens(images, masks))
    same = vit_masked.prepare_tokens(images) == vit.prepare_tokens(images)  # no masks: DINO's
print(f"{int(masks.sum())} masked patches now carry mask_token + their position; without masks")
print("the model with a mask token computes exactly DINO's tokens:", bool(same.all()))

# %% [markdown]
# **The loss.** The student's patch tokens go through a projection head, giving logits
# $(B, N, K)$: DINOv2's default config shares the DINO head (the same prototypes for CLS and
# patches), its ViT-L and ViT-g training recipes give the patches a head of their own
# (`ibot.separate_head: true`). The teacher's patch outputs give probabilities $(B, N, K)$
# (centred and sharpened as in notebook 05, or by Sinkhorn-Knopp, section 3). With $m_{bi} = 1$
# where patch $i$ of crop $b$ was masked,
#
# $$\mathcal{L}_\text{iBOT} = \frac{1}{B} \sum_{b=1}^{B}
#   \frac{\sum_i m_{bi}\, H\big(P_t[b, i], P_s[b, i]\big)}{\max(1, \sum_i m_{bi})},
#   \qquad H(p, q) = -\sum_k p_k \log q_k .$$
#
# Each crop's masked patches are averaged first, then the crops: a crop with many masked patches
# weighs no more than one with few, and an unmasked crop adds 0 (but still counts in the $1/B$).
#
# ### Exercise `ibot_loss` · difficulty 2 · 15 min
#
# Write `ibot_loss_by_hand(student_patch_tokens, teacher_patch_probs, masks, student_temp=0.1)`:
#
# * **input** the student's patch logits $(B, N, K)$, the teacher's patch probabilities
#   $(B, N, K)$, the masks $(B, N)$ bool, $\tau_s$;
# * **output** $\mathcal{L}_\text{iBOT}$, one number.
#
# <details><summary>Hint</summary>
#
# `F.log_softmax(s / student_temp, dim=-1)` is $\log P_s$; the cross-entropy per patch is
# $(B, N)$; multiply by `masks.float()`, sum over the patches, divide by the count clamped to at
# least 1 (`clamp(min=1.0)`), then take the mean over the crops.
#
# </details>


# %%
def ibot_loss_by_hand(student_patch_tokens, teacher_patch_probs, masks, student_temp=0.1):
    """Mean over crops of the mean cross-entropy over each crop's masked patches."""
    raise NotImplementedError("each crop's mean H(P_t, P_s) over masked patches, mean over crops")


# %% tags=["raises-exception"]
check_ibot_loss(ibot_loss_by_hand)

# %% [markdown]
# Against the core's `iBOTPatchLoss`, in both of its forms: `forward` on all patches with the
# masks, and `forward_masked` on the masked patches only (what training uses: the head runs on the
# $M$ masked patches, not all $B N$), with `collate_masks`' indices and weights.

# %%
ibot_loss_fn = pick("ibot_loss", ibot_loss_by_hand)
K = 64
g = torch.Generator().manual_seed(0)
student_patches = torch.randn(n_images, grid * grid, K, generator=g)  # (8, 36, K) logits
teacher_logits = torch.randn(n_images, grid * grid, K, generator=g)  # (8, 36, K)
ibot = iBOTPatchLoss(K)  # student_temp 0.1, its own centre for the patches
teacher_patch_probs = ibot.softmax_center_teacher(teacher_logits, teacher_temp=0.04)  # (8, 36, K)
m = batch_masks["collated_masks"]  # (8, 36)
mine = ibot_loss_fn(student_patches, teacher_patch_probs, m)
core = ibot(student_patches, teacher_patch_probs, m)
idx = batch_masks["mask_indices_list"]  # (M,)
core_masked = ibot.forward_masked(
    student_patches.flatten(0, 1)[idx],  # (M, K)
    teacher_patch_probs.flatten(0, 1)[idx],  # (M, K)
    m,
    masks_weight=batch_masks["masks_weight"],
)
torch.testing.assert_close(mine, core)
torch.testing.assert_close(core_masked, core)
print(
    f"iBOT loss by hand {mine:.4f} == iBOTPatchLoss {core:.4f} == forward_masked on M = {len(idx)}"
)

# %% [markdown]
# ## 3. Sinkhorn-Knopp centering
#
# Notebook 05 kept the teacher from collapsing onto one prototype with a **centre**: a running mean
# $c$ of its outputs, subtracted before the softmax. The centre is a per-prototype bias that moves
# slowly ($m = 0.9$): it learns which prototypes are too popular *on average over the last steps*,
# and it cannot act within one batch.
#
# DINOv2 (after SwAV) replaces it with **Sinkhorn-Knopp**: take $Q = \exp(g_t / \tau_t)$ as a
# $K \times B$ matrix and rescale its rows and columns in turn, a few times, so that
#
# * every **sample** (column) is a distribution: its entries sum to 1, and
# * every **prototype** (row) gets the same share of the batch, $B / K$.
#
# It is an answer within the batch, not a memory: whatever the scores, the batch's targets use all
# prototypes evenly (an equipartition), so "one prototype for every image" is impossible as a
# target. In the official code (`dinov2/loss/dino_clstoken_loss.py`) $Q$ starts as the whole
# matrix divided by its sum; each of 3 iterations divides every prototype's row by its sum and by
# $K$ (rows sum to $1/K$), then every sample's column by its sum and by $B$ (columns sum to $1/B$);
# at the end $Q \times B$ makes each column a distribution, transposed back to $(B, K)$.
#
# ### Exercise `sinkhorn_knopp` · difficulty 2 · 15 min
#
# Write `sinkhorn_knopp_by_hand(teacher_output, teacher_temp, n_iterations=3)`:
#
# * **input** the teacher's scores $(B, K)$, $\tau_t$, the number of iterations;
# * **output** the targets $(B, K)$: rows sum to 1, and the prototypes' totals (column sums of the
#   result) as even as the iterations make them.
#
# `exp` overflows to `inf` once a score exceeds about $88\,\tau_t$ (3.5 at $\tau_t = 0.04$).
# Subtracting each prototype's largest score first changes nothing else (the first row
# normalisation divides it out again), and the check tries scores where it matters.
#
# <details><summary>Hint</summary>
#
# Work on `Q = torch.exp(...).t()`, $(K, B)$, like the official code: `Q.sum(dim=1,
# keepdim=True)` is one sum per prototype $(K, 1)$, `Q.sum(dim=0, keepdim=True)` one per sample
# $(1, B)$. Don't divide in place on the input.
#
# </details>


# %%
def sinkhorn_knopp_by_hand(teacher_output, teacher_temp, n_iterations=3):
    """(B, K) teacher scores -> (B, K) targets: rows sum to 1, prototypes shared evenly."""
    raise NotImplementedError("Q = exp(s / T).T; n x (rows / K, columns / B); return (Q * B).T")


# %% tags=["raises-exception"]
check_sinkhorn_knopp(sinkhorn_knopp_by_hand)

# %% [markdown]
# What it does to a batch whose scores all favour one prototype, the start of the collapse of
# notebook 05 (run (b)): plain sharpening puts almost all of every image's mass there;
# Sinkhorn-Knopp spreads the batch over the prototypes at once. DINO's centre would do the same
# only after it has learned the bias, over tens of steps.

# %%
sk_fn = pick("sinkhorn_knopp", sinkhorn_knopp_by_hand)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)  # (..., K) -> (...,) in nats


B_toy, K_toy, tau_t = 32, 16, 0.04
g = torch.Generator().manual_seed(0)
scores = 0.1 * torch.randn(B_toy, K_toy, generator=g)  # (B, K): image-specific part
scores[:, 3] += 0.3  # (B, K): prototype 3 wins for every image
softmax_t = F.softmax(scores / tau_t, dim=-1)  # (B, K): sharpening, centre still 0
sk_t = sk_fn(scores, tau_t)  # (B, K)
torch.testing.assert_close(sk_t, sinkhorn_knopp_teacher(scores, tau_t))
torch.testing.assert_close(sk_t.sum(dim=1), torch.ones(B_toy))  # each image: a distribution

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, layout="constrained")
for ax, (name, p) in zip(axes, [("softmax(g / τ_t)", softmax_t), ("Sinkhorn-Knopp", sk_t)]):
    ax.imshow(p.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
    share = p.sum(dim=0) / B_toy  # (K,): each prototype's share of the batch
    ax.set(title=f"{name}\nbatch-mean entropy {entropy(p.mean(0)):.2f} nats", xlabel="prototype k")
    print(f"{name:18s} largest prototype share {share.max():.2f} (even: {1 / K_toy:.3f})")
axes[0].set_ylabel("image")
fig.suptitle(
    f"Targets of one batch whose scores all favour prototype 3 (ln K = {math.log(K_toy):.2f})"
)
plt.show()

# the other collapse: scores that do not differ between images stay uniform under Sinkhorn-Knopp
flat = sinkhorn_knopp_teacher(torch.zeros(B_toy, K_toy), tau_t)  # (B, K)
torch.testing.assert_close(flat, torch.full((B_toy, K_toy), 1 / K_toy))
print(f"equal scores -> per-image entropy {entropy(flat).mean():.2f} = ln K: uniform targets")

# %% [markdown]
# Sinkhorn-Knopp evens out the prototypes *over the batch*; it does not make any image's target
# confident. Against the uniform collapse (notebook 05's run (c)) it relies, like DINO, on
# sharpening: the low teacher temperature.
#
# **The overflow guard.** The official code computes `exp(teacher_output / teacher_temp)` as it
# is. The DINO head's scores are cosines in $[-1, 1]$, so at $\tau_t = 0.04$ the largest exponent
# is 25 and DINOv2's own heads never overflow; scores from a head without the $\ell_2$ bottleneck,
# or a much lower temperature, would: above $88\,\tau_t$ the official version returns NaN. The
# core subtracts each prototype's largest score first: equal where the official one is finite,
# finite everywhere.


# %%
def sinkhorn_official_style(teacher_output, teacher_temp, n_iterations=3):
    """dinov2/loss/dino_clstoken_loss.py, one process: no shift before exp."""
    Q = torch.exp(teacher_output / teacher_temp).t()  # (K, B)
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for it in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()  # (B, K)


for scale in (1.0, 3.0, 5.0):  # the scores' largest size
    s = scale * torch.rand(8, 16, generator=g)  # (8, 16)
    official, core = sinkhorn_official_style(s, 0.04), sinkhorn_knopp_teacher(s, 0.04)
    finite = bool(torch.isfinite(official).all())
    agree = finite and torch.allclose(official, core, atol=1e-6)
    print(
        f"scores up to {scale}: official finite {finite!s:5s} equal {agree!s:5s} |"
        f" core finite {bool(torch.isfinite(core).all())}"
    )

# %% [markdown]
# **The collapse experiment again.** Notebook 05's toy world, smaller: fixed features with a large
# shared component (the pull towards one prototype), a `DINOHead` student, an EMA teacher,
# $\tau_t = 0.04$. Three runs, the same initial student and batches: (a) DINO's running centre,
# (d) Sinkhorn-Knopp in its place, (b) neither (sharpening only, which collapses onto one
# prototype). We watch the entropy of the **batch-mean** target: $\ln K$ when the batch uses every
# prototype equally, 0 when every image gets the same one.

# %%
M, dim, K_sim, batch, noise, momentum = 512, 32, 64, 64, 0.75, 0.99
steps = 150 if FAST else 400
g = torch.Generator().manual_seed(0)
features = torch.randn(M, dim, generator=g) + 2.0 * torch.randn(1, dim, generator=g)  # (M, dim)


def teacher_targets(teacher_out, kind, center):
    if kind == "sinkhorn_knopp":
        return sk_fn(teacher_out, 0.04)  # (2B, K)
    return F.softmax((teacher_out - center) / 0.04, dim=-1)  # (2B, K); centre 0 when "none"


def simulate(kind: str):
    torch.manual_seed(0)  # the same initial student in every run
    student = DINOHead(dim, K_sim, hidden_dim=128, bottleneck_dim=32)
    teacher = DINOHead(dim, K_sim, hidden_dim=128, bottleneck_dim=32).requires_grad_(False)
    teacher.load_state_dict(student.state_dict())
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.0)
    center = torch.zeros(1, K_sim)  # (1, K)
    gen_batches = torch.Generator().manual_seed(1)  # the same batches in every run
    history = []
    for _ in tqdm(range(steps), desc=kind, leave=False):
        idx = torch.randint(0, M, (batch,), generator=gen_batches)  # (B,)
        views = torch.cat(
            [features[idx] + noise * torch.randn(batch, dim, generator=gen_batches) for _ in "12"]
        )  # (2B, dim): two noisy views of each image
        with torch.no_grad():
            teacher_out = teacher(views)  # (2B, K)
            p_t = teacher_targets(teacher_out, kind, center)  # (2B, K)
        log_p_s = F.log_softmax(student(views) / 0.1, dim=-1).chunk(2)  # 2 x (B, K)
        t1, t2 = p_t.chunk(2)  # the teacher's view 1 teaches the student's view 2, and back
        loss = -0.5 * ((t1 * log_p_s[1]).sum(-1).mean() + (t2 * log_p_s[0]).sum(-1).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_s, p_te in zip(student.parameters(), teacher.parameters()):
                p_te.mul_(momentum).add_(p_s, alpha=1 - momentum)  # EMA teacher
            if kind == "centering":
                center = 0.9 * center + 0.1 * teacher_out.mean(dim=0, keepdim=True)  # (1, K)
        history.append((entropy(p_t.mean(0)).item(), entropy(p_t).mean().item()))
    return np.array(history)  # (steps, 2): batch-mean entropy, per-image entropy


threads = torch.get_num_threads()
torch.set_num_threads(1)  # tensors this small need only one thread
try:
    runs = {k: simulate(k) for k in ("centering", "sinkhorn_knopp", "none")}
finally:
    torch.set_num_threads(threads)

# %%
labels = {
    "centering": "(a) running centre (DINO)",
    "sinkhorn_knopp": "(d) Sinkhorn-Knopp (DINOv2)",
    "none": "(b) sharpening only",
}
colors = {"centering": "tab:green", "sinkhorn_knopp": "tab:purple", "none": "tab:red"}
lnK = math.log(K_sim)
fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), layout="constrained")
for kind, hist in runs.items():
    axes[0].plot(hist[:, 0], color=colors[kind], label=labels[kind])
    axes[1].plot(hist[:, 1], color=colors[kind], label=labels[kind])
for ax, title in zip(axes, ["entropy of the batch-mean target", "per-image target entropy"]):
    ax.axhline(lnK, color="gray", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="nats", title=title, ylim=(-0.1, lnK + 0.3))
axes[0].legend()
fig.suptitle(f"Toy DINO, K = {K_sim}: which prototypes the teacher's targets use")
save_figure(fig, "10_sinkhorn_collapse")
plt.show()

final = {kind: hist[-20:].mean(axis=0) for kind, hist in runs.items()}  # the last 20 steps
for kind, (batch_h, image_h) in final.items():
    print(f"{labels[kind]:30s} batch-mean entropy {batch_h:.2f}, per image {image_h:.2f}")
assert final["none"][0] < 0.3 * lnK  # one prototype for every image
assert final["sinkhorn_knopp"][0] > 0.9 * lnK  # the batch uses (nearly) every prototype
assert final["sinkhorn_knopp"][0] >= final["centering"][0] - 0.05

# %% [markdown]
# Sharpening alone (red) collapses: every image's target is the same prototype, the batch-mean
# entropy falls towards 0. DINO's centre (green) avoids it, but it needs a few tens of steps to
# learn the shared bias before the batch uses the prototypes evenly. Sinkhorn-Knopp (purple) holds
# the batch-mean entropy at the top **from the first step**: by construction each batch spreads
# over the prototypes. The per-image entropy (right) stays below $\ln K$ in both and comes down
# as training goes on: each image's target grows sharper while different images use different
# prototypes.
#
# The price: Sinkhorn-Knopp needs the whole batch (across processes: three all-reduces per
# iteration) and forces the prototypes to be used evenly even when the data are not even. DINOv2
# uses it for the CLS targets and for the masked patches (there the samples are the $M$ masked
# patches of the batch).
#
# ## 4. KoLeo: spreading the features
#
# The DINO and iBOT losses say nothing about how the image features fill the space: two
# different images may end up with almost the same CLS feature. DINOv2 adds the **KoLeo**
# regulariser (from the Kozachenko-Leonenko entropy estimator; Sablayrolles et al. 2019) on the
# student's backbone CLS features of each global crop:
#
# $$\mathcal{L}_\text{KoLeo} = -\frac{1}{B} \sum_{i=1}^{B} \log \big(\min_{j \ne i}
#   \lVert z_i - z_j \rVert\big), \qquad z_i = x_i / \lVert x_i \rVert .$$
#
# Minimising it pushes each feature away from its **nearest neighbour** in the batch, on the unit
# sphere. The log makes the smallest distances count most: a pair of near-duplicates costs a lot,
# already well-separated points hardly anything. DINOv2 weighs it 0.1.
#
# ### Exercise `koleo` · difficulty 1 · 10 min
#
# Write `koleo_by_hand(x)`:
#
# * **input** features `x` $(B, D)$ (not normalised);
# * **output** $\mathcal{L}_\text{KoLeo}$, one number. Add `1e-8` inside the log, so that two
#   features with the same direction give a large finite value, not `inf`.
#
# <details><summary>Hint</summary>
#
# `z = F.normalize(x, dim=-1)`; for unit vectors the nearest neighbour has the largest inner
# product, so take `z @ z.T` $(B, B)$, put $-1$ (or $-\infty$) on its diagonal with
# `fill_diagonal_`, and `argmax(dim=1)`. Then `(z - z[nn]).norm(dim=-1)`.
#
# </details>


# %%
def koleo_by_hand(x: torch.Tensor) -> torch.Tensor:
    """-mean log(distance of each L2-normalised feature to its nearest other one)."""
    raise NotImplementedError("normalise; nearest other row; -mean log(distance + 1e-8)")


# %% tags=["raises-exception"]
check_koleo(koleo_by_hand)

# %% [markdown]
# **How much.** The value for 64 features in 32 dimensions: spread at random, in 4 tight clusters,
# and with two images sharing one direction. Lower is more spread out.

# %%
koleo_fn = pick("koleo", koleo_by_hand)
g = torch.Generator().manual_seed(0)
spread = torch.randn(64, 32, generator=g)  # (64, 32): random directions
clusters = torch.randn(4, 32, generator=g).repeat_interleave(16, 0)  # (64, 32): 4 centres
clustered = clusters + 0.1 * torch.randn(64, 32, generator=g)  # (64, 32): tight clusters
duplicate = spread.clone()
duplicate[1] = 3 * duplicate[0]  # (64, 32): one pair with the same direction
for name, feats in [("random", spread), ("4 clusters", clustered), ("one duplicate", duplicate)]:
    mine, core = koleo_fn(feats), KoLeoLoss()(feats)
    # with a zero distance, where eps enters (the core: ||z_i - z_j + eps||) moves one term a little
    tolerance = 0.05 if name == "one duplicate" else 1e-4
    torch.testing.assert_close(mine, core, rtol=0, atol=tolerance)
    print(f"{name:14s} KoLeo {mine.item():6.2f}  (KoLeoLoss {core.item():6.2f})")

# %% [markdown]
# Each member of the duplicate pair adds $-\log(10^{-8}) / 64 \approx 0.29$ to the mean: KoLeo
# is dominated by the closest pairs. What it does, in 2-D where we can see it: 24 points bunched on
# one arc of the unit circle, moved by 100 gradient steps on KoLeo alone.

# %%
g = torch.Generator().manual_seed(0)
angles = 0.8 * torch.rand(24, generator=g)  # (24,): all within 0.8 rad
points = torch.stack([angles.cos(), angles.sin()], dim=1)  # (24, 2)
before = points.clone()
points.requires_grad_(True)
optimizer = torch.optim.SGD([points], lr=0.01)
history = []
for _ in range(100):
    loss = KoLeoLoss()(points)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append(loss.item())
after = F.normalize(points.detach(), dim=-1)  # (24, 2): the directions KoLeo sees

fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.5), layout="constrained")
circle = np.linspace(0, 2 * np.pi, 200)
for ax, (name, p) in zip(axes[:2], [("before", before), ("after 100 steps", after)]):
    ax.plot(np.cos(circle), np.sin(circle), color="lightgray", lw=1)
    ax.scatter(p[:, 0], p[:, 1], s=18, color="tab:blue")
    ax.set(title=f"{name}: KoLeo {KoLeoLoss()(p).item():.2f}", aspect="equal")
    ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), xticks=[], yticks=[])
axes[2].plot(history)
axes[2].set(xlabel="step", ylabel="KoLeo", title="the loss while the points spread")
fig.suptitle("KoLeo pushes each L2-normalised point away from its nearest neighbour")
save_figure(fig, "10_koleo_spread")
plt.show()
assert KoLeoLoss()(after) < KoLeoLoss()(before) - 1.0

# %% [markdown]
# The bunch opens up along the circle; the gaps even out, because the pair closest together always
# gets the largest push. In DINOv2 the points are the 1024-d CLS features of a batch and KoLeo
# is one term of the loss among three, so it does not spread them evenly, it stops them from
# crowding. The paper reports it helps retrieval most (nearest-neighbour search needs distinct
# features).
#
# ## 5. Registers
#
# **The artefact.** Darcet et al. (2024) found that large ViTs trained long (DINOv2, OpenCLIP,
# DeiT-III) use a few patch tokens, mostly in uninformative background, as scratch space: their
# output norm is about 10 times the others', they carry global information instead of local, and
# the CLS attention spikes on them, which spoils attention maps. DINO ViT-S/B did not show it, and
# it appeared only in large models after enough training. The fix: add $R$ learned **registers**,
# tokens with no position and no patch, that the network can use as scratch space instead, and
# throw them away at the output.
#
# First we look for the artefact in the course's own model: the norms of its patch tokens at the
# output of the last block (before the final norm, as Darcet et al. measure), on validation images.

# %%
weights = course_weights("cpu")
print(weights.summary())
model = weights.model  # eval mode
IMG, PATCH = weights.image_size, weights.patch_size
n_val = 16 if FAST else 64
val = build_dataset("imagenette", "val")
picks = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:n_val].tolist()
val_images = torch.cat([load_image(val[i][0], IMG, PATCH) for i in picks])  # (n, 3, IMG, IMG)
R0 = getattr(model, "num_register_tokens", 0)  # 0 for a DINO checkpoint
with torch.no_grad():
    out = model.forward_features_dict(val_images)
patch_norms = out["x_prenorm"][:, 1 + R0 :].norm(dim=-1)  # (n, N): each patch token's norm
cls_norm = out["x_prenorm"][:, 0].norm(dim=-1)  # (n,)
median = patch_norms.median().item()
ratio = patch_norms.max(dim=1).values / patch_norms.median(dim=1).values  # (n,) per image
print(
    f"{n_val} images, {patch_norms.shape[1]} patches each: patch-token norm median {median:.1f},"
    f" largest {patch_norms.max():.1f}; CLS {cls_norm.median():.1f}"
)
print(
    f"per image, largest / median patch norm: median {ratio.median():.2f}, max {ratio.max():.2f}"
    " (Darcet et al.: about 10 for the artefact tokens)"
)
outliers = int((patch_norms > 5 * patch_norms.median(dim=1, keepdim=True).values).sum())
print(f"patch tokens above 5 x their image's median norm: {outliers} of {patch_norms.numel()}")

# %%
attn = cls_attention(model, val_images[:4]).mean(dim=1)  # (4, h, w): mean over heads
h = IMG // PATCH
fig, axes = plt.subplots(3, 5, figsize=(10.5, 7.2), layout="constrained")
axes[0, 0].hist(patch_norms.flatten().numpy(), bins=40, color="tab:blue")
axes[0, 0].set(title="patch-token norms", xlabel="norm", ylabel="patches")
for ax in axes[1:, 0]:
    ax.axis("off")
mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
for j in range(4):
    image = (val_images[j].permute(1, 2, 0) * std + mean).clamp(0, 1)  # (IMG, IMG, 3)
    axes[0, j + 1].imshow(image.numpy())
    im = axes[1, j + 1].imshow(patch_norms[j].view(h, h).numpy(), cmap="viridis")
    fig.colorbar(im, ax=axes[1, j + 1], fraction=0.046)
    axes[2, j + 1].imshow(attn[j].numpy(), cmap="inferno")
    axes[1, j + 1].set_title(f"max/median\n{ratio[j]:.2f}")
    axes[2, j + 1].set_title("CLS\nattention")
for ax in axes[:, 1:].flat:
    ax.set(xticks=[], yticks=[])
fig.suptitle(f"Looking for high-norm tokens: {weights.label}")
save_figure(fig, "10_token_norms")
plt.show()

# %% [markdown]
# What we see at this scale: the patch-token norms form one bump with a short right tail, no
# separate group of outliers an order of magnitude above the rest (the largest is about twice its
# image's median, not 10 times), and the CLS attention has no isolated spike on a background
# patch. A ViT-tiny on 72 px images (36 patches), trained on a CPU, shows **no artefact**. That
# matches Darcet et al.: the high-norm tokens appear in large models (ViT-L and up, they report)
# after long training, when the network has learned to discard the content of redundant patches.
# Registers are a fix for a problem this course's model does not have, so we show what they
# change mechanically, and leave their benefit to the papers.
#
# **What registers change.** `VisionTransformer(..., num_register_tokens=R)` adds
# `register_tokens` $(1, R, D)$ (DINOv2 initialises them with std $10^{-6}$). The tokens are
# ordered [CLS, registers, patches], $(B, 1+R+N, D)$; the registers are inserted *after* the
# position embeddings are added, so they have none. Every block attends over all $1+R+N$ tokens;
# at the output the registers are dropped. By hand, on a random ViT-tiny with 4 registers:

# %%
torch.manual_seed(0)
vit_reg = VisionTransformer(
    img_size=72, patch_size=12, embed_dim=192, depth=12, num_heads=3, num_register_tokens=4
).eval()
R = vit_reg.num_register_tokens
x = val_images[:2]  # (2, 3, 72, 72)
with torch.no_grad():
    t = vit_reg.patch_embed(x)  # (B, N, D) = (2, 36, 192)
    t = torch.cat((vit_reg.cls_token.expand(2, -1, -1), t), dim=1)  # (B, 1+N, D)
    t = t + vit_reg.pos_embed  # (B, 1+N, D): positions for CLS and patches
    t = torch.cat((t[:, :1], vit_reg.register_tokens.expand(2, -1, -1), t[:, 1:]), dim=1)
    torch.testing.assert_close(t, vit_reg.prepare_tokens(x))  # (B, 1+R+N, D)
    out = vit_reg.forward_features_dict(x)
print("register_tokens", tuple(vit_reg.register_tokens.shape), "| tokens", tuple(t.shape))
for key, value in out.items():
    print(f"  {key:20s} {tuple(value.shape) if value is not None else None}")
assert out["x_norm_regtokens"].shape == (2, R, 192)
assert out["x_norm_patchtokens"].shape == (2, 36, 192)

# %% [markdown]
# The registers are ordinary tokens to attention: the CLS row of the last attention spreads over
# CLS, registers and patches. At random initialisation the registers are near zero vectors, so
# they get about what any token gets. In large trained models with the artefact, Darcet et al.
# show the high-norm outliers leaving the patches once registers are there (the registers take
# over their role) and the CLS attention maps becoming clean. `cls_attention` skips the registers:
# its maps cover only the patches.

# %%
with torch.no_grad():
    last = vit_reg.get_last_selfattention(x)  # (B, heads, 1+R+N, 1+R+N)
cls_row = last[:, :, 0]  # (B, heads, 1+R+N): what CLS attends to
to_regs = cls_row[:, :, 1 : 1 + R].sum(-1).mean().item()
to_patches = cls_row[:, :, 1 + R :].sum(-1).mean().item()
n_tokens = 1 + R + 36
print(
    f"random ViT-tiny, 4 registers: CLS gives {to_regs:.1%} of its attention to the registers,"
    f" {to_patches:.1%} to the 36 patches (uniform would be {R / n_tokens:.1%} and"
    f" {36 / n_tokens:.1%})"
)
maps = cls_attention(vit_reg, x)  # (B, heads, 6, 6): only the patches, registers skipped
assert maps.shape == (2, 3, 6, 6)

# %% [markdown]
# ## 6. Training with the additions
#
# The trainer takes DINOv2's additions as config keys, named as DINOv2 names them:
#
# | key | meaning | `workshop_dinov2` |
# |---|---|---|
# | `ibot` | masked patches and the iBOT loss (section 2) | `true` |
# | `ibot_loss_weight` | its weight in the total loss | 1.0 |
# | `ibot_mask_ratio_min_max` | the share range of a masked crop's patches | `[0.1, 0.5]` |
# | `ibot_mask_sample_probability` | the share of global crops that are masked | 0.5 |
# | `ibot_separate_head` | a patch head of its own (else the DINO head serves) | `false` |
# | `centering` | `centering` (DINO's centre) or `sinkhorn_knopp` (section 3) | `sinkhorn_knopp` |
# | `koleo_loss_weight` | KoLeo on the student's global-crop CLS features (section 4) | 0.1 |
# | `num_register_tokens` | registers in the ViT (section 5) | 4 |
#
# The shipped config `workshop_dinov2` is `workshop_tiny` (notebook 09) with these added: the same
# model, crops and schedule, so the two compare under one budget. In a terminal:
#
# ```bash
# python -m vitdino_core.train --config workshop_dinov2
# python -m vitdino_core.train --config workshop_tiny --set ibot=true --set koleo_loss_weight=0.1
# ```
#
# Here, a few steps of it in the notebook, with the losses it logs.

# %%
from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

RUNS = tempfile.mkdtemp(prefix="vitdino_10_")
n_steps = 3 if FAST else 10
cfg = load_config(
    "workshop_dinov2",
    [
        f"output_dir={RUNS}",
        "max_images=64" if FAST else "max_images=320",
        "batch_size_per_gpu=16",
        f"max_steps={n_steps}",
        "log_every=1",
        "num_workers=0",
    ],
)
print(
    {k: getattr(cfg, k) for k in ("ibot", "centering", "koleo_loss_weight", "num_register_tokens")}
)
trainer = DINOTrainer(cfg, quiet=True)
records = trainer.fit()
for rec in records:
    parts = {k: rec[k] for k in ("loss", "dino_loss", "ibot_loss", "koleo_loss") if k in rec}
    print(f"step {rec.get('step', '?')}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
assert trainer.step == n_steps
assert trainer.student.backbone.num_register_tokens == 4
assert all(math.isfinite(rec["loss"]) for rec in records)

# %% [markdown]
# ## Comparison with plain DINO
#
# Do the additions pay at this scale? The fair test trains plain DINO (notebook 06's recipe) and
# DINO with the four additions for the same minutes of CPU time, on 3 seeds each, and scores each
# teacher, before and after, with the kNN and the linear probe on the whole train and val splits.
# A DINOv2 step costs more (the masked student pass, the iBOT and KoLeo terms, 4 more tokens), so
# in the same 10 minutes it takes fewer steps. The course ran it with:
#
# ```bash
# python benchmarks/workshop_recipes.py --measure --speed speed.json \
#     --recipes lr1e-4_tt0.04 lr1e-4_tt0.04_dinov2
# python benchmarks/workshop_recipes.py --speed speed.json \
#     --recipes lr1e-4_tt0.04 lr1e-4_tt0.04_dinov2 --seeds 0 1 2 --budget-min 10 --probe \
#     --csv comparison.csv
# ```
#
# and keeps the rows in `benchmarks/results/cpu-epyc_workshop-recipes/recipes.csv`:

# %%
PLAIN, PLUS = "lr1e-4_tt0.04", "lr1e-4_tt0.04_dinov2"  # notebook 06's run; with the additions
STUDY = REPO_ROOT / "benchmarks/results/cpu-epyc_workshop-recipes"  # the study's data
with open(STUDY / "recipes.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["recipe"] in (PLAIN, PLUS)]
rows.sort(key=lambda r: (r["recipe"], int(r["seed"])))  # plain first, then by seed
print(f"{'recipe':>20} {'seed':>4} {'steps':>5}   kNN: init -> trained   probe: init -> trained")
for r in rows:
    print(
        f"{r['recipe']:>20} {r['seed']:>4} {r['steps']:>5}   {float(r['knn_random_init']):9.1f}"
        f" -> {float(r['knn_trained']):5.1f}   {float(r['probe_random_init']):11.1f}"
        f" -> {float(r['probe_trained']):5.1f}"
    )
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
for ax, key in zip(axes, ("knn", "probe")):
    for i, name in enumerate((PLAIN, PLUS)):
        mine = [r for r in rows if r["recipe"] == name]
        before = [float(r[f"{key}_random_init"]) for r in mine]
        after = [float(r[f"{key}_trained"]) for r in mine]
        ax.plot([i - 0.1] * len(before), before, "o", color="gray", alpha=0.6)
        ax.plot([i + 0.1] * len(after), after, "o", color=f"C{i}", ms=7)
        print(
            f"{name:>20} {key:>5}: trained {np.mean(after):5.1f} (seeds {np.ptp(after):.1f} apart)"
        )
    ax.set_xticks([0, 1], ["plain DINO", "DINO + DINOv2's\nadditions"])
    ax.set(ylabel="top-1 (%)", title="kNN" if key == "knn" else "linear probe", xlim=(-0.5, 1.5))
fig.suptitle("3 seeds, 10 minutes of a 2-core CPU each: gray at random init, coloured after")
save_figure(fig, "10_comparison")
plt.show()

# %% [markdown]
# **What the additions did at this scale.** In the same 10 minutes plain DINO takes 512 steps and
# DINO with the additions 448. Each run is scored against its own network at random init (the
# registers change the initial draw, so the two start from slightly different random networks):
#
# * **kNN**: the additions gain +4.3, +4.3 and +4.6 points over random init, plain DINO +1.8,
#   +2.0 and +1.8. The seeds agree within 0.3 points; the difference is 2.5. In 10 minutes only
#   the additions clear the 3 points notebook 06 asks of its run.
# * **Linear probe**: the other way round. Plain DINO gains +4.8 to +5.3 points, the additions
#   +2.6 to +4.3.
#
# The study did not separate the four additions (each alone is three more 10-minute runs: a good
# experiment to make). A plausible reading: Sinkhorn-Knopp spreads the teacher's targets evenly over
# the prototypes from the first step, and KoLeo pushes the CLS features of different images apart,
# which is what the kNN's cosine neighbours reward; the probe, which can reweigh directions, gains
# less from it. These are 10-minute runs of a ViT-tiny on 48 px crops; DINOv2's own ablations were
# run with large ViTs on ImageNet-scale data, and neither result predicts the other.
#
# And the pictures of notebook 07? The seed-0 runs of both recipes, kept and drawn with
#
# ```bash
# python benchmarks/workshop_recipes.py --speed speed.json --budget-min 10 --threads 1 \
#     --recipes lr1e-4_tt0.04 lr1e-4_tt0.04_dinov2 --seeds 0 --keep-runs runs/
# python benchmarks/workshop_pictures.py --runs runs/ --out compared.png
# ```
#
# (the kept runs scored 29.96 -> 31.80 and 28.74 -> 33.04 kNN, the same as their rows in the CSV):
# the CLS attention of the last block and the patch PCA colours of one validation image per class,
# for each network at random init and after its 10 minutes, shown at 96 px (8 x 8 patches).

# %%
for kind in ("attention", "pca"):
    display(Image(filename=str(STUDY / f"compared_{kind}.png"), width=760))

# %% [markdown]
# Neither run draws an object. The attention moves away from its random-init pattern in both, but
# it does not settle on the fish, the dog or the man in the tree, and the PCA colours stay a
# patchwork without the parts that notebook 07's checkpoint shows; nothing in these pictures tells
# the run with the additions from plain DINO. Their 2.5-point kNN difference lives in the CLS
# feature's neighbours, not yet in maps a person can read: those take a longer run (the course
# checkpoint of notebooks 07 and 08 trained for hours on a GPU).

# %% [markdown]
# ## What we built
#
# * **Block-wise masks** (`MaskingGenerator`, `collate_masks`): rectangles of random area and
#   aspect on the patch grid; half the global crops masked, with ratios spread over $[0.1, 0.5]$;
#   the same masks as the official code from the same seed.
# * The **mask token** and the **iBOT patch loss** (`iBOTPatchLoss`): the student predicts the
#   teacher's prototype distribution at its masked patches; each crop's masked patches averaged,
#   then the crops.
# * **Sinkhorn-Knopp centering** (`sinkhorn_knopp_teacher`): targets that share the prototypes
#   evenly within each batch, in place of DINO's running centre; it holds the batch-mean entropy at
#   its maximum from the first step of the collapse experiment. Stabler than the official code:
#   finite where the official `exp` overflows, equal elsewhere.
# * **KoLeo** (`KoLeoLoss`): $-$mean log nearest-neighbour distance of the normalised features;
#   it spreads a bunch of points apart, the closest pairs first.
# * **Registers** in the ViT: $R$ tokens without position between CLS and the patches. The
#   course's small model shows no high-norm artefact for them to absorb.
#
# ## More to try
#
# 1. Draw masks on the $6 \times 6$ grid of the course's 72 px crops with `max_num_patches=18`.
#    How often does the generator stop short of the count it was asked for, and why is it more
#    often than on a $16 \times 16$ grid?
# 2. In the collapse experiment, lower `teacher_temp` to 0.02 or raise it to 0.1 for the
#    Sinkhorn-Knopp run. What happens to the per-image entropy? Then give it `n_iterations=1`.
# 3. Add KoLeo with weight 0.1 to run (b) of the collapse experiment (on the student's head input,
#    the noisy views): does it prevent the collapse? What does that say about what KoLeo spreads?
# 4. Run `python -m vitdino_core.train --config workshop_dinov2` and, in notebooks 07 and 08, point
#    `VITDINO_CHECKPOINT` at its checkpoint: compare its attention maps, PCA colours and kNN with
#    the shipped DINO model's.

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["masking", "ibot_loss", "sinkhorn_knopp", "koleo"])
