"""Decoding every Pillow mode to the right RGB, skipping unusable files by name, the course copy of
Imagenette."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdino_core import data
from vitdino_core.cli import run_cli
from vitdino_core.data import (
    IMAGENETTE_96,
    MARKER,
    DatasetNotFoundError,
    ImageFolderDataset,
    build_dataset,
    imagenette,
    is_course_copy,
    make_imagenette_96,
    open_rgb,
    to_rgb,
)

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def rgb(path: Path) -> np.ndarray:
    return np.asarray(open_rgb(path))  # (H, W, 3) uint8


# ----------------------------------------------------------------------------- every mode -> the
# right RGB values


def test_mode_1_is_black_and_white(tmp_path):
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "1"
    assert rgb(tmp_path / "a.png").tolist() == [[list(BLACK), list(WHITE)]]


def test_mode_L_repeats_the_gray_value(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "a.png")
    assert rgb(tmp_path / "a.png").tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    im.save(tmp_path / "opaque.png")
    assert rgb(tmp_path / "opaque.png").tolist() == [[[10, 20, 30], [200, 100, 50], [0, 255, 0]]]
    im.save(tmp_path / "transparent.png", transparency=2)  # entry 2 (green) is fully transparent
    assert Image.open(tmp_path / "transparent.png").mode == "P"
    assert rgb(tmp_path / "transparent.png").tolist() == [
        [[10, 20, 30], [200, 100, 50], list(WHITE)]
    ]
    im.save(tmp_path / "transparent.gif", transparency=2)
    assert rgb(tmp_path / "transparent.gif").tolist() == [
        [[10, 20, 30], [200, 100, 50], list(WHITE)]
    ]


def test_LA_and_RGBA_are_composited_over_white(tmp_path):
    la = np.array(
        [[[100, 255], [100, 0], [0, 128]]], dtype=np.uint8
    )  # (1, 3, 2): opaque, transparent, half
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = rgb(tmp_path / "la.png")
    assert out[0, 0].tolist() == [100] * 3 and out[0, 1].tolist() == list(WHITE)
    assert np.allclose(out[0, 2], 255 * 127 / 255, atol=1)  # black at alpha 128/255 over white
    rgba = np.array(
        [[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], dtype=np.uint8
    )  # the hidden pixel is blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = rgb(tmp_path / "rgba.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == list(
        WHITE
    )  # not the stored blue
    assert np.allclose(out[0, 2], 127, atol=1)


def test_rgb_with_a_transparent_colour_key(tmp_path):
    Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], dtype=np.uint8)).save(
        tmp_path / "key.png", transparency=(9, 9, 9)
    )
    assert rgb(tmp_path / "key.png").tolist() == [[[1, 2, 3], list(WHITE)]]


def test_cmyk_jpeg_and_tiff(tmp_path):
    im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    im.paste((255, 0, 0, 0), (0, 0, 4, 8))  # full cyan: (0, 255, 255)
    im.save(tmp_path / "c.tif")
    out = rgb(tmp_path / "c.tif")
    assert out[0, 0].tolist() == [0, 255, 255] and out[0, 7].tolist() == list(WHITE)
    im.save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = rgb(tmp_path / "c.jpg").astype(int)
    assert np.abs(out[2, 1] - [0, 255, 255]).max() <= 3 and np.abs(out[2, 6] - 255).max() <= 3


def test_16_bit_gray_uses_the_whole_range(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 257 * (0, 1, 128, 255)
    for name in ("g.png", "g.tif"):
        Image.fromarray(a).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I;16")
        out = rgb(tmp_path / name)
        assert out[..., 0].tolist() == [[0, 1, 128, 255]], (
            name
        )  # Pillow's own convert would give 0, 255, 255, 255
        assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_integer_scales_by_the_range_that_holds_it(tmp_path):
    cases = {  # values -> expected gray
        "8bit": ([0, 100, 255], [0, 100, 255]),
        "16bit": ([0, 257 * 100, 65535], [0, 100, 255]),
        "32bit": ([0, 2**30, 2**31 - 1], [0, 128, 255]),
        "negative": ([-5, 0, 200], [0, 0, 200]),
    }
    for name, (values, expected) in cases.items():
        Image.fromarray(np.array([values], dtype=np.int32), "I").save(tmp_path / f"{name}.tif")
        assert Image.open(tmp_path / f"{name}.tif").mode == "I"
        assert rgb(tmp_path / f"{name}.tif")[0, :, 1].tolist() == expected, name


def test_32_bit_float_rule(tmp_path):
    """[0, 1] -> x255; above 1 -> read as 0..255; clipped; NaN -> black."""
    cases = {
        "unit": ([0.0, 0.5, 1.0], [0, 128, 255]),
        "byte_scale": ([0.0, 100.0, 300.0], [0, 100, 255]),
        "nan_negative": ([np.nan, -0.5, 0.25], [0, 0, 64]),
    }
    for name, (values, expected) in cases.items():
        Image.fromarray(np.array([values], dtype=np.float32), "F").save(tmp_path / f"{name}.tif")
        assert Image.open(tmp_path / f"{name}.tif").mode == "F"
        assert rgb(tmp_path / f"{name}.tif")[0, :, 0].tolist() == expected, name


def test_rgb_is_untouched_and_every_result_is_rgb(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    assert (rgb(tmp_path / "x.png") == a).all()
    for mode in ("1", "L", "P", "LA", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr", "HSV"):
        assert to_rgb(Image.new(mode, (3, 2))).mode == "RGB", mode


def test_the_dataset_decodes_with_the_same_rules(tmp_path):
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "c" / "white16.png")
    img, _ = ImageFolderDataset(tmp_path)[0]
    assert img.mode == "RGB" and np.asarray(img).min() == 255


# ----------------------------------------------------------------------------- unusable files are
# skipped by name


def make_folder(root: Path, good: int = 3) -> dict[str, Path]:
    """root/cls/ with `good` small PNGs (red = 80 * i) and one file per way of being unusable."""
    folder = root / "cls"
    folder.mkdir(parents=True)
    for i in range(good):
        Image.fromarray(
            np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        ).save(folder / "big.png")
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(folder / f"ok{i}.png")
    ok = (folder / "big.png").read_bytes()
    (folder / "big.png").unlink()
    bad = {
        "truncated": folder / "truncated.png",
        "not_an_image": folder / "notes.png",
        "empty": folder / "empty.jpg",
        "wrong_suffix": folder / "text.jpeg",
    }
    bad["truncated"].write_bytes(ok[: len(ok) // 2])
    bad["not_an_image"].write_bytes(b"not a png at all")
    bad["empty"].write_bytes(b"")
    bad["wrong_suffix"].write_text("hello")
    return bad


def test_each_unusable_file_is_named_and_replaced(tmp_path):
    bad = make_folder(tmp_path / "imgs")
    ds = ImageFolderDataset(tmp_path / "imgs")
    with pytest.warns(UserWarning) as caught:
        images = [ds[i][0] for i in range(len(ds))]
    assert len(images) == len(ds) == 7 and all(im.size == (16, 16) for im in images)
    reported = " ".join(str(w.message) for w in caught)
    for path in bad.values():
        assert str(path) in reported
    assert sorted(ds.bad_files) == sorted(bad.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is not decoded (nor reported) again
        assert ds[ds.samples.index((bad["empty"], 0))][0].size == (16, 16)


def test_an_image_over_pillows_safety_limit_is_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "imgs" / "c"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 200, 0)).save(folder / "a_small.png")
    Image.new("RGB", (64, 64)).save(folder / "b_huge.png")
    monkeypatch.setattr(
        Image, "MAX_IMAGE_PIXELS", 1000
    )  # 64 x 64 is more than twice the limit: DecompressionBombError
    ds = ImageFolderDataset(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"b_huge\.png.*DecompressionBombError"):
        img, _ = ds[1]
    assert np.asarray(img)[0, 0].tolist() == [0, 200, 0]  # the usable image took its place


def test_a_folder_without_any_usable_image_is_one_clear_error(tmp_path, capsys):
    folder = tmp_path / "imgs" / "c"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path / "imgs")
    with (
        pytest.warns(UserWarning),
        pytest.raises(DatasetNotFoundError, match=r"no usable image left in .*imgs"),
    ):
        ds[0]

    def main(argv):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ImageFolderDataset(tmp_path / "imgs")[1]

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no usable image left in") and "\n" not in err


def loader(root: Path, workers: int) -> torch.utils.data.DataLoader:
    def to_tensor(img):
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # (3, H, W) uint8

    return torch.utils.data.DataLoader(
        ImageFolderDataset(root, transform=to_tensor), batch_size=2, num_workers=workers
    )


def test_workers_name_the_skipped_files_too(tmp_path, capfd):
    bad = make_folder(tmp_path / "imgs")
    batches = list(loader(tmp_path / "imgs", workers=2))
    images = torch.cat([b[0] for b in batches])  # (7, 3, 16, 16)
    assert images.shape == (7, 3, 16, 16)
    assert set(images[:, 0, 0, 0].tolist()) <= {0, 80, 160}  # only the good images' red values
    err = capfd.readouterr().err
    for path in bad.values():
        assert f"skipping unreadable image {path}" in err


def test_workers_stop_with_the_one_line_when_nothing_is_usable(tmp_path):
    folder = tmp_path / "imgs" / "c"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.png"):
        (folder / name).write_bytes(b"\x00" * 10)
    with pytest.raises(DatasetNotFoundError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(loader(tmp_path / "imgs", workers=2))
    msg = str(info.value)
    assert msg.startswith("no usable image left in") and "Traceback" not in msg and "\n" not in msg


# ----------------------------------------------------------------------------- one list each


def test_datasets_and_normalisation_live_in_one_place(repo_root):
    from vitdino_core.multicrop import IMAGENET_MEAN, IMAGENET_STD
    from vitdino_core.training.config import CHOICES

    assert data.TORCHVISION_DATASETS.keys() <= set(data.DATASETS)
    assert (
        tuple(CHOICES["dataset"]) == data.DATASETS
    )  # the config's choices must not drift from the one list
    with pytest.raises(ValueError, match="choose one of " + ", ".join(data.DATASETS)):
        build_dataset("imagenet")
    mine = [
        *sorted((repo_root / "vitdino_core" / "data").glob("*.py")),
        repo_root / "notebooks" / "00_setup_and_data.py",
    ]
    for path in mine:
        text = path.read_text()
        assert str(IMAGENET_MEAN[0]) not in text and str(IMAGENET_STD[0]) not in text, path


def test_no_user_facing_text_names_folders_beside_the_repository(repo_root):
    files = [
        *sorted((repo_root / "vitdino_core" / "data").glob("*.py")),
        repo_root / "data" / "README.md",
        repo_root / "notebooks" / "00_setup_and_data.py",
    ]
    for path in files:
        text = path.read_text()
        assert "shared/" not in text and "../shared" not in text, path


# ----------------------------------------------------------------------------- the course copy,
# built from a fake source

WNIDS = ("n01440764", "n02102040")


def fake_imagenette2(root: Path) -> Path:
    """A tiny imagenette2/ as torchvision's Imagenette(size="full") extracts it: JPEGs of odd sizes
    and modes."""
    src = root / "imagenette2"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for w, wnid in enumerate(WNIDS):
            (src / split / wnid).mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(100, 400)), int(rng.integers(100, 400))
                y, x = np.mgrid[0:h, 0:w]  # (h, w) each: smooth ramps, so JPEG noise stays small
                a = np.stack(
                    [255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 17.0 + i)], axis=-1
                )  # (h, w, 3)
                im = Image.fromarray(a.astype(np.uint8))
                im = im.convert("L") if i == 1 else im.convert("CMYK") if i == 2 else im
                im.save(src / split / wnid / f"{wnid}_{i}.JPEG", quality=95)
    (src / "train" / WNIDS[0] / "notes.txt").write_text(
        "not an image"
    )  # torchvision's listing ignores it
    return src


def expected_pixels(path: Path, crop: bool = False) -> np.ndarray:
    img = to_rgb(Image.open(path))
    if crop:  # what the recipe does NOT do: a centre square
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    img = img.resize((224, 224), Image.BICUBIC).resize((96, 96), Image.BICUBIC)
    return np.asarray(img).astype(int)  # (96, 96, 3)


def test_make_imagenette_96_follows_the_recipe_and_resumes(tmp_path):
    from torchvision.datasets import Imagenette

    src = fake_imagenette2(tmp_path)
    tv = {
        split: Imagenette(str(tmp_path), split=split, size="full") for split in ("train", "val")
    }  # no download
    dest = tmp_path / IMAGENETTE_96
    counts = make_imagenette_96(src, dest, quiet=True)
    assert counts == {"train": 6, "val": 4} == {split: len(ds) for split, ds in tv.items()}
    out = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.JPEG"))
    assert out == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*.JPEG")
    )  # same layout and names
    for rel in out:
        with Image.open(dest / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (96, 96)
            assert im.quantization[0][:4] == [5, 3, 3, 5]  # Pillow's quality-85 luminance table
            got = np.asarray(im).astype(int)
        squashed = np.abs(got - expected_pixels(src / rel)).mean()
        assert squashed < 2.5, rel  # the recipe, up to JPEG noise
        assert np.abs(got - expected_pixels(src / rel, crop=True)).mean() > 2 * squashed, (
            rel
        )  # squashed, not cropped
    info = json.loads((dest / MARKER).read_text())
    assert (
        info["counts"] == counts and "bicubic" in info["recipe"] and len(info["files_sha256"]) == 64
    )
    assert not is_course_copy(dest)  # a toy source is not the course copy
    assert not list(dest.rglob(".*.tmp"))

    first = dest / out[0]
    stamp = first.stat().st_mtime_ns
    (dest / out[-1]).unlink()
    assert (
        make_imagenette_96(src, dest, quiet=True) == counts
    )  # resumes: only the missing file is made again
    assert first.stat().st_mtime_ns == stamp and (dest / out[-1]).is_file()


def test_download_imagenette_96_uses_an_extracted_source_without_network(
    tmp_path, monkeypatch, capsys
):
    fake_imagenette2(tmp_path)
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    assert data.main(["download", IMAGENETTE_96, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 train / 4 val images" in out and str(tmp_path / IMAGENETTE_96) in out
    ds = build_dataset("imagenette", "val")  # found under the data root
    assert len(ds) == 4 and ds.classes == ["tench", "English springer"]


def test_a_source_image_that_cannot_be_read_is_skipped_by_name(tmp_path):
    src = fake_imagenette2(tmp_path)
    broken = src / "val" / WNIDS[1] / f"{WNIDS[1]}_9.JPEG"
    broken.write_bytes(b"\xff\xd8 broken")
    with pytest.warns(UserWarning, match=str(broken.name)):
        counts = make_imagenette_96(src, tmp_path / "out", quiet=True)
    assert counts == {"train": 6, "val": 4}


def test_is_course_copy_on_the_real_copy(shared_data):
    assert is_course_copy(shared_data / IMAGENETTE_96)
    assert len(imagenette.split_files(shared_data / IMAGENETTE_96)) == 9469 + 3925


def test_is_course_copy_needs_the_exact_names_and_the_recipe(tmp_path, monkeypatch):
    copy = tmp_path / IMAGENETTE_96
    for rel in ("train/n01440764/a.JPEG", "train/n02102040/b.JPEG", "val/n01440764/c.JPEG"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 96)).save(copy / rel, "JPEG")
    names = imagenette.split_files(copy)
    monkeypatch.setattr(imagenette, "IMAGENETTE_96_COUNTS", {"train": 2, "val": 1})
    monkeypatch.setattr(imagenette, "IMAGENETTE_V2_FILES_SHA256", imagenette.files_sha256(names))
    assert is_course_copy(copy)  # the names, 96x96, no marker: a copy made elsewhere
    Image.new("RGB", (160, 160)).save(copy / names[0], "JPEG")
    assert not is_course_copy(copy)  # the same names at another size (e.g. imagenette2-160)
    (copy / MARKER).write_text(json.dumps({"recipe": imagenette.IMAGENETTE_96_RECIPE}))
    assert is_course_copy(copy)  # the marker of our recipe decides
    (copy / MARKER).write_text(json.dumps({"recipe": "something else"}))
    assert not is_course_copy(copy)
    (copy / MARKER).write_text(json.dumps({"recipe": imagenette.IMAGENETTE_96_RECIPE}))
    (copy / names[-1]).unlink()
    assert not is_course_copy(copy)  # a file fewer
    Image.new("RGB", (96, 96)).save(copy / "val" / "n01440764" / "other.JPEG", "JPEG")
    assert not is_course_copy(copy)  # as many files, another name
