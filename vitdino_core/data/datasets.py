"""Datasets by name and the data root. Every dataset yields (image, label) where image is a PIL RGB
image (or what `transform` makes of it); DINO ignores labels for training, evaluation uses them.

Data root: `$VITDINO_DATA` if set, else `data/` in the repository.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..cli import UserError, one_line
from .images import IMG_EXTENSIONS, is_image_file, open_rgb, to_rgb

DATASETS = ("imagenette", "folder", "cifar10", "mnist", "fashion_mnist", "digits", "random")
# the course copy; `python -m vitdino_core.data download imagenette-96` makes it
IMAGENETTE_96 = "imagenette-96"
IMAGENETTE_FOLDERS = (
    IMAGENETTE_96,
    "imagenette2-160",
    "imagenette2-320",
    "imagenette2",
    "imagenette",
)
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not where we looked (or holds no usable image); the message says what to
    do.

    Raised in a DataLoader worker, it reaches the main process rebuilt from the worker's traceback
    text; the constructor keeps only the original message, so the user still reads one line.
    """

    def __init__(self, *args):
        if (
            len(args) == 1
            and isinstance(args[0], str)
            and args[0].startswith("Caught ")
            and "Traceback" in args[0]
        ):
            last = (
                args[0].rstrip().splitlines()[-1]
            )  # "vitdino_core.data.datasets.DatasetNotFoundError: <message>"
            args = (last.split(": ", 1)[-1],)
        super().__init__(*args)


def data_root() -> Path:
    """`$VITDINO_DATA`, else `data/` in the repository (or in the working directory for an installed
    package)."""
    env = os.environ.get("VITDINO_DATA")
    if env:
        return Path(env).expanduser()
    repo_data = REPO_ROOT / "data"
    return repo_data if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd() / "data"


# ----------------------------------------------------------------------------- image folders


class ImageFolderDataset(Dataset):
    """Every image under `root`, nested or flat. Label = first-level subfolder (0 for a flat
    folder).

    A file that cannot be used, whatever the reason (truncated, not an image, larger than Pillow's
    `Image.MAX_IMAGE_PIXELS` safety limit, no pixels, ...), is reported once by a warning that names
    it and replaced by the next usable image, so one bad file never stops a run hours in; the same
    happens in DataLoader workers, each of which reports the files it meets. Only when no usable
    image is left does it raise a `DatasetNotFoundError`. `bad_files` lists what this process
    skipped.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder not found: {self.root}")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DatasetNotFoundError(
                f"no images found under {self.root} (looked for {', '.join(IMG_EXTENSIONS)}); point"
                " data_path at a folder of images"
            )
        top = sorted(
            {
                p.relative_to(self.root).parts[0]
                for p in files
                if len(p.relative_to(self.root).parts) > 1
            }
        )
        self.classes = top or ["images"]
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [
            (p, index.get(p.relative_to(self.root).parts[0], 0) if top else 0) for p in files
        ]
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.bad_files: list[Path] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        n = len(self.samples)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                img = self.load(i)
            except Exception as e:  # noqa: BLE001 - any reason a file cannot be decoded makes it unusable
                self._report(i, e)
                continue
            return (self.transform(img) if self.transform else img), self.samples[i][1]
        raise DatasetNotFoundError(
            f"no usable image left in {self.root}: none of its {n} image files could be read "
            f"(e.g. {self.samples[0][0].name}); replace them or point data_path at another folder"
        )

    def _report(self, i: int, err: Exception) -> None:
        self._bad.add(i)
        path = self.samples[i][0]
        self.bad_files.append(path)
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        msg = f"skipping unreadable image {path} ({reason}); another image takes its place"
        if torch.utils.data.get_worker_info() is None:
            warnings.warn(msg, stacklevel=3)
        # a worker's warnings may be recorded, not shown, by the process that forked it: write to
        # stderr itself
        else:
            os.write(2, f"UserWarning: {msg}\n".encode())


# ----------------------------------------------------------------------------- datasets by name


class TensorImageDataset(Dataset):
    """(N, H, W, C) or (N, H, W) uint8 array + labels -> PIL RGB images (digits, random)."""

    def __init__(
        self, images: np.ndarray, labels, classes: list[str], transform: Callable | None = None
    ):
        self.images, self.targets, self.classes, self.transform = (
            images,
            list(labels),
            classes,
            transform,
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[index]


def find_imagenette(root: Path, split: str) -> Path:
    for name in IMAGENETTE_FOLDERS:
        if (root / name / split).is_dir():
            return root / name / split
    others = ", ".join(f"{n}/" for n in IMAGENETTE_FOLDERS[1:])
    raise DatasetNotFoundError(
        f"Imagenette ({split}): no {IMAGENETTE_96}/ (nor {others}) under the data root {root}"
        " (VITDINO_DATA, else data/ in the repository). Fix: python -m vitdino_core.data download"
        f" {IMAGENETTE_96} (once, needs a network), or set VITDINO_DATA to a folder that holds"
        f" {IMAGENETTE_96}/, or give data_path an ImageFolder copy with train/ and val/"
    )


TORCHVISION_DATASETS = {
    "cifar10": "CIFAR10",
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
}  # names in DATASETS


def _torchvision_dataset(name: str, root: Path, split: str, download: bool):
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION_DATASETS[name])
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as e:
        raise DatasetNotFoundError(
            f"{name} not found under {root} ({e}). Fix: python -m vitdino_core.data download {name}"
            " (needs a network), or set VITDINO_DATA to a folder that already holds it"
        ) from None
    except OSError as e:  # no network while downloading
        from .downloads import DownloadError

        reason = getattr(e, "reason", None) or one_line(e)
        raise DownloadError(
            f"cannot download {name} ({reason}): no network here? Run the same command on a machine"
            f" that has one and copy what it puts in its data root into {root}"
        ) from None
    return ds


class _RGBView(Dataset):
    """Wrap a torchvision dataset so that every image is RGB (MNIST is grayscale)."""

    def __init__(self, ds, transform=None):
        self.ds, self.transform = ds, transform
        self.classes = list(getattr(ds, "classes", []))
        self.targets = [int(t) for t in getattr(ds, "targets", [])]

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        img, label = self.ds[index]
        img = to_rgb(img)
        return (self.transform(img) if self.transform else img), int(label)


def build_dataset(
    name: str = "imagenette",
    split: str = "train",
    data_path: str | None = None,
    transform: Callable | None = None,
    download: bool = False,
    image_size: int = 96,
    num_images: int = 512,
    seed: int = 0,
) -> Dataset:
    """A dataset by name; `data_path` overrides where it is looked for. `image_size`/`num_images`
    are for `random`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(data_path).expanduser() if data_path else data_root()
    if name == "imagenette":
        folder = (
            root / split
            if data_path and (root / split).is_dir()
            else (root if data_path else find_imagenette(root, split))
        )
        if data_path and not folder.is_dir():
            raise DatasetNotFoundError(
                f"Imagenette folder not found: {folder}; data_path should hold train/ and val/"
                " ImageFolders"
            )
        ds = ImageFolderDataset(folder, transform)
        ds.classes = [IMAGENETTE_CLASSES.get(c, c) for c in ds.classes]
        return ds
    if name == "folder":
        if not data_path:
            raise ValueError("dataset 'folder' needs data_path: the folder of images to train on")
        return ImageFolderDataset(root / split if (root / split).is_dir() else root, transform)
    if name in ("cifar10", "mnist", "fashion_mnist"):
        return _RGBView(_torchvision_dataset(name, root, split, download), transform)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = (d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        idx = np.random.default_rng(0).permutation(len(images))
        cut = int(0.8 * len(idx))
        idx = idx[:cut] if split == "train" else idx[cut:]
        return TensorImageDataset(
            images[idx], d.target[idx].tolist(), [str(i) for i in range(10)], transform
        )
    # random: reproducible noise images with random labels, for sanity runs without any data
    g = np.random.default_rng(seed + (0 if split == "train" else 1))
    images = g.integers(0, 256, size=(num_images, image_size, image_size, 3), dtype=np.uint8)
    return TensorImageDataset(
        images, g.integers(0, 10, size=num_images).tolist(), [str(i) for i in range(10)], transform
    )


# ----------------------------------------------------------------------------- evaluation transform


def eval_transform(image_size: int):
    """Resize the short side, centre-crop to a square, normalise: what features
    are extracted from."""
    from torchvision.transforms import v2

    from ..multicrop import normalize

    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            normalize(),
        ]
    )
