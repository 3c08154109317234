"""DINOv2's additions (vitdino_core.dinov2): block-wise masks, their per-batch sampling,
Sinkhorn-Knopp centering, the iBOT patch loss, KoLeo, and DINOv2's CLS loss as `DINOLoss`
computes it.

The literals below were computed by running the official code, facebookresearch/dinov2 at commit
b8931f7bf91576930313be2c6d6af376033b35f0, on the same inputs (tensors from `torch.Generator` seeds,
masks from `random.seed`): `dinov2/data/masking.py` (MaskingGenerator), `dinov2/data/collate.py`
(collate_data_and_cast), `dinov2/loss/dino_clstoken_loss.py` (DINOLoss.sinkhorn_knopp_teacher, and
the CLS loss as `dinov2/train/ssl_meta_arch.py` combines it), `dinov2/loss/ibot_patch_loss.py`
(iBOTPatchLoss, its Sinkhorn-Knopp under a single-process gloo group, since it calls `all_reduce`
unconditionally) and `dinov2/loss/koleo_loss.py` (KoLeoLoss). The official code is not part of this
project.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vitdino_core.dino_loss import DINOLoss
from vitdino_core.dinov2 import (
    KoLeoLoss,
    MaskingGenerator,
    collate_masks,
    iBOTPatchLoss,
    sinkhorn_knopp_teacher,
)

# ----------------------------------------------------------------------------- values from the
# official code

# (grid side, random.seed, num_masking_patches, masked flat indices, random.random() after)
MASK_CASES = [
    (7, 0, 10, [11, 12, 21, 22, 28, 29, 35, 36, 42, 43], 0.13927370519815263),
    (
        7,
        1,
        24,
        [
            2,
            3,
            9,
            10,
            16,
            17,
            21,
            22,
            23,
            24,
            26,
            27,
            28,
            29,
            30,
            31,
            33,
            34,
            35,
            36,
            40,
            41,
            43,
            44,
        ],
        0.5911534350013039,
    ),
    (5, 2, 6, [0, 5, 10, 14, 15, 19], 0.9357116851572259),
    (
        14,
        3,
        60,
        [
            16,
            30,
            68,
            79,
            80,
            81,
            82,
            93,
            94,
            95,
            96,
            107,
            108,
            109,
            110,
            115,
            116,
            117,
            118,
            119,
            121,
            122,
            123,
            124,
            126,
            127,
            128,
            129,
            130,
            131,
            132,
            133,
            140,
            141,
            142,
            143,
            144,
            145,
            146,
            147,
            154,
            155,
            156,
            157,
            158,
            159,
            160,
            161,
            168,
            169,
            170,
            171,
            172,
            173,
            174,
            175,
            182,
            183,
            184,
            185,
        ],
        0.031011751469749993,
    ),
]
COLLATE_INDICES = [
    18,
    19,
    20,
    25,
    26,
    27,
    32,
    33,
    34,
    106,
    107,
    108,
    113,
    114,
    115,
    116,
    117,
    118,
    121,
    122,
    123,
    124,
    125,
    130,
    131,
    137,
    138,
    143,
    144,
    145,
    146,
    196,
    197,
    198,
    203,
    204,
    210,
    211,
    217,
    218,
    224,
    225,
    231,
    232,
    236,
    237,
    243,
    244,
    352,
    353,
    359,
    360,
    366,
    367,
    368,
    373,
    374,
    380,
    381,
    387,
]
COLLATE_UPPERBOUND = 66
SK_DINO = [
    0.0005928878090344369,
    1.2912981448010008e-11,
    1.0320923848894381e-07,
    1.3631731121677149e-07,
    0.3266516625881195,
    0.3357333540916443,
    2.4153964659490157e-06,
    1.8039950121810184e-22,
    0.002962049562484026,
    2.431786326126395e-12,
    5.600341523859242e-07,
    1.834050827623807e-17,
    8.065077850005764e-08,
    6.884804406581679e-07,
    0.00019446104124654084,
    0.3338615596294403,
    1.3781520465272479e-05,
    5.725035127636087e-15,
    0.0011164025636389852,
    0.24846766889095306,
    0.0056916833855211735,
    8.410221981726765e-14,
    6.96641905051365e-07,
    0.24893806874752045,
    0.24673420190811157,
    4.605880565833331e-09,
    3.1957814172756116e-10,
    1.5286881916287567e-18,
    0.24893055856227875,
    2.1299492800608277e-05,
    9.140769179794006e-06,
    7.647753227502108e-05,
    0.2379709631204605,
    2.2961621652939357e-05,
    3.3274885069545235e-09,
    0.0004583300033118576,
    0.0013072191504761577,
    0.0001592995977262035,
    0.2511027455329895,
    9.050164173629582e-09,
    9.757331099535804e-06,
    0.2337576001882553,
    1.2543736882530965e-10,
    4.993095338905238e-19,
    8.26310133561492e-06,
    0.2752029001712799,
    1.187742024119992e-18,
    1.1885186168569817e-08,
    0.024855932220816612,
    0.18610911071300507,
    0.1852898746728897,
    4.1688868805067614e-05,
    6.620815184987805e-08,
    6.415200459741754e-08,
    0.016312383115291595,
    5.734889424241149e-14,
    2.9128370826470018e-08,
    0.028044039383530617,
    0.18612432479858398,
    0.18612462282180786,
    1.2833293613453948e-17,
    3.836529112299865e-21,
    0.18601004779338837,
    0.0010877015301957726,
]
SK_IBOT = [
    8.058805178734474e-08,
    0.40293657779693604,
    0.5535339713096619,
    0.041642945259809494,
    0.0005562350270338356,
    0.0006317822262644768,
    0.0002775904431473464,
    0.000420909549575299,
    2.4474018367470762e-09,
    0.06819223612546921,
    2.0872566892649047e-05,
    0.06184633821249008,
    2.1159515029012255e-08,
    0.7637639045715332,
    0.00014137821563053876,
    0.10603516548871994,
    7.702674054144154e-10,
    5.516026817531383e-07,
    0.22480642795562744,
    0.43631142377853394,
    1.4169342648528982e-05,
    7.217646725621307e-06,
    6.858591206082565e-08,
    0.3388601541519165,
    0.21890789270401,
    0.4684557616710663,
    1.2297468288124946e-07,
    0.0025655159261077642,
    3.385356831131503e-05,
    1.1427057870605495e-05,
    1.9542114387149923e-05,
    0.31000593304634094,
    0.9210226535797119,
    0.016006307676434517,
    0.05712150037288666,
    0.005111057311296463,
    1.4757042663404718e-06,
    2.1263134840410203e-05,
    0.0002836389176081866,
    0.00043220017687417567,
    3.884326815750683e-08,
    0.013661926612257957,
    0.000377652671886608,
    0.06575257331132889,
    0.4601224660873413,
    5.851753526187053e-10,
    0.46007633209228516,
    9.053246685652994e-06,
]
IBOT_FORWARD = 15.895589828491211
IBOT_MASKED = 15.895589828491211
IBOT_CENTER = [
    -0.06442108750343323,
    -0.07858613133430481,
    0.20879676938056946,
    -0.10652400553226471,
    -0.030902285128831863,
    0.1926407516002655,
    0.02310355380177498,
    -0.07727157324552536,
]
KOLEO = -0.09620557725429535
KOLEO_DUP = 5.43087911605835
CLS_CENTERING = 32.84575653076172
CLS_SK = 36.34242248535156


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def official_generator(side: int) -> MaskingGenerator:
    """As dinov2/train/train.py builds it: at most half of the patches in one rectangle."""
    return MaskingGenerator((side, side), max_num_patches=0.5 * side * side)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("side, seed, n, indices, after", MASK_CASES)
def test_masks_equal_the_official_ones_for_the_same_random_state(side, seed, n, indices, after):
    random.seed(seed)
    mask = official_generator(side)(n)  # (side, side)
    assert mask.dtype == torch.bool and mask.shape == (side, side)
    assert mask.flatten().nonzero().flatten().tolist() == indices
    assert random.random() == after  # the same number of draws from `random` as the official code


def test_masks_hold_the_requested_count_in_rectangles():
    gen_ = official_generator(14)
    for n in (0, 4, 20, 60, 98):
        counts = []
        for seed in range(30):
            random.seed(seed)
            counts.append(int(gen_(n).sum()))
        assert max(counts) <= n  # never more than asked ...
        assert min(counts) >= 0.75 * n and sum(counts) >= 0.95 * n * len(
            counts
        )  # ... and rarely short of it
    # blocks, not scattered patches: nearly every masked patch has a masked neighbour (about 3 in 4
    # would, for
    # the same count scattered at random); only the last, topping-up rectangle may be a single patch
    kernel = torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]])  # the 4 neighbours
    shares = []
    for seed in range(30):
        random.seed(seed)
        mask = gen_(60)  # (14, 14)
        neighbours = F.conv2d(F.pad(mask.float()[None, None], (1, 1, 1, 1)), kernel)[
            0, 0
        ]  # (14, 14)
        shares.append((neighbours[mask] > 0).float().mean().item())
    assert sum(shares) / len(shares) > 0.95


def test_one_rectangle_is_solid_and_never_spans_the_grid():
    gen_ = MaskingGenerator((7, 7), num_masking_patches=12, max_num_patches=12)
    for seed in range(50):
        random.seed(seed)
        mask = torch.zeros(7, 7, dtype=torch.bool)
        delta = gen_._mask(mask, 12)
        assert delta == int(mask.sum())
        if delta:
            rows, cols = mask.nonzero(as_tuple=True)
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert (
                h * w == delta and h < 7 and w < 7
            )  # one solid h x w block, smaller than the grid


def test_collate_masks_equal_the_official_collate():
    random.seed(0)
    out = collate_masks(
        8, 49, official_generator(7), mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5
    )
    assert out["mask_indices_list"].tolist() == COLLATE_INDICES
    assert out["upperbound"] == COLLATE_UPPERBOUND
    assert out["n_masked_patches"].tolist() == [len(COLLATE_INDICES)]


def test_collate_masks_half_the_images_with_ratios_spread_over_the_range():
    N = 196
    for seed in range(20):
        random.seed(seed)
        out = collate_masks(16, N, official_generator(14))
        masks = out["collated_masks"]  # (16, N)
        per_image = masks.sum(-1)  # (16,)
        assert (per_image > 0).sum() == 8  # mask_probability 0.5
        assert (per_image <= 0.5 * N).all()  # never above the top of the range
        ratios = sorted((per_image[per_image > 0].float() / N).tolist())
        assert ratios[-1] > 0.3 and ratios[0] < 0.2  # one image per slice of (0.1, 0.5)
        assert out["n_masked_patches"].item() == masks.sum() <= out["upperbound"]
        weights = out["masks_weight"]  # (M,)
        image_of_patch = out["mask_indices_list"] // N
        assert_close(weights, 1 / per_image[image_of_patch].float())
        assert_close(
            torch.zeros(16).index_add_(0, image_of_patch, weights), (per_image > 0).float()
        )


# ----------------------------------------------------------------------------- Sinkhorn-Knopp


def test_sinkhorn_knopp_equals_the_official_dino_one():
    t = 0.5 * torch.randn(4, 16, generator=gen(0))  # (B, K)
    assert_close(
        sinkhorn_knopp_teacher(t, 0.04), torch.tensor(SK_DINO).view(4, 16), rtol=1e-5, atol=1e-7
    )


def test_sinkhorn_knopp_equals_the_official_ibot_one():
    t = 0.5 * torch.randn(6, 8, generator=gen(1))  # (M, K)
    want = torch.tensor(SK_IBOT).view(6, 8)
    loss = iBOTPatchLoss(8)
    assert_close(
        loss.sinkhorn_knopp_teacher(t, 0.07, n_masked_patches_tensor=torch.tensor([6])),
        want,
        rtol=1e-5,
        atol=1e-7,
    )
    assert_close(loss.sinkhorn_knopp_teacher(t, 0.07), want, rtol=1e-5, atol=1e-7)


def test_sinkhorn_knopp_rows_are_distributions_and_prototypes_share_the_batch():
    B, K = 64, 32
    t = 0.3 * torch.randn(B, K, generator=gen(6)) + torch.linspace(
        0, 1, K
    )  # some prototypes favoured
    Q = sinkhorn_knopp_teacher(t, 0.1, n_iterations=50)  # (B, K)
    assert_close(
        Q.sum(dim=1), torch.ones(B)
    )  # each sample: a distribution (exact after the last column step)
    assert_close(
        Q.sum(dim=0), torch.full((K,), B / K), rtol=1e-3, atol=1e-3
    )  # each prototype: B/K samples
    softmax = F.softmax(t / 0.1, dim=-1)
    assert (
        softmax.sum(0).std() > 10 * Q.sum(0).std()
    )  # where the plain softmax favours some prototypes
    Q3 = sinkhorn_knopp_teacher(t, 0.1)  # 3 iterations: rows exact, columns nearly even
    assert_close(Q3.sum(dim=1), torch.ones(B))
    assert Q3.sum(dim=0).std() < 0.2 * softmax.sum(0).std()


def test_sinkhorn_knopp_stays_finite_where_the_official_one_overflows():
    t = 5 * torch.randn(
        8, 64, generator=gen(7)
    )  # scores/T up to ~400: exp overflows float32 beyond 88
    assert torch.isinf(
        torch.exp(t / 0.04)
    ).any()  # the official first step, exp(scores / T), is inf here
    Q = sinkhorn_knopp_teacher(t, 0.04)
    assert torch.isfinite(Q).all()
    assert_close(Q.sum(dim=1), torch.ones(8))
    # and equal to the float64 computation without the shift, which does not overflow
    Q64 = torch.exp(t.double() / 0.04).t()  # (K, B)
    Q64 = Q64 / Q64.sum()
    for _ in range(3):
        Q64 = Q64 / Q64.sum(dim=1, keepdim=True) / 64
        Q64 = Q64 / Q64.sum(dim=0, keepdim=True) / 8
    assert_close(Q.double(), (Q64 * 8).t(), rtol=1e-4, atol=1e-6)


def _sinkhorn_rank(rank: int, world_size: int, port: int, parts: list, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        n_masked = torch.tensor([len(parts[rank])])  # this process's masked patches
        out[rank] = iBOTPatchLoss(8).sinkhorn_knopp_teacher(
            parts[rank], 0.07, n_masked_patches_tensor=n_masked
        )
        out[rank + world_size] = sinkhorn_knopp_teacher(
            parts[rank], 0.07
        )  # counting the rows itself
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sinkhorn_knopp_over_two_processes_equals_one_process_on_the_whole_batch():
    import socket

    import torch.multiprocessing as mp

    t = 0.5 * torch.randn(
        11, 8, generator=gen(9)
    )  # (M, K), split 7 + 4 as masked patches often are
    parts = [t[:7], t[7:]]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_sinkhorn_rank, args=(2, port, parts, out), nprocs=2, join=True)
        got = torch.cat([out[0], out[1]])  # (M, K)
        got_rows = torch.cat([out[2], out[3]])
    want = sinkhorn_knopp_teacher(t, 0.07)
    assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert_close(got_rows, want, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(
        torch.cat([sinkhorn_knopp_teacher(p, 0.07) for p in parts]), want, atol=1e-3
    )


def test_sinkhorn_knopp_has_no_gradient_and_keeps_float32():
    t = torch.randn(4, 8, requires_grad=True)
    Q = sinkhorn_knopp_teacher(t.half(), 0.1)
    assert not Q.requires_grad and Q.dtype == torch.float32


# ----------------------------------------------------------------------------- iBOT

IBOT_MASKS = torch.tensor(
    [
        [1, 1, 0, 1, 1, 0, 0, 0, 0],
        [0] * 9,
        [0, 0, 0, 0, 1, 1, 0, 1, 1],
        [0, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=torch.bool,
)  # (B=4, N=9)


def ibot_inputs():
    g = gen(2)
    s = 2 * torch.randn(4, 9, 8, generator=g)  # (B, N, K) student logits
    t = 2 * torch.randn(4, 9, 8, generator=g)  # (B, N, K) teacher logits
    return s, t


def test_ibot_loss_equals_the_official_one():
    s, t = ibot_inputs()
    loss = iBOTPatchLoss(8)
    tp = loss.softmax_center_teacher(t, 0.07)  # (B, N, K)
    assert_close(loss(s, tp, IBOT_MASKS), torch.tensor(IBOT_FORWARD), rtol=1e-6, atol=1e-6)
    idx = IBOT_MASKS.flatten().nonzero().flatten()  # (M,)
    s_m, t_m = s.flatten(0, 1)[idx], tp.flatten(0, 1)[idx]  # (M, K)
    assert_close(
        loss.forward_masked(s_m, t_m, IBOT_MASKS), torch.tensor(IBOT_MASKED), rtol=1e-6, atol=1e-6
    )
    weights = (1 / IBOT_MASKS.sum(-1).clamp(min=1)).unsqueeze(-1).expand(4, 9)[IBOT_MASKS]  # (M,)
    padded_s = torch.cat([s_m, torch.randn(3, 8)])  # rows past n_masked_patches are ignored
    padded_t = torch.cat([t_m, torch.rand(3, 8)])
    assert_close(
        loss.forward_masked(
            padded_s, padded_t, IBOT_MASKS, n_masked_patches=len(idx), masks_weight=weights
        ),
        torch.tensor(IBOT_MASKED),
        rtol=1e-6,
        atol=1e-6,
    )


def test_ibot_center_update_equals_the_official_one():
    _, t = ibot_inputs()
    loss = iBOTPatchLoss(8)
    idx = IBOT_MASKS.flatten().nonzero().flatten()
    loss.update_center(
        t.flatten(0, 1)[idx].unsqueeze(0)
    )  # as ssl_meta_arch: the masked patches, (1, M, K)
    loss.update_center(t[:2])  # a (B, N, K) batch: mean over patches, then images
    assert loss.center.shape == (1, 1, 8)
    assert_close(loss.center.flatten(), torch.tensor(IBOT_CENTER), rtol=1e-6, atol=1e-7)


def test_ibot_loss_counts_only_masked_patches_each_image_weighing_the_same():
    s, t = ibot_inputs()
    loss = iBOTPatchLoss(8)
    tp = loss.softmax_center_teacher(t, 0.07)
    base = loss(s, tp, IBOT_MASKS)
    s2 = s.clone()
    s2[~IBOT_MASKS] = 100 * torch.randn(int((~IBOT_MASKS).sum()), 8)  # change every visible patch
    assert_close(loss(s2, tp, IBOT_MASKS), base)
    ce = -(tp * F.log_softmax(s / 0.1, dim=-1)).sum(-1)  # (B, N)
    per_image = [
        ce[b][IBOT_MASKS[b]].mean() if IBOT_MASKS[b].any() else torch.tensor(0.0) for b in range(4)
    ]
    assert_close(
        base, torch.stack(per_image).sum() / 4
    )  # the unmasked image counts as 0, in the mean over 4
    s.requires_grad_(True)
    loss(s, tp, IBOT_MASKS).backward()
    assert (s.grad[~IBOT_MASKS] == 0).all() and (s.grad[IBOT_MASKS].abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------- KoLeo


def test_koleo_equals_the_official_one():
    koleo = KoLeoLoss()
    assert_close(
        koleo(2 * torch.randn(5, 6, generator=gen(3))), torch.tensor(KOLEO), rtol=1e-6, atol=1e-6
    )
    x = torch.randn(6, 16, generator=gen(4))
    x[3] = x[1]  # two identical features: a distance of 0, kept finite by eps
    assert_close(koleo(x), torch.tensor(KOLEO_DUP), rtol=1e-6, atol=1e-6)


def test_koleo_decreases_as_points_spread_and_ignores_length():
    koleo = KoLeoLoss()
    x = torch.randn(16, 8, generator=gen(8))
    clustered = F.normalize(torch.ones(8), dim=0) + 0.05 * x  # (16, 8) all near one direction
    assert koleo(x) < koleo(clustered)
    assert_close(koleo(3 * x), koleo(x))  # only directions count: features are normalised
    eye = torch.eye(4)  # 4 orthogonal unit vectors: every nearest neighbour at sqrt(2)
    assert_close(koleo(eye), torch.tensor(-math.log(math.sqrt(2))), rtol=1e-6, atol=1e-6)
    x.requires_grad_(True)
    koleo(x).backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- DINOv2's CLS loss


def test_dinov2_cls_loss_is_dino_loss_with_the_teachers_probabilities():
    """ssl_meta_arch sums the cross-entropies of local crops x 2 teacher views and of each global
    crop against the other view's teacher, divided by the number of terms: DINOLoss.forward,
    given the teacher's probs."""
    B, K, nlocal = 3, 16, 2
    g = gen(5)
    s = 2 * torch.randn(
        (2 + nlocal) * B, K, generator=g
    )  # (ncrops B, K): 2 global crops, then the locals
    t = 0.5 * torch.randn(2 * B, K, generator=g)  # (2B, K)
    center = 0.1 * torch.randn(1, K, generator=g)
    loss = DINOLoss(K, 2 + nlocal, 0.04, 0.04, 0, 1)
    loss.center.copy_(center)
    assert_close(loss(s, t, 0), torch.tensor(CLS_CENTERING), rtol=1e-6, atol=1e-5)
    probs = sinkhorn_knopp_teacher(t, 0.04)  # (2B, K)
    assert_close(loss(s, t, 0, teacher_probs=probs), torch.tensor(CLS_SK), rtol=1e-6, atol=1e-5)
