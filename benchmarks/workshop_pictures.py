"""Attention maps and patch PCA of two 10-minute workshop runs, side by side: plain DINO and DINO
with DINOv2's additions, each beside its own network at random init.

Takes the run folders that `workshop_recipes.py --keep-runs DIR` leaves (one `checkpoint.pth` per
recipe and seed) and draws, for one validation image of each of several classes, the CLS token's
last-layer attention (mean over heads) and the first 3 principal components of the patch features
as colours (fitted over the patches of all the images together, per network).

    python benchmarks/workshop_recipes.py --speed speed.json --budget-min 10 --threads 1 \
        --recipes lr1e-4_tt0.04 lr1e-4_tt0.04_dinov2 --seeds 0 --keep-runs runs/
    python benchmarks/workshop_pictures.py --runs runs/ --out 10_compared.png

The runs train on 48 px crops (4 x 4 patches of 12 px); `--size 96` shows the images at the
dataset's own size, 8 x 8 patches, with the position embeddings interpolated as in notebook 07.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitdino_core import build_dataset, cls_attention, load_image  # noqa: E402
from vitdino_core.attention_maps import (  # noqa: E402
    center_per_image,
    denormalize,
    patch_features,
    pca_rgb,
)
from vitdino_core.checkpoint import build_backbone_from_checkpoint  # noqa: E402
from vitdino_core.training.config import make_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

RUNS = {"plain DINO": "lr1e-4_tt0.04", "with DINOv2's\nadditions": "lr1e-4_tt0.04_dinov2"}


def images_per_class(n_classes: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """The first validation image of each of the first `n_classes` classes, normalised:
    (n, 3, size, size) and the class names."""
    val = build_dataset("imagenette", "val")
    firsts = {}
    for i, (_, label) in enumerate(val.samples):
        firsts.setdefault(label, i)
        if len(firsts) == n_classes:
            break
    pics = [
        load_image(val.samples[i][0], size=size, patch_size=12) for _, i in sorted(firsts.items())
    ]
    names = [val.classes[label] for label in sorted(firsts)]
    return torch.cat(pics), names  # (n, 3, size, size)


def random_init_teacher(config: dict) -> torch.nn.Module:
    """The run's teacher backbone before its first step (same config, same seed)."""
    with tempfile.TemporaryDirectory() as out:
        trainer = DINOTrainer(make_config(config | dict(output_dir=out)), quiet=True)
        return trainer.teacher.backbone.eval()


@torch.no_grad()
def pictures(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-over-heads CLS attention (n, h, w), each map scaled to [0, 1], and the patch PCA colours
    (n, h, w, 3)."""
    attn = cls_attention(model, images).mean(1)  # (n, h, w)
    lo = attn.amin(dim=(1, 2), keepdim=True)  # (n, 1, 1)
    hi = attn.amax(dim=(1, 2), keepdim=True)  # (n, 1, 1)
    attn = (attn - lo) / (hi - lo).clamp_min(1e-12)  # (n, h, w)
    feats = center_per_image(patch_features(model, images))  # (n, h, w, D)
    every = torch.ones(feats.shape[:3], dtype=torch.bool)  # (n, h, w): all patches
    return attn, pca_rgb(feats, every)  # (n, h, w), (n, h, w, 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="the folder of --keep-runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=5, help="one image of each of this many")
    p.add_argument("--size", type=int, default=96, help="image size to show (a multiple of 12)")
    p.add_argument(
        "--out", type=Path, required=True, help="NAME.png: writes NAME_attention.png, NAME_pca.png"
    )
    args = p.parse_args(argv)
    columns = []  # (title, attention (n, h, w), pca (n, h, w, 3))
    paths = {label: args.runs / f"{r}_s{args.seed}" / "checkpoint.pth" for label, r in RUNS.items()}
    for path in paths.values():
        if not path.is_file():
            print(
                f"error: {path} not found; train it with workshop_recipes.py --keep-runs",
                file=sys.stderr,
            )
            return 2
    images, names = images_per_class(args.classes, args.size)  # (n, 3, S, S)
    for label, path in paths.items():
        trained, info = build_backbone_from_checkpoint(path)
        before = random_init_teacher(info["config"])
        for when, model in (
            ("random init", before),
            (f"{info['config']['epochs']} epochs", trained),
        ):
            columns.append((f"{label}\n{when}", *pictures(model, images)))
    rgb = denormalize(images).permute(0, 2, 3, 1)  # (n, S, S, 3)
    written = []
    for kind in ("attention", "pca"):
        fig = draw(kind, rgb, names, columns, args.size)
        fig.suptitle(
            (
                "CLS attention of the last block, mean over heads"
                if kind == "attention"
                else "patch features, 3 principal components as colours"
            )
            + f"\n10-minute runs, seed {args.seed}, shown at {args.size} px"
        )
        path = args.out.with_name(f"{args.out.stem}_{kind}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    print(json.dumps(dict(out=written, classes=names, columns=[c[0] for c in columns])))
    return 0


def draw(kind: str, rgb: torch.Tensor, names: list[str], columns: list, size: int):
    """One row per image: the image, then one panel per network (`kind`: attention or pca)."""
    n = len(names)
    fig, axes = plt.subplots(
        n,
        1 + len(columns),
        figsize=(2.3 * (1 + len(columns)), 2.4 * n + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for i in range(n):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_ylabel(names[i])
        for j, (title, attn, pca) in enumerate(columns):
            ax = axes[i, 1 + j]
            if kind == "attention":
                ax.imshow(rgb[i])
                up = F.interpolate(attn[i][None, None], size=size, mode="nearest")[0, 0]  # (S, S)
                ax.imshow(up, cmap="inferno", alpha=0.75)
            else:
                ax.imshow(pca[i])  # (h, w, 3)
            if i == 0:
                ax.set_title(title)
    axes[0, 0].set_title("image")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


if __name__ == "__main__":
    sys.exit(main())
