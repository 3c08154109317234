"""What DINOv2 adds to DINO's losses (Oquab et al. 2023): iBOT's masked patches, Sinkhorn-Knopp,
KoLeo.

- Masked image modelling (iBOT, Zhou et al. 2022). A share of the student's global-crop patches is
  replaced by a mask token; at those positions the student's patch outputs must predict the
  teacher's (unmasked) patch outputs, with the same cross-entropy as DINO's CLS loss:

      L_iBOT = mean over images of  mean over masked patches i of  H(P_t(x)_i, P_s(x_masked)_i)

  `MaskingGenerator` draws the block-wise masks, `collate_masks` decides how much of each image is
  masked.
- Sinkhorn-Knopp centering (SwAV, Caron et al. 2020) of the teacher, in place of the running-mean
centre:
  the teacher's scores of a batch are turned into assignments that use every prototype equally.
- The KoLeo regulariser (Sablayrolles et al. 2019) spreads the student's CLS features over the
sphere.

DINOv2's CLS-token loss is DINO's: the same cross-entropy summed over (teacher global view, other
student view) pairs and divided by their number, so `dino_loss.DINOLoss` serves, given the teacher's
probabilities (`DINOLoss.forward(..., teacher_probs=sinkhorn_knopp_teacher(...),
update_center=False)`). `MaskedMultiCropWrapper` is the student (and teacher) of a training step
with these additions: backbone and head(s), returning what the losses need. Names follow
facebookresearch/dinov2 (`dinov2/loss/`, `dinov2/data/masking.py`, `dinov2/data/collate.py`) so that
its code reads alongside.
"""

from __future__ import annotations

import math
import random

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


# ----------------------------------------------------------------------------- masks (iBOT)


class MaskingGenerator:
    """Block-wise masks over a (height, width) grid of patches, as BEiT and DINOv2 draw them.

    Masking whole rectangles (not scattered patches) makes the task hard: a masked patch's
    neighbours are often masked too, so the student cannot copy them. Each call draws rectangles of
    random area and aspect until `num_masking_patches` patches are masked (or no rectangle fits).
    The random draws come from Python's `random` module in the official order, so a seeded `random`
    gives the official masks. DINOv2 builds it as `MaskingGenerator(input_size=(h, w),
    max_num_patches=0.5 * h * w)`.
    """

    def __init__(
        self,
        input_size,
        num_masking_patches=None,
        min_num_patches=4,
        max_num_patches=None,
        min_aspect=0.3,
        max_aspect=None,
    ):
        if not isinstance(input_size, tuple):
            input_size = (input_size,) * 2
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches  # smallest rectangle (area, in patches)
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (
            math.log(min_aspect),
            math.log(max_aspect),
        )  # aspect drawn log-uniformly

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator({self.height}, {self.width} -> [{self.min_num_patches} ~"
            f" {self.max_num_patches}], max = {self.num_masking_patches},"
            f" {self.log_aspect_ratio[0]:.3f} ~ {self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _mask(self, mask: torch.Tensor, max_mask_patches: float) -> int:
        """Try (at most 10 times) to mask one more rectangle; return how many new
        patches it masked."""
        delta = 0
        for _ in range(10):
            target_area = random.uniform(
                self.min_num_patches, max_mask_patches
            )  # patches in the rectangle
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))  # h / w
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]  # (h, w), a view into the mask
                num_new = h * w - int(block.sum())  # patches of the rectangle not masked yet
                if 0 < num_new <= max_mask_patches:  # adds something, and not more than allowed
                    block.fill_(True)
                    delta += num_new
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int = 0) -> torch.Tensor:
        """A (height, width) bool mask with about `num_masking_patches` True (never more)."""
        mask = torch.zeros(self.get_shape(), dtype=torch.bool)  # (H, W)
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:  # no rectangle fitted in 10 tries: stop short of the target
                break
            mask_count += delta
        return mask


def collate_masks(
    n_images: int,
    n_tokens: int,
    mask_generator: MaskingGenerator,
    mask_ratio_tuple=(0.1, 0.5),
    mask_probability: float = 0.5,
) -> dict:
    """The masks of one batch of global crops, as DINOv2's `collate_data_and_cast` draws them.

    Only `mask_probability` of the images are masked, and their ratios are spread over the range:
    the range is cut into n_masked equal slices and image i draws its ratio from slice i, then the
    masks are shuffled. Returns the official keys: `collated_masks` (n_images, n_tokens) bool,
    `mask_indices_list` (M,) the flat indices of the masked patches, `masks_weight` (M,) 1 / (masked
    patches of that patch's image), `upperbound` (an upper bound on M) and `n_masked_patches` (1,) =
    M.
    """
    n_samples_masked = int(n_images * mask_probability)
    probs = torch.linspace(
        *mask_ratio_tuple, n_samples_masked + 1
    )  # slice edges of the ratio range
    upperbound = 0
    masks_list = []
    for i in range(n_samples_masked):
        prob_min, prob_max = (
            probs[i],
            probs[i + 1],
        )  # 0-dim float32 tensors, as in the official code
        n_masked = int(
            n_tokens * random.uniform(prob_min, prob_max)
        )  # this image's share, in patches
        masks_list.append(mask_generator(n_masked))  # (H, W)
        upperbound += int(n_tokens * prob_max)
    for _ in range(n_samples_masked, n_images):
        masks_list.append(mask_generator(0))  # nothing masked
    random.shuffle(masks_list)

    collated_masks = torch.stack(masks_list).flatten(1)  # (n_images, N)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()  # (M,) into (n_images * N)
    per_image = collated_masks.sum(-1).clamp(min=1.0)  # (n_images,) masked patches per image
    masks_weight = (1 / per_image).unsqueeze(-1).expand_as(collated_masks)[collated_masks]  # (M,)
    return {
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full(
            (1,), fill_value=mask_indices_list.shape[0], dtype=torch.long
        ),
    }


# ----------------------------------------------------------------------------- Sinkhorn-Knopp
# centering


@torch.no_grad()
def sinkhorn_knopp_teacher(
    teacher_output: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Teacher probabilities (B, K) whose B rows each sum to 1 and spread evenly over the K
    prototypes.

    A different answer to collapse than the running centre: instead of shifting the scores by their
    mean, alternately rescale Q = exp(scores / T) so that every prototype gets 1/K of the batch and
    every sample 1/B (SwAV's equipartition). The official code computes exp(scores / T) directly,
    which overflows to inf once a score exceeds ~88 T (3.5 at T = 0.04); here each prototype's
    largest score is subtracted first, which the first row normalisation divides out again, so the
    result is the same wherever the official one is finite. Across processes the sums run over every
    process's batch; `n_samples` is the batch size (DINOv2's `n_masked_patches_tensor` for the
    patches), by default the rows over all processes.
    """
    scores = teacher_output.float() / teacher_temp  # (B, K)
    prototype_max = scores.max(dim=0, keepdim=True).values  # (1, K), each prototype's largest score
    if _distributed():
        dist.all_reduce(prototype_max, op=dist.ReduceOp.MAX)
    Q = torch.exp(
        scores - prototype_max
    ).t()  # (K, B): K-by-B as in the paper; every row has an entry equal to 1
    K = Q.shape[0]  # how many prototypes
    B = torch.tensor(
        float(Q.shape[1] if n_samples is None else n_samples)
    )  # this process's samples ...
    if _distributed():
        dist.all_reduce(B)  # ... and every process's: the number of samples to assign

    sum_Q = torch.sum(Q)  # make the matrix sum to 1
    if _distributed():
        dist.all_reduce(sum_Q)
    Q = Q / sum_Q
    for _ in range(n_iterations):
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)  # (K, 1)
        if _distributed():
            dist.all_reduce(sum_of_rows)
        Q = Q / sum_of_rows / K  # each prototype's total weight is 1/K
        Q = Q / torch.sum(Q, dim=0, keepdim=True) / B  # each sample's total weight is 1/B
    Q = Q * B  # columns sum to 1: each sample's row of the result is a distribution over prototypes
    return Q.t()  # (B, K)


# ----------------------------------------------------------------------------- the iBOT patch loss


class iBOTPatchLoss(nn.Module):
    """DINO's cross-entropy on patch tokens, counted only where the student's input was masked.

    The teacher sees the whole image; the student must predict the teacher's prototype distribution
    for the patches it could not see. Each image's masked patches are averaged first, then the
    images, so that an image with many masked patches weighs no more than one with few (unmasked
    images add 0).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))  # (1, 1, K)

    @torch.no_grad()
    def softmax_center_teacher(
        self, teacher_patch_tokens: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """DINO's centering and sharpening, with the patch tokens' own centre:
        (..., K) -> (..., K)."""
        return F.softmax((teacher_patch_tokens.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | None = None,
        n_iterations: int = 3,
    ):
        """Sinkhorn-Knopp over the masked patches (M, K): each patch is one sample to assign."""
        return sinkhorn_knopp_teacher(
            teacher_output, teacher_temp, n_iterations, n_samples=n_masked_patches_tensor
        )

    def forward(
        self,
        student_patch_tokens: torch.Tensor,
        teacher_patch_tokens: torch.Tensor,
        student_masks_flat: torch.Tensor,
    ) -> torch.Tensor:
        """student_patch_tokens (B, N, K) logits, teacher_patch_tokens (B, N, K) probabilities,
        masks (B, N)."""
        log_p = F.log_softmax(student_patch_tokens.float() / self.student_temp, dim=-1)  # (B, N, K)
        loss = torch.sum(teacher_patch_tokens * log_p, dim=-1)  # (B, N): -H(P_t, P_s) per patch
        masks = student_masks_flat.float()  # (B, N), 1 where masked
        loss = torch.sum(loss * masks, dim=-1) / masks.sum(dim=-1).clamp(
            min=1.0
        )  # (B,) mean over masked
        return -loss.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The same loss on the masked patches only: student logits and teacher probabilities (M,
        K), where M = masks.sum() in `masks.flatten()` order; masks_weight (M,) = 1 / (masked
        patches of its image)."""
        log_p = F.log_softmax(
            student_patch_tokens_masked.float() / self.student_temp, dim=-1
        )  # (M, K)
        loss = torch.sum(teacher_patch_tokens_masked * log_p, dim=-1)  # (M,)
        if masks_weight is None:
            per_image = student_masks_flat.sum(-1).clamp(min=1.0)  # (B,)
            masks_weight = (
                (1 / per_image).unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]
            )  # (M,)
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]  # drop padding rows
        loss = loss * masks_weight  # (M,) each image's patches sum to its mean
        return -loss.sum() / student_masks_flat.shape[0]  # mean over all B images, masked or not

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean of the teacher's raw patch outputs (B, N, K): over patches, then
        images."""
        batch_center = teacher_patch_tokens.float().mean(1).sum(0)  # (K,)
        count = teacher_patch_tokens.shape[0]
        if _distributed():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(
            batch_center.view(1, 1, -1) / count, alpha=1 - self.center_momentum
        )


# ----------------------------------------------------------------------------- KoLeo


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimate: -mean log(distance of each feature to its nearest
    neighbour).

    Pushing the nearest neighbours apart spreads the batch's L2-normalised CLS features over the
    sphere, so that no two images share a feature; DINOv2 adds it with weight 0.1, per global crop.
    """

    def pairwise_NNs_inner(self, x: torch.Tensor) -> torch.Tensor:
        """Index of each row's nearest other row, for unit vectors x (B, D): the
        largest inner product."""
        dots = x @ x.t()  # (B, B) cosine similarities
        dots.fill_diagonal_(-1)  # a point is not its own neighbour
        return dots.argmax(dim=1)  # (B,)

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """student_output (B, D): the student's backbone CLS features of one crop."""
        x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)  # (B, D), unit length
        nn_idx = self.pairwise_NNs_inner(x)  # (B,) index of each nearest neighbour
        distances = F.pairwise_distance(x, x[nn_idx], p=2, eps=eps)  # (B,) = ||x - x_nn + eps||
        return -torch.log(distances + eps).mean()


# ----------------------------------------------------------------------------- student and teacher


class MaskedMultiCropWrapper(nn.Module):
    """backbone + DINO head (+ iBOT patch head) over the crops of a step, for iBOT and KoLeo.

    Like `multicrop.MultiCropWrapper`, whose attribute names (and so state dict) it keeps, but it
    returns what DINOv2's losses need besides the CLS logits: the backbone's CLS features (KoLeo)
    and the logits of the masked patch tokens (iBOT). The student gets `masks` (its global crops'
    masked patches become the mask token); the teacher gets the same `mask_indices` without masks
    (it sees the whole crops and is read at the masked places). Without an `ibot_head` the DINO head
    maps the patch tokens too (DINOv2's shared head).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, ibot_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        if ibot_head is not None:  # no key at all when shared: the state dict stays DINO's
            self.ibot_head = ibot_head

    def forward(
        self,
        crops: list[torch.Tensor],
        masks: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """crops: [global crops (2B, 3, G, G), local crops (N*B, 3, L, L) ...]; masks (2B, P) bool
        for the global crops (student only); mask_indices (M,) the masked patches in
        `masks.flatten()` order. Returns {"cls": (V*B, D) backbone CLS features, "cls_logits":
        (V*B, K), "patch_logits": (M, K') or None}."""
        if mask_indices is None:  # KoLeo alone: the global crops' CLS token is all that is read
            cls = [self.backbone(crops[0])]  # (2B, D)
            patches = None
        else:
            out = self.backbone.forward_features_dict(crops[0], masks)
            cls = [out["x_norm_clstoken"]]  # (2B, D)
            patches = out["x_norm_patchtokens"].flatten(0, 1)[mask_indices]  # (M, D)
        cls += [self.backbone(c) for c in crops[1:]]  # (N*B, D) per size of local crop
        cls = torch.cat(cls)  # (V*B, D)
        if patches is None:
            return {"cls": cls, "cls_logits": self.head(cls), "patch_logits": None}
        if hasattr(self, "ibot_head"):
            cls_logits, patch_logits = self.head(cls), self.ibot_head(patches)  # (V*B, K), (M, K')
        else:  # one pass of the shared head over both
            logits = self.head(torch.cat([cls, patches]))  # (V*B + M, K)
            cls_logits, patch_logits = logits[: len(cls)], logits[len(cls) :]
        return {"cls": cls, "cls_logits": cls_logits, "patch_logits": patch_logits}
