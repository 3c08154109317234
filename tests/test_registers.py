"""DINOv2's additions to the Vision Transformer: register tokens and the iBOT mask token.

Layout as in facebookresearch/dinov2 `dinov2/models/vision_transformer.py`
(`prepare_tokens_with_masks`, `forward_features`): tokens [cls; registers; patches], positions on
cls and patches only, the mask token in place of masked patch embeddings before the positions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from vitdino_core import Attention, Block, VisionTransformer
from vitdino_core.attention_maps import (
    cls_attention,
    cls_attention_by_layer,
    first_patch,
    patch_features,
)
from vitdino_core.checkpoint import build_backbone_from_checkpoint, describe, save_checkpoint
from vitdino_core.vision_transformer import build_vit

sys.path.insert(0, str(Path(__file__).parent))
from test_model import assert_same_step, fast_copy, step_with_seed  # noqa: E402


def tiny_vit(**kwargs) -> VisionTransformer:
    kwargs = {
        "img_size": 48,
        "patch_size": 12,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        **kwargs,
    }
    return VisionTransformer(**kwargs)


def test_no_registers_and_no_mask_token_leave_the_state_dict_as_dino_has_it():
    torch.manual_seed(0)
    plain = tiny_vit()
    torch.manual_seed(0)
    same = tiny_vit(num_register_tokens=0, use_mask_token=False)
    assert plain.num_register_tokens == 0
    assert list(plain.state_dict()) == list(same.state_dict())
    assert not any("register" in k or "mask" in k for k in plain.state_dict())
    same.load_state_dict(plain.state_dict(), strict=True)


def test_registers_and_mask_token_are_parameters_of_dinov2s_shapes_and_init():
    torch.manual_seed(0)
    model = tiny_vit(num_register_tokens=4, use_mask_token=True)
    sd = model.state_dict()
    assert sd["register_tokens"].shape == (1, 4, 32)
    assert sd["mask_token"].shape == (1, 32)
    assert torch.equal(sd["mask_token"], torch.zeros(1, 32))  # DINOv2: zeros
    assert 0 < sd["register_tokens"].std() < 1e-5  # DINOv2: normal, std 1e-6
    names = {n for n, _ in model.named_parameters()}
    assert {"register_tokens", "mask_token"} <= names
    with pytest.raises(ValueError, match="num_register_tokens"):
        tiny_vit(num_register_tokens=-1)


@pytest.mark.parametrize("size", [(48, 48), (36, 60)])
def test_tokens_are_cls_registers_patches_and_registers_get_no_position(size):
    torch.manual_seed(0)
    R = 3
    model = tiny_vit(num_register_tokens=R).eval()
    x = torch.randn(2, 3, *size)
    tokens = model.prepare_tokens(x)  # (B, 1+R+N, D)
    N = (size[0] // 12) * (size[1] // 12)
    assert tokens.shape == (2, 1 + R + N, 32)
    assert torch.equal(tokens[:, 1 : 1 + R], model.register_tokens.expand(2, -1, -1))
    plain = tiny_vit().eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k != "register_tokens"}, strict=True
    )
    without = plain.prepare_tokens(x)  # (B, 1+N, D)
    assert torch.equal(tokens[:, :1], without[:, :1])
    assert torch.equal(tokens[:, 1 + R :], without[:, 1:])
    assert first_patch(model) == 1 + R and first_patch(plain) == 1


def test_masks_replace_exactly_the_masked_patch_embeddings_before_the_positions():
    torch.manual_seed(0)
    model = tiny_vit(num_register_tokens=2, use_mask_token=True).eval()
    with torch.no_grad():
        model.mask_token.normal_()  # a mask token unlike any patch
    x = torch.randn(3, 3, 48, 48)
    masks = torch.rand(3, 16) < 0.4  # (B, N)
    masks[0] = False  # an image with nothing masked
    got = model.prepare_tokens(x, masks)  # (B, 1+R+N, D)
    plain = model.prepare_tokens(x)  # (B, 1+R+N, D)
    pos = model.pos_embed[:, 1:]  # (1, N, D)
    patches, plain_patches = got[:, 3:], plain[:, 3:]  # (B, N, D)
    assert torch.equal(patches[~masks], plain_patches[~masks])
    want = (model.mask_token + pos).expand(3, -1, -1)[masks]  # (M, D)
    assert_close(patches[masks], want)
    assert torch.equal(got[:, :3], plain[:, :3])  # cls and registers untouched
    with pytest.raises(ValueError, match="use_mask_token"):
        tiny_vit().prepare_tokens(x, masks)
    with pytest.raises(ValueError, match="do not match"):
        model.prepare_tokens(x, masks[:, :8])


def test_forward_features_dict_has_dinov2s_keys_and_shapes():
    torch.manual_seed(0)
    model = tiny_vit(num_register_tokens=4, use_mask_token=True).eval()
    x = torch.randn(2, 3, 48, 48)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :5] = True
    out = model.forward_features_dict(x, masks)
    assert set(out) == {
        "x_norm_clstoken",
        "x_norm_regtokens",
        "x_norm_patchtokens",
        "x_prenorm",
        "masks",
    }
    assert out["x_norm_clstoken"].shape == (2, 32)
    assert out["x_norm_regtokens"].shape == (2, 4, 32)
    assert out["x_norm_patchtokens"].shape == (2, 16, 32)
    assert out["x_prenorm"].shape == (2, 21, 32)
    assert out["masks"] is masks
    assert_close(model.norm(out["x_prenorm"]), model.forward_features(x, masks))
    with torch.no_grad():
        assert_close(out["x_norm_clstoken"], model.forward_features(x, masks)[:, 0])
        assert_close(model(x), model.forward_features_dict(x)["x_norm_clstoken"])
    no_reg = tiny_vit().forward_features_dict(x)
    assert no_reg["x_norm_regtokens"].shape == (2, 0, 32)
    assert no_reg["x_norm_patchtokens"].shape == (2, 16, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_forward_equals_the_plain_path_with_registers(dtype):
    """All three tricks of `fast=True` (the CLS row alone in the last block, dropped branches not
    computed, the bf16 softmax) give the plain feature and gradients with registers in the tokens:
    the CLS token stays token 0."""
    torch.manual_seed(0)
    model = tiny_vit(num_register_tokens=4, depth=3, drop_path_rate=0.5).train()
    fast = fast_copy(model, VisionTransformer, Block, Attention)
    x = torch.randn(6, 3, 36, 60)  # not the native size: positions interpolated
    got, want = step_with_seed(fast, x, dtype), step_with_seed(model, x, dtype)
    assert "register_tokens" in want[1] and want[1]["register_tokens"].abs().sum() > 0
    assert_same_step(got, want, dtype)
    fast.eval()
    with torch.no_grad():
        assert_close(fast(x), fast.forward_features(x)[:, 0])


def test_attention_maps_and_intermediate_layers_with_registers():
    torch.manual_seed(0)
    R = 4
    model = tiny_vit(num_register_tokens=R).eval()
    x = torch.randn(2, 3, 48, 60)
    N = 4 * 5
    attn = model.get_last_selfattention(x)
    assert attn.shape == (2, 2, 1 + R + N, 1 + R + N)
    assert_close(attn.sum(-1), torch.ones(2, 2, 1 + R + N))
    maps = cls_attention(model, x)
    assert maps.shape == (2, 2, 4, 5)
    assert_close(maps.flatten(2), attn[:, :, 0, 1 + R :])  # CLS -> patches, registers left out
    by_layer = cls_attention_by_layer(model, x)
    assert by_layer.shape == (2, 2, 2, 4, 5)
    assert_close(by_layer[:, -1], maps)
    feats = patch_features(model, x)
    assert feats.shape == (2, 4, 5, 32)
    assert_close(feats.reshape(2, N, 32), model.forward_features_dict(x)["x_norm_patchtokens"])
    layers = model.get_intermediate_layers(x, n=2)
    assert [t.shape for t in layers] == [(2, 1 + R + N, 32)] * 2
    assert_close(layers[-1], model.forward_features(x))


def test_build_vit_passes_registers_and_mask_token():
    model = build_vit("vit_tiny", 12, img_size=24, num_register_tokens=2, use_mask_token=True)
    assert model.register_tokens.shape == (1, 2, 192)
    assert model.mask_token.shape == (1, 192)


@pytest.mark.parametrize("R, mask_token", [(0, False), (4, True), (2, False)])
def test_a_checkpoint_with_registers_rebuilds_the_same_backbone(tmp_path, R, mask_token):
    torch.manual_seed(0)
    model = build_vit(
        "vit_tiny", 12, img_size=24, num_register_tokens=R, use_mask_token=mask_token
    ).eval()
    config = {"arch": "vit_tiny", "patch_size": 12, "global_crops_size": 24}
    path = save_checkpoint(
        {"teacher": model.state_dict(), "config": {**config, "num_register_tokens": R}},
        tmp_path / "checkpoint.pth",
    )
    loaded, info = build_backbone_from_checkpoint(path)
    assert loaded.num_register_tokens == R and info["num_register_tokens"] == R
    assert hasattr(loaded, "mask_token") == mask_token
    assert list(loaded.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 24, 24)
    assert torch.equal(loaded(x), model(x))
    assert (f"with {R} registers" in describe(info)) == (R > 0)
