"""Patch embedding: cut an image into non-overlapping patches and project each to a token.

A ViT never sees pixels directly. A (B, C, H, W) image becomes a (B, N, D) sequence of
N = (H/p) * (W/p) tokens, one per p x p patch. A strided convolution with kernel = stride = p
is exactly "flatten each patch and apply one shared linear layer" (notebook 01 shows both);
`PatchEmbed` is the convolution (`proj`, as in DINO and timm).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def check_image_batch(x: torch.Tensor, patch_size: int, in_chans: int) -> None:
    """Raise a ValueError that names the problem and the fix if `x` can't be patchified."""
    if x.ndim != 4:
        raise ValueError(
            "expected an image batch of shape (B, C, H, W), got a tensor of shape"
            f" {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for a single image"
        )
    _, C, H, W = x.shape
    if C != in_chans:
        hint = (
            " (grayscale? repeat it: x.expand(-1, 3, -1, -1), or load with .convert('RGB'))"
            if C == 1
            else ""
        )
        raise ValueError(
            f"expected {in_chans} channels, got {C} in an input of shape {tuple(x.shape)}{hint}"
        )
    for name, size in (("height", H), ("width", W)):
        check_image_size(size, patch_size, what=f"image {name}")


def check_image_size(size: int, patch_size: int, what: str = "image size") -> None:
    """The package's one "multiple of the patch" rule: a ValueError that names the two nearest valid
    sizes."""
    if size < patch_size or size % patch_size != 0:
        lo, hi = nearest_multiples(size, patch_size)
        problem = (
            "is smaller than one patch"
            if size < patch_size
            else "is not a multiple of the patch size"
        )
        raise ValueError(
            f"{what} {size} {problem} ({patch_size}); use {lo} or {hi} "
            f"(any multiple of {patch_size} works)"
        )


def nearest_multiples(size: int, patch_size: int) -> tuple[int, int]:
    """The valid sizes (multiples of the patch, at least one patch) just below/above `size`."""
    lo = max(patch_size, size // patch_size * patch_size)
    return lo, lo + patch_size if lo >= size else (size // patch_size + 1) * patch_size


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): each row is one patch, flattened channel-first like the conv
    weight."""
    check_image_batch(x, patch_size, x.shape[1] if x.ndim == 4 else 3)
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution (names as in DINO and timm: `proj`)."""

    def __init__(
        self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768
    ):
        super().__init__()
        check_image_size(img_size, patch_size, what="img_size")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.patch_size, self.in_chans)
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)
