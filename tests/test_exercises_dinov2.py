"""The exercise checks of notebook 10: each accepts the finished version and two rewrites of it,
rejects the stub, and names the mistake of typical wrong versions (small functions below, written
the way a learner would)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from vitdino_core.exercises import ExerciseMistake
from vitdino_core.exercises import dinov2 as ex


def stub(*args, **kwargs):
    raise NotImplementedError("write this function")


# ----------------------------------------------------------------------------- masking


def masks_stratified(
    n_images,
    n_tokens,
    mask_generator,
    mask_ratio_tuple=(0.1, 0.5),
    mask_probability=0.5,
    stratified=True,
    shuffle=True,
    per_image=True,
    blocks=True,
    n_masked=None,
    flatten=True,
    dtype=torch.bool,
):
    n_masked = int(n_images * mask_probability) if n_masked is None else n_masked
    lo, hi = mask_ratio_tuple
    edges = torch.linspace(lo, hi, n_masked + 1).tolist()
    masks = []
    for i in range(n_masked):
        r = random.uniform(edges[i], edges[i + 1]) if stratified else random.uniform(lo, hi)
        count = int(n_tokens * r) if per_image else int(n_images * n_tokens * r)
        if blocks:
            masks.append(mask_generator(count))
        else:
            flat = torch.zeros(n_tokens, dtype=torch.bool)
            flat[torch.randperm(n_tokens)[:count]] = True
            masks.append(flat.view(mask_generator.get_shape()))
    masks += [mask_generator(0) for _ in range(n_images - n_masked)]
    if shuffle:
        random.shuffle(masks)
    out = torch.stack(masks)  # (n_images, h, w)
    return (out.flatten(1) if flatten else out).to(dtype)


def masks_rewrite_sample(
    n_images, n_tokens, mask_generator, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5
):
    """Chooses which images to mask with random.sample instead of shuffling a list."""
    n_masked = int(n_images * mask_probability)
    ratios = torch.linspace(*mask_ratio_tuple, n_masked + 1)  # (n_masked + 1,)
    lows = ratios[:-1] + (ratios[1:] - ratios[:-1]) * torch.rand(n_masked)  # one ratio per slice
    chosen = random.sample(range(n_images), n_masked)
    out = torch.zeros(n_images, n_tokens, dtype=torch.bool)
    for image, r in zip(chosen, lows.tolist()):
        out[image] = mask_generator(int(n_tokens * r)).flatten()
    return out


MASKING_WRONG = {
    "ratio over the batch": (lambda *a: masks_stratified(*a, per_image=False), "not the batch's"),
    "every image masked": (
        lambda *a: masks_stratified(*a, n_masked=a[0]),
        "images are masked; mask only",
    ),
    "whole range": (
        lambda *a: masks_stratified(*a, stratified=False),
        "do not spread over the range",
    ),
    "scattered": (lambda *a: masks_stratified(*a, blocks=False), "scattered, not in blocks"),
    "not shuffled": (lambda *a: masks_stratified(*a, shuffle=False), "always the first ones"),
    "not flattened": (
        lambda *a: masks_stratified(*a, flatten=False),
        "flatten each image's (h, w) mask",
    ),
    "not bool": (lambda *a: masks_stratified(*a, dtype=torch.float32), "return a bool tensor"),
    "a coin per image": (
        lambda n, N, g, r, p: masks_stratified(n, N, g, r, p, n_masked=int(n * p) - 1),
        "should be (not a coin per image)",
    ),
}


# ----------------------------------------------------------------------------- iBOT


def _ce(s, t, temp):
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1)  # (B, N)


def ibot_rewrite_indexing(s, t, masks, temp=0.1):
    """Works on the masked patches only, as DINOv2's forward_masked does."""
    ce = _ce(s[masks], t[masks], temp)  # (M,)
    weight = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]  # (M,)
    return (ce * weight).sum() / masks.shape[0]


def ibot_rewrite_loop(s, t, masks, temp=0.1):
    total = 0.0
    for b in range(len(s)):
        if masks[b].any():
            total = total + _ce(s[b][masks[b]], t[b][masks[b]], temp).mean()
    return total / len(s)


def ibot_all(s, t, masks, temp=0.1):
    return _ce(s, t, temp).mean()


def ibot_flat(s, t, masks, temp=0.1):
    return _ce(s, t, temp)[masks].mean()


def ibot_masked_images(s, t, masks, temp=0.1):
    m = masks.float()
    per = (_ce(s, t, temp) * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per[masks.any(-1)].mean()


def ibot_visible(s, t, masks, temp=0.1):
    return ibot_rewrite_loop(s, t, ~masks, temp)


def ibot_no_temp(s, t, masks, temp=0.1):
    return ibot_rewrite_loop(s, t, masks, 1.0)


def ibot_sign(s, t, masks, temp=0.1):
    return -ibot_rewrite_loop(s, t, masks, temp)


def ibot_sum(s, t, masks, temp=0.1):
    return (_ce(s, t, temp) * masks.float()).sum(-1).mean()


IBOT_WRONG = {
    ibot_all: "average the cross-entropy over the MASKED patches only",
    ibot_flat: "one mean over all masked patches of the batch",
    ibot_masked_images: "divided by the number of masked images",
    ibot_visible: "the visible patches count instead of the masked ones",
    ibot_no_temp: "not divided by student_temp",
    ibot_sign: "the sign is flipped",
    ibot_sum: "each image's masked patches are summed",
}


# ----------------------------------------------------------------------------- Sinkhorn-Knopp


def sk_general(
    t,
    temp,
    n_iterations=3,
    columns_first=False,
    final=True,
    swap_sizes=False,
    use_temp=True,
    iterations=None,
):
    Q = torch.exp(t / (temp if use_temp else 1.0)).t()  # (K, B)
    K, B = Q.shape
    rows, cols = (B, K) if swap_sizes else (K, B)
    Q = Q / Q.sum()
    for _ in range(n_iterations if iterations is None else iterations):
        if columns_first:
            Q = Q / Q.sum(0, keepdim=True) / cols
            Q = Q / Q.sum(1, keepdim=True) / rows
        else:
            Q = Q / Q.sum(1, keepdim=True) / rows
            Q = Q / Q.sum(0, keepdim=True) / cols
    return (Q * cols if final else Q).t()


def sk_rewrite_batch_first(t, temp, n_iterations=3):
    """In the (B, K) layout, stabilised with the overall max, without the first normalisation."""
    P = torch.exp((t - t.max()) / temp)  # (B, K)
    B, K = P.shape
    for _ in range(n_iterations):
        P = P / P.sum(dim=0, keepdim=True) / K  # each prototype: 1/K
        P = P / P.sum(dim=1, keepdim=True) / B  # each sample: 1/B
    return P * B


def sk_rewrite_double(t, temp, n_iterations=3):
    return sk_general(t.double(), temp, n_iterations).float()


SK_WRONG = {
    (
        lambda t, T, n=3: sk_general(t, T, n, columns_first=True)
    ): "the samples are normalised before the prototypes",
    (lambda t, T, n=3: sk_general(t, T, n, final=False)): "the final multiply by B is missing",
    (lambda t, T, n=3: sk_general(t, T, n) * t.shape[1] / t.shape[0]): "the final multiply is by K",
    (lambda t, T, n=3: sk_general(t, T, n, use_temp=False)): "exp without the temperature",
    (lambda t, T, n=3: sk_general(t, T, n, iterations=3)): "iterations instead of n_iterations",
    (
        lambda t, T, n=3: sk_general(t - t.max(dim=1, keepdim=True).values, T, n)
    ): "each sample's max is subtracted",
    (lambda t, T, n=3: F.softmax(t / T, dim=-1)): "that is the plain softmax",
    (lambda t, T, n=3: sk_general(t, T, n).t()): "is K-by-B: transpose Q back",
}


# ----------------------------------------------------------------------------- KoLeo


def koleo_rewrite_cdist(x):
    u = F.normalize(x, dim=-1)  # (B, D)
    d = torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")  # (B, B)
    d = d + torch.diag(torch.full((len(u),), float("inf")))
    return -torch.log(d.min(dim=1).values + 1e-8).mean()


def koleo_rewrite_loop(x):
    u = x / x.norm(dim=1, keepdim=True)
    logs = []
    for i in range(len(u)):
        others = torch.cat([u[:i], u[i + 1 :]])
        logs.append(torch.log((others - u[i]).norm(dim=1).min() + 1e-8))
    return -torch.stack(logs).mean()


def _koleo(x, normalize=True, skip_self=True, square=False, farthest=False, reduce="mean"):
    u = F.normalize(x, dim=-1) if normalize else x
    d = torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")  # (B, B)
    if skip_self:
        d = d + torch.diag(torch.full((len(u),), -float("inf") if farthest else float("inf")))
    nearest = d.max(dim=1).values if farthest else d.min(dim=1).values  # (B,)
    logs = torch.log(nearest ** (2 if square else 1) + 1e-8)
    return -(logs.sum() if reduce == "sum" else logs.mean())


KOLEO_WRONG = {
    (lambda x: _koleo(x, normalize=False)): "not L2-normalised",
    (lambda x: _koleo(x, skip_self=False)): "its own nearest neighbour",
    (lambda x: _koleo(x, square=True)): "log of the squared distance",
    (lambda x: -_koleo(x)): "the sign is flipped",
    (lambda x: _koleo(x, farthest=True)): "the farthest point, not the nearest",
    (lambda x: _koleo(x, reduce="sum")): "summed over the batch",
    (
        lambda x: (
            -torch.log(
                torch.cdist(F.normalize(x, dim=-1), F.normalize(x, dim=-1))
                .add(torch.diag(torch.full((len(x),), float("inf"))))
                .min(1)
                .values.mean()
            )
        )
    ): "the log of the mean distance",
    (lambda x: _koleo(F.normalize(x, dim=0), normalize=False)): "normalised over the batch (dim=0)",
}


# ----------------------------------------------------------------------------- the tests

CHECKS = {
    "masking": (ex.check_masking, ex.reference_masking, [masks_stratified, masks_rewrite_sample]),
    "ibot_loss": (
        ex.check_ibot_loss,
        ex.reference_ibot_loss,
        [ibot_rewrite_indexing, ibot_rewrite_loop],
    ),
    "sinkhorn_knopp": (
        ex.check_sinkhorn_knopp,
        ex.reference_sinkhorn_knopp,
        [sk_rewrite_batch_first, sk_rewrite_double],
    ),
    "koleo": (ex.check_koleo, ex.reference_koleo, [koleo_rewrite_cdist, koleo_rewrite_loop]),
}
WRONG = {
    "masking": [(fn, message) for fn, message in MASKING_WRONG.values()],
    "ibot_loss": list(IBOT_WRONG.items()),
    "sinkhorn_knopp": list(SK_WRONG.items()),
    "koleo": list(KOLEO_WRONG.items()),
}


def test_swapping_the_constants_1_over_k_and_1_over_b_is_no_mistake(capsys):
    """Each constant divisor is undone by the next normalisation; only the final multiply by B counts."""
    ex.check_sinkhorn_knopp(lambda t, T, n=3: sk_general(t, T, n, swap_sizes=True))
    assert capsys.readouterr().out.startswith("ok: sinkhorn_knopp")


def test_every_exercise_has_a_check_and_a_reference():
    assert set(CHECKS) == set(ex.DINOV2_EXERCISES)
    for name in ex.DINOV2_EXERCISES:
        assert getattr(ex, f"check_{name}").exercise == name


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_accepts_the_reference_and_rewrites(name, capsys):
    check_fn, reference_fn, rewrites = CHECKS[name]
    for fn in [reference_fn, *rewrites]:
        check_fn(fn)
        assert capsys.readouterr().out.startswith(f"ok: {name}")


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_rejects_the_stub(name):
    with pytest.raises(ExerciseMistake, match=f"{name}: not written yet"):
        CHECKS[name][0](stub)


@pytest.mark.parametrize(
    "name, wrong, message",
    [(n, fn, m) for n in WRONG for fn, m in WRONG[n]],
    ids=[f"{n}-{i}" for n in WRONG for i in range(len(WRONG[n]))],
)
def test_check_names_the_mistake(name, wrong, message):
    with pytest.raises(ExerciseMistake) as info:
        CHECKS[name][0](wrong)
    assert str(info.value).startswith(f"{name}: ") and message in str(info.value), str(info.value)


def test_checks_leave_the_learners_random_state_alone():
    random.seed(123)
    torch.manual_seed(123)
    ex.check_masking(ex.reference_masking)
    ex.check_sinkhorn_knopp(ex.reference_sinkhorn_knopp)
    assert random.random() == random.Random(123).random()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))
