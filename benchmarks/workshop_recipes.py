"""Does the workshop's live run learn? DINO recipes under a fixed CPU budget, 3 seeds each; prints
one JSON.

For each recipe and seed: build the trainer (`workshop_tiny` plus the recipe's overrides), time a
few steps to fit the number of epochs into the budget, keep a copy of the teacher at random init,
train, and score both teachers with the weighted kNN (k=20, T=0.07) on the whole train and val
splits at the global crop size. A recipe counts as learning when every seed's trained teacher beats
its own random init by `--margin` points.

    python benchmarks/workshop_recipes.py --recipes notebook06 --seeds 0 1 2 --budget-min 10 \\
        --csv benchmarks/results/<machine>_workshop-recipes/recipes.csv
    # kNN against minutes, one run
    python benchmarks/workshop_recipes.py --curve --recipes notebook06 --budget-min 60 \\
        --csv benchmarks/results/<machine>_workshop-recipes/curve.csv

Budgets are wall-clock minutes on the machine at hand: run it on a quiet machine (`uptime` near 0)
and compare recipes only within one machine. Rows are appended to the CSV as they finish.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitdino_core.eval_protocol import evaluate_features  # noqa: E402
from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

# name -> overrides on top of workshop_tiny (notebook06 is the run notebook 06 makes in its section
# 7)
RECIPES: dict[str, dict] = {
    "notebook06": dict(
        max_images=1024,
        batch_size_per_gpu=16,
        warmup_epochs=1,
        global_crops_size=48,
        local_crops_size=24,
        teacher_temp=0.02,
        warmup_teacher_temp=0.02,
    ),
    "nb06_lr_x8": dict(
        max_images=1024,
        batch_size_per_gpu=16,
        warmup_epochs=1,
        global_crops_size=48,
        local_crops_size=24,
        teacher_temp=0.02,
        warmup_teacher_temp=0.02,
        lr=4e-3,
    ),
    "nb06_all_images": dict(
        max_images=0,
        batch_size_per_gpu=32,
        warmup_epochs=1,
        global_crops_size=48,
        local_crops_size=24,
        teacher_temp=0.02,
        warmup_teacher_temp=0.02,
        lr=2e-3,
    ),
    "small_patch": dict(
        max_images=0,
        batch_size_per_gpu=32,
        patch_size=8,
        global_crops_size=48,
        local_crops_size=24,
        warmup_epochs=1,
        lr=2e-3,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        momentum_teacher=0.98,
        out_dim=2048,
    ),
    "cpu_recipe_48": dict(
        max_images=0,
        batch_size_per_gpu=64,
        global_crops_size=48,
        local_crops_size=24,
        local_crops_number=6,
        warmup_epochs=1,
        lr=2e-3,
        teacher_temp=0.02,
        warmup_teacher_temp=0.02,
        momentum_teacher=0.99,
        drop_path_rate=0.0,
        weight_decay_end=0.1,
    ),
}
FIELDS = [
    "recipe",
    "seed",
    "knn_random_init",
    "knn_trained",
    "gain",
    "epochs",
    "steps",
    "images",
    "train_wall_s",
    "train_cpu_s",
    "eval_image_size",
    "num_train",
    "num_val",
    "overrides",
]


def config_for(recipe: str, seed: int, epochs: int, out: str):
    values = RECIPES[recipe] | dict(
        seed=seed,
        epochs=epochs,
        output_dir=out,
        run_name=f"{recipe}_s{seed}",
        num_workers=1,
        threads=2,
        log_every=10,
        save_every_steps=0,
        saveckp_freq=0,
    )
    return load_config("workshop_tiny", [f"{k}={v}" for k, v in values.items()])


def seconds_per_step(recipe: str, out: str) -> float:
    """The median wall time of a few steps of this recipe (after one warm-up), on this machine."""
    trainer = DINOTrainer(config_for(recipe, 0, 1, out), quiet=True)
    times, batches = [], iter(trainer.loader)
    for i in range(4):
        batch, labels = next(batches)
        start = time.perf_counter()
        trainer.train_step(*trainer.crops_of(batch, len(labels)))
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def knn(backbone: torch.nn.Module, size: int) -> dict:
    return evaluate_features(backbone.eval(), image_size=size, probe=False, batch_size=256)


def run_recipe(
    recipe: str, seed: int, budget_s: float, out: str, snapshots: list[float] | None = None
):
    """Train one seed of one recipe for about `budget_s` seconds; returns the CSV row(s)."""
    per_step = seconds_per_step(recipe, out)
    probe_cfg = config_for(recipe, seed, 1, out)
    trainer = DINOTrainer(probe_cfg, quiet=True)
    epochs = max(
        1, int(budget_s / (per_step * 1.1) // trainer.steps_per_epoch)
    )  # loading and logging: +10%
    cfg = config_for(recipe, seed, epochs, out)
    cfg.run_name += f"_e{epochs}"
    trainer = DINOTrainer(cfg, quiet=True)
    before = copy.deepcopy(trainer.teacher.backbone)
    kept, started = [], time.perf_counter()  # (minutes, teacher state) for the curve
    marks = sorted(snapshots or [])

    def on_record(rec: dict) -> None:
        minutes = (time.perf_counter() - started) / 60
        while marks and minutes >= marks[0]:
            kept.append(
                (marks.pop(0), rec["step"], copy.deepcopy(trainer.teacher.backbone.state_dict()))
            )

    cpu0, wall0 = time.process_time(), time.perf_counter()
    trainer.fit(callback=on_record if snapshots else None)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    size = cfg.global_crops_size
    base = knn(before, size)
    common = dict(
        recipe=recipe,
        seed=seed,
        epochs=epochs,
        images=len(trainer.dataset),
        train_wall_s=round(wall, 1),
        train_cpu_s=round(cpu, 1),
        eval_image_size=size,
        num_train=base["num_train"],
        num_val=base["num_val"],
        overrides=json.dumps(RECIPES[recipe], sort_keys=True),
    )
    if not snapshots:
        after = knn(trainer.teacher.backbone, size)
        return [
            common
            | dict(
                knn_random_init=base["knn_top1"],
                knn_trained=after["knn_top1"],
                gain=round(after["knn_top1"] - base["knn_top1"], 2),
                steps=trainer.step,
            )
        ]
    rows = [
        common
        | dict(
            knn_random_init=base["knn_top1"],
            knn_trained=base["knn_top1"],
            gain=0.0,
            steps=0,
            train_wall_s=0.0,
        )
    ]
    for minutes, step, state in kept + [
        (wall / 60, trainer.step, trainer.teacher.backbone.state_dict())
    ]:
        model = copy.deepcopy(before)
        model.load_state_dict(state)
        res = knn(model, size)
        rows.append(
            common
            | dict(
                knn_random_init=base["knn_top1"],
                knn_trained=res["knn_top1"],
                gain=round(res["knn_top1"] - base["knn_top1"], 2),
                steps=step,
                train_wall_s=round(minutes * 60, 1),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["notebook06"], choices=sorted(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--budget-min", type=float, default=10.0, help="training minutes per run (wall clock)"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=3.0,
        help="kNN points over random init that count as learning",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="one run per recipe and seed, scored at several minutes",
    )
    p.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV file")
    args = p.parse_args(argv)
    marks = None
    if args.curve:
        marks = [
            m for m in (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120) if m < args.budget_min
        ]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for recipe in args.recipes:
            for seed in args.seeds:
                new = run_recipe(recipe, seed, args.budget_min * 60, out, marks)
                rows += new
                if args.csv:
                    args.csv.parent.mkdir(parents=True, exist_ok=True)
                    fresh = not args.csv.exists()
                    with open(args.csv, "a", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=FIELDS)
                        if fresh:
                            w.writeheader()
                        w.writerows(new)
                print(json.dumps(new[-1]), file=sys.stderr)
    verdict = {}
    for recipe in args.recipes:
        gains = [r["gain"] for r in rows if r["recipe"] == recipe and r["steps"]]
        verdict[recipe] = dict(
            gains=gains,
            learns=bool(gains) and min(gains) >= args.margin,
            mean_gain=round(sum(gains) / len(gains), 2) if gains else math.nan,
        )
    print(
        json.dumps(
            dict(
                budget_min=args.budget_min,
                margin=args.margin,
                cpu=os.cpu_count(),
                load_average=os.getloadavg(),
                recipes=verdict,
                rows=rows,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
