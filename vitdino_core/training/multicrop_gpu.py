"""Multi-crop on the device: DINO's 2 global + N local views of a whole batch at once.

The CPU recipe (`multicrop.MultiCropAugmentation`) runs image by image in DataLoader workers; a
GPU can train faster than a few CPU workers can crop. Here the same recipe is one batched
computation on uint8 images (B, 3, H, W) already on the device. Images of different sizes come as
one zero-padded batch with each image's true size (`PaddedImages`); every crop then lies inside its
own image, and the padding is never read:

    boxes   torchvision's RandomResizedCrop rule (scale, log-uniform aspect 3/4-4/3, 10 tries,
            centre-crop fallback), integer boxes, one per crop
    resize  separable antialiased bicubic: per crop a (S, H) row and a (S, W) column weight
            matrix, so resampling is two batched matmuls; the horizontal flip is the column
            matrix read backwards
    colour  jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, its four
            operations in a random order per crop; grayscale p 0.2
    blur    Gaussian, kernel 13, sigma U(0.1, 2) per crop, p 1.0 / 0.1 / 0.5 (global 1 / 2 / locals)
    solarize  p 0.2 on global 2

Why this resampling: it is the antialiased bicubic filter of `torch.nn.functional.interpolate(...,
antialias=True)` that the CPU recipe uses (Keys cubic, a = -0.5, support widened by the scale when
shrinking), computed on the crop's pixels only, so crops match the CPU path to rounding whether they
are upsampled (96 px images to 224 px crops) or downsampled (large images); `grid_sample` has no
antialiasing, and `roi_align` is bilinear. The weight matrices cost S x H per crop; the matmuls run
on tensor cores.

Differences from the CPU path, by design: pixels stay float from the first step to the last (the
CPU path rounds to uint8 after each operation), and random numbers come from one generator for the
batch instead of one seed per image. Tests compare the two paths' statistics on real images.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..multicrop import BLUR_KERNEL, BLUR_SIGMA, IMAGENET_MEAN, IMAGENET_STD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
RATIO = (3.0 / 4.0, 4.0 / 3.0)


# ----------------------------------------------------------------------------- random numbers


def _rand(
    shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32
) -> torch.Tensor:
    """U(0, 1) drawn on the generator's device (the image device without one), moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(
        device, non_blocking=True
    )


# ----------------------------------------------------------------------------- geometry


def sample_boxes(
    n: int,
    height,
    width,
    scale: Sequence[float],
    ratio: Sequence[float] = RATIO,
    tries: int = 10,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, h, w): torchvision's RandomResizedCrop rule, vectorised over
    n crops.

    Each crop tries up to `tries` (area, aspect) draws and keeps the first that fits the image;
    if none fits it falls back to the largest centred crop with an aspect ratio inside `ratio`.
    height, width: the image size, one for all crops (ints) or one per crop ((n,) tensors).
    """
    device = torch.device(device or "cpu")
    height = torch.as_tensor(height, dtype=torch.float64, device=device).expand(n)  # (n,)
    width = torch.as_tensor(width, dtype=torch.float64, device=device).expand(n)  # (n,)
    u = _rand((n, tries, 2), generator, device, torch.float64)  # (n, tries, 2)
    area = (height * width)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # (n, tries)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # (n, tries), log-uniform
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])  # (n, tries)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # (n, 1): the first try that fits
    found = fits.any(1)  # (n,)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]  # (n,)

    in_ratio = width / height  # (n,) the fallback: the largest centred crop with an allowed aspect
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fw = torch.where(wide, torch.round(height * max(ratio)), width)  # (n,)
    fh = torch.where(narrow, torch.round(width / min(ratio)), height)  # (n,)
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    pos = _rand(
        (n, 2), generator, device, torch.float64
    )  # uniform integer positions, like torch.randint
    top = torch.where(
        found,
        torch.floor(pos[:, 0] * (height - h + 1)),
        torch.div(height - fh, 2, rounding_mode="floor"),
    )
    left = torch.where(
        found,
        torch.floor(pos[:, 1] * (width - w + 1)),
        torch.div(width - fw, 2, rounding_mode="floor"),
    )
    return torch.stack((top, left, h, w), dim=1).long()  # (n, 4)


def cubic_aa(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (PIL's and torch's antialiased bicubic);
    zero for |x| >= 2."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| < 1
    far = (((x - 5) * x + 8) * x - 4) * a  # 1 <= |x| < 2
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: int,
    out_size: int,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, out_size, in_size) weights that resize pixels [start, start + length) of a line to
    out_size pixels.

    The antialiased bicubic filter of torch's interpolate(antialias=True): output pixel o samples
    the crop at centre start + scale * (o + 0.5), scale = length / out_size; when shrinking (scale >
    1) the kernel is widened by `scale` so it averages over the pixels it skips. Taps outside the
    crop are dropped and each row renormalised, as torch does at image borders. `flip` reverses the
    output order.
    """
    device = start.device
    start, length = start.to(torch.float32), length.to(torch.float32)
    scale = length / out_size  # (n,) input pixels per output pixel
    stretch = scale.clamp(min=1.0)  # (n,) kernel widening: antialiasing when shrinking
    o = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5  # (out,)
    centre = start[:, None] + scale[:, None] * o  # (n, out), in input pixel coordinates
    p = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # (in,) pixel centres
    w = cubic_aa((p[None, None, :] - centre[:, :, None]) / stretch[:, None, None])  # (n, out, in)
    inside = (p[None, :] >= start[:, None]) & (p[None, :] < (start + length)[:, None])  # (n, in)
    w = w * inside[:, None, :]
    w = w / w.sum(-1, keepdim=True)  # (n, out, in), rows sum to 1
    if flip is not None:
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return w


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Float images (B, C, H, W), boxes (V*B, 4) view-major -> crops (V*B, C, size, size), clamped
    to [0, 1]."""
    B, C, H, W = images.shape
    V = boxes.shape[0] // B
    rows = resize_weights(boxes[:, 0], boxes[:, 2], H, size).view(V, B, size, H)  # (V, B, S, H)
    cols = resize_weights(boxes[:, 1], boxes[:, 3], W, size, flip).view(
        V, B, size, W
    )  # (V, B, S, W)
    # rows first, then columns, clamping in between: the order and the clamp of torch's uint8
    # kernel,
    # which the CPU recipe runs (bicubic overshoots; without the middle clamp, edges differ by up to
    # 20/255)
    x = torch.einsum("bchw,vbtw->vbcht", images, cols).clamp_(
        0.0, 1.0
    )  # (V, B, C, H, S): along each row
    x = torch.einsum("vbsh,vbcht->vbcst", rows, x)  # (V, B, C, S, S): along each column
    return x.reshape(V * B, C, size, size).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- colour


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> luma (n, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def random_grayscale(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Gray (3 equal channels) where apply (n,) is True."""
    return torch.where(apply[:, None, None, None], grayscale(x).expand_as(x), x)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (torchvision's formula, after PIL)."""
    r, g, _ = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)  # (n, H, W)
    flat = maxc == minc  # gray pixels: hue and saturation 0
    chroma = maxc - minc
    s = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    rc, gc, bc = (
        (maxc.unsqueeze(1) - x) / torch.where(flat, torch.ones_like(chroma), chroma).unsqueeze(1)
    ).unbind(1)
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6).unsqueeze(1)  # (n, 1, H, W), the hue sector
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)  # (n, 4, H, W)
    select = torch.tensor(
        [[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device
    )  # (3, 6)
    index = select[:, i[:, 0]].movedim(0, 1)  # (n, 3, H, W): which of v, p, q, t each channel takes
    return vpqt.gather(1, index)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image (n, 3, H, W) by shift (n,) turns."""
    h, s, v = rgb_to_hsv(x).unbind(1)
    h = (h + shift[:, None, None]).remainder(1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=1))


def jitter_params(
    n: int,
    apply: torch.Tensor,
    strength: Sequence[float] = JITTER,
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter's random draws for n images: factors (n, 4) (brightness, contrast, saturation,
    hue shift; the identity 1, 1, 1, 0 where apply is False) and the order of the four operations
    (n, 4), a uniform random permutation per image."""
    b, c, s, hue = strength
    u = _rand((n, 4), generator, device)  # (n, 4)
    lo = torch.tensor([1 - b, 1 - c, 1 - s, -hue], device=device)
    factors = lo + u * torch.tensor([2 * b, 2 * c, 2 * s, 2 * hue], device=device)  # (n, 4)
    factors = torch.where(
        apply[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    )
    order = _rand((n, 4), generator, device).argsort(1)  # (n, 4)
    return factors, order


def apply_color_jitter(
    x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """The four jitter operations of each image in its own order (no random draws: see
    jitter_params).

    Brightness, contrast and saturation are one operation, a blend with a reference: black, the
    image's mean gray, or its per-pixel gray. Images with apply=False are returned unchanged
    (blend factor 1 is exact). x: (n, 3, H, W) in [0, 1]; apply: (n,) bool; factors, order: (n, 4).
    """
    for k in range(4):
        op = order[:, k]  # (n,): 0 brightness, 1 contrast, 2 saturation, 3 hue
        f = factors.gather(1, op[:, None])[:, 0]  # (n,)
        is_hue = op == 3
        gray = grayscale(x)  # (n, 1, H, W)
        ref = torch.where((op == 1)[:, None, None, None], gray.mean((1, 2, 3), keepdim=True), gray)
        ref = torch.where(
            (op == 0)[:, None, None, None], torch.zeros_like(ref), ref
        )  # (n, 1, H, W)
        fb = torch.where(is_hue, torch.ones_like(f), f)[
            :, None, None, None
        ]  # hue's turn: the blend is the identity
        blended = (fb * x + (1.0 - fb) * ref).clamp(0.0, 1.0)  # (n, 3, H, W)
        x = torch.where((is_hue & apply)[:, None, None, None], adjust_hue(x, f), blended)
    return x


def color_jitter(
    x: torch.Tensor,
    apply: torch.Tensor,
    strength: Sequence[float] = JITTER,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's ColorJitter per image: brightness, contrast, saturation, hue in a random order
    per image.

    x: (n, 3, H, W) in [0, 1]; apply: (n,) bool. The draws (jitter_params), then the pixels
    (apply_color_jitter).
    """
    factors, order = jitter_params(x.shape[0], apply, strength, generator, x.device)
    return apply_color_jitter(x, apply, factors, order)


# ----------------------------------------------------------------------------- blur, solarize,
# normalise


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, kernel_size: int = BLUR_KERNEL
) -> torch.Tensor:
    """Per-image Gaussian blur, x (n, C, H, W), sigma (n,), reflect padding, as two 1-D depthwise
    convolutions.

    The kernel is exp(-t^2 / (2 sigma^2)) at integer offsets t, normalised (torchvision's); images
    with apply=False get a unit impulse, which leaves them exactly unchanged.
    """
    n, C, H, W = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)  # (K,)
    k = torch.softmax(-((t[None, :] / sigma[:, None]) ** 2) / 2.0, dim=1)  # (n, K)
    impulse = (t == 0).to(x.dtype).expand_as(k)
    k = torch.where(apply[:, None], k, impulse).repeat_interleave(C, dim=0)  # (n*C, K)
    y = F.pad(x.reshape(1, n * C, H, W), (r, r, r, r), mode="reflect")  # (1, nC, H+2r, W+2r)
    y = F.conv2d(y, k.view(n * C, 1, 1, kernel_size), groups=n * C)  # (1, nC, H+2r, W): along rows
    y = F.conv2d(y, k.view(n * C, 1, kernel_size, 1), groups=n * C)  # (1, nC, H, W): along columns
    return y.view(n, C, H, W)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert pixels >= threshold, per image. On float pixels the uint8 rule `v >= 128` is `v >=
    127.5 / 255` (a float pixel rounds to 128 from 127.5 up)."""
    t = threshold - 0.5 / 255
    return torch.where(apply[:, None, None, None] & (x >= t), 1.0 - x, x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- the recipe


class GPUMultiCropAugmentation:
    """uint8 images (B, 3, H, W) on any device -> [globals (2B, 3, G, G), locals (N*B, 3, L, L)]
    float, normalised.

    The distribution of `MultiCropAugmentation` (DINO's recipe), batched; crops are stacked
    view-major like `collate_multicrop` (global 1 of every image, then global 2, then local 1, ...).
    With no local crops the list holds the globals only. Pass a `torch.Generator` for reproducible
    crops. The probabilities are arguments so that tests can switch parts off; the defaults are
    DINO's.
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
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p=(1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        out_dtype: torch.dtype = torch.float32,
        compile: bool = False,
    ):
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        for name, (lo, hi) in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        self.global_crops_scale, self.local_crops_scale = (
            tuple(global_crops_scale),
            tuple(local_crops_scale),
        )
        self.local_crops_number = local_crops_number
        self.global_crops_size, self.local_crops_size = global_crops_size, local_crops_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip_p, self.jitter_p, self.gray_p, self.blur_p, self.solarize_p = (
            flip_p,
            jitter_p,
            gray_p,
            tuple(blur_p),
            solarize_p,
        )
        self.out_dtype = out_dtype
        # compile: the pixel work as a few fused kernels instead of many small ones per batch, whose
        # launches
        # bound the eager version on a GPU; one static graph per view kind (global 1, global 2,
        # locals)
        self._render = torch.compile(render_views, dynamic=False) if compile else render_views

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number

    def __call__(self, images, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """images: uint8 (B, 3, H, W), or `PaddedImages` for images of different sizes."""
        sizes = None
        if isinstance(images, PaddedImages):
            images, sizes = images
            if (
                sizes.device.type == "cpu"
            ):  # checked on the host, where the loader made them: no device sync
                check_sizes(images, sizes)
            sizes = sizes.to(images.device, non_blocking=True)  # (B, 2)
        with (
            torch.autocast(images.device.type, enabled=False),
            torch.no_grad(),
        ):  # fp32 pixels even inside autocast
            return self._crops(to_unit_float(images), sizes, generator)

    def _crops(
        self, x: torch.Tensor, sizes: torch.Tensor | None, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """x: (B, 3, H, W) float in [0, 1]; sizes: (B, 2) true (height, width) of each image, or
        None (all H x W)."""
        g1 = self.views(
            x,
            sizes,
            1,
            self.global_crops_size,
            self.global_crops_scale,
            self.blur_p[0],
            0.0,
            generator,
        )
        g2 = self.views(
            x,
            sizes,
            1,
            self.global_crops_size,
            self.global_crops_scale,
            self.blur_p[1],
            self.solarize_p,
            generator,
        )
        out = [torch.cat((g1, g2))]  # (2B, 3, G, G)
        if self.local_crops_number:
            out.append(
                self.views(
                    x,
                    sizes,
                    self.local_crops_number,
                    self.local_crops_size,
                    self.local_crops_scale,
                    self.blur_p[2],
                    0.0,
                    generator,
                )
            )  # (N*B, 3, L, L)
        return out

    def views(
        self,
        x: torch.Tensor,
        sizes: torch.Tensor | None,
        nviews: int,
        size: int,
        scale,
        blur_p: float,
        solarize_p: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """`nviews` crops of every image, view-major: (nviews*B, 3, size, size), normalised.

        All random numbers are drawn first, in a fixed order, and `render_views` turns them into
        pixels: a function of tensors alone, which torch.compile can fuse into a few kernels
        (compile=True)."""
        B, _, H, W = x.shape
        n, dev = nviews * B, x.device
        # crop v*B + b is of image b: its box lies inside that image's true size (all H x W without
        # sizes)
        height, width = (
            (H, W) if sizes is None else sizes.repeat(nviews, 1).unbind(1)
        )  # ints, or 2 x (n,)
        boxes = sample_boxes(n, height, width, scale, generator=generator, device=dev)  # (n, 4)
        flip = _rand(n, generator, dev) < self.flip_p  # (n,)
        jitter = _rand(n, generator, dev) < self.jitter_p  # (n,)
        factors, order = jitter_params(n, jitter, generator=generator, device=dev)  # (n, 4), (n, 4)
        gray = _rand(n, generator, dev) < self.gray_p  # (n,)
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * _rand(n, generator, dev)  # (n,)
        blur = _rand(n, generator, dev) < blur_p  # (n,)
        solar = _rand(n, generator, dev) < solarize_p if solarize_p > 0 else None  # (n,) or None
        return self._render(
            x,
            boxes,
            size,
            flip,
            jitter,
            factors,
            order,
            gray,
            sigma,
            blur,
            solar,
            self.mean,
            self.std,
            self.out_dtype,
        )


def render_views(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor,
    jitter: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    gray: torch.Tensor,
    sigma: torch.Tensor,
    blur: torch.Tensor,
    solar: torch.Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Images x (B, 3, H, W) in [0, 1] and one view's random draws (n = V*B crops) -> (n, 3, size,
    size), normalised."""
    crops = resized_crops(x, boxes, size, flip)  # (n, 3, S, S)
    crops = apply_color_jitter(crops, jitter, factors, order)
    crops = random_grayscale(crops, gray)
    crops = gaussian_blur(crops, sigma, blur)
    if solar is not None:
        crops = solarize(crops, solar)
    return normalize(crops, mean, std).to(out_dtype)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1]; float input is taken as already in [0, 1]; 1 channel
    is repeated."""
    if images.ndim != 4:
        raise ValueError(
            f"expected a batch of images (B, C, H, W), got shape {tuple(images.shape)}; "
            "stack same-size images with torch.stack (or collate_uint8)"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(
            f"expected 3 channels (RGB), got {images.shape[1]} in shape {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if images.is_floating_point():
        return images.to(torch.float32)
    raise ValueError(f"expected uint8 (or float in [0, 1]) images, got {images.dtype}")


# ----------------------------------------------------------------------------- feeding it from a
# DataLoader


class PaddedImages(NamedTuple):
    """Images of different sizes as one batch: zero-padded at the bottom and right to the largest.

    images: uint8 (B, 3, H_max, W_max); sizes: int64 (B, 2), each image's (height, width).
    `.to(device)` moves the images; the sizes stay on the host, where GPUMultiCropAugmentation
    checks them."""

    images: torch.Tensor
    sizes: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "PaddedImages":
        return PaddedImages(self.images.to(device, non_blocking=non_blocking), self.sizes)


def check_sizes(images: torch.Tensor, sizes: torch.Tensor) -> None:
    if sizes.shape != (images.shape[0], 2):
        raise ValueError(
            f"sizes must be (B, 2) = ({images.shape[0]}, 2) for {images.shape[0]} images, got"
            f" {tuple(sizes.shape)}"
        )
    H, W = images.shape[-2:]
    if (sizes < 1).any() or (sizes[:, 0] > H).any() or (sizes[:, 1] > W).any():
        raise ValueError(
            f"every image size must lie within the padded {H} x {W}, got {sizes.tolist()}"
        )


class Uint8Images:
    """PIL image or tensor -> uint8 (3, H, W) tensor: what the loader's workers do when crops are
    made on the GPU.

    `size=None` keeps the image as it is; `size` resizes the short side to `size` (antialiased
    bicubic) and keeps the centre square. `max_size` instead shrinks an image whose longer side
    exceeds it, keeping its aspect ratio and all of its content (a bound on the padded batch's
    size).
    """

    def __init__(self, size: int | None = None, max_size: int | None = None):
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        if size is not None and max_size is not None:
            raise ValueError(
                "give size (a centre square) or max_size (the whole image, shrunk), not both"
            )
        steps = [v2.ToImage(), v2.RGB()]
        if size is not None:
            steps += [
                v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(size),
            ]
        self.transform, self.max_size = v2.Compose(steps), max_size
        self._shrink = partial(
            TF.resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )

    def __call__(self, image) -> torch.Tensor:
        x = self.transform(image).as_subclass(torch.Tensor)  # (3, H, W) uint8
        H, W = x.shape[-2:]
        if self.max_size is not None and max(H, W) > self.max_size:
            h, w = (
                max(1, round(H * self.max_size / max(H, W))),
                max(1, round(W * self.max_size / max(H, W))),
            )
            x = self._shrink(x, [h, w])  # (3, h, w)
        return x


def collate_uint8(batch, pad_to: int | None = None):
    """[(uint8 (3, H, W), label), ...] -> (uint8 (B, 3, H, W), labels (B,)) for images of one size,
    or (PaddedImages, labels) for images of different sizes, padded to the largest. `pad_to` pads
    every batch to pad_to x pad_to instead (images up to that size, e.g. from
    Uint8Images(max_size=pad_to)): one shape for every batch, so that a compiled multi-crop
    compiles once."""
    images, labels = zip(*batch)
    labels = torch.as_tensor(labels)
    shapes = [tuple(im.shape) for im in images]
    if pad_to is None and len(set(shapes)) == 1:
        return torch.stack(images), labels  # (B, 3, H, W)
    channels = {c for c, _, _ in shapes}
    if len(channels) > 1:
        raise ValueError(
            f"images with different channel counts in one batch: {sorted(channels)}; convert them"
            " to RGB"
        )
    H, W = max(h for _, h, _ in shapes), max(w for _, _, w in shapes)
    if pad_to is not None:
        if max(H, W) > pad_to:
            raise ValueError(
                f"an image of {H} x {W} does not fit pad_to={pad_to}; shrink it first"
                " (Uint8Images(max_size=...))"
            )
        H = W = pad_to
    padded = images[0].new_zeros(
        len(images), shapes[0][0], H, W
    )  # (B, 3, H, W), zero below and right of each image
    for i, im in enumerate(images):
        padded[i, :, : im.shape[1], : im.shape[2]] = im
    return PaddedImages(padded, torch.tensor([s[1:] for s in shapes])), labels
