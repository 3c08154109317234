"""The exercise checks of notebook 10: each accepts the finished version and two rewrites of it,
rejects the stub, and names the mistake of typical wrong versions (small functions below, written
the way a learner would)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from vitdino_core import exercises as ex
from vitdino_core.exercises import ExerciseMistake, dinov2


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


def masks_per_batch(*a):
    return masks_stratified(*a, per_image=False)


def masks_every_image(*a):
    return masks_stratified(*a, n_masked=a[0])


def masks_whole_range(*a):
    return masks_stratified(*a, stratified=False)


def masks_scattered(*a):
    return masks_stratified(*a, blocks=False)


def masks_not_shuffled(*a):
    return masks_stratified(*a, shuffle=False)


def masks_not_flattened(*a):
    return masks_stratified(*a, flatten=False)


def masks_float(*a):
    return masks_stratified(*a, dtype=torch.float32)


def masks_one_short(n, N, g, r, p):
    return masks_stratified(n, N, g, r, p, n_masked=int(n * p) - 1)


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


def ibot_softmax(s, t, masks, temp=0.1):
    m = masks.float()
    ce = -(t * F.softmax(s / temp, dim=-1)).sum(-1)  # (B, N)
    return ((ce * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


def ibot_in_place(s, t, masks, temp=0.1):
    s /= temp  # changes the caller's logits
    return ibot_rewrite_loop(s, t, masks, 1.0)


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


def sk_columns_first(t, T, n=3):
    return sk_general(t, T, n, columns_first=True)


def sk_no_final(t, T, n=3):
    return sk_general(t, T, n, final=False)


def sk_final_k(t, T, n=3):
    return sk_general(t, T, n) * t.shape[1] / t.shape[0]


def sk_no_temp(t, T, n=3):
    return sk_general(t, T, n, use_temp=False)


def sk_always_3(t, T, n=3):
    return sk_general(t, T, n, iterations=3)


def sk_sample_max(t, T, n=3):
    return sk_general(t - t.max(dim=1, keepdim=True).values, T, n)


def sk_softmax(t, T, n=3):
    return F.softmax(t / T, dim=-1)


def sk_k_by_b(t, T, n=3):
    return sk_general(t, T, n).t()


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


def koleo_not_normalised(x):
    return _koleo(x, normalize=False)


def koleo_self(x):
    return _koleo(x, skip_self=False)


def koleo_squared(x):
    return _koleo(x, square=True)


def koleo_sign(x):
    return -_koleo(x)


def koleo_farthest(x):
    return _koleo(x, farthest=True)


def koleo_sum(x):
    return _koleo(x, reduce="sum")


def koleo_log_of_mean(x):
    u = F.normalize(x, dim=-1)  # (B, D)
    d = torch.cdist(u, u) + torch.diag(torch.full((len(x),), float("inf")))  # (B, B)
    return -torch.log(d.min(1).values.mean())


def koleo_dim0(x):
    return _koleo(F.normalize(x, dim=0), normalize=False)


def koleo_in_place(x):
    x /= x.norm(dim=1, keepdim=True)  # changes the caller's features
    return koleo_rewrite_loop(x)


# ----------------------------------------------------------------------------- the tests

PASSES = {
    "masking": [masks_stratified, masks_rewrite_sample],
    "ibot_loss": [ibot_rewrite_indexing, ibot_rewrite_loop],
    "sinkhorn_knopp": [sk_rewrite_batch_first, sk_rewrite_double],
    "koleo": [koleo_rewrite_cdist, koleo_rewrite_loop],
}

WRONG = {
    "masking": [
        (masks_per_batch, "not the batch's"),
        (masks_every_image, "images are masked; mask only"),
        (masks_whole_range, "do not spread over the range"),
        (masks_scattered, "scattered, not in blocks"),
        (masks_not_shuffled, "always the first ones"),
        (masks_not_flattened, "flatten each image's (h, w) mask"),
        (masks_float, "return a bool tensor"),
        (masks_one_short, "should be (not a coin per image)"),
    ],
    "ibot_loss": [
        (ibot_all, "average the cross-entropy over the MASKED patches only"),
        (ibot_flat, "one mean over all masked patches of the batch"),
        (ibot_masked_images, "divided by the number of masked images"),
        (ibot_visible, "the visible patches count instead of the masked ones"),
        (ibot_no_temp, "not divided by student_temp"),
        (ibot_sign, "the sign is flipped"),
        (ibot_sum, "each image's masked patches are summed"),
        (ibot_softmax, "softmax where the log-softmax belongs"),
        (ibot_in_place, "an input was changed in place"),
    ],
    "sinkhorn_knopp": [
        (sk_columns_first, "the samples are normalised before the prototypes"),
        (sk_no_final, "the final multiply by B is missing"),
        (sk_final_k, "the final multiply is by K"),
        (sk_no_temp, "exp without the temperature"),
        (sk_always_3, "iterations instead of n_iterations"),
        (sk_sample_max, "each sample's max is subtracted"),
        (sk_softmax, "that is the plain softmax"),
        (sk_k_by_b, "is K-by-B: transpose Q back"),
    ],
    "koleo": [
        (koleo_not_normalised, "not L2-normalised"),
        (koleo_self, "its own nearest neighbour"),
        (koleo_squared, "log of the squared distance"),
        (koleo_sign, "the sign is flipped"),
        (koleo_farthest, "the farthest point, not the nearest"),
        (koleo_sum, "summed over the batch"),
        (koleo_log_of_mean, "the log of the mean distance"),
        (koleo_dim0, "normalised over the batch (dim=0)"),
        (koleo_in_place, "the features were changed in place"),
    ],
}

assert set(PASSES) == set(WRONG) == set(dinov2.DINOV2_EXERCISES)


def test_every_exercise_has_a_check_a_reference_rewrites_and_wrong_answers():
    assert dinov2.DINOV2_EXERCISES == ["masking", "ibot_loss", "sinkhorn_knopp", "koleo"]
    for name in dinov2.DINOV2_EXERCISES:
        assert getattr(ex, f"check_{name}").exercise == name  # re-exported from the package
        assert ex.REFERENCES[name] is getattr(ex, f"reference_{name}")
        assert len(PASSES[name]) >= 2 and len(WRONG[name]) >= 4, name


@pytest.mark.parametrize("name", dinov2.DINOV2_EXERCISES)
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
    assert capsys.readouterr().out.startswith(f"ok: {name}")
    assert ex.passed(name)


def test_swapping_the_constants_1_over_k_and_1_over_b_is_no_mistake(capsys):
    """Each constant divisor is undone by the next normalisation; only the final multiply by B
    counts."""
    ex.check_sinkhorn_knopp(lambda t, T, n=3: sk_general(t, T, n, swap_sizes=True))
    assert capsys.readouterr().out.startswith("ok: sinkhorn_knopp")


@pytest.mark.parametrize("name", dinov2.DINOV2_EXERCISES)
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


def test_checks_leave_the_learners_random_state_alone():
    """The masking check seeds Python's random and torch's generator; both come back as they were,
    also when the check fails."""
    random.seed(123)
    torch.manual_seed(123)
    ex.check_masking(ex.reference_masking)
    ex.check_sinkhorn_knopp(ex.reference_sinkhorn_knopp)
    with pytest.raises(ExerciseMistake):
        ex.check_masking(masks_not_shuffled)
    assert random.random() == random.Random(123).random()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))
