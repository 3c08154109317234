"""Train the course model (ViT-tiny/12, 72 px) with DINO on one GPU for a fixed wall-clock budget,
export its teacher and score it; prints one JSON.

The number of epochs is chosen so that the whole cosine schedule fits the budget: a probe of
`--probe-steps` steps times this machine's step first (with whatever else runs on it), then the
real run trains `budget / (seconds per step)` steps, rounded down to whole epochs.

    python benchmarks/course_checkpoint_gpu.py --minutes 6 --out runs/course_gpu \\
        --set lr=2e-3 --set batch_size_per_gpu=256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitdino_core.checkpoint import build_backbone_from_checkpoint, export_backbone  # noqa: E402
from vitdino_core.eval_protocol import evaluate_features  # noqa: E402
from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

# imagenette_cpu's recipe (the shipped teacher's), at a GPU's batch: 256 images, the peak lr scaled
# linearly (2e-3 x 256/256), crops made on the device, bf16 autocast
GPU = dict(
    batch_size_per_gpu=256,
    lr=2e-3,
    warmup_epochs=10,
    gpu_augment=True,
    precision="bf16",
    compile=False,
    num_workers=4,
    threads=2,
    log_every=10,
    save_every_steps=0,
    saveckp_freq=0,
    device="cuda",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training budget (wall clock)")
    p.add_argument("--out", type=Path, required=True, help="folder for the run and the export")
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--max-eval", type=int, default=None, help="score on this many images only")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE on top of the recipe")
    args = p.parse_args(argv)
    started = time.perf_counter()
    sets = [f"{k}={v}" for k, v in GPU.items()] + [f"output_dir={args.out}"] + args.set
    probe = DINOTrainer(
        load_config(
            "imagenette_cpu",
            sets + ["run_name=probe", f"max_steps={args.probe_steps}", "epochs=100"],
        ),
        quiet=True,
    )
    stamps = []
    probe.fit(callback=lambda rec: stamps.append((rec["step"], time.perf_counter())))
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    per_step = (t1 - t0) / (s1 - s0)
    left = args.minutes * 60 - (time.perf_counter() - started)
    epochs = max(1, int(left / (per_step * 1.15)) // probe.steps_per_epoch)
    warmup = min(GPU["warmup_epochs"], max(1, epochs // 10))
    del probe
    cfg = load_config(
        "imagenette_cpu",
        sets + ["run_name=course_gpu", f"epochs={epochs}", f"warmup_epochs={warmup}"],
    )
    trainer = DINOTrainer(cfg, quiet=True)
    t_train = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t_train
    out = export_backbone(
        trainer.ckpt_path,
        args.out / "dino_imagenette96_gpu.pth",
        meta=dict(
            epochs=epochs,
            steps=trainer.step,
            train_s=round(train_s, 1),
            device=torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu",
            probe_s_per_step=round(per_step, 4),
        ),
    )
    device = trainer.device
    model, _ = build_backbone_from_checkpoint(out, device=device)
    scores = evaluate_features(
        model.float(),
        image_size=cfg.global_crops_size,
        device=device,
        max_train=args.max_eval,
        max_val=args.max_eval,
    )
    result = dict(
        epochs=epochs,
        warmup_epochs=warmup,
        steps=trainer.step,
        train_s=round(train_s, 1),
        probe_s_per_step=round(per_step, 4),
        scores=scores,
        config=cfg.to_dict(),
    )
    (args.out / "course_gpu_result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
