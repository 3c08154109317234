"""Multi-crop: DINO's 2 global + N local views of one image, and the forward pass over them.

Global views (large, scale 0.4-1 of the image) go to both teacher and student; local views
(small, scale 0.05-0.4) to the student only. Matching a local view's output to a global view's
teaches "local-to-global" correspondence: the feature of a part must predict the whole.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = (
    0.1,
    2.0,
)  # the PIL radius range of the official recipe; PIL's radius is the Gaussian's sigma
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1  # 13: covers +-3 sigma at the largest sigma


def flip_and_color_jitter() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            v2.RandomGrayscale(p=0.2),
        ]
    )


def gaussian_blur(p: float) -> v2.Transform:
    return v2.RandomApply([v2.GaussianBlur(kernel_size=BLUR_KERNEL, sigma=BLUR_SIGMA)], p=p)


def normalize(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def crop_box(rrc: v2.RandomResizedCrop, image: torch.Tensor) -> dict[str, int]:
    """The box `rrc(image)` would crop with the same random state: {'top', 'left', 'height',
    'width'} in pixels.

    torchvision >= 0.21 calls this half of the transform `make_params`; older versions
    `_get_params`.
    """
    make_params = getattr(rrc, "make_params", None) or rrc._get_params
    return make_params([image])


class MultiCropAugmentation:
    """PIL image or uint8 (C, H, W) tensor -> [global_1, global_2, local_1, ..., local_N] float
    tensors.

    The recipe of the official DINO `DataAugmentationDINO`: random resized crops (bicubic), flip,
    colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur with p 1.0 /
    0.1 / 0.5 (global 1 / global 2 / locals) and solarization p 0.2 on global 2.
    """

    def __init__(
        self,
        global_crops_scale=(0.4, 1.0),
        local_crops_scale=(0.05, 0.4),
        local_crops_number: int = 8,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ):
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        for name, (lo, hi) in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        bicubic = v2.InterpolationMode.BICUBIC
        self.to_image = v2.Compose(
            [v2.ToImage(), v2.RGB()]
        )  # uint8 (3, H, W) tensor, grayscale expanded
        self.global_transfo1 = v2.Compose(
            [
                v2.RandomResizedCrop(
                    global_crops_size,
                    scale=global_crops_scale,
                    interpolation=bicubic,
                    antialias=True,
                ),
                flip_and_color_jitter(),
                gaussian_blur(1.0),
                normalize(mean, std),
            ]
        )
        self.global_transfo2 = v2.Compose(
            [
                v2.RandomResizedCrop(
                    global_crops_size,
                    scale=global_crops_scale,
                    interpolation=bicubic,
                    antialias=True,
                ),
                flip_and_color_jitter(),
                gaussian_blur(0.1),
                v2.RandomSolarize(threshold=128, p=0.2),
                normalize(mean, std),
            ]
        )
        self.local_transfo = v2.Compose(
            [
                v2.RandomResizedCrop(
                    local_crops_size, scale=local_crops_scale, interpolation=bicubic, antialias=True
                ),
                flip_and_color_jitter(),
                gaussian_blur(0.5),
                normalize(mean, std),
            ]
        )

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number

    def __call__(self, image) -> list[torch.Tensor]:
        img = self.to_image(image)  # (3, H, W) uint8
        crops = [self.global_transfo1(img), self.global_transfo2(img)]  # 2 x (3, G, G)
        crops += [self.local_transfo(img) for _ in range(self.local_crops_number)]  # N x (3, L, L)
        return crops


def collate_multicrop(batch):
    """[(crops, label), ...] -> ([globals (2B, 3, G, G), locals (N*B, 3, L, L)], labels (B,)).

    Crops are stacked view-major (all images' view 0, then all view 1, ...), which is the order
    DINOLoss expects, and crops of one size are already one tensor: one backbone pass each.
    """
    crops, labels = zip(*batch)
    nviews = len(crops[0])
    views = [torch.stack([c[v] for c in crops]) for v in range(nviews)]  # V x (B, 3, h, w)
    return group_by_resolution(views), torch.as_tensor(labels)


def group_by_resolution(views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate consecutive tensors of the same spatial size: V x (B, 3, h, w) -> a few (k*B, 3,
    h, w)."""
    groups: list[list[torch.Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [g[0] if len(g) == 1 else torch.cat(g) for g in groups]


class MultiCropWrapper(nn.Module):
    """backbone + head over a list of crops, one backbone pass per resolution (names as in DINO)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = [x]
        feats = [self.backbone(group) for group in group_by_resolution(x)]  # per size: (k*B, D)
        out = feats[0] if len(feats) == 1 else torch.cat(feats)  # (V*B, D)
        return self.head(out)  # (V*B, K)
