"""Checkpoints: written atomically, read with `weights_only=True`, official DINO files understood.

A checkpoint is only ever a dict of tensors, numbers, strings, lists and dicts. Loading uses
`torch.load(..., weights_only=True)`, which refuses any pickle that would construct other
objects or run code, so a checkpoint downloaded from a stranger cannot execute anything.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .cli import UserError
from .vision_transformer import VisionTransformer, build_vit, default_img_size, resize_pos_grid


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, untrusted or does not fit the model."""


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """The names ('student.head.last_layer.weight', ...) of the floating-point tensors in a nested
    dict/list that hold a NaN or an infinity; one host-device sync per device."""
    named: list[tuple[str, torch.Tensor]] = []

    def walk(o: Any, name: str) -> None:
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() or o.is_complex():
                named.append((name, o))
        elif isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{name}.{i}" if name else str(i))

    walk(obj, prefix)
    bad: list[str] = []
    for device in {t.device for _, t in named}:
        names, tensors = zip(*((n, t) for n, t in named if t.device == device))
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()  # (T,), one sync
        bad += [n for n, ok in zip(names, finite) if not ok]
    return bad


def refuse_nonfinite_weights(sd: Mapping[str, torch.Tensor], source: Any) -> None:
    """CheckpointError naming `source` and how many weight values are NaN/inf, if any are: such
    weights would give features that score a meaningless number, or train nothing."""
    bad = nonfinite_tensors(sd)
    if bad:
        n = sum(int((~torch.isfinite(sd[k])).sum()) for k in bad)
        total = sum(v.numel() for v in sd.values() if isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{source}: {n} of its {total} weight values are not finite (NaN/inf), in {len(bad)} "
            f"tensor(s) such as {bad[0]}; it cannot be used: take an earlier checkpoint"
        )


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one. A state that
    holds NaN or inf is refused (CheckpointError) and the file at `path` is left as it was.
    """
    path = Path(path)
    bad = nonfinite_tensors(obj)
    if bad:
        raise CheckpointError(
            f"refused to write {path}: NaN/inf in {len(bad)} tensor(s), e.g. {', '.join(bad[:3])}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(
                fd, 0o666 & ~_umask()
            )  # mkstemp makes it 0600; the mode open() would give it, as the run's other files
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            kept = (
                f"{path} is the previous checkpoint, unchanged"
                if path.is_file()
                else f"no {path.name} was written"
            )
            raise CheckpointError(
                f"no space left on the disk while writing {path}; {kept}. Free some space, "
                "then continue with --resume"
            ) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the system tells (changing it races with
    other threads)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _disk_full(e: BaseException) -> bool:
    """An ENOSPC/EDQUOT, raised as it is or wrapped by torch.save (a RuntimeError from
    its zip writer)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    return isinstance(e, RuntimeError) and ("No space left" in str(e) or "quota" in str(e).lower())


def snapshot(obj: Any) -> Any:
    """A copy of a nested dict/list of tensors and plain values that later in-place updates cannot
    reach: every tensor copied into CPU memory (a GPU tensor is fetched, a CPU one cloned)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj  # numbers, strings, None: immutable


class BackgroundWriter:
    """Writes checkpoints on a thread, so that training goes on while the file is written.

    `submit` first waits for the write before it (at most one is in flight, and files land in the
    order they were submitted), snapshots the state into CPU memory (the next step changes the live
    tensors in place), and hands the snapshot to a thread that calls `save_checkpoint` for each
    path. `wait` blocks until the last write is on disk and raises its error, if it had one. Each
    file is still written atomically: a crash mid-write leaves the previous checkpoint.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, obj: Mapping[str, Any], paths, block: bool = True) -> None:
        """Write `obj` to each of `paths`: here and now (block=True, after any write in flight; no
        copy of the state is needed), or on the thread (`submit`)."""
        if not block:
            return self.submit(obj, paths)
        self.wait()
        for path in paths:
            save_checkpoint(obj, path)

    def submit(self, obj: Mapping[str, Any], paths) -> None:
        self.wait()
        state = snapshot(obj)

        def write():
            try:
                for path in paths:
                    save_checkpoint(state, path)
            except BaseException as e:  # raised in the training thread by the next wait()
                self._error = e

        self._thread = threading.Thread(target=write, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _torch_load_weights_only(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(..., weights_only=True)` that also accepts an `argparse.Namespace`.

    Official DINO training checkpoints hold their argparse.Namespace of arguments: plain data.
    torch >= 2.5 allows it for this one call; torch 2.4 only has the process-wide allow-list.
    """
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`; clear errors for missing, corrupt
    or unsafe files."""
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        obj = _torch_load_weights_only(path, map_location)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(
                f"could not read checkpoint {path}: {_short_reason(e)}. The file may be truncated"
                " or not a PyTorch file."
            ) from None
        reason = next(
            (ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "global" in ln), ""
        )
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain containers,"
            f" which could run code when unpickled ({reason or 'weights_only=True rejected it'})."
            " Only load files you trust; re-save trusted ones as a plain state dict."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as e:
        raise CheckpointError(
            f"could not read checkpoint {path}: {_short_reason(e)}. The file may be truncated or"
            " not a PyTorch file."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, expected a dict (a state dict or a checkpoint)"
        )
    return obj


def _check_checkpoint_file(path: Path) -> None:
    """Missing, a folder, empty, or not a file `torch.save` wrote (a zip archive or a pickle): one
    clear error."""
    if path.is_dir():
        inside = next(
            (p for p in (path / "checkpoint.pth", *sorted(path.glob("*.pth"))) if p.is_file()), None
        )
        hint = f"; did you mean {inside}?" if inside else "; give the .pth file, not the folder"
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(
            f"{path} is not a regular file (a device, a pipe or a socket); give a .pth file"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(
            f"{path} is empty (0 bytes): an interrupted download or copy? Get the file again"
        )
    if (
        head != b"PK\x03\x04" and head[:1] != b"\x80"
    ):  # torch.save writes a zip archive (or, before 1.6, a pickle)
        kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "some other format"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (it starts like {kind}); give a .pth file "
            "written by torch.save"
        )


def _short_reason(e: BaseException) -> str:
    """An exception's message on one line, without the long advice some torch errors append."""
    return " ".join(str(e).split(". ")[0].split()) or type(e).__name__


def backbone_state_dict(ckpt: Mapping[str, Any], key: str = "teacher") -> dict[str, torch.Tensor]:
    """The backbone weights in a checkpoint: ours, official DINO's full checkpoints, or a bare state
    dict.

    Picks `ckpt[key]` when present (teacher by default), strips `module.` and `backbone.` prefixes
    and drops the DINO head (and iBOT's patch head).
    """
    sd = ckpt
    for k in (key, "state_dict", "model"):
        if isinstance(sd.get(k), Mapping):
            sd = sd[k]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("backbone.")
        if k.startswith(("head.", "ibot_head.")):  # the DINO head, and iBOT's own (DINOv2)
            continue
        out[k] = v
    if not out:
        raise CheckpointError(
            f"no {key!r} backbone weights found; the checkpoint has keys {sorted(ckpt)[:20]}"
        )
    return out


def checkpoint_layout(ckpt: Mapping[str, Any]) -> str:
    """Which kind of file this is: "vitdino" (ours: a `config` dict beside the weights), "dino-full"
    (an official DINO training checkpoint: student, teacher, optimizer, epoch, args) or "backbone"
    (a bare backbone state dict, as the official `dino_*_pretrain.pth` files are)."""
    if isinstance(ckpt.get("config"), Mapping):
        return "vitdino"
    if isinstance(ckpt.get("teacher"), Mapping) or isinstance(ckpt.get("student"), Mapping):
        return "dino-full"
    return "backbone"


def arch_by_embed_dim() -> dict[int, tuple[str, int]]:
    """{embed dim: (arch name, heads)} of `vision_transformer.ARCHS` (192: vit_tiny, 3 heads; 384:
    vit_small, 6; 768: vit_base, 12)."""
    from .vision_transformer import ARCHS

    return {size.embed_dim: (name, size.num_heads) for name, size in ARCHS.items()}


def vit_shape(sd: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> dict:
    """The Vision Transformer a backbone state dict belongs to, read from its keys and shapes.

    embed dim, input channels and patch size from `patch_embed.proj.weight` (D, C, p, p); depth from
    the `blocks.N` keys; the pretraining image size from the length of `pos_embed` (1, 1 + g*g, D),
    g*p pixels; MLP ratio from `blocks.0.mlp.fc1`; arch name and heads from the embed dim, as in
    DINO (`arch_by_embed_dim`); DINOv2's registers from `register_tokens` (1, R, D), and whether
    there is a `mask_token`.
    """
    need = (
        "patch_embed.proj.weight",
        "pos_embed",
        "cls_token",
        "norm.weight",
        "blocks.0.mlp.fc1.weight",
    )
    lacking = next((k for k in need if k not in sd), None)
    if lacking:
        keys = ", ".join(sorted(sd)[:4])
        raise CheckpointError(
            f"{source} does not hold Vision Transformer weights (no {lacking}; its keys begin "
            f"{keys}, ...); give a DINO ViT checkpoint or backbone file"
        )
    w = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    pos = sd["pos_embed"]  # (1, 1 + g*g, D)
    grid = int((pos.shape[1] - 1) ** 0.5) if pos.ndim == 3 else 0
    if (
        w.ndim != 4
        or w.shape[2] != w.shape[3]
        or grid * grid + 1 != pos.shape[1]
        or pos.shape[2] != w.shape[0]
    ):
        raise CheckpointError(
            f"{source} holds ViT-like weights of an unsupported shape (patch_embed.proj.weight "
            f"{tuple(w.shape)}, pos_embed {tuple(pos.shape)}): square patches and a square "
            "position grid are supported"
        )
    embed_dim, patch_size = int(w.shape[0]), int(w.shape[3])
    archs = arch_by_embed_dim()
    if embed_dim not in archs:
        known = ", ".join(f"{a} ({d})" for d, (a, _) in archs.items())
        raise CheckpointError(
            f"{source} holds a ViT with embed dim {embed_dim}; supported: {known}"
        )
    arch, num_heads = archs[embed_dim]
    return {
        "arch": arch,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "embed_dim": embed_dim,
        "depth": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
        "num_heads": num_heads,
        "in_chans": int(w.shape[1]),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "num_register_tokens": int(sd["register_tokens"].shape[1])
        if "register_tokens" in sd
        else 0,
        "use_mask_token": "mask_token" in sd,
    }


def load_backbone_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load strictly, resizing `pos_embed` to the model's grid; list every mismatch otherwise."""
    own = model.state_dict()
    sd = dict(state_dict)
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], own["pos_embed"].shape[1])
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        lines = ["checkpoint does not fit this model (is it another architecture or patch size?)"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                lines.append(
                    f"  {title} ({len(items)}): "
                    + ", ".join(items[:12])
                    + (" ..." if len(items) > 12 else "")
                )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def resize_pos_embed(pos_embed: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(1, 1+s*s, D) -> (1, num_tokens, D) by bicubic interpolation of the patch grid."""
    old = int((pos_embed.shape[1] - 1) ** 0.5)
    new = int((num_tokens - 1) ** 0.5)
    if old * old + 1 != pos_embed.shape[1] or new * new + 1 != num_tokens:
        raise CheckpointError(
            f"cannot resize pos_embed {tuple(pos_embed.shape)} to {num_tokens} tokens: not square"
            " grids"
        )
    grid = resize_pos_grid(
        pos_embed[:, 1:], new, new
    )  # (1, new*new, D): what the forward pass would interpolate
    return torch.cat([pos_embed[:, :1], grid], dim=1)  # (1, 1+new*new, D)


def export_backbone(
    train_ckpt: str | os.PathLike,
    out: str | os.PathLike,
    which: str = "teacher",
    half: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Turn a training checkpoint into a small shippable file: {"teacher": backbone weights,
    "config": ...}.

    Writes `<out>` (fp16 weights by default: half the size, and features within 1e-3 of fp32) and a
    `<out>.json` beside it with the config and `meta` (epochs, time, hardware, accuracies, command).
    """
    ckpt = load_checkpoint(train_ckpt)
    weights = backbone_state_dict(ckpt, key=which)
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    config = dict(ckpt.get("config", {}))
    out = save_checkpoint(
        {which: weights, "config": config, "step": ckpt.get("step"), "epoch": ckpt.get("epoch")},
        out,
    )
    info = {
        "file": out.name,
        "weights": which,
        "dtype": "float16" if half else "float32",
        "step": ckpt.get("step"),
        "config": config,
        **dict(meta or {}),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- a backbone from a
# file


def build_backbone_from_checkpoint(
    path: str | os.PathLike,
    which: str = "teacher",
    arch: str | None = None,
    patch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """A VisionTransformer with the `which` ("teacher" or "student") backbone weights of a
    checkpoint file.

    Reads this project's checkpoints, official DINO training checkpoints (student/teacher with
    `module.`, `backbone.` and `head.` keys) and bare backbone state dicts (the official
    `dino_*_pretrain.pth`). The model (embed dim, depth, patch size, pretraining image size) is read
    from the weights' shapes; `arch`/`patch_size`, when given, are checked against them. Weights
    load with `strict=True`.

    Returns (model in eval mode, info) with info = {"arch", "patch_size", "image_size", "which",
    "path", "layout", "depth", "num_register_tokens", "config"}: `image_size` is the size the
    weights were trained at (our config's `global_crops_size`, else the length of `pos_embed`),
    `layout` one of `checkpoint_layout`'s names, `config` our training config ({} for official
    files). Registers and a mask token (DINOv2) are rebuilt when the weights hold them.
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
    wrong = [
        f"{flag} {want}"
        for flag, (want, have) in given.items()
        if want is not None and str(want) != str(have)
    ]
    if wrong:
        raise CheckpointError(
            f"{' '.join(wrong)} does not match {path}: its weights are {shape['arch']}/"
            f"{shape['patch_size']} ({shape['depth']} blocks, embed dim {shape['embed_dim']}); "
            "leave out --arch/--patch-size, they are read from the weights"
        )
    model = VisionTransformer(
        img_size=shape["image_size"],
        patch_size=shape["patch_size"],
        in_chans=shape["in_chans"],
        embed_dim=shape["embed_dim"],
        depth=shape["depth"],
        num_heads=shape["num_heads"],
        mlp_ratio=shape["mlp_ratio"],
        qkv_bias=shape["qkv_bias"],
        num_register_tokens=shape["num_register_tokens"],
        use_mask_token=shape["use_mask_token"],
    )
    load_backbone_weights(model, sd)  # strict: every key of the model, nothing else
    size = config.get("global_crops_size") or shape["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise CheckpointError(
            f"the config saved in {path}: global_crops_size {size!r} is not an image size; "
            "give --image-size"
        )
    image_size = size
    info = {
        "arch": shape["arch"],
        "patch_size": shape["patch_size"],
        "image_size": image_size,
        "which": which if layout != "backbone" else "backbone",
        "path": str(path),
        "layout": layout,
        "depth": shape["depth"],
        "num_register_tokens": shape["num_register_tokens"],
        "config": config,
    }
    return model.to(device).eval(), info


def build_random_backbone(
    arch: str,
    patch_size: int,
    image_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """An untrained VisionTransformer (the random-init baseline), same (model, info) as from a
    checkpoint."""
    image_size = image_size or default_img_size(patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(arch, patch_size, img_size=image_size)
    info = {
        "arch": arch,
        "patch_size": patch_size,
        "image_size": image_size,
        "which": "random-init",
        "path": None,
        "layout": None,
        "depth": len(model.blocks),
        "config": {},
    }
    return model.to(device).eval(), info


def describe(info: dict) -> str:
    """'vit_small/16 teacher from checkpoints/x.pth', 'vit_small/16 backbone from x.pth' or
    'vit_tiny/12 random init'."""
    name = f"{info['arch']}/{info['patch_size']}" + (
        f" ({info['depth']} blocks)" if info.get("depth", 12) != 12 else ""
    )
    registers = info.get("num_register_tokens", 0)
    name += f" with {registers} registers" if registers else ""
    return (
        f"{name} random init"
        if info["path"] is None
        else f"{name} {info['which']} from {info['path']}"
    )
