"""Checks for the exercises of notebook 10: DINOv2's masks, the iBOT patch loss, Sinkhorn-Knopp,
KoLeo.

Each `check_<name>(fn)` calls the learner's `fn` on several shapes and seeds, compares it with
`vitdino_core.dinov2`, and names the likely mistake when they differ. Each `reference_<name>` has
the same signature as the exercise and is built from the core's pieces: `pick(name, mine)` falls
back to it.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

import torch
import torch.nn.functional as F

from ..dinov2 import (
    KoLeoLoss,
    MaskingGenerator,
    collate_masks,
    iBOTPatchLoss,
    sinkhorn_knopp_teacher,
)
from . import check, expect_close, expect_shape, expect_tensor, first_match, mistake, reference

DINOV2_EXERCISES = ["masking", "ibot_loss", "sinkhorn_knopp", "koleo"]

__all__ = [
    "DINOV2_EXERCISES",
    "check_masking",
    "check_ibot_loss",
    "check_sinkhorn_knopp",
    "check_koleo",
    "reference_masking",
    "reference_ibot_loss",
    "reference_sinkhorn_knopp",
    "reference_koleo",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _own_rng(body: Callable) -> Callable:
    """Run a check with its own random state (torch's and Python's): the learner's seeds stay as
    they were."""

    @functools.wraps(body)
    def run(fn: Callable, *args, **kwargs):
        state = random.getstate()
        try:
            with torch.random.fork_rng():
                return body(fn, *args, **kwargs)
        finally:
            random.setstate(state)

    return run


# ---- 10 · block-wise masks for a batch ---------------------------------------------------------


@reference("masking")
def reference_masking(
    n_images: int,
    n_tokens: int,
    mask_generator: MaskingGenerator,
    mask_ratio_tuple=(0.1, 0.5),
    mask_probability: float = 0.5,
) -> torch.Tensor:
    return collate_masks(n_images, n_tokens, mask_generator, mask_ratio_tuple, mask_probability)[
        "collated_masks"
    ]


def _neighbour_share(masks: torch.Tensor, side: int) -> float:
    """Share of the masked patches that have a masked 4-neighbour: about 1 for blocks."""
    grid = masks.float().view(-1, 1, side, side)  # (B, 1, h, w)
    kernel = torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]])
    neighbours = F.conv2d(F.pad(grid, (1, 1, 1, 1)), kernel).view(masks.shape)  # (B, N)
    return (neighbours[masks] > 0).float().mean().item() if masks.any() else 1.0


@check("masking")
@_own_rng
def check_masking(fn: Callable) -> str:
    """fn(n_images, n_tokens, mask_generator, mask_ratio_tuple, mask_probability) -> (n_images,
    n_tokens) bool: int(n_images * mask_probability) images masked, image i of them with a ratio
    drawn from the i-th of equal slices of the range, by mask_generator(count), the list shuffled.
    """
    cases = [
        (16, 14, (0.1, 0.5), 0.5),
        (8, 7, (0.1, 0.5), 0.5),
        (12, 10, (0.2, 0.4), 0.75),
        (10, 8, (0.1, 0.5), 1.0),
    ]
    draws = 12
    first_masked = shares = shuffled_draws = 0
    for n_images, side, ratios, prob in cases:
        N = side * side
        generator = MaskingGenerator((side, side), max_num_patches=0.5 * N)
        n_masked = int(n_images * prob)
        edges = torch.linspace(*ratios, n_masked + 1).tolist()  # slice edges of the range
        for seed in range(draws):
            random.seed(seed)
            torch.manual_seed(seed)
            got = expect_tensor(fn(n_images, N, generator, ratios, prob))
            if got.shape == (n_images, side, side):
                raise mistake(
                    f"shape {tuple(got.shape)}: flatten each image's (h, w) mask to its {N} tokens"
                )
            expect_shape(got, (n_images, N), ("n_images", "n_tokens"), what="masks")
            if got.dtype != torch.bool:
                raise mistake(
                    f"the masks are {got.dtype}; return a bool tensor (True = masked), it indexes"
                    " tokens"
                )
            per_image = got.sum(dim=1)  # (n_images,)
            if per_image.sum() == 0:
                raise mistake(
                    "no patch is masked: call mask_generator(count) with each masked image's count"
                )
            if (per_image > ratios[1] * N + 1).any():
                raise mistake(
                    f"an image has {int(per_image.max())} of {N} patches masked, above the top of"
                    f" the range {ratios[1]}: the ratio is of one image's patches (n_tokens), not"
                    " the batch's"
                )
            count = int((per_image > 0).sum())
            if count != n_masked:
                if count == n_images:
                    raise mistake(
                        f"all {n_images} images are masked; mask only int(n_images *"
                        f" mask_probability) = {n_masked} of them, the others get mask_generator(0)"
                    )
                raise mistake(
                    f"{count} of {n_images} images are masked; exactly int(n_images *"
                    f" mask_probability) = {n_masked} should be (not a coin per image)"
                )
            ratios_got = sorted((per_image[per_image > 0].float() / N).tolist())
            for i, r in enumerate(
                ratios_got
            ):  # one masked image per slice (the generator may fall a little short)
                if not edges[i] - 4 / N <= r <= edges[i + 1] + 1e-6:
                    raise mistake(
                        "the masked images' ratios do not spread over the range: cut"
                        f" mask_ratio_tuple={ratios} into {n_masked} equal slices"
                        " (torch.linspace(*mask_ratio_tuple, n_masked + 1)) and draw image i's"
                        " ratio in slice i with random.uniform"
                    )
            if n_masked < n_images:
                shuffled_draws += 1
                first_masked += bool((per_image[:n_masked] > 0).all())
            shares += _neighbour_share(got, side)
    total = len(cases) * draws
    if shares / total < 0.9:
        raise mistake(
            "the masked patches are scattered, not in blocks: let mask_generator(count) draw each"
            " mask, it masks rectangles"
        )
    if first_masked == shuffled_draws:
        raise mistake(
            "the masked images are always the first ones: shuffle the list of masks "
            "(random.shuffle) before stacking them"
        )
    return f"counts, ratio slices, blocks and shuffling right on {total} batches"


# ---- 10 · the iBOT patch loss ------------------------------------------------------------------


@reference("ibot_loss")
def reference_ibot_loss(
    student_patch_tokens: torch.Tensor,
    teacher_patch_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    return iBOTPatchLoss(student_patch_tokens.shape[-1], student_temp)(
        student_patch_tokens, teacher_patch_probs, masks
    )


def _ibot_variants(s, t, masks, temp) -> dict[str, torch.Tensor]:
    m = masks.float()  # (B, N)
    ce = -(t * F.log_softmax(s / temp, dim=-1)).sum(-1)  # (B, N)
    per_image = (ce * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B,)
    has_mask = m.sum(-1) > 0
    return {
        "all_patches": ce.mean(),
        "visible": ((ce * (1 - m)).sum(-1) / (1 - m).sum(-1).clamp(min=1)).mean(),
        "flat_mean": (ce * m).sum() / m.sum(),
        "masked_images": per_image[has_mask].mean(),
        "per_image_sum": (ce * m).sum(-1).mean(),
        "no_temp": (
            ((-(t * F.log_softmax(s, dim=-1)).sum(-1) * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
        ),
        "sign": -per_image.mean(),
        "softmax": (
            (
                (-(t * F.softmax(s / temp, dim=-1)).sum(-1) * m).sum(-1) / m.sum(-1).clamp(min=1)
            ).mean()
        ),
        "swapped": (
            (
                (-(F.softmax(s / temp, dim=-1) * t.clamp(min=1e-30).log()).sum(-1) * m).sum(-1)
                / m.sum(-1).clamp(min=1)
            ).mean()
        ),
    }


IBOT_MESSAGES = {
    "all_patches": (
        "every patch counts: average the cross-entropy over the MASKED patches only (the student"
        " saw the others, predicting them teaches nothing)"
    ),
    "visible": (
        "the visible patches count instead of the masked ones: masks is True where the student's"
        " patch was masked, and those are the ones to predict"
    ),
    "flat_mean": (
        "one mean over all masked patches of the batch: average each image's masked patches first,"
        " then the images, so an image with many masked patches weighs no more than one with few"
    ),
    "masked_images": (
        "divided by the number of masked images: the official loss takes the mean over all B"
        " images, an image without masked patches adding 0"
    ),
    "per_image_sum": (
        "each image's masked patches are summed: divide by its number of masked patches "
        "(clamped to at least 1)"
    ),
    "no_temp": "the student's logits are not divided by student_temp before the log-softmax",
    "sign": "the sign is flipped: the cross-entropy is -sum_k P_t log P_s, a positive number",
    "softmax": "softmax where the log-softmax belongs: the cross-entropy uses log P_s",
    "swapped": (
        "teacher and student are swapped: the teacher gives the target, -sum_k P_t log softmax(s /"
        " T_s)"
    ),
}


@check("ibot_loss")
@_own_rng
def check_ibot_loss(fn: Callable) -> str:
    """fn(student logits (B, N, K), teacher probs (B, N, K), masks (B, N) bool, student_temp) ->
    scalar loss."""
    cases = [(4, 9, 8, 0.1), (3, 16, 32, 0.1), (6, 25, 64, 0.2)]
    for seed, (B, N, K, temp) in enumerate(cases):
        g = _gen(seed)
        s = 2 * torch.randn(B, N, K, generator=g)  # (B, N, K)
        t = F.softmax(2 * torch.randn(B, N, K, generator=g) / 0.3, dim=-1)  # (B, N, K)
        masks = torch.rand(B, N, generator=g) < torch.linspace(0.1, 0.6, B).unsqueeze(
            1
        )  # (B, N) uneven counts
        masks[0] = False  # an image without masked patches
        masks[1, : N // 2] = True  # and one with many
        want = reference_ibot_loss(s, t, masks, temp)
        got = expect_tensor(fn(s.clone(), t.clone(), masks.clone(), temp))
        if got.numel() != 1:
            raise mistake(
                f"the loss has shape {tuple(got.shape)}; return one number (a 0-dim tensor): the"
                " mean over images"
            )
        got = got.reshape(())
        if abs(got.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item())):
            continue
        wrong = first_match(got, _ibot_variants(s, t, masks, temp), atol=1e-4)
        raise mistake(
            IBOT_MESSAGES.get(
                wrong,
                f"the loss differs from iBOTPatchLoss (B={B}, N={N}, K={K}): each "
                "image's mean cross-entropy over its masked patches, averaged over "
                "all B images",
            )
        )
    return f"matches iBOTPatchLoss on {len(cases)} batches (an unmasked image, uneven masks)"


# ---- 10 · Sinkhorn-Knopp -----------------------------------------------------------------------


@reference("sinkhorn_knopp")
def reference_sinkhorn_knopp(
    teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
) -> torch.Tensor:
    return sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations)


def _sk(t, temp, n_iterations, columns_first=False, final=True, shift=None) -> torch.Tensor:
    """Sinkhorn-Knopp with one thing changed, in the official K-by-B layout."""
    scores = t.double() / temp  # (B, K)
    if shift == "sample":
        scores = scores - scores.max(dim=1, keepdim=True).values  # each sample's max: not a no-op
    Q = torch.exp(scores).t()  # (K, B)
    K, B = Q.shape
    row_size, column_size = K, B
    Q = Q / Q.sum()
    for _ in range(n_iterations):
        if columns_first:
            Q = Q / Q.sum(dim=0, keepdim=True) / column_size
            Q = Q / Q.sum(dim=1, keepdim=True) / row_size
        else:
            Q = Q / Q.sum(dim=1, keepdim=True) / row_size
            Q = Q / Q.sum(dim=0, keepdim=True) / column_size
    return (Q * (column_size if final else 1)).t().float()  # (B, K)


@check("sinkhorn_knopp")
@_own_rng
def check_sinkhorn_knopp(fn: Callable) -> str:
    """fn(teacher_output (B, K), teacher_temp, n_iterations) -> (B, K): rows sum to 1, prototypes
    shared evenly."""
    cases = [(8, 16, 0.1, 3), (16, 8, 0.07, 3), (6, 32, 0.04, 5), (12, 12, 0.1, 1)]
    for seed, (B, K, temp, n) in enumerate(cases):
        g = _gen(seed)
        t = 0.5 * torch.randn(B, K, generator=g) + torch.linspace(
            -0.3, 0.3, K
        )  # (B, K), some prototypes favoured
        want = reference_sinkhorn_knopp(t, temp, n)
        got = expect_tensor(fn(t.clone(), temp, n))
        if got.shape == (K, B) and B != K:
            raise mistake(
                f"shape {tuple(got.shape)} is K-by-B: transpose Q back, one row per sample (B, K)"
            )
        expect_shape(got, (B, K), ("B", "K"), what="assignments")
        if not torch.isfinite(got).all():
            raise mistake(
                "inf or nan in the result: does exp(teacher_output / teacher_temp) overflow?"
                " Subtracting each prototype's largest score first changes nothing else"
            )
        if torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6):
            continue
        variants = {
            "columns_first": _sk(t, temp, n, columns_first=True),
            "no_final": _sk(t, temp, n, final=False),
            "final_K": _sk(t, temp, n) * K / B,
            "no_temp": _sk(t, 1.0, n),
            "softmax": F.softmax(t / temp, dim=-1),
            "sample_max": _sk(t, temp, n, shift="sample"),
        }
        for k in range(0, 12):
            if k != n:
                variants[f"iterations_{k}"] = _sk(t, temp, k)
        wrong = first_match(got, variants, atol=1e-6)
        if wrong and wrong.startswith("iterations_"):
            k = int(wrong.split("_")[1])
            raise mistake(
                f"{k} iterations instead of n_iterations = {n}: run the row-then-column pair of "
                "normalisations n_iterations times"
            )
        raise mistake(
            {
                "columns_first": (
                    "the samples are normalised before the prototypes: in each iteration first"
                    " divide every prototype's row (K, B) by its sum and by K, then every sample's"
                    " column by its sum and by B"
                ),
                "no_final": (
                    "the final multiply by B is missing: after the loop each sample's column sums"
                    " to 1/B; Q * B makes it a distribution"
                ),
                "final_K": (
                    "the final multiply is by K: multiply by B, the number of samples, so that each"
                    " sample's column sums to 1"
                ),
                "no_temp": "exp without the temperature: Q = exp(teacher_output / teacher_temp)",
                "softmax": (
                    "that is the plain softmax: Sinkhorn-Knopp alternately rescales the prototypes"
                    " (rows of Q, K-by-B) and the samples (columns) so that every prototype gets an"
                    " equal share"
                ),
                "sample_max": (
                    "each sample's max is subtracted before exp: that changes the result (the rows"
                    " are normalised first); subtract a prototype's max, or the overall max, or"
                    " nothing"
                ),
                None: (
                    f"the assignments differ from sinkhorn_knopp_teacher (B={B}, K={K}, T={temp},"
                    f" {n} iterations)"
                ),
            }[wrong]
        )
    return f"matches sinkhorn_knopp_teacher on {len(cases)} cases (1 to 5 iterations)"


# ---- 10 · KoLeo --------------------------------------------------------------------------------


@reference("koleo")
def reference_koleo(x: torch.Tensor) -> torch.Tensor:
    return KoLeoLoss()(x)


def _koleo_variants(x: torch.Tensor, eps: float = 1e-8) -> dict[str, torch.Tensor]:
    u = F.normalize(x, dim=-1)  # (B, D)

    def nn_distance(
        z: torch.Tensor, nearest: bool = True, skip_self: bool = True, by_dots: bool = False
    ):
        d = (z[:, None] - z[None]).norm(dim=-1)  # (B, B)
        if (
            by_dots
        ):  # the neighbour with the largest inner product: the nearest only for unit vectors
            dots = z @ z.t() - torch.diag(torch.full((len(z),), float("inf")))  # (B, B)
            return d.gather(1, dots.argmax(1, keepdim=True)).squeeze(1)  # (B,)
        if skip_self:
            d = d + torch.diag(torch.full((len(z),), float("inf") if nearest else -float("inf")))
        return d.min(dim=1).values if nearest else d.max(dim=1).values  # (B,)

    d = nn_distance(u)
    return {
        "not_normalised": -torch.log(nn_distance(x) + eps).mean(),
        "not_normalised_dots": -torch.log(nn_distance(x, by_dots=True) + eps).mean(),
        "normalised_dim0": -torch.log(nn_distance(F.normalize(x, dim=0)) + eps).mean(),
        "self": -torch.log(nn_distance(u, skip_self=False) + eps).mean(),
        "squared": -torch.log(d**2 + eps).mean(),
        "sign": torch.log(d + eps).mean(),
        "log_of_mean": -torch.log(d.mean() + eps),
        "farthest": -torch.log(nn_distance(u, nearest=False) + eps).mean(),
        "sum": -torch.log(d + eps).sum(),
    }


KOLEO_MESSAGES = {
    "not_normalised": (
        "the features are not L2-normalised: KoLeo spreads directions, normalise each row first"
    ),
    "not_normalised_dots": (
        "the features are not L2-normalised: KoLeo spreads directions, normalise each row "
        "first (then the largest inner product is the nearest point)"
    ),
    "normalised_dim0": "normalised over the batch (dim=0): normalise each feature vector (dim=-1)",
    "self": (
        "each point is its own nearest neighbour (distance 0): exclude the diagonal of x @ x.T"
        " before taking the largest inner product"
    ),
    "squared": (
        "log of the squared distance: KoLeo is -mean log ||x_i - x_nn(i)||, the distance itself"
    ),
    "sign": "the sign is flipped: minimise -mean log distance, so that the neighbours move apart",
    "log_of_mean": "the log of the mean distance: take the log of each distance, then the mean",
    "farthest": (
        "the farthest point, not the nearest: the nearest unit vector has the LARGEST inner product"
    ),
    "sum": "summed over the batch: take the mean",
}


@check("koleo")
@_own_rng
def check_koleo(fn: Callable) -> str:
    """fn(x (B, D) features) -> scalar: -mean over i of log(distance from x_i to its nearest
    neighbour), on L2-normalised features."""
    cases = [(5, 6, 2.0), (8, 16, 0.5), (16, 4, 3.0), (3, 32, 1.0)]
    for seed, (B, D, scale) in enumerate(cases):
        x = (
            scale * torch.randn(B, D, generator=_gen(seed)) + 0.5
        )  # (B, D), off-centre, not unit length
        want = reference_koleo(x)
        got = expect_tensor(fn(x.clone()))
        if got.numel() != 1:
            raise mistake(
                f"the loss has shape {tuple(got.shape)}; return one number: the mean over the batch"
            )
        got = got.reshape(())
        if not torch.isfinite(got):
            raise mistake(
                "the loss is not finite: add a small eps inside the log, log(distance + 1e-8)"
            )
        if abs(got.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item())):
            continue
        wrong = first_match(got, _koleo_variants(x), atol=1e-4)
        raise mistake(
            KOLEO_MESSAGES.get(
                wrong,
                f"the loss differs from KoLeoLoss (B={B}, D={D}): normalise, find "
                "each row's nearest other row, -mean log distance",
            )
        )
    x = torch.randn(6, 8, generator=_gen(9))
    x[4] = 2 * x[1]  # the same direction twice: distance 0
    got = expect_tensor(fn(x.clone())).reshape(())
    if not torch.isfinite(got):
        raise mistake(
            "two features with the same direction give log(0): add a small eps, log(distance +"
            " 1e-8)"
        )
    # how eps enters (inside the distance or only in the log) moves the one zero distance's term, so
    # loosely:
    expect_close(
        got,
        reference_koleo(x),
        "two features point the same way here: distance 0, log(0 + eps)",
        atol=0.5,
        rtol=0.0,
    )
    return f"matches KoLeoLoss on {len(cases) + 1} batches (one with a repeated direction)"
