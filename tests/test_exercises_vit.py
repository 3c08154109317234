"""The exercise checks of notebooks 01-04, and the machinery every check shares: each check accepts
the reference and equivalent rewrites, recognises the stub, and names the mistake of realistic
wrong answers (written here the way a learner might)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

import vitdino_core.exercises as ex
from vitdino_core.exercises import ExerciseMistake
from vitdino_core.exercises.vit import VIT_EXERCISES
from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD, flip_and_color_jitter, gaussian_blur
from vitdino_core.patch_embedding import patchify
from vitdino_core.vision_transformer import drop_path


@pytest.fixture(autouse=True)
def fresh_status():
    ex.reset()
    yield
    ex.reset()


def run_check(name: str, fn) -> str:
    """Run check_<name>(fn); return the mistake's message ('' when it passed)."""
    try:
        getattr(ex, f"check_{name}")(fn)
    except ExerciseMistake as e:
        assert ex.STATUS[name] in ("failed", "todo")
        return str(e)
    assert ex.STATUS[name] == "passed"
    return ""


# ---- the shared machinery ---------------------------------------------------------------------


def test_every_check_is_exported_and_has_a_reference():
    assert len(VIT_EXERCISES) == 11
    for name in VIT_EXERCISES:
        assert getattr(ex, f"check_{name}").exercise == name
        assert ex.REFERENCES[name] is getattr(ex, f"reference_{name}")


def test_a_check_that_passes_a_stub_is_reported_broken():
    @ex.check("always_passes")
    def check_always_passes(fn):
        try:
            fn()
        except Exception:  # a careless check that swallows the stub's NotImplementedError
            pass
        return "fine"

    def stub():
        raise NotImplementedError("do it")

    with pytest.raises(ExerciseMistake, match="still raises NotImplementedError"):
        check_always_passes(stub)
    assert ex.STATUS["always_passes"] == "broken"
    with pytest.raises(AssertionError, match="passed a stub"):
        ex.assert_checked(["always_passes"])


def test_assert_checked_fails_when_a_check_never_ran():
    run_check("mlp", ex.REFERENCES["mlp"])
    ex.assert_checked(["mlp"])
    with pytest.raises(AssertionError, match="never ran.*attention"):
        ex.assert_checked(["mlp", "attention"])


def test_pick_uses_the_learners_function_only_after_its_check_passed(capsys):
    def mine(x, fc1, fc2):
        return fc2(F.gelu(fc1(x)))

    assert ex.pick("mlp", mine) is ex.reference_mlp
    assert "using vitdino_core's version" in capsys.readouterr().out
    run_check("mlp", mine)
    assert ex.pick("mlp", mine) is mine
    with pytest.raises(KeyError, match="no core version"):
        ex.pick("no_such_exercise", mine)


def test_close_is_one_rule_for_tensors_lists_and_exact_types():
    a = torch.tensor([1.0, 100.0])
    assert ex.close(a + torch.tensor([5e-4, 0.0]), a)  # within 1e-5 of the largest value
    assert not ex.close(a + torch.tensor([5e-3, 0.0]), a)
    assert ex.close([a, a.long()], [a.double(), a.long()])
    assert not ex.close(torch.tensor([True, False]), torch.tensor([True, True]))
    assert not ex.close(a[:1], a)
    assert (
        ex.first_match(
            a, {"skipped": None, "crashes": lambda: 1 / 0, "twice": a * 2, "same": lambda: a}
        )
        == "same"
    )


def test_checks_leave_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name in ("drop_path", "block", "local_view"):
        run_check(name, ex.REFERENCES[name])
    assert torch.equal(torch.rand(3), expected)


def _mistake_from(fn):
    try:
        ex.check_patchify(fn)
    except ExerciseMistake as e:
        return e
    raise AssertionError("the check passed")


def test_render_traceback_shows_the_mistake_and_the_learners_line_not_the_checker():
    def wrong(x, p):  # a learner's plain reshape
        return x.reshape(x.shape[0], -1, x.shape[1] * p * p)

    lines = _mistake_from(wrong)._render_traceback_()
    text = "\n".join(lines)
    assert lines[-1].startswith("ExerciseMistake: patchify: a plain reshape mixes pixels")
    assert "vitdino_core/exercises" not in text  # no frame of the checker
    assert __file__ in text and "_mistake_from" in text  # the cell that called the check


def test_render_traceback_of_a_crash_shows_the_learners_frame_and_keeps_the_error_chained():
    def crashes(images, patch):
        return images.reshape(7, -1)  # an impossible reshape

    err = _mistake_from(crashes)
    assert "your function raised RuntimeError" in str(err)
    assert isinstance(err.__cause__, RuntimeError)  # the original error, for a debugger
    text = "\n".join(err._render_traceback_())
    assert "Your code raised an error here" in text and "images.reshape(7, -1)" in text
    assert "vitdino_core/exercises" not in text and "torch/" not in text
    assert text.splitlines()[-1].startswith(
        "ExerciseMistake: patchify: your function raised RuntimeError"
    )


def test_the_stub_and_a_wrong_answer_render_one_message_line():
    def stub(x, p):
        raise NotImplementedError("split into patches")

    err = _mistake_from(stub)
    assert (
        err.__cause__ is None
        and err._render_traceback_()[-1]
        == "ExerciseMistake: patchify: not written yet - split into patches"
    )
    assert sys.modules["vitdino_core.exercises"].STATUS["patchify"] == "todo"


# ---- per check: the reference and rewrites pass; the stub and wrong answers are named ----------


def _patchify_permuted(order):
    def fn(x, p):
        B, C, H, W = x.shape
        return (
            x.reshape(B, C, H // p, p, W // p, p)
            .permute(*order)
            .reshape(B, (H // p) * (W // p), C * p * p)
        )

    return fn


def _patchify_loops(x, p):
    B, C, H, W = x.shape
    return torch.stack(
        [
            x[:, :, i : i + p, j : j + p].reshape(B, -1)
            for i in range(0, H - H % p, p)
            for j in range(0, W - W % p, p)
        ],
        1,
    )


def _attention(scale_fn=lambda d: d**-0.5, dim=-1, after=False, always=False):
    def fn(q, k, v, scale=True):
        s = q @ k.transpose(-2, -1)
        r = scale_fn(q.shape[-1]) if (scale or always) else 1.0
        w = (s.softmax(dim=dim) * r) if after else (s * r).softmax(dim=dim)
        return w @ v, w

    return fn


def _attention_einsum(q, k, v, scale=True):
    w = torch.einsum("...nd,...md->...nm", q / math.sqrt(q.shape[-1]) if scale else q, k).softmax(
        -1
    )
    return torch.einsum("...nm,...md->...nd", w, v), w


def _attention_sdpa(q, k, v, scale=True):
    s = 1.0 if not scale else None
    w = (q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale else 1.0)).softmax(-1)
    return F.scaled_dot_product_attention(q, k, v, scale=s), w


def _mha_wrong(**variant):
    def fn(x, qkv, proj, num_heads):
        return ex.vit._mha_variant(x, qkv, proj, num_heads, **variant)

    return fn


def _mha_loop(x, qkv, proj, num_heads):
    B, N, D = x.shape
    d = D // num_heads
    q, k, v = qkv(x).chunk(3, dim=-1)  # 3 x (B, N, D)
    outs, maps = [], []
    for h in range(num_heads):
        sl = slice(h * d, (h + 1) * d)
        w = (q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)).softmax(-1)  # (B, N, N)
        outs.append(w @ v[..., sl])
        maps.append(w)
    return proj(torch.cat(outs, -1)), torch.stack(maps, 1)


def _mha_sdpa(x, qkv, proj, num_heads):
    B, N, D = x.shape
    q, k, v = qkv(x).view(B, N, 3, num_heads, -1).unbind(2)  # 3 x (B, N, H, d)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
    w = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    return proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)), w


def _mha_mean_heads(x, qkv, proj, num_heads):
    out, w = ex.reference_multi_head_attention(x, qkv, proj, num_heads)
    return out, w.mean(1)


def _drop_path(scale=True, in_eval=False, per_element=False, swapped=False, in_place=False):
    def fn(x, p, training):
        if p == 0 or (not training and not in_eval):
            return x
        keep = p if swapped else 1 - p
        shape = x.shape if per_element else (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (keep + torch.rand(shape)).floor()
        if in_place:
            return x.mul_(mask / keep)
        return x * mask / keep if scale else x * mask

    return fn


def _drop_path_bernoulli(x, p, training):  # other coins than the core's: still right
    if not training or p == 0:
        return x
    mask = torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.ndim - 1), 1 - p))
    return x * mask / (1 - p)


def _drop_path_where(x, p, training):
    if not training or p == 0:
        return x.clone()
    dropped = torch.rand(x.shape[0], device=x.device) < p  # (B,)
    return torch.where(dropped.view(-1, *([1] * (x.ndim - 1))), torch.zeros_like(x), x / (1 - p))


def _block(dp=drop_path, order="pre", in_place=False):
    def fn(x, blk, drop_prob=0.0, training=False):
        if order == "post":
            x = blk.norm1(x + blk.attn(x))
            return blk.norm2(x + blk.mlp(x))
        if in_place:
            x += dp(blk.attn(blk.norm1(x)), drop_prob, training)
            return x + dp(blk.mlp(blk.norm2(x)), drop_prob, training)
        h = blk.norm1(x)
        x = x + dp(blk.attn(h), drop_prob, training)
        return x + dp(blk.mlp(blk.norm2(x)), drop_prob, training)

    return fn


def _block_whole_output(x, blk, drop_prob=0.0, training=False):
    return drop_path(ex.reference_block(x, blk), drop_prob, training)


def _tokens_through_blocks(x, vit):
    z = ex.reference_prepare_tokens(x, vit.patch_embed, vit.cls_token, vit.pos_embed)
    for blk in vit.blocks:
        z = blk(z)
    return z


def _local(
    size, scale, interpolation=v2.InterpolationMode.BICUBIC, blur=0.5, norm=True, jitter=True
):
    steps = [v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True)]
    steps += [flip_and_color_jitter()] if jitter else []
    steps += [gaussian_blur(blur), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps + ([v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if norm else []))


def _local_spelled_out(size, scale):
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            v2.RandomGrayscale(p=0.2),
            gaussian_blur(0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _stack_image_major(crops):
    return [
        torch.stack([views[v] for views in crops for v in range(2)]),
        torch.stack([views[v] for views in crops for v in range(2, len(views))]),
    ]


def _stack_by_cat(crops):
    V = len(crops[0])
    return [
        torch.cat([torch.stack([c[v] for c in crops]) for v in range(2)]),
        torch.cat([torch.stack([c[v] for c in crops]) for v in range(2, V)]),
    ]


def _stack_by_size(crops):
    views = [v for i in range(len(crops[0])) for v in (c[i] for c in crops)]  # view-major
    sizes = sorted({t.shape[-1] for t in views}, reverse=True)
    return [torch.stack([t for t in views if t.shape[-1] == s]) for s in sizes]


PASSES = {
    "patchify": [lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2), _patchify_loops],
    "patch_embed": [
        lambda x, w, b, p: F.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2),
        lambda x, w, b, p: patchify(x, p) @ w.flatten(1).T + b,
        lambda x, w, b, p: (
            torch.einsum(
                "bnk,dk->bnd", F.unfold(x, p, stride=p).transpose(1, 2), w.reshape(w.shape[0], -1)
            )
            + b
        ),
    ],
    "attention": [_attention_einsum, _attention_sdpa, _attention()],
    "multi_head_attention": [_mha_loop, _mha_sdpa],
    "mlp": [
        lambda x, fc1, fc2: nn.Sequential(fc1, nn.GELU(), fc2)(x),
        lambda x, fc1, fc2: F.linear(
            0.5 * (h := F.linear(x, fc1.weight, fc1.bias)) * (1 + torch.erf(h / 2**0.5)),
            fc2.weight,
            fc2.bias,
        ),
    ],
    "drop_path": [_drop_path(), _drop_path_bernoulli, _drop_path_where],
    "block": [_block(), _block(dp=_drop_path_bernoulli), _block(dp=_drop_path_where)],
    "prepare_tokens": [
        lambda x, pe, cls, pos: torch.cat([cls.repeat(x.shape[0], 1, 1), pe(x)], 1) + pos,
        lambda x, pe, cls, pos: torch.cat(
            [(cls + pos[:, :1]).expand(x.shape[0], -1, -1), pe(x) + pos[:, 1:]], 1
        ),
    ],
    "vit_forward": [
        lambda x, vit: vit.norm(_tokens_through_blocks(x, vit))[:, 0],
        lambda x, vit: vit(x),
    ],
    "local_view": [_local_spelled_out, lambda size, scale: _local(size, scale)],
    "stack_views": [_stack_by_cat, _stack_by_size],
}


WRONG = {
    "patchify": [
        (_patchify_permuted((0, 2, 4, 3, 5, 1)), "flattened channel-last"),
        (_patchify_permuted((0, 4, 2, 1, 3, 5)), "column by column"),
        (_patchify_permuted((0, 2, 4, 1, 5, 3)), "rows and columns inside each patch are swapped"),
        (
            lambda x, p: x.reshape(x.shape[0], -1, x.shape[1] * p * p),
            "a plain reshape mixes pixels",
        ),
        (
            lambda x, p: _patchify_permuted((0, 2, 4, 1, 3, 5))(x, p).transpose(1, 2),
            "N and C*p*p look swapped",
        ),
        (
            lambda x, p: _patchify_permuted((0, 2, 4, 1, 3, 5))(x, p).reshape(
                x.shape[0], x.shape[2] // p, x.shape[3] // p, -1
            ),
            "keeps the grid",
        ),
    ],
    "patch_embed": [
        (lambda x, w, b, p: patchify(x, p) @ w.reshape(w.shape[0], -1).T, "bias is missing"),
        (
            lambda x, w, b, p: patchify(x, p) @ w.reshape(w.shape[0], -1).T + 2 * b,
            "bias is added twice",
        ),
        (
            lambda x, w, b, p: patchify(x, p) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + b,
            "flattened in another order",
        ),
        (lambda x, w, b, p: F.conv2d(x, w, b, stride=p).flatten(2), "N and D look swapped"),
        (
            lambda x, w, b, p: (
                patchify(x.mul_(1.0), p) @ w.reshape(w.shape[0], -1).T + b + 0 * x.add_(1).sum()
            ),
            "changed its inputs in place",
        ),
    ],
    "attention": [
        (_attention(dim=-2), "softmax over the wrong axis"),
        (_attention(after=True), "scaled after the softmax"),
        (_attention(scale_fn=lambda d: 1.0), "missing 1/sqrt(d)"),
        (_attention(scale_fn=lambda d: 1 / d), "divided by d"),
        (_attention(scale_fn=lambda d: math.sqrt(d)), "multiplied by sqrt(d)"),
        (_attention(always=True), "scale=False is ignored"),
        (lambda q, k, v, scale=True: _attention()(q, k, v, scale)[0], "return two tensors"),
        (
            lambda q, k, v, scale=True: (
                (w := _attention()(q, k, v, scale)[1]).transpose(-2, -1) @ v,
                w,
            ),
            "transposed before multiplying the values",
        ),
    ],
    "multi_head_attention": [
        (_mha_wrong(split="interleaved"), "split in the wrong order"),
        (_mha_wrong(split="no_transpose"), "heads split wrongly"),
        (_mha_wrong(merge="no_transpose"), "heads merged wrongly"),
        (_mha_wrong(use_proj=False), "projection is missing"),
        (
            lambda x, qkv, proj, H: ex.vit._mha_variant(x, qkv, proj, H, scale=x.shape[-1] ** -0.5),
            "not 1/sqrt(D)",
        ),
        (_mha_mean_heads, "averaged over the heads"),
    ],
    "mlp": [
        (lambda x, fc1, fc2: fc2(F.relu(fc1(x))), "ReLU"),
        (lambda x, fc1, fc2: fc2(F.gelu(fc1(x), approximate="tanh")), "tanh approximation"),
        (lambda x, fc1, fc2: fc2(fc1(x)), "no activation"),
        (lambda x, fc1, fc2: F.gelu(fc2(F.gelu(fc1(x)))), "activation after fc2"),
        (lambda x, fc1, fc2: fc2(fc1(F.gelu(x))), "applied to the input"),
    ],
    "drop_path": [
        (_drop_path(scale=False), "not rescaled"),
        (_drop_path(in_eval=True), "drops in eval mode"),
        (_drop_path(per_element=True), "single values are dropped"),
        (_drop_path(swapped=True), "keep probability swapped"),
        (_drop_path(in_place=True), "in place (training=True"),
        (
            lambda x, p, training: (
                x * (1 - p) * (1 - p + torch.rand(x.shape[0], *([1] * (x.ndim - 1)))).floor()
                if training
                else x
            ),
            "multiplied by 1 - p",
        ),
    ],
    "block": [
        (_block(order="post"), "post-norm"),
        (
            lambda x, blk, p=0.0, t=False: blk.mlp(blk.norm2(blk.attn(blk.norm1(x)))),
            "residual connections",
        ),
        (
            lambda x, blk, p=0.0, t=False: x + blk.attn(blk.norm1(x)) + blk.mlp(blk.norm2(x)),
            "reads the block's input",
        ),
        (
            lambda x, blk, p=0.0, t=False: ex.vit._normed_residual(x, blk),
            "carries the normalised x",
        ),
        (
            lambda x, blk, p=0.0, t=False: (
                (x + blk.attn(blk.norm2(x))) + blk.mlp(blk.norm1(x + blk.attn(blk.norm2(x))))
            ),
            "norm1 and norm2 are swapped",
        ),
        (_block(dp=lambda y, p, t: y), "drop_prob is ignored in training"),
        (_block_whole_output, "applied to the block's output"),
        (_block(in_place=True), "changes its input x in place"),
    ],
    "prepare_tokens": [
        (
            lambda x, pe, cls, pos: torch.cat([cls.expand(x.shape[0], -1, -1), pe(x)], 1),
            "not added",
        ),
        (
            lambda x, pe, cls, pos: torch.cat(
                [cls.expand(x.shape[0], -1, -1), pe(x) + pos[:, 1:]], 1
            ),
            "no position",
        ),
        (
            lambda x, pe, cls, pos: torch.cat([pe(x), cls.expand(x.shape[0], -1, -1)], 1) + pos,
            "at the end",
        ),
        (
            lambda x, pe, cls, pos: torch.cat(
                [cls.expand(x.shape[0], -1, -1), pe(x) + pos[:, :-1]], 1
            ),
            "shifted by one",
        ),
        (
            lambda x, pe, cls, pos: torch.cat([cls, pe(x)], 1) + pos,
            "repeated (expanded) over the batch",
        ),
        (lambda x, pe, cls, pos: pe(x) + pos[:, 1:], "class token is missing"),
    ],
    "vit_forward": [
        (lambda x, vit: _tokens_through_blocks(x, vit)[:, 0], "final norm is missing"),
        (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit)).mean(1), "averages all tokens"),
        (
            lambda x, vit: vit.norm(_tokens_through_blocks(x, vit))[:, 1:].mean(1),
            "averages the patch tokens",
        ),
        (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit))[:, -1], "last token"),
        (lambda x, vit: vit.norm(vit.prepare_tokens(x))[:, 0], "blocks are not applied"),
        (
            lambda x, vit: vit.norm(vit.blocks[-1](vit.prepare_tokens(x)))[:, 0],
            "only the last block",
        ),
        (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit)), "returns all"),
    ],
    "local_view": [
        (lambda size, scale: _local(size, (0.4, 1.0)), "global crops' scale"),
        (
            lambda size, scale: _local(size, scale, interpolation=v2.InterpolationMode.BILINEAR),
            "bicubically",
        ),
        (lambda size, scale: _local(size, scale, blur=1.0), "not always"),
        (lambda size, scale: _local(size, scale, norm=False), "not normalised"),
        (
            lambda size, scale: _local(size, scale, jitter=False),
            "colour jitter and grayscale steps are missing",
        ),
        (
            lambda size, scale: _local(size, scale)(torch.zeros(3, 8, 8, dtype=torch.uint8)),
            "return the transform",
        ),
    ],
    "stack_views": [
        (_stack_image_major, "image by image"),
        (
            lambda crops: [
                torch.stack([views[v] for views in crops]) for v in range(len(crops[0]))
            ],
            "concatenate the views of the same size",
        ),
        (
            lambda crops: [
                torch.stack([torch.stack([c[v] for c in crops]) for v in vs])
                for vs in (range(2), range(2, len(crops[0])))
            ],
            "stacked into a new axis",
        ),
        (lambda crops: _stack_by_cat(crops)[::-1], "local views come first"),
        (
            lambda crops: [
                torch.stack([torch.stack(c[:2]) for c in crops]),
                torch.stack([torch.stack(c[2:]) for c in crops]),
            ],
            "stacked image by image into (B, views",
        ),
    ],
}

assert set(PASSES) == set(WRONG) == set(VIT_EXERCISES)


@pytest.mark.parametrize("name", VIT_EXERCISES)
def test_the_reference_passes_and_prints_one_line(name, capsys):
    assert run_check(name, ex.REFERENCES[name]) == ""
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"ok: {name}")


@pytest.mark.parametrize("name", VIT_EXERCISES)
def test_the_stub_is_todo_and_its_task_is_shown(name):
    def stub(*args, **kwargs):
        raise NotImplementedError("the task line")

    message = run_check(name, stub)
    assert ex.STATUS[name] == "todo"
    assert message == f"{name}: not written yet - the task line"


@pytest.mark.parametrize("name, i", [(n, i) for n, fns in PASSES.items() for i in range(len(fns))])
def test_an_equivalent_rewrite_passes(name, i):
    assert run_check(name, PASSES[name][i]) == ""


@pytest.mark.parametrize("name, i", [(n, i) for n, ws in WRONG.items() for i in range(len(ws))])
def test_a_wrong_answer_is_named(name, i):
    wrong, expected = WRONG[name][i]
    message = run_check(name, wrong)
    assert ex.STATUS[name] == "failed"
    assert message.startswith(f"{name}: ") and expected in message, message
    assert "\n" not in message


def test_every_check_is_tested_with_two_rewrites_and_four_wrong_answers():
    for name in VIT_EXERCISES:
        assert len(PASSES[name]) >= 2 and len(WRONG[name]) >= 4, name
