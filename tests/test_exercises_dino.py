"""The exercise checks of notebooks 05-08: each accepts the finished version, rejects the stub, and
names the mistake of typical wrong versions (small functions below, written the way a learner
would)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitdino_core import exercises as ex
from vitdino_core.ema_training import cancel_gradients_last_layer, clip_gradients, update_teacher
from vitdino_core.exercises import ExerciseMistake, dino


def stub(*args, **kwargs):
    raise NotImplementedError("write this function")


# ----------------------------------------------------------------------------- 05


def head_no_l2(x, mlp, v, g):
    return mlp(x) @ (g * F.normalize(v, dim=1)).T


def head_v_dim0(x, mlp, v, g):
    return F.normalize(mlp(x), dim=-1) @ (g * F.normalize(v, dim=0)).T


def head_no_g(x, mlp, v, g):
    return F.normalize(mlp(x), dim=-1) @ F.normalize(v, dim=1).T


def probs_no_center(t, c, temp):
    return F.softmax(t.detach() / temp, dim=-1)


def probs_dim0(t, c, temp):
    return F.softmax((t.detach() - c) / temp, dim=0)


def probs_not_detached(t, c, temp):
    return F.softmax((t - c) / temp, dim=-1)


def probs_times_temp(t, c, temp):
    return F.softmax((t.detach() - c) * temp, dim=-1)


def center_backwards(c, t, m=0.9):
    return (1 - m) * c + m * t.mean(0, keepdim=True)


def center_wrong_axis(c, t, m=0.9):
    return m * c + (1 - m) * t.mean(1, keepdim=True)


def center_sum(c, t, m=0.9):
    return m * c + (1 - m) * t.sum(0, keepdim=True)


def _loss(s, t, c, ncrops, Ts, Tt, skip_same=True, center_student=False, detach=True):
    q = F.softmax((t - c) / Tt, dim=-1)
    q = (q.detach() if detach else q).chunk(2)
    logp = F.log_softmax(((s - c) if center_student else s) / Ts, dim=-1).chunk(ncrops)
    terms = [
        torch.sum(-q[i] * logp[v], dim=-1).mean()
        for i in range(2)
        for v in range(ncrops)
        if v != i or not skip_same
    ]
    return sum(terms) / len(terms)


def loss_same_view(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    return _loss(s, t, c, ncrops, Ts, Tt, skip_same=False)


def loss_center_on_student(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    q = F.softmax(t.detach() / Tt, dim=-1).chunk(2)
    logp = F.log_softmax((s - c) / Ts, dim=-1).chunk(ncrops)
    terms = [
        torch.sum(-q[i] * logp[v], dim=-1).mean() for i in range(2) for v in range(ncrops) if v != i
    ]
    return sum(terms) / len(terms)


def loss_swapped_temps(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    return _loss(s, t, c, ncrops, Tt, Ts)


def loss_not_sharpened(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    return _loss(s, t, c, ncrops, Ts, Ts)


def loss_batch_sum(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    B = t.shape[0] // 2
    return _loss(s, t, c, ncrops, Ts, Tt) * B


def loss_grad_into_teacher(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    return _loss(s, t, c, ncrops, Ts, Tt, detach=False)


def loss_interleaved(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    B = t.shape[0] // 2
    s2 = s.view(B, ncrops, -1).transpose(0, 1).reshape(ncrops * B, -1)
    t2 = t.view(B, 2, -1).transpose(0, 1).reshape(2 * B, -1)
    return _loss(s2, t2, c, ncrops, Ts, Tt)


# ----------------------------------------------------------------------------- 06


def cosine_no_warmup(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    T = epochs * niter
    return final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(T) / T))


def cosine_reaches_final(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    i = np.arange(T - W)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(T - W - 1, 1)))
    return np.concatenate([np.linspace(start_warmup_value, base, W), cos])


def cosine_per_epoch(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    i = np.arange(epochs - warmup_epochs)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / (epochs - warmup_epochs)))
    return np.concatenate([np.linspace(start_warmup_value, base, warmup_epochs), cos])


def cosine_warmup_on_top(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(T) / T))
    return np.concatenate([np.linspace(start_warmup_value, base, W), cos])


def cosine_warmup_short(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    warm = start_warmup_value + (base - start_warmup_value) * np.arange(W) / max(W, 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(T - W) / (T - W)))
    return np.concatenate([warm, cos])


def temp_no_warmup(a, b, W, n):
    return np.full(n, b)


def temp_off_by_one(a, b, W, n):
    return np.concatenate([np.linspace(a, b, W + 1)[:W], np.full(n - W, b)])


def temp_too_long(a, b, W, n):
    return np.concatenate([np.linspace(a, b, W), np.full(n, b)])


@torch.no_grad()
def ema_backwards(student, teacher, m):
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_t.mul_(1 - m).add_(p_s, alpha=m)


@torch.no_grad()
def ema_rebinds(student, teacher, m):
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_t = m * p_t + (1 - m) * p_s  # noqa: F841  a new tensor, the teacher keeps its old one


@torch.no_grad()
def ema_moves_student(student, teacher, m):
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_s.mul_(m).add_(p_t, alpha=1 - m)


def _step(
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
    teacher_no_grad=True,
    clip=True,
    freeze=True,
    ema_after=True,
    zero_grad=True,
    teacher_all_crops=False,
    by_epoch=False,
    per_resolution=False,
    fixed_clip=None,
    fixed_freeze=None,
):
    at = epoch if by_epoch else it
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(lr_schedule[at])
        if i == 0:
            group["weight_decay"] = float(wd_schedule[at])
    if not ema_after:
        update_teacher(student, teacher, float(momentum_schedule[at]))
    with torch.set_grad_enabled(not teacher_no_grad):
        teacher_out = teacher(crops if teacher_all_crops else crops[0])
    if (
        per_resolution
    ):  # the student called once per crop size, the outputs concatenated: the same result
        student_out = torch.cat([student(c) for c in crops])
    else:
        student_out = student(crops)
    loss = loss_fn(student_out, teacher_out, epoch)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if clip:
        clip_gradients(student, fixed_clip or clip_grad)
    if freeze:
        cancel_gradients_last_layer(epoch, student, fixed_freeze or freeze_last_layer)
    optimizer.step()
    if ema_after:
        update_teacher(student, teacher, float(momentum_schedule[at]))
    return loss.detach()


def step_teacher_with_grad(**kw):
    return _step(**kw, teacher_no_grad=False)


def step_no_clip(**kw):
    return _step(**kw, clip=False)


def step_no_freeze(**kw):
    return _step(**kw, freeze=False)


def step_ema_first(**kw):
    return _step(**kw, ema_after=False)


def step_no_zero_grad(**kw):
    return _step(**kw, zero_grad=False)


def step_teacher_all_crops(**kw):
    return _step(**kw, teacher_all_crops=True)


# ----------------------------------------------------------------------------- 07


def _attn(q, k):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)


def cls_softmax_dim2(q, k, h, w):
    A = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-2)
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)


def cls_no_scale(q, k, h, w):
    A = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)


def cls_column(q, k, h, w):
    return _attn(q, k)[:, :, 1:, 0].reshape(q.shape[0], q.shape[1], h, w)


def cls_column_major(q, k, h, w):
    return _attn(q, k)[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], w, h).transpose(-1, -2)


def mask_smallest(a, keep=0.6):
    val, idx = a.flatten().sort()
    cum = (val / val.sum()).cumsum(0)
    return (cum <= 1 - keep)[idx.argsort()].reshape(a.shape)


def mask_by_count(a, keep=0.6):
    flat = a.flatten()
    m = torch.zeros_like(flat, dtype=torch.bool)
    m[flat.topk(round(keep * flat.numel())).indices] = True
    return m.reshape(a.shape)


def mask_not_normalised(a, keep=0.6):
    val, idx = a.flatten().sort()
    return (val.cumsum(0) > 1 - keep)[idx.argsort()].reshape(a.shape)


def mask_sorted_order(a, keep=0.6):
    val, _ = a.flatten().sort()
    return ((val / val.sum()).cumsum(0) > 1 - keep).reshape(a.shape)


# ----------------------------------------------------------------------------- 08


def knn_majority(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    _, idx = (test_x @ train_x.T).topk(k, dim=1)
    votes = torch.zeros(test_x.shape[0], num_classes).scatter_add_(
        1, train_y[idx], torch.ones(idx.shape)
    )
    return votes.argmax(1)


def knn_raw_weights(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    sim, idx = (test_x @ train_x.T).topk(k, dim=1)
    return torch.zeros(test_x.shape[0], num_classes).scatter_add_(1, train_y[idx], sim).argmax(1)


def knn_smallest(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    sim, idx = (test_x @ train_x.T).topk(k, dim=1, largest=False)
    return (
        torch.zeros(test_x.shape[0], num_classes)
        .scatter_add_(1, train_y[idx], (sim / T).exp())
        .argmax(1)
    )


def knn_k_fixed(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    return dino.reference_knn(train_x, train_y, test_x, 20, T, num_classes)


def knn_returns_votes(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    sim, idx = (test_x @ train_x.T).topk(k, dim=1)
    return torch.zeros(test_x.shape[0], num_classes).scatter_add_(1, train_y[idx], (sim / T).exp())


def _probe(train_x, train_y, val_x, val_y, C, fit_on="train", scaler_on="train", percent=True):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tx, ty, vx, vy = (a.numpy() for a in (train_x, train_y, val_x, val_y))
    scaler = StandardScaler().fit(tx if scaler_on == "train" else vx)
    tx, vx = scaler.transform(tx), scaler.transform(vx)
    clf = LogisticRegression(C=C, max_iter=300, random_state=0)
    clf.fit(*((tx, ty) if fit_on == "train" else (vx, vy)))
    return clf.score(vx, vy) * (100.0 if percent else 1.0)


def probe_fit_on_val(train_x, train_y, val_x, val_y, C=0.1):
    return _probe(train_x, train_y, val_x, val_y, C, fit_on="val")


def probe_scaler_on_val(train_x, train_y, val_x, val_y, C=0.1):
    return _probe(train_x, train_y, val_x, val_y, C, scaler_on="val")


def probe_fraction(train_x, train_y, val_x, val_y, C=0.1):
    return _probe(train_x, train_y, val_x, val_y, C, percent=False)


def probe_no_scaler(train_x, train_y, val_x, val_y, C=0.1):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # unscaled features converge slowly
        clf = LogisticRegression(C=C, max_iter=300, random_state=0).fit(
            train_x.numpy(), train_y.numpy()
        )
    return 100.0 * clf.score(val_x.numpy(), val_y.numpy())


# ----------------------------------------------------------------------------- more wrong answers


def head_transposed(x, mlp, v, g):
    return ex.reference_dino_head(x, mlp, v, g).T


def head_batch_norm(x, mlp, v, g):
    return F.normalize(mlp(x), dim=0) @ (g * F.normalize(v, dim=1)).T


def probs_center_added(t, c, temp):
    return F.softmax((t.detach() + c) / temp, dim=-1)


def center_forgotten(c, t, m=0.9):
    return (1 - m) * t.mean(0, keepdim=True)


def center_in_place_probs(c, t, m=0.9):
    return m * c + (1 - m) * F.softmax(t, dim=-1).mean(0, keepdim=True)


def loss_kl(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    q = F.softmax((t - c) / Tt, dim=-1).detach().chunk(2)
    logp = F.log_softmax(s / Ts, dim=-1).chunk(ncrops)
    terms = [
        F.kl_div(logp[v], q[i], reduction="batchmean")
        for i in range(2)
        for v in range(ncrops)
        if v != i
    ]
    return sum(terms) / len(terms)


def cosine_backwards(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    cos = base + 0.5 * (final - base) * (
        1 + np.cos(np.pi * np.arange(T - W) / (T - W))
    )  # base and final swapped
    return np.concatenate([np.linspace(start_warmup_value, base, W), cos])


def temp_backwards(a, b, W, n):
    return np.concatenate([np.linspace(b, a, W), np.full(n - W, b)])


@torch.no_grad()
def ema_fixed_momentum(student, teacher, m):
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_t.mul_(0.996).add_(p_s, alpha=0.004)


@torch.no_grad()
def ema_copies_student(student, teacher, m):
    teacher.load_state_dict(student.state_dict())


def step_by_epoch(**kw):
    return _step(**kw, by_epoch=True)


def step_clip_fixed(**kw):
    return _step(**kw, fixed_clip=3.0)


def step_freeze_fixed(**kw):
    return _step(**kw, fixed_freeze=1)


def cls_softmax_without_cls(q, k, h, w):
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))[:, :, 0, 1:]
    return s.softmax(-1).reshape(q.shape[0], q.shape[1], h, w)


def cls_scaled_after(q, k, h, w):
    A = (q @ k.transpose(-2, -1)).softmax(dim=-1) / math.sqrt(q.shape[-1])
    return A[:, :, 0, 1:].reshape(q.shape[0], q.shape[1], h, w)


def mask_float(a, keep=0.6):
    return ex.reference_threshold_mask(a, keep).float()


def knn_T_ignored(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    return dino.reference_knn(train_x, train_y, test_x, k, 0.07, num_classes)


def probe_C_ignored(train_x, train_y, val_x, val_y, C=0.1):
    return _probe(train_x, train_y, val_x, val_y, 1.0)


# ----------------------------------------------------------------------------- equivalent rewrites


def head_explicit(x, mlp, v, g):
    h = mlp(x)
    z = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w = v / v.norm(dim=1, keepdim=True) * g
    return F.linear(z, w)


def head_einsum(x, mlp, v, g):
    return torch.einsum("bc,kc->bk", F.normalize(mlp(x), dim=1), F.normalize(v, dim=1)) * g.T


@torch.no_grad()
def probs_exp(t, c, temp):
    e = ((t - c) / temp).exp()
    return e / e.sum(-1, keepdim=True)


def probs_log_softmax(t, c, temp):
    return F.log_softmax((t - c).detach() / temp, dim=-1).exp()


def center_lerp(c, t, m=0.9):
    return torch.lerp(c, t.mean(0, keepdim=True), 1 - m)


def center_sum_div(c, t, m=0.9):
    return c * m + t.sum(0, keepdim=True) / t.shape[0] * (1 - m)


def loss_vectorised(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    B = t.shape[0] // 2
    q = F.softmax((t.detach() - c) / Tt, dim=-1).view(2, B, -1)  # (2, B, K)
    logp = F.log_softmax(s / Ts, dim=-1).view(ncrops, B, -1)  # (V, B, K)
    ce = -torch.einsum("ibk,vbk->ivb", q, logp).mean(-1)  # (2, V)
    mask = ~torch.eye(2, ncrops, dtype=torch.bool)
    return ce[mask].mean()


def loss_chunks(s, t, c, ncrops, Ts=0.1, Tt=0.04):
    return _loss(s, t, c, ncrops, Ts, Tt)


def cosine_python(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    warm = (
        [start_warmup_value + (base - start_warmup_value) * i / (W - 1) for i in range(W)]
        if W > 1
        else [start_warmup_value] * W
    )
    return warm + [
        final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / (T - W))) for i in range(T - W)
    ]


def cosine_torch(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    W, T = warmup_epochs * niter, epochs * niter
    i = torch.arange(T - W, dtype=torch.float64)
    cos = final + 0.5 * (base - final) * (1 + torch.cos(math.pi * i / (T - W)))
    return torch.cat([torch.linspace(start_warmup_value, base, W, dtype=torch.float64), cos])


def temp_python(a, b, W, n):
    return [a + (b - a) * e / (W - 1) if e < W and W > 1 else (a if e < W else b) for e in range(n)]


def temp_torch(a, b, W, n):
    return torch.cat(
        [torch.linspace(a, b, W, dtype=torch.float64), torch.full((n - W,), b, dtype=torch.float64)]
    )


@torch.no_grad()
def ema_lerp(student, teacher, m):
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_t.lerp_(p_s.detach(), 1 - m)


@torch.no_grad()
def ema_foreach(student, teacher, m):
    ts, ss = list(teacher.parameters()), [p.detach() for p in student.parameters()]
    torch._foreach_mul_(ts, m)
    torch._foreach_add_(ts, ss, alpha=1 - m)


def step_per_resolution(**kw):
    return _step(**kw, per_resolution=True)


def step_teacher_grad_on(**kw):  # the teacher takes no gradient anyway: the same result, accepted
    return _step(**kw, teacher_no_grad=False)


def cls_row_only(q, k, h, w):
    s = q[:, :, :1] @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, 1, N+1)
    return s.softmax(-1)[:, :, 0, 1:].unflatten(-1, (h, w))


def cls_einsum(q, k, h, w):
    A = torch.einsum("bhnd,bhmd->bhnm", q, k).div(math.sqrt(q.shape[-1])).softmax(-1)
    return A[:, :, 0, 1:].reshape(*q.shape[:2], h, w)


def mask_descending(a, keep=0.6):
    val, idx = a.flatten().double().sort(descending=True)
    p = val / val.sum()
    before = p.cumsum(0) - p  # the mass of the patches before each one
    flags = before < keep - 1e-12
    out = torch.zeros_like(flags)
    out[idx] = flags
    return out.reshape(a.shape)


def mask_loop(a, keep=0.6):
    flat = a.flatten().tolist()
    total = sum(flat)
    order = sorted(range(len(flat)), key=lambda i: flat[i])
    mask, cum = [False] * len(flat), 0.0
    for i in order:
        cum += flat[i] / total
        mask[i] = cum > 1 - keep
    return torch.tensor(mask).reshape(a.shape)


def knn_loop(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    preds = []
    for x in test_x:
        sim = train_x @ x  # (N,)
        s, idx = sim.topk(k)
        votes = torch.zeros(num_classes).index_add_(0, train_y[idx], (s / T).exp())
        preds.append(int(votes.argmax()))
    return torch.tensor(preds)


def knn_one_hot(train_x, train_y, test_x, k=20, T=0.07, num_classes=10):
    s, idx = (test_x @ train_x.T).topk(k, dim=1)  # (M, k)
    one_hot = F.one_hot(train_y[idx], num_classes).float()  # (M, k, C)
    return ((s / T).exp().unsqueeze(-1) * one_hot).sum(1).argmax(1).numpy()


def probe_pipeline(train_x, train_y, val_x, val_y, C=0.1):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    return 100 * clf.fit(train_x.numpy(), train_y.numpy()).score(val_x.numpy(), val_y.numpy())


def probe_torch_scaling(train_x, train_y, val_x, val_y, C=0.1):
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
    a, b = ((train_x - mean) / std).numpy(), ((val_x - mean) / std).numpy()
    clf = LogisticRegression(C=C, max_iter=500).fit(a, train_y.numpy())
    return float((torch.from_numpy(clf.predict(b)) == val_y).float().mean() * 100)


# ----------------------------------------------------------------------------- the tests

PASSES = {
    "dino_head": [head_explicit, head_einsum],
    "teacher_probs": [probs_exp, probs_log_softmax],
    "center_update": [center_lerp, center_sum_div],
    "dino_loss": [loss_vectorised, loss_chunks],
    "cosine_schedule": [cosine_python, cosine_torch],
    "teacher_temp_schedule": [temp_python, temp_torch],
    "ema_update": [ema_lerp, ema_foreach],
    "dino_step": [step_per_resolution, step_teacher_grad_on],
    "cls_attention": [cls_row_only, cls_einsum],
    "threshold_mask": [mask_descending, mask_loop],
    "knn": [knn_loop, knn_one_hot],
    "linear_probe": [probe_pipeline, probe_torch_scaling],
}

WRONG = {
    "dino_head": [
        (head_no_l2, "not L2-normalised"),
        (head_v_dim0, "normalised over the wrong axis"),
        (head_no_g, "lengths g are ignored"),
        (head_transposed, "scores are transposed"),
        (head_batch_norm, "normalised over the batch"),
    ],
    "teacher_probs": [
        (probs_no_center, "centre is not subtracted"),
        (probs_dim0, "softmax over the wrong axis"),
        (probs_not_detached, "gradients would flow into the teacher"),
        (probs_times_temp, "multiplied by the temperature"),
        (probs_center_added, "added, not subtracted"),
    ],
    "center_update": [
        (center_backwards, "momentum used backwards"),
        (center_wrong_axis, "mean over the wrong axis"),
        (center_sum, "summed over the batch"),
        (center_forgotten, "old centre is forgotten"),
        (center_in_place_probs, "teacher's probabilities"),
    ],
    "dino_loss": [
        (loss_same_view, "same view is paired with itself"),
        (loss_center_on_student, "centre is applied to the student"),
        (loss_swapped_temps, "temperatures are swapped"),
        (loss_not_sharpened, "teacher is not sharpened"),
        (loss_batch_sum, "summed over the batch"),
        (loss_grad_into_teacher, "gradients flow into the teacher"),
        (loss_interleaved, "views are split wrongly"),
        (loss_kl, "this is KL"),
    ],
    "cosine_schedule": [
        (cosine_no_warmup, "no warm-up"),
        (cosine_reaches_final, "cosine is off by one step"),
        (cosine_per_epoch, "one value per epoch"),
        (cosine_warmup_on_top, "added on top"),
        (cosine_warmup_short, "stops one step short"),
        (cosine_backwards, "swapped"),
    ],
    "teacher_temp_schedule": [
        (temp_no_warmup, "no warm-up"),
        (temp_off_by_one, "one step short"),
        (temp_too_long, "added on top"),
        (temp_backwards, "runs backwards"),
    ],
    "ema_update": [
        (ema_backwards, "momentum used backwards"),
        (ema_rebinds, "teacher did not move"),
        (ema_moves_student, "student was changed"),
        (ema_fixed_momentum, "momentum is ignored"),
        (ema_copies_student, "overwritten with the student"),
    ],
    "dino_step": [
        (step_no_clip, "not clipped"),
        (step_no_freeze, "last layer is not frozen"),
        (step_ema_first, "EMA update comes before"),
        (step_no_zero_grad, "gradients pile up"),
        (step_teacher_all_crops, "2 global crops only"),
        (step_by_epoch, "read at the epoch"),
        (step_clip_fixed, "clipped at a fixed norm"),
        (step_freeze_fixed, "frozen for a fixed number"),
    ],
    "cls_attention": [
        (cls_softmax_dim2, "softmax over the wrong axis"),
        (cls_no_scale, "not scaled"),
        (cls_column, "took column 0"),
        (cls_column_major, "wrong order"),
        (cls_softmax_without_cls, "sums to 1 over the patches"),
        (cls_scaled_after, "scaled after the softmax"),
    ],
    "threshold_mask": [
        (mask_smallest, "least attended"),
        (mask_by_count, "of the patches"),
        (mask_not_normalised, "not normalised"),
        (mask_sorted_order, "still in sorted order"),
        (mask_float, "return booleans"),
    ],
    "knn": [
        (knn_majority, "every neighbour votes 1"),
        (knn_raw_weights, "raw similarity"),
        (knn_smallest, "least similar"),
        (knn_k_fixed, "k argument is ignored"),
        (knn_returns_votes, "one predicted class per test image"),
        (knn_T_ignored, "temperature argument T"),
    ],
    "linear_probe": [
        (probe_fit_on_val, "fitted on the validation set"),
        (probe_scaler_on_val, "validation statistics"),
        (probe_fraction, "not a fraction"),
        (probe_no_scaler, "not standardised"),
        (probe_C_ignored, "C argument is ignored"),
    ],
}

assert set(PASSES) == set(WRONG) == set(dino.DINO_EXERCISES)


def test_every_exercise_has_a_check_a_reference_rewrites_and_wrong_answers():
    assert len(dino.DINO_EXERCISES) == 12
    for name in dino.DINO_EXERCISES:
        assert (
            getattr(ex, f"check_{name}").exercise == name
        )  # re-exported from vitdino_core.exercises
        assert ex.REFERENCES[name] is getattr(ex, f"reference_{name}")
        assert len(PASSES[name]) >= 2 and len(WRONG[name]) >= 4, name


@pytest.mark.parametrize("name", dino.DINO_EXERCISES)
def test_check_accepts_the_reference(name, capsys):
    getattr(ex, f"check_{name}")(ex.REFERENCES[name])
    assert capsys.readouterr().out.startswith(f"ok: {name}")
    assert ex.passed(name)
    assert ex.pick(name, stub) is stub  # the learner's version is used from now on


@pytest.mark.parametrize(
    "name, i",
    [(n, i) for n, fns in PASSES.items() for i in range(len(fns))],
    ids=[f"{n}-{f.__name__}" for n, fns in PASSES.items() for f in fns],
)
def test_check_accepts_an_equivalent_rewrite(name, i, capsys):
    getattr(ex, f"check_{name}")(PASSES[name][i])
    assert ex.passed(name)


@pytest.mark.parametrize("name", dino.DINO_EXERCISES)
def test_check_rejects_the_stub_and_pick_falls_back(name, capsys):
    with pytest.raises(ExerciseMistake, match=f"^{name}: not written yet"):
        getattr(ex, f"check_{name}")(stub)
    assert ex.STATUS[name] == "todo"
    assert ex.pick(name, stub) is ex.REFERENCES[name]
    assert "using vitdino_core's version" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,wrong,message",
    [(n, w, m) for n, ws in WRONG.items() for w, m in ws],
    ids=[f"{n}-{w.__name__}" for n, ws in WRONG.items() for w, _ in ws],
)
def test_check_names_the_mistake(name, wrong, message):
    with pytest.raises(ExerciseMistake) as err:
        getattr(ex, f"check_{name}")(wrong)
    text = str(err.value)
    assert text.startswith(f"{name}: ") and message in text, text
    assert "\n" not in text  # one line
    assert ex.STATUS[name] == "failed"


def test_the_step_check_follows_the_trainer(shared_data, tmp_path, monkeypatch):
    """reference_dino_step (the reference the step check compares with) is DINOTrainer.train_step,
    weight for weight."""
    monkeypatch.setenv("VITDINO_DATA", str(shared_data))
    from vitdino_core.training.config import load_config
    from vitdino_core.training.trainer import DINOTrainer

    cfg = load_config(
        "workshop_tiny",
        [
            f"output_dir={tmp_path}",
            "max_images=16",
            "batch_size_per_gpu=4",
            "local_crops_number=2",
            "out_dim=64",
            "num_workers=0",
            "clip_grad=0.05",
            "drop_path_rate=0.0",
            "global_crops_size=24",
            "local_crops_size=12",
        ],
    )
    mine, core = DINOTrainer(cfg, quiet=True), DINOTrainer(cfg, quiet=True)
    g = torch.Generator().manual_seed(0)
    for it in range(3):
        crops = [torch.randn(8, 3, 24, 24, generator=g), torch.randn(8, 3, 12, 12, generator=g)]
        loss_mine = dino.reference_dino_step(
            mine.student,
            mine.teacher,
            mine.loss_fn,
            mine.optimizer,
            crops,
            it,
            0,
            mine.lr_schedule,
            mine.wd_schedule,
            mine.momentum_schedule,
            clip_grad=cfg.clip_grad,
            freeze_last_layer=cfg.freeze_last_layer,
        )
        assert torch.equal(loss_mine, core.train_step(*crops))
    for a, b in zip(
        list(mine.student.parameters()) + list(mine.teacher.parameters()),
        list(core.student.parameters()) + list(core.teacher.parameters()),
    ):
        assert torch.equal(a, b)


def test_checks_leave_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name in ("dino_head", "ema_update", "cls_attention"):
        getattr(ex, f"check_{name}")(ex.REFERENCES[name])
    assert torch.equal(torch.rand(3), expected)
