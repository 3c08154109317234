"""Datasets by name, the data root, and a loader that feeds multi-crop batches.

Data root: `$VITDINO_DATA` if set, else `data/` in the repository. Every dataset yields
(image, label) where image is a PIL RGB image (or a uint8 (3, H, W) tensor); DINO ignores labels
for training, evaluation uses them.

From a terminal:
    python -m vitdino_core.data where                    the data root and what it holds
    python -m vitdino_core.data download imagenette-96   the course dataset (needs a network once)
    python -m vitdino_core.data download dino_vits16     DINO's published ViT-S/16 backbone (also vits8, vitb16, vitb8)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .cli import UserError, one_line, run_cli

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("imagenette", "folder", "cifar10", "mnist", "fashion_mnist", "digits", "random")
IMAGENETTE_96 = "imagenette-96"  # the course copy; `python -m vitdino_core.data download imagenette-96` makes it
IMAGENETTE_FOLDERS = (IMAGENETTE_96, "imagenette2-160", "imagenette2-320", "imagenette2", "imagenette")
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}
REPO_ROOT = Path(__file__).resolve().parent.parent

# `python -m vitdino_core.data` runs this module as __main__ after the package has imported it; the second
# copy is harmless here (errors are caught through cli.UserError), so runpy's note about it is not shown.
warnings.filterwarnings("ignore", message="'vitdino_core.data' found in sys.modules", category=RuntimeWarning)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not where we looked (or holds no usable image); the message says what to do.

    Raised in a DataLoader worker, it reaches the main process rebuilt from the worker's traceback
    text; the constructor keeps only the original message, so the user still reads one line.
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") and "Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]  # "vitdino_core.data.DatasetNotFoundError: <message>"
            args = (last.split(": ", 1)[-1],)
        super().__init__(*args)


def data_root() -> Path:
    """`$VITDINO_DATA`, else `data/` in the repository (or in the working directory for an installed package)."""
    env = os.environ.get("VITDINO_DATA")
    if env:
        return Path(env).expanduser()
    repo_data = REPO_ROOT / "data"
    return repo_data if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd() / "data"


# ----------------------------------------------------------------------------- decoding any image to RGB

BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16-bit, 32-bit integer or 32-bit float pixels (H, W) -> uint8 (H, W), by the rules of `to_rgb`."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=np.finfo(np.float64).max, neginf=0.0)  # (H, W)
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

    - 1, L, P, RGB, CMYK, YCbCr, ...: Pillow's conversion (1 -> 0 or 255; CMYK without colour management).
    - I;16 (16-bit gray): 0..65535 -> 0..255, so 65535 is white (Pillow alone would clip everything above 255).
    - I (32-bit integer): scaled from the smallest of 0..255, 0..65535, 0..2^31-1 that holds the largest value;
      negative values are black.
    - F (32-bit float): values in [0, 1] are scaled by 255; an image with values above 1 is read as 0..255;
      out-of-range values are clipped, NaN is black.
    - Transparency (RGBA, LA, PA, a palette or colour key with transparency): composited over `background`
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
    """Decode the whole file now (so that a truncated one fails here) and return it as RGB (`to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        if img.width == 0 or img.height == 0:
            raise ValueError(f"the image is {img.width}x{img.height} pixels")
        return to_rgb(img)


# ----------------------------------------------------------------------------- image folders

def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


class ImageFolderDataset(Dataset):
    """Every image under `root`, nested or flat. Label = first-level subfolder (0 for a flat folder).

    A file that cannot be used, whatever the reason (truncated, not an image, larger than Pillow's
    `Image.MAX_IMAGE_PIXELS` safety limit, no pixels, ...), is reported once by a warning that names it
    and replaced by the next usable image, so one bad file never stops a run hours in; the same happens
    in DataLoader workers, each of which reports the files it meets. Only when no usable image is left
    does it raise a `DatasetNotFoundError`. `bad_files` lists what this process skipped.
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
        else:  # a worker's warnings may be recorded, not shown, by the process that forked it: write to stderr itself
            os.write(2, f"UserWarning: {msg}\n".encode())


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
    others = ", ".join(f"{n}/" for n in IMAGENETTE_FOLDERS[1:])
    raise DatasetNotFoundError(
        f"Imagenette ({split}): no {IMAGENETTE_96}/ (nor {others}) under the data root {root} (VITDINO_DATA, else data/ "
        f"in the repository). Fix: python -m vitdino_core.data download {IMAGENETTE_96} (once, needs a network), or set "
        f"VITDINO_DATA to a folder that holds {IMAGENETTE_96}/, or give data_path an ImageFolder copy with train/ and val/"
    )


TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # names in DATASETS


def _torchvision_dataset(name: str, root: Path, split: str, download: bool):
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION_DATASETS[name])
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as e:
        raise DatasetNotFoundError(
            f"{name} not found under {root} ({e}). Fix: python -m vitdino_core.data download {name} "
            f"(needs a network), or set VITDINO_DATA to a folder that already holds it"
        ) from None
    except OSError as e:  # no network while downloading
        from .downloads import DownloadError

        reason = getattr(e, "reason", None) or one_line(e)
        raise DownloadError(f"cannot download {name} ({reason}): no network here? Run the same command on a machine that has "
                            f"one and copy what it puts in its data root into {root}") from None
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


# ----------------------------------------------------------------------------- the course copy: imagenette-96

IMAGENETTE_96_SIZE = 96
IMAGENETTE_96_COUNTS = {"train": 9469, "val": 3925}
IMAGENETTE_96_RECIPE = ("Imagenette v2 train/val lists (torchvision Imagenette, size='full'), source file names; "
                        "each image to RGB, squashed (not cropped) to 224x224 with bicubic resampling, then to 96x96 "
                        "bicubic; JPEG quality 85 (Pillow)")
IMAGENETTE_V2_FILES_SHA256 = "1d3b7e4e6d4af6b70a59b3a3dbeb85b33a623ea7039c536dbade63e771d028b1"  # of the sorted split/wnid/name list
MARKER = "DATASET.json"


def split_files(folder: Path) -> list[str]:
    """'train/<wnid>/<name>' and 'val/<wnid>/<name>' of every image in an Imagenette copy, sorted."""
    return sorted(p.relative_to(folder).as_posix() for split in ("train", "val")
                  for p in (folder / split).glob("*/*") if p.is_file() and _is_image(p))


def files_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def is_course_copy(folder: str | os.PathLike) -> bool:
    """True when `folder` (holding train/ and val/) is the course's Imagenette-96: exactly the Imagenette v2 file
    names (9,469 train, 3,925 val images), and either its DATASET.json names our recipe or its images are 96x96.
    Numbers quoted for the course (e.g. the raw-pixel baseline) hold for this copy only."""
    folder = Path(folder)
    names = split_files(folder)
    if len(names) != sum(IMAGENETTE_96_COUNTS.values()) or files_sha256(names) != IMAGENETTE_V2_FILES_SHA256:
        return False
    try:
        info = json.loads((folder / MARKER).read_text())
        return isinstance(info, dict) and info.get("recipe") == IMAGENETTE_96_RECIPE
    except (OSError, ValueError):  # no marker (a copy made elsewhere): judge by the images
        with Image.open(folder / names[0]) as img:
            return img.size == (IMAGENETTE_96_SIZE, IMAGENETTE_96_SIZE)


def _squash_one(source: Path, out: Path) -> None:
    img = open_rgb(source)
    img = img.resize((224, 224), Image.BICUBIC).resize((IMAGENETTE_96_SIZE, IMAGENETTE_96_SIZE), Image.BICUBIC)
    tmp = out.with_name(f".{out.name}.tmp")
    img.save(tmp, "JPEG", quality=85)
    os.replace(tmp, out)  # a stopped run leaves either the whole file or none


def make_imagenette_96(source: str | os.PathLike, dest: str | os.PathLike, workers: int | None = None,
                       quiet: bool = False) -> dict[str, int]:
    """Imagenette at full size (`source` holds train/ and val/ of WordNet-id folders, as torchvision's
    `Imagenette(size="full")` extracts it) -> the course copy in `dest`, by `IMAGENETTE_96_RECIPE`.

    Resumable: images already in `dest` are kept. A source image that cannot be read is skipped with a
    warning that names it. Writes `dest/DATASET.json` (recipe, counts, file-list digest) at the end.
    Returns the number of images per split.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from torchvision.datasets.folder import find_classes, make_dataset
    from tqdm.auto import tqdm

    source, dest = Path(source), Path(dest)
    jobs = []
    for split in ("train", "val"):
        if not (source / split).is_dir():
            raise DatasetNotFoundError(f"{source / split} not found: the source must hold Imagenette's train/ and val/ folders")
        _, wnid_to_idx = find_classes(str(source / split))
        for path, _ in make_dataset(str(source / split), wnid_to_idx, extensions=".jpeg"):  # torchvision's listing
            path = Path(path)
            jobs.append((path, dest / split / path.parent.name / path.name))
    todo = [(src, out) for src, out in jobs if not out.is_file()]
    for folder in sorted({out.parent for _, out in todo}):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes and resizes outside the GIL
        futures = {pool.submit(_squash_one, src, out): src for src, out in todo}
        bar = tqdm(as_completed(futures), total=len(jobs), initial=len(jobs) - len(todo), desc=IMAGENETTE_96,
                   unit="img", disable=quiet)
        for fut in bar:
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - an unreadable source image is skipped, by name
                warnings.warn(f"skipping unreadable image {futures[fut]} ({type(e).__name__}: {e})", stacklevel=2)
    names = split_files(dest)
    counts = {split: sum(n.startswith(split + "/") for n in names) for split in ("train", "val")}
    info = {"name": IMAGENETTE_96, "recipe": IMAGENETTE_96_RECIPE, "counts": counts, "files_sha256": files_sha256(names),
            "made_by": f"python -m vitdino_core.data download {IMAGENETTE_96}"}
    tmp = dest / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, dest / MARKER)
    return counts


def _extract_imagenette2(archive: Path, root: Path, quiet: bool) -> Path:
    """imagenette2.tgz -> <root>/imagenette2, through a temporary folder so that a stopped extraction leaves nothing half done."""
    import shutil
    import tarfile

    from tqdm.auto import tqdm

    tmp = root / ".imagenette2.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python's own guard where it has one
    with tarfile.open(archive) as tar:
        for m in tqdm(tar, desc="extracting imagenette2.tgz", unit="file", disable=quiet):
            if not (m.isfile() or m.isdir()):  # no links or devices in an image archive
                continue
            if m.name.startswith(("/", "..")) or "/../" in m.name:
                raise DatasetNotFoundError(f"{archive} holds an unsafe path ({m.name}); delete it and download again")
            tar.extract(m, tmp, **safe)
    os.replace(tmp / "imagenette2", root / "imagenette2")
    shutil.rmtree(tmp, ignore_errors=True)
    return root / "imagenette2"


def download_imagenette_96(root: Path, source: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """Make `<root>/imagenette-96` (the course copy) from Imagenette v2 at full size: `source` if given, else
    `<root>/imagenette2` if there, else the downloaded imagenette2.tgz (1.5 GB, resumable; deleted once extracted)."""
    from .downloads import IMAGENETTE2_MD5, IMAGENETTE2_URL, DownloadError, download_file

    dest = root / IMAGENETTE_96
    if is_course_copy(dest):  # already there: nothing to do
        return dest
    if source is not None:
        src = Path(source).expanduser()
    elif (root / "imagenette2" / "train").is_dir() and (root / "imagenette2" / "val").is_dir():
        src = root / "imagenette2"
    else:
        archive = root / "imagenette2.tgz"
        try:
            download_file(IMAGENETTE2_URL, archive, md5=IMAGENETTE2_MD5, desc="imagenette2.tgz (1.5 GB)", quiet=quiet)
        except DownloadError as e:
            raise DownloadError(f"{e}; or set VITDINO_DATA to a folder that already holds {IMAGENETTE_96}/") from None
        src = _extract_imagenette2(archive, root, quiet)
        archive.unlink()
    make_imagenette_96(src, dest, quiet=quiet)
    return dest


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


# ----------------------------------------------------------------------------- command line

def _describe(path: Path) -> str:
    if path.name == IMAGENETTE_96 and (path / "train").is_dir():
        counts = {split: sum(1 for p in (path / split).glob("*/*") if _is_image(p)) for split in ("train", "val")}
        kind = "the course copy" if is_course_copy(path) else "not the course copy (other files or images)"
        return f"{counts['train']:,} train / {counts['val']:,} val images, {kind}"
    if path.is_dir():
        return f"{sum(1 for _ in path.iterdir())} entries"
    from .downloads import human_size

    return human_size(path.stat().st_size)


def where_lines(root: Path | None = None) -> list[str]:
    """What `python -m vitdino_core.data where` prints: the data root, what it holds, and what to run when Imagenette is missing."""
    root = data_root() if root is None else root
    how = "from VITDINO_DATA" if os.environ.get("VITDINO_DATA") else "data/ in the repository; set VITDINO_DATA to move it"
    lines = [f"data root: {root} ({how})"]
    entries = sorted(root.iterdir()) if root.is_dir() else []
    for path in entries:
        if path.name.startswith(".") or path.name == "README.md":
            continue
        lines.append(f"  {path.name + ('/' if path.is_dir() else ''):<24} {_describe(path)}")
        if path.name == "dino" and path.is_dir():
            lines += [f"    {w.name:<40} {_describe(w)}" for w in sorted(path.glob("*.pth"))]
    if not any((root / name / "train").is_dir() for name in IMAGENETTE_FOLDERS):
        lines.append(f"Imagenette, the course dataset, is missing. Get it with: python -m vitdino_core.data download {IMAGENETTE_96}"
                     f"  (once; needs a network: a 1.5 GB download becomes a 50 MB folder)")
    return lines


def _print_fetched(path: Path) -> None:
    from .downloads import human_size

    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    print(f"{path} ({human_size(size)})")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .downloads import DINO_WEIGHTS, download_dino, dino_url

    names = (IMAGENETTE_96, "imagenette", *TORCHVISION_DATASETS, *DINO_WEIGHTS)
    parser = argparse.ArgumentParser(
        prog="python -m vitdino_core.data", description="Show the data root, or download a dataset or DINO's weights into it.",
        epilog=f"names: {IMAGENETTE_96} (the course copy; 'imagenette' is the same), {', '.join(TORCHVISION_DATASETS)}; "
               f"DINO's published weights: {', '.join(DINO_WEIGHTS)} (into <data root>/dino/)")
    parser.add_argument("command", choices=["where", "download"])
    parser.add_argument("name", nargs="?", choices=names, metavar="NAME", help="what to download (see below)")
    parser.add_argument("--source", help=f"for {IMAGENETTE_96}: a folder that already holds Imagenette v2 at full size "
                                         "(train/ and val/), instead of downloading it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    root = data_root()
    if args.command == "where":
        print("\n".join(where_lines(root)))
        return 0
    if args.name is None:
        parser.error(f"download needs a NAME, e.g. python -m vitdino_core.data download {IMAGENETTE_96}")
    root.mkdir(parents=True, exist_ok=True)
    if args.name in DINO_WEIGHTS:
        print(f"fetching {dino_url(args.name)}")
        path = download_dino(args.name, root, quiet=args.quiet)
    elif args.name in (IMAGENETTE_96, "imagenette"):
        path = download_imagenette_96(root, source=args.source, quiet=args.quiet)
        names = split_files(path)
        counts = {split: sum(n.startswith(split + "/") for n in names) for split in ("train", "val")}
        print(f"{IMAGENETTE_96}: {counts['train']:,} train / {counts['val']:,} val images"
              f"{'' if is_course_copy(path) else ' (not the exact course copy: the source had other files)'}")
    else:
        for split in ("train", "val"):
            _torchvision_dataset(args.name, root, split, download=True)
        path = root
    _print_fetched(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
