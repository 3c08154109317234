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


# Figure text as large as the notebook's own (14 px in JupyterLab): 11.5 pt at 90 dpi is 14.4 px.
# JupyterLab shrinks a figure wider than its output area (about 970 px in a 1400 px wide window,
# 10.7 inches at 90 dpi) and its text with it, so the notebooks keep figures under 10.5 inches wide.
FONT_SIZE = 11.5
MAX_WIDTH = 10.5


def setup(seed: int = 0, dpi: int = 90) -> NotebookEnv:
    """Seed every RNG, pick the device, find the data root, set figure defaults; print
    what was chosen."""
    import matplotlib.pyplot as plt

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device("auto")
    plt.rcParams.update(
        {
            "figure.dpi": dpi,
            "axes.grid": False,
            "image.interpolation": "nearest",
            "font.size": FONT_SIZE,  # ticks, labels and legends; titles 1.2x
        }
    )
    env = NotebookEnv(fast_mode(), device, data_root(), seed)
    print(
        f"torch {torch.__version__} | device {device} | {torch.get_num_threads()} threads | data"
        f" root {env.data_root} | fast mode {'on' if env.fast else 'off'}"
    )
    return env


PHOTOS = ("grace_hopper", "china", "flower", "astronaut", "chelsea", "coffee", "rocket")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # bundled in scikit-image's wheel


def photo(name: str = "grace_hopper") -> Image.Image:
    """A real photo as RGB, offline: from <data root>/photos if a file there has `name` in its
    name, else the sample photos shipped inside matplotlib (grace_hopper), scikit-learn (china,
    flower) and scikit-image (astronaut, chelsea, coffee, rocket).

    FileNotFoundError, saying how to get it, for another name or when scikit-image is missing.
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
    if name in SKIMAGE_PHOTOS:
        try:
            import skimage.data
        except ImportError:
            raise FileNotFoundError(
                f"photo {name!r} comes with scikit-image, which is not installed: run `pip install"
                f" scikit-image` (a dependency of the course: `make lab` installs it), or put an"
                f" image file named {name}.jpg in {folder}"
            ) from None
        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    raise FileNotFoundError(
        f"photo {name!r} not found in {folder}: put an image file with {name!r} in its name there;"
        f" these need no file: {', '.join(PHOTOS)}"
    )


CHECKPOINT_ENV = "VITDINO_CHECKPOINT"
SHIPPED_LABEL = "shipped ViT-Ti/12 (imagenette-96, CPU)"
SHIPPED_SHAPE = ("vit_tiny", 12, 72)  # the shipped model: arch, patch size, training resolution


def _variable_path(value: str) -> Path:
    """The file `$VITDINO_CHECKPOINT` names: as given (relative to the working directory), else
    relative to the repository root (a notebook's kernel runs in notebooks/, the README's paths
    start at the root)."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path


def course_checkpoint() -> tuple[Path | None, str]:
    """The weights the notebooks show, and a short label for figure titles: (path, label).

    `$VITDINO_CHECKPOINT` names any checkpoint or backbone file, official DINO files included
    (e.g. dino_deitsmall8_pretrain.pth); its label is the file name. A missing file or a folder is a
    CheckpointError, never a silent fallback. Unset, the shipped checkpoints/dino_imagenette96.pth,
    labelled as the small CPU-trained model it is. The path is None only when the variable is unset
    and the shipped file is missing.
    """
    from .checkpoint import CheckpointError

    value = os.environ.get(CHECKPOINT_ENV)
    if value:
        path = _variable_path(value)
        if path.is_dir():
            raise CheckpointError(
                f"{CHECKPOINT_ENV}={value} is a folder ({path.resolve()}); point it at the"
                " checkpoint file inside (a .pth), or unset it to use the shipped one"
            )
        if not path.is_file():
            where = (
                f"no such file ({path.resolve()}, nor under the repository root)"
                if not path.is_absolute()
                else "no such file"
            )
            raise CheckpointError(
                f"{CHECKPOINT_ENV}={value}: {where}; point it at a checkpoint "
                "(e.g. dino_deitsmall8_pretrain.pth) or unset it to use the shipped one"
            )
        return path, path.name
    return (
        (SHIPPED_CHECKPOINT, SHIPPED_LABEL)
        if SHIPPED_CHECKPOINT.is_file()
        else (None, "no checkpoint")
    )


def nonfinite_count(model: torch.nn.Module) -> tuple[int, list[str]]:
    """How many floating-point values in the model's weights are NaN or inf, and
    in which tensors."""
    counts = {
        k: int((~torch.isfinite(t)).sum())
        for k, t in model.state_dict().items()
        if t.is_floating_point()
    }
    bad = [k for k, n in counts.items() if n]
    return sum(counts[k] for k in bad), bad


def load_course_backbone(device: str | torch.device = "cpu") -> tuple[torch.nn.Module | None, dict]:
    """The teacher backbone of `course_checkpoint()` in eval mode, and its info: (model, info).

    info holds "arch", "patch_size", "image_size" (the training resolution), "depth", "path" and
    "label". Architecture, depth and patch size are read from the weights' shapes, the training
    resolution from the config (from `pos_embed` for official files). Weights that hold NaN or inf
    are refused. Any problem with the file is one
    CheckpointError line that names the variable when the file came from it. Returns
    (None, {"path": None, "label": ...}) when there is no checkpoint at all.
    """
    from .checkpoint import CheckpointError, build_backbone_from_checkpoint

    path, label = course_checkpoint()
    if path is None:
        return None, {"path": None, "label": label}
    source = (
        f"{CHECKPOINT_ENV}={os.environ[CHECKPOINT_ENV]}"
        if os.environ.get(CHECKPOINT_ENV)
        else "the shipped checkpoint"
    )
    try:
        model, info = build_backbone_from_checkpoint(
            path, which="teacher", arch=None, patch_size=None, device=device
        )
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    n_bad, tensors = nonfinite_count(model)
    if n_bad:
        raise CheckpointError(
            f"{source}: {path} holds {n_bad:,} weight values that are not finite (NaN or inf) in "
            f"{len(tensors)} tensor(s), e.g. {tensors[0]}; use a checkpoint from before training "
            "diverged"
        )
    return model, info | {"path": str(path), "label": label}


@dataclass
class CourseWeights:
    """The weights a notebook shows (`course_weights()`): the trained backbone, if any, and a random
    one."""

    trained: (
        torch.nn.Module | None
    )  # the teacher backbone, eval mode; None when there is no checkpoint
    random: torch.nn.Module  # the same architecture, freshly initialised: the baseline
    arch: str
    patch_size: int
    image_size: int  # the resolution the weights were trained at
    label: str  # names the weights in figure titles
    story: str  # one line: what the weights are and how they were trained
    record: dict  # the JSON record beside a shipped-style checkpoint ({} for official files)
    path: Path | None

    @property
    def model(self) -> torch.nn.Module:
        """The model most cells show: the trained one, else the random one."""
        return self.trained if self.trained is not None else self.random

    @property
    def grid(self) -> int:
        """Patches per side at the training resolution."""
        return self.image_size // self.patch_size

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return self.model.num_heads

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def shape_line(self) -> str:
        """'vit_tiny/12: 12 blocks, 3 heads, embed dim 192, trained at 72 px = 6 x 6 patches'."""
        return (
            f"{self.arch}/{self.patch_size}: {self.depth} blocks, {self.num_heads} heads, embed dim"
            f" {self.embed_dim}, trained at {self.image_size} px = {self.grid} x {self.grid}"
            " patches"
        )

    def summary(self) -> str:
        """A few lines for a notebook to print: which weights, their shape, the
        baseline beside them."""
        if self.trained is None:
            wanted = os.environ.get(CHECKPOINT_ENV) or short_path(SHIPPED_CHECKPOINT)
            return (
                f"weights: RANDOM INITIALISATION: there is no trained checkpoint at {wanted} yet,"
                f" so every result below comes from an untrained network\n{self.shape_line()}"
            )
        skip = ("file", "weights", "dtype", "step", "steps", "epochs", "command", "evaluate")
        extra = [
            f"   {k}: {v}"
            for k, v in self.record.items()
            if isinstance(v, (str, int, float)) and k not in skip
        ]
        return "\n".join(
            [
                f"weights: {self.story}",
                *extra,
                self.shape_line(),
                "beside it: the same architecture at random initialisation",
            ]
        )


def course_weights(device: str | torch.device = "cpu", seed: int = 0) -> CourseWeights:
    """Which weights a notebook shows, in one call: the teacher of `$VITDINO_CHECKPOINT` or of the
    shipped checkpoint (`load_course_backbone`), what it is (`checkpoint_story`), and a random-init
    backbone of the same architecture. Without any checkpoint, the shipped model's architecture at
    random init."""
    from .checkpoint import build_random_backbone

    trained, info = load_course_backbone(device)
    if trained is not None:
        arch, patch, size = info["arch"], info["patch_size"], info["image_size"]
        story, _, record = checkpoint_story(Path(info["path"]))
    else:
        (arch, patch, size), story, record = SHIPPED_SHAPE, "random initialisation", {}
    random_model, _ = build_random_backbone(arch, patch, size, seed=seed, device=device)
    if trained is not None and len(random_model.blocks) != len(
        trained.blocks
    ):  # an official file of another depth
        random_model = _random_like(trained, seed).to(device)
    path = Path(info["path"]) if info["path"] else None
    return CourseWeights(
        trained, random_model, arch, patch, size, info["label"], story, record, path
    )


def _random_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A freshly initialised VisionTransformer with exactly `model`'s shape, eval mode."""
    from .vision_transformer import VisionTransformer

    blk = model.blocks[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = VisionTransformer(
            img_size=model.patch_embed.img_size,
            patch_size=model.patch_embed.patch_size,
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=model.num_heads,
            mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim,
            qkv_bias=blk.attn.qkv.bias is not None,
            num_register_tokens=getattr(model, "num_register_tokens", 0),
            use_mask_token=hasattr(model, "mask_token"),
        )
    return out.eval()


def short_path(path: Path) -> str:
    """The path relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def checkpoint_story(path: Path) -> tuple[str, str, dict]:
    """What a trained checkpoint is, for the notebooks that show one: (one long line, a short tag
    for figure titles, the JSON record beside it), from the checkpoint's config and its `.json`
    record."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if not cfg:  # an official DINO file: weights only, no record of how they were trained
        return (
            f"DINO teacher weights from {Path(path).name} (the file carries no training config)",
            Path(path).name,
            {},
        )
    record_file = Path(path).with_suffix(".json")
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    epochs = record.get("epochs", ckpt.get("epoch"))
    step = record.get("step", ckpt.get("step"))
    images = f"the first {cfg['max_images']} images of " if cfg.get("max_images") else ""
    trained_for = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    n_stages = len(
        record.get("stages", [])
    )  # a run continued by warm restarts (config init_weights)
    stages = f", {n_stages} stages" if n_stages > 1 else ""
    line = (
        f"DINO teacher from {short_path(path)}, trained {trained_for} ({step} steps{stages})"
        f" without labels on {images}{cfg.get('dataset', '?')} train;"
        f" {cfg.get('arch')}/{cfg.get('patch_size')} on {cfg.get('global_crops_size')} px global"
        " crops"
    )
    return line, f"DINO teacher, {trained_for}", record


def save_figure(fig, name: str) -> Path | None:
    """Save `fig` as notebooks/figures/<name>.png when VITDINO_SAVE_FIGURES=1 (for the README); else
    nothing."""
    if not os.environ.get("VITDINO_SAVE_FIGURES"):
        return None
    out = REPO_ROOT / "notebooks" / "figures" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", dpi=110)
    return out


@contextmanager
def native_stderr_silenced():
    """Silence what C++ code writes straight to the process's stderr for the duration, e.g.
    torch.profiler's start and stop lines, which Jupyter would show under the cell. Python
    exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
