"""Checks for the exercises of notebooks 05-08: the DINO head and loss, the EMA teacher and its
schedules, one training step, the attention maps, and the two evaluations (weighted kNN, linear
probe).

Each `check_<name>(fn)` calls the learner's `fn` on several shapes, seeds, settings and modes,
compares it with `reference_<name>` (the finished code: `DINOHead`, `DINOLoss`, `cosine_scheduler`,
`update_teacher`, `DINOTrainer.train_step`'s recipe, `cls_attention`, `threshold_masks`,
`knn_classifier`, `linear_probe`, with the exercise's signature: `pick(name, mine)` falls back to
it), and names the likely mistake from its table of wrong answers when they differ.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention_maps import cls_attention, threshold_masks
from ..dino_loss import DINOHead, DINOLoss, teacher_temp_schedule
from ..ema_training import (
    cancel_gradients_last_layer,
    clip_gradients,
    cosine_scheduler,
    get_params_groups,
    make_teacher,
    update_teacher,
)
from ..linear_probe import linear_probe
from ..multicrop import MultiCropWrapper
from ..vision_transformer import VisionTransformer
from . import (
    check,
    close,
    expect_same,
    expect_shape,
    expect_tensor,
    expect_unchanged,
    gen,
    mistake,
    reference,
)

DINO_EXERCISES = [
    "dino_head",
    "teacher_probs",
    "center_update",
    "dino_loss",  # 05
    "cosine_schedule",
    "teacher_temp_schedule",
    "ema_update",
    "dino_step",  # 06
    "cls_attention",
    "threshold_mask",  # 07
    "knn",
    "linear_probe",
]  # 08

__all__ = ["DINO_EXERCISES"] + [
    f"{prefix}_{name}" for name in DINO_EXERCISES for prefix in ("check", "reference")
]


# ============================================================================= 05 · the DINO head
# and loss


@reference("dino_head")
def reference_dino_head(
    x: torch.Tensor, mlp: nn.Module, v: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """DINOHead's forward from its pieces: (B, D) -> (B, K) cosine scores scaled by g."""
    z = F.normalize(mlp(x), dim=-1)  # (B, bottleneck)
    return z @ (g * F.normalize(v, dim=1)).T  # (B, K)


HEAD_CASES = [(8, 16, 32, 4, 3, True), (12, 40, 24, 8, 5, False), (384, 64, 64, 16, 2, True)]


@check("dino_head")
def check_dino_head(fn: Callable) -> str:
    """fn(x (B, D), mlp, v (K, bottleneck), g (K, 1)) -> scores (B, K)."""
    for seed, (in_dim, K, hidden, bottleneck, B, norm_last) in enumerate(HEAD_CASES):
        torch.manual_seed(seed)
        head = DINOHead(
            in_dim, K, norm_last_layer=norm_last, hidden_dim=hidden, bottleneck_dim=bottleneck
        )
        wn = head.last_layer.parametrizations.weight
        with torch.no_grad():
            wn.original1.mul_(3.0)  # prototypes far from unit length
            if not norm_last:
                wn.original0.uniform_(0.5, 2.0)  # learned lengths
        x = torch.randn(B, in_dim, generator=gen(seed))  # (B, D)
        v, g = wn.original1.detach(), wn.original0.detach()  # (K, bottleneck), (K, 1)
        with torch.no_grad():
            want = reference_dino_head(x, head.mlp, v, g)  # (B, K)
            got = expect_tensor(fn(x.clone(), head.mlp, v.clone(), g.clone()))
            expect_shape(
                got,
                (B, K),
                ("B", "K"),
                "scores",
                known={(K, B): "the scores are transposed: return (B, K), one row per image"},
            )
            h = head.mlp(x)  # (B, bottleneck)
            z = F.normalize(h, dim=-1)
            w = g * F.normalize(v, dim=1)  # (K, bottleneck)
            expect_same(
                got,
                want,
                {
                    (
                        "the bottleneck is not L2-normalised: divide mlp(x) by its length over the"
                        " last axis, so that every score is a cosine similarity"
                    ): (lambda: h @ w.T),
                    (
                        "the bottleneck is normalised over the batch (dim=0): normalise each"
                        " image's vector (dim=-1)"
                    ): lambda: F.normalize(h, dim=0) @ w.T,
                    (
                        "the prototypes are not normalised: each prototype is g_k v_k / ||v_k||,"
                        " every row of v divided by its length"
                    ): (lambda: z @ (g * v).T),
                    (
                        "the prototypes are normalised over the wrong axis: each prototype is a"
                        " row of v (K, bottleneck)"
                    ): lambda: z @ (g * F.normalize(v, dim=0)).T,
                    (
                        "the lengths g are ignored: each prototype is g_k v_k / ||v_k|| (g is 1"
                        " only when norm_last_layer=True)"
                    ): ((lambda: z @ F.normalize(v, dim=1).T) if not norm_last else None),
                    (
                        "the lengths g divide instead of multiply: each prototype is g_k v_k /"
                        " ||v_k||"
                    ): ((lambda: z @ (F.normalize(v, dim=1) / g).T) if not norm_last else None),
                },
                f"the scores differ from DINOHead's (in_dim {in_dim}, K {K}, bottleneck"
                f" {bottleneck}, norm_last_layer={norm_last}): MLP, normalise, then the"
                " weight-normalised last layer",
            )
    return f"matches DINOHead on {len(HEAD_CASES)} heads (learned lengths g included)"


@reference("teacher_probs")
def reference_teacher_probs(
    teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float
) -> torch.Tensor:
    """softmax((g_t - c) / tau_t) over the K outputs, no gradient: (2B, K)."""
    return F.softmax((teacher_out.detach() - center) / teacher_temp, dim=-1)  # (2B, K)


PROBS_CASES = [(4, 16, 0.04), (3, 10, 0.07), (5, 7, 0.2)]


@check("teacher_probs")
def check_teacher_probs(fn: Callable) -> str:
    """fn(teacher_out (2B, K), center (1, K), teacher_temp) -> P_t (2B, K), no gradient."""
    for seed, (B, K, temp) in enumerate(PROBS_CASES):
        g = gen(seed)
        teacher_out = (0.2 * torch.randn(2 * B, K, generator=g)).requires_grad_()  # (2B, K)
        center = 0.3 * torch.randn(1, K, generator=g)  # (1, K)
        before = [teacher_out.detach().clone(), center.clone()]
        got = expect_tensor(fn(teacher_out, center, temp))
        expect_unchanged(
            before,
            [teacher_out.detach(), center],
            "the teacher's output or the centre was changed in place; leave the inputs as they are",
        )
        expect_shape(got, (2 * B, K), ("2B", "K"), "P_t")
        if got.requires_grad:
            raise mistake(
                "gradients would flow into the teacher: detach its output (or work without"
                " gradients)"
            )
        t = teacher_out.detach()
        expect_same(
            got,
            reference_teacher_probs(teacher_out, center, temp),
            {
                "softmax over the wrong axis: each row (one view's K scores) must sum to 1": (
                    lambda: F.softmax((t - center) / temp, dim=0)
                ),
                "the centre is not subtracted from the teacher's output before the softmax": (
                    lambda: F.softmax(t / temp, dim=-1)
                ),
                "the centre is added, not subtracted": lambda: F.softmax(
                    (t + center) / temp, dim=-1
                ),
                (
                    "the teacher is not sharpened: divide the centred output by teacher_temp"
                    " before the softmax"
                ): lambda: F.softmax(t - center, dim=-1),
                "multiplied by the temperature: divide by it (a temperature below 1 sharpens)": (
                    lambda: F.softmax((t - center) * temp, dim=-1)
                ),
                (
                    "the centre is subtracted after the softmax: centre the scores, then divide"
                    " and take the softmax"
                ): lambda: F.softmax(t / temp, dim=-1) - center,
                "the temperature divides only the centre: divide the centred output as a whole": (
                    lambda: F.softmax(t - center / temp, dim=-1)
                ),
            },
            f"P_t differs from DINOLoss.teacher_probs (B={B}, K={K}, teacher_temp={temp})",
        )
    return f"matches DINOLoss.teacher_probs on {len(PROBS_CASES)} cases"


@reference("center_update")
def reference_center_update(
    center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    """c <- m c + (1 - m) mean over the batch of the teacher's raw outputs: (1, K)."""
    return momentum * center + (1 - momentum) * teacher_out.detach().mean(
        dim=0, keepdim=True
    )  # (1, K)


CENTER_CASES = [(4, 16, 0.9), (3, 9, 0.7), (6, 5, 0.99)]


@check("center_update")
def check_center_update(fn: Callable) -> str:
    """fn(center (1, K), teacher_out (2B, K), momentum) -> the new centre (1, K)."""
    for seed, (B, K, m) in enumerate(CENTER_CASES):
        g = gen(seed)
        teacher_out = torch.randn(2 * B, K, generator=g) + 0.5  # (2B, K)
        center = 0.3 * torch.randn(1, K, generator=g)  # (1, K)
        want = reference_center_update(center, teacher_out, m)
        got = expect_tensor(fn(center.clone(), teacher_out.clone(), m))
        wrong_axis = (
            "mean over the wrong axis: average over the batch (dim=0), one value per output: (1, K)"
        )
        expect_shape(
            got,
            (1, K),
            ("1", "K"),
            "new centre",
            known={
                (2 * B, 1): wrong_axis,
                (2 * B, K): wrong_axis,
                (2 * B,): wrong_axis,
                (K,): "keep the centre's (1, K) shape: keep the batch axis when averaging over it",
            },
        )
        mean = teacher_out.mean(dim=0, keepdim=True)  # (1, K)
        expect_same(
            got,
            want,
            {
                (
                    "momentum used backwards: the old centre keeps the weight m, the batch mean"
                    " gets 1 - m"
                ): lambda: (1 - m) * center + m * mean,
                "summed over the batch: the centre follows the mean teacher output": lambda: (
                    m * center + (1 - m) * teacher_out.sum(0, keepdim=True)
                ),
                (
                    "the centre follows the teacher's probabilities: use its raw output g_t,"
                    " before centring and softmax"
                ): lambda: (
                    m * center + (1 - m) * F.softmax(teacher_out, dim=-1).mean(0, keepdim=True)
                ),
                "the old centre is forgotten: c <- m c + (1 - m) mean": lambda: (1 - m) * mean,
                "the centre did not move: the new centre is m c + (1 - m) times the batch mean": (
                    lambda: center
                ),
                "the centre jumped to the batch mean: keep m of the old centre": lambda: mean,
            },
            f"the centre differs from DINOLoss's update (B={B}, K={K}, momentum={m})",
        )
    return f"matches DINOLoss.update_center on {len(CENTER_CASES)} cases"


@reference("dino_loss")
def reference_dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    ncrops: int,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINOLoss's value for a given centre (without moving it): a scalar with the student's
    gradient."""
    loss = DINOLoss(
        student_out.shape[-1], ncrops, teacher_temp, teacher_temp, 0, 1, student_temp=student_temp
    )
    loss.center.copy_(center.reshape(1, -1))
    return loss(student_out, teacher_out, epoch=0)


def _loss_variant(
    s,
    t,
    c,
    ncrops,
    Ts,
    Tt,
    same_view=False,
    n_div=None,
    center="teacher",
    batch="mean",
    over_k="sum",
    teacher_dim=-1,
    layout="view",
    student="log_softmax",
    kl=False,
):
    """The DINO loss with one switch flipped: the typical wrong versions, for the diagnosis."""
    B = t.shape[0] // 2
    if layout == "view":
        sv = s.view(ncrops, B, -1)  # (V, B, K)
    else:  # the rows of one image next to each other
        sv = s.view(B, ncrops, -1).transpose(0, 1)  # (V, B, K)
    s_c = sv - c if center in ("student", "both") else sv
    t_c = t - c if center in ("teacher", "both") else t  # (2B, K)
    q = F.softmax(t_c / Tt, dim=teacher_dim)  # (2B, K)
    q = q.view(2, B, -1) if layout == "view" else q.view(B, 2, -1).transpose(0, 1)  # (2, B, K)
    logp = (
        F.log_softmax(s_c / Ts, dim=-1) if student == "log_softmax" else F.softmax(s_c / Ts, dim=-1)
    )
    total, n = 0.0, 0
    for iq in range(2):
        for v in range(ncrops):
            if v == iq and not same_view:
                continue
            ce = -(q[iq] * logp[v])
            if kl:
                ce = ce + q[iq] * q[iq].clamp_min(1e-30).log()
            ce = ce.sum(-1) if over_k == "sum" else ce.mean(-1)  # (B,)
            total = total + (ce.mean() if batch == "mean" else ce.sum())
            n += 1
    return total / (n_div or n)


LOSS_CASES = [(4, 6, 32, 0.1, 0.04), (3, 2, 16, 0.1, 0.04), (2, 4, 12, 0.2, 0.05)]


@check("dino_loss")
def check_dino_loss(fn: Callable) -> str:
    """fn(student_out (V*B, K), teacher_out (2B, K), center (1, K), ncrops, student_temp,
    teacher_temp) -> scalar."""
    for seed, (B, ncrops, K, Ts, Tt) in enumerate(LOSS_CASES):
        g = gen(seed)
        student_out = torch.randn(ncrops * B, K, generator=g).requires_grad_()  # (V*B, K)
        teacher_out = (torch.randn(2 * B, K, generator=g) + 0.5).requires_grad_()  # (2B, K)
        center = 0.5 * torch.randn(1, K, generator=g)  # (1, K)
        want = reference_dino_loss(student_out, teacher_out, center, ncrops, Ts, Tt)
        before = [student_out.detach().clone(), teacher_out.detach().clone(), center.clone()]
        got = expect_tensor(fn(student_out, teacher_out, center, ncrops, Ts, Tt), "the loss")
        expect_unchanged(
            before,
            [student_out.detach(), teacher_out.detach(), center],
            "an input was changed in place: the loss leaves the outputs and the centre as they are",
        )
        if got.numel() != 1:
            raise mistake(
                f"the loss has shape {tuple(got.shape)}: return one number, the mean over the pairs"
                " and the images"
            )
        got = got.reshape(())
        s, t = student_out.detach(), teacher_out.detach()
        var = lambda ts=Ts, tt=Tt, **kw: lambda: _loss_variant(s, t, center, ncrops, ts, tt, **kw)  # noqa: E731
        pairs = 2 * (ncrops - 1)
        expect_same(
            got,
            want,
            {
                (
                    "the same view is paired with itself: a teacher view and the student's view"
                    f" of the same crop make no pair, there are {pairs} pairs per image"
                ): var(same_view=True),
                (
                    f"averaged over the wrong number of pairs: {pairs} (teacher, student) pairs,"
                    " each view of the teacher with every other view"
                ): var(n_div=2 * ncrops),
                "the centre is applied to the student: only the teacher's output is centred": var(
                    center="student"
                ),
                (
                    "the centre is subtracted from the student as well: only the teacher's output"
                    " is centred"
                ): var(center="both"),
                "the centre is not subtracted from the teacher's output before its softmax": var(
                    center="none"
                ),
                (
                    "the temperatures are swapped: the teacher uses teacher_temp (sharper), the"
                    " student student_temp"
                ): var(ts=Tt, tt=Ts),
                (
                    "the teacher is not sharpened: divide its centred output by teacher_temp, not"
                    " student_temp"
                ): var(tt=Ts),
                (
                    "the student's temperature is teacher_temp: divide the student's output by"
                    " student_temp"
                ): var(ts=Tt),
                "softmax over the wrong axis for the teacher: each row (one view) sums to 1": var(
                    teacher_dim=0
                ),
                "summed over the batch: each pair's cross-entropy is averaged over the B images": (
                    var(batch="sum")
                ),
                (
                    "mean over the K outputs: the cross-entropy sums over K, then averages over"
                    " the images"
                ): var(over_k="mean"),
                (
                    "the views are split wrongly: rows v*B ... (v+1)*B - 1 are view v (consecutive"
                    " blocks of B rows), not every ncrops-th row"
                ): var(layout="image"),
                (
                    "the student's probabilities are used where their log is needed: log-softmax"
                    " of the student"
                ): var(student="softmax"),
                (
                    "this is KL(P_t || P_s): DINO's loss is the cross-entropy H(P_t, P_s) = -sum_k"
                    " P_t log P_s"
                ): var(kl=True),
            },
            f"the loss differs from DINOLoss (B={B}, ncrops={ncrops}, K={K}, student_temp={Ts},"
            f" teacher_temp={Tt})",
        )
        if not got.requires_grad:
            raise mistake(
                "the loss carries no gradient for the student: keep the student's output in the"
                " graph (no detach, item or no-grad on its side)"
            )
        got.backward()
        if teacher_out.grad is not None and teacher_out.grad.abs().sum() > 0:
            raise mistake(
                "gradients flow into the teacher: detach its probabilities (the teacher is not"
                " trained by backprop)"
            )
        grad = student_out.grad.clone()
        student_out.grad = None
        want.backward()
        expect_same(
            grad,
            student_out.grad,
            {},
            "the value is right but the student's gradient is not: compute "
            "the loss from student_out itself, with differentiable operations",
        )
    return f"matches DINOLoss on {len(LOSS_CASES)} cases, value and gradient"


# ============================================================================= 06 · schedules, EMA,
# one step


@reference("cosine_schedule")
def reference_cosine_schedule(
    base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0
):
    return cosine_scheduler(
        base_value, final_value, epochs, niter_per_ep, warmup_epochs, start_warmup_value
    )


def _cosine_variant(base, final, epochs, niter, warmup=0, start=0.0, kind=""):
    W, T = warmup * niter, epochs * niter
    if kind == "no_warmup":
        W = 0
    if kind == "warmup_short":
        warm = np.linspace(start, base, W + 1)[:-1]
    elif kind == "warmup_from_zero":
        warm = np.linspace(0.0, base, W)
    elif kind == "warmup_per_epoch":
        warm = np.repeat(np.linspace(start, base, warmup), niter)
    else:
        warm = np.linspace(start, base, W)
    n = T - W
    i = np.arange(n)
    if kind == "cos_reaches_final":
        i = i / max(n - 1, 1) * n
    if kind == "cos_from_one":
        i = i + 1
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(n, 1)))
    if kind == "cos_over_all":
        cos = (final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(T) / T)))[W:]
    if kind == "cos_backwards":
        cos = cos[::-1]
    if kind == "base_final_swapped":
        cos = base + 0.5 * (final - base) * (1 + np.cos(np.pi * i / max(n, 1)))
    return np.concatenate([warm, cos])


COSINE_CASES = [
    (2e-3, 1e-6, 10, 5, 2, 0.0),
    (0.04, 0.4, 6, 4, 0, 0.0),
    (0.996, 1.0, 7, 3, 0, 0.0),
    (1.0, 0.0, 3, 4, 3, 0.0),
    (0.5, 0.1, 4, 2, 1, 0.2),
    (0.3, 0.1, 1, 1, 0, 0.0),
    (0.8, 0.2, 5, 3, 2, 0.5),
]


@check("cosine_schedule")
def check_cosine_schedule(fn: Callable) -> str:
    """fn(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value) -> epochs * niter
    values."""
    for args in COSINE_CASES:
        base, final, epochs, niter, warm, start = args
        want = reference_cosine_schedule(*args)
        got = expect_tensor(np.asarray(fn(*args), dtype=np.float64))
        T, W = epochs * niter, warm * niter
        per_epoch = (
            "one value per epoch: the schedule needs one value per iteration, epochs * niter_per_ep"
        )
        expect_shape(
            got,
            (T,),
            ("iterations",),
            f"schedule for {epochs} epochs x {niter} iterations",
            known={
                (epochs,): per_epoch if niter > 1 else "",
                (T + W,): (
                    "the warm-up is added on top of training: it is part of the epochs *"
                    " niter_per_ep values"
                    if W
                    else ""
                ),
            },
        )
        v = lambda kind: lambda: _cosine_variant(*args, kind=kind)  # noqa: E731
        expect_same(
            got,
            want,
            {
                (
                    "no warm-up: the first warmup_epochs * niter_per_ep values rise linearly from"
                    " start_warmup_value to base_value"
                ): (v("no_warmup") if W else None),
                (
                    "the warm-up stops one step short of base_value: its last value is base_value"
                    " itself"
                ): (v("warmup_short") if W else None),
                "the warm-up must start from start_warmup_value": (
                    v("warmup_from_zero") if W and start else None
                ),
                "the warm-up rises once per epoch: it rises at every iteration": (
                    v("warmup_per_epoch") if W else None
                ),
                (
                    "the cosine is off by one step: after the warm-up it starts exactly at"
                    " base_value and its last value stays just above final_value, as in DINO"
                ): v("cos_reaches_final"),
                "the cosine is off by one step: the first value after the warm-up is base_value": v(
                    "cos_from_one"
                ),
                (
                    "the cosine spans the whole run, warm-up included: it runs over the epochs"
                    " after the warm-up only"
                ): (v("cos_over_all") if W else None),
                "the cosine runs backwards: it starts at base_value and ends near final_value": v(
                    "cos_backwards"
                ),
                "base_value and final_value are swapped: the cosine starts at base_value": v(
                    "base_final_swapped"
                ),
            },
            f"the schedule differs from cosine_scheduler{args}",
        )
    return f"matches cosine_scheduler on {len(COSINE_CASES)} schedules"


@reference("teacher_temp_schedule")
def reference_teacher_temp_schedule(
    warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
):
    return teacher_temp_schedule(
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
    )


TEMP_CASES = [
    (0.04, 0.07, 30, 100),
    (0.04, 0.07, 5, 10),
    (0.04, 0.04, 0, 5),
    (0.02, 0.06, 3, 3),
    (0.03, 0.05, 2, 6),
]


@check("teacher_temp_schedule")
def check_teacher_temp_schedule(fn: Callable) -> str:
    """fn(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs) -> nepochs
    values."""
    for a, b, W, n in TEMP_CASES:
        want = reference_teacher_temp_schedule(a, b, W, n)
        got = expect_tensor(np.asarray(fn(a, b, W, n), dtype=np.float64))
        expect_shape(
            got,
            (n,),
            ("epochs",),
            f"schedule for {n} epochs",
            known={
                (n + W,): (
                    "the warm-up is added on top of training: nepochs values in all, the warm-up"
                    " included"
                    if W
                    else ""
                ),
                (W,): (
                    "only the warm-up is returned: after it, the schedule stays at teacher_temp"
                    " until nepochs"
                    if W < n
                    else ""
                ),
            },
        )
        rest = np.full(n - W, float(b))
        v = lambda warm: lambda: np.concatenate([warm, rest])  # noqa: E731
        expect_same(
            got,
            want,
            {
                (
                    "no warm-up: the first warmup_teacher_temp_epochs values rise linearly from"
                    " warmup_teacher_temp"
                ): ((lambda: np.full(n, float(b))) if W else None),
                (
                    "the warm-up stops one step short: its last value (epoch W-1) is teacher_temp"
                    " itself"
                ): (v(np.linspace(a, b, W + 1)[:-1]) if W else None),
                "the warm-up starts one step late: at epoch 0 the value is warmup_teacher_temp": (
                    v(np.linspace(a, b, W + 1)[1:]) if W else None
                ),
                "the warm-up runs backwards: from warmup_teacher_temp up to teacher_temp": (
                    v(np.linspace(b, a, W)) if W else None
                ),
                (
                    "the two temperatures are swapped: warm up from warmup_teacher_temp to"
                    " teacher_temp, then stay there"
                ): (
                    (lambda: np.concatenate([np.linspace(b, a, W), np.full(n - W, float(a))]))
                    if W
                    else None
                ),
            },
            f"the schedule differs from teacher_temp_schedule({a}, {b}, {W}, {n})",
        )
    return f"matches teacher_temp_schedule on {len(TEMP_CASES)} schedules"


@reference("ema_update")
def reference_ema_update(student: nn.Module, teacher: nn.Module, m: float) -> None:
    update_teacher(student, teacher, m)


def _ema_pair(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.GELU(), nn.Linear(7, 3))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * torch.randn_like(p))  # the student has moved on
    return student, teacher


@check("ema_update")
def check_ema_update(fn: Callable) -> str:
    """fn(student, teacher, m) -> None; the teacher's parameters move in place towards the
    student's."""
    for seed, (m, training) in enumerate(
        ((0.996, True), (0.9, False), (0.0, True), (1.0, False), (0.7, True))
    ):
        student, teacher = _ema_pair(seed)
        student.train(training), teacher.train(training)
        s0 = [p.detach().clone() for p in student.parameters()]
        t0 = [p.detach().clone() for p in teacher.parameters()]
        ref = copy.deepcopy(teacher)
        reference_ema_update(student, ref, m)
        t_params = list(teacher.parameters())
        fn(student, teacher, m)
        expect_unchanged(
            s0,
            [p.detach() for p in student.parameters()],
            "the student was changed: only the teacher moves (the student learns from its"
            " optimiser)",
        )
        if any(a is not b for a, b in zip(teacher.parameters(), t_params)):
            raise mistake(
                "the teacher's parameters were replaced by new tensors: update them in place so"
                " that the teacher keeps its own storage"
            )
        if any(
            p_t.data_ptr() == p_s.data_ptr()
            for p_t, p_s in zip(teacher.parameters(), student.parameters())
        ):
            raise mistake(
                "the teacher now shares storage with the student: copy values in place, don't"
                " assign tensors"
            )
        if any(p.requires_grad or p.grad_fn is not None for p in teacher.parameters()):
            raise mistake(
                "the teacher's weights now take part in autograd: update them without gradients,"
                " from the student's detached values"
            )
        got = [p.detach() for p in teacher.parameters()]
        moved = [not torch.equal(a, b) for a, b in zip(got, t0)]
        expect_same(
            got,
            [p.detach() for p in ref.parameters()],
            {
                (
                    "the teacher did not move: update each teacher parameter in place; rebinding a"
                    " loop variable changes nothing"
                ): (t0 if m < 1 else None),
                (
                    "momentum used backwards: the teacher keeps m of itself and takes 1 - m of the"
                    " student"
                ): ((lambda: [(1 - m) * t + m * s for t, s in zip(t0, s0)]) if m != 0.5 else None),
                "the teacher was overwritten with the student: the teacher keeps m of itself": (
                    s0 if m > 0 else None
                ),
                "the momentum is ignored (a fixed value is used): the teacher keeps m of itself": (
                    (lambda: [0.996 * t + 0.004 * s for t, s in zip(t0, s0)])
                    if m != 0.996
                    else None
                ),
                (
                    f"only {sum(moved)} of {len(moved)} teacher tensors moved: update every"
                    " parameter"
                ): (None if all(moved) or not any(moved) else got),
            },
            f"the teacher differs from update_teacher's result (momentum {m})",
        )
    return "matches update_teacher for m = 0.996, 0.9, 0.7, 0 and 1, in train and eval mode"


@reference("dino_step")
def reference_dino_step(
    student,
    teacher,
    loss_fn,
    optimizer,
    crops,
    it,
    epoch,
    lr_schedule,
    wd_schedule,
    momentum_schedule,
    clip_grad=3.0,
    freeze_last_layer=1,
    flaw: str = "",
):
    """DINOTrainer.train_step's recipe (fp32, one process) from the core's pieces; `flaw` makes one
    typical mistake."""
    i_sched = epoch if flaw == "by_epoch" else it
    for i, group in enumerate(optimizer.param_groups):
        if flaw != "no_schedule":
            group["lr"] = float(lr_schedule[i_sched])
            if i == 0 or flaw == "wd_all_groups":
                group["weight_decay"] = float(wd_schedule[i_sched])
    if flaw == "ema_first":
        update_teacher(student, teacher, float(momentum_schedule[i_sched]))
    with torch.no_grad():
        teacher_out = teacher(crops[0])  # (2B, K)
    student_out = student(crops)  # (V*B, K)
    loss = loss_fn(student_out, teacher_out, it if flaw == "loss_it" else epoch)
    if flaw != "no_zero_grad":
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if flaw == "global_clip":
        torch.nn.utils.clip_grad_norm_(student.parameters(), clip_grad)
    elif flaw == "clip_fixed":
        clip_gradients(student, 3.0)
    elif flaw != "no_clip":
        clip_gradients(student, clip_grad)
    if flaw == "freeze_fixed":
        cancel_gradients_last_layer(epoch, student, 1)
    elif flaw != "no_freeze":
        cancel_gradients_last_layer(epoch, student, freeze_last_layer)
    optimizer.step()
    if flaw == "ema_backwards":
        update_teacher(student, teacher, 1.0 - float(momentum_schedule[i_sched]))
    elif flaw == "ema_fixed":
        update_teacher(student, teacher, float(momentum_schedule[0]))
    elif flaw not in ("no_ema", "ema_first"):
        update_teacher(student, teacher, float(momentum_schedule[i_sched]))
    return loss.detach()


_STEPS = [
    (1, 0),
    (2, 1),
    (5, 2),
]  # (it, epoch): 3 epochs of 2 iterations; it and epoch never coincide


def _step_world(seed: int = 0):
    """A tiny DINO world: student, teacher, loss, optimiser, schedules and 3 batches of crops."""
    torch.manual_seed(seed)
    backbone = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    student = MultiCropWrapper(backbone, DINOHead(16, 32, hidden_dim=32, bottleneck_dim=8))
    teacher = make_teacher(student)
    loss_fn = DINOLoss(
        32,
        ncrops=4,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=2,
        nepochs=6,
    )
    # plain SGD: an update proportional to the gradient, so that a right step computed in another
    # order (e.g. the
    # student called once per crop size) stays within rounding; AdamW would magnify rounding in tiny
    # gradients
    optimizer = torch.optim.SGD(get_params_groups(student), lr=0.0, weight_decay=0.0)
    g = gen(seed + 1)
    batches = [
        [torch.randn(2 * 3, 3, 16, 16, generator=g), torch.randn(2 * 3, 3, 8, 8, generator=g)]
        for _ in _STEPS
    ]
    schedules = dict(
        lr_schedule=cosine_scheduler(0.5, 0.05, 3, 2, warmup_epochs=1, start_warmup_value=0.1),
        wd_schedule=cosine_scheduler(0.04, 0.4, 3, 2),
        momentum_schedule=cosine_scheduler(0.8, 1.0, 3, 2),
    )
    return (
        dict(student=student, teacher=teacher, loss_fn=loss_fn, optimizer=optimizer),
        batches,
        schedules,
    )


def _run_steps(step_fn, flaw=None, seen=None):
    """Three steps of `step_fn` in a fresh tiny world; `seen` records the inputs the teacher and
    student saw."""
    world, batches, schedules = _step_world()
    if seen is not None:
        for who in ("teacher", "student"):
            world[who].register_forward_pre_hook(
                lambda mod, args, who=who: seen[who].append(args[0])
            )
    losses = []
    for (it, epoch), crops in zip(_STEPS, batches):
        kw = dict(crops=crops, it=it, epoch=epoch, clip_grad=0.05, freeze_last_layer=2, **schedules)
        if flaw is not None:
            kw["flaw"] = flaw
        losses.append(step_fn(**world, **kw))
    return world, losses


def _sizes(inputs) -> set[int]:
    """The image sizes among the inputs a module's calls received (a tensor or a list of tensors
    each)."""
    flat = [
        t
        for x in inputs
        for t in (x if isinstance(x, (list, tuple)) else [x])
        if isinstance(t, torch.Tensor)
    ]
    return {t.shape[-1] for t in flat}


def _step_calls_mistake(seen: dict) -> str | None:
    """What the teacher and the student were called with, as their forward hooks saw it."""
    if not seen["teacher"]:
        return "the teacher never ran: its output on the 2 global crops is the target"
    if 8 in _sizes(seen["teacher"]):
        return "the teacher must see the 2 global crops only, not the local ones"
    if 8 not in _sizes(seen["student"]):
        return "the student must see every crop: the global and the local ones"
    return None


_STEP_FLAWS = {
    (
        "the learning rate and weight decay are not set from their schedules: at step it, every"
        " group's learning rate (and the first group's weight decay) come from the schedules"
    ): ("no_schedule"),
    "the schedules are read at the epoch: they hold one value per iteration, read them at it": (
        "by_epoch"
    ),
    (
        "weight decay applied to the second group too: biases and norms (group 1) keep"
        " weight_decay 0"
    ): ("wd_all_groups"),
    "gradients pile up from step to step: zero them before backward": "no_zero_grad",
    "the gradients are not clipped after backward": "no_clip",
    "the gradients are clipped globally: DINO clips each parameter on its own": "global_clip",
    "the gradients are clipped at a fixed norm: use clip_grad": "clip_fixed",
    (
        "the last layer is not frozen in the first epoch(s): cancel its gradients before the"
        " optimiser step"
    ): ("no_freeze"),
    "the last layer is frozen for a fixed number of epochs: use freeze_last_layer": "freeze_fixed",
    "the loss is given the iteration: it takes the epoch (its teacher temperature is per epoch)": (
        "loss_it"
    ),
    "the teacher never moves: update it from the student after the optimiser step": "no_ema",
    (
        "the EMA update comes before the student's step: move the teacher towards the new student,"
        " after the optimiser step"
    ): ("ema_first"),
    "momentum used backwards in the EMA: the teacher keeps m of itself": "ema_backwards",
    "the momentum is not read from its schedule at this step": "ema_fixed",
}


@functools.lru_cache(maxsize=None)
def _reference_state(flaw: str = "") -> list:
    """The state after 3 steps of the reference, with one typical mistake `flaw`; the world is
    seeded, so it is computed once per session."""
    return _step_state(*_run_steps(reference_dino_step, flaw=flaw))


def _step_state(world: dict, losses) -> list:
    loss = [
        torch.as_tensor(x if not isinstance(x, torch.Tensor) else x.detach()).reshape(())
        for x in losses
    ]
    return [
        loss,
        [p.detach() for p in world["student"].parameters()],
        [p.detach() for p in world["teacher"].parameters()],
        world["loss_fn"].center.detach(),
    ]


@check("dino_step")
def check_dino_step(fn: Callable) -> str:
    """fn(student, teacher, loss_fn, optimizer, crops, it, epoch, the 3 schedules, clip_grad,
    freeze_last_layer)."""
    seen = {"teacher": [], "student": []}
    try:
        world, losses = _run_steps(fn, seen=seen)
    except NotImplementedError:
        raise
    except Exception:
        wrong_call = _step_calls_mistake(
            seen
        )  # a wrong call explains a crash better than the crash itself
        if wrong_call:
            raise mistake(wrong_call) from None
        raise
    got, want = _step_state(world, losses), _reference_state()
    if close(got[1:], want[1:]) and not close(got[0], want[0]):
        raise mistake(
            "the weights are right but the returned loss differs: return the loss of this step"
        )
    if close(got[:3], want[:3]) and not close(got[3], want[3]):
        raise mistake(
            "the centre moved a different number of times: call loss_fn exactly once per step (it "
            "updates the centre)"
        )
    wrong = {
        message: lambda flaw=flaw: _reference_state(flaw) for message, flaw in _STEP_FLAWS.items()
    }
    expect_same(
        got,
        want,
        wrong,
        _step_calls_mistake(seen)
        or (
            "after 3 steps the weights differ from DINOTrainer.train_step's: check the order:"
            " schedules, teacher, student, loss, zero the gradients, backward, clip, freeze,"
            " optimiser step, EMA"
        ),
    )
    return "3 steps match DINOTrainer.train_step's recipe: loss, student, teacher and centre"


# ============================================================================= 07 · attention maps


@reference("cls_attention")
def reference_cls_attention(q: torch.Tensor, k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """q, k: (B, heads, N+1, d) -> the CLS row of softmax(q k^T / sqrt(d)) without CLS, folded: (B,
    heads, h, w)."""
    A = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, heads, N+1, N+1)
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)  # (B, heads, h, w)


def _qk_of_last_block(
    model: VisionTransformer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's queries and keys, (B, heads, N+1, d) each, caught with a hook on
    attn.qkv."""
    caught = []
    handle = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda mod, inp, out: caught.append(out)
    )
    try:
        model.get_last_selfattention(x)
    finally:
        handle.remove()
    B, T, _ = caught[0].shape
    H = model.num_heads
    qkv = caught[0].reshape(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N+1, d)
    return qkv[0], qkv[1]


CLS_CASES = [
    ((2, 3, 12, 20), 3),
    ((1, 3, 16, 16), 2),
    ((2, 3, 20, 8), 4),
]  # 3 x 5, 4 x 4 and 5 x 2 grids


@check("cls_attention")
def check_cls_attention(fn: Callable) -> str:
    """fn(q (B, heads, N+1, d), k (B, heads, N+1, d), h, w) -> the class token's attention maps (B,
    heads, h, w)."""
    for seed, (shape, H) in enumerate(CLS_CASES):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=H
        ).eval()
        with torch.no_grad():
            model.blocks[-1].attn.qkv.weight.mul_(
                20.0
            )  # a trained-looking, far from uniform attention
        x = torch.randn(*shape, generator=gen(seed))
        B, h, w = shape[0], shape[2] // 4, shape[3] // 4
        q, k = _qk_of_last_block(model, x)
        want = cls_attention(model, x)  # (B, heads, h, w)
        with torch.no_grad():
            got = expect_tensor(fn(q.clone(), k.clone(), h, w))
        expect_shape(
            got,
            (B, H, h, w),
            ("B", "heads", "h", "w"),
            "maps",
            known={
                (
                    B,
                    H,
                    w,
                    h,
                ): (
                    "the map is folded as (w, h): the patches are numbered row by row, so fold to"
                    " (h, w)"
                ),
                (B, h, w): "the heads are averaged: return one map per head, (B, heads, h, w)",
                (B, H, h * w): "the map is not folded: reshape the h*w patch weights to (h, w)",
                (
                    B,
                    H,
                    h * w + 1,
                ): (
                    "the class token's own weight is kept and the map is not folded: drop column 0,"
                    " then fold to (h, w)"
                ),
            },
        )
        d = q.shape[-1]
        logits = q @ k.transpose(-2, -1)  # (B, H, N+1, N+1)
        A = (logits / math.sqrt(d)).softmax(-1)
        fold = lambda m: m.reshape(B, H, h, w)  # noqa: E731
        expect_same(
            got,
            want,
            {
                (
                    "softmax over the wrong axis: each query's row of A (over the keys, the last"
                    " axis) must sum to 1"
                ): lambda: fold((logits / math.sqrt(d)).softmax(-2)[:, :, 0, 1:]),
                "q k^T is not scaled: divide by sqrt(d), d the head dimension": lambda: fold(
                    logits.softmax(-1)[:, :, 0, 1:]
                ),
                "scaled by 1/d: the scale is 1/sqrt(d)": lambda: fold(
                    (logits / d).softmax(-1)[:, :, 0, 1:]
                ),
                "scaled after the softmax: divide the scores by sqrt(d) before it": lambda: fold(
                    logits.softmax(-1)[:, :, 0, 1:] / math.sqrt(d)
                ),
                (
                    "took column 0 (what each patch takes from the class token): the map is row 0,"
                    " what the class token takes from each patch"
                ): lambda: fold(A[:, :, 1:, 0]),
                "the patches are folded in the wrong order: they are numbered row by row": lambda: (
                    A[:, :, 0, 1:].reshape(B, H, w, h).transpose(-1, -2)
                ),
                (
                    "the map sums to 1 over the patches: the softmax runs over all N+1 keys, the"
                    " class token's own included, and the map keeps those weights as they are"
                ): lambda: fold(F.normalize(A[:, :, 0, 1:], p=1, dim=-1)),
                "took the last token's row: the class token is token 0": lambda: fold(
                    A[:, :, -1, 1:]
                ),
            },
            f"the maps differ from cls_attention for images of {shape[2]} x {shape[3]} px ({h} x"
            f" {w} patches)",
        )
    return f"matches cls_attention on {len(CLS_CASES)} models (non-square grids included)"


@reference("threshold_mask")
def reference_threshold_mask(attn_map: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    return threshold_masks(attn_map, keep)


def _mask_variants(a: torch.Tensor, keep: float) -> dict[str, Callable]:
    flat = a.flatten().double()  # (N,)
    val, idx = flat.sort()
    p = val / val.sum()
    cum = p.cumsum(0)
    unsort = lambda sorted_flags: sorted_flags[idx.argsort()].reshape(a.shape)  # noqa: E731

    def top_count():
        flags = torch.zeros(flat.numel(), dtype=torch.bool)
        flags[flat.topk(round(keep * flat.numel())).indices] = True
        return flags.reshape(a.shape)

    def descending():
        desc_val, desc_idx = flat.sort(descending=True)
        desc_cum = (desc_val / desc_val.sum()).cumsum(0)
        return (
            torch.empty_like(desc_cum, dtype=torch.bool)
            .scatter_(0, desc_idx, desc_cum > 1 - keep)
            .reshape(a.shape)
        )

    return {
        (
            "the mask keeps the least attended patches: drop those whose ascending cumulative mass"
            " stays at or below 1 - keep, keep the rest"
        ): lambda: unsort(cum <= 1 - keep),
        (
            f"the mask holds {1 - keep:.0%} of the mass, not {keep:.0%}: the cut on the ascending"
            " cumulative sum is at 1 - keep"
        ): lambda: unsort(cum > keep),
        (
            f"kept {keep:.0%} of the patches, not the patches holding {keep:.0%} of the attention"
            " mass: sort, normalise, take the cumulative sum"
        ): (top_count),
        (
            "each patch's own weight is compared with the threshold: compare the cumulative sum of"
            " the sorted weights"
        ): lambda: unsort(p > 1 - keep),
        (
            "the map is not normalised to sum 1 before the cumulative sum (a class token's map"
            " sums to less than 1)"
        ): lambda: unsort(val.cumsum(0) > 1 - keep),
        "the mask is still in sorted order: put each flag back at its patch": (
            lambda: (cum > 1 - keep).reshape(a.shape)
        ),
        (
            "sorted descending with the ascending rule: sort ascending (or, descending, keep while"
            " the mass before a patch is below keep)"
        ): (descending),
    }


def _mask_cases() -> list[tuple[torch.Tensor, float]]:
    g = gen(0)
    return [
        ((0.8 * F.softmax(3 * torch.randn(36, generator=g), 0)).reshape(6, 6), 0.6),
        ((5.0 * F.softmax(2 * torch.randn(28, generator=g), 0)).reshape(4, 7), 0.6),
        (F.softmax(torch.randn(36, generator=g), 0).reshape(6, 6), 0.3),
        ((0.5 * F.softmax(4 * torch.randn(25, generator=g), 0)).reshape(5, 5), 0.9),
        ((1 / 36 + 1e-3 * torch.rand(36, generator=g)).reshape(6, 6), 0.6),
        ((0.9 * F.softmax(2 * torch.randn(12, generator=g), 0)).reshape(3, 4), 0.7),
    ]


@check("threshold_mask")
def check_threshold_mask(fn: Callable) -> str:
    """fn(attn_map (h, w), keep) -> bool mask (h, w): the most attended patches holding `keep` of
    the mass."""
    cases = _mask_cases()
    for a, keep in cases:
        want = reference_threshold_mask(a, keep)
        before = a.clone()
        got = expect_tensor(fn(a, keep))
        expect_unchanged([before], [a], "the attention map was changed in place; leave it as it is")
        expect_shape(
            got,
            tuple(a.shape),
            ("h", "w"),
            "mask",
            known={(a.numel(),): "return the mask in the map's (h, w) shape"},
        )
        if got.dtype != torch.bool:
            raise mistake(f"the mask has dtype {got.dtype}: return booleans (True = kept)")
        expect_same(
            got,
            want,
            _mask_variants(a, keep),
            f"the mask differs from threshold_masks for a {a.shape[0]} x {a.shape[1]} map,"
            f" keep={keep}",
        )
    return f"matches threshold_masks on {len(cases)} maps (keep 0.3, 0.6, 0.7, 0.9)"


# ============================================================================= 08 · kNN and linear
# probe


@reference("knn")
def reference_knn(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int = 10,
) -> torch.Tensor:
    """Weighted kNN predictions (M,): top-k cosine neighbours vote with exp(s / T)."""
    sim, idx = (test_x @ train_x.T).topk(k, dim=1)  # (M, k)
    votes = torch.zeros(test_x.shape[0], num_classes).scatter_add_(
        1, train_y[idx], (sim / T).exp()
    )  # (M, C)
    return votes.argmax(dim=1)  # (M,)


def _knn_data(
    seed: int, C: int = 5, D: int = 16, n_train: int = 300, n_test: int = 80, noise: float = 0.35
):
    g = gen(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=1)  # (C, D)
    ty = torch.randint(0, C, (n_train,), generator=g)
    vy = torch.randint(0, C, (n_test,), generator=g)
    tx = F.normalize(means[ty] + noise * torch.randn(n_train, D, generator=g), dim=1)  # (N, D)
    vx = F.normalize(means[vy] + noise * torch.randn(n_test, D, generator=g), dim=1)  # (M, D)
    return tx, ty, vx, vy


def _knn_variant(tx, ty, vx, k, T, C, kind=""):
    sim = vx @ tx.T  # (M, N)
    s, idx = sim.topk(tx.shape[0] if kind == "all" else k, dim=1, largest=kind != "smallest")
    weights = {"majority": torch.ones_like(s), "raw": s, "times_T": (s * T).exp()}.get(
        kind, (s / T).exp()
    )
    return torch.zeros(vx.shape[0], C).scatter_add_(1, ty[idx], weights).argmax(1)


KNN_CASES = [(0, 20, 0.07, 5), (1, 5, 0.07, 7), (2, 20, 0.5, 5), (3, 1, 0.07, 5), (4, 10, 0.02, 6)]


@check("knn")
def check_knn(fn: Callable) -> str:
    """fn(train_x (N, D), train_y (N,), test_x (M, D), k, T, num_classes) -> predicted classes
    (M,)."""
    for seed, k, T, C in KNN_CASES:
        tx, ty, vx, vy = _knn_data(seed)
        got = expect_tensor(
            fn(tx.clone(), ty.clone(), vx.clone(), k=k, T=T, num_classes=C), "the predictions"
        )
        expect_shape(
            got,
            (vx.shape[0],),
            ("M",),
            "predictions",
            known={
                (
                    vx.shape[0],
                    C,
                ): (
                    "return one predicted class per test image (the class with the most votes), not"
                    " the votes"
                )
            },
        )
        got = got.long()
        if got.min() < 0 or got.max() >= C:
            raise mistake(f"predictions must be class indices in 0 .. {C - 1}")
        variant = lambda kk=k, tt=T, kind="": lambda: _knn_variant(tx, ty, vx, kk, tt, C, kind)  # noqa: E731
        expect_same(
            got,
            reference_knn(tx, ty, vx, k, T, C),
            {
                "every neighbour votes 1: weight each vote by exp(similarity / T)": variant(
                    kind="majority"
                ),
                "votes weighted by the raw similarity: use exp(similarity / T)": variant(
                    kind="raw"
                ),
                "exp(similarity * T): divide by the temperature": variant(kind="times_T"),
                (
                    "took the k least similar training images: the neighbours are the k largest"
                    " similarities"
                ): variant(kind="smallest"),
                "every training image votes: only the k nearest neighbours do": variant(kind="all"),
                "the k argument is ignored: use the k nearest neighbours given": (
                    variant(kk=20) if k != 20 else None
                ),
                "the temperature argument T is ignored": variant(tt=0.07) if T != 0.07 else None,
            },
            f"the predictions differ from knn_classifier's for k={k}, T={T}",
        )
    return (
        f"matches knn_classifier on {len(KNN_CASES)} cases (k = 20, 10, 5, 1; T = 0.07, 0.5, 0.02)"
    )


@reference("linear_probe")
def reference_linear_probe(train_x, train_y, val_x, val_y, C: float = 0.1) -> float:
    return linear_probe(train_x, train_y, val_x, val_y, Cs=(C,))["top1"]


def _probe_data(seed: int, C: int = 4, D: int = 10, n_train: int = 120, n_val: int = 200):
    g = gen(seed)
    means = torch.randn(C, D, generator=g)  # (C, D)
    ty = torch.arange(n_train) % C
    vy = torch.arange(n_val) % C
    scale = torch.logspace(-1, 2, D)  # (D,): dimensions on very different scales
    tx = (means[ty] + 1.6 * torch.randn(n_train, D, generator=g)) * scale + 3.0  # (N, D)
    vx = (
        means[vy] + 1.6 * torch.randn(n_val, D, generator=g)
    ) * scale * 1.3 + 2.0  # (M, D): a shifted split
    return tx, ty, vx, vy


def _probe_variant(tx, ty, vx, vy, C, kind):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", ConvergenceWarning
        )  # unscaled features converge slowly: fine here
        return _probe_variant_fit(tx, ty, vx, vy, C, kind)


def _probe_variant_fit(tx, ty, vx, vy, C, kind):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tx, ty, vx, vy = tx.numpy(), ty.numpy(), vx.numpy(), vy.numpy()
    if kind == "no_scaler":
        return 100.0 * LogisticRegression(C=C, max_iter=300, random_state=0).fit(tx, ty).score(
            vx, vy
        )
    if kind == "val_scaler":
        scaler = StandardScaler().fit(vx)
    elif kind == "both_scaler":
        scaler = StandardScaler().fit(np.concatenate([tx, vx]))
    else:
        scaler = StandardScaler().fit(tx)
    a, b = scaler.transform(tx), scaler.transform(vx)
    if kind == "fit_val":
        return 100.0 * LogisticRegression(C=C, max_iter=300, random_state=0).fit(b, vy).score(b, vy)
    clf = LogisticRegression(C=1.0 if kind == "C_ignored" else C, max_iter=300, random_state=0).fit(
        a, ty
    )
    return 100.0 * (clf.score(a, ty) if kind == "score_train" else clf.score(b, vy))


PROBE_CASES = [(0, 0.01), (1, 0.1), (2, 1.0)]


@check("linear_probe")
def check_linear_probe(fn: Callable) -> str:
    """fn(train_x, train_y, val_x, val_y, C) -> top-1 accuracy on val, in percent.

    Another solver may classify one validation image differently: the accuracy is compared to within
    one image, the named wrong answers by `close`."""
    for seed, C in PROBE_CASES:
        tx, ty, vx, vy = _probe_data(seed)
        want = reference_linear_probe(tx, ty, vx, vy, C)
        got = fn(tx.clone(), ty.clone(), vx.clone(), vy.clone(), C=C)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise mistake(
                f"return the top-1 accuracy as one number (percent), not {type(got).__name__}"
            ) from None
        if abs(got - want) <= 100.0 / len(vy) + 1e-6:  # one validation image
            continue
        variant = lambda kind: lambda: _probe_variant(tx, ty, vx, vy, C, kind)  # noqa: E731
        expect_same(
            got,
            want,
            {
                "return a percentage (0-100), not a fraction": want / 100,
                (
                    "the probe was fitted on the validation set: fit on the training features"
                    " only, val is for the final score"
                ): variant("fit_val"),
                "scored on the training features: report the accuracy on the validation set": (
                    variant("score_train")
                ),
                (
                    "the standardisation used validation statistics: fit the scaler on the"
                    " training features only, then apply it to both"
                ): variant("val_scaler"),
                (
                    "the standardisation saw the validation features: fit the scaler on the"
                    " training features only"
                ): variant("both_scaler"),
                (
                    "the features are not standardised: fit a standard scaler on the training"
                    " features, apply it to both splits"
                ): variant("no_scaler"),
                "the C argument is ignored: pass it to the logistic regression": (
                    variant("C_ignored") if C != 1.0 else None
                ),
            },
            f"top-1 {got:.1f}% but linear_probe gives {want:.1f}% on these features (C={C})",
        )
    return f"matches linear_probe on {len(PROBE_CASES)} cases (C = 0.01, 0.1, 1)"
