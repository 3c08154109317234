"""The walk from `DINOTrainer.train_step` to the loss: which `vitdino_core` functions one step
calls; prints one JSON.

    # workshop_tiny, CPU, fp32, the config's own path
    python benchmarks/walk.py
    # the plain path (any config key, as on the command line)
    python benchmarks/walk.py --set fast=false

Counted with `sys.setprofile` around one step on a synthetic batch: every distinct function (by file
and qualified name) whose code lives in `vitdino_core`, from the start of `train_step` until the
loss (`DINOLoss.forward`) returns; each counts once however often it runs, backward is not counted.
A comprehension is part of the function that holds it (Python 3.12 no longer gives a list
comprehension a frame of its own). This is what a reader who follows the step through the code has
to open: the fewer functions and files, the shorter the walk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitdino_core.dino_loss import DINOLoss  # noqa: E402
from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

PACKAGE = ROOT / "vitdino_core"
COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


class NoImages(torch.utils.data.Dataset):
    """The trainer needs a dataset to size its sampler; the walk feeds `train_step` directly."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        raise RuntimeError("the walk feeds train_step directly; the loader is never iterated")


def walk(config: str = "workshop_tiny", overrides: list[str] | None = None) -> dict:
    """One step of `config` (on a CPU in fp32 unless overridden): the distinct package functions it
    calls, in the order first called, as 'file:function' with the file relative to `vitdino_core/`.
    """
    cfg = load_config(
        config,
        [
            "device=cpu",
            "precision=fp32",
            "num_workers=0",
            "compile=false",
            "gpu_augment=false",
            f"output_dir={tempfile.gettempdir()}",
            "run_name=walk",
            *(overrides or []),
        ],
    )  # nothing is written: the trainer is never fit
    torch.manual_seed(0)
    B = cfg.batch_size_per_gpu
    trainer = DINOTrainer(cfg, dataset=NoImages(B), quiet=True)
    trainer.student.train()
    trainer.teacher.train()
    g = torch.Generator().manual_seed(0)
    global_crops = torch.randn(
        2 * B, 3, cfg.global_crops_size, cfg.global_crops_size, generator=g
    )  # (2B, 3, G, G)
    local_crops = (
        torch.randn(
            cfg.local_crops_number * B, 3, cfg.local_crops_size, cfg.local_crops_size, generator=g
        )
        if cfg.local_crops_number
        else None
    )  # (N*B, 3, L, L)

    seen: dict[str, None] = {}  # insertion-ordered set
    loss_code, done = DINOLoss.forward.__code__, [False]

    def profiler(frame, event, arg):
        if done[0] or event not in ("call", "return"):
            return
        code = frame.f_code
        path = Path(code.co_filename)
        if event == "call" and path.is_relative_to(PACKAGE) and code.co_name not in COMPREHENSIONS:
            seen.setdefault(f"{path.relative_to(PACKAGE).as_posix()}:{code.co_qualname}")
        elif event == "return" and code is loss_code:
            done[0] = True  # the loss is computed: backward and the optimiser are not counted

    sys.setprofile(profiler)
    try:
        trainer.train_step(global_crops, local_crops)
    finally:
        sys.setprofile(None)
    functions = list(seen)
    files = sorted({f.split(":")[0] for f in functions})
    return {
        "config": config,
        "overrides": overrides or [],
        "fast": getattr(cfg, "fast", None),
        "count": len(functions),
        "files": files,
        "file_count": len(files),
        "functions": functions,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="workshop_tiny", help="a shipped config name or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = walk(args.config, args.overrides)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
