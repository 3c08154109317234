"""Any image file -> 8-bit RGB with the colours it shows: what every dataset and picture of the
course reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16-bit, 32-bit integer or 32-bit float pixels (H, W) -> uint8 (H, W), by the
    rules of `to_rgb`."""
    a = np.nan_to_num(
        a.astype(np.float64), nan=0.0, posinf=np.finfo(np.float64).max, neginf=0.0
    )  # (H, W)
    top = float(a.max())
    if mode in SIXTEEN_BIT_MODES:
        scale = 255.0 / 65535.0
    elif mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    else:  # "I": the smallest of the 8-, 16- and 32-bit ranges that holds the largest value
        scale = 1.0 if top <= 255 else 255.0 / 65535.0 if top <= 65535 else 255.0 / (2**31 - 1)
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)  # (H, W)


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return True
    if "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any image Pillow opens -> 8-bit RGB with the colours it shows.

    - 1, L, P, RGB, CMYK, YCbCr, ...: Pillow's conversion (1 -> 0 or 255; CMYK without colour
    management). - I;16 (16-bit gray): 0..65535 -> 0..255, so 65535 is white (Pillow alone would
    clip everything above 255). - I (32-bit integer): scaled from the smallest of 0..255, 0..65535,
    0..2^31-1 that holds the largest value;
      negative values are black.
    - F (32-bit float): values in [0, 1] are scaled by 255; an image with values above 1 is read as
    0..255;
      out-of-range values are clipped, NaN is black.
    - Transparency (RGBA, LA, PA, a palette or colour key with transparency): composited over
    `background`
      (white), so that hidden pixels, whatever colour they store, never show.
    """
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        gray = _gray_to_uint8(np.asarray(img), img.mode)  # (H, W) uint8
        return Image.fromarray(gray).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the whole file now (so that a truncated one fails here) and return it
    as RGB (`to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        if img.width == 0 or img.height == 0:
            raise ValueError(f"the image is {img.width}x{img.height} pixels")
        return to_rgb(img)


def is_image_file(p: Path) -> bool:
    """An image by its extension (IMG_EXTENSIONS), not a hidden file."""
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
