"""Attention across depth, PCA of patch features and patch correspondences
(vitdino_core.attention_maps)."""

from __future__ import annotations

import torch

from vitdino_core import VisionTransformer, cls_attention
from vitdino_core.attention_maps import (
    attention_entropy,
    center_per_image,
    cls_attention_by_layer,
    mutual_nearest_patches,
    patch_features,
    pca_foreground,
    pca_rgb,
)


def small_model(seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=48, patch_size=12, embed_dim=192, depth=3, num_heads=3
    ).eval()
    for blk in model.blocks:  # sharper than the 0.02-std init, so the layers' maps differ visibly
        torch.nn.init.normal_(blk.attn.qkv.weight, std=0.3)
    return model


def test_cls_attention_by_layer_matches_a_block_by_block_forward():
    model = small_model()
    x = torch.randn(2, 3, 48, 36)  # 4 x 3 patches
    by_layer = cls_attention_by_layer(model, x)
    assert by_layer.shape == (2, 3, 3, 4, 3)  # (B, depth, heads, h, w)
    torch.testing.assert_close(
        by_layer[:, -1], cls_attention(model, x)
    )  # the last block is the usual map
    with torch.no_grad():  # block 1's attention, recomputed from attn.qkv on its normed input
        tokens = model.blocks[0](model.prepare_tokens(x))  # (2, 13, 192)
        blk = model.blocks[1]
        qkv = (
            blk.attn.qkv(blk.norm1(tokens)).reshape(2, 13, 3, 3, 64).permute(2, 0, 3, 1, 4)
        )  # (3, 2, 3, 13, 64)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) / 8.0).softmax(-1)  # (2, 3, 13, 13)
    torch.testing.assert_close(by_layer[:, 1], attn[:, :, 0, 1:].reshape(2, 3, 4, 3))
    assert not torch.allclose(by_layer[:, 0], by_layer[:, 1])


def test_attention_entropy_of_flat_and_peaked_maps():
    flat = torch.full((2, 4, 4), 0.5)  # rescaled to sum 1 inside
    peaked = torch.zeros(4, 4)
    peaked[1, 2] = 1.0
    torch.testing.assert_close(attention_entropy(flat), torch.ones(2))
    torch.testing.assert_close(attention_entropy(peaked), torch.tensor(0.0))


def test_patch_features_are_the_normed_patch_tokens_on_the_grid():
    model = small_model()
    x = torch.randn(1, 3, 36, 48)  # 3 x 4 patches
    feats = patch_features(model, x)
    assert feats.shape == (1, 3, 4, 192)
    tokens = model.forward_features(x)  # (1, 13, 192)
    torch.testing.assert_close(feats[0, 2, 1], tokens[0, 1 + 2 * 4 + 1].detach())  # row-major


def planted_features(seed=0):
    """Two images of 6 x 6 patches: a centre square of 'object' features on a background of another
    kind."""
    g = torch.Generator().manual_seed(seed)
    obj, bg = torch.randn(16, generator=g), torch.randn(16, generator=g)
    feats = bg + 0.05 * torch.randn(2, 6, 6, 16, generator=g)  # (2, 6, 6, 16)
    fg = torch.zeros(2, 6, 6, dtype=torch.bool)
    fg[:, 2:4, 1:5] = True
    feats[fg] = obj + 0.05 * torch.randn(int(fg.sum()), 16, generator=g)
    return feats, fg


def test_pca_foreground_finds_the_planted_object_whatever_the_sign():
    feats, fg = planted_features()
    for sign in (1, -1):  # flipping every feature flips the component; the border rule undoes it
        first, mask = pca_foreground(sign * feats)
        assert first.shape == (2, 6, 6) and first.min() == 0 and first.max() == 1
        assert torch.equal(mask, fg)


def test_centring_each_image_removes_an_image_wide_offset():
    feats, fg = planted_features()
    g = torch.Generator().manual_seed(1)
    feats[1] += 5 * torch.randn(
        16, generator=g
    )  # the second image differs as a whole (its light, its colour)
    _, mask = pca_foreground(feats)
    assert not torch.equal(mask, fg)  # the first component now tells the images apart
    centred = center_per_image(feats)
    torch.testing.assert_close(centred.mean(dim=(1, 2)), torch.zeros(2, 16), atol=1e-5, rtol=0)
    _, mask = pca_foreground(centred)
    assert torch.equal(mask, fg)


def test_pca_rgb_colours_the_foreground_and_leaves_the_background_black():
    feats, fg = planted_features()
    rgb = pca_rgb(feats, fg)
    assert rgb.shape == (2, 6, 6, 3)
    assert (rgb[~fg] == 0).all()
    assert rgb[fg].min() >= 0 and rgb[fg].max() <= 1
    assert torch.allclose(rgb[fg].amax(0), torch.ones(3)) and torch.allclose(
        rgb[fg].amin(0), torch.zeros(3)
    )


def test_mutual_nearest_patches_recovers_a_shuffled_copy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, 32, generator=g)  # (h, w, D)
    perm = torch.randperm(20, generator=g)  # B's patch j is A's patch perm[j]
    b = a.reshape(20, 32)[perm].reshape(5, 4, 32) + 0.01 * torch.randn(5, 4, 32, generator=g)
    ia, ib, sim = mutual_nearest_patches(a, b, top=8)
    assert len(ia) == 8 and (sim[:-1] >= sim[1:]).all()  # the 8 best, most similar first
    assert torch.equal(perm[ib], ia)  # every match is the right patch
    ia_all, _, _ = mutual_nearest_patches(a, b, top=100)
    assert len(ia_all) == 20  # a permuted copy: every patch is a mutual nearest neighbour
