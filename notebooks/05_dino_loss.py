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
# # 05 · The DINO head and loss: self-distillation without collapse
#
# DINO trains a **student** network to predict the output of a **teacher** network, on different
# views of the same image (notebook 04). Neither has labels; the teacher is just a slowly moving
# average of the student (notebook 06). This sounds like it cannot work: the easiest way for two
# networks to agree is to output the same thing for every image, a **collapse**. This notebook is
# about the three ingredients that turn "agree with yourself" into a learning signal:
#
# * a **projection head** that maps the backbone's feature to $K$ scores (DINO: $K = 65536$), read
#   as a probability distribution through a softmax with a **temperature**;
# * **sharpening** the teacher (a low temperature, $\tau_t = 0.04$ against the student's
#   $\tau_s = 0.1$);
# * **centering** the teacher (subtract a running mean $c$ of its outputs before the softmax).
#
# ```
# view x  ─► teacher ─► g_t(x)  ─► softmax((g_t - c) / tau_t) = P_t(x) ─┐  centre, sharpen,
#            (backbone + head)                                          │  no gradient
#                                                                       ├─► H(P_t, P_s)
# view x' ─► student ─► g_s(x') ─► softmax(g_s / tau_s)       = P_s(x') ─┘  cross-entropy
# ```
#
# We build the head and the loss by hand, as four exercises, and check them against
# `vitdino_core.DINOHead` and `vitdino_core.DINOLoss`. Then we run a small simulation that shows
# both collapse modes, and how centering and sharpening together avoid them, with the curves of the
# DINO paper's Figure 7.
#
# **Exercises.** Each one says what to write, gives a hint (click to open) and ends in a check cell
# that tests your function and names the likely mistake. Until a check passes, the cells after it
# use `vitdino_core`'s version, so you can go on reading.

# %%
import copy
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vitdino_core import DINOHead, DINOLoss
from vitdino_core.dino_loss import teacher_temp_schedule
from vitdino_core.exercises import (
    assert_checked,
    check_center_update,
    check_dino_head,
    check_dino_loss,
    check_teacher_probs,
    pick,
)
from vitdino_core.notebook import save_figure, setup

env = setup(seed=0)
FAST = env.fast  # True under CI or VITDINO_FAST=1: fewer simulation steps, every cell still runs

# %% [markdown]
# ## 1. The DINO head
#
# On top of the backbone's class-token feature ($D = 384$ for ViT-S), DINO puts a head $g$:
#
# 1. a 3-layer MLP, $D \to 2048 \to 2048 \to 256$, with GELU between the layers (no batch norm for
#    ViTs);
# 2. **$\ell_2$ normalisation** of the 256-d bottleneck: $z \leftarrow z / \lVert z \rVert$;
# 3. a **weight-normalised** linear layer without bias, $256 \to K$: each output unit $k$ has the
#    weight $w_k = g_k\, v_k / \lVert v_k \rVert$ (Salimans & Kingma, 2016). With
#    `norm_last_layer=True` the lengths $g_k$ are fixed at 1, so every $w_k$ is a unit vector.
#
# Steps 2 and 3 together make each score a **cosine similarity**,
# $g(x)_k = z \cdot w_k \in [-1, 1]$: the $K$ vectors $w_k$ act as learned *prototypes*, and the
# output says how close the image is to each of them. Dividing by the student temperature 0.1 turns
# this into logits in $[-10, 10]$. Fixing the length of the prototypes keeps the scores in this
# range and, the paper reports, stabilises training.

# %% [markdown]
# ### Exercise `dino_head` · difficulty 1 · 10 min
#
# Write `dino_head_by_hand(x, mlp, v, g)`, the head's forward pass from its pieces:
#
# * **input** backbone features `x` $(B, D)$; `mlp`, the 3-layer MLP (a module: `mlp(x)` is
#   $(B, 256)$); the prototype directions `v` $(K, 256)$, one prototype per **row**; their lengths
#   `g` $(K, 1)$;
# * **output** the scores $(B, K)$: $z \cdot w_k$ with $z$ = `mlp(x)` normalised to length 1 and
#   $w_k = g_k v_k / \lVert v_k \rVert$.
#
# The check builds heads with $g = 1$ and with learned lengths $g \ne 1$.
#
# <details><summary>Hint</summary>
#
# `F.normalize(t, dim=-1)` divides each row of `t` by its length; `v.norm(dim=1, keepdim=True)` is
# $(K, 1)$, one length per prototype. The scores are then one matrix product, `z @ w.T`.
#
# </details>


# %%
def dino_head_by_hand(x: torch.Tensor, mlp: nn.Module, v: torch.Tensor, g: torch.Tensor):
    """(B, D) features -> (B, K) scores: cosine similarity to each prototype, times its length g."""
    ### BEGIN SOLUTION
    # task: scores (B, K) = normalised mlp(x) @ (g * v / ||v||).T
    z = F.normalize(mlp(x), dim=-1)  # (B, bottleneck): unit length
    w = g * v / v.norm(dim=1, keepdim=True)  # (K, bottleneck): row k has length g_k
    return z @ w.T  # (B, K): cosine similarities, times g
    ### END SOLUTION


# %%
check_dino_head(dino_head_by_hand)

# %% [markdown]
# From here on `dino_head_fn` is your function once its check passes, the core's until then. We feed
# it the pieces of a `vitdino_core.DINOHead` and compare with the module's own forward pass. The
# core keeps the last layer in torch's `weight_norm`: `original0` is $g$, `original1` is $v$.

# %%
dino_head_fn = pick("dino_head", dino_head_by_hand)
in_dim, K = 384, 4096
core_head = DINOHead(in_dim, K)  # hidden 2048, bottleneck 256, norm_last_layer=True
weight = core_head.last_layer.parametrizations.weight  # original0: g (K, 1), original1: v (K, 256)
assert torch.all(weight.original0 == 1) and not weight.original0.requires_grad  # g = 1, frozen

feats = torch.randn(8, in_dim)  # (B, D): 8 backbone features
with torch.no_grad():
    out = dino_head_fn(feats, core_head.mlp, weight.original1, weight.original0)  # (8, 4096)
    torch.testing.assert_close(out, core_head(feats))
assert out.abs().max() <= 1 + 1e-5
print(
    f"dino_head_fn == vitdino_core.DINOHead; output {tuple(out.shape)}, "
    f"scores in [{out.min():.2f}, {out.max():.2f}] within [-1, 1]"
)

# %% [markdown]
# At DINO's size, $K = 65536$, the head is larger than a ViT-S backbone (21.67M), almost all of it
# in the last layer ($256 \times 65536$). We count on the `meta` device (shapes only): the official
# number is 22.35M.

# %%
with torch.device("meta"):
    official = DINOHead(384, 65536)
n_head = sum(p.numel() for p in official.parameters())
n_last = sum(p.numel() for p in official.last_layer.parameters())
print(f"DINOHead(384, 65536): {n_head:,} parameters, {n_last:,} of them in the last layer")
assert n_head == 22_352_128  # 22.35M, the official DINO count (the frozen lengths g included)

# %% [markdown]
# ## 2. Temperatures: sharpening
#
# The head's scores become distributions with a softmax at temperature $\tau$:
# $P(x)_k = \exp(g(x)_k / \tau) / \sum_j \exp(g(x)_j / \tau)$. A low temperature **sharpens**: it
# widens the gaps between scores before the softmax, so the largest score takes most of the mass.
# DINO uses $\tau_s = 0.1$ for the student and a sharper $\tau_t = 0.04$ for the teacher. Here is
# one vector of 8 cosine scores under three temperatures.

# %%
scores = torch.tensor([0.30, 0.25, 0.10, 0.05, 0.0, -0.05, -0.20, -0.30])  # (8,): cosines
fig, axes = plt.subplots(1, 3, figsize=(10, 2.9), sharey=True, layout="constrained")
for ax, tau in zip(axes, (1.0, 0.1, 0.04)):
    p = F.softmax(scores / tau, dim=-1)  # (8,)
    ax.bar(range(8), p.numpy(), color="tab:blue" if tau != 0.04 else "tab:red")
    entropy = -(p * p.log()).sum().item()
    ax.set(title=rf"$\tau$ = {tau}: entropy {entropy:.2f} nats", xlabel="output k", xticks=range(8))
axes[0].set_ylabel("probability")
fig.suptitle("softmax(scores / τ): lower temperature, sharper distribution (uniform: ln 8 = 2.08)")
plt.show()

# %% [markdown]
# ## 3. The loss, by hand
#
# For one image, the teacher sees the 2 global views and the student sees all $V = 2 + N$ views.
# With the centre $c \in \mathbb{R}^K$,
#
# $$P_t(x) = \mathrm{softmax}\!\left(\frac{g_t(x) - c}{\tau_t}\right), \qquad
#   P_s(x') = \mathrm{softmax}\!\left(\frac{g_s(x')}{\tau_s}\right),$$
#
# and the loss is the cross-entropy $H(a, b) = -\sum_k a_k \log b_k$ averaged over every pair of a
# teacher view and a student view **except a view with itself** (matching a view to itself teaches
# nothing):
#
# $$\mathcal{L} = \frac{1}{2(V-1)} \sum_{x \in \{x^g_1, x^g_2\}} \;
#   \sum_{\substack{x' \in \text{views} \\ x' \neq x}} H\big(P_t(x), P_s(x')\big),$$
#
# each term averaged over the batch. No gradient flows into the teacher (`detach`). After the step,
# the centre follows the mean teacher output with momentum $m = 0.9$:
#
# $$c \leftarrow m\, c + (1 - m) \frac{1}{2B} \sum_{i=1}^{2B} g_t(x_i).$$
#
# The outputs arrive stacked view by view (notebook 04): rows $vB \dots (v+1)B - 1$ are view $v$ of
# the $B$ images. Three exercises: the teacher's target, the centre's update, the loss.

# %% [markdown]
# ### Exercise `teacher_probs` · difficulty 1 · 5 min
#
# Write `teacher_probs_by_hand(teacher_out, center, teacher_temp)`:
#
# * **input** the teacher's scores `teacher_out` $(2B, K)$ (2 global views of $B$ images), the
#   centre `center` $(1, K)$, the temperature $\tau_t$;
# * **output** $P_t$ $(2B, K)$: centre, sharpen, softmax over the $K$ outputs. It is a target: no
#   gradient may flow back through it.
#
# <details><summary>Hint</summary>
#
# `F.softmax(..., dim=-1)` makes each row sum to 1. `.detach()` cuts the graph.
#
# </details>


# %%
def teacher_probs_by_hand(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float):
    """(2B, K) teacher scores -> (2B, K) centred, sharpened probabilities, without gradient."""
    ### BEGIN SOLUTION
    # task: softmax((teacher_out - center) / teacher_temp), no grad
    return F.softmax((teacher_out.detach() - center) / teacher_temp, dim=-1)  # (2B, K)
    ### END SOLUTION


# %%
check_teacher_probs(teacher_probs_by_hand)

# %% [markdown]
# ### Exercise `center_update` · difficulty 1 · 5 min
#
# Write `center_update_by_hand(center, teacher_out, momentum=0.9)`:
#
# * **input** the centre $(1, K)$, the teacher's raw scores $(2B, K)$ (before centering), $m$;
# * **output** the new centre $(1, K)$: $m\,c + (1 - m)$ times the batch mean of the scores.
#
# <details><summary>Hint</summary>
#
# The mean runs over the $2B$ rows, one value per output: `mean(dim=0, keepdim=True)`. The old
# centre keeps most of its weight ($m = 0.9$).
#
# </details>


# %%
def center_update_by_hand(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9):
    """c <- m c + (1 - m) * the batch mean of the teacher's scores: (1, K)."""
    ### BEGIN SOLUTION
    # task: m * center + (1 - m) * batch mean of teacher_out, (1, K)
    return momentum * center + (1 - momentum) * teacher_out.mean(dim=0, keepdim=True)  # (1, K)
    ### END SOLUTION


# %%
check_center_update(center_update_by_hand)

# %% [markdown]
# ### Exercise `dino_loss` · difficulty 2 · 20 min
#
# Write `dino_loss_by_hand(student_out, teacher_out, center, ncrops, student_temp, teacher_temp)`:
#
# * **input** the student's scores $(V B, K)$ for all `ncrops` $= V$ views, the teacher's $(2B, K)$
#   for the 2 global views, both stacked view by view; the centre $(1, K)$; $\tau_s$, $\tau_t$;
# * **output** the loss, one number (a 0-d tensor that carries the student's gradient): the mean of
#   $H(P_t(x), P_s(x'))$ over the $2(V-1)$ pairs, each averaged over the $B$ images.
#
# Use `teacher_probs_fn` (your `teacher_probs_by_hand` once its check passes). Don't move the centre
# here: `DINOLoss` does that after computing the loss, `center_update_fn` in our test.
#
# <details><summary>Hint</summary>
#
# `t.chunk(n)` cuts the rows into `n` equal blocks: one block per view. Loop over the 2 teacher
# views `iq` and the `ncrops` student views `v`, skip `v == iq`, and add
# `torch.sum(-q * F.log_softmax(s / student_temp, dim=-1), dim=-1).mean()`.
#
# </details>

# %%
teacher_probs_fn = pick("teacher_probs", teacher_probs_by_hand)
center_update_fn = pick("center_update", center_update_by_hand)


def dino_loss_by_hand(
    student_out, teacher_out, center, ncrops, student_temp=0.1, teacher_temp=0.04
):
    """The official double loop. student_out (ncrops*B, K), teacher_out (2B, K), center (1, K)."""
    ### BEGIN SOLUTION
    # task: mean cross-entropy over (teacher view, other view) pairs
    student = (student_out / student_temp).chunk(ncrops)  # ncrops x (B, K) logits
    teacher = teacher_probs_fn(teacher_out, center, teacher_temp).chunk(2)  # 2 x (B, K) targets
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher):  # teacher view iq = 0, 1 (the globals)
        for v in range(ncrops):  # every student view ...
            if v == iq:
                continue  # ... except the same view
            ce = torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1)  # (B,): H(P_t, P_s)
            total = total + ce.mean()  # batch mean
            n_terms += 1
    return total / n_terms  # n_terms = 2 * (ncrops - 1)
    ### END SOLUTION


# %%
check_dino_loss(dino_loss_by_hand)

# %% [markdown]
# Now three steps with the core's `DINOLoss`, which moves its own centre, against our loss and
# centre update (yours where the checks passed).

# %%
dino_loss_fn = pick("dino_loss", dino_loss_by_hand)
B, ncrops, K_small = 4, 6, 32  # 4 images, 2 global + 4 local views, 32 outputs
loss_fn = DINOLoss(
    K_small,
    ncrops,
    warmup_teacher_temp=0.04,
    teacher_temp=0.04,
    warmup_teacher_temp_epochs=0,
    nepochs=10,
    student_temp=0.1,
    center_momentum=0.9,
)
center = torch.zeros(1, K_small)  # (1, K): the centre starts at zero
g = torch.Generator().manual_seed(0)
for step in range(3):  # three steps, so the centre is no longer zero
    student_out = torch.randn(ncrops * B, K_small, generator=g, requires_grad=True)  # (24, 32)
    teacher_out = torch.randn(2 * B, K_small, generator=g) + 0.5  # (8, 32): an offset to learn
    mine = dino_loss_fn(student_out, teacher_out, center, ncrops)
    core = loss_fn(student_out, teacher_out, epoch=0)  # also updates loss_fn.center
    center = center_update_fn(center, teacher_out)
    torch.testing.assert_close(mine, core)
    torch.testing.assert_close(center, loss_fn.center)
    print(
        f"step {step}: loss by hand {mine.item():.4f} == DINOLoss {core.item():.4f}; "
        f"centre mean {center.mean():.3f}"
    )

loss_mine = dino_loss_fn(student_out, teacher_out, center, ncrops)
grad_mine = torch.autograd.grad(loss_mine, student_out)[0]
grad_core = torch.autograd.grad(loss_fn(student_out, teacher_out, 0), student_out)[0]
torch.testing.assert_close(grad_mine, grad_core)  # same gradient for the student
print(f"{2 * (ncrops - 1)} (teacher, student) pairs per image; gradients agree too")

# %% [markdown]
# `DINOLoss.forward` in `vitdino_core/dino_loss.py` is the same double loop as the official code
# and yours: the teacher's two global views, every student view except the same one, one
# cross-entropy per pair, averaged over the pairs. It takes the student's log-softmax once for all
# views before the loop, and it moves its own centre after computing the loss.
#
# **A useful number: $\ln K$.** If both distributions are uniform, every term is $-\sum_k
# \frac{1}{K} \ln \frac{1}{K} = \ln K$. A DINO loss that sits at $\ln K$ (11.09 for $K = 65536$)
# means nothing is being learned: uniform collapse.

# %%
uniform_loss = DINOLoss(65536, 10, 0.04, 0.04, 0, 1)(
    torch.zeros(10 * 2, 65536), torch.zeros(2 * 2, 65536), 0
)
print(f"loss for uniform outputs: {uniform_loss.item():.4f}, ln(65536) = {math.log(65536):.4f}")
torch.testing.assert_close(uniform_loss, torch.tensor(math.log(65536)))

# %% [markdown]
# ## 4. Two ways to collapse
#
# The cross-entropy splits into the teacher's entropy plus a KL divergence,
#
# $$H(P_t, P_s) = h(P_t) + \mathrm{KL}(P_t \,\|\, P_s),$$
#
# and only the KL depends on the student. A collapsed teacher outputs the same distribution for
# every image and every view; the student copies it, and the KL drops to **0**: there is nothing
# left to learn. The DINO paper (Section 5.3, Figure 7) tells the two kinds of collapse apart by the
# teacher's entropy $h(P_t)$:
#
# * **one dimension dominates**: every image gets the same one-hot output, $h(P_t) \to 0$.
#   Sharpening pushes this way: whatever output is largest gets amplified. **Centering** prevents
#   it: subtracting the mean over the batch lowers any dimension that is high *for every image*.
# * **uniform**: every image gets the uniform output, $h(P_t) \to \ln K$. Centering alone pushes
#   this way (once the mean is removed, what is left can flatten out). **Sharpening** prevents it:
#   small differences between images are blown up into confident targets.
#
# Together they balance. We train three small models and watch $h(P_t)$ and
# $\mathrm{KL}(P_t \,\|\, P_s)$:
#
# | run | centering | sharpening | with `DINOLoss` |
# |---|---|---|---|
# | (a) DINO | yes ($m = 0.9$) | yes ($\tau_t = 0.04$) | `center_momentum=0.9, teacher_temp=0.04` |
# | (b) sharpening only | no | yes | `center_momentum=1.0`: $c$ stays at 0 |
# | (c) centering only | yes | no | `teacher_temp=0.1` $= \tau_s$ |
#
# **The toy world.** To keep this in seconds, the backbone is replaced by fixed features: $M = 512$
# "images", each a random vector in $\mathbb{R}^{32}$ with a large component shared by all images
# (real backbone features share one too). A "view" adds Gaussian noise to the vector (our stand-in
# for augmentations), 2 views per image. Student: a `DINOHead(32, K=64)`; teacher: an exponential
# moving average of the student (momentum 0.99, notebook 06).

# %%
M, dim, K_sim, batch, noise, momentum = 512, 32, 64, 64, 0.75, 0.99
steps = 250 if FAST else 600
g = torch.Generator().manual_seed(0)
shared = 2.0 * torch.randn(1, dim, generator=g)  # (1, dim): a part every image has
features = torch.randn(M, dim, generator=g) + shared  # (M, dim): shared + own part


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)  # (..., K) -> (...,) in nats


def simulate(name: str, teacher_temp: float, center_momentum: float):
    torch.manual_seed(0)  # the same initial student for every run
    student = DINOHead(dim, K_sim, hidden_dim=128, bottleneck_dim=32)
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = DINOLoss(
        K_sim,
        ncrops=2,
        warmup_teacher_temp=teacher_temp,
        teacher_temp=teacher_temp,
        warmup_teacher_temp_epochs=0,
        nepochs=1,
        student_temp=0.1,
        center_momentum=center_momentum,
    )
    gen = torch.Generator().manual_seed(1)  # the same batches for every run
    history = {"entropy": [], "kl": [], "batch_entropy": []}
    for _ in tqdm(range(steps), desc=name, leave=False):
        idx = torch.randint(0, M, (batch,), generator=gen)  # (batch,) images
        views = torch.cat(
            [features[idx] + noise * torch.randn(batch, dim, generator=gen) for _ in range(2)]
        )  # (2B, dim): 2 noisy views of each image
        student_out = student(views)  # (2B, K)
        with torch.no_grad():
            teacher_out = teacher(views)  # (2B, K)
            p_t = loss_fn.teacher_probs(teacher_out, epoch=0)  # (2B, K): before the centre moves
        loss = loss_fn(student_out, teacher_out, epoch=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # teacher <- momentum * teacher + (1 - momentum) * student
            for p_s, p_te in zip(student.parameters(), teacher.parameters()):
                p_te.mul_(momentum).add_(p_s.detach(), alpha=1 - momentum)
        h = entropy(p_t).mean().item()
        history["entropy"].append(h)  # h(P_t), mean over the batch
        history["kl"].append(loss.item() - h)  # KL(P_t || P_s) = H(P_t, P_s) - h(P_t)
        history["batch_entropy"].append(entropy(p_t.mean(dim=0)).item())  # of the batch-mean P_t
    with torch.no_grad():
        probe = loss_fn.teacher_probs(teacher(features[:16]), epoch=0)  # (16, K): 16 images
    return history, probe


runs = {
    "(a) centering + sharpening": dict(teacher_temp=0.04, center_momentum=0.9),
    "(b) sharpening only": dict(teacher_temp=0.04, center_momentum=1.0),
    "(c) centering only": dict(teacher_temp=0.1, center_momentum=0.9),
}
threads = torch.get_num_threads()
torch.set_num_threads(1)  # tensors this small need only one thread
try:
    results = {name: simulate(name, **kw) for name, kw in runs.items()}
finally:
    torch.set_num_threads(threads)

# %%
lnK = math.log(K_sim)
colors = {
    "(a) centering + sharpening": "tab:green",
    "(b) sharpening only": "tab:red",
    "(c) centering only": "tab:blue",
}
fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
for name, (hist, _) in results.items():
    axes[0].plot(hist["entropy"], color=colors[name], label=name)
    axes[1].plot(hist["kl"], color=colors[name], label=name)
axes[0].axhline(lnK, color="gray", ls=":", lw=1)
axes[0].text(steps * 0.45, lnK + 0.08, f"uniform: ln K = {lnK:.2f}", color="gray")
axes[0].set(
    xlabel="step", ylabel="nats", title=r"Teacher entropy $h(P_t)$", ylim=(-0.1, lnK + 0.45)
)
axes[1].set(
    xlabel="step",
    ylabel="nats",
    title=r"$\mathrm{KL}(P_t \,\|\, P_s)$: 0 means collapse",
    yscale="log",
)
axes[0].legend()
fig.suptitle(f"Collapse modes in a toy DINO (K = {K_sim}; cf. the DINO paper, Figure 7)", y=1.02)
fig.tight_layout()
save_figure(fig, "05_collapse_modes")
plt.show()

final = {
    name: {k: float(np.mean(v[-20:])) for k, v in hist.items()}  # the last 20 steps
    for name, (hist, _) in results.items()
}
for name, f in final.items():
    print(
        f"{name:28s} entropy {f['entropy']:.2f} (ln K = {lnK:.2f})  KL {f['kl']:.3f}  "
        f"entropy of the batch mean {f['batch_entropy']:.2f}"
    )

a, b, c = final.values()
assert b["entropy"] < 0.15 * lnK  # (b) one dimension dominates
assert c["entropy"] > 0.95 * lnK  # (c) uniform
assert 0.15 * lnK < a["entropy"] < 0.9 * lnK  # (a) in between
assert a["kl"] > 3 * max(b["kl"], c["kl"])  # the collapsed runs have (almost) nothing left to learn

# %% [markdown]
# * **(b) sharpening only** (red): the entropy falls to 0 within about a hundred steps. The KL
#   follows: once every image gets the same one-hot output, the student copies it perfectly.
# * **(c) centering only** (blue): the entropy climbs to $\ln K$, the uniform distribution, and
#   again the KL goes to 0.
# * **(a) both** (green): the entropy first rises (centering flattens the initial, shared output),
#   then comes down slowly as the teacher grows confident about each image, but it stays away from
#   both ends, and the KL stays well above 0: the teacher keeps making confident predictions that
#   *differ from image to image*, and the student keeps having to learn them.
#
# Entropy alone does not tell (a) from (b) for sure: a healthy teacher is also confident on each
# image. What tells them apart is whether the *same* output wins for every image. Here is the final
# teacher's distribution for 16 images (rows) over the 64 outputs (columns), and the entropy of the
# batch-mean distribution, which is high only when different images use different outputs.

# %%
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8), layout="constrained")
for ax, (name, (hist, probe)) in zip(axes, results.items()):
    im = ax.imshow(probe.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set(
        title=f"{name}\nentropy of the mean:\n{final[name]['batch_entropy']:.2f} nats",
        xlabel="output k",
        ylabel="image",
    )
fig.colorbar(im, ax=axes, fraction=0.02, label=r"$P_t$")
plt.show()

# %% [markdown]
# (a) lights up different outputs for different images: the outputs have become *clusters*, the
# pseudo-classes DINO learns without labels. (b) lights one column for every image. (c) is a flat
# $1/K$ everywhere.
#
# ## 5. The teacher temperature schedule
#
# A very sharp teacher at the start, when the network's outputs are still random, can make training
# unstable. The official recipe therefore allows a **linear warm-up** of $\tau_t$ over the first
# epochs, from `warmup_teacher_temp` to `teacher_temp`, then constant. The defaults keep
# $\tau_t = 0.04$ throughout; for ViT-B the official training arguments warm up from 0.04 to 0.07
# over 50 epochs, and the project's `imagenette_small` config from 0.04 to 0.07 over 30 epochs.
# `DINOLoss` looks the value up by epoch.

# %%
nepochs = 100
schedules = {
    "DINO default: 0.04 throughout": (0.04, 0.04, 0),
    "imagenette_small: 0.04 -> 0.07 over 30 epochs": (0.04, 0.07, 30),
    "ViT-B/16 (official args): 0.04 -> 0.07 over 50 epochs": (0.04, 0.07, 50),
}
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for label, (start, end, warm) in schedules.items():
    ax.plot(teacher_temp_schedule(start, end, warm, nepochs), label=label)
ax.axhline(0.1, color="gray", ls=":", lw=1)
ax.text(60, 0.096, r"student $\tau_s = 0.1$", color="gray")
ax.set(
    xlabel="epoch",
    ylabel=r"teacher temperature $\tau_t$",
    ylim=(0.03, 0.105),
    title="Teacher temperature warm-up",
)
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the plot, off the lines
plt.show()

loss_30 = DINOLoss(
    65536,
    10,
    warmup_teacher_temp=0.04,
    teacher_temp=0.07,
    warmup_teacher_temp_epochs=30,
    nepochs=nepochs,
)
print(
    "DINOLoss.teacher_temp at epochs 0, 15, 29, 30, 99:",
    [round(loss_30.teacher_temp(e), 4) for e in (0, 15, 29, 30, 99)],
)
assert loss_30.teacher_temp(0) == 0.04 and loss_30.teacher_temp(99) == 0.07
assert abs(loss_30.teacher_temp(29) - 0.07) < 1e-12  # the warm-up ends exactly at 0.07

# %% [markdown]
# ## What we built
#
# * The **DINO head**: MLP to a 256-d bottleneck, $\ell_2$ normalisation, and a weight-normalised
#   last layer with unit-length prototypes (scores are cosine similarities); 22.35M parameters at
#   $K = 65536$; equal to `vitdino_core.DINOHead`.
# * The **DINO loss**: teacher centred and sharpened, $\mathrm{softmax}((g_t - c)/\tau_t)$, student
#   $\mathrm{softmax}(g_s/\tau_s)$, cross-entropy over every (teacher global view, other student
#   view) pair, and the centre's moving average; equal to `vitdino_core.DINOLoss`. Uniform outputs
#   give $\ln K$.
# * **Collapse** in both directions, and why DINO needs both tricks: sharpening alone gives one
#   dominant output (entropy 0), centering alone gives the uniform output (entropy $\ln K$); in both
#   the KL goes to 0.
#
# Next, notebook 06 makes the teacher: an exponential moving average of the student, and a real
# training loop.
#
# ## More to try
#
# 1. In the toy world, raise the teacher temperature of run (a) step by step (0.04, 0.06, 0.08,
#    0.1). Where does it tip into uniform collapse? Then lower the centre momentum to 0.5: does the
#    border move?
# 2. Remove the $\ell_2$ normalisation of the bottleneck (or let $g_k$ learn:
#    `norm_last_layer=False`). How large do the scores get, and what does that do to the student's
#    softmax at $\tau_s = 0.1$?
# 3. The loss skips the pairs where a view is compared with itself. Put them back in a copy of
#    `dino_loss_by_hand`, use it in `simulate` in place of `loss_fn(...)` for run (a), and compare
#    the curves. Why might matching a view with itself hurt, even though it looks like free extra
#    signal?

# %% [markdown]
# ## Your exercises
#
# The summary of this notebook's checks: `passed`, `failed`, or `todo` (still the stub).

# %%
assert_checked(["dino_head", "teacher_probs", "center_update", "dino_loss"])
