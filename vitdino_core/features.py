"""Frozen features on disk, so that classifiers can be tried again without running the model.

`python -m vitdino_core.evaluate --ckpt ... --save-features DIR` writes, and `--features DIR` reads:

    DIR/train_features.npy   (N, D) float32, one L2-normalised CLS feature per image
    DIR/train_labels.npy     (N,) int64 class indices
    DIR/train_paths.txt      N lines: the image file of each row
                             (or <dataset>:<split>:<index> without files)
    DIR/val_features.npy, DIR/val_labels.npy, DIR/val_paths.txt      the same for the images scored
    DIR/features.json        what made them: model, weights, image size, dataset, counts,
                             normalisation, date

"train" rows are what the kNN remembers and the probe is fitted on; "val" rows are only scored. A
paths file holds one name per line as it is, or, for a name that is not plain UTF-8 text on one line
(a newline in it, bytes the file system allows but UTF-8 does not), the name as a JSON string
("..."), so that every file name round-trips. The folder is written into a temporary folder beside
it and renamed into place: a reader sees the old folder or the new one, never a mix; replacing an
existing one needs `overwrite=True` (`--overwrite`), and a folder holding other files is never
replaced.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .checkpoint import _umask
from .cli import UserError

SPLITS = ("train", "val")
FILES = ("features.npy", "labels.npy", "paths.txt")
FOLDER_FILES = {"features.json", *(f"{s}_{f}" for s in SPLITS for f in FILES)}
# above ImageNet-21k's 21,841: a larger label is a damaged file (the kNN allocates a column per
# class)
MAX_CLASSES = 25_000
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


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
    """One name per item: its image file when the dataset reads files, else
    `prefix` + its index there."""
    indices = list(range(len(dataset)))
    while isinstance(
        dataset, Subset
    ):  # map through the subsets down to the dataset that holds the items
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [str(samples[i][0]) for i in indices]
    return [f"{prefix}{i}" for i in indices]


def _encode_path(name: str) -> str:
    """A name as one line: itself when it is plain UTF-8 on one line, else a JSON string (surrogates
    escaped)."""
    plain = name == "".join(name.splitlines()) and not name.startswith('"')
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by os.fsdecode as surrogates
        plain = False
    return name if plain else json.dumps(name)


def _decode_path(line: str) -> str:
    return json.loads(line) if line.startswith('"') else line


def target_problem(out_dir: str | os.PathLike, overwrite: bool) -> str:
    """'' if a features folder may be written at `out_dir`, else why not (a folder to keep, or not
    ours to replace)."""
    out = Path(out_dir)
    if not out.is_dir() or not any(out.iterdir()):
        return ""
    others = sorted(p.name for p in out.iterdir() if p.name not in FOLDER_FILES)
    if others:
        return (
            f"{out} holds files that are not features ({', '.join(others[:3])}); it is not"
            " replaced: give a new or empty folder"
        )
    if not overwrite:
        return (
            f"{out} already holds features; add --overwrite to replace them, or give another folder"
        )
    return ""


def save_features(
    out_dir: str | os.PathLike,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    train_paths: list[str] | None = None,
    val_paths: list[str] | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the two splits' features, labels and paths, then `features.json` (meta + counts +
    date), into a temporary folder beside `out_dir` that then replaces it whole (`overwrite=True`
    to replace features there)."""
    out = Path(out_dir)
    problem = target_problem(out, overwrite)
    if problem:
        raise UserError(problem)
    splits = {"train": (train_x, train_y, train_paths), "val": (val_x, val_y, val_paths)}
    for split, (x, y, paths) in splits.items():
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"{split}: features must be (N, D) and labels (N,), got {tuple(x.shape)} and"
                f" {tuple(y.shape)}"
            )
        if paths is not None and len(paths) != x.shape[0]:
            raise ValueError(f"{split}: {len(paths)} paths for {x.shape[0]} features")
        check_finite(x, f"the {split} features to save in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_folder(tmp, splits, meta)
        _replace_folder(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in DISK_FULL:
            kept = f"{out} is as it was" if out.exists() else f"nothing was written to {out}"
            raise UserError(
                f"no space left on the disk while writing features to {out}; {kept}. "
                "Free some space or give a folder on another disk"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_folder(d: Path, splits: dict, meta: dict | None) -> None:
    counts = {}
    for split, (x, y, paths) in splits.items():
        paths = list(paths) if paths is not None else [f"{split}:{i}" for i in range(x.shape[0])]
        np.save(d / f"{split}_features.npy", x.detach().float().cpu().numpy())  # (N, D) float32
        np.save(d / f"{split}_labels.npy", y.detach().long().cpu().numpy())  # (N,) int64
        (d / f"{split}_paths.txt").write_text(
            "".join(_encode_path(p) + "\n" for p in paths), encoding="utf-8"
        )
        counts[split] = int(x.shape[0])
    record = dict(meta or {}) | {
        "num_train": counts["train"],
        "num_val": counts["val"],
        "feature_dim": int(splits["train"][0].shape[1]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (d / "features.json").write_text(json.dumps(record, indent=2) + "\n")
    for f in d.iterdir():  # on disk before the rename makes them the folder
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    d.chmod(0o777 & ~_umask())  # mkdtemp made it 0700; a folder as mkdir would make it


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an old `out` is first renamed aside and removed after, so a crash
    leaves one whole folder."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def check_finite(x: torch.Tensor, what: str) -> None:
    """Refuse NaN/inf: a kNN over them scores a number that means nothing."""
    bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    if bad:
        raise UserError(
            f"{what}: {bad} of {x.numel()} values are not finite (NaN/inf); they cannot be scored"
        )


def load_features(features_dir: str | os.PathLike) -> Features:
    """Read a folder written by `save_features` (arrays are loaded without pickle)."""
    d = Path(features_dir)
    if not d.is_dir():
        raise UserError(
            f"features folder not found: {d}; write one with "
            "python -m vitdino_core.evaluate --ckpt FILE --save-features DIR"
        )
    lacking = [f"{s}_{f}" for s in SPLITS for f in FILES if not (d / f"{s}_{f}").is_file()]
    if lacking or not (d / "features.json").is_file():
        raise UserError(
            f"{d} is not a complete features folder (it lacks"
            f" {', '.join(lacking or ['features.json'])}); write one with python -m"
            " vitdino_core.evaluate --ckpt FILE --save-features DIR"
        )
    arrays = {}
    for split in SPLITS:
        try:
            x = np.load(d / f"{split}_features.npy", allow_pickle=False)
            y = np.load(d / f"{split}_labels.npy", allow_pickle=False)
        except ValueError as e:
            raise UserError(f"could not read the {split} arrays in {d}: {e}") from None
        try:
            text = (d / f"{split}_paths.txt").read_text(encoding="utf-8")
            paths = [
                _decode_path(ln) for ln in text.split("\n")[:-1]
            ]  # "\n" only: a name may hold other breaks
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(
                f"{d / f'{split}_paths.txt'} is not a paths file written by --save-features "
                f"({type(e).__name__}: {str(e)[:80]}); write the folder again with --save-features"
            ) from None
        if x.ndim != 2 or y.shape != (x.shape[0],) or len(paths) != x.shape[0]:
            raise UserError(
                f"{d}: {split} files disagree ({x.shape} features, {y.shape} labels, {len(paths)}"
                " paths); write the folder again with --save-features"
            )
        _check_arrays(d, split, x, y)
        arrays[split] = (torch.from_numpy(x), torch.from_numpy(y).long(), paths)
    if arrays["train"][0].shape[1] != arrays["val"][0].shape[1]:
        raise UserError(
            f"{d}: train and val features have different widths; write the folder again with"
            " --save-features"
        )
    try:
        meta = json.loads((d / "features.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{d / 'features.json'} is not valid JSON ({str(e)[:80]}); write the folder again "
            "with --save-features"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(
            f"{d / 'features.json'} holds a JSON {type(meta).__name__}, not the object"
            " --save-features writes; write the folder again with --save-features"
        )
    (tx, ty, tp), (vx, vy, vp) = arrays["train"], arrays["val"]
    return Features(tx, ty, vx, vy, tp, vp, meta)


def _check_arrays(d: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Rows to score, float features, class indices for labels, no NaN/inf: else one clear error
    naming the file."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(
            f"{d / f'{split}_features.npy'} is empty ({x.shape}); write the folder again with"
            " --save-features"
        )
    if x.dtype.kind != "f":
        raise UserError(
            f"{d / f'{split}_features.npy'} holds {x.dtype} values, not floats; write the folder"
            " again"
        )
    if y.dtype.kind not in "iu":
        raise UserError(
            f"{d / f'{split}_labels.npy'} holds {y.dtype} values; labels are class indices"
            " (integers)"
        )
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise UserError(
            f"{d / f'{split}_labels.npy'} holds the label {bad}; labels are class indices from 0 "
            f"(below {MAX_CLASSES})"
        )
    check_finite(torch.from_numpy(x), str(d / f"{split}_features.npy"))
