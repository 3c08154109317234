"""Checks for the exercises of notebook 10: DINOv2's masks, the iBOT patch loss, Sinkhorn-Knopp,
KoLeo.

Each `check_<name>(fn)` calls the learner's `fn` on several shapes and seeds, compares it with
`reference_<name>` (the finished code of `vitdino_core.dinov2`: `collate_masks`, `iBOTPatchLoss`,
`sinkhorn_knopp_teacher`, `KoLeoLoss`, with the exercise's signature: `pick(name, mine)` falls back
to it), and names the likely mistake from its table of wrong answers when they differ. The masks
are random, so their check tests what every right answer shares: counts, ratio slices, blocks and
shuffling.
"""

from __future__ import annotations

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
from . import (
    check,
    expect_same,
    expect_shape,
    expect_tensor,
    expect_unchanged,
    gen,
    mistake,
    reference,
)

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


def _first(wrong: dict[str, bool]) -> str | None:
    """The first message whose condition holds: the named mistakes of a random result, found by
    what every right answer shares rather than by its values."""
    return next((message for message, found in wrong.items() if found), None)


# ---- 10 · block-wise masks for a batch ---------------------------------------------------------


@reference("masking")
def reference_masking(
    n_images: int,
    n_tokens: int,
    mask_generator: MaskingGenerator,
    mask_ratio_tuple=(0.1, 0.5),
    mask_probability: float = 0.5,
) -> torch.Tensor:
    masks = collate_masks(n_images, n_tokens, mask_generator, mask_ratio_tuple, mask_probability)
    return masks["collated_masks"]  # (n_images, n_tokens) bool


def _neighbour_share(masks: torch.Tensor, side: int) -> float:
    """Share of the masked patches that have a masked 4-neighbour: about 1 for blocks."""
    grid = masks.float().view(-1, 1, side, side)  # (B, 1, h, w)
    kernel = torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]])  # (1, 1, 3, 3)
    neighbours = F.conv2d(F.pad(grid, (1, 1, 1, 1)), kernel).view(masks.shape)  # (B, N)
    return (neighbours[masks] > 0).float().mean().item() if masks.any() else 1.0


MASKING_CASES = [
    (16, 14, (0.1, 0.5), 0.5),
    (8, 7, (0.1, 0.5), 0.5),
    (12, 10, (0.2, 0.4), 0.75),
    (10, 8, (0.1, 0.5), 1.0),
]
MASKING_DRAWS = 12  # seeds per case


@check("masking")
def check_masking(fn: Callable) -> str:
    """fn(n_images, n_tokens, mask_generator, mask_ratio_tuple, mask_probability) -> (n_images,
    n_tokens) bool: int(n_images * mask_probability) images masked, image i of them with a ratio
    drawn from the i-th of equal slices of the range, by mask_generator(count), the list shuffled.
    """
    first_masked = shares = shuffled_draws = 0
    for n_images, side, ratios, prob in MASKING_CASES:
        N = side * side
        generator = MaskingGenerator((side, side), max_num_patches=0.5 * N)
        n_masked = int(n_images * prob)
        edges = torch.linspace(*ratios, n_masked + 1).tolist()  # slice edges of the range
        for seed in range(MASKING_DRAWS):
            random.seed(seed)
            torch.manual_seed(seed)
            got = expect_tensor(fn(n_images, N, generator, ratios, prob), "the masks")
            expect_shape(
                got,
                (n_images, N),
                ("n_images", "n_tokens"),
                "masks",
                known={
                    (n_images, side, side): (
                        f"shape {(n_images, side, side)}: flatten each image's (h, w) mask to its"
                        f" {N} tokens"
                    )
                },
            )
            if got.dtype != torch.bool:
                raise mistake(
                    f"the masks are {got.dtype}; return a bool tensor (True = masked), it indexes"
                    " tokens"
                )
            per_image = got.sum(dim=1)  # (n_images,)
            count = int((per_image > 0).sum())
            ratios_got = sorted((per_image[per_image > 0].float() / N).tolist())
            wrong = _first(
                {
                    "no patch is masked: call mask_generator(count) with each masked image's"
                    " count": per_image.sum() == 0,
                    f"an image has {int(per_image.max())} of {N} patches masked, above the top of"
                    f" the range {ratios[1]}: the ratio is of one image's patches (n_tokens), not"
                    " the batch's": bool((per_image > ratios[1] * N + 1).any()),
                    f"all {n_images} images are masked; mask only int(n_images *"
                    f" mask_probability) = {n_masked} of them, the others get"
                    " mask_generator(0)": count != n_masked and count == n_images,
                    f"{count} of {n_images} images are masked; exactly int(n_images *"
                    f" mask_probability) = {n_masked} should be (not a coin per"
                    " image)": count != n_masked,
                    # one masked image per slice (the generator may fall a little short)
                    "the masked images' ratios do not spread over the range: cut"
                    f" mask_ratio_tuple={ratios} into {n_masked} equal slices"
                    " (torch.linspace(*mask_ratio_tuple, n_masked + 1)) and draw image i's ratio"
                    " in slice i with random.uniform": any(
                        not lo - 4 / N <= r <= hi + 1e-6
                        for r, lo, hi in zip(ratios_got, edges, edges[1:])
                    ),
                }
            )
            if wrong:
                raise mistake(wrong)
            if n_masked < n_images:
                shuffled_draws += 1
                first_masked += bool((per_image[:n_masked] > 0).all())
            shares += _neighbour_share(got, side)
    total = len(MASKING_CASES) * MASKING_DRAWS
    wrong = _first(
        {
            "the masked patches are scattered, not in blocks: let mask_generator(count) draw each"
            " mask, it masks rectangles": shares / total < 0.9,
            "the masked images are always the first ones: shuffle the list of masks"
            " (random.shuffle) before stacking them": first_masked == shuffled_draws,
        }
    )
    if wrong:
        raise mistake(wrong)
    return f"counts, ratio slices, blocks and shuffling right on {total} batches"


# ---- 10 · the iBOT patch loss ------------------------------------------------------------------


@reference("ibot_loss")
def reference_ibot_loss(
    student_patch_tokens: torch.Tensor,
    teacher_patch_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    loss = iBOTPatchLoss(student_patch_tokens.shape[-1], student_temp)
    return loss(student_patch_tokens, teacher_patch_probs, masks)  # scalar


def _ce(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """Each patch's cross-entropy -sum_k P_t log softmax(s / temp): (B, N, K) -> (B, N)."""
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1)  # (B, N)


def _per_image(ce: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each image's mean over its weighted patches: (B, N) -> (B,)."""
    return (ce * weight).sum(-1) / weight.sum(-1).clamp(min=1)  # (B,)


IBOT_CASES = [(4, 9, 8, 0.1), (3, 16, 32, 0.1), (6, 25, 64, 0.2)]


@check("ibot_loss")
def check_ibot_loss(fn: Callable) -> str:
    """fn(student logits (B, N, K), teacher probs (B, N, K), masks (B, N) bool, student_temp) ->
    scalar loss."""
    for seed, (B, N, K, temp) in enumerate(IBOT_CASES):
        g = gen(seed)
        s = 2 * torch.randn(B, N, K, generator=g)  # (B, N, K)
        t = F.softmax(2 * torch.randn(B, N, K, generator=g) / 0.3, dim=-1)  # (B, N, K)
        ramp = torch.linspace(0.1, 0.6, B).unsqueeze(1)  # (B, 1): uneven counts
        masks = torch.rand(B, N, generator=g) < ramp  # (B, N)
        masks[0] = False  # an image without masked patches
        masks[1, : N // 2] = True  # and one with many
        want = reference_ibot_loss(s, t, masks, temp)
        before = [s.clone(), t.clone(), masks.clone()]
        got = expect_tensor(fn(s, t, masks, temp), "the loss")
        expect_unchanged(
            before,
            [s, t, masks],
            "an input was changed in place: the loss leaves the logits, the teacher's"
            " probabilities and the masks as they are",
        )
        if got.numel() != 1:
            raise mistake(
                f"the loss has shape {tuple(got.shape)}; return one number (a 0-dim tensor): the"
                " mean over images"
            )
        got = got.reshape(())
        m = masks.float()  # (B, N), 1 where masked
        expect_same(
            got,
            want,
            {
                "every patch counts: average the cross-entropy over the MASKED patches only (the"
                " student saw the others, predicting them teaches nothing)": lambda: _ce(
                    s, t, temp
                ).mean(),
                "the visible patches count instead of the masked ones: masks is True where the"
                " student's patch was masked, and those are the ones to predict": lambda: (
                    _per_image(_ce(s, t, temp), 1 - m).mean()
                ),
                "one mean over all masked patches of the batch: average each image's masked"
                " patches first, then the images, so an image with many masked patches weighs no"
                " more than one with few": lambda: (_ce(s, t, temp) * m).sum() / m.sum(),
                "divided by the number of masked images: the official loss takes the mean over"
                " all B images, an image without masked patches adding 0": lambda: _per_image(
                    _ce(s, t, temp), m
                )[masks.any(-1)].mean(),
                "each image's masked patches are summed: divide by its number of masked patches"
                " (clamped to at least 1)": lambda: (_ce(s, t, temp) * m).sum(-1).mean(),
                "the student's logits are not divided by student_temp before the"
                " log-softmax": lambda: _per_image(_ce(s, t, 1.0), m).mean(),
                "the sign is flipped: the cross-entropy is -sum_k P_t log P_s, a positive"
                " number": lambda: -want,
                "softmax where the log-softmax belongs: the cross-entropy uses log P_s": lambda: (
                    _per_image(-(t * F.softmax(s / temp, dim=-1)).sum(-1), m).mean()
                ),
                "teacher and student are swapped: the teacher gives the target, -sum_k P_t log"
                " softmax(s / T_s)": lambda: _per_image(
                    -(F.softmax(s / temp, dim=-1) * t.clamp(min=1e-30).log()).sum(-1), m
                ).mean(),
            },
            f"the loss differs from iBOTPatchLoss (B={B}, N={N}, K={K}): each image's mean"
            " cross-entropy over its masked patches, averaged over all B images",
        )
    return f"matches iBOTPatchLoss on {len(IBOT_CASES)} batches (an unmasked image, uneven masks)"


# ---- 10 · Sinkhorn-Knopp -----------------------------------------------------------------------


@reference("sinkhorn_knopp")
def reference_sinkhorn_knopp(
    teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
) -> torch.Tensor:
    return sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations)  # (B, K)


def _sk(t, temp, n_iterations, columns_first=False, final=True, shift=None) -> torch.Tensor:
    """Sinkhorn-Knopp with one thing changed, in the official K-by-B layout."""
    scores = t.double() / temp  # (B, K)
    if shift == "sample":
        scores = scores - scores.max(dim=1, keepdim=True).values  # each sample's max: not a no-op
    Q = torch.exp(scores).t()  # (K, B)
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(n_iterations):
        if columns_first:
            Q = Q / Q.sum(dim=0, keepdim=True) / B  # (K, B)
            Q = Q / Q.sum(dim=1, keepdim=True) / K
        else:
            Q = Q / Q.sum(dim=1, keepdim=True) / K  # (K, B)
            Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * (B if final else 1)).t().float()  # (B, K)


SK_CASES = [(8, 16, 0.1, 3), (16, 8, 0.07, 3), (6, 32, 0.04, 5), (12, 12, 0.1, 1)]


@check("sinkhorn_knopp")
def check_sinkhorn_knopp(fn: Callable) -> str:
    """fn(teacher_output (B, K), teacher_temp, n_iterations) -> (B, K): rows sum to 1, prototypes
    shared evenly."""
    for seed, (B, K, temp, n) in enumerate(SK_CASES):
        g = gen(seed)
        favoured = torch.linspace(-0.3, 0.3, K)  # (K,): some prototypes favoured
        t = 0.5 * torch.randn(B, K, generator=g) + favoured  # (B, K)
        want = reference_sinkhorn_knopp(t, temp, n)  # (B, K)
        before = [t.clone()]
        got = expect_tensor(fn(t, temp, n), "the assignments")
        expect_unchanged(
            before,
            [t],
            "teacher_output was changed in place: compute Q as a new tensor, the teacher's"
            " output stays as it is",
        )
        expect_shape(
            got,
            (B, K),
            ("B", "K"),
            "assignments",
            known={(K, B): f"shape {(K, B)} is K-by-B: transpose Q back, one row per sample (B, K)"}
            if B != K
            else None,
        )
        if not torch.isfinite(got).all():
            raise mistake(
                "inf or nan in the result: does exp(teacher_output / teacher_temp) overflow?"
                " Subtracting each prototype's largest score first changes nothing else"
            )
        expect_same(
            got,
            want,
            {
                "the samples are normalised before the prototypes: in each iteration first divide"
                " every prototype's row (K, B) by its sum and by K, then every sample's column by"
                " its sum and by B": lambda: _sk(t, temp, n, columns_first=True),
                "the final multiply by B is missing: after the loop each sample's column sums to"
                " 1/B; Q * B makes it a distribution": lambda: _sk(t, temp, n, final=False),
                "the final multiply is by K: multiply by B, the number of samples, so that each"
                " sample's column sums to 1": lambda: _sk(t, temp, n) * K / B,
                "exp without the temperature: Q = exp(teacher_output / teacher_temp)": lambda: _sk(
                    t, 1.0, n
                ),
                "that is the plain softmax: Sinkhorn-Knopp alternately rescales the prototypes"
                " (rows of Q, K-by-B) and the samples (columns) so that every prototype gets an"
                " equal share": lambda: F.softmax(t / temp, dim=-1),
                "each sample's max is subtracted before exp: that changes the result (the rows"
                " are normalised first); subtract a prototype's max, or the overall max, or"
                " nothing": lambda: _sk(t, temp, n, shift="sample"),
                **{
                    f"{k} iterations instead of n_iterations = {n}: run the row-then-column pair"
                    " of normalisations n_iterations times": (lambda k=k: _sk(t, temp, k))
                    for k in range(12)
                    if k != n
                },
            },
            f"the assignments differ from sinkhorn_knopp_teacher (B={B}, K={K}, T={temp},"
            f" {n} iterations)",
        )
    return f"matches sinkhorn_knopp_teacher on {len(SK_CASES)} cases (1 to 5 iterations)"


# ---- 10 · KoLeo --------------------------------------------------------------------------------


@reference("koleo")
def reference_koleo(x: torch.Tensor) -> torch.Tensor:
    return KoLeoLoss()(x)  # scalar


def _nn_distance(
    z: torch.Tensor, nearest: bool = True, skip_self: bool = True, by_dots: bool = False
) -> torch.Tensor:
    """Each row's distance to its nearest (or farthest) other row: (B, D) -> (B,)."""
    d = (z[:, None] - z[None]).norm(dim=-1)  # (B, B)
    diagonal = torch.diag(torch.full((len(z),), float("inf")))  # (B, B)
    if by_dots:  # the neighbour with the largest inner product: the nearest only for unit vectors
        dots = z @ z.t() - diagonal  # (B, B)
        return d.gather(1, dots.argmax(1, keepdim=True)).squeeze(1)  # (B,)
    if skip_self:
        d = d + (diagonal if nearest else -diagonal)
    return d.min(dim=1).values if nearest else d.max(dim=1).values  # (B,)


KOLEO_CASES = [(5, 6, 2.0), (8, 16, 0.5), (16, 4, 3.0), (3, 32, 1.0)]


@check("koleo")
def check_koleo(fn: Callable) -> str:
    """fn(x (B, D) features) -> scalar: -mean over i of log(distance from x_i to its nearest
    neighbour), on L2-normalised features."""
    eps = 1e-8
    for seed, (B, D, scale) in enumerate(KOLEO_CASES):
        x = scale * torch.randn(B, D, generator=gen(seed)) + 0.5  # (B, D), off-centre, not unit
        want = reference_koleo(x)
        before = [x.clone()]
        got = expect_tensor(fn(x), "the loss")
        expect_unchanged(
            before,
            [x],
            "the features were changed in place: normalise into a new tensor (F.normalize), the"
            " features stay as they are",
        )
        if got.numel() != 1:
            raise mistake(
                f"the loss has shape {tuple(got.shape)}; return one number: the mean over the batch"
            )
        got = got.reshape(())
        if not torch.isfinite(got):
            raise mistake(
                "the loss is not finite: add a small eps inside the log, log(distance + 1e-8)"
            )
        u = F.normalize(x, dim=-1)  # (B, D)
        d = _nn_distance(u)  # (B,)
        expect_same(
            got,
            want,
            {
                "the features are not L2-normalised: KoLeo spreads directions, normalise each row"
                " first": lambda: -torch.log(_nn_distance(x) + eps).mean(),
                "the features are not L2-normalised: KoLeo spreads directions, normalise each row"
                " first (then the largest inner product is the nearest point)": lambda: (
                    -torch.log(_nn_distance(x, by_dots=True) + eps).mean()
                ),
                "normalised over the batch (dim=0): normalise each feature vector"
                " (dim=-1)": lambda: -torch.log(_nn_distance(F.normalize(x, dim=0)) + eps).mean(),
                "each point is its own nearest neighbour (distance 0): exclude the diagonal of x"
                " @ x.T before taking the largest inner product": lambda: (
                    -torch.log(_nn_distance(u, skip_self=False) + eps).mean()
                ),
                "log of the squared distance: KoLeo is -mean log ||x_i - x_nn(i)||, the distance"
                " itself": lambda: -torch.log(d**2 + eps).mean(),
                "the sign is flipped: minimise -mean log distance, so that the neighbours move"
                " apart": lambda: torch.log(d + eps).mean(),
                "the log of the mean distance: take the log of each distance, then the"
                " mean": lambda: -torch.log(d.mean() + eps),
                "the farthest point, not the nearest: the nearest unit vector has the LARGEST"
                " inner product": lambda: -torch.log(_nn_distance(u, nearest=False) + eps).mean(),
                "summed over the batch: take the mean": lambda: -torch.log(d + eps).sum(),
            },
            f"the loss differs from KoLeoLoss (B={B}, D={D}): normalise, find each row's nearest"
            " other row, -mean log distance",
        )
    x = torch.randn(6, 8, generator=gen(9))  # (6, 8)
    x[4] = 2 * x[1]  # the same direction twice: distance 0
    got = expect_tensor(fn(x.clone()), "the loss").reshape(())
    if not torch.isfinite(got):
        raise mistake(
            "two features with the same direction give log(0): add a small eps, log(distance +"
            " 1e-8)"
        )
    # how eps enters (inside the distance or only in the log) moves the one zero distance's term by
    # a few tenths, so the comparison is loose here
    if abs(got.item() - reference_koleo(x).item()) > 0.5:
        raise mistake("two features point the same way here: distance 0, log(0 + eps)")
    return f"matches KoLeoLoss on {len(KOLEO_CASES) + 1} batches (one with a repeated direction)"
