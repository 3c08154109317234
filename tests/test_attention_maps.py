"""CLS attention maps, thresholded masks and their pictures (vitdino_core.attention_maps)."""

from __future__ import annotations

import pytest
import torch

from vitdino_core import (
    cls_attention,
    denormalize,
    load_image,
    overlay_masks,
    plot_attention_heads,
    threshold_masks,
    upsample,
    vit_tiny,
)
from vitdino_core.multicrop import normalize


def official_masks(attentions: torch.Tensor, threshold: float) -> torch.Tensor:
    """visualize_attention.py of the official DINO, for one image:
    (heads, N) -> (heads, N) masks."""
    val, idx = torch.sort(attentions)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - threshold)
    idx2 = torch.argsort(idx)
    for head in range(attentions.shape[0]):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn


def random_maps(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(*shape[:-2], shape[-2] * shape[-1], generator=g)
    return x.softmax(-1).reshape(shape)  # (..., h, w), each map sums to 1


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_masks_keep_the_mass_and_are_minimal(keep):
    attn = random_maps((2, 3, 6, 5)) * 0.8  # CLS keeps some attention for itself: maps sum to 0.8
    masks = threshold_masks(attn, keep)
    assert masks.shape == attn.shape and masks.dtype == torch.bool
    share = attn / attn.sum(dim=(-2, -1), keepdim=True)  # (2, 3, 6, 5)
    kept = (share * masks).sum(dim=(-2, -1))  # (2, 3)
    assert (kept >= keep - 1e-6).all()
    smallest_kept = torch.where(masks, share, torch.inf).amin(dim=(-2, -1))  # (2, 3)
    assert (kept - smallest_kept < keep).all()  # dropping any kept patch loses the guarantee
    dropped = torch.where(masks, -torch.inf, share).amax(dim=(-2, -1))  # (2, 3)
    assert (dropped <= smallest_kept).all()  # the kept patches are the most attended ones


def test_masks_match_the_official_code():
    attn = random_maps((4, 7, 7), seed=3)  # (heads, h, w)
    expected = official_masks(attn.reshape(4, -1).clone(), 0.6).reshape(4, 7, 7)
    assert torch.equal(threshold_masks(attn, 0.6), expected)
    with pytest.raises(ValueError, match="keep"):
        threshold_masks(attn, 1.5)


def test_cls_attention_shapes_and_layout():
    torch.manual_seed(0)
    model = vit_tiny(patch_size=12, img_size=48).eval()
    x = torch.randn(2, 3, 48, 36)  # a non-square image: 4 x 3 patches
    attn = cls_attention(model, x)
    assert attn.shape == (2, 3, 4, 3)
    full = model.get_last_selfattention(x)  # (2, 3, 13, 13)
    torch.testing.assert_close(attn[:, :, 1, 2], full[:, :, 0, 1 + 1 * 3 + 2])  # row-major patches
    assert (attn >= 0).all() and (attn.sum(dim=(-2, -1)) <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match="multiple"):
        cls_attention(model, torch.randn(1, 3, 50, 48))


def test_upsample_copies_each_patch():
    maps = torch.arange(6.0).reshape(1, 2, 3)  # (1, h, w)
    up = upsample(maps, 4)
    assert up.shape == (1, 8, 12) and up[0, 5, 9] == maps[0, 1, 2] and up[0, 3, 3] == maps[0, 0, 0]
    assert upsample(maps > 2, 2).dtype == torch.bool


def test_denormalize_inverts_normalize_and_load_image(tmp_path):
    x = torch.rand(3, 8, 8)
    torch.testing.assert_close(denormalize(normalize()(x)), x, atol=1e-6, rtol=1e-6)
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 40), (200, 30, 30)).save(path)
    img = load_image(path, size=24, patch_size=12)
    assert img.shape == (1, 3, 24, 24)
    torch.testing.assert_close(
        denormalize(img)[0, :, 12, 12], torch.tensor([200, 30, 30]) / 255.0, atol=0.01, rtol=0
    )
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        load_image(path, size=25, patch_size=12)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


def test_load_image_shows_the_colours_of_transparent_and_16_bit_photos(tmp_path):
    """Attention maps read a photo as training does (`data.to_rgb`): a transparent PNG over white,
    not the colour its hidden pixels store; a 16-bit gray PNG scaled to 8 bits, not clipped to
    white."""
    import numpy as np
    from PIL import Image

    hidden = Image.new("RGBA", (48, 48), (0, 0, 255, 0))  # blue, fully transparent
    hidden.save(tmp_path / "clear.png")
    gray16 = Image.fromarray(np.full((48, 48), 32768, dtype=np.uint16))  # mid gray in 16 bits
    gray16.save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    for image in (tmp_path / "clear.png", hidden):  # a path and a PIL image alike
        pixel = denormalize(load_image(image, size=24))[0, :, 12, 12]
        torch.testing.assert_close(pixel, torch.ones(3), atol=0.01, rtol=0)  # white
    pixel = denormalize(load_image(tmp_path / "gray16.png", size=24))[0, :, 12, 12]
    torch.testing.assert_close(pixel, torch.full((3,), 128 / 255), atol=0.01, rtol=0)


def test_figures_are_drawn_and_saved(tmp_path):
    torch.manual_seed(0)
    model = vit_tiny(patch_size=12, img_size=36).eval()
    image = normalize()(torch.rand(3, 36, 36))  # (3, 36, 36)
    attn = cls_attention(model, image[None])[0]  # (3, 3, 3)
    fig = plot_attention_heads(image, attn, title="random init", save=tmp_path / "heads.png")
    assert len(fig.axes) >= 1 + 3 + 1 and (tmp_path / "heads.png").stat().st_size > 0
    fig = overlay_masks(image, threshold_masks(attn), save=tmp_path / "masks.png")
    assert (tmp_path / "masks.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="tile"):
        plot_attention_heads(image, torch.rand(3, 5, 5))


def test_tint_masks_tints_only_the_masked_patches_in_the_heads_colours():
    from matplotlib import colormaps

    from vitdino_core.attention_maps import tint_masks
    from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD

    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    image = (
        torch.full((3, 8, 8), 0.5) - mean
    ) / std  # a grey 8 x 8 image, normalised: 2 x 2 patches of 4 px
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)  # (heads, h, w)
    masks[0, 0, 0] = masks[1, 0, 0] = masks[1, 1, 1] = True
    out = tint_masks(image, masks, alpha=0.5)  # (8, 8, 3)
    blue, orange = (torch.tensor(colormaps["tab10"].colors[i]).numpy() for i in (0, 1))
    assert out.shape == (8, 8, 3)
    assert abs(out[4:, :4] - 0.5).max() < 1e-6  # no mask: the image
    assert abs(out[4:, 4:] - (0.25 + 0.5 * orange)).max() < 1e-6  # head 1 only
    assert (
        abs(out[:4, :4] - (0.5 * (0.25 + 0.5 * blue) + 0.5 * orange)).max() < 1e-6
    )  # both heads mix
    assert abs(tint_masks(image, masks, heads=[0])[4:, 4:] - 0.5).max() < 1e-6  # head 1 not drawn
