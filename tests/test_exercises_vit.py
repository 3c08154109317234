"""The exercise checks of notebooks 01-04: each accepts the core's version, recognises the stub, and
names the mistake of typical wrong implementations (written here the way a learner might)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

import vitdino_core.exercises as ex
from vitdino_core.exercises import ExerciseMistake
from vitdino_core.exercises.vit import __all__ as VIT_CHECKS
from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD, flip_and_color_jitter, gaussian_blur

NAMES = [c.removeprefix("check_") for c in VIT_CHECKS]


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


def test_every_check_is_exported_and_has_a_reference():
    assert len(NAMES) >= 10
    for name in NAMES:
        assert callable(getattr(ex, f"check_{name}")), name
        assert name in ex.REFERENCES, f"pick({name!r}, mine) has no core version to fall back to"


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_passes_and_prints_one_line(name, capsys):
    assert run_check(name, ex.REFERENCES[name]) == ""
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"ok: {name}")


@pytest.mark.parametrize("name", NAMES)
def test_the_stub_is_todo_and_its_task_is_shown(name):
    def stub(*args, **kwargs):
        raise NotImplementedError("the task line")

    message = run_check(name, stub)
    assert ex.STATUS[name] == "todo"
    assert "not written yet" in message and "the task line" in message


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

    assert ex.pick("mlp", mine) is ex.REFERENCES["mlp"]
    assert "using vitdino_core's version" in capsys.readouterr().out
    run_check("mlp", mine)
    assert ex.pick("mlp", mine) is mine
    with pytest.raises(KeyError, match="no core version"):
        ex.pick("no_such_exercise", mine)


def test_a_crash_in_the_learners_code_is_shown_as_theirs():
    def crashes(images, patch):
        return images.reshape(7, -1)  # an impossible reshape

    message = run_check("patchify", crashes)
    assert "your function raised RuntimeError" in message


# ---- typical wrong implementations, one group per check ---------------------------------------

def _patchify_permuted(order):
    def fn(x, p):
        B, C, H, W = x.shape
        t = x.reshape(B, C, H // p, p, W // p, p).permute(*order)
        return t.reshape(B, (H // p) * (W // p), C * p * p)
    return fn


@pytest.mark.parametrize("wrong, expected", [
    (_patchify_permuted((0, 2, 4, 3, 5, 1)), "channel-last"),
    (_patchify_permuted((0, 4, 2, 1, 3, 5)), "column by column"),
    (lambda x, p: x.reshape(x.shape[0], -1, x.shape[1] * p * p), "plain reshape"),
    (lambda x, p: _patchify_permuted((0, 2, 4, 1, 3, 5))(x, p).transpose(1, 2), "look swapped"),
    (lambda x, p: x.reshape(x.shape[0], x.shape[1] * p * p, x.shape[2] // p, x.shape[3] // p).permute(0, 2, 3, 1),
     "keeps the grid"),
])
def test_patchify_names_the_mistake(wrong, expected):
    assert expected in run_check("patchify", wrong)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, w, b, p: ex.vit.patchify(x, p) @ w.reshape(w.shape[0], -1).T, "bias is missing"),
    (lambda x, w, b, p: ex.vit.patchify(x, p) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + b,
     "flattened in another order"),
    (lambda x, w, b, p: F.conv2d(x, w, b, stride=p).flatten(2), "look swapped"),
])
def test_patch_embed_names_the_mistake(wrong, expected):
    assert expected in run_check("patch_embed", wrong)


def _attention(scale_fn=lambda d: 1 / math.sqrt(d), dim=-1):
    def fn(q, k, v, scale=True):
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s * scale_fn(q.shape[-1])
        w = s.softmax(dim=dim)
        return w @ v if dim == -1 else w.transpose(-2, -1) @ v, w
    return fn


@pytest.mark.parametrize("wrong, expected", [
    (_attention(dim=-2), "softmax over the wrong axis"),
    (_attention(scale_fn=lambda d: 1.0), "missing 1/sqrt(d)"),
    (_attention(scale_fn=lambda d: 1 / d), "divided by d"),
    (lambda q, k, v, scale=True: _attention()(q, k, v, scale)[0], "return two tensors"),
])
def test_attention_names_the_mistake(wrong, expected):
    assert expected in run_check("attention", wrong)


def test_attention_ignoring_scale_false_is_caught():
    def always_scaled(q, k, v, scale=True):
        return _attention()(q, k, v, True)
    assert "scale=False" in run_check("attention", always_scaled)


@pytest.mark.parametrize("variant, expected", [
    (dict(split="interleaved"), "split in the wrong order"),
    (dict(split="no_transpose"), "heads split wrongly"),
    (dict(merge="no_transpose"), "heads merged wrongly"),
    (dict(use_proj=False), "projection is missing"),
])
def test_multi_head_attention_names_the_mistake(variant, expected):
    def wrong(x, qkv, proj, num_heads):
        B, N, D = x.shape
        out = ex.vit._mha_variant(x, qkv, proj, num_heads, **variant)
        return out, torch.full((B, num_heads, N, N), 1.0 / N)
    assert expected in run_check("multi_head_attention", wrong)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, fc1, fc2: fc2(F.relu(fc1(x))), "ReLU"),
    (lambda x, fc1, fc2: fc2(fc1(x)), "no activation"),
    (lambda x, fc1, fc2: F.gelu(fc2(F.gelu(fc1(x)))), "activation after fc2"),
])
def test_mlp_names_the_mistake(wrong, expected):
    assert expected in run_check("mlp", wrong)


def _drop_path(scale=True, in_eval=False, per_element=False, swapped=False):
    def fn(x, p, training):
        if p == 0 or (not training and not in_eval):
            return x
        keep = p if swapped else 1 - p
        shape = x.shape if per_element else (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (keep + torch.rand(shape)).floor()
        return x * mask / keep if scale else x * mask
    return fn


@pytest.mark.parametrize("wrong, expected", [
    (_drop_path(scale=False), "not rescaled"),
    (_drop_path(in_eval=True), "drops in eval mode"),
    (_drop_path(per_element=True), "single values are dropped"),
    (_drop_path(swapped=True), "swapped"),
    (lambda x, p, training: x * torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.ndim - 1), 1 - p)) / (1 - p)
     if training else x, "other coins"),
])
def test_drop_path_names_the_mistake(wrong, expected):
    assert expected in run_check("drop_path", wrong)


def test_drop_path_in_place_is_caught():
    def zeroes_input(x, p, training):
        x.zero_()
        return x
    assert "in place" in run_check("drop_path", zeroes_input)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, blk, p=0.0, t=False: blk.norm2(blk.norm1(x + blk.attn(x)) + blk.mlp(blk.norm1(x + blk.attn(x)))),
     "post-norm"),
    (lambda x, blk, p=0.0, t=False: blk.mlp(blk.norm2(blk.attn(blk.norm1(x)))), "residual connections are missing"),
    (lambda x, blk, p=0.0, t=False: x + blk.attn(blk.norm1(x)) + blk.mlp(blk.norm2(x)), "reads the block's input"),
    (lambda x, blk, p=0.0, t=False: ex.vit._normed_residual(x, blk), "carries the normalised x"),
])
def test_block_names_the_mistake(wrong, expected):
    assert expected in run_check("block", wrong)


def test_block_without_drop_path_in_training_is_caught():
    def no_drop_path(x, blk, drop_prob=0.0, training=False):
        x = x + blk.attn(blk.norm1(x))
        return x + blk.mlp(blk.norm2(x))
    assert "drop path" in run_check("block", no_drop_path)


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, pe, cls, pos: torch.cat([cls.expand(x.shape[0], -1, -1), pe(x)], 1), "not added"),
    (lambda x, pe, cls, pos: torch.cat([cls.expand(x.shape[0], -1, -1), pe(x) + pos[:, 1:]], 1), "no position"),
    (lambda x, pe, cls, pos: torch.cat([pe(x), cls.expand(x.shape[0], -1, -1)], 1) + pos, "at the end"),
    (lambda x, pe, cls, pos: torch.cat([cls, pe(x)], 1) + pos, "expand cls_token"),
])
def test_prepare_tokens_names_the_mistake(wrong, expected):
    assert expected in run_check("prepare_tokens", wrong)


def _tokens_through_blocks(x, vit):
    z = ex.vit.reference_prepare_tokens(x, vit.patch_embed, vit.cls_token, vit.pos_embed)
    for blk in vit.blocks:
        z = blk(z)
    return z


@pytest.mark.parametrize("wrong, expected", [
    (lambda x, vit: _tokens_through_blocks(x, vit)[:, 0], "final norm is missing"),
    (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit)).mean(1), "averages all tokens"),
    (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit))[:, -1], "last token"),
    (lambda x, vit: vit.norm(_tokens_through_blocks(x, vit)), "returns all"),
])
def test_vit_forward_names_the_mistake(wrong, expected):
    assert expected in run_check("vit_forward", wrong)


def _local(size, scale, interpolation=v2.InterpolationMode.BICUBIC, blur=0.5, norm=True):
    steps = [v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
             flip_and_color_jitter(), gaussian_blur(blur), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps + ([v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if norm else []))


@pytest.mark.parametrize("wrong, expected", [
    (lambda size, scale: _local(size, (0.4, 1.0)), "global crops' scale"),
    (lambda size, scale: _local(size, scale, interpolation=v2.InterpolationMode.BILINEAR), "bicubically"),
    (lambda size, scale: _local(size, scale, blur=1.0), "not always"),
    (lambda size, scale: _local(size, scale, norm=False), "not normalised"),
    (lambda size, scale: _local(size, scale)(torch.zeros(3, 8, 8, dtype=torch.uint8)), "return the transform"),
])
def test_local_view_names_the_mistake(wrong, expected):
    assert expected in run_check("local_view", wrong)


def _stack_image_major(crops):
    globals_ = torch.stack([views[v] for views in crops for v in range(2)])
    locals_ = torch.stack([views[v] for views in crops for v in range(2, len(views))])
    return [globals_, locals_]


@pytest.mark.parametrize("wrong, expected", [
    (_stack_image_major, "image by image"),
    (lambda crops: [torch.stack([views[v] for views in crops]) for v in range(len(crops[0]))],
     "concatenate the views of the same size"),
])
def test_stack_views_names_the_mistake(wrong, expected):
    assert expected in run_check("stack_views", wrong)
