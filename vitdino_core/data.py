"""Datasets by name, the data root, and a loader that feeds multi-crop batches.

Data root: `$VITDINO_DATA` if set, else `data/` in the repository. Every dataset yields
(image, label) where image is a PIL RGB image (or a uint8 (3, H, W) tensor); DINO ignores labels
for training, evaluation uses them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .cli import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("imagenette", "folder", "cifar10", "mnist", "fashion_mnist", "digits", "random")
IMAGENETTE_FOLDERS = ("imagenette-96", "imagenette2-160", "imagenette2-320", "imagenette2", "imagenette")
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}
REPO_ROOT = Path(__file__).resolve().parent.parent


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not where we looked; the message says where we looked and how to fix it."""


def data_root() -> Path:
    """`$VITDINO_DATA`, else `data/` in the repository (or in the working directory for an installed package)."""
    env = os.environ.get("VITDINO_DATA")
    if env:
        return Path(env).expanduser()
    repo_data = REPO_ROOT / "data"
    return repo_data if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd() / "data"


# ----------------------------------------------------------------------------- image folders

def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


class ImageFolderDataset(Dataset):
    """Every image under `root`, nested or flat. Label = first-level subfolder (0 for a flat folder).

    An unreadable or corrupt file is reported by path (once) and replaced by the next good image,
    so one bad JPEG never stops a run hours in. `bad_files` lists what was skipped.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder not found: {self.root}")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and _is_image(p))
        if not files:
            raise DatasetNotFoundError(
                f"no images found under {self.root} (looked for {', '.join(IMG_EXTENSIONS)}); point data_path at a folder of images"
            )
        top = sorted({p.relative_to(self.root).parts[0] for p in files if len(p.relative_to(self.root).parts) > 1})
        self.classes = top or ["images"]
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index.get(p.relative_to(self.root).parts[0], 0) if top else 0) for p in files]
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.bad_files: list[Path] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        with Image.open(path) as img:
            img.load()  # decode now so truncated files fail here
            return img.convert("RGB")

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                img = self.load(i)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                self._report(self.samples[i][0], e)
                continue
            return (self.transform(img) if self.transform else img), self.samples[i][1]
        raise RuntimeError(f"no readable image in {self.root}")

    def _report(self, path: Path, err: Exception) -> None:
        if path not in self.bad_files:
            self.bad_files.append(path)
            warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=3)


# ----------------------------------------------------------------------------- datasets by name

class TensorImageDataset(Dataset):
    """(N, H, W, C) or (N, H, W) uint8 array + labels -> PIL RGB images (digits, random)."""

    def __init__(self, images: np.ndarray, labels, classes: list[str], transform: Callable | None = None):
        self.images, self.targets, self.classes, self.transform = images, list(labels), classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[index]


def find_imagenette(root: Path, split: str) -> Path:
    for name in IMAGENETTE_FOLDERS:
        if (root / name / split).is_dir():
            return root / name / split
    looked = ", ".join(str(root / n / split) for n in IMAGENETTE_FOLDERS)
    raise DatasetNotFoundError(
        f"Imagenette ({split}) not found; looked in {looked}.\n"
        f"Fix: set VITDINO_DATA to a folder that holds imagenette-96/ (e.g. export VITDINO_DATA=../shared/data), "
        f"set data_path to an ImageFolder copy, or download it with: python -m vitdino_core.data download imagenette"
    )


def _torchvision_dataset(name: str, root: Path, split: str, download: bool):
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as e:
        raise DatasetNotFoundError(
            f"{name} not found under {root} ({e}). Fix: python -m vitdino_core.data download {name} "
            f"(needs a network), or set VITDINO_DATA to a folder that already holds it"
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
        img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), int(label)


def build_dataset(name: str = "imagenette", split: str = "train", data_path: str | None = None, transform: Callable | None = None,
                  download: bool = False, image_size: int = 96, num_images: int = 512, seed: int = 0) -> Dataset:
    """A dataset by name; `data_path` overrides where it is looked for. `image_size`/`num_images` are for `random`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(data_path).expanduser() if data_path else data_root()
    if name == "imagenette":
        folder = root / split if data_path and (root / split).is_dir() else (root if data_path else find_imagenette(root, split))
        if data_path and not folder.is_dir():
            raise DatasetNotFoundError(f"Imagenette folder not found: {folder}; data_path should hold train/ and val/ ImageFolders")
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
        return TensorImageDataset(images[idx], d.target[idx].tolist(), [str(i) for i in range(10)], transform)
    # random: reproducible noise images with random labels, for sanity runs without any data
    g = np.random.default_rng(seed + (0 if split == "train" else 1))
    images = g.integers(0, 256, size=(num_images, image_size, image_size, 3), dtype=np.uint8)
    return TensorImageDataset(images, g.integers(0, 10, size=num_images).tolist(), [str(i) for i in range(10)], transform)


# ----------------------------------------------------------------------------- multi-crop loading

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A reproducible augmentation seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class MultiCropDataset(Dataset):
    """Applies `transform` (e.g. MultiCropAugmentation) with a per-sample seed.

    Keys are (index, seed) pairs from `EpochBatchSampler`: the crops of an image depend only on the
    run's seed, the epoch and the image, not on the number of workers, so a resumed run sees exactly
    the crops the uninterrupted run would have seen.
    """

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.dataset[index]
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label


class EpochBatchSampler:
    """Shuffled batches of (index, seed) keys; the order depends only on (seed, epoch).

    With `world_size` > 1 each rank takes every world_size-th index of the shared permutation
    (the DistributedSampler rule). What one iteration yields is a span of global steps (step s is batch
    s % len(self) of epoch s // len(self)): `set_epoch` picks one epoch's batches (or a slice of them, for
    resuming and max_steps), `set_steps` a span across epochs.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if len(self) == 0:
            raise ValueError(
                f"batch_size_per_gpu={batch_size} x {world_size} process(es) is larger than the dataset "
                f"({num_samples} images) with drop_last: lower the batch size or use more images"
            )
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0, stop_batch: int | None = None) -> None:
        """Yield batches [start_batch, stop_batch) of this epoch's order on the next iteration."""
        n = len(self)
        stop = n if stop_batch is None else min(stop_batch, n)
        self.set_steps(epoch * n + start_batch, epoch * n + stop)

    def set_steps(self, start_step: int, stop_step: int) -> None:
        """Yield the batches of global steps [start_step, stop_step) on the next iteration, epoch after epoch.
        One iteration over several epochs keeps the loader's workers busy across epoch ends, where restarting
        the iteration would make the first batch of every epoch wait for a worker to build it from scratch."""
        self.start_step, self.stop_step = start_step, stop_step

    def __len__(self) -> int:
        per_rank = self.num_samples // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's image indices for `epoch`, in order: the shared permutation of (seed, epoch), every world_size-th."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        return perm[self.rank::self.world_size][: self.num_samples // self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n, mine, mine_epoch = len(self), None, None
        for step in range(self.start_step, self.stop_step):
            epoch, b = divmod(step, n)
            if epoch != mine_epoch:  # one permutation per epoch
                mine, mine_epoch = self.epoch_order(epoch), epoch
            idx = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, epoch, i)) for i in idx]


def make_loader(dataset: MultiCropDataset, sampler: EpochBatchSampler, num_workers: int, collate_fn, pin_memory: bool,
                worker_init_fn=None) -> DataLoader:
    """A loader with its own generator: starting an epoch draws no number from the global RNG, which
    drop path uses, so a resumed run continues the exact random stream of an uninterrupted one."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(sampler.seed))


# ----------------------------------------------------------------------------- evaluation transform

def eval_transform(image_size: int):
    """Resize the short side, centre-crop to a square, normalise: what features are extracted from."""
    from torchvision.transforms import v2

    from .multicrop import normalize

    return v2.Compose([v2.ToImage(), v2.RGB(), v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.CenterCrop(image_size), normalize()])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vitdino_core.data", description="Download a dataset into the data root.")
    parser.add_argument("command", choices=["download", "where"])
    parser.add_argument("name", choices=["imagenette", "cifar10", "mnist", "fashion_mnist"], nargs="?", default="imagenette")
    args = parser.parse_args(argv)
    root = data_root()
    if args.command == "where":
        print(root)
        return
    root.mkdir(parents=True, exist_ok=True)
    if args.name == "imagenette":
        from torchvision.datasets import Imagenette

        for split in ("train", "val"):
            Imagenette(str(root), split=split, size="160px", download=split == "train")
        print(f"Imagenette (160 px) is in {root / 'imagenette2-160'}")
    else:
        for split in ("train", "val"):
            _torchvision_dataset(args.name, root, split, download=True)
        print(f"{args.name} is in {root}")


if __name__ == "__main__":
    main()
