"""The pieces around the DINO loss: the EMA teacher and the schedules that drive training.

    teacher <- m * teacher + (1 - m) * student,    m: 0.996 -> 1 on a cosine

The teacher gets no gradient; it is a running average of past students, a better network than
the student at every moment (the paper's "model ensembling"). Learning rate, weight decay,
momentum and teacher temperature all follow schedules, one value per iteration.

This module holds what notebook 06 builds around the loss: the teacher (`make_teacher`,
`update_teacher`), the schedules (`cosine_scheduler`; the teacher temperature's is
`dino_loss.teacher_temp_schedule`), the optimizer's parameter groups and DINO's gradient clipping.
The multi-crop wrapper that runs a backbone and head over all crops is in `multicrop`, with the
crops it consumes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """One value per iteration: linear warm-up from `start_warmup_value`, then cosine from base to
    final."""
    warmup_iters = warmup_epochs * niter_per_ep
    total = epochs * niter_per_ep
    if warmup_iters > total:
        raise ValueError(
            f"warm-up ({warmup_epochs} epochs) is longer than training ({epochs} epochs)"
        )
    warmup = (
        np.linspace(start_warmup_value, base_value, warmup_iters)
        if warmup_iters > 0
        else np.array([])
    )
    iters = np.arange(total - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / max(len(iters), 1))
    )
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == total
    return schedule


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the student that shares no storage, never takes a gradient and has no
    stochastic depth (as in DINO, where the teacher is built with drop_path_rate=0)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    return teacher


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter (all in one
    call each)."""
    s_params = [p.detach() for p in student.parameters()]
    t_params = list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError("student and teacher have different parameter lists")
    torch._foreach_mul_(t_params, momentum)  # m * teacher
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)  # + (1 - m) * student


def get_params_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups: weights with weight decay, biases and norm parameters (1-D) without."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(
            param
        )
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """DINO's clipping: each parameter's gradient norm is clipped to `clip` on its own.

    Returns the per-parameter norms before clipping (a tensor, so no host-device sync).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))  # (P,)
    coefs = (clip / (norms + 1e-6)).clamp(max=1.0)  # (P,), 1 where the norm is already small
    torch._foreach_mul_(grads, list(coefs.unbind(0)))  # g <- g * min(1, clip / ||g||)
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Keep the head's last layer fixed during the first epochs (DINO: 1); it
    stabilises the start."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
