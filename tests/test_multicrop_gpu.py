"""Batched multi-crop on the device: shapes and order, each operation against torchvision, and the
distribution against the CPU recipe (MultiCropAugmentation). Runs on CPU tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import vitdino_core.training.multicrop_gpu as mg
from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation, crop_box
from vitdino_core.training.multicrop_gpu import (
    GPUMultiCropAugmentation,
    PaddedImages,
    Uint8Images,
    adjust_hue,
    collate_uint8,
    color_jitter,
    gaussian_blur,
    grayscale,
    resized_crops,
    sample_boxes,
    solarize,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)  # geometry only


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: one thread is faster and steadier than waking a pool for each."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN  # (n, 3, h, w) back to [0, 1]


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat((a, b))
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


def ks_limit(n: int, m: int, c: float = 1.95) -> float:
    """KS critical value at about p = 0.001."""
    return c * math.sqrt((n + m) / (n * m))


def photo(size=(96, 80)) -> torch.Tensor:
    """A smooth, colourful uint8 (3, H, W) test image (gradients plus a few discs)."""
    h, w = size
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack((x, y, 1 - x * y))
    for cy, cx, r in ((0.3, 0.3, 0.15), (0.7, 0.6, 0.2)):
        img = torch.where(((y - cy) ** 2 + (x - cx) ** 2 < r * r)[None], 1 - img, img)
    return (img * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- shapes, order,
# reproducibility


def test_shapes_dtypes_and_view_major_order():
    B, N = 3, 2
    levels = [20, 120, 220]
    images = torch.stack(
        [torch.full((3, 40, 40), v, dtype=torch.uint8) for v in levels]
    )  # image b is one gray level
    aug = GPUMultiCropAugmentation(
        local_crops_number=N, global_crops_size=32, local_crops_size=16, **OFF
    )
    globals_, locals_ = aug(images, generator=torch.Generator().manual_seed(0))
    assert globals_.shape == (2 * B, 3, 32, 32) and locals_.shape == (N * B, 3, 16, 16)
    assert globals_.dtype == locals_.dtype == torch.float32
    # view-major: row v * B + b is view v of image b, as collate_multicrop stacks them
    for crops in (globals_, locals_):
        for row, img in enumerate(crops):
            want = (torch.full((3, 1, 1), levels[row % B] / 255.0) - MEAN[0]) / STD[0]
            torch.testing.assert_close(img, want.expand_as(img), atol=1e-4, rtol=0)


def test_full_recipe_output_is_normalised_and_reproducible():
    images = torch.stack([photo(), photo().flip(-1)])
    aug = GPUMultiCropAugmentation(local_crops_number=3, global_crops_size=48, local_crops_size=24)
    a = aug(images, generator=torch.Generator().manual_seed(3))
    b = aug(images, generator=torch.Generator().manual_seed(3))
    c = aug(images, generator=torch.Generator().manual_seed(4))
    assert [t.shape for t in a] == [(4, 3, 48, 48), (6, 3, 24, 24)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    with torch.autocast(
        "cpu", dtype=torch.bfloat16
    ):  # a training step's autocast does not reach the pixels
        d = aug(images, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, d))
    lo, hi = ((0 - MEAN) / STD).min().item(), ((1 - MEAN) / STD).max().item()
    for t in a:
        assert (
            torch.isfinite(t).all() and lo - 1e-4 <= t.min().item() and t.max().item() <= hi + 1e-4
        )
    only_globals = GPUMultiCropAugmentation(local_crops_number=0, global_crops_size=48)(images)
    assert len(only_globals) == 1 and only_globals[0].shape == (4, 3, 48, 48)


@pytest.mark.slow
def test_compiled_pixel_work_gives_the_eager_crops():
    """compile=True fuses render_views; the random draws are the same, so the crops agree up to
    float rounding."""
    images = torch.stack([photo((32, 32)), photo((32, 32)).flip(-1)])
    kw = dict(local_crops_number=1, global_crops_size=16, local_crops_size=8)
    eager = GPUMultiCropAugmentation(**kw)(images, generator=torch.Generator().manual_seed(5))
    compiled = GPUMultiCropAugmentation(**kw, compile=True)(
        images, generator=torch.Generator().manual_seed(5)
    )
    assert [t.shape for t in compiled] == [(4, 3, 16, 16), (2, 3, 8, 8)]
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert eager[0].std() > 0.1  # the crops are pictures, not a constant that would agree trivially


def test_bad_inputs_are_clear_errors():
    aug = GPUMultiCropAugmentation(local_crops_number=1, global_crops_size=16, local_crops_size=8)
    with pytest.raises(ValueError, match="batch of images"):
        aug(torch.zeros(3, 20, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        aug(torch.zeros(2, 4, 20, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 20, 20, dtype=torch.int32))
    with pytest.raises(ValueError, match="local_crops_scale"):
        GPUMultiCropAugmentation(local_crops_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="channel counts"):
        collate_uint8(
            [
                (torch.zeros(3, 8, 8, dtype=torch.uint8), 0),
                (torch.zeros(1, 9, 8, dtype=torch.uint8), 1),
            ]
        )
    with pytest.raises(ValueError, match="does not fit pad_to=8"):
        collate_uint8(
            [
                (torch.zeros(3, 8, 8, dtype=torch.uint8), 0),
                (torch.zeros(3, 9, 8, dtype=torch.uint8), 1),
            ],
            pad_to=8,
        )
    with pytest.raises(ValueError, match="within the padded"):
        aug(
            PaddedImages(
                torch.zeros(2, 3, 20, 20, dtype=torch.uint8), torch.tensor([[20, 20], [21, 5]])
            )
        )
    with pytest.raises(ValueError, match="not both"):
        Uint8Images(24, max_size=32)


def test_images_of_different_sizes_are_padded_and_carry_their_sizes():
    a, b = photo((30, 50)), photo((44, 20))
    padded, labels = collate_uint8([(a, 1), (b, 2)])
    assert isinstance(padded, PaddedImages) and labels.tolist() == [1, 2]
    assert padded.images.shape == (2, 3, 44, 50) and padded.sizes.tolist() == [[30, 50], [44, 20]]
    assert torch.equal(padded.images[0, :, :30], a) and torch.equal(padded.images[1, :, :, :20], b)
    assert padded.images[0, :, 30:].eq(0).all() and padded.images[1, :, :, 20:].eq(0).all()
    assert (
        padded.to("cpu").sizes is padded.sizes
    )  # .to moves the pixels; the sizes stay on the host (checked there)
    fixed, _ = collate_uint8(
        [(a, 1), (a, 2)], pad_to=64
    )  # one shape for every batch, even of equal images
    assert fixed.images.shape == (2, 3, 64, 64) and fixed.sizes.tolist() == [[30, 50], [30, 50]]
    pil = Image.fromarray(photo((30, 50)).permute(1, 2, 0).numpy())
    assert Uint8Images(max_size=25)(pil).shape == (
        3,
        15,
        25,
    )  # the longer side shrunk to 25, the aspect kept
    assert Uint8Images(max_size=64)(pil).shape == (3, 30, 50)  # small enough: untouched


def test_boxes_with_a_size_per_crop_follow_each_image():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    same = sample_boxes(
        64, torch.full((64,), 80), torch.full((64,), 96), (0.05, 0.4), generator=g()
    )
    assert torch.equal(
        same, sample_boxes(64, 80, 96, (0.05, 0.4), generator=g())
    )  # per-crop sizes = one size
    H, W = torch.tensor([30, 300, 60] * 200), torch.tensor([300, 30, 60] * 200)
    boxes = sample_boxes(600, H, W, (0.05, 1.0), generator=g())
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= H).all() and (left + w <= W).all()  # every box inside its own image
    # no draw fits a 10 x 100 image at full area: torchvision's centred fallback, image by image
    from torchvision.transforms import RandomResizedCrop

    fallback = sample_boxes(
        2, torch.tensor([10, 100]), torch.tensor([100, 10]), (1.0, 1.0), generator=g()
    )
    for (top, left, h, w), size in zip(fallback.tolist(), [(10, 100), (100, 10)]):
        assert (top, left, h, w) == RandomResizedCrop.get_params(
            torch.zeros(1, *size), [1.0, 1.0], [3 / 4, 4 / 3]
        )


def test_crops_of_a_padded_batch_never_read_the_padding():
    """The same draws on images padded with zeros and with 255 give the same crops: every crop stays
    inside its image, and each image's crops are those of the image alone."""
    images = [photo((40, 64)), photo((64, 30)), photo((52, 52))]
    padded, _ = collate_uint8([(im, 0) for im in images])
    white = PaddedImages(padded.images.clone(), padded.sizes)
    for i, im in enumerate(images):
        white.images[i, :, im.shape[1] :] = 255
        white.images[i, :, :, im.shape[2] :] = 255
    aug = GPUMultiCropAugmentation(local_crops_number=2, global_crops_size=32, local_crops_size=16)
    zeros = aug(padded, generator=torch.Generator().manual_seed(1))
    whites = aug(white, generator=torch.Generator().manual_seed(1))
    assert [tuple(c.shape) for c in zeros] == [(6, 3, 32, 32), (6, 3, 16, 16)]
    for a, b in zip(zeros, whites):
        assert torch.equal(a, b)
    # crop by crop: the padded batch's resize equals the resize of each image on its own, same boxes
    boxes = sample_boxes(
        3,
        padded.sizes[:, 0],
        padded.sizes[:, 1],
        (0.1, 1.0),
        generator=torch.Generator().manual_seed(2),
    )
    flip = torch.tensor([True, False, True])
    together = resized_crops(padded.images.float() / 255, boxes, 24, flip)  # (3, 3, 24, 24)
    for i, im in enumerate(images):
        alone = resized_crops(
            im[None].float() / 255, boxes[i : i + 1], 24, flip[i : i + 1]
        )  # (1, 3, 24, 24)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-6, rtol=0)


def test_loader_helpers_give_a_uint8_batch():
    pil = Image.fromarray(photo((30, 50)).permute(1, 2, 0).numpy())
    assert Uint8Images()(pil).shape == (3, 30, 50)
    img = Uint8Images(24)(pil)
    assert img.dtype == torch.uint8 and img.shape == (3, 24, 24) and type(img) is torch.Tensor
    images, labels = collate_uint8([(img, 1), (img, 2)])
    assert images.shape == (2, 3, 24, 24) and labels.tolist() == [1, 2]


# ----------------------------------------------------------------------------- each operation
# against torchvision


@pytest.mark.parametrize(
    "box,size",
    [((5, 7, 40, 30), 64), ((10, 3, 70, 60), 24), ((0, 0, 96, 80), 48), ((20, 10, 33, 33), 33)],
)
def test_resized_crop_matches_torchvision_bicubic_antialias(box, size):
    """Up- and downsampling: within uint8 rounding of v2.functional.resized_crop on
    the uint8 image."""
    img = photo()
    want = (
        TF.resized_crop(
            img, *box, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
        ).float()
        / 255
    )
    got = resized_crops(img[None].float() / 255, torch.tensor([box]), size)[0]
    assert (got - want).abs().max().item() <= 1.1 / 255
    flipped = resized_crops(
        img[None].float() / 255, torch.tensor([box]), size, flip=torch.tensor([True])
    )[0]
    assert torch.equal(flipped, got.flip(-1))


def test_colour_operations_match_torchvision():
    x = photo((24, 20))[None].float() / 255  # (1, 3, 24, 20)
    gray = grayscale(x)
    for fn, f, ref in (
        (TF.adjust_brightness, 1.3, torch.zeros_like(gray)),
        (TF.adjust_contrast, 0.7, gray.mean((1, 2, 3), keepdim=True)),
        (TF.adjust_saturation, 1.15, gray),
    ):
        torch.testing.assert_close(
            (f * x + (1 - f) * ref).clamp(0, 1)[0], fn(x[0], f), atol=1e-6, rtol=0
        )
    torch.testing.assert_close(
        adjust_hue(x, torch.tensor([0.07]))[0], TF.adjust_hue(x[0], 0.07), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        grayscale(x).expand_as(x)[0], TF.rgb_to_grayscale(x[0], 3), atol=1e-6, rtol=0
    )
    for sigma in (0.1, 0.8, 2.0):
        got = gaussian_blur(x, torch.tensor([sigma]), torch.tensor([True]))[0]
        torch.testing.assert_close(
            got, TF.gaussian_blur(x[0], [13, 13], [sigma, sigma]), atol=1e-5, rtol=0
        )
    u8 = photo((24, 20))
    want = TF.solarize(u8, 128).float() / 255
    torch.testing.assert_close(
        solarize(u8[None].float() / 255, torch.tensor([True]))[0], want, atol=1e-6, rtol=0
    )
    # switched off, every operation leaves the image exactly as it was
    assert torch.equal(gaussian_blur(x, torch.tensor([1.0]), torch.tensor([False])), x)
    assert torch.equal(
        color_jitter(x.repeat(8, 1, 1, 1), torch.zeros(8, dtype=torch.bool)), x.repeat(8, 1, 1, 1)
    )
    assert torch.equal(solarize(x, torch.tensor([False])), x)


# ----------------------------------------------------------------------------- distributions
# against the CPU recipe


def recipe_of(pipeline: v2.Compose) -> dict:
    """The random choices of one CPU view pipeline, read from its torchvision transforms."""
    out = {"blur_p": 0.0, "solarize_p": 0.0}

    def walk(t, p=1.0):
        if isinstance(t, v2.Compose):
            for u in t.transforms:
                walk(u, p)
        elif isinstance(t, v2.RandomApply):
            for u in t.transforms:
                walk(u, t.p)
        elif isinstance(t, v2.RandomResizedCrop):
            out.update(size=t.size[0], scale=tuple(t.scale), ratio=tuple(t.ratio))
        elif isinstance(t, v2.RandomHorizontalFlip):
            out["flip_p"] = t.p
        elif isinstance(t, v2.ColorJitter):
            out.update(
                jitter_p=p,
                jitter=(t.brightness[1] - 1, t.contrast[1] - 1, t.saturation[1] - 1, t.hue[1]),
            )
        elif isinstance(t, v2.RandomGrayscale):
            out["gray_p"] = t.p
        elif isinstance(t, v2.GaussianBlur):
            out.update(blur_p=p, sigma=tuple(t.sigma), kernel=t.kernel_size[0])
        elif isinstance(t, v2.RandomSolarize):
            out.update(solarize_p=t.p, threshold=t.threshold)

    walk(pipeline)
    return out


def test_parameters_are_the_cpu_recipes():
    cpu = MultiCropAugmentation(local_crops_number=3, global_crops_size=64, local_crops_size=32)
    gpu = GPUMultiCropAugmentation(local_crops_number=3, global_crops_size=64, local_crops_size=32)
    views = [
        recipe_of(cpu.global_transfo1),
        recipe_of(cpu.global_transfo2),
        recipe_of(cpu.local_transfo),
    ]
    for i, r in enumerate(views):
        assert r["size"] == (gpu.global_crops_size if i < 2 else gpu.local_crops_size)
        assert r["scale"] == (gpu.global_crops_scale if i < 2 else gpu.local_crops_scale)
        assert r["ratio"] == pytest.approx(mg.RATIO)
        assert (r["flip_p"], r["jitter_p"], r["gray_p"]) == (gpu.flip_p, gpu.jitter_p, gpu.gray_p)
        assert r["jitter"] == pytest.approx(mg.JITTER)
        assert (
            r["blur_p"] == gpu.blur_p[i]
            and r["sigma"] == mg.BLUR_SIGMA
            and r["kernel"] == mg.BLUR_KERNEL
        )
        assert r["solarize_p"] == (gpu.solarize_p if i == 1 else 0.0)
    assert views[1]["threshold"] == 128


def test_random_choices_happen_with_the_recipes_probabilities(monkeypatch):
    """Spy on each step of a large batch: flips 0.5, jitter 0.8, gray 0.2, blur 1.0 / 0.1 / 0.5 with
    sigma U(0.1, 2), solarize 0.2 on global 2 only."""
    calls = []

    def spy(name, fn, mask_arg):
        def wrapped(*args, **kwargs):
            calls.append(
                (
                    name,
                    (
                        args[mask_arg]
                        if len(args) > mask_arg
                        else kwargs.get("flip" if name == "flip" else "apply")
                    ),
                    args[1] if name == "blur" else None,
                )
            )
            return fn(*args, **kwargs)

        monkeypatch.setattr(mg, fn.__name__, wrapped)

    spy("flip", mg.resized_crops, 3)
    spy("jitter", mg.apply_color_jitter, 1)
    spy("gray", mg.random_grayscale, 1)
    spy("blur", mg.gaussian_blur, 2)
    spy("solarize", mg.solarize, 1)
    B = 2000
    GPUMultiCropAugmentation(local_crops_number=1, global_crops_size=8, local_crops_size=8)(
        torch.randint(0, 256, (B, 3, 8, 8), dtype=torch.uint8),
        generator=torch.Generator().manual_seed(0),
    )
    by_view = [
        [c for c in calls if c[0] == name]
        for name in ("flip", "jitter", "gray", "blur", "solarize")
    ]
    flips, jitters, grays, blurs, solars = by_view
    assert (
        len(flips) == len(jitters) == len(grays) == len(blurs) == 3 and len(solars) == 1
    )  # views: global 1, 2, local
    for view in range(3):
        assert (
            binomial_ok(flips[view][1], 0.5)
            and binomial_ok(jitters[view][1], 0.8)
            and binomial_ok(grays[view][1], 0.2)
        )
    assert blurs[0][1].all() and binomial_ok(blurs[1][1], 0.1) and binomial_ok(blurs[2][1], 0.5)
    sigma = blurs[0][2]
    assert (
        sigma.min() >= 0.1
        and sigma.max() <= 2.0
        and ks(sigma, 0.1 + 1.9 * torch.rand(B)) < ks_limit(B, B)
    )
    assert binomial_ok(solars[0][1], 0.2)


@pytest.mark.parametrize("op", range(4))
def test_each_jitter_factor_matches_torchvision(op):
    """One jitter operation at a time against v2.ColorJitter with only that factor: the factor's
    range shows directly in the output (mean for brightness, spread for contrast, colourfulness
    for saturation, hue mix)."""
    img = photo((6, 6)).float() / 255  # (3, 6, 6), several colours
    strength = [0.0, 0.0, 0.0, 0.0]
    strength[op] = mg.JITTER[op]
    n = 800
    names = ("brightness", "contrast", "saturation", "hue")
    jitter = v2.ColorJitter(**{names[op]: mg.JITTER[op]})
    torch.manual_seed(0)
    theirs = torch.stack([jitter(img) for _ in range(n)])
    ours = color_jitter(
        img.expand(n, -1, -1, -1),
        torch.ones(n, dtype=torch.bool),
        strength,
        generator=torch.Generator().manual_seed(0),
    )
    stats = {
        0: lambda x: x.mean((1, 2, 3)),
        1: lambda x: x.std((1, 2, 3)),
        2: lambda x: (x.amax(1) - x.amin(1)).mean((1, 2)),
        3: lambda x: x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2)),
    }
    assert ks(stats[op](ours), stats[op](theirs)) < ks_limit(n, n)


@pytest.mark.parametrize(
    "hw,scale", [((96, 96), (0.05, 0.4)), ((60, 100), (0.4, 1.0)), ((10, 100), (0.9, 1.0))]
)
def test_crop_boxes_follow_torchvision_rule(hw, scale):
    """Area, aspect and position of our boxes against v2.RandomResizedCrop's own sampler (incl. the
    fallback)."""
    H, W = hw
    n = 2000
    ours = sample_boxes(n, H, W, scale, generator=torch.Generator().manual_seed(0)).double()
    rrc = v2.RandomResizedCrop(8, scale=scale)
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    torch.manual_seed(0)
    theirs = torch.tensor(
        [
            [p["top"], p["left"], p["height"], p["width"]]
            for p in (crop_box(rrc, img) for _ in range(n))
        ]
    ).double()
    for name, f in (
        ("area", lambda b: b[:, 2] * b[:, 3]),
        ("aspect", lambda b: b[:, 3] / b[:, 2]),
        ("top", lambda b: b[:, 0] / (H - b[:, 2] + 1)),
        ("left", lambda b: b[:, 1] / (W - b[:, 3] + 1)),
    ):
        assert ks(f(ours), f(theirs)) < ks_limit(n, n), name
    assert (ours[:, 2] <= H).all() and (ours[:, 3] <= W).all() and (ours[:, :2] >= 0).all()


def test_geometry_on_a_coordinate_image_matches_the_cpu_crop():
    """Crop a ramp image (red = column, green = row) with both paths; the crops' extents and flips
    must agree."""
    H = W = 96
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coord = torch.stack((x * 255 // (W - 1), y * 255 // (H - 1), torch.full_like(x, 128))).to(
        torch.uint8
    )  # (3, H, W)
    n, size = 400, 32
    aug = GPUMultiCropAugmentation(
        local_crops_number=2,
        global_crops_size=size,
        local_crops_size=size,
        global_crops_scale=(0.4, 1.0),
        local_crops_scale=(0.05, 0.4),
        **OFF,
    )
    g = torch.Generator().manual_seed(0)
    gpu = unnormalize(
        torch.cat([aug(coord[None].expand(n // 2, -1, -1, -1), generator=g)[1]])
    )  # locals: (n, 3, S, S)
    cpu_tf = v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=(0.05, 0.4), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(0.5),
        ]
    )
    torch.manual_seed(0)
    cpu = torch.stack([cpu_tf(coord) for _ in range(n)]).float() / 255

    def extents(c):  # (n,) horizontal and vertical extent of the crop, signed: negative = mirrored
        dx = c[:, 0, :, -1].mean(1) - c[:, 0, :, 0].mean(1)
        dy = c[:, 1, -1, :].mean(1) - c[:, 1, 0, :].mean(1)
        return dx, dy

    (gx, gy), (cx, cy) = extents(gpu), extents(cpu)
    assert (
        abs((gx < 0).float().mean().item() - 0.5) < 0.08
        and abs((cx < 0).float().mean().item() - 0.5) < 0.08
    )  # flips
    assert (gy > 0).all() and (cy > 0).all()  # never flipped vertically
    lim = ks_limit(n, n)
    assert ks(gx.abs() * gy, cx.abs() * cy) < lim  # crop area
    assert ks(gx.abs() / gy, cx.abs() / cy) < lim  # aspect ratio
    assert (
        ks(
            gpu[:, 0, :, 0].mean(1).minimum(gpu[:, 0, :, -1].mean(1)),
            cpu[:, 0, :, 0].mean(1).minimum(cpu[:, 0, :, -1].mean(1)),
        )
        < lim
    )  # horizontal position


def binomial_ok(hits: torch.Tensor, p: float, z: float = 4.0) -> bool:
    n = hits.numel()
    return abs(hits.float().mean().item() - p) < z * math.sqrt(p * (1 - p) / n)


def crops_of(
    images_u8: torch.Tensor,
    cpu_reps: int,
    gpu_reps: int,
    gsize: int,
    lsize: int,
    nlocal: int,
    **kwargs,
):
    """(cpu, gpu): each a list [global 1, global 2, locals] of normalised crops of every image, made
    `cpu_reps` times by the CPU recipe and `gpu_reps` times by the batched one (it is cheap: give it
    more samples)."""
    kwargs = dict(
        local_crops_number=nlocal, global_crops_size=gsize, local_crops_size=lsize, **kwargs
    )
    cpu_aug = MultiCropAugmentation(**kwargs)
    torch.manual_seed(0)
    cpu = [[], [], []]
    for _ in range(cpu_reps):
        for img in images_u8:
            c = cpu_aug(img)
            cpu[0].append(c[0])
            cpu[1].append(c[1])
            cpu[2] += c[2:]
    gpu_aug = GPUMultiCropAugmentation(**kwargs)
    g, B = torch.Generator().manual_seed(0), len(images_u8)
    outs = [gpu_aug(images_u8, generator=g) for _ in range(gpu_reps)]
    gpu = [
        torch.cat([o[0][:B] for o in outs]),
        torch.cat([o[0][B:] for o in outs]),
        torch.cat([o[1] for o in outs]),
    ]
    return [torch.stack(v) for v in cpu], gpu


def colour_of(crops: torch.Tensor) -> torch.Tensor:
    return unnormalize(crops).mean((2, 3))  # (n, 3): the colour of a constant crop


def test_photometric_distribution_on_a_constant_colour_matches_the_cpu_recipe():
    """On a one-colour image every crop is one colour, so each random choice shows without image
    noise: gray crops (p 0.2), untouched crops (no jitter and no gray: 0.2 x 0.8), the spread of
    the jitter (each channel's distribution against the CPU recipe's), and solarization on global
    2 (p 0.2)."""
    colour = torch.tensor([200, 110, 40], dtype=torch.uint8)
    images = colour.view(1, 3, 1, 1).expand(50, 3, 20, 20).contiguous()
    cpu, gpu = crops_of(
        images, cpu_reps=2, gpu_reps=30, gsize=16, lsize=8, nlocal=1
    )  # 100 / 1500 crops per view
    base = colour.float() / 255
    for view, (c, g) in enumerate(zip(cpu, gpu)):
        c, g = colour_of(c), colour_of(g)
        for x in (c, g):
            gray = ((x[:, 0] - x[:, 1]).abs() < 1e-3) & ((x[:, 1] - x[:, 2]).abs() < 1e-3)
            assert binomial_ok(gray, 0.2), view
            if view != 1:  # global 2 may also be solarized
                assert binomial_ok((x - base).abs().amax(1) < 2e-3, 0.8 * 0.2), view  # untouched
        for ch in range(3):
            assert ks(c[:, ch], g[:, ch]) < ks_limit(len(c), len(g)), (view, ch)
    # solarization inverts the channels >= 0.5: it shows as crops with no channel >= 0.5, beyond
    # global 1's share
    dark = lambda x: colour_of(x).amax(1) < 0.5  # noqa: E731
    for path in (cpu, gpu):
        p1 = dark(path[0]).float().mean().item()
        assert binomial_ok(dark(path[1]), p1 + 0.2 * (1 - p1), z=4.5)


def test_blur_distribution_on_noise_matches_the_cpu_recipe():
    """On pixel noise cropped at (almost) full size, blur shows as lost sharpness; its probability
    (1.0 / 0.1 / 0.5) and sigma range set the distribution of the crops' sharpness, view by view."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 3, 20, 20), generator=g, dtype=torch.uint8)
    cpu, gpu = crops_of(
        images,
        cpu_reps=3,
        gpu_reps=25,
        gsize=20,
        lsize=20,
        nlocal=1,
        global_crops_scale=(0.95, 1.0),
        local_crops_scale=(0.95, 1.0),
    )

    def sharpness(x):
        u = unnormalize(x)
        return (u[..., 1:] - u[..., :-1]).abs().mean((1, 2, 3))

    for view, (c, gp) in enumerate(zip(cpu, gpu)):
        assert ks(sharpness(c), sharpness(gp)) < ks_limit(len(c), len(gp)), view


def test_color_jitter_matches_torchvision_distribution():
    """Our batched jitter against v2.ColorJitter(0.4, 0.4, 0.2, 0.1) itself, many draws on one small
    image: the ranges of the four factors and the random order show in each channel's mean and
    spread."""
    img = photo((6, 6)).float() / 255  # (3, 6, 6), several colours
    n = 600
    jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    torch.manual_seed(0)
    theirs = torch.stack([jitter(img) for _ in range(n)])
    ours = color_jitter(
        img.expand(n, -1, -1, -1),
        torch.ones(n, dtype=torch.bool),
        generator=torch.Generator().manual_seed(0),
    )
    lim = ks_limit(n, n)
    for ch in range(3):
        assert ks(ours[:, ch].mean((1, 2)), theirs[:, ch].mean((1, 2))) < lim, ch  # brightness, hue
        assert ks(ours[:, ch].std((1, 2)), theirs[:, ch].std((1, 2))) < lim, ch  # contrast
    chroma = lambda x: (x.amax(1) - x.amin(1)).mean((1, 2))  # noqa: E731  saturation
    assert ks(chroma(ours), chroma(theirs)) < lim


def test_real_images_match_the_cpu_recipe(shared_data):
    """imagenette-96 photos through both paths: per-channel mean and second moment of the normalised
    crops agree within sampling error; gray crops are ~0.2 of every view and solarized ones ~0.2 of
    global 2."""
    files = sorted((shared_data / "imagenette-96" / "train").rglob("*.JPEG"))
    files = files[:: max(len(files) // 40, 1)][:40]
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    )
    cpu, gpu = crops_of(
        images, cpu_reps=2, gpu_reps=10, gsize=48, lsize=24, nlocal=2
    )  # CPU: 80 / 80 / 160 crops
    for view, (c, g) in enumerate(zip(cpu, gpu)):
        for ch in range(3):
            for stat in (
                lambda x: x[:, ch].mean((1, 2)),
                lambda x: (x[:, ch] ** 2).mean((1, 2)),
            ):  # mean, second moment
                a, b = stat(c).double(), stat(g).double()
                se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
                assert abs(a.mean().item() - b.mean().item()) < 4.5 * se, (view, ch)
        for x in (c, g):
            u = unnormalize(x)
            gray = ((u[:, 0] - u[:, 1]).abs().amax((1, 2)) < 2e-3) & (
                (u[:, 1] - u[:, 2]).abs().amax((1, 2)) < 2e-3
            )
            assert abs(gray.float().mean().item() - 0.2) < 0.12, (
                view
            )  # a few photos are black and white
            if view == 1:  # solarized crops have no pixel >= 128/255
                assert abs((u.amax((1, 2, 3)) < 127.5 / 255).float().mean().item() - 0.2) < 0.12
