"""DINO's projection head and self-distillation loss (Caron et al. 2021).

The teacher's output for a global view is centred and sharpened into a target distribution,

    P_t(x) = softmax((g_t(x) - c) / tau_t),        P_s(x') = softmax(g_s(x') / tau_s)

and the student is trained to match it from every *other* view:

    L = mean over pairs (x global, x' any view, x' != x) of  H(P_t(x), P_s(x')) = -sum_k P_t log P_s

Centering (c, an EMA of the teacher's mean output) stops one dimension from dominating;
sharpening (tau_t < tau_s) stops the output from becoming uniform. Either alone collapses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations


class DINOHead(nn.Module):
    """MLP to a bottleneck, L2-normalise, then a weight-normalised linear layer to `out_dim` logits."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True, nlayers: int = 3,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # weight = g * v / ||v|| per output unit; g ("original0") is fixed at 1 when norm_last_layer
        self.last_layer = parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False
        self._register_load_state_dict_pre_hook(_rename_legacy_weight_norm)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (B, bottleneck)
        x = F.normalize(x, dim=-1, p=2)  # (B, bottleneck), unit length
        return weight_norm_linear(x, self.last_layer)  # (B, out_dim): self.last_layer(x), W never written out


def weight_norm_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` for a bias-free linear layer under weight_norm, W = g v / ||v|| row by row, computed as

        x W^T = (x v^T) * (g / ||v||)^T

    with the gradients written by hand (_WeightNormLinear): the same maths without ever materialising W or its
    gradient (out_dim x bottleneck: 65536 x 256, 67 MB each in fp32). Calling the layer writes W on every
    forward and dL/dW on every backward, and on a CPU each fresh 67 MB buffer also costs ~16k page faults.
    Under CPU autocast the same path multiplies in the autocast dtype (x and v cast to it, as the layer would cast
    W) and scales in fp32, which returns fp32 logits; under GPU autocast the layer is called as it is."""
    wn = layer.parametrizations.weight
    if torch.is_autocast_enabled(x.device.type):
        if x.device.type != "cpu":
            return layer(x)  # (B, K)
        with torch.autocast("cpu", enabled=False):  # by hand: matmuls in the autocast dtype, scale and output in fp32
            return _WeightNormLinear.apply(x, wn.original0, wn.original1, torch.get_autocast_dtype("cpu"))  # (B, K)
    return _WeightNormLinear.apply(x, wn.original0, wn.original1)  # (B, K)


class _WeightNormLinear(torch.autograd.Function):
    """y = (x v^T) * s^T with s_k = g_k / ||v_k||; only v's own gradient is ever out_dim x bottleneck."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """dtype: the matmuls' dtype under autocast (x and v cast to it; x v^T is then rounded to it), else None."""
        inv_norm = v.norm(dim=1, keepdim=True).reciprocal()  # (K, 1): 1 / ||v_k||
        scale = g * inv_norm  # (K, 1): s_k, the length of W's row k
        vc = v if dtype is None else v.to(dtype)  # (K, D)
        xv = x.to(vc.dtype) @ vc.t()  # (B, K)
        if not any(ctx.needs_input_grad):  # no graph (the teacher): scale in place when it keeps the dtype
            return xv.mul_(scale.t()) if dtype is None else xv * scale.t()  # (B, K), fp32
        ctx.save_for_backward(x, v, vc, scale, inv_norm, xv)
        return xv * scale.t()  # (B, K), fp32

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, v, vc, scale, inv_norm, xv = ctx.saved_tensors
        dxv = dy * scale.t()  # (B, K): dL/d(x v^T)
        ds = (dy * xv).sum(0).unsqueeze(1)  # (K, 1): dL/ds_k
        dx = (dxv.to(vc.dtype) @ vc).to(x.dtype) if ctx.needs_input_grad[0] else None  # (B, D)
        dg = ds * inv_norm if ctx.needs_input_grad[1] else None  # (K, 1): ds_k/dg_k = 1 / ||v_k||
        dv = None
        if ctx.needs_input_grad[2]:
            dv = dxv.t() @ x.to(dxv.dtype)  # (K, D), fp32: through x . v_k
            dv.addcmul_(v, ds * scale * inv_norm.square(), value=-1)  # (K, D): through ||v_k||, ds_k/dv_k = -s_k v_k / ||v_k||^2
        return dx, dg, dv, None


def _rename_legacy_weight_norm(state_dict, prefix, *args, **kwargs) -> None:
    """Official checkpoints store `last_layer.weight_g/weight_v` (old weight_norm); map them to parametrizations."""
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        key = f"{prefix}last_layer.{old}"
        if key in state_dict:
            state_dict[f"{prefix}last_layer.parametrizations.weight.{new}"] = state_dict.pop(key)


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int, nepochs: int) -> np.ndarray:
    """Linear warm-up of the teacher temperature, then constant: one value per epoch."""
    warm = min(warmup_teacher_temp_epochs, nepochs)
    return np.concatenate((np.linspace(warmup_teacher_temp, teacher_temp, warm), np.ones(nepochs - warm) * teacher_temp))


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"DINO needs at least the 2 global crops, got ncrops={ncrops}")
        if teacher_temp <= 0 or warmup_teacher_temp <= 0 or student_temp <= 0:
            raise ValueError("temperatures must be > 0 (DINO uses teacher 0.04-0.07, student 0.1)")
        self.out_dim = out_dim
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K)
        self.teacher_temp_schedule = teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temp_schedule[min(int(epoch), len(self.teacher_temp_schedule) - 1)])

    def teacher_probs(self, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Centred and sharpened teacher distribution, (2B, K), no gradient."""
        return F.softmax((teacher_output.detach().float() - self.center) / self.teacher_temp(epoch), dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int,
                teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
        """student_output: (ncrops*B, K), crops stacked view by view; teacher_output: (2*B, K), the 2 global views.
        teacher_probs: `self.teacher_probs(teacher_output, epoch)` when the caller has already computed it."""
        B = teacher_output.shape[0] // 2
        if student_output.shape[0] != self.ncrops * B:
            raise ValueError(f"student_output has {student_output.shape[0]} rows, expected ncrops*B = {self.ncrops}*{B}")
        log_p = F.log_softmax(student_output.float() / self.student_temp, dim=-1).view(self.ncrops, B, -1)  # (V, B, K)
        if teacher_probs is None:
            teacher_probs = self.teacher_probs(teacher_output, epoch)  # (2B, K)
        q = teacher_probs.view(2, B, -1)  # (2, B, K)
        # every (teacher view iq, student view v) pair with v != iq; sum_v log_p[v] is shared by both teacher views
        all_views = (q.sum(0) * log_p.sum(0)).sum(-1)  # (B,): sum over iq, v of q[iq].log_p[v]
        same_view = (q * log_p[:2]).sum(-1).sum(0)  # (B,): the iq == v pairs, to remove
        n_terms = 2 * self.ncrops - 2
        loss = -(all_views - same_view).mean() / n_terms
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean(teacher_output), the mean taken over every process's batch."""
        batch_center = teacher_output.float().sum(dim=0, keepdim=True)  # (1, K)
        count = teacher_output.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1 - self.center_momentum)
