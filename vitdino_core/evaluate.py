"""Evaluate a backbone's frozen features: weighted kNN and a linear probe, printed as one JSON
object.

    # the shipped weights
    python -m vitdino_core.evaluate --ckpt checkpoints/dino_imagenette96.pth
    # a run, on the data it trained on
    python -m vitdino_core.evaluate --ckpt checkpoints/dino/checkpoint.pth
    # official DINO weights
    python -m vitdino_core.evaluate --ckpt dino_deitsmall16_pretrain.pth
    # a class-per-folder set, no val/
    python -m vitdino_core.evaluate --ckpt FILE --data-path my_images/ --holdout 0.2
    # ... and keep the features
    python -m vitdino_core.evaluate --ckpt FILE --save-features feats/
    # kNN + probe, no model
    python -m vitdino_core.evaluate --features feats/
    # an untrained baseline
    python -m vitdino_core.evaluate --random-init --arch vit_tiny --patch-size 12
    # the pixels themselves
    python -m vitdino_core.evaluate --raw-pixels 32

Files `--ckpt` reads (always with `weights_only=True`); the model is read from the weights' shapes:
  - this project's training checkpoints {"config", "teacher", "student", ...} and shipped
    backbone files {"teacher", "config"}; without --dataset/--data-path a run is evaluated on
    the data its config names;
  - official DINO training checkpoints {"student", "teacher", "optimizer", "epoch", "args", ...}
    (`module.backbone.` / `backbone.` prefixes, the DINO head dropped);
  - bare backbone state dicts, as the official dino_deitsmall16_pretrain.pth and friends.
Data: the kNN memory and the probe's training set are the train images, scores are on the val
images, never the same ones. A folder without val/ is split (--holdout, stratified by class,
--seed); the JSON says which images were used. Progress bars go to stderr; stdout holds only the
JSON. A mistake (a file that is not a checkpoint, a folder without labels) is one line on stderr and
exit code 2; --debug adds the traceback.
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
from torch.utils.data import Dataset

from .checkpoint import (
    CheckpointError,
    build_backbone_from_checkpoint,
    build_random_backbone,
    describe,
)
from .cli import UserError, run_cli
from .data import DATASETS, eval_transform
from .eval_protocol import (
    DEFAULT_HOLDOUT,
    eval_datasets,
    evaluate_features,
    evaluate_raw_pixels,
    score_features,
    subset,
)
from .features import load_features, target_problem
from .patch_embedding import check_image_size
from .training.device import resolve_device
from .vision_transformer import ARCHS

# ----------------------------------------------------------------------------- command line checks


def user_check_image_size(size: int, patch_size: int) -> None:
    """`check_image_size` for a size the user typed: its message as a one-line user error."""
    try:
        check_image_size(size, patch_size)
    except ValueError as e:
        raise UserError(f"--image-size: {e}") from None


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check before any work that `path` can be (or is) a folder we can write in; it is created when
    written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(
            f"{flag} {path}: {existing} is a file, so the folder cannot be created; choose another"
            " folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path}: cannot write in {existing} (permission denied); choose a folder you"
            " can write to"
        )
    return path


# ----------------------------------------------------------------------------- pictures


def save_attention_maps(
    model: nn.Module,
    val: Dataset,
    out_dir: str | os.PathLike,
    num_images: int = 4,
    keep: float = 0.6,
    device: str | torch.device = "cpu",
) -> list[str]:
    """Per-head CLS attention and thresholded masks of a few images of `val` (tensors), as PNGs in
    `out_dir`."""
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
        overlay_masks(
            images[i],
            masks[i],
            title=f"top patches holding {keep:.0%} of the attention",
            save=overlay,
        )
        paths += [str(heads), str(overlay)]
    return paths


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vitdino_core.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--ckpt", help="checkpoint or backbone file to evaluate (ours or official DINO)"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="evaluate an untrained model of --arch/--patch-size",
    )
    src.add_argument(
        "--raw-pixels",
        type=int,
        metavar="SIZE",
        help="evaluate raw pixels resized to SIZE x SIZE (the baseline)",
    )
    src.add_argument(
        "--features",
        metavar="DIR",
        help="score features saved with --save-features (no model, no images)",
    )
    p.add_argument(
        "--which",
        choices=["teacher", "student"],
        default="teacher",
        help="which network of a training checkpoint",
    )
    p.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        help=(
            "with --random-init: the model; with --ckpt: optional, read "
            "from the weights (an error if it disagrees)"
        ),
    )
    p.add_argument(
        "--patch-size",
        type=int,
        help=(
            "with --random-init: the patch size; with --ckpt: optional, read from "
            "the weights (an error if it disagrees)"
        ),
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help=(
            "default: the dataset a run's checkpoint trained on, else "
            "imagenette (folder when only --data-path is given)"
        ),
    )
    p.add_argument(
        "--data-path",
        default=None,
        help=(
            "a folder with train/ and val/, or one subfolder per class to be split "
            "(default: a run's data_path, else the data root $VITDINO_DATA)"
        ),
    )
    p.add_argument(
        "--holdout",
        type=float,
        help=f"share of each class scored when the folder has no val/ (default {DEFAULT_HOLDOUT})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the hold-out split and of --max-train/--max-val draws",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="eval resolution, a multiple of the patch (default: the training size)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = PyTorch's default), as in training",
    )
    p.add_argument("--max-train", type=int, help="use at most N random training images")
    p.add_argument("--max-val", type=int, help="use at most N random validation images")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (kNN only)")
    p.add_argument("--k", type=int, default=20, help="neighbours of the weighted kNN (DINO: 20)")
    p.add_argument(
        "--temperature", type=float, default=0.07, help="temperature of the kNN votes (DINO: 0.07)"
    )
    p.add_argument(
        "--save-features",
        metavar="DIR",
        help="also write the train/val features, labels and paths to DIR",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "let --save-features replace the features already in DIR "
            "(a folder holding other files is never replaced)"
        ),
    )
    p.add_argument(
        "--attention-maps",
        metavar="DIR",
        help="also save attention maps of a few val images as PNGs in DIR",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    if args.random_init and (args.arch is None or args.patch_size is None):
        p.error(
            "--random-init needs --arch and --patch-size, e.g. --arch vit_small --patch-size 16"
        )
    if args.raw_pixels is not None and args.attention_maps:
        p.error("--attention-maps needs a model (--ckpt or --random-init), not --raw-pixels")
    if args.features is not None:
        unused = [
            f"--{n.replace('_', '-')}"
            for n in (
                "dataset",
                "data_path",
                "holdout",
                "image_size",
                "max_train",
                "max_val",
                "save_features",
                "attention_maps",
                "arch",
                "patch_size",
            )
            if getattr(args, n) is not None
        ]
        if unused:
            p.error(
                f"--features scores saved features; {', '.join(unused)} do not apply (they were"
                " fixed when saving)"
            )
    for name, low in (("k", 1), ("threads", 0), ("batch_size", 1)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}")
    if args.temperature <= 0:
        p.error("--temperature must be positive")
    return args


def choose_data(args: argparse.Namespace, config: dict) -> tuple[str, str | None, str]:
    """(dataset, data_path, where the choice came from): the command line, else the run's config,
    else imagenette."""
    if args.dataset is None and args.data_path is None and config.get("dataset"):
        return (
            config["dataset"],
            config.get("data_path") or None,
            "the checkpoint's training config",
        )
    if (
        args.dataset is None and args.data_path is not None
    ):  # a folder of images, or a named download stored there
        named = config.get("dataset") not in (None, "imagenette", "folder")
        return config["dataset"] if named else "folder", args.data_path, "--data-path"
    return (
        args.dataset or "imagenette",
        args.data_path,
        "the command line" if args.dataset else "the default",
    )


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    save_dir = output_dir(args.save_features, "--save-features") if args.save_features else None
    if save_dir is not None and target_problem(
        save_dir, args.overwrite
    ):  # before any work, not after the extraction
        raise UserError(f"--save-features: {target_problem(save_dir, args.overwrite)}")
    maps_dir = output_dir(args.attention_maps, "--attention-maps") if args.attention_maps else None
    if args.features is not None:
        f = load_features(args.features)
        result = {
            "model": f.meta.get("model"),
            "features": str(args.features),
            "dataset": f.meta.get("data", {}).get("dataset"),
        }
        result |= score_features(
            f.train_x, f.train_y, f.val_x, f.val_y, not args.no_probe, args.k, args.temperature
        )
        return result | {
            "image_size": f.meta.get("image_size"),
            "data": f.meta.get("data"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    device = resolve_device(args.device)
    common = dict(
        max_train=args.max_train,
        max_val=args.max_val,
        probe=not args.no_probe,
        k=args.k,
        T=args.temperature,
        holdout=args.holdout,
        seed=args.seed,
        save_dir=save_dir,
        overwrite=args.overwrite,
    )
    if args.raw_pixels is not None:
        dataset, data_path, source = choose_data(args, {})
        model_name = f"raw pixels {args.raw_pixels}x{args.raw_pixels}"
        result = {"model": model_name} | evaluate_raw_pixels(
            args.raw_pixels, dataset, data_path, meta={"model": model_name}, **common
        )
    else:
        if args.image_size is not None and args.patch_size is not None:
            user_check_image_size(args.image_size, args.patch_size)  # fail before any work
        if args.random_init:
            model, info = build_random_backbone(
                args.arch, args.patch_size, args.image_size, device=device
            )
        else:
            model, info = build_backbone_from_checkpoint(
                args.ckpt, args.which, args.arch, args.patch_size, device=device
            )
        image_size = args.image_size or info["image_size"]
        if args.image_size is None and info.get(
            "config"
        ):  # the size the run trained at, from its saved config
            try:
                check_image_size(image_size, info["patch_size"])
            except ValueError as e:
                raise CheckpointError(
                    f"the config saved in {args.ckpt}: {e}; give --image-size"
                ) from None
        user_check_image_size(image_size, info["patch_size"])
        dataset, data_path, source = choose_data(args, info.get("config", {}))
        if source == "the checkpoint's training config" and dataset not in DATASETS:
            raise CheckpointError(
                f"the config saved in {args.ckpt} names the dataset {dataset!r}, not one of "
                f"{', '.join(DATASETS)}; give --dataset or --data-path"
            )
        meta = {
            "model": describe(info),
            "weights": {
                k: info.get(k) for k in ("path", "which", "layout", "arch", "patch_size", "depth")
            },
        }
        result = {"model": describe(info)} | evaluate_features(
            model,
            dataset,
            data_path,
            image_size=image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            meta=meta,
            **common,
        )
        if maps_dir is not None:
            val = eval_datasets(
                dataset, data_path, eval_transform(image_size), args.holdout, args.seed
            )[1]
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
    """The command: a user's mistake is one line on stderr and exit code 2 (`--debug` shows the
    traceback)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
