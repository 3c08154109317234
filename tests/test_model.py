"""The Vision Transformer: sizes, official parameter names, shapes, attention paths, positions, drop
path, init."""

from __future__ import annotations

import copy
import math
import re
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from vitdino_core import Attention, Block, DropPath, VisionTransformer, vit_base, vit_small
from vitdino_core.checkpoint import resize_pos_embed
from vitdino_core.patch_embedding import patchify
from vitdino_core.sanity import main as sanity_main


@contextmanager
def skip_weight_init():
    """Build big models for counting only: skip the (slow) random initialisation
    of their weights."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.init, "trunc_normal_", lambda t, *args, **kwargs: t)
        mp.setattr(nn.Linear, "reset_parameters", lambda self: None)
        mp.setattr(nn.Conv2d, "reset_parameters", lambda self: None)
        yield


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_vit(patch_size: int = 12, img_size: int = 228, **kwargs) -> VisionTransformer:
    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2, **kwargs}
    return VisionTransformer(img_size=img_size, patch_size=patch_size, **kwargs)


def official_layout(
    depth: int, dim: int, patch_size: int, n_tokens: int, in_chans: int = 3, mlp_ratio: int = 4
) -> dict:
    """Key -> shape of an official DINO ViT backbone state dict, written out by hand."""
    hidden = mlp_ratio * dim
    layout = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, n_tokens, dim),
        "patch_embed.proj.weight": (dim, in_chans, patch_size, patch_size),
        "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        layout.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim),
                b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim),
                b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (hidden, dim),
                b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (dim, hidden),
                b + "mlp.fc2.bias": (dim,),
            }
        )
    layout.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return layout


# ----------------------------------------------------------------------------- sizes


def test_vit_b12_has_about_86m_parameters():
    with skip_weight_init():
        model = vit_base(patch_size=12)
    assert model.patch_embed.img_size == 228  # the multiple of 12 nearest 224
    assert abs(n_params(model) - 86e6) / 86e6 < 0.01, f"{n_params(model):,}"


@pytest.mark.parametrize(
    "factory, expected", [(vit_small, 21_665_664), (vit_base, 85_798_656)], ids=["S/16", "B/16"]
)
def test_official_backbone_parameter_counts(factory, expected):
    with skip_weight_init():
        model = factory(patch_size=16, img_size=224)
    assert n_params(model) == expected


def test_vit_b12_state_dict_is_the_official_layout():
    with skip_weight_init():
        model = vit_base(patch_size=12)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_layout(depth=12, dim=768, patch_size=12, n_tokens=19 * 19 + 1)


def test_official_style_state_dict_loads_strictly():
    model = tiny_vit(patch_size=8, img_size=32, depth=3)
    g = torch.Generator().manual_seed(0)
    official = {
        k: torch.randn(shape, generator=g)
        for k, shape in official_layout(3, 32, 8, 4 * 4 + 1).items()
    }
    result = model.load_state_dict(official, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, official[k]), k
    # a key of another layout (timm's classifier head, say) is refused
    with pytest.raises(RuntimeError, match="head.weight"):
        model.load_state_dict({**official, "head.weight": torch.zeros(10, 32)}, strict=True)


# ----------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize(
    "patch_size, native, sizes", [(12, 228, (96, 216, 228)), (16, 224, (96, 224))]
)
def test_forward_shapes_for_several_crop_sizes(patch_size, native, sizes):
    torch.manual_seed(0)
    model = tiny_vit(patch_size=patch_size, img_size=native).eval()
    for size in sizes:
        x = torch.randn(2, 3, size, size)
        out = model(x)
        assert out.shape == (2, 32), size
        assert torch.isfinite(out).all()
        assert model.forward_features(x).shape == (2, (size // patch_size) ** 2 + 1, 32)


def test_non_square_image():
    model = tiny_vit(patch_size=8, img_size=32).eval()
    x = torch.randn(1, 3, 24, 40)
    assert model.forward_features(x).shape == (1, 3 * 5 + 1, 32)


def test_last_selfattention_shape_and_rows():
    torch.manual_seed(0)
    model = tiny_vit(patch_size=12, img_size=96, num_heads=4).eval()
    attn = model.get_last_selfattention(torch.randn(3, 3, 96, 96))
    n = (96 // 12) ** 2 + 1
    assert attn.shape == (3, 4, n, n)
    assert (attn >= 0).all()
    assert_close(attn.sum(-1), torch.ones(3, 4, n))


@pytest.mark.parametrize("n", [1, 2])
def test_intermediate_layers_are_the_last_n_blocks_normalised(n):
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32, depth=3).eval()
    with torch.no_grad():  # a final norm that is not the identity, so forgetting it shows
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.normal_()
    x = torch.randn(2, 3, 32, 32)
    outs = model.get_intermediate_layers(x, n)
    assert len(outs) == n
    with torch.no_grad():
        h, expected = model.prepare_tokens(x), []
        for blk in model.blocks:
            h = blk(h)
            expected.append(
                F.layer_norm(h, (32,), model.norm.weight, model.norm.bias, eps=model.norm.eps)
            )
    for got, want in zip(outs, expected[-n:]):
        assert got.shape == (2, 17, 32)
        assert_close(got, want)
    assert_close(outs[-1], model.forward_features(x))


def full_forward(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The feature as the official code computes it: every token through every block, then the CLS
    token."""
    return model.forward_features(x)[:, 0]


def fast_copy(model: nn.Module, *kinds: type) -> nn.Module:
    """A deep copy of `model` with the `fast` flag on for the modules of these kinds only: one trick
    at a time."""
    fast = copy.deepcopy(model)
    for m in fast.modules():
        if isinstance(m, kinds):
            m.fast = True
    return fast


def step_with_seed(
    model: nn.Module, x: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, dict]:
    """One forward and backward from a fixed random state: the output and
    every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same coins for every model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x)  # (B, D)
    (out.float() * torch.linspace(-1, 1, out.shape[1])).square().sum().backward()
    return out.detach().float(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def assert_same_step(
    a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict], dtype: torch.dtype
) -> None:
    """Two (output, gradients) of `step_with_seed` agree: element by element in fp32 (to float
    rounding of the tensor's largest entry); in bf16 autocast, where two ways of computing one
    value round differently, each tensor to 2% of its norm."""
    (out_a, g_a), (out_b, g_b) = a, b
    assert g_a.keys() == g_b.keys()
    for name, x, y in [("output", out_a, out_b), *((n, g_a[n], g_b[n]) for n in g_b)]:
        if dtype == torch.float32:
            assert_close(x, y, rtol=1e-4, atol=1e-6 * max(1.0, y.abs().max().item()), msg=name)
        else:
            assert x.shape == y.shape and (x - y).norm() <= 2e-2 * y.norm(), name


def test_fast_is_one_flag_off_by_default_shown_by_repr_and_kept_by_a_copy():
    """`fast` is a constructor argument of the model (and of vit_*), set on every block and its
    attention; off by default; `repr` says which path each module runs; a deep copy (the EMA
    teacher) keeps it; the parameters and their names are the same, so weights load across the two
    with strict=True."""
    plain, fast = tiny_vit(depth=2), tiny_vit(depth=2, fast=True)
    flags = lambda m: [x.fast for x in m.modules() if hasattr(x, "fast")]  # noqa: E731
    assert (
        flags(plain) == [False] * 5 and flags(fast) == [True] * 5
    )  # the model, 2 blocks, 2 attentions
    assert repr(plain).startswith("VisionTransformer(\n  fast=False") and "fast=True" not in repr(
        plain
    )
    assert repr(fast).startswith("VisionTransformer(\n  fast=True") and "fast=False" not in repr(
        fast
    )
    assert repr(fast.blocks[0]).count("fast=True") == 2  # the block and its attention
    assert flags(copy.deepcopy(fast)) == [True] * 5 and flags(vit_small(fast=True)) == [True] * 25
    assert not any(flags(vit_small()))
    fast.load_state_dict(plain.state_dict(), strict=True)
    assert fast.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_cls_only_last_block_gives_the_same_value_and_gradients(dtype, grad_checkpointing):
    """A fast VisionTransformer runs its last block for the CLS token alone; in training (drop path
    on, same random state) it gives the plain forward's feature and the same gradient for every
    parameter, the last block's included (fp32 and bf16 autocast)."""
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32, depth=3, drop_path_rate=0.5).train()
    model.grad_checkpointing = grad_checkpointing
    fast = fast_copy(model, VisionTransformer)
    assert fast.fast and not any(b.fast for b in fast.blocks)  # this trick alone
    x = torch.randn(6, 3, 40, 24)  # not the native size: positions interpolated
    (cls_only, g_cls), (full, g_full) = (
        step_with_seed(fast, x, dtype),
        step_with_seed(model, x, dtype),
    )
    assert cls_only.shape == (6, 32) and cls_only.std() > 0.1
    assert g_cls.keys() == {n for n, _ in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in g_cls.values())  # every weight is trained
    assert_same_step((cls_only, g_cls), (full, g_full), dtype)
    fast.eval()
    with torch.no_grad():
        assert_close(fast(x), full_forward(fast, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_skip_dropped_branches_gives_the_same_value_and_gradients(dtype, grad_checkpointing):
    """Fast blocks draw drop path's coins first and run each branch on the kept samples only: with
    the same random state, the plain model's output and every parameter's gradient (fp32 and bf16
    autocast)."""
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32, depth=4, drop_path_rate=0.6).train()
    model.grad_checkpointing = grad_checkpointing
    fast = fast_copy(model, Block)
    assert (
        all(b.fast for b in fast.blocks)
        and not fast.fast
        and not any(b.attn.fast for b in fast.blocks)
    )
    x = torch.randn(10, 3, 32, 32)
    plain = step_with_seed(model, x, dtype)
    assert plain[0].std() > 0.1 and plain[1].keys() == {n for n, _ in model.named_parameters()}
    assert_same_step(step_with_seed(fast, x, dtype), plain, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_all_three_tricks_together_give_the_same_value_and_gradients(dtype, grad_checkpointing):
    """The model as training builds it (`fast=True`: every trick at once) against the plain one."""
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32, depth=3, drop_path_rate=0.5).train()
    model.grad_checkpointing = grad_checkpointing
    fast = fast_copy(model, VisionTransformer, Block, Attention)
    x = torch.randn(8, 3, 32, 16)
    plain = step_with_seed(model, x, dtype)
    assert plain[0].std() > 0.1 and plain[1].keys() == {n for n, _ in model.named_parameters()}
    assert_same_step(step_with_seed(fast, x, dtype), plain, dtype)


def test_fast_block_computes_a_branch_for_its_kept_samples_only():
    """The branch sees the kept samples alone (the coins drop_path would draw); a dropped sample's
    row is x itself; when every sample is dropped the branch still runs (its weights take part,
    with zero gradient); in evaluation the block is the plain one."""
    torch.manual_seed(0)
    blk = Block(8, num_heads=2, qkv_bias=True, drop_path=0.5, fast=True).train()
    seen = []
    for m in (blk.attn, blk.mlp):
        m.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[0]))
    x = torch.randn(64, 3, 8)
    torch.manual_seed(3)
    out = blk(x)  # (64, 3, 8)
    torch.manual_seed(3)
    coins = [
        (0.5 + torch.rand(64, 1, 1)).floor_() for _ in range(2)
    ]  # the draws of drop_path: attention, then MLP
    assert seen == [int(c.sum()) for c in coins] and all(10 < n < 54 for n in seen)
    both_dropped = (coins[0] + coins[1]).flatten() == 0  # (64,)
    assert both_dropped.any() and torch.equal(out[both_dropped], x[both_dropped])
    blk.fast = False
    torch.manual_seed(3)
    assert_close(out, blk(x))  # the plain block from the same random state
    blk.fast, seen[:] = True, []
    blk.drop_path.drop_prob = 1 - 1e-7  # (almost) never kept: nobody keeps a branch
    blk.zero_grad(set_to_none=True)
    out = blk(x)
    out.sum().backward()
    assert (
        seen == [64, 64]
        and blk.attn.qkv.weight.grad is not None
        and blk.attn.qkv.weight.grad.abs().max() == 0
    )
    assert_close(out, x)
    seen.clear()
    blk.eval()  # evaluation: nothing dropped, every sample through both branches
    with torch.no_grad():
        assert_close(
            blk(x), x + blk.attn(blk.norm1(x)) + blk.mlp(blk.norm2(x + blk.attn(blk.norm1(x))))
        )
    assert seen[:2] == [64, 64]


@pytest.mark.slow
def test_skip_dropped_branches_compiles_as_the_plain_block():
    """Under torch.compile a fast block takes the plain residual: one graph (fullgraph=True would
    fail on the data-dependent `nonzero` of the kept samples), and the same output as the plain
    block when nothing is dropped."""
    torch.manual_seed(0)
    blk = Block(
        32, num_heads=4, qkv_bias=True, drop_path=1e-9, fast=True
    ).train()  # drops (almost) nobody
    plain = copy.deepcopy(blk)
    plain.fast = plain.attn.fast = False
    x = torch.randn(4, 9, 32)
    torch._dynamo.reset()
    compiled = torch.compile(blk, fullgraph=True, dynamic=False)
    assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_and_attention_cls_rows_are_the_first_row_of_forward(dtype):
    """The CLS-only pieces with both attention rules of a fast model on a CPU (fp32: fused; bf16
    autocast: explicit)."""
    torch.manual_seed(0)
    blk = Block(32, num_heads=4, qkv_bias=True, fast=True).eval()
    x = torch.randn(3, 17, 32)
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16),
    ):
        a_cls, a_all = (
            blk.attn.forward_cls(blk.norm1(x)),
            blk.attn(blk.norm1(x)),
        )  # (3, 1, 32), (3, 17, 32)
        b_cls, b_all = blk.forward_cls(x), blk(x)
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert a_cls.shape == b_cls.shape == (3, 1, 32)
    assert_close(a_cls.float(), a_all[:, :1].float(), **tol)
    assert_close(b_cls.float(), b_all[:, :1].float(), **tol)
    assert (
        b_all[:, 1:] - b_all[:, :1]
    ).abs().max() > 0.1  # the other rows differ: the first one was compared


def test_the_input_is_checked_once_per_forward(monkeypatch):
    """The backbone checks an image batch once (before its tokens), not once in every module it
    passes; PatchEmbed used alone checks its own input."""
    import vitdino_core.patch_embedding as patch_embedding
    import vitdino_core.vision_transformer as vision_transformer

    calls = []
    check = patch_embedding.check_image_batch
    counting = lambda *a: calls.append(1) or check(*a)  # noqa: E731
    monkeypatch.setattr(patch_embedding, "check_image_batch", counting)
    monkeypatch.setattr(vision_transformer, "check_image_batch", counting)
    model = tiny_vit(patch_size=8, img_size=32, depth=2)
    model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"\b30\b.*\b8\b"):
        model.patch_embed(torch.randn(2, 3, 30, 32))  # alone: its own clear error
    assert len(calls) == 2


@pytest.mark.parametrize("size", [100, 224])
def test_size_not_a_multiple_of_the_patch_is_a_clear_error(size):
    model = tiny_vit(patch_size=12, img_size=228)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, size, size))
    msg = str(err.value)
    assert re.search(rf"\b{size}\b", msg) and re.search(r"\b12\b", msg), msg


def test_wrong_channel_count_is_a_clear_error():
    model = tiny_vit(patch_size=8, img_size=32)
    with pytest.raises(ValueError, match=r"\b3\b.*\b1\b|\b1\b.*\b3\b"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError):
        model(torch.randn(3, 32, 32))  # no batch dimension


def test_image_size_not_a_multiple_of_the_patch_at_construction():
    with pytest.raises(ValueError):
        VisionTransformer(img_size=100, patch_size=12, embed_dim=32, depth=1, num_heads=2)


def test_patch_embed_convolution_is_a_linear_layer_on_the_patches():
    """PatchEmbed's strided conv equals patchify + one linear layer with the conv's weight
    flattened: the same tokens and the same weight, bias and input gradients (notebook 01 builds
    both)."""
    from vitdino_core import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(img_size=24, patch_size=6, in_chans=3, embed_dim=16)
    with torch.no_grad():
        embed.proj.bias.normal_()  # a zero bias would hide a bias left out
    x = torch.randn(
        3, 3, 24, 36, requires_grad=True
    )  # not square: rows and columns must not be swapped
    g = torch.randn(3, 4 * 6, 16)  # (B, N, D)

    def run(fn):
        embed.zero_grad(set_to_none=True)
        x.grad = None
        y = fn(x)  # (B, N, D)
        (y * g).sum().backward()
        return y, embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone(), x.grad.clone()

    def linear(t):
        # (B, N, D)
        return F.linear(patchify(t, 6), embed.proj.weight.flatten(1), embed.proj.bias)

    for a, b in zip(run(embed), run(linear)):
        assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)


# ----------------------------------------------------------------------------- attention paths


def test_attention_fused_and_explicit_paths_agree():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32)
    fused = attn(x)
    explicit, weights = attn(x, return_attention=True)
    assert_close(fused, explicit, atol=1e-5, rtol=0)
    # and both equal softmax(q k^T / sqrt(d)) v written out here
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, C)

    def split(t):
        return t.reshape(2, 10, 4, 8).transpose(1, 2)  # (B, H, N, d)

    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    assert_close(weights, w, atol=1e-6, rtol=0)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 10, 32))
    assert_close(fused, ref, atol=1e-5, rtol=0)


def test_attention_path_per_dtype_on_cpu(monkeypatch):
    """The plain module always calls the fused kernel when no weights are wanted; a fast one takes
    the explicit product in CPU bf16 autocast instead (fp32 stays fused), and still matches fp32
    to bf16 precision, gradients included."""
    import vitdino_core.attention as attention_module

    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention_module.F,
        "scaled_dot_product_attention",
        lambda *a, **kw: calls.append(a[0].dtype) or fused(*a, **kw),
    )
    torch.manual_seed(0)
    plain = Attention(64, num_heads=4, qkv_bias=True).eval()
    attn = fast_copy(plain, Attention)
    x = torch.randn(2, 17, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain(x)
    assert calls == [torch.bfloat16]
    calls.clear()
    y32 = attn(x)
    assert calls == [torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x)
    assert calls == [torch.float32], "bf16 on CPU should not call the fused kernel"
    assert y16.dtype == torch.bfloat16
    assert_close(y16.float(), y32, atol=3e-2, rtol=3e-2)
    (g32,) = torch.autograd.grad(y32.square().sum(), x)
    (g16,) = torch.autograd.grad(y16.float().square().sum(), x)
    assert torch.isfinite(g16).all()
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99


def test_block_and_model_agree_across_attention_paths():
    torch.manual_seed(0)
    blk = Block(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32)
    y, attn = blk(x, return_attention=True)
    assert attn.shape == (2, 4, 10, 10)
    assert_close(blk(x), y, atol=1e-5, rtol=0)

    model = tiny_vit(patch_size=8, img_size=32, depth=3).eval()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = model.prepare_tokens(img)
        for b in model.blocks:
            h, _ = b(h, return_attention=True)
        explicit = model.norm(h)
        assert_close(model.forward_features(img), explicit, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- positions


def test_pos_embedding_unchanged_at_native_size():
    model = tiny_vit(patch_size=8, img_size=32)
    tokens = torch.zeros(1, 17, 32)
    assert torch.equal(model.interpolate_pos_encoding(tokens, 32, 32), model.pos_embed)


@pytest.mark.parametrize("h, w", [(48, 48), (16, 16), (24, 40)])
def test_pos_embedding_interpolation_keeps_cls_and_resizes_grid(h, w):
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32)
    h0, w0 = h // 8, w // 8
    with torch.no_grad():
        pos = model.interpolate_pos_encoding(torch.zeros(1, h0 * w0 + 1, 32), h, w)
    assert pos.shape == (1, h0 * w0 + 1, 32)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0].detach())
    grid = model.pos_embed.detach()[0, 1:].reshape(4, 4, 32).permute(2, 0, 1)[None]  # (1, D, 4, 4)
    # the official DINO code: scale factors (h0 + 0.1) / 4 and (w0 + 0.1) / 4, not the output size
    want = F.interpolate(grid, scale_factor=((h0 + 0.1) / 4, (w0 + 0.1) / 4), mode="bicubic")
    assert_close(
        pos[0, 1:], want[0].permute(1, 2, 0).reshape(-1, 32)
    )  # row-major: patch (r, c) takes grid (r, c)
    by_size = (
        F.interpolate(grid, size=(h0, w0), mode="bicubic", align_corners=False)[0]
        .permute(1, 2, 0)
        .reshape(-1, 32)
    )
    assert (
        pos[0, 1:] - by_size
    ).abs().max() > 1e-4  # the two sample the old grid at different places


def test_pos_embedding_resized_at_load_matches_the_forward_interpolation():
    torch.manual_seed(0)
    small = tiny_vit(patch_size=8, img_size=32)  # 4 x 4 grid
    big = tiny_vit(patch_size=8, img_size=56)  # 7 x 7 grid
    big.load_state_dict(
        {**small.state_dict(), "pos_embed": resize_pos_embed(small.pos_embed.detach(), 50)}
    )
    with torch.no_grad():
        on_the_fly = small.interpolate_pos_encoding(torch.zeros(1, 50, 32), 56, 56)  # (1, 50, 32)
    assert_close(big.pos_embed.detach(), on_the_fly)
    img = torch.randn(2, 3, 56, 56)
    small.eval(), big.eval()
    assert_close(big(img), small(img))  # a model built at 56 px = the 32 px model fed 56 px images


# ----------------------------------------------------------------------------- drop path


def test_drop_path_rate_grows_linearly_with_depth():
    depth, rate = 5, 0.2
    model = tiny_vit(patch_size=8, img_size=32, depth=depth, drop_path_rate=rate)
    probs = [getattr(blk.drop_path, "drop_prob", 0.0) for blk in model.blocks]
    assert probs == pytest.approx([rate * i / (depth - 1) for i in range(depth)])


def test_drop_path_is_identity_in_eval_mode():
    dp = DropPath(0.5).eval()
    x = torch.randn(64, 5, 8)
    assert torch.equal(dp(x), x)
    torch.manual_seed(0)
    model = tiny_vit(patch_size=8, img_size=32, drop_path_rate=0.5).eval()
    img = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(img), model(img))


def test_drop_path_preserves_the_expectation_in_train_mode():
    torch.manual_seed(0)
    p = 0.3
    dp = DropPath(p).train()
    x = torch.ones(20_000, 3, 4)
    y = dp(x)
    per_sample = y.flatten(1)
    # one coin per sample: each sample is either dropped whole or kept and rescaled by 1/(1-p)
    assert (
        (per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / (1 - p))).all(1)
    ).all()
    assert abs((per_sample[:, 0] == 0).float().mean().item() - p) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03  # std of the mean is about 0.005


def test_drop_path_drops_the_samples_the_official_dino_code_drops():
    """Same random state, same coins: DINO draws floor(keep_prob + U) and computes x.div(keep_prob)
    * coins."""
    p, keep = 0.3, 0.7
    branch = torch.randn(256, 5, 8)
    torch.manual_seed(3)
    official = branch.div(keep) * (keep + torch.rand(256, 1, 1)).floor_()  # (256, 5, 8)
    torch.manual_seed(3)
    assert_close(DropPath(p).train()(branch), official)
    assert 0 < (official.flatten(1) == 0).all(1).sum() < 256  # some samples dropped, some kept


# ----------------------------------------------------------------------------- init


def test_initialisation_follows_dino():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(linears) == 2 * 4 and len(norms) == 2 * 2 + 1
    for m in linears:
        assert abs(m.weight.std().item() - 0.02) < 0.002, m
        assert abs(m.weight.mean().item()) < 0.002, m
        assert m.weight.abs().max().item() <= 2.0
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    for p in (model.pos_embed, model.cls_token):
        assert 0 < p.abs().max().item() <= 2.0
    assert abs(model.pos_embed.std().item() - 0.02) < 0.006


# ----------------------------------------------------------------------------- the sanity command


def test_sanity_command_on_a_small_model(capsys):
    assert sanity_main(["--arch", "vit_tiny", "--patch-size", "16", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "ViT-Ti/16" in out and "parameters" in out and "OK" in out
    assert sanity_main(["--arch", "vit_tiny", "--patch-size", "16", "--img-size", "100"]) != 0
