"""Self-checks for the exercises of notebooks 05-08: the DINO head and loss, the EMA teacher and its
schedules, one training step, the attention maps, and the two evaluations (weighted kNN, linear probe).

Every `check_<name>(fn)` runs the learner's function on a few shapes, seeds and edge cases and
compares it with the finished code (`DINOHead`, `DINOLoss`, `cosine_scheduler`, `update_teacher`,
`DINOTrainer.train_step`'s recipe, `cls_attention`, `threshold_masks`, `knn_classifier`,
`linear_probe`). When the result is wrong, the check recomputes the typical wrong versions (the
centre applied to the student, the same view paired with itself, momentum used backwards...) and
names the one the learner's result matches. `core_<name>` is the finished version of each exercise,
with the learner's signature: what `pick` falls back to while a check has not passed.
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
from ..ema_training import (cancel_gradients_last_layer, clip_gradients, cosine_scheduler, get_params_groups,
                            make_teacher, update_teacher)
from ..linear_probe import knn_classifier, linear_probe
from ..multicrop import MultiCropWrapper
from ..vision_transformer import VisionTransformer
from . import check, mistake, reference

DINO_EXERCISES = ["dino_head", "teacher_probs", "center_update", "dino_loss",  # 05
             "cosine_schedule", "teacher_temp_schedule", "ema_update", "dino_step",  # 06
             "cls_attention", "threshold_mask",  # 07
             "knn", "linear_probe"]  # 08

__all__ = ["DINO_EXERCISES"] + [f"{prefix}_{name}" for name in DINO_EXERCISES for prefix in ("check", "core")]


# ----------------------------------------------------------------------------- helpers

def _tensor(out, name: str = "your function") -> torch.Tensor:
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise mistake(f"{name} returned {type(out).__name__}; return a torch tensor")
    return out


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _shape(out: torch.Tensor, expected: tuple, what: str, known: dict | None = None) -> None:
    """Fail with a named mistake when `out` has the wrong shape; `known` maps typical wrong shapes to messages."""
    if tuple(out.shape) == tuple(expected):
        return
    for shape, message in (known or {}).items():
        if tuple(out.shape) == tuple(shape):
            raise mistake(message)
    raise mistake(f"{what} has shape {tuple(out.shape)}, expected {tuple(expected)}")


def _diagnose(got: torch.Tensor, variants: dict[str, torch.Tensor], fallback: str, **tol) -> None:
    """Raise the message of the first wrong version `got` equals, else `fallback`."""
    for message, value in variants.items():
        if _same(got, value, **tol):
            raise mistake(message)
    raise mistake(fallback)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _own_rng(body: Callable) -> Callable:
    """Run a check with its own random state, so that the learner's global seed is left as it was."""

    @functools.wraps(body)
    def run(fn: Callable, *args, **kwargs):
        with torch.random.fork_rng():
            return body(fn, *args, **kwargs)

    return run


# ============================================================================= 05 · the DINO head and loss

def core_dino_head(x: torch.Tensor, mlp: nn.Module, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """DINOHead's forward from its pieces: (B, D) -> (B, K) cosine scores scaled by g."""
    z = F.normalize(mlp(x), dim=-1)  # (B, bottleneck)
    return z @ (g * F.normalize(v, dim=1)).T  # (B, K)


@check("dino_head")
@_own_rng
def check_dino_head(fn: Callable) -> str:
    cases = [(8, 16, 32, 4, 3, True), (12, 40, 24, 8, 5, False), (384, 64, 64, 16, 2, True)]
    for seed, (in_dim, K, hidden, bottleneck, B, norm_last) in enumerate(cases):
        torch.manual_seed(seed)
        head = DINOHead(in_dim, K, norm_last_layer=norm_last, hidden_dim=hidden, bottleneck_dim=bottleneck)
        wn = head.last_layer.parametrizations.weight
        with torch.no_grad():
            wn.original1.mul_(3.0)  # prototypes far from unit length
            if not norm_last:
                wn.original0.uniform_(0.5, 2.0)  # learned lengths
        x = torch.randn(B, in_dim, generator=_gen(seed))  # (B, D)
        v, g = wn.original1.detach(), wn.original0.detach()  # (K, bottleneck), (K, 1)
        with torch.no_grad():
            expected = head(x)  # (B, K)
            got = _tensor(fn(x, head.mlp, v.clone(), g.clone()))
            _shape(got, (B, K), "the scores", {(K, B): "the scores are transposed: return (B, K), one row per image"})
            if _same(got, expected):
                continue
            h = head.mlp(x)  # (B, bottleneck)
            z = F.normalize(h, dim=-1)
            w = g * F.normalize(v, dim=1)  # (K, bottleneck)
            _diagnose(got, {
                "the bottleneck is not L2-normalised: divide mlp(x) by its length over the last axis, so that every "
                "score is a cosine similarity": h @ w.T,
                "the bottleneck is normalised over the batch (dim=0): normalise each image's vector (dim=-1)":
                    F.normalize(h, dim=0) @ w.T,
                "the prototypes are not normalised: w_k = g_k v_k / ||v_k||, each ROW of v divided by its length":
                    z @ (g * v).T,
                "the prototypes are normalised over the wrong axis: each prototype is a ROW of v (K, bottleneck), "
                "normalise over dim=1": z @ (g * F.normalize(v, dim=0)).T,
                "the lengths g are ignored: w_k = g_k v_k / ||v_k|| (g is 1 only when norm_last_layer=True)":
                    z @ F.normalize(v, dim=1).T,
            }, f"the scores differ from DINOHead's (in_dim {in_dim}, K {K}, bottleneck {bottleneck}, "
               f"norm_last_layer={norm_last}): MLP, normalise, then the weight-normalised last layer")
    return f"matches DINOHead on {len(cases)} heads (learned lengths g included)"


def core_teacher_probs(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """softmax((g_t - c) / tau_t) over the K outputs, no gradient: (2B, K)."""
    return F.softmax((teacher_out.detach() - center) / teacher_temp, dim=-1)  # (2B, K)


@check("teacher_probs")
@_own_rng
def check_teacher_probs(fn: Callable) -> str:
    cases = [(4, 16, 0.04), (3, 10, 0.07), (5, 7, 0.2)]
    for seed, (B, K, temp) in enumerate(cases):
        g = _gen(seed)
        teacher_out = (0.2 * torch.randn(2 * B, K, generator=g)).requires_grad_()  # (2B, K)
        center = 0.3 * torch.randn(1, K, generator=g)  # (1, K)
        loss = DINOLoss(K, 2, temp, temp, 0, 1)
        loss.center.copy_(center)
        expected = loss.teacher_probs(teacher_out, epoch=0)  # (2B, K)
        got = _tensor(fn(teacher_out, center.clone(), temp))
        _shape(got, (2 * B, K), "P_t")
        if got.requires_grad:
            raise mistake("gradients would flow into the teacher: detach its output (or work under torch.no_grad())")
        if _same(got, expected):
            continue
        t = teacher_out.detach()
        _diagnose(got, {
            "softmax over the wrong axis: each row (one view's K scores) must sum to 1, use dim=-1":
                F.softmax((t - center) / temp, dim=0),
            "the centre is not subtracted from the teacher's output: softmax((teacher_out - center) / teacher_temp)":
                F.softmax(t / temp, dim=-1),
            "the centre is added, not subtracted: softmax((teacher_out - center) / teacher_temp)":
                F.softmax((t + center) / temp, dim=-1),
            "the teacher is not sharpened: divide by teacher_temp before the softmax": F.softmax(t - center, dim=-1),
            "multiplied by the temperature: divide by it (a temperature below 1 sharpens)":
                F.softmax((t - center) * temp, dim=-1),
            "the centre is subtracted after the softmax: centre the scores, then divide and take the softmax":
                F.softmax(t / temp, dim=-1) - center,
        }, f"P_t differs from DINOLoss.teacher_probs (B={B}, K={K}, teacher_temp={temp})")
    return f"matches DINOLoss.teacher_probs on {len(cases)} cases"


def core_center_update(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """c <- m c + (1 - m) mean over the batch of the teacher's raw outputs: (1, K)."""
    return momentum * center + (1 - momentum) * teacher_out.detach().mean(dim=0, keepdim=True)  # (1, K)


@check("center_update")
@_own_rng
def check_center_update(fn: Callable) -> str:
    cases = [(4, 16, 0.9), (3, 9, 0.7), (6, 5, 0.99)]
    for seed, (B, K, m) in enumerate(cases):
        g = _gen(seed)
        teacher_out = torch.randn(2 * B, K, generator=g) + 0.5  # (2B, K)
        center = 0.3 * torch.randn(1, K, generator=g)  # (1, K)
        loss = DINOLoss(K, 2, 0.04, 0.04, 0, 1, center_momentum=m)
        loss.center.copy_(center)
        loss.update_center(teacher_out)
        expected = loss.center  # (1, K)
        got = _tensor(fn(center.clone(), teacher_out.clone(), m))
        _shape(got, (1, K), "the new centre", {
            (2 * B, 1): "mean over the wrong axis: average over the batch (dim=0), one value per output: (1, K)",
            (2 * B, K): "mean over the wrong axis: average over the batch (dim=0), one value per output: (1, K)",
            (2 * B,): "mean over the wrong axis: average over the batch (dim=0), one value per output: (1, K)",
            (K,): "keep the centre's (1, K) shape: mean(dim=0, keepdim=True)",
        })
        if _same(got, expected):
            continue
        mean = teacher_out.mean(dim=0, keepdim=True)  # (1, K)
        _diagnose(got, {
            "momentum used backwards: the old centre keeps the weight m, the batch mean gets 1 - m":
                (1 - m) * center + m * mean,
            "summed over the batch: the centre follows the MEAN teacher output": m * center + (1 - m) * teacher_out.sum(0, keepdim=True),
            "the centre follows the teacher's probabilities: use its raw output g_t, before centering and softmax":
                m * center + (1 - m) * F.softmax(teacher_out, dim=-1).mean(0, keepdim=True),
            "the old centre is forgotten: c <- m c + (1 - m) mean": (1 - m) * mean,
            "the centre did not move: return m * center + (1 - m) * batch mean": center,
        }, f"the centre differs from DINOLoss's update (B={B}, K={K}, momentum={m})")
    return f"matches DINOLoss.update_center on {len(cases)} cases"


def core_dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, ncrops: int,
                   student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINOLoss's value for a given centre (without moving it): a scalar with the student's gradient."""
    loss = DINOLoss(student_out.shape[-1], ncrops, teacher_temp, teacher_temp, 0, 1, student_temp=student_temp)
    loss.center.copy_(center.reshape(1, -1))
    return loss(student_out, teacher_out, epoch=0)


def _loss_variant(s, t, c, ncrops, Ts, Tt, same_view=False, n_div=None, center="teacher", batch="mean", over_k="sum",
                  teacher_dim=-1, layout="view", student="log_softmax", kl=False):
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
    logp = F.log_softmax(s_c / Ts, dim=-1) if student == "log_softmax" else F.softmax(s_c / Ts, dim=-1)
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


@check("dino_loss")
@_own_rng
def check_dino_loss(fn: Callable) -> str:
    cases = [(4, 6, 32, 0.1, 0.04), (3, 2, 16, 0.1, 0.04), (2, 4, 12, 0.2, 0.05)]
    for seed, (B, ncrops, K, Ts, Tt) in enumerate(cases):
        g = _gen(seed)
        student_out = torch.randn(ncrops * B, K, generator=g).requires_grad_()  # (V*B, K)
        teacher_out = (torch.randn(2 * B, K, generator=g) + 0.5).requires_grad_()  # (2B, K)
        center = 0.5 * torch.randn(1, K, generator=g)  # (1, K)
        expected = core_dino_loss(student_out, teacher_out, center, ncrops, Ts, Tt)
        got = _tensor(fn(student_out, teacher_out, center.clone(), ncrops, Ts, Tt), "the loss")
        if got.numel() != 1:
            raise mistake(f"the loss has shape {tuple(got.shape)}: return one number, the mean over the pairs and "
                          "the images")
        got = got.reshape(())
        if not _same(got, expected):
            s, t = student_out.detach(), teacher_out.detach()
            var = lambda **kw: _loss_variant(s, t, center, ncrops, Ts, Tt, **kw)  # noqa: E731
            pairs = 2 * (ncrops - 1)
            _diagnose(got, {
                "the same view is paired with itself: skip v == iq, there are 2 * (ncrops - 1) pairs per image":
                    var(same_view=True),
                f"averaged over the wrong number of pairs: {pairs} (teacher, student) pairs, each view of the "
                f"teacher with every OTHER view": var(n_div=2 * ncrops),
                "the centre is applied to the student: only the teacher's output is centred": var(center="student"),
                "the centre is subtracted from the student as well: only the teacher's output is centred":
                    var(center="both"),
                "the centre is not subtracted from the teacher: softmax((teacher_out - center) / teacher_temp)":
                    var(center="none"),
                "the temperatures are swapped: the teacher uses teacher_temp (sharper), the student student_temp":
                    _loss_variant(s, t, center, ncrops, Tt, Ts),
                "the teacher is not sharpened: divide its centred output by teacher_temp, not student_temp":
                    _loss_variant(s, t, center, ncrops, Ts, Ts),
                "softmax over the wrong axis for the teacher: each row (one view) sums to 1, use dim=-1":
                    var(teacher_dim=0),
                "summed over the batch: each pair's cross-entropy is averaged over the B images": var(batch="sum"),
                "mean over the K outputs: the cross-entropy SUMS over K, -sum_k P_t log P_s, then averages over "
                "images": var(over_k="mean"),
                "the views are split wrongly: rows v*B ... (v+1)*B - 1 are view v, use .chunk(ncrops), not every "
                "ncrops-th row": var(layout="image"),
                "the student's probabilities are used where their LOG is needed: log_softmax(student / student_temp)":
                    var(student="softmax"),
                "this is KL(P_t || P_s): DINO's loss is the cross-entropy H(P_t, P_s) = -sum_k P_t log P_s":
                    var(kl=True),
            }, f"the loss differs from DINOLoss (B={B}, ncrops={ncrops}, K={K}, student_temp={Ts}, "
               f"teacher_temp={Tt})")
        if not got.requires_grad:
            raise mistake("the loss carries no gradient for the student: keep the student's output in the graph "
                          "(no .detach(), .item() or torch.no_grad() on its side)")
        got.backward()
        if teacher_out.grad is not None and teacher_out.grad.abs().sum() > 0:
            raise mistake("gradients flow into the teacher: detach its probabilities (the teacher is not trained "
                          "by backprop)")
        grad = student_out.grad.clone()
        student_out.grad = None
        expected.backward()
        if not _same(grad, student_out.grad):
            raise mistake("the value is right but the student's gradient is not: compute the loss from "
                          "student_out itself, with differentiable torch operations")
    return f"matches DINOLoss on {len(cases)} cases, value and gradient"


# ============================================================================= 06 · schedules, EMA, one step

def core_cosine_schedule(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    return cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs, start_warmup_value)


def _cosine_variant(base, final, epochs, niter, warmup=0, start=0.0, kind=""):
    W, T = warmup * niter, epochs * niter
    if kind == "per_epoch":
        W, T = warmup, epochs
    if kind == "no_warmup":
        W = 0
    if kind == "warmup_short":
        warm = np.linspace(start, base, W + 1)[:-1]
    elif kind == "warmup_from_zero":
        warm = np.linspace(0.0, base, W)
    else:
        warm = np.linspace(start, base, W)
    n = T if kind == "extra" else T - W
    i = np.arange(n)
    if kind == "cos_reaches_final":
        i = i / max(n - 1, 1) * n
    if kind == "cos_from_one":
        i = i + 1
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(n, 1)))
    if kind == "cos_backwards":
        cos = cos[::-1]
    return np.concatenate([warm, cos])


@check("cosine_schedule")
@_own_rng
def check_cosine_schedule(fn: Callable) -> str:
    cases = [(2e-3, 1e-6, 10, 5, 2, 0.0), (0.04, 0.4, 6, 4, 0, 0.0), (0.996, 1.0, 7, 3, 0, 0.0), (1.0, 0.0, 3, 4, 3, 0.0),
             (0.5, 0.1, 4, 2, 1, 0.2), (0.3, 0.1, 1, 1, 0, 0.0)]
    for args in cases:
        base, final, epochs, niter, warm, start = args
        expected = torch.from_numpy(cosine_scheduler(*args))
        got = _tensor(np.asarray(fn(*args), dtype=np.float64))
        T, W = epochs * niter, warm * niter
        _shape(got, (T,), f"the schedule for {epochs} epochs x {niter} iterations", {
            (epochs,): "one value per epoch: the schedule needs one value per ITERATION, epochs * niter_per_ep",
            (T + W,): "the warm-up is added on top of training: it is part of the epochs * niter_per_ep values",
        } if W else {(epochs,): "one value per epoch: the schedule needs one value per ITERATION, "
                                "epochs * niter_per_ep"})
        if _same(got, expected, rtol=1e-6, atol=1e-9):
            continue
        v = lambda kind: torch.from_numpy(_cosine_variant(*args, kind=kind).copy())  # noqa: E731
        _diagnose(got, {
            "no warm-up: the first warmup_epochs * niter_per_ep values rise linearly from start_warmup_value to "
            "base_value": v("no_warmup"),
            "the warm-up stops one step short of base_value: np.linspace(start, base, W) ends exactly at base":
                v("warmup_short"),
            "the warm-up must start from start_warmup_value": v("warmup_from_zero"),
            "the cosine is off by one step: use pi * i / (T - W) for i = 0 .. T-W-1 (it starts exactly at base, "
            "and the last value stays just above final, as in DINO)": v("cos_reaches_final"),
            "the cosine is off by one step: i runs from 0, so the first value after the warm-up is base_value":
                v("cos_from_one"),
            "the cosine runs backwards: it starts at base_value and ends near final_value": v("cos_backwards"),
        }, f"the schedule differs from cosine_scheduler{args}", rtol=1e-6, atol=1e-9)
    return f"matches cosine_scheduler on {len(cases)} schedules"


def core_teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs):
    return teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)


@check("teacher_temp_schedule")
@_own_rng
def check_teacher_temp_schedule(fn: Callable) -> str:
    cases = [(0.04, 0.07, 30, 100), (0.04, 0.07, 5, 10), (0.04, 0.04, 0, 5), (0.02, 0.06, 3, 3)]
    for a, b, W, n in cases:
        expected = torch.from_numpy(teacher_temp_schedule(a, b, W, n))
        got = _tensor(np.asarray(fn(a, b, W, n), dtype=np.float64))
        _shape(got, (n,), f"the schedule for {n} epochs", {
            (n + W,): "the warm-up is added on top of training: nepochs values in all, the warm-up included",
        } if W else None)
        if _same(got, expected, rtol=1e-6, atol=1e-9):
            continue
        rest = np.full(n - W, float(b))
        v = lambda warm: torch.from_numpy(np.concatenate([warm, rest]))  # noqa: E731
        _diagnose(got, {
            "no warm-up: the first warmup_teacher_temp_epochs values rise linearly from warmup_teacher_temp":
                torch.full((n,), float(b), dtype=torch.float64),
            "the warm-up stops one step short: at epoch W-1 the value is already teacher_temp "
            "(np.linspace(start, end, W))": v(np.linspace(a, b, W + 1)[:-1]),
            "the warm-up starts one step late: at epoch 0 the value is warmup_teacher_temp": v(np.linspace(a, b, W + 1)[1:]),
            "the warm-up runs backwards: from warmup_teacher_temp up to teacher_temp": v(np.linspace(b, a, W)),
        }, f"the schedule differs from teacher_temp_schedule({a}, {b}, {W}, {n})", rtol=1e-6, atol=1e-9)
    return f"matches teacher_temp_schedule on {len(cases)} schedules"


def core_ema_update(student: nn.Module, teacher: nn.Module, m: float) -> None:
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
@_own_rng
def check_ema_update(fn: Callable) -> str:
    for seed, m in enumerate((0.996, 0.9, 0.0, 1.0)):
        student, teacher = _ema_pair(seed)
        s0 = [p.detach().clone() for p in student.parameters()]
        t0 = [p.detach().clone() for p in teacher.parameters()]
        ref = copy.deepcopy(teacher)
        update_teacher(student, ref, m)
        t_params = list(teacher.parameters())
        fn(student, teacher, m)
        if any(not torch.equal(p, q) for p, q in zip(student.parameters(), s0)):
            raise mistake("the student was changed: only the teacher moves (the student learns from its optimiser)")
        if any(a is not b for a, b in zip(teacher.parameters(), t_params)):
            raise mistake("the teacher's parameters were replaced by new tensors: update them in place "
                          "(p_t.mul_(m).add_(...)) so that the teacher keeps its own storage")
        if any(p_t.data_ptr() == p_s.data_ptr() for p_t, p_s in zip(teacher.parameters(), student.parameters())):
            raise mistake("the teacher now shares storage with the student: copy values in place, don't assign tensors")
        if any(p.requires_grad or p.grad_fn is not None for p in teacher.parameters()):
            raise mistake("the teacher's weights now take part in autograd: update them under torch.no_grad() and "
                          "from p_s.detach()")
        got, want = list(teacher.parameters()), list(ref.parameters())
        if all(_same(a, b) for a, b in zip(got, want)):
            continue
        if all(torch.equal(a, b) for a, b in zip(got, t0)):
            raise mistake("the teacher did not move: update each teacher parameter in place, "
                          "p_t.mul_(m).add_(p_s, alpha=1 - m); rebinding a loop variable changes nothing")
        backwards = [(1 - m) * t + m * s for t, s in zip(t0, s0)]
        if all(_same(a, b) for a, b in zip(got, backwards)):
            raise mistake("momentum used backwards: the teacher keeps m of itself and takes 1 - m of the student, "
                          "theta_t <- m theta_t + (1 - m) theta_s")
        moved = [not torch.equal(a, b) for a, b in zip(got, t0)]
        if any(moved) and not all(moved):
            raise mistake(f"only {sum(moved)} of {len(moved)} teacher tensors moved: update every parameter")
        raise mistake(f"the teacher differs from update_teacher's result (momentum {m})")
    return "matches update_teacher for m = 0.996, 0.9, 0 and 1"


def _reference_step(student, teacher, loss_fn, optimizer, crops, it, epoch, lr_schedule, wd_schedule,
                    momentum_schedule, clip_grad=3.0, freeze_last_layer=1, flaw: str = ""):
    """DINOTrainer.train_step's recipe (fp32, one process) from the core's pieces; `flaw` makes one typical mistake."""
    for i, group in enumerate(optimizer.param_groups):
        if flaw != "no_schedule":
            group["lr"] = float(lr_schedule[it])
            if i == 0 or flaw == "wd_all_groups":
                group["weight_decay"] = float(wd_schedule[it])
    if flaw == "ema_first":
        update_teacher(student, teacher, float(momentum_schedule[it]))
    with torch.no_grad():
        teacher_out = teacher(crops[0])  # (2B, K)
    student_out = student(crops)  # (V*B, K)
    loss = loss_fn(student_out, teacher_out, epoch)
    if flaw != "no_zero_grad":
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if flaw == "global_clip":
        torch.nn.utils.clip_grad_norm_(student.parameters(), clip_grad)
    elif flaw != "no_clip":
        clip_gradients(student, clip_grad)
    if flaw != "no_freeze":
        cancel_gradients_last_layer(epoch, student, freeze_last_layer)
    optimizer.step()
    if flaw == "ema_backwards":
        update_teacher(student, teacher, 1.0 - float(momentum_schedule[it]))
    elif flaw == "ema_fixed":
        update_teacher(student, teacher, float(momentum_schedule[0]))
    elif flaw not in ("no_ema", "ema_first"):
        update_teacher(student, teacher, float(momentum_schedule[it]))
    return loss.detach()


core_dino_step = _reference_step


def _step_world(seed: int = 0):
    """A tiny DINO world: student, teacher, loss, optimiser, schedules and 3 batches of crops."""
    torch.manual_seed(seed)
    backbone = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    student = MultiCropWrapper(backbone, DINOHead(16, 32, hidden_dim=32, bottleneck_dim=8))
    teacher = make_teacher(student)
    loss_fn = DINOLoss(32, ncrops=4, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0, nepochs=2)
    optimizer = torch.optim.AdamW(get_params_groups(student), lr=0.0, weight_decay=0.0)
    g = _gen(seed + 1)
    batches = [[torch.randn(2 * 3, 3, 16, 16, generator=g), torch.randn(2 * 3, 3, 8, 8, generator=g)] for _ in range(3)]
    schedules = dict(lr_schedule=cosine_scheduler(2e-2, 1e-3, 2, 3, warmup_epochs=1),
                     wd_schedule=cosine_scheduler(0.04, 0.4, 2, 3),
                     momentum_schedule=cosine_scheduler(0.8, 1.0, 2, 3))
    return dict(student=student, teacher=teacher, loss_fn=loss_fn, optimizer=optimizer), batches, schedules


_GLOBAL_SHAPE = (6, 3, 16, 16)  # the global crops of one batch in _step_world: 2 views x 3 images


def _run_steps(step_fn, flaw=None, seen=None):
    """Three steps of `step_fn` in a fresh tiny world; `seen` records what the teacher and student were called with."""
    world, batches, schedules = _step_world()
    if seen is not None:
        world["teacher"].register_forward_pre_hook(
            lambda mod, args: seen["teacher"].append((torch.is_grad_enabled(), args[0])))
        world["student"].register_forward_pre_hook(lambda mod, args: seen["student"].append(args[0]))
    losses = []
    for it, crops in enumerate(batches):
        epoch = 0 if it < 2 else 1  # the last layer is frozen in epoch 0 only
        kw = dict(crops=crops, it=it, epoch=epoch, clip_grad=0.05, freeze_last_layer=1, **schedules)
        if flaw is not None:
            kw["flaw"] = flaw
        losses.append(step_fn(**world, **kw))
    return world, losses


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in module.parameters()]


def _check_step_calls(seen: dict, crashed: bool = False) -> None:
    """What the teacher and the student were called with, as their forward hooks saw it."""
    G = _GLOBAL_SHAPE
    if not seen["teacher"] and not crashed:
        raise mistake("the teacher never ran: its output on the 2 global crops is the target")
    if any(grad_on for grad_on, _ in seen["teacher"]):
        raise mistake("the teacher ran with gradients on: compute its output under torch.no_grad()")
    globals_only = lambda x: (isinstance(x, torch.Tensor) and tuple(x.shape) == G) or (  # noqa: E731
        isinstance(x, (list, tuple)) and len(x) == 1 and tuple(x[0].shape) == G)
    if not all(globals_only(x) for _, x in seen["teacher"]):
        raise mistake("the teacher must see the 2 global crops only (crops[0]), not every crop")
    if any(not isinstance(x, (list, tuple)) or len(x) != 2 for x in seen["student"]):
        raise mistake("the student must see every crop: pass it the whole list `crops` (globals and locals)")
    if not crashed and (len(seen["teacher"]) != 3 or len(seen["student"]) != 3):
        raise mistake("run the teacher and the student once per step each")


_STEP_FLAWS = [
    ("no_schedule", "the learning rate and weight decay are not set from their schedules: at step it, "
                    "group['lr'] = lr_schedule[it] (and the weight decay of the first group)"),
    ("wd_all_groups", "weight decay applied to the second group too: biases and norms (group 1) keep weight_decay 0"),
    ("no_zero_grad", "gradients pile up from step to step: zero them before backward (optimizer.zero_grad())"),
    ("no_clip", "the gradients are not clipped: clip_gradients(student, clip_grad) after backward"),
    ("global_clip", "the gradients are clipped globally: DINO clips each parameter on its own (clip_gradients)"),
    ("no_freeze", "the last layer is not frozen in the first epoch: cancel_gradients_last_layer(epoch, student, "
                  "freeze_last_layer) before the optimiser step"),
    ("no_ema", "the teacher never moves: update_teacher(student, teacher, momentum_schedule[it]) after the "
               "optimiser step"),
    ("ema_first", "the EMA update comes before the student's step: move the teacher towards the NEW student, "
                  "after optimizer.step()"),
    ("ema_backwards", "momentum used backwards in the EMA: the teacher keeps m = momentum_schedule[it] of itself"),
    ("ema_fixed", "the momentum is not read from its schedule: use momentum_schedule[it]"),
]


@check("dino_step")
@_own_rng
def check_dino_step(fn: Callable) -> str:
    seen = {"teacher": [], "student": []}
    try:
        world, losses = _run_steps(fn, seen=seen)
    except Exception:
        _check_step_calls(seen, crashed=True)  # a wrong call explains a crash better than the crash itself
        raise
    _check_step_calls(seen)
    ref, ref_losses = _run_steps(_reference_step, flaw="")
    if not _same(torch.as_tensor(losses[0]).reshape(()), ref_losses[0]):
        raise mistake("the returned loss differs: return loss_fn(student_out, teacher_out, epoch) (detached)")
    tol = dict(rtol=1e-4, atol=1e-6)
    same = lambda a, b: all(_same(x, y, **tol) for x, y in zip(_weights(a), _weights(b)))  # noqa: E731
    if not (same(world["student"], ref["student"]) and same(world["teacher"], ref["teacher"])):
        for flaw, message in _STEP_FLAWS:  # the teacher makes the student's targets: a flaw shows in both
            bad, _ = _run_steps(_reference_step, flaw=flaw)
            if same(world["student"], bad["student"]) and same(world["teacher"], bad["teacher"]):
                raise mistake(message)
        raise mistake("after 3 steps the weights differ from DINOTrainer.train_step's: check the order: "
                      "schedules, teacher, student, loss, zero_grad, backward, clip, freeze, optimizer.step, EMA")
    if not _same(world["loss_fn"].center, ref["loss_fn"].center):
        raise mistake("the centre moved a different number of times: call loss_fn exactly once per step (it "
                      "updates the centre)")
    return "3 steps match DINOTrainer.train_step's recipe: student, teacher and centre"


# ============================================================================= 07 · attention maps

def core_cls_attention(q: torch.Tensor, k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """q, k: (B, heads, N+1, d) -> the CLS row of softmax(q k^T / sqrt(d)) without CLS, folded: (B, heads, h, w)."""
    A = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, heads, N+1, N+1)
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)  # (B, heads, h, w)


def _qk_of_last_block(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's queries and keys, (B, heads, N+1, d) each, caught with a hook on attn.qkv."""
    caught = []
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda mod, inp, out: caught.append(out))
    try:
        model.get_last_selfattention(x)
    finally:
        handle.remove()
    B, T, _ = caught[0].shape
    H = model.num_heads
    qkv = caught[0].reshape(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N+1, d)
    return qkv[0], qkv[1]


@check("cls_attention")
@_own_rng
def check_cls_attention(fn: Callable) -> str:
    cases = [((2, 3, 12, 20), 3), ((1, 3, 16, 16), 2)]  # a 3 x 5 grid, then a square 4 x 4 one
    for seed, (shape, heads) in enumerate(cases):
        torch.manual_seed(seed)
        model = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=heads).eval()
        with torch.no_grad():
            model.blocks[-1].attn.qkv.weight.mul_(20.0)  # a trained-looking, far from uniform attention
        x = torch.randn(*shape, generator=_gen(seed))
        h, w = shape[2] // 4, shape[3] // 4
        q, k = _qk_of_last_block(model, x)
        expected = cls_attention(model, x)  # (B, heads, h, w)
        with torch.no_grad():
            got = _tensor(fn(q.clone(), k.clone(), h, w))
        B, H = shape[0], heads
        _shape(got, (B, H, h, w), "the maps", {
            (B, H, w, h): "the map is folded as (w, h): patches are row-major, reshape(B, heads, h, w)",
        })
        if _same(got, expected):
            continue
        d = q.shape[-1]
        logits = q @ k.transpose(-2, -1)  # (B, H, N+1, N+1)
        A = (logits / math.sqrt(d)).softmax(-1)
        _diagnose(got, {
            "softmax over the wrong axis: each query's row of A (over the keys, dim=-1) must sum to 1":
                (logits / math.sqrt(d)).softmax(-2)[:, :, 0, 1:].reshape(B, H, h, w),
            "q k^T is not scaled: divide by sqrt(d), d the head dimension": logits.softmax(-1)[:, :, 0, 1:].reshape(B, H, h, w),
            "scaled by 1/d: the scale is 1/sqrt(d)": (logits / d).softmax(-1)[:, :, 0, 1:].reshape(B, H, h, w),
            "took column 0 (what each patch takes from CLS): the map is ROW 0, what CLS takes from each patch, "
            "A[:, :, 0, 1:]": A[:, :, 1:, 0].reshape(B, H, h, w),
            "the patches are folded in the wrong order: they are row-major, reshape(B, heads, h, w)":
                A[:, :, 0, 1:].reshape(B, H, w, h).transpose(-1, -2),
            "the map was renormalised to sum 1: keep the attention weights A[0, 1:] as they are":
                F.normalize(A[:, :, 0, 1:], p=1, dim=-1).reshape(B, H, h, w),
        }, f"the maps differ from cls_attention for images of {shape[2]} x {shape[3]} px ({h} x {w} patches)")
    return f"matches cls_attention on {len(cases)} models (a non-square grid included)"


def core_threshold_mask(attn_map: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    return threshold_masks(attn_map, keep)


def _mask_variants(a: torch.Tensor, keep: float) -> dict[str, torch.Tensor]:
    flat = a.flatten().double()  # (N,)
    val, idx = flat.sort()
    p = val / val.sum()
    cum = p.cumsum(0)
    unsort = lambda sorted_flags: sorted_flags[idx.argsort()].reshape(a.shape)  # noqa: E731
    n_keep = round(keep * flat.numel())
    top_count = torch.zeros(flat.numel(), dtype=torch.bool)
    top_count[flat.topk(n_keep).indices] = True
    desc_val, desc_idx = flat.sort(descending=True)
    desc_cum = (desc_val / desc_val.sum()).cumsum(0)
    desc = torch.empty_like(desc_cum, dtype=torch.bool).scatter_(0, desc_idx, desc_cum > 1 - keep)
    return {
        "the mask keeps the LEAST attended patches: drop those whose ascending cumulative mass stays <= 1 - keep, "
        "keep the rest": unsort(cum <= 1 - keep),
        f"the mask holds {1 - keep:.0%} of the mass, not {keep:.0%}: the cut on the ascending cumulative sum is at "
        "1 - keep": unsort(cum > keep),
        f"kept {keep:.0%} of the PATCHES, not the patches holding {keep:.0%} of the attention MASS: sort, normalise, "
        "take the cumulative sum": top_count.reshape(a.shape),
        "each patch's own weight is compared with the threshold: compare the CUMULATIVE sum of the sorted weights":
            unsort(p > 1 - keep),
        "the map is not normalised to sum 1 before the cumulative sum (a CLS map sums to less than 1)":
            unsort(val.cumsum(0) > 1 - keep),
        "the mask is still in sorted order: put each flag back at its patch (flags[idx.argsort()])":
            (cum > 1 - keep).reshape(a.shape),
        "sorted descending with the ascending rule: sort ascending (or, descending, keep while the mass before "
        "a patch is < keep)": desc.reshape(a.shape),
    }


@check("threshold_mask")
@_own_rng
def check_threshold_mask(fn: Callable) -> str:
    g = _gen(0)
    maps = [(0.8 * F.softmax(3 * torch.randn(36, generator=g), 0)).reshape(6, 6), 0.6,
            (5.0 * F.softmax(2 * torch.randn(28, generator=g), 0)).reshape(4, 7), 0.6,
            F.softmax(torch.randn(36, generator=g), 0).reshape(6, 6), 0.3,
            (0.5 * F.softmax(4 * torch.randn(25, generator=g), 0)).reshape(5, 5), 0.9,
            (1 / 36 + 1e-3 * torch.rand(36, generator=g)).reshape(6, 6), 0.6]
    cases = list(zip(maps[::2], maps[1::2]))
    for a, keep in cases:
        expected = threshold_masks(a, keep)
        got = _tensor(fn(a.clone(), keep))
        _shape(got, tuple(a.shape), "the mask", {(a.numel(),): "return the mask in the map's (h, w) shape"})
        if got.dtype != torch.bool:
            raise mistake(f"the mask has dtype {got.dtype}: return booleans (True = kept)")
        if torch.equal(got, expected):
            continue
        for message, value in _mask_variants(a, keep).items():
            if torch.equal(got, value):
                raise mistake(message)
        raise mistake(f"the mask differs from threshold_masks for a {a.shape[0]} x {a.shape[1]} map, keep={keep}")
    return f"matches threshold_masks on {len(cases)} maps (keep 0.3, 0.6, 0.9)"


# ============================================================================= 08 · kNN and linear probe

def core_knn(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 20, T: float = 0.07,
             num_classes: int = 10) -> torch.Tensor:
    """Weighted kNN predictions (M,): top-k cosine neighbours vote with exp(s / T)."""
    sim, idx = (test_x @ train_x.T).topk(k, dim=1)  # (M, k)
    votes = torch.zeros(test_x.shape[0], num_classes).scatter_add_(1, train_y[idx], (sim / T).exp())  # (M, C)
    return votes.argmax(dim=1)  # (M,)


def _knn_data(seed: int, C: int = 5, D: int = 16, n_train: int = 300, n_test: int = 80, noise: float = 0.35):
    g = _gen(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=1)  # (C, D)
    ty = torch.randint(0, C, (n_train,), generator=g)
    vy = torch.randint(0, C, (n_test,), generator=g)
    tx = F.normalize(means[ty] + noise * torch.randn(n_train, D, generator=g), dim=1)  # (N, D)
    vx = F.normalize(means[vy] + noise * torch.randn(n_test, D, generator=g), dim=1)  # (M, D)
    return tx, ty, vx, vy


def _knn_variant(tx, ty, vx, k, T, C, kind):
    sim = vx @ tx.T
    s, idx = sim.topk(k, dim=1, largest=kind != "smallest")
    weights = {"majority": torch.ones_like(s), "raw": s, "times_T": (s * T).exp()}.get(kind, (s / T).exp())
    return torch.zeros(vx.shape[0], C).scatter_add_(1, ty[idx], weights).argmax(1)


@check("knn")
@_own_rng
def check_knn(fn: Callable) -> str:
    cases = [(0, 20, 0.07), (1, 5, 0.07), (2, 20, 0.5), (3, 1, 0.07)]
    C = 5
    for seed, k, T in cases:
        tx, ty, vx, vy = _knn_data(seed)
        got = _tensor(fn(tx.clone(), ty.clone(), vx.clone(), k=k, T=T, num_classes=C), "the predictions")
        _shape(got, (vx.shape[0],), "the predictions", {
            (vx.shape[0], C): "return one predicted class per test image (argmax over the classes), not the votes",
        })
        got = got.long()
        if got.min() < 0 or got.max() >= C:
            raise mistake(f"predictions must be class indices in 0 .. {C - 1}")
        if knn_classifier(tx, ty, vx, got, k=k, T=T, num_classes=C) == 100.0:
            continue  # every prediction is the core's
        variants = {
            "every neighbour votes 1: weight each vote by exp(similarity / T)": _knn_variant(tx, ty, vx, k, T, C, "majority"),
            "votes weighted by the raw similarity: use exp(similarity / T)": _knn_variant(tx, ty, vx, k, T, C, "raw"),
            "exp(similarity * T): divide by the temperature, exp(s / T)": _knn_variant(tx, ty, vx, k, T, C, "times_T"),
            "took the k LEAST similar training images: the neighbours are the topk LARGEST similarities":
                _knn_variant(tx, ty, vx, k, T, C, "smallest"),
        }
        if k != 20:
            variants["the k argument is ignored: use the k nearest neighbours given"] = \
                _knn_variant(tx, ty, vx, 20, T, C, "")
        if T != 0.07:
            variants["the temperature argument T is ignored"] = _knn_variant(tx, ty, vx, k, 0.07, C, "")
        for message, value in variants.items():
            if torch.equal(got, value):
                raise mistake(message)
        raise mistake(f"the predictions differ from knn_classifier's for k={k}, T={T}")
    return f"matches knn_classifier on {len(cases)} cases (k = 20, 5, 1; T = 0.07, 0.5)"


def core_linear_probe(train_x, train_y, val_x, val_y, C: float = 0.1) -> float:
    return linear_probe(train_x, train_y, val_x, val_y, Cs=(C,))["top1"]


def _probe_data(seed: int, C: int = 4, D: int = 10, n_train: int = 120, n_val: int = 200):
    g = _gen(seed)
    means = torch.randn(C, D, generator=g)  # (C, D)
    ty = torch.arange(n_train) % C
    vy = torch.arange(n_val) % C
    scale = torch.logspace(-1, 2, D)  # (D,): dimensions on very different scales
    tx = (means[ty] + 1.6 * torch.randn(n_train, D, generator=g)) * scale + 3.0  # (N, D)
    vx = (means[vy] + 1.6 * torch.randn(n_val, D, generator=g)) * scale * 1.3 + 2.0  # (M, D): a shifted split
    return tx, ty, vx, vy


def _probe_variant(tx, ty, vx, vy, C, kind):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # unscaled features converge slowly: fine here
        return _probe_variant_fit(tx, ty, vx, vy, C, kind)


def _probe_variant_fit(tx, ty, vx, vy, C, kind):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tx, ty, vx, vy = tx.numpy(), ty.numpy(), vx.numpy(), vy.numpy()
    if kind == "no_scaler":
        return 100.0 * LogisticRegression(C=C, max_iter=300, random_state=0).fit(tx, ty).score(vx, vy)
    if kind == "val_scaler":
        scaler = StandardScaler().fit(vx)
    elif kind == "both_scaler":
        scaler = StandardScaler().fit(np.concatenate([tx, vx]))
    else:
        scaler = StandardScaler().fit(tx)
    a, b = scaler.transform(tx), scaler.transform(vx)
    if kind == "fit_val":
        return 100.0 * LogisticRegression(C=C, max_iter=300, random_state=0).fit(b, vy).score(b, vy)
    clf = LogisticRegression(C=1.0 if kind == "C_ignored" else C, max_iter=300, random_state=0).fit(a, ty)
    return 100.0 * (clf.score(a, ty) if kind == "score_train" else clf.score(b, vy))


@check("linear_probe")
@_own_rng
def check_linear_probe(fn: Callable) -> str:
    cases = [(0, 0.01), (1, 0.1)]
    for seed, C in cases:
        tx, ty, vx, vy = _probe_data(seed)
        expected = linear_probe(tx, ty, vx, vy, Cs=(C,))["top1"]
        got = fn(tx.clone(), ty.clone(), vx.clone(), vy.clone(), C=C)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise mistake(f"return the top-1 accuracy as one number (percent), not {type(got).__name__}") from None
        one = 100.0 / len(vy)  # one validation image
        if abs(got - expected) <= one + 1e-6:
            continue
        if abs(100 * got - expected) <= one + 1e-6:
            raise mistake("return a percentage (0-100), not a fraction")
        for kind, message in [
            ("fit_val", "the probe was fitted on the validation set: fit on the training features only, val is for "
                        "the final score"),
            ("score_train", "scored on the training features: report the accuracy on the validation set"),
            ("val_scaler", "the standardisation used validation statistics: fit the scaler on the training features "
                           "only, then apply it to both"),
            ("both_scaler", "the standardisation saw the validation features: fit the scaler on the training features "
                            "only"),
            ("no_scaler", "the features are not standardised: StandardScaler fitted on the training features, "
                          "applied to both splits"),
            ("C_ignored", "the C argument is ignored: LogisticRegression(C=C, ...)"),
        ]:
            if abs(got - _probe_variant(tx, ty, vx, vy, C, kind)) <= 1e-6:
                raise mistake(message)
        raise mistake(f"top-1 {got:.1f}% but linear_probe gives {expected:.1f}% on these features (C={C})")
    return f"matches linear_probe on {len(cases)} cases"


for _name in DINO_EXERCISES:  # pick(name, mine) falls back to these
    reference(_name)(globals()[f"core_{_name}"])
