"""DINO's projection head and self-distillation loss (Caron et al. 2021).

The teacher's output for a global view is centred and sharpened into a target distribution,

    P_t(x) = softmax((g_t(x) - c) / tau_t),        P_s(x') = softmax(g_s(x') / tau_s)

and the student is trained to match it from every *other* view:

    L = mean over pairs (x global, x' any view, x' != x) of  H(P_t(x), P_s(x')) = -sum_k P_t log P_s

Centering (c, an EMA of the teacher's mean output) stops one dimension from dominating;
sharpening (tau_t < tau_s) stops the output from becoming uniform. Either alone collapses.

The projection head lives here, next to the loss, because the loss is defined on its output
(notebook 05 builds both); so does the teacher temperature's schedule, which is the loss's own. The
training schedules and parameter groups are in `ema_training`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations


class DINOHead(nn.Module):
    """MLP to a bottleneck, L2-normalise, then a weight-normalised linear layer
    to `out_dim` logits."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ):
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
        self.last_layer = parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
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
        return self.last_layer(x)  # (B, out_dim): W = g v / ||v|| row by row


def _rename_legacy_weight_norm(state_dict, prefix, *args, **kwargs) -> None:
    """Official checkpoints store `last_layer.weight_g/weight_v` (old weight_norm); map them to
    parametrizations."""
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        key = f"{prefix}last_layer.{old}"
        if key in state_dict:
            state_dict[f"{prefix}last_layer.parametrizations.weight.{new}"] = state_dict.pop(key)


def teacher_temp_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int, nepochs: int
) -> np.ndarray:
    """Linear warm-up of the teacher temperature, then constant: one value per epoch."""
    warm = min(warmup_teacher_temp_epochs, nepochs)
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warm),
            np.ones(nepochs - warm) * teacher_temp,
        )
    )


class DINOLoss(nn.Module):
    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
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
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(
            self.teacher_temp_schedule[min(int(epoch), len(self.teacher_temp_schedule) - 1)]
        )

    def teacher_probs(self, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Centred and sharpened teacher distribution, (2B, K), no gradient."""
        return F.softmax(
            (teacher_output.detach().float() - self.center) / self.teacher_temp(epoch), dim=-1
        )

    def forward(
        self,
        student_output: torch.Tensor,
        teacher_output: torch.Tensor,
        epoch: int,
        teacher_probs: torch.Tensor | None = None,
        update_center: bool = True,
    ) -> torch.Tensor:
        """student_output: (ncrops*B, K), crops stacked view by view; teacher_output: (2*B, K), the
        2 global views. teacher_probs: `self.teacher_probs(teacher_output, epoch)` when the
        caller has already computed it (or DINOv2's Sinkhorn-Knopp probabilities, which use no
        centre: then update_center=False)."""
        B = teacher_output.shape[0] // 2
        if student_output.shape[0] != self.ncrops * B:
            raise ValueError(
                f"student_output has {student_output.shape[0]} rows, expected ncrops*B ="
                f" {self.ncrops}*{B}"
            )
        log_p = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(
            self.ncrops
        )  # V x (B, K)
        if teacher_probs is None:
            teacher_probs = self.teacher_probs(teacher_output, epoch)  # (2B, K)
        total_loss, n_loss_terms = 0.0, 0
        for iq, q in enumerate(
            teacher_probs.chunk(2)
        ):  # the teacher's two global views, (B, K) each
            for v, log_p_v in enumerate(log_p):  # every student view ...
                if v == iq:  # ... except the same view
                    continue
                total_loss = (
                    total_loss + torch.sum(-q * log_p_v, dim=-1).mean()
                )  # cross-entropy H(P_t, P_s)
                n_loss_terms += 1
        if update_center:
            self.update_center(teacher_output)
        return total_loss / n_loss_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean(teacher_output), the mean taken over every process's batch."""
        batch_center = teacher_output.float().sum(dim=0, keepdim=True)  # (1, K)
        count = teacher_output.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(
            batch_center / count, alpha=1 - self.center_momentum
        )
