"""The one setup call every notebook starts with, and offline photos for its pictures."""

from __future__ import annotations

import json
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import REPO_ROOT, data_root, open_rgb, to_rgb
from .training.device import resolve_device

SHIPPED_CHECKPOINT = REPO_ROOT / "checkpoints" / "dino_imagenette96.pth"


@dataclass
class NotebookEnv:
    fast: bool  # CI or VITDINO_FAST=1: fewer steps and images, every cell still runs
    device: torch.device
    data_root: Path
    seed: int


def fast_mode() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("VITDINO_FAST"))


def setup(seed: int = 0, dpi: int = 90) -> NotebookEnv:
    """Seed every RNG, pick the device, find the data root, set figure defaults; print what was chosen."""
    import matplotlib.pyplot as plt

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device("auto")
    plt.rcParams.update({"figure.dpi": dpi, "axes.grid": False, "image.interpolation": "nearest"})
    env = NotebookEnv(fast_mode(), device, data_root(), seed)
    print(f"torch {torch.__version__} | device {device} | {torch.get_num_threads()} threads | data root {env.data_root}"
          f" | fast mode {'on' if env.fast else 'off'}")
    return env


def photo(name: str = "grace_hopper") -> Image.Image:
    """A real photo as RGB: from <data root>/photos if present, else the copies inside matplotlib / scikit-learn.

    Names: grace_hopper, china, flower (always available), astronaut, chelsea, coffee, rocket (data root only).
    """
    folder = data_root() / "photos"
    matches = sorted(folder.glob(f"*{name}*")) if folder.is_dir() else []
    if matches:
        return open_rgb(matches[0])
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            img = Image.open(f)
            img.load()  # decoded before the file closes
            return to_rgb(img)
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    raise FileNotFoundError(f"photo {name!r} not found in {folder}; grace_hopper, china and flower are always available")


def shipped_checkpoint() -> Path | None:
    """The DINO checkpoint the notebooks show: $VITDINO_CHECKPOINT if set, else the one shipped in
    checkpoints/ (trained on imagenette-96), or None when there is none."""
    env = os.environ.get("VITDINO_CHECKPOINT")
    path = Path(env).expanduser() if env else SHIPPED_CHECKPOINT
    return path if path.is_file() else None


CHECKPOINT_ENV = "VITDINO_CHECKPOINT"
SHIPPED_LABEL = "shipped ViT-Ti/12 (imagenette-96, CPU)"


def course_checkpoint() -> tuple[Path | None, str]:
    """The weights notebooks 07 and 08 show, and a short label for figure titles: (path, label).

    `$VITDINO_CHECKPOINT` names any checkpoint or backbone file, official DINO files included
    (e.g. dino_deitsmall8_pretrain.pth); its label is the file name. Unset, the shipped
    checkpoints/dino_imagenette96.pth, labelled as the small CPU-trained model it is. The path is
    None only when the variable is unset and the shipped file is missing.
    """
    from .checkpoint import CheckpointError

    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{CHECKPOINT_ENV}={env} is not a file; point it at a checkpoint (e.g. "
                                  f"dino_deitsmall8_pretrain.pth) or unset it to use the shipped one")
        return path, path.name
    return (SHIPPED_CHECKPOINT, SHIPPED_LABEL) if SHIPPED_CHECKPOINT.is_file() else (None, "no checkpoint")


def load_course_backbone(device: str | torch.device = "cpu") -> tuple[torch.nn.Module | None, dict]:
    """The teacher backbone of `course_checkpoint()` in eval mode, and its info: (model, info).

    info holds "arch", "patch_size", "image_size" (the training resolution), "path" and "label".
    Architecture and patch size come from the file (its config, or the weights' shapes for official
    files). Returns (None, {"path": None, "label": ...}) when there is no checkpoint at all.
    """
    from .checkpoint import build_backbone_from_checkpoint

    path, label = course_checkpoint()
    if path is None:
        return None, {"path": None, "label": label}
    model, info = build_backbone_from_checkpoint(path, which="teacher", arch=None, patch_size=None, device=device)
    return model, info | {"path": str(path), "label": label}


def short_path(path: Path) -> str:
    """The path relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def checkpoint_story(path: Path) -> tuple[str, str, dict]:
    """What a trained checkpoint is, for the notebooks that show one: (one long line, a short tag for figure
    titles, the JSON record beside it), from the checkpoint's config and its `.json` record."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if not cfg:  # an official DINO file: weights only, no record of how they were trained
        return f"DINO teacher weights from {Path(path).name} (the file carries no training config)", Path(path).name, {}
    record_file = Path(path).with_suffix(".json")
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    epochs = record.get("epochs", ckpt.get("epoch"))
    step = record.get("step", ckpt.get("step"))
    images = f"the first {cfg['max_images']} images of " if cfg.get("max_images") else ""
    trained_for = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    n_stages = len(record.get("stages", []))  # a run continued by warm restarts (config init_weights)
    stages = f", {n_stages} stages" if n_stages > 1 else ""
    line = (f"DINO teacher from {short_path(path)}, trained {trained_for} ({step} steps{stages}) without labels on "
            f"{images}{cfg.get('dataset', '?')} train; {cfg.get('arch')}/{cfg.get('patch_size')} on "
            f"{cfg.get('global_crops_size')} px global crops")
    return line, f"DINO teacher, {trained_for}", record


def save_figure(fig, name: str) -> Path | None:
    """Save `fig` as notebooks/figures/<name>.png when VITDINO_SAVE_FIGURES=1 (for the README); else nothing."""
    if not os.environ.get("VITDINO_SAVE_FIGURES"):
        return None
    out = REPO_ROOT / "notebooks" / "figures" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", dpi=110)
    return out


@contextmanager
def native_stderr_silenced():
    """Silence what C++ code writes straight to the process's stderr for the duration, e.g. torch.profiler's
    start and stop lines, which Jupyter would show under the cell. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
