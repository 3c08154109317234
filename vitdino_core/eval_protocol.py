"""The evaluation protocol of frozen features: which images (train and val, never the same ones),
the features, and the scores (weighted kNN, the linear probe). `python -m vitdino_core.evaluate`
is its command.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .cli import UserError
from .data import (
    DATASETS,
    IMAGENETTE_FOLDERS,
    DatasetNotFoundError,
    ImageFolderDataset,
    build_dataset,
    eval_transform,
)
from .features import check_finite, sample_ids, save_features
from .linear_probe import extract_features, knn_classifier, linear_probe, raw_pixel_features
from .multicrop import IMAGENET_MEAN, IMAGENET_STD
from .patch_embedding import check_image_size

NO_FILE = "<no file>:"
DEFAULT_HOLDOUT = 0.2  # share of each class held out for scoring when a folder has no val/


# ----------------------------------------------------------------------------- data


def subset(dataset: Dataset, max_items: int | None, seed: int = 0) -> Dataset:
    """At most `max_items` samples, drawn at random with a fixed seed (folders are sorted by class,
    so the first N would be a single class)."""
    if not max_items or max_items >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:max_items].sort().values  # (max_items,)
    return Subset(dataset, idx.tolist())


def holdout_split(
    targets: list[int], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of each class's items, drawn with `seed`, go to val.

    Every class with at least two items has at least one in each part; a class with one item stays
    in train.
    """
    if not 0 < fraction < 1:
        raise UserError(
            f"--holdout must be between 0 and 1 (the share of images scored), got {fraction}"
        )
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for c in sorted(by_class):
        idx = torch.tensor(by_class[c])[
            torch.randperm(len(by_class[c]), generator=g)
        ].tolist()  # this class, shuffled
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _folder_splits(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None): root/train + root/val, or root itself beside a val/ when
    it is a train/ folder (data_path: data/imagenet/train), else root alone (to be split)."""
    if (root / "train").is_dir():
        return root / "train", (root / "val" if (root / "val").is_dir() else None)
    if root.name == "train" and (root.parent / "val").is_dir():
        return root, root.parent / "val"
    return root, None


def eval_datasets(
    dataset: str = "imagenette",
    data_path: str | None = None,
    transform=None,
    holdout: float | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
) -> tuple[Dataset, Dataset, dict]:
    """(train set, val set, description): the images the classifiers learn from and the disjoint
    images they score.

    Named datasets use their own train/val splits. A folder (`data_path`) uses its train/ and val/
    subfolders; without a val/ it is split `holdout` (default 0.2) per class with `seed`. The
    description says which images were used (it goes into the result JSON).
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "folder" and not data_path:
        raise UserError(
            "--dataset folder needs --data-path: a folder with one subfolder of images per class"
        )
    split_note = None
    if data_path and dataset in ("folder", "imagenette"):
        root = Path(data_path).expanduser()
        if (
            dataset == "imagenette" and not (root / "train").is_dir() and root.name != "train"
        ):  # a data root
            root = next(
                (root / n for n in IMAGENETTE_FOLDERS if (root / n / "train").is_dir()), root
            )
        train_dir, val_dir = _folder_splits(root)
        if not train_dir.is_dir():
            raise DatasetNotFoundError(
                f"image folder not found: {train_dir}; --data-path should be a folder with "
                "train/ and val/ (or one subfolder per class)"
            )
        train = ImageFolderDataset(train_dir, transform)
        if val_dir is not None:
            if holdout is not None:
                raise UserError(
                    f"{val_dir} exists, so it is what gets scored; --holdout is for folders without"
                    " val/"
                )
            val = ImageFolderDataset(val_dir, transform)
            val.classes, val.samples = train.classes, _relabel(val, train.classes)
            val.targets = [t for _, t in val.samples]
        else:
            fraction = DEFAULT_HOLDOUT if holdout is None else holdout
            _need_two_classes(train, train_dir)
            train_idx, val_idx = holdout_split(train.targets, fraction, seed)
            train, val = Subset(train, train_idx), Subset(train, val_idx)
            split_note = {"holdout": fraction, "seed": seed, "of": str(train_dir)}
        train_desc, val_desc = (
            str(train_dir),
            str(val_dir) if val_dir else f"{fraction:.0%} of {train_dir} per class",
        )
    else:
        if holdout is not None:
            raise UserError(
                f"{dataset} has its own val split; --holdout is for a --data-path folder without"
                " val/"
            )
        train = build_dataset(dataset, "train", data_path, transform=transform)
        val = build_dataset(dataset, "val", data_path, transform=transform)
        where = f" under {data_path}" if data_path else ""
        train_desc, val_desc = (
            str(getattr(ds, "root", f"{dataset} {split} split{where}"))
            for ds, split in ((train, "train"), (val, "val"))
        )  # an image folder's path, else the split's name
    _need_two_classes(train, train_desc)
    train, val = subset(train, max_train, seed), subset(val, max_val, seed)
    _check_disjoint(train, val)
    desc = {"dataset": dataset, "train": train_desc, "val": val_desc, "split": split_note}
    return train, val, desc


def _relabel(val: ImageFolderDataset, classes: list[str]) -> list:
    """val/'s samples with train/'s class indices (the two folders must name the same classes)."""
    extra = sorted(set(val.classes) - set(classes))
    if extra:
        raise UserError(
            f"{val.root} has classes that {val.root.parent / 'train'} lacks"
            f" ({', '.join(extra[:5])}); train/ and val/ must hold the same class subfolders"
        )
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[val.classes[t]]) for p, t in val.samples]


def _need_two_classes(ds: Dataset, where) -> None:
    targets = getattr(ds, "targets", None)
    if targets is not None and len(set(targets)) < 2:
        raise UserError(
            f"{where} holds a single class of images; evaluation needs labels: put the images in"
            " one subfolder per class (at least two)"
        )


def _check_disjoint(train: Dataset, val: Dataset) -> None:
    """No image file in both sets: scoring an image the kNN remembers would inflate the accuracy."""
    t, v = sample_ids(train, NO_FILE), sample_ids(val, NO_FILE)
    if not t or not v or t[0].startswith(NO_FILE) or v[0].startswith(NO_FILE):
        return  # not files: the named datasets' splits are disjoint by construction
    both = {os.path.realpath(p) for p in t} & {os.path.realpath(p) for p in v}
    if both:
        raise UserError(
            f"{len(both)} images are both in the train and the val images (e.g. {min(both)});"
            " scores would count images the classifier has seen: give a folder whose val/ is"
            " separate, or one without val/ to be split with --holdout"
        )


# ----------------------------------------------------------------------------- features and scores


def evaluate_features(
    model: nn.Module,
    dataset: str = "imagenette",
    data_path: str | None = None,
    image_size: int = 224,
    batch_size: int = 128,
    num_workers: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    probe: bool = True,
    k: int = 20,
    T: float = 0.07,
    device: str | torch.device = "cpu",
    holdout: float | None = None,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Extract train and val features with the frozen `model`, then weighted kNN and (if `probe`)
    the linear probe.

    Returns {"knn_top1", "knn_top5", "k", "T", "linear_top1", "linear_C", "num_train", "num_val",
    "feature_dim", "image_size", "data"} (linear_* are None without the probe; "data" says which
    images, see `eval_datasets`). With `save_dir` the features are also written there
    (`features.save_features`, `meta` in features.json).
    """
    check_image_size(image_size, model.patch_size)
    train_set, val_set, data = eval_datasets(
        dataset, data_path, eval_transform(image_size), holdout, seed, max_train, max_val
    )
    train_x, train_y = extract_features(
        model, train_set, batch_size, device, num_workers, desc="train features"
    )  # (N, D)
    val_x, val_y = extract_features(
        model, val_set, batch_size, device, num_workers, desc="val features"
    )  # (M, D)
    if save_dir is not None:
        record = dict(meta or {}) | {
            "image_size": image_size,
            "data": data,
            "features": "CLS token after the final norm, L2-normalised",
            "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            "transform": f"resize short side to {image_size} (bicubic), centre crop",
        }
        save_features(
            save_dir,
            train_x,
            train_y,
            val_x,
            val_y,
            sample_ids(train_set, f"{dataset}:train:"),
            sample_ids(val_set, f"{dataset}:val:"),
            record,
            overwrite,
        )
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {
        "image_size": image_size,
        "data": data,
    }


def evaluate_raw_pixels(
    size: int,
    dataset: str = "imagenette",
    data_path: str | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    probe: bool = True,
    k: int = 20,
    T: float = 0.07,
    holdout: float | None = None,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """The raw-pixel baseline: the same measures on flattened size x size pixels (see
    `raw_pixel_features`)."""
    train_set, val_set, data = eval_datasets(
        dataset, data_path, None, holdout, seed, max_train, max_val
    )
    train_x, train_y = raw_pixel_features(train_set, size, desc="train pixels")  # (N, 3*size*size)
    val_x, val_y = raw_pixel_features(val_set, size, desc="val pixels")  # (M, 3*size*size)
    if save_dir is not None:
        record = dict(meta or {}) | {
            "image_size": size,
            "data": data,
            "features": "raw pixels in [0, 1], L2-normalised",
            "normalisation": None,
            "transform": f"resize to {size}x{size}",
        }
        save_features(
            save_dir,
            train_x,
            train_y,
            val_x,
            val_y,
            sample_ids(train_set, f"{dataset}:train:"),
            sample_ids(val_set, f"{dataset}:val:"),
            record,
            overwrite,
        )
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {
        "image_size": size,
        "data": data,
    }


def score_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    probe: bool = True,
    k: int = 20,
    T: float = 0.07,
) -> dict:
    """Weighted kNN (k, T) and, if `probe`, the linear probe: train rows are the memory / fit, val
    rows are scored."""
    check_finite(train_x, "the train features")
    check_finite(val_x, "the val features")
    k_eff = min(k, train_x.shape[0])
    top1, top5 = knn_classifier(train_x, train_y, val_x, val_y, k=k_eff, T=T, return_top5=True)
    out = {
        "knn_top1": round(top1, 2),
        "knn_top5": round(top5, 2),
        "k": k_eff,
        "T": T,
        "linear_top1": None,
        "linear_C": None,
    }
    if probe:
        res = linear_probe(train_x, train_y, val_x, val_y)
        out.update(linear_top1=round(res["top1"], 2), linear_C=res["C"])
    return out | {
        "num_train": int(train_x.shape[0]),
        "num_val": int(val_x.shape[0]),
        "feature_dim": int(train_x.shape[1]),
    }
