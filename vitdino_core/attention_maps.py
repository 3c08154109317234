"""What does the CLS token look at? Last-layer attention maps, as in the DINO paper's figures.

The CLS token gathers its feature by attending to the patches. Row 0 of the last block's
attention matrix, minus its own column, says how much each head draws from each patch:

    attn = model.get_last_selfattention(x)          (B, heads, N+1, N+1)
    cls  = attn[:, :, 0, 1:]                         (B, heads, N)      CLS -> patches
    maps = cls.reshape(B, heads, H/p, W/p)           one heat map per head

With R registers (DINOv2) the tokens are [cls; registers; patches] and the patches start at column
1+R (`first_patch`).

After DINO training these maps segment the main object without ever seeing a mask; a random
network's maps are noise. `threshold_masks` turns a map into a mask the way the official
`visualize_attention.py` does: keep the most-attended patches until they hold 60% of the mass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .multicrop import IMAGENET_MEAN, IMAGENET_STD
from .patch_embedding import check_image_size

# ----------------------------------------------------------------------------- images


def load_image(path_or_image, size: int = 224, patch_size: int | None = None) -> torch.Tensor:
    """A photo as a normalised (1, 3, size, size) tensor: short side resized to `size`,
    centre-cropped.

    `path_or_image` is a file path or a PIL image. Give `patch_size` to check that `size` is a
    multiple of it (the patch grid must tile the image exactly).
    """
    from .data import eval_transform, open_rgb, to_rgb

    if patch_size is not None:
        check_image_size(size, patch_size, what="size")
    if isinstance(path_or_image, (str, os.PathLike)):
        if not Path(path_or_image).is_file():
            raise FileNotFoundError(f"image not found: {path_or_image}")
        image = open_rgb(path_or_image)  # 16-bit, transparent, CMYK: the colours the image shows
    else:
        image = to_rgb(path_or_image)
    return eval_transform(size)(image).unsqueeze(0)  # (1, 3, size, size)


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo ImageNet normalisation: (..., 3, H, W) -> the same shape with values in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)  # (3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)  # (3, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)  # (..., 3, H, W)


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) or (1, 3, H, W) tensor -> (H, W, 3) numpy in [0, 1] for imshow."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}; pass images[i]")
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    return denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()  # (H, W, 3)


# ----------------------------------------------------------------------------- attention and masks


def first_patch(model: nn.Module) -> int:
    """Index of the first patch token: 1 + R, after CLS and the model's R registers (DINOv2)."""
    return 1 + getattr(model, "num_register_tokens", 0)


@torch.no_grad()
def cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last-layer attention of the CLS token to every patch: (B, 3, H, W) -> (B, heads, H/p, W/p).

    Each head's map sums to 1 - (what CLS gives itself and the registers), since a softmax row
    covers all 1+R+N tokens.
    """
    p = model.patch_size
    B, _, H, W = images.shape
    check_image_size(H, p, what="image height")
    check_image_size(W, p, what="image width")
    attn = model.get_last_selfattention(images)  # (B, heads, 1+R+N, 1+R+N)
    cls = attn[:, :, 0, first_patch(model) :]  # (B, heads, N): what CLS draws from each patch
    return cls.reshape(B, attn.shape[1], H // p, W // p).float()  # (B, heads, h, w)


def threshold_masks(attn: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """Keep the fewest most-attended patches that together hold at least `keep` of each map's mass.

    Works on any (..., h, w) maps (e.g. (B, heads, h, w) from `cls_attention`). As in the official
    `visualize_attention.py`: normalise each map to sum 1, sort ascending, take the cumulative sum
    and drop the smallest patches while their total stays <= 1 - keep; what is left is kept.
    Returns a boolean mask of the same shape.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(
            f"keep must be in (0, 1], the fraction of attention mass to keep; got {keep}"
        )
    shape = attn.shape
    flat = attn.reshape(-1, shape[-2] * shape[-1]).float()  # (M, h*w): one row per map
    val, idx = flat.sort(dim=1)  # (M, h*w) ascending
    val = val / val.sum(dim=1, keepdim=True)  # (M, h*w): each map sums to 1
    cumval = val.cumsum(dim=1)  # (M, h*w): mass of the smallest 1..h*w patches
    keep_sorted = cumval > (1 - keep)  # (M, h*w) in sorted order
    mask = torch.empty_like(keep_sorted).scatter_(
        1, idx, keep_sorted
    )  # (M, h*w) back in patch order
    return mask.reshape(shape)  # (..., h, w)


def upsample(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch-grid maps (..., h, w) -> pixel maps (..., h*p, w*p), each patch value copied to its
    pixels (nearest)."""
    dtype = maps.dtype
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (M, 1, h, w)
    x = F.interpolate(x, scale_factor=patch_size, mode="nearest")  # (M, 1, h*p, w*p)
    x = x.reshape(*lead, *x.shape[-2:])  # (..., h*p, w*p)
    return x.bool() if dtype == torch.bool else x.to(dtype)


def mask_coverage(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of patches each mask keeps: (..., h, w) bool -> (...,)."""
    return masks.float().mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- pictures


def _figure(n: int, ncols: int, panel: float):
    from matplotlib.figure import Figure

    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel * ncols, panel * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    return fig, axes


def _save(fig, save: str | os.PathLike | None) -> None:
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=100)


def _pixel_maps(maps: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """(heads, h, w) patch maps -> (heads, H, W), upsampled by the patch size the image implies."""
    if maps.ndim == 4:
        if maps.shape[0] != 1:
            raise ValueError(
                f"expected the maps of one image, got a batch of {maps.shape[0]}; pass attn[i]"
            )
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"expected (heads, h, w) maps, got shape {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == image_hw:
        return maps
    p = image_hw[0] // maps.shape[-2]
    if p * maps.shape[-2] != image_hw[0] or p * maps.shape[-1] != image_hw[1]:
        raise ValueError(
            f"maps of {tuple(maps.shape[-2:])} patches do not tile an image of {image_hw} pixels"
        )
    return upsample(maps, p)  # (heads, H, W)


def plot_attention_heads(
    image: torch.Tensor,
    attn: torch.Tensor,
    title: str | None = None,
    ncols: int = 4,
    panel: float = 2.5,
    cmap: str = "inferno",
    show_mean: bool = True,
    save: str | os.PathLike | None = None,
):
    """The image, then one heat map per head (and their mean): a matplotlib Figure, saved as PNG if
    `save`.

    `image`: a normalised (3, H, W) tensor; `attn`: (heads, h, w) patch maps from `cls_attention`
    (or already at pixel resolution).
    """
    img = _to_hwc(image)  # (H, W, 3)
    maps = _pixel_maps(attn.detach().float().cpu(), img.shape[:2])  # (heads, H, W)
    panels = [("image", None)] + [(f"head {i}", maps[i]) for i in range(maps.shape[0])]
    if show_mean:
        panels.append(("mean of heads", maps.mean(0)))
    fig, axes = _figure(len(panels), ncols, panel)
    for ax, (name, m) in zip(axes, panels):
        ax.imshow(
            img if m is None else m.numpy(),
            cmap=None if m is None else cmap,
            interpolation="nearest",
        )
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    _save(fig, save)
    return fig


def tint_masks(
    image: torch.Tensor, masks: torch.Tensor, heads: Sequence[int] | None = None, alpha: float = 0.5
) -> np.ndarray:
    """The image with each head's mask tinted in its own colour (tab10: head 0 blue, 1 orange, 2
    green...), where masks overlap the tints mix: (H, W, 3) in [0, 1]. `masks`: (heads, h, w)
    booleans; `heads`: which to draw (all by default)."""
    from matplotlib import colormaps

    out = _to_hwc(image)  # (H, W, 3)
    masks = _pixel_maps(masks.detach().cpu().bool(), out.shape[:2]).numpy()  # (heads, H, W) bool
    colors = colormaps["tab10"].colors
    for i in range(masks.shape[0]) if heads is None else heads:
        color = np.asarray(colors[i % len(colors)])  # (3,)
        out = np.where(
            masks[i][..., None], (1 - alpha) * out + alpha * color, out
        )  # (H, W, 3): tint the mask
    return out


def overlay_masks(
    image: torch.Tensor,
    masks: torch.Tensor,
    title: str | None = None,
    ncols: int = 4,
    panel: float = 2.5,
    alpha: float = 0.5,
    combined: bool = True,
    save: str | os.PathLike | None = None,
):
    """Each head's mask drawn over the image in its own colour, plus all heads on one image.

    `masks`: (heads, h, w) booleans from `threshold_masks` (or at pixel resolution). Returns a
    matplotlib Figure, saved as PNG if `save`.
    """
    from matplotlib import colormaps

    img = _to_hwc(image)  # (H, W, 3)
    masks = _pixel_maps(masks.detach().cpu().bool(), img.shape[:2]).numpy()  # (heads, H, W) bool
    colors = colormaps["tab10"].colors
    panels = [(f"head {i}", [i]) for i in range(masks.shape[0])]
    if combined:
        panels.append(("all heads", list(range(masks.shape[0]))))
    fig, axes = _figure(len(panels), ncols, panel)
    for ax, (name, heads) in zip(axes, panels):
        ax.imshow(
            tint_masks(image, torch.from_numpy(masks), heads, alpha), interpolation="nearest"
        )  # (H, W, 3)
        for i in heads:
            if masks[i].any() and not masks[i].all():
                ax.contour(
                    masks[i].astype(float),
                    levels=[0.5],
                    colors=[colors[i % len(colors)]],
                    linewidths=1.0,
                )
        ax.set_title(f"{name}: covers {masks[heads].any(0).mean():.0%}")
    if title:
        fig.suptitle(title)
    _save(fig, save)
    return fig


# ----------------------------------------------------------------------------- attention across
# depth


@torch.no_grad()
def cls_attention_by_layer(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The CLS token's attention to the patches in every block: (B, 3, H, W) -> (B, depth, heads,
    H/p, W/p).

    The tokens go through the blocks one by one, as in `forward_features`; each block is called with
    `return_attention=True`, so its own explicit softmax path gives the weights. The last entry
    equals `cls_attention(model, images)`.
    """
    p = model.patch_size
    B, _, H, W = images.shape
    check_image_size(H, p, what="image height")
    check_image_size(W, p, what="image width")
    x = model.prepare_tokens(images)  # (B, 1+R+N, D)
    maps = []
    for blk in model.blocks:
        x, attn = blk(x, return_attention=True)  # (B, 1+R+N, D), (B, heads, 1+R+N, 1+R+N)
        cls = attn[:, :, 0, first_patch(model) :]  # (B, heads, N)
        maps.append(cls.reshape(B, attn.shape[1], H // p, W // p))  # (B, heads, h, w)
    return torch.stack(maps, dim=1).float()  # (B, depth, heads, h, w)


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of each (h, w) map: (..., h, w) -> (...,); 1 for a flat map, 0 for one
    patch.

    Each map is first rescaled to sum 1 (CLS keeps part of its attention for itself)."""
    p = maps.flatten(-2) / maps.flatten(-2).sum(-1, keepdim=True)  # (..., N), sums to 1
    return -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])  # (...,)


# ----------------------------------------------------------------------------- patch features: PCA,
# correspondences


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last-layer patch tokens after the final norm: (B, 3, H, W) -> (B, H/p, W/p, D)."""
    p = model.patch_size
    B, _, H, W = images.shape
    check_image_size(H, p, what="image height")
    check_image_size(W, p, what="image width")
    tokens = model.forward_features(images)  # (B, 1+R+N, D)
    return (
        tokens[:, first_patch(model) :].reshape(B, H // p, W // p, -1).float()
    )  # (B, h, w, D): drop CLS (and registers), fold the grid


def _pca(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal directions of the rows of x (M, D): (mean (D,), components (n, D)), each
    component's sign fixed so that its largest loading is positive (SVD signs are arbitrary)."""
    mean = x.mean(0)  # (D,)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh: (min(M, D), D)
    comps = vh[:n]  # (n, D)
    signs = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()  # (n, 1)
    return mean, comps * signs  # (D,), (n, D)


def center_per_image(features: torch.Tensor) -> torch.Tensor:
    """Subtract each image's mean patch feature: (B, h, w, D) -> (B, h, w, D).

    With a small model, the largest variation among the patches of several images is often which
    image they come from (its overall colour and light); after centring, PCA sees what varies inside
    each image."""
    return features - features.mean(dim=(1, 2), keepdim=True)  # (B, h, w, D)


def pca_foreground(
    features: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground patches from the first principal component of patch features, as in DINOv2's
    figures.

    `features`: (B, h, w, D) from `patch_features` (or `center_per_image` of them). The first
    component is fitted over the patches of all B images together and min-max scaled to [0, 1] over
    them. Its sign is arbitrary, so it is flipped to make the border patches (more often background)
    the low end. Returns the scaled component (B, h, w) and the mask `component > threshold` (B, h,
    w) bool.
    """
    B, h, w, D = features.shape
    flat = features.reshape(-1, D)  # (B*h*w, D)
    mean, comps = _pca(flat, 1)  # (D,), (1, D)
    first = ((flat - mean) @ comps[0]).reshape(B, h, w)  # (B, h, w)
    border = torch.ones(h, w, dtype=torch.bool)
    border[1:-1, 1:-1] = False  # (h, w): the outer ring of patches
    if h > 2 and w > 2 and first[:, border].mean() > first[:, ~border].mean():
        first = -first
    first = (first - first.min()) / (first.max() - first.min()).clamp_min(
        1e-12
    )  # (B, h, w) in [0, 1]
    return first, first > threshold


def pca_rgb(
    features: torch.Tensor, foreground: torch.Tensor, n_components: int = 3
) -> torch.Tensor:
    """Patch features as colours: 3 principal components of the foreground patches, background
    black.

    `features` (B, h, w, D), `foreground` (B, h, w) bool. The components are fitted over the
    foreground patches of all B images together, so one colour means one direction in feature space
    in every image; each component is min-max scaled to [0, 1] over those patches. Returns (B, h, w,
    3).
    """
    B, h, w, D = features.shape
    fg = features[foreground]  # (M, D): foreground patches of all images
    if fg.shape[0] < n_components + 1:
        raise ValueError(
            f"only {fg.shape[0]} foreground patches; need more than {n_components} to fit "
            f"{n_components} components (lower the threshold of pca_foreground)"
        )
    mean, comps = _pca(fg, n_components)  # (D,), (n, D)
    proj = (fg - mean) @ comps.T  # (M, n)
    lo, hi = proj.min(0).values, proj.max(0).values  # (n,), (n,)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)  # (M, n) in [0, 1]
    rgb = torch.zeros(B, h, w, 3)  # black background
    rgb[foreground] = proj[:, :3]  # (M, 3)
    return rgb  # (B, h, w, 3)


def mutual_nearest_patches(
    feats_a: torch.Tensor, feats_b: torch.Tensor, top: int = 20
) -> tuple[torch.Tensor, ...]:
    """Patch-to-patch correspondences between two images: the `top` mutual nearest neighbours.

    `feats_a` (h1, w1, D), `feats_b` (h2, w2, D) from `patch_features`. Cosine similarity of every
    patch pair; patch i of A and j of B match when j is i's nearest in B and i is j's nearest in A.
    Returns (index in A, index in B, similarity), each (k,) with k <= top, most similar first;
    indices are row-major positions on each patch grid.
    """
    a = F.normalize(feats_a.reshape(-1, feats_a.shape[-1]).float(), dim=1)  # (N1, D)
    b = F.normalize(feats_b.reshape(-1, feats_b.shape[-1]).float(), dim=1)  # (N2, D)
    sim = a @ b.T  # (N1, N2) cosine similarities
    best_b = sim.argmax(1)  # (N1,): each A patch's nearest in B
    best_a = sim.argmax(0)  # (N2,): each B patch's nearest in A
    idx_a = torch.arange(a.shape[0])  # (N1,)
    mutual = best_a[best_b] == idx_a  # (N1,): the nearest's nearest is the patch itself
    idx_a, idx_b = idx_a[mutual], best_b[mutual]  # (m,), (m,)
    s = sim[idx_a, idx_b]  # (m,)
    order = s.argsort(descending=True)[:top]  # (k,)
    return idx_a[order], idx_b[order], s[order]
