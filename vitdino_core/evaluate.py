"""Evaluate a backbone's frozen features: weighted kNN and a linear probe, printed as one JSON object.

    python -m vitdino_core.evaluate --ckpt checkpoints/dino_vit_small.pth
    python -m vitdino_core.evaluate --ckpt dino_deitsmall16_pretrain.pth --arch vit_small --patch-size 16
    python -m vitdino_core.evaluate --random-init --arch vit_tiny --patch-size 12      # an untrained baseline
    python -m vitdino_core.evaluate --raw-pixels 32                                    # the pixels themselves

Checkpoints it reads (always with `weights_only=True`):
  - this project's training checkpoints: {"config": {...}, "teacher": ..., "student": ...}, where
    teacher/student are MultiCropWrapper state dicts (`backbone.*`, `head.*`);
  - shipped backbone files: {"teacher": backbone state dict (fp16 is fine), "config": {...}};
  - official DINO files (a bare backbone state dict, or teacher/student with `module.` prefixes).
    These carry no config, so --arch and --patch-size must be given.
Progress bars go to stderr; stdout holds only the JSON, so `... | python -m json.tool` works.
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

from .checkpoint import CheckpointError, backbone_state_dict, load_backbone_weights, load_checkpoint
from .data import build_dataset, eval_transform
from .device import resolve_device
from .linear_probe import extract_features, knn_classifier, linear_probe, raw_pixel_features
from .patch_embedding import check_image_size
from .vision_transformer import ARCHS, build_vit, default_img_size

EMBED_DIMS = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}


# ----------------------------------------------------------------------------- models

def _guess_arch(sd: dict) -> str:
    """A hint for the error message: what the weights look like (embed dim and patch size)."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return ""
    arch = EMBED_DIMS.get(w.shape[0])
    return f" (these weights look like {arch or f'embed_dim={w.shape[0]}'} with patch size {w.shape[-1]}: " \
           f"pass --arch {arch or '...'} --patch-size {w.shape[-1]})"


def build_backbone_from_checkpoint(path: str | os.PathLike, which: str = "teacher", arch: str | None = None,
                                   patch_size: int | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A VisionTransformer with the `which` ("teacher" or "student") backbone weights of a checkpoint.

    Returns (model in eval mode, info) where info = {"arch", "patch_size", "image_size", "which", "path"};
    `image_size` is the size the weights were trained at (the config's `global_crops_size`, else
    224 rounded to a multiple of the patch). `arch`/`patch_size` override the checkpoint's config
    and are required when the file has none (official DINO weights).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if which == "student" and "teacher" in ckpt and "student" not in ckpt:
        raise CheckpointError(f"{path} holds only the teacher backbone; use which='teacher' (--which teacher)")
    sd = backbone_state_dict(ckpt, key=which)
    arch = arch or config.get("arch")
    patch_size = patch_size or config.get("patch_size")
    if arch is None or patch_size is None:
        raise CheckpointError(f"{path} has no config saying which model it holds; give the architecture and patch "
                              f"size (--arch vit_small --patch-size 16 on the command line){_guess_arch(sd)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    patch_size = int(patch_size)
    image_size = int(config.get("global_crops_size") or default_img_size(patch_size))
    # build at the grid the weights were trained on, so pos_embed loads as is; other sizes are interpolated in forward
    grid = sd["pos_embed"].shape[1] - 1 if "pos_embed" in sd else (image_size // patch_size) ** 2
    model = build_vit(arch, patch_size, img_size=int(round(grid ** 0.5)) * patch_size)
    load_backbone_weights(model, sd)
    info = {"arch": arch, "patch_size": patch_size, "image_size": image_size, "which": which, "path": str(path)}
    return model.to(device).eval(), info


def build_random_backbone(arch: str, patch_size: int, image_size: int | None = None, seed: int = 0,
                          device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """An untrained VisionTransformer (the random-init baseline), same (model, info) as from a checkpoint."""
    image_size = image_size or default_img_size(patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(arch, patch_size, img_size=image_size)
    info = {"arch": arch, "patch_size": patch_size, "image_size": image_size, "which": "random-init", "path": None}
    return model.to(device).eval(), info


def describe(info: dict) -> str:
    """'vit_small/16 teacher from checkpoints/x.pth' or 'vit_tiny/12 random init'."""
    name = f"{info['arch']}/{info['patch_size']}"
    return f"{name} random init" if info["path"] is None else f"{name} {info['which']} from {info['path']}"


# ----------------------------------------------------------------------------- data

def subset(dataset: Dataset, max_items: int | None, seed: int = 0) -> Dataset:
    """At most `max_items` samples, drawn at random with a fixed seed (folders are sorted by class,
    so the first N would be a single class)."""
    if not max_items or max_items >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:max_items].sort().values  # (max_items,)
    return Subset(dataset, idx.tolist())


def evaluate_features(model: nn.Module, dataset: str = "imagenette", data_path: str | None = None, image_size: int = 224,
                      batch_size: int = 128, num_workers: int = 0, max_train: int | None = None, max_val: int | None = None,
                      probe: bool = True, k: int = 20, T: float = 0.07, device: str | torch.device = "cpu") -> dict:
    """Extract train and val features with the frozen `model`, then weighted kNN and (if `probe`) the linear probe.

    Returns {"knn_top1", "knn_top5", "linear_top1", "linear_C", "num_train", "num_val", "feature_dim",
    "image_size"} (linear_* are None without the probe).
    """
    check_image_size(image_size, model.patch_size)
    transform = eval_transform(image_size)
    sets = {split: subset(build_dataset(dataset, split, data_path, transform=transform), n)
            for split, n in (("train", max_train), ("val", max_val))}
    train_x, train_y = extract_features(model, sets["train"], batch_size, device, num_workers, desc="train features")  # (N, D)
    val_x, val_y = extract_features(model, sets["val"], batch_size, device, num_workers, desc="val features")  # (M, D)
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {"image_size": image_size}


def evaluate_raw_pixels(size: int, dataset: str = "imagenette", data_path: str | None = None, max_train: int | None = None,
                        max_val: int | None = None, probe: bool = True, k: int = 20, T: float = 0.07) -> dict:
    """The raw-pixel baseline: the same measures on flattened size x size pixels (see `raw_pixel_features`)."""
    sets = {split: subset(build_dataset(dataset, split, data_path), n) for split, n in (("train", max_train), ("val", max_val))}
    train_x, train_y = raw_pixel_features(sets["train"], size, desc="train pixels")  # (N, 3*size*size)
    val_x, val_y = raw_pixel_features(sets["val"], size, desc="val pixels")  # (M, 3*size*size)
    return score_features(train_x, train_y, val_x, val_y, probe, k, T) | {"image_size": size}


def score_features(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   probe: bool = True, k: int = 20, T: float = 0.07) -> dict:
    k_eff = min(k, train_x.shape[0])
    top1, top5 = knn_classifier(train_x, train_y, val_x, val_y, k=k_eff, T=T, return_top5=True)
    out = {"knn_top1": round(top1, 2), "knn_top5": round(top5, 2), "k": k_eff, "T": T, "linear_top1": None, "linear_C": None}
    if probe:
        res = linear_probe(train_x, train_y, val_x, val_y)
        out.update(linear_top1=round(res["top1"], 2), linear_C=res["C"])
    return out | {"num_train": int(train_x.shape[0]), "num_val": int(val_x.shape[0]), "feature_dim": int(train_x.shape[1])}


def save_attention_maps(model: nn.Module, dataset: str, data_path: str | None, image_size: int, out_dir: str | os.PathLike,
                        num_images: int = 4, keep: float = 0.6, device: str | torch.device = "cpu") -> list[str]:
    """Per-head CLS attention and thresholded masks of the first few val images, as PNGs in `out_dir`."""
    from .attention_maps import cls_attention, overlay_masks, plot_attention_heads, threshold_masks

    out_dir = Path(out_dir)
    val = subset(build_dataset(dataset, "val", data_path, transform=eval_transform(image_size)), num_images)
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
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint or backbone file to evaluate")
    src.add_argument("--random-init", action="store_true", help="evaluate an untrained model of --arch/--patch-size")
    src.add_argument("--raw-pixels", type=int, metavar="SIZE", help="evaluate raw pixels resized to SIZE x SIZE (the baseline)")
    p.add_argument("--which", choices=["teacher", "student"], default="teacher", help="which network of the checkpoint")
    p.add_argument("--arch", choices=sorted(ARCHS), help="needed when the checkpoint has no config (official DINO files)")
    p.add_argument("--patch-size", type=int, help="needed when the checkpoint has no config")
    p.add_argument("--dataset", default="imagenette")
    p.add_argument("--data-path", default=None, help="folder with train/ and val/ (default: the data root, $VITDINO_DATA)")
    p.add_argument("--image-size", type=int, help="eval resolution, a multiple of the patch (default: the training size)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--max-train", type=int, help="use at most N random training images")
    p.add_argument("--max-val", type=int, help="use at most N random validation images")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (kNN only)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--attention-maps", metavar="DIR", help="also save attention maps of a few val images as PNGs in DIR")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    if args.random_init and (args.arch is None or args.patch_size is None):
        p.error("--random-init needs --arch and --patch-size, e.g. --arch vit_small --patch-size 16")
    if args.raw_pixels is not None and args.attention_maps:
        p.error("--attention-maps needs a model (--ckpt or --random-init), not --raw-pixels")
    return args


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    common = dict(dataset=args.dataset, data_path=args.data_path, max_train=args.max_train, max_val=args.max_val,
                  probe=not args.no_probe, k=args.k, T=args.temperature)
    if args.raw_pixels is not None:
        result = {"model": f"raw pixels {args.raw_pixels}x{args.raw_pixels}"} | evaluate_raw_pixels(args.raw_pixels, **common)
    else:
        if args.image_size is not None and args.patch_size is not None:
            check_image_size(args.image_size, args.patch_size)  # fail before any work
        if args.random_init:
            model, info = build_random_backbone(args.arch, args.patch_size, args.image_size, device=device)
        else:
            model, info = build_backbone_from_checkpoint(args.ckpt, args.which, args.arch, args.patch_size, device=device)
        image_size = args.image_size or info["image_size"]
        check_image_size(image_size, info["patch_size"])
        result = {"model": describe(info)} | evaluate_features(model, image_size=image_size, batch_size=args.batch_size,
                                                               num_workers=args.num_workers, device=device, **common)
        if args.attention_maps:
            result["attention_maps"] = save_attention_maps(model, args.dataset, args.data_path, image_size,
                                                           args.attention_maps, device=device)
    return result | {"dataset": args.dataset, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
