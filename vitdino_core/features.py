"""Frozen features on disk, so that classifiers can be tried again without running the model.

`python -m vitdino_core.evaluate --ckpt ... --save-features DIR` writes, and `--features DIR` reads:

    DIR/train_features.npy   (N, D) float32, one L2-normalised CLS feature per image
    DIR/train_labels.npy     (N,) int64 class indices
    DIR/train_paths.txt      N lines: the image file of each row (or <dataset>:<split>:<index> without files)
    DIR/val_features.npy, DIR/val_labels.npy, DIR/val_paths.txt      the same for the images scored
    DIR/features.json        what made them: model, weights, image size, dataset, counts, normalisation, date

"train" rows are what the kNN remembers and the probe is fitted on; "val" rows are only scored.
`features.json` is written last, so a folder that has it is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .cli import UserError

SPLITS = ("train", "val")
FILES = ("features.npy", "labels.npy", "paths.txt")


@dataclass
class Features:
    """Features, labels and image paths of the two splits, and the record of what made them."""

    train_x: torch.Tensor  # (N, D)
    train_y: torch.Tensor  # (N,)
    val_x: torch.Tensor  # (M, D)
    val_y: torch.Tensor  # (M,)
    train_paths: list[str] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def sample_ids(dataset: Dataset, prefix: str = "") -> list[str]:
    """One name per item: its image file when the dataset reads files, else `prefix` + its index there."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):  # map through the subsets down to the dataset that holds the items
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [str(samples[i][0]) for i in indices]
    return [f"{prefix}{i}" for i in indices]


def save_features(out_dir: str | os.PathLike, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                  val_y: torch.Tensor, train_paths: list[str] | None = None, val_paths: list[str] | None = None,
                  meta: dict | None = None) -> Path:
    """Write the two splits' features, labels and paths, then `features.json` (meta + counts + date)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": (train_x, train_y, train_paths), "val": (val_x, val_y, val_paths)}
    counts = {}
    for split, (x, y, paths) in splits.items():
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"{split}: features must be (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        paths = list(paths) if paths is not None else [f"{split}:{i}" for i in range(x.shape[0])]
        if len(paths) != x.shape[0]:
            raise ValueError(f"{split}: {len(paths)} paths for {x.shape[0]} features")
        np.save(out / f"{split}_features.npy", x.detach().float().cpu().numpy())  # (N, D) float32
        np.save(out / f"{split}_labels.npy", y.detach().long().cpu().numpy())  # (N,) int64
        (out / f"{split}_paths.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in paths))
        counts[split] = int(x.shape[0])
    record = dict(meta or {}) | {"num_train": counts["train"], "num_val": counts["val"],
                                 "feature_dim": int(train_x.shape[1]),
                                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / "features.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def load_features(features_dir: str | os.PathLike) -> Features:
    """Read a folder written by `save_features` (arrays are loaded without pickle)."""
    d = Path(features_dir)
    if not d.is_dir():
        raise UserError(f"features folder not found: {d}; write one with "
                        "python -m vitdino_core.evaluate --ckpt FILE --save-features DIR")
    lacking = [f"{s}_{f}" for s in SPLITS for f in FILES if not (d / f"{s}_{f}").is_file()]
    if lacking or not (d / "features.json").is_file():
        raise UserError(f"{d} is not a complete features folder (it lacks {', '.join(lacking or ['features.json'])}); "
                        "write one with python -m vitdino_core.evaluate --ckpt FILE --save-features DIR")
    arrays = {}
    for split in SPLITS:
        try:
            x = np.load(d / f"{split}_features.npy", allow_pickle=False)
            y = np.load(d / f"{split}_labels.npy", allow_pickle=False)
        except ValueError as e:
            raise UserError(f"could not read the {split} arrays in {d}: {e}") from None
        paths = (d / f"{split}_paths.txt").read_text().splitlines()
        if x.ndim != 2 or y.shape != (x.shape[0],) or len(paths) != x.shape[0]:
            raise UserError(f"{d}: {split} files disagree ({x.shape} features, {y.shape} labels, {len(paths)} paths); "
                            "write the folder again with --save-features")
        arrays[split] = (torch.from_numpy(x), torch.from_numpy(y).long(), paths)
    if arrays["train"][0].shape[1] != arrays["val"][0].shape[1]:
        raise UserError(f"{d}: train and val features have different widths; write the folder again with --save-features")
    meta = json.loads((d / "features.json").read_text())
    (tx, ty, tp), (vx, vy, vp) = arrays["train"], arrays["val"]
    return Features(tx, ty, vx, vy, tp, vp, meta)
