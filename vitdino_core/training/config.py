"""Training configuration: one flat dataclass, YAML files, validated, with the official DINO
argument names.

    python -m vitdino_core.train --config workshop_tiny --set epochs=3 --set lr=1e-3

A config is a YAML mapping whose keys are fields of `TrainConfig`. Unknown keys, wrong types and
impossible values are errors that name the key. Files are read with `yaml.SafeLoader` (a key given
twice is an error), so a config can hold data only, never code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..cli import UserError
from ..data import DATASETS
from ..patch_embedding import check_image_size
from ..vision_transformer import ARCHS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(UserError, ValueError):
    """A config file or override that is not valid; the message names the key and the fix."""


@dataclass
class TrainConfig:
    # --- run
    run_name: str = "dino"  # results go to <output_dir>/<run_name>/: a plain folder name
    output_dir: str = "checkpoints"
    seed: int = 0
    # --- data
    dataset: str = "imagenette"  # one of data.DATASETS
    data_path: str = (
        ""  # a folder that overrides where the dataset is looked for ("" = the data root)
    )
    max_images: int = 0  # train on the first N images of a fixed shuffle (0 = all)
    download: bool = False
    num_workers: int = 2
    # --- model
    arch: str = "vit_small"  # one of vision_transformer.ARCHS
    patch_size: int = 16
    drop_path_rate: float = 0.1
    out_dim: int = 65536
    norm_last_layer: bool = True
    use_bn_in_head: bool = False
    # a backbone checkpoint (exported, training or official DINO) to start student and teacher from;
    # the head starts fresh
    init_weights: str = ""
    # --- multi-crop
    global_crops_size: int = 224
    local_crops_size: int = 96
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 8
    # --- teacher
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # --- what DINOv2 adds (dinov2.py; DINOv2's names), all off by default: plain DINO
    num_register_tokens: int = 0  # learned register tokens after CLS (Darcet et al. 2024)
    koleo_loss_weight: float = 0.0  # KoLeo on the student's global-crop CLS features (DINOv2: 0.1)
    centering: str = "centering"  # centering (DINO's running centre) | sinkhorn_knopp
    ibot: bool = False  # iBOT: the student predicts the teacher's masked patch tokens
    ibot_loss_weight: float = 1.0
    ibot_mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)  # share of a masked image's patches
    ibot_mask_sample_probability: float = 0.5  # share of the global crops that are masked
    ibot_separate_head: bool = False  # a patch head of its own (else the DINO head serves)
    ibot_head_n_prototypes: int = 0  # its outputs, with ibot_separate_head (0 = out_dim)
    # --- optimisation
    epochs: int = 100
    batch_size_per_gpu: int = 64
    lr: float = 5e-4  # for a total batch of 256; scaled linearly with the real total batch
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient norm clip (0 = off)
    freeze_last_layer: int = 1
    # --- speed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False
    compile_mode: str = (
        "default"  # default | max-autotune-no-cudagraphs (searches matmul kernels: a long compile)
    )
    gpu_augment: bool = (
        False  # multi-crop on the device, batched (multicrop_gpu.py); workers only decode
    )
    gpu_augment_size: int = (
        0  # with gpu_augment: resize+centre-crop images to this square first (0 = as they are)
    )
    # with gpu_augment: shrink images whose longer side exceeds this, pad to a square (0 = off)
    gpu_augment_max_size: int = 0
    grad_checkpointing: bool = False
    # the model's speed tricks (vision_transformer.py, attention.py): the same values, less time
    fast: bool = True
    threads: int = 0  # torch CPU threads (0 = PyTorch's default)
    # --- bookkeeping
    max_steps: int = 0  # stop after this many optimisation steps in total (0 = all epochs)
    log_every: int = 10  # steps between metrics.jsonl records
    save_every_steps: int = 0  # also checkpoint every N steps (0 = at the end of each epoch only)
    saveckp_freq: int = 0  # keep a copy checkpoint<epoch>.pth every N epochs (0 = never)
    collapse_patience: int = 20  # warn after this many consecutive collapsed log records

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CHOICES = {
    "dataset": DATASETS,
    "arch": tuple(ARCHS),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "centering": ("centering", "sinkhorn_knopp"),
    "compile_mode": (
        "default",
        "max-autotune-no-cudagraphs",
    ),  # the CUDA-graph modes are untested with the EMA teacher
}


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a config shipped in vitdino_core/configs/."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config {str(name_or_path)!r} not found: not a file, and not one of the shipped configs"
        f" {shipped_configs()}"
    )


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping naming a key twice (the plain loader keeps the last
    value, silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, typing.Hashable) and key in seen:
                    raise ConfigError(
                        f"the key {key!r} is set twice, on lines {seen[key]} and {line}; keep one"
                    )
                if isinstance(key, typing.Hashable):
                    seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's data: UTF-8 text, each key once, data only (no tags that build objects)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _number(value: Any) -> Any:
    """YAML 1.1 reads `5e-4` (no dot) as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field's type; int -> float and list -> tuple are accepted."""
    hint = typing.get_type_hints(TrainConfig)[key]
    origin = typing.get_origin(hint)
    if origin is tuple:
        n = len(typing.get_args(hint))
        value = [_number(v) for v in value] if isinstance(value, (list, tuple)) else value
        if (
            not isinstance(value, (list, tuple))
            or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(
                f"{key}: expected a list of {n} numbers, e.g. {list(FIELDS[key].default)}, got"
                f" {value!r}"
            )
        return tuple(float(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if hint is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _check_key(key: str) -> None:
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=3)
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else f"; valid keys: {', '.join(FIELDS)}"
        )
        raise ConfigError(f"unknown config key {key!r}{hint}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Impossible values are errors that say which key and what would be valid."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for (
        key
    ) in FIELDS:  # every float, alone or in a tuple, first: inf would pass checks like `> 0` below
        value = getattr(cfg, key)
        values = value if isinstance(value, tuple) else (value,)
        need(
            all(math.isfinite(v) for v in values if isinstance(v, float)),
            f"{key} must be a finite number, got {value}",
        )
    name = cfg.run_name
    need(
        name.strip() not in ("", ".", "..")
        and Path(name).name == name
        and "/" not in name
        and "\\" not in name,
        f"run_name must be a plain folder name, got {name!r}: a run goes to"
        " <output_dir>/<run_name>/, so parent folders belong in output_dir",
    )
    for key, choices in CHOICES.items():
        need(
            getattr(cfg, key) in choices,
            f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(choices)}",
        )
    for key in (
        "lr",
        "batch_size_per_gpu",
        "epochs",
        "out_dim",
        "patch_size",
        "global_crops_size",
        "local_crops_size",
        "teacher_temp",
        "warmup_teacher_temp",
        "student_temp",
        "log_every",
    ):
        v = getattr(cfg, key)
        need(v > 0 and math.isfinite(v), f"{key} must be > 0, got {v}")
    for key in (
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "clip_grad",
        "drop_path_rate",
        "warmup_epochs",
        "warmup_teacher_temp_epochs",
        "freeze_last_layer",
        "num_workers",
        "max_steps",
        "max_images",
        "save_every_steps",
        "saveckp_freq",
        "threads",
        "local_crops_number",
        "gpu_augment_size",
        "gpu_augment_max_size",
        "num_register_tokens",
        "koleo_loss_weight",
        "ibot_loss_weight",
        "ibot_head_n_prototypes",
    ):
        v = getattr(cfg, key)
        need(v >= 0, f"{key} must be >= 0, got {v}")
    need(
        cfg.warmup_epochs <= cfg.epochs,
        f"warmup_epochs ({cfg.warmup_epochs}) must be <= epochs ({cfg.epochs})",
    )
    need(
        cfg.warmup_teacher_temp_epochs <= cfg.epochs,
        f"warmup_teacher_temp_epochs ({cfg.warmup_teacher_temp_epochs}) must be <= epochs"
        f" ({cfg.epochs}): the teacher temperature would never reach teacher_temp",
    )
    need(
        cfg.local_crops_number == 0 or cfg.local_crops_size <= cfg.global_crops_size,
        f"local_crops_size ({cfg.local_crops_size}) must be <= global_crops_size"
        f" ({cfg.global_crops_size}): local crops are the small views (or set"
        " local_crops_number=0)",
    )
    need(
        not (cfg.gpu_augment_size and cfg.gpu_augment_max_size),
        "set gpu_augment_size (a centre square of every image) or gpu_augment_max_size (whole"
        " images, shrunk and padded), not both",
    )
    for key in ("momentum_teacher", "center_momentum"):
        need(0 <= getattr(cfg, key) <= 1, f"{key} must be in [0, 1], got {getattr(cfg, key)}")
    need(cfg.drop_path_rate < 1, f"drop_path_rate must be < 1, got {cfg.drop_path_rate}")
    for key in ("global_crops_scale", "local_crops_scale"):
        lo, hi = getattr(cfg, key)
        need(0 < lo <= hi <= 1, f"{key} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")
    p = cfg.patch_size
    for key in ("global_crops_size", "local_crops_size"):
        size = getattr(cfg, key)
        try:
            check_image_size(size, p, what=key)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.ibot:
        validate_ibot(cfg, need)
    need(
        cfg.ibot_head_n_prototypes == 0 or (cfg.ibot and cfg.ibot_separate_head),
        f"ibot_head_n_prototypes={cfg.ibot_head_n_prototypes} sizes a separate patch head: set"
        " ibot=true and ibot_separate_head=true, or leave it 0 (the DINO head's out_dim)",
    )
    need(
        cfg.dataset != "folder" or bool(cfg.data_path),
        "dataset 'folder' needs data_path: the folder of images to train on",
    )
    need(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        f"device: {cfg.device!r} is not auto, cpu or cuda[:N]",
    )
    return cfg


def validate_ibot(cfg: TrainConfig, need) -> None:
    """iBOT's masks must be possible: at least one masked global crop per batch, and room on the
    global crops' patch grid for the smallest rectangle `MaskingGenerator` draws (4 patches)."""
    lo, hi = cfg.ibot_mask_ratio_min_max
    need(
        0 <= lo <= hi <= 1,
        f"ibot_mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got {[lo, hi]}",
    )
    p = cfg.ibot_mask_sample_probability
    need(0 <= p <= 1, f"ibot_mask_sample_probability must be in [0, 1], got {p}")
    n_images = 2 * cfg.batch_size_per_gpu  # the global crops of a batch
    need(
        int(n_images * p) >= 1,
        f"ibot_mask_sample_probability={p} masks int({n_images} x {p}) = 0 of the"
        f" {n_images} global crops of a batch: raise it or batch_size_per_gpu",
    )
    grid = (cfg.global_crops_size // cfg.patch_size) ** 2
    need(
        int(grid * hi) >= 4,
        f"ibot_mask_ratio_min_max: at most {hi} of the {grid} patches of a global crop is"
        f" {int(grid * hi)}, fewer than the 4-patch rectangles masks are made of; raise its max"
        " or global_crops_size",
    )


def parse_override(item: str) -> tuple[str, Any]:
    """'key=value' with the value read as YAML: `lr=1e-3`, `compile=true`,
    `global_crops_scale=[0.3,1]`."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    _check_key(key)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if FIELDS[key].type in ("str", str) and not isinstance(value, str):
        value = raw  # data_path=123 stays a string
    return key, value


def make_config(values: dict[str, Any] | None = None) -> TrainConfig:
    values = dict(values or {})
    for key in values:
        _check_key(key)
    cfg = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return validate(cfg)


def load_config(
    name_or_path: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Read a YAML config (a path or a shipped name), apply `key=value` overrides, validate."""
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of key: value, got {type(loaded).__name__}"
            )
        values.update(loaded)
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        values.update(parse_override(o) for o in overrides or [])
    try:
        return make_config(values)
    except ConfigError as e:
        where = f" in {name_or_path}" if name_or_path is not None else ""
        raise ConfigError(f"{e}{where}") from None


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
