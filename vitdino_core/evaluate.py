"""Evaluate a backbone's frozen features: weighted kNN and a linear probe, printed as one JSON object.

    python -m vitdino_core.evaluate --ckpt checkpoints/dino_imagenette96.pth        # the shipped weights
    python -m vitdino_core.evaluate --ckpt checkpoints/dino/checkpoint.pth          # a run, on the data it trained on
    python -m vitdino_core.evaluate --ckpt dino_deitsmall16_pretrain.pth            # official DINO weights
    python -m vitdino_core.evaluate --ckpt FILE --data-path my_images/ --holdout 0.2   # a class-per-folder set, no val/
    python -m vitdino_core.evaluate --ckpt FILE --save-features feats/              # ... and keep the features
    python -m vitdino_core.evaluate --features feats/                               # kNN + probe, no model
    python -m vitdino_core.evaluate --random-init --arch vit_tiny --patch-size 12   # an untrained baseline
    python -m vitdino_core.evaluate --raw-pixels 32                                 # the pixels themselves

Files `--ckpt` reads (always with `weights_only=True`); the model is read from the weights' shapes:
  - this project's training checkpoints {"config", "teacher", "student", ...} and shipped backbone files
    {"teacher", "config"}; without --dataset/--data-path a run is evaluated on the data its config names;
  - official DINO training checkpoints {"student", "teacher", "optimizer", "epoch", "args", ...}
    (`module.backbone.` / `backbone.` prefixes, the DINO head dropped);
  - bare backbone state dicts, as the official dino_deitsmall16_pretrain.pth and friends.
Data: the kNN memory and the probe's training set are the train images, scores are on the val images,
never the same ones. A folder without val/ is split (--holdout, stratified by class, --seed); the JSON
says which images were used. Progress bars go to stderr; stdout holds only the JSON. A mistake (a file
that is not a checkpoint, a folder without labels) is one line on stderr and exit code 2; --debug adds
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .checkpoint import (CheckpointError, backbone_state_dict, checkpoint_layout, load_backbone_weights, load_checkpoint,
                         refuse_nonfinite_weights, vit_shape)
from .cli import UserError, run_cli
from .data import DATASETS, IMAGENETTE_FOLDERS, DatasetNotFoundError, ImageFolderDataset, build_dataset, eval_transform
from .device import resolve_device
from .features import check_finite, load_features, sample_ids, save_features, target_problem
from .linear_probe import extract_features, knn_classifier, linear_probe, raw_pixel_features
from .multicrop import IMAGENET_MEAN, IMAGENET_STD
from .patch_embedding import check_image_size
from .vision_transformer import ARCHS, VisionTransformer, build_vit, default_img_size

NO_FILE = "<no file>:"
DEFAULT_HOLDOUT = 0.2  # share of each class held out for scoring when a folder has no val/


# ----------------------------------------------------------------------------- models

def build_backbone_from_checkpoint(path: str | os.PathLike, which: str = "teacher", arch: str | None = None,
                                   patch_size: int | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A VisionTransformer with the `which` ("teacher" or "student") backbone weights of a checkpoint file.

    Reads this project's checkpoints, official DINO training checkpoints (student/teacher with `module.`,
    `backbone.` and `head.` keys) and bare backbone state dicts (the official `dino_*_pretrain.pth`).
    The model (embed dim, depth, patch size, pretraining image size) is read from the weights' shapes;
    `arch`/`patch_size`, when given, are checked against them. Weights load with `strict=True`.

    Returns (model in eval mode, info) with info = {"arch", "patch_size", "image_size", "which", "path",
    "layout", "depth", "config"}: `image_size` is the size the weights were trained at (our config's
    `global_crops_size`, else the length of `pos_embed`), `layout` one of `checkpoint_layout`'s names,
    `config` our training config ({} for official files).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    ckpt = load_checkpoint(path)
    layout = checkpoint_layout(ckpt)
    config = dict(ckpt["config"]) if layout == "vitdino" else {}
    if which == "student" and "student" not in ckpt:
        holds = "only the teacher backbone" if "teacher" in ckpt else "a single backbone"
        raise CheckpointError(f"{path} holds {holds}; evaluate it without --which student")
    sd = backbone_state_dict(ckpt, key=which)
    refuse_nonfinite_weights(sd, path)
    shape = vit_shape(sd, source=str(path))
    given = {"--arch": (arch, shape["arch"]), "--patch-size": (patch_size, shape["patch_size"])}
    wrong = [f"{flag} {want}" for flag, (want, have) in given.items() if want is not None and str(want) != str(have)]
    if wrong:
        raise CheckpointError(f"{' '.join(wrong)} does not match {path}: its weights are {shape['arch']}/"
                              f"{shape['patch_size']} ({shape['depth']} blocks, embed dim {shape['embed_dim']}); "
                              "leave out --arch/--patch-size, they are read from the weights")
    model = VisionTransformer(img_size=shape["image_size"], patch_size=shape["patch_size"], in_chans=shape["in_chans"],
                              embed_dim=shape["embed_dim"], depth=shape["depth"], num_heads=shape["num_heads"],
                              mlp_ratio=shape["mlp_ratio"], qkv_bias=shape["qkv_bias"])
    load_backbone_weights(model, sd)  # strict: every key of the model, nothing else
    size = config.get("global_crops_size") or shape["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise CheckpointError(f"the config saved in {path}: global_crops_size {size!r} is not an image size; "
                              "give --image-size")
    image_size = size
    info = {"arch": shape["arch"], "patch_size": shape["patch_size"], "image_size": image_size,
            "which": which if layout != "backbone" else "backbone", "path": str(path), "layout": layout,
            "depth": shape["depth"], "config": config}
    return model.to(device).eval(), info


def build_random_backbone(arch: str, patch_size: int, image_size: int | None = None, seed: int = 0,
                          device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """An untrained VisionTransformer (the random-init baseline), same (model, info) as from a checkpoint."""
    image_size = image_size or default_img_size(patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(arch, patch_size, img_size=image_size)
    info = {"arch": arch, "patch_size": patch_size, "image_size": image_size, "which": "random-init", "path": None,
            "layout": None, "depth": len(model.blocks), "config": {}}
    return model.to(device).eval(), info


def describe(info: dict) -> str:
    """'vit_small/16 teacher from checkpoints/x.pth', 'vit_small/16 backbone from x.pth' or 'vit_tiny/12 random init'."""
    name = f"{info['arch']}/{info['patch_size']}" + (f" ({info['depth']} blocks)" if info.get("depth", 12) != 12 else "")
    return f"{name} random init" if info["path"] is None else f"{name} {info['which']} from {info['path']}"


def user_check_image_size(size: int, patch_size: int) -> None:
    """`check_image_size` for a size the user typed: its message as a one-line user error."""
    try:
        check_image_size(size, patch_size)
    except ValueError as e:
        raise UserError(f"--image-size: {e}") from None


# ----------------------------------------------------------------------------- data

def subset(dataset: Dataset, max_items: int | None, seed: int = 0) -> Dataset:
    """At most `max_items` samples, drawn at random with a fixed seed (folders are sorted by class,
    so the first N would be a single class)."""
    if not max_items or max_items >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:max_items].sort().values  # (max_items,)
    return Subset(dataset, idx.tolist())


def holdout_split(targets: list[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of each class's items, drawn with `seed`, go to val.

    Every class with at least two items has at least one in each part; a class with one item stays in train.
    """
    if not 0 < fraction < 1:
        raise UserError(f"--holdout must be between 0 and 1 (the share of images scored), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for c in sorted(by_class):
        idx = torch.tensor(by_class[c])[torch.randperm(len(by_class[c]), generator=g)].tolist()  # this class, shuffled
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _folder_splits(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None): root/train + root/val, or root itself beside a val/ when it is a
    train/ folder (data_path: data/imagenet/train), else root alone (to be split)."""
    if (root / "train").is_dir():
        return root / "train", (root / "val" if (root / "val").is_dir() else None)
    if root.name == "train" and (root.parent / "val").is_dir():
        return root, root.parent / "val"
    return root, None


def eval_datasets(dataset: str = "imagenette", data_path: str | None = None, transform=None, holdout: float | None = None,
                  seed: int = 0, max_train: int | None = None, max_val: int | None = None) -> tuple[Dataset, Dataset, dict]:
    """(train set, val set, description): the images the classifiers learn from and the disjoint images they score.

    Named datasets use their own train/val splits. A folder (`data_path`) uses its train/ and val/ subfolders;
    without a val/ it is split `holdout` (default 0.2) per class with `seed`. The description says which
    images were used (it goes into the result JSON).
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "folder" and not data_path:
        raise UserError("--dataset folder needs --data-path: a folder with one subfolder of images per class")
    split_note = None
    if data_path and dataset in ("folder", "imagenette"):
        root = Path(data_path).expanduser()
        if dataset == "imagenette" and not (root / "train").is_dir() and root.name != "train":  # a data root
            root = next((root / n for n in IMAGENETTE_FOLDERS if (root / n / "train").is_dir()), root)
        train_dir, val_dir = _folder_splits(root)
        if not train_dir.is_dir():
            raise DatasetNotFoundError(f"image folder not found: {train_dir}; --data-path should be a folder with "
                                       "train/ and val/ (or one subfolder per class)")
        train = ImageFolderDataset(train_dir, transform)
        if val_dir is not None:
            if holdout is not None:
                raise UserError(f"{val_dir} exists, so it is what gets scored; --holdout is for folders without val/")
            val = ImageFolderDataset(val_dir, transform)
            val.classes, val.samples = train.classes, _relabel(val, train.classes)
            val.targets = [t for _, t in val.samples]
        else:
            fraction = DEFAULT_HOLDOUT if holdout is None else holdout
            _need_two_classes(train, train_dir)
            train_idx, val_idx = holdout_split(train.targets, fraction, seed)
            train, val = Subset(train, train_idx), Subset(train, val_idx)
            split_note = {"holdout": fraction, "seed": seed, "of": str(train_dir)}
        train_desc, val_desc = str(train_dir), str(val_dir) if val_dir else f"{fraction:.0%} of {train_dir} per class"
    else:
        if holdout is not None:
            raise UserError(f"{dataset} has its own val split; --holdout is for a --data-path folder without val/")
        train = build_dataset(dataset, "train", data_path, transform=transform)
        val = build_dataset(dataset, "val", data_path, transform=transform)
        where = f" under {data_path}" if data_path else ""
        train_desc, val_desc = (str(getattr(ds, "root", f"{dataset} {split} split{where}")) for ds, split in
                                ((train, "train"), (val, "val")))  # an image folder's path, else the split's name
    _need_two_classes(train, train_desc)
    train, val = subset(train, max_train, seed), subset(val, max_val, seed)
    _check_disjoint(train, val)
    desc = {"dataset": dataset, "train": train_desc, "val": val_desc, "split": split_note}
    return train, val, desc


def _relabel(val: ImageFolderDataset, classes: list[str]) -> list:
    """val/'s samples with train/'s class indices (the two folders must name the same classes)."""
    extra = sorted(set(val.classes) - set(classes))
    if extra:
        raise UserError(f"{val.root} has classes that {val.root.parent / 'train'} lacks ({', '.join(extra[:5])}); "
                        "train/ and val/ must hold the same class subfolders")
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[val.classes[t]]) for p, t in val.samples]


def _need_two_classes(ds: Dataset, where) -> None:
    targets = getattr(ds, "targets", None)
    if targets is not None and len(set(targets)) < 2:
        raise UserError(f"{where} holds a single class of images; evaluation needs labels: put the images in one "
                        "subfolder per class (at least two)")


def _check_disjoint(train: Dataset, val: Dataset) -> None:
    """No image file in both sets: scoring an image the kNN remembers would inflate the accuracy."""
    t, v = sample_ids(train, NO_FILE), sample_ids(val, NO_FILE)
    if not t or not v or t[0].startswith(NO_FILE) or v[0].startswith(NO_FILE):
        return  # not files: the named datasets' splits are disjoint by construction
    both = {os.path.realpath(p) for p in t} & {os.path.realpath(p) for p in v}
    if both:
        raise UserError(f"{len(both)} images are both in the train and the val images (e.g. {min(both)}); "
                        "scores would count images the classifier has seen: give a folder whose val/ is separate, "
                        "or one without val/ to be split with --holdout")


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check before any work that `path` can be (or is) a folder we can write in; it is created when written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so the folder cannot be created; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing} (permission denied); choose a folder you can write to")
    return path


# ----------------------------------------------------------------------------- features and scores

def evaluate_features(model: nn.Module, dataset: str = "imagenette", data_path: str | None = None, image_size: int = 224,
                      batch_size: int = 128, num_workers: int = 0, max_train: int | None = None, max_val: int | None = None,
                      probe: bool = True, k: int = 20, T: float = 0.07, device: str | torch.device = "cpu",
                      holdout: float | None = None, seed: int = 0, save_dir: str | os.PathLike | None = None,
                      meta: dict | None = None, overwrite: bool = False) -> dict:
    """Extract train and val features with the frozen `model`, then weighted kNN and (if `probe`) the linear probe.

    Returns {"knn_top1", "knn_top5", "k", "T", "linear_top1", "linear_C", "num_train", "num_val", "feature_dim",
    "image_size", "data"} (linear_* are None without the probe; "data" says which images, see `eval_datasets`).
    With `save_dir` the features are also written there (`features.save_features`, `meta` in features.json).
    """
    check_image_size(image_size, model.patch_size)
    train_set, val_set, data = eval_datasets(dataset, data_path, eval_transform(image_size), holdout, seed,
                                             max_train, max_val)
    train_x, train_y = extract_features(model, train_set, batch_size, device, num_workers, desc="train features")  # (N, D)
    val_x, val_y = extract_features(model, val_set, batch_size, device, num_workers, desc="val features")  # (M, D)
    if save_dir is not None:
        record = dict(meta or {}) | {"image_size": image_size, "data": data, "features": "CLS token after the final "
                                     "norm, L2-normalised", "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                                     "transform": f"resize short side to {image_size} (bicubic), centre crop"}
        save_features(save_dir, train_x, train_y, val_x, val_y, sample_ids(train_set, f"{dataset}:train:"),
                      sample_ids(val_set, f"{dataset}:val:"), record, overwrite)
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {"image_size": image_size, "data": data}


def evaluate_raw_pixels(size: int, dataset: str = "imagenette", data_path: str | None = None, max_train: int | None = None,
                        max_val: int | None = None, probe: bool = True, k: int = 20, T: float = 0.07,
                        holdout: float | None = None, seed: int = 0, save_dir: str | os.PathLike | None = None,
                        meta: dict | None = None, overwrite: bool = False) -> dict:
    """The raw-pixel baseline: the same measures on flattened size x size pixels (see `raw_pixel_features`)."""
    train_set, val_set, data = eval_datasets(dataset, data_path, None, holdout, seed, max_train, max_val)
    train_x, train_y = raw_pixel_features(train_set, size, desc="train pixels")  # (N, 3*size*size)
    val_x, val_y = raw_pixel_features(val_set, size, desc="val pixels")  # (M, 3*size*size)
    if save_dir is not None:
        record = dict(meta or {}) | {"image_size": size, "data": data, "features": "raw pixels in [0, 1], "
                                     "L2-normalised", "normalisation": None, "transform": f"resize to {size}x{size}"}
        save_features(save_dir, train_x, train_y, val_x, val_y, sample_ids(train_set, f"{dataset}:train:"),
                      sample_ids(val_set, f"{dataset}:val:"), record, overwrite)
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {"image_size": size, "data": data}


def score_features(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   probe: bool = True, k: int = 20, T: float = 0.07) -> dict:
    """Weighted kNN (k, T) and, if `probe`, the linear probe: train rows are the memory / fit, val rows are scored."""
    check_finite(train_x, "the train features")
    check_finite(val_x, "the val features")
    k_eff = min(k, train_x.shape[0])
    top1, top5 = knn_classifier(train_x, train_y, val_x, val_y, k=k_eff, T=T, return_top5=True)
    out = {"knn_top1": round(top1, 2), "knn_top5": round(top5, 2), "k": k_eff, "T": T, "linear_top1": None, "linear_C": None}
    if probe:
        res = linear_probe(train_x, train_y, val_x, val_y)
        out.update(linear_top1=round(res["top1"], 2), linear_C=res["C"])
    return out | {"num_train": int(train_x.shape[0]), "num_val": int(val_x.shape[0]), "feature_dim": int(train_x.shape[1])}


def save_attention_maps(model: nn.Module, val: Dataset, out_dir: str | os.PathLike, num_images: int = 4, keep: float = 0.6,
                        device: str | torch.device = "cpu") -> list[str]:
    """Per-head CLS attention and thresholded masks of a few images of `val` (tensors), as PNGs in `out_dir`."""
    from .attention_maps import cls_attention, overlay_masks, plot_attention_heads, threshold_masks

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val = subset(val, num_images)
    images = torch.stack([val[i][0] for i in range(len(val))]).to(device)  # (n, 3, S, S)
    attn = cls_attention(model, images).cpu()  # (n, heads, h, w)
    masks = threshold_masks(attn, keep)  # (n, heads, h, w)
    paths = []
    for i in range(images.shape[0]):
        heads, overlay = out_dir / f"attention_{i}.png", out_dir / f"masks_{i}.png"
        plot_attention_heads(images[i], attn[i], save=heads)
        overlay_masks(images[i], masks[i], title=f"top patches holding {keep:.0%} of the attention", save=overlay)
        paths += [str(heads), str(overlay)]
    return paths


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vitdino_core.evaluate", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint or backbone file to evaluate (ours or official DINO)")
    src.add_argument("--random-init", action="store_true", help="evaluate an untrained model of --arch/--patch-size")
    src.add_argument("--raw-pixels", type=int, metavar="SIZE", help="evaluate raw pixels resized to SIZE x SIZE (the baseline)")
    src.add_argument("--features", metavar="DIR", help="score features saved with --save-features (no model, no images)")
    p.add_argument("--which", choices=["teacher", "student"], default="teacher", help="which network of a training checkpoint")
    p.add_argument("--arch", choices=sorted(ARCHS), help="with --random-init: the model; with --ckpt: optional, read "
                   "from the weights (an error if it disagrees)")
    p.add_argument("--patch-size", type=int, help="with --random-init: the patch size; with --ckpt: optional, read from "
                   "the weights (an error if it disagrees)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset a run's checkpoint trained on, else "
                   "imagenette (folder when only --data-path is given)")
    p.add_argument("--data-path", default=None, help="a folder with train/ and val/, or one subfolder per class to be split "
                   "(default: a run's data_path, else the data root $VITDINO_DATA)")
    p.add_argument("--holdout", type=float, help=f"share of each class scored when the folder has no val/ "
                   f"(default {DEFAULT_HOLDOUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out split and of --max-train/--max-val draws")
    p.add_argument("--image-size", type=int, help="eval resolution, a multiple of the patch (default: the training size)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = PyTorch's default), as in training")
    p.add_argument("--max-train", type=int, help="use at most N random training images")
    p.add_argument("--max-val", type=int, help="use at most N random validation images")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (kNN only)")
    p.add_argument("--k", type=int, default=20, help="neighbours of the weighted kNN (DINO: 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="temperature of the kNN votes (DINO: 0.07)")
    p.add_argument("--save-features", metavar="DIR", help="also write the train/val features, labels and paths to DIR")
    p.add_argument("--overwrite", action="store_true", help="let --save-features replace the features already in DIR "
                   "(a folder holding other files is never replaced)")
    p.add_argument("--attention-maps", metavar="DIR", help="also save attention maps of a few val images as PNGs in DIR")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    if args.random_init and (args.arch is None or args.patch_size is None):
        p.error("--random-init needs --arch and --patch-size, e.g. --arch vit_small --patch-size 16")
    if args.raw_pixels is not None and args.attention_maps:
        p.error("--attention-maps needs a model (--ckpt or --random-init), not --raw-pixels")
    if args.features is not None:
        unused = [f"--{n.replace('_', '-')}" for n in ("dataset", "data_path", "holdout", "image_size", "max_train",
                                                       "max_val", "save_features", "attention_maps", "arch", "patch_size")
                  if getattr(args, n) is not None]
        if unused:
            p.error(f"--features scores saved features; {', '.join(unused)} do not apply (they were fixed when saving)")
    for name, low in (("k", 1), ("threads", 0), ("batch_size", 1)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}")
    if args.temperature <= 0:
        p.error("--temperature must be positive")
    return args


def choose_data(args: argparse.Namespace, config: dict) -> tuple[str, str | None, str]:
    """(dataset, data_path, where the choice came from): the command line, else the run's config, else imagenette."""
    if args.dataset is None and args.data_path is None and config.get("dataset"):
        return config["dataset"], config.get("data_path") or None, "the checkpoint's training config"
    if args.dataset is None and args.data_path is not None:  # a folder of images, or a named download stored there
        named = config.get("dataset") not in (None, "imagenette", "folder")
        return config["dataset"] if named else "folder", args.data_path, "--data-path"
    return args.dataset or "imagenette", args.data_path, "the command line" if args.dataset else "the default"


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    save_dir = output_dir(args.save_features, "--save-features") if args.save_features else None
    if save_dir is not None and target_problem(save_dir, args.overwrite):  # before any work, not after the extraction
        raise UserError(f"--save-features: {target_problem(save_dir, args.overwrite)}")
    maps_dir = output_dir(args.attention_maps, "--attention-maps") if args.attention_maps else None
    if args.features is not None:
        f = load_features(args.features)
        result = {"model": f.meta.get("model"), "features": str(args.features), "dataset": f.meta.get("data", {}).get("dataset")}
        result |= score_features(f.train_x, f.train_y, f.val_x, f.val_y, not args.no_probe, args.k, args.temperature)
        return result | {"image_size": f.meta.get("image_size"), "data": f.meta.get("data"),
                         "seconds": round(time.perf_counter() - t0, 2)}
    device = resolve_device(args.device)
    common = dict(max_train=args.max_train, max_val=args.max_val, probe=not args.no_probe, k=args.k, T=args.temperature,
                  holdout=args.holdout, seed=args.seed, save_dir=save_dir, overwrite=args.overwrite)
    if args.raw_pixels is not None:
        dataset, data_path, source = choose_data(args, {})
        model_name = f"raw pixels {args.raw_pixels}x{args.raw_pixels}"
        result = {"model": model_name} | evaluate_raw_pixels(args.raw_pixels, dataset, data_path,
                                                             meta={"model": model_name}, **common)
    else:
        if args.image_size is not None and args.patch_size is not None:
            user_check_image_size(args.image_size, args.patch_size)  # fail before any work
        if args.random_init:
            model, info = build_random_backbone(args.arch, args.patch_size, args.image_size, device=device)
        else:
            model, info = build_backbone_from_checkpoint(args.ckpt, args.which, args.arch, args.patch_size, device=device)
        image_size = args.image_size or info["image_size"]
        if args.image_size is None and info.get("config"):  # the size the run trained at, from its saved config
            try:
                check_image_size(image_size, info["patch_size"])
            except ValueError as e:
                raise CheckpointError(f"the config saved in {args.ckpt}: {e}; give --image-size") from None
        user_check_image_size(image_size, info["patch_size"])
        dataset, data_path, source = choose_data(args, info.get("config", {}))
        if source == "the checkpoint's training config" and dataset not in DATASETS:
            raise CheckpointError(f"the config saved in {args.ckpt} names the dataset {dataset!r}, not one of "
                                  f"{', '.join(DATASETS)}; give --dataset or --data-path")
        meta = {"model": describe(info), "weights": {k: info.get(k) for k in ("path", "which", "layout", "arch",
                                                                              "patch_size", "depth")}}
        result = {"model": describe(info)} | evaluate_features(model, dataset, data_path, image_size=image_size,
                                                               batch_size=args.batch_size, num_workers=args.num_workers,
                                                               device=device, meta=meta, **common)
        if maps_dir is not None:
            val = eval_datasets(dataset, data_path, eval_transform(image_size), args.holdout, args.seed)[1]
            result["attention_maps"] = save_attention_maps(model, val, maps_dir, device=device)
    result["data"]["chosen_by"] = source
    if save_dir is not None:
        result["saved_features"] = str(save_dir)
    return result | {"dataset": dataset, "seconds": round(time.perf_counter() - t0, 2)}


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command: a user's mistake is one line on stderr and exit code 2 (`--debug` shows the traceback)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
