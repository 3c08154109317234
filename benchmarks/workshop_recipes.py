"""Does the workshop's live run learn? DINO recipes under a fixed CPU budget, 3 seeds each; prints
one JSON.

A budget is minutes of the real training loop (`DINOTrainer.fit`, one loader worker, 2 threads) on
a 2-core CPU. `--measure` times each recipe's loop on this machine and writes its seconds per step;
the runs then train for the number of steps that fit the budget, on this CPU or, with `--speed` and
`--device cuda`, on a GPU: the same recipe, seed and step count, so the same run up to
floating-point order, in a fraction of the time. For each recipe and seed: keep a copy of the
teacher at random init, train, and score both teachers with the weighted kNN (k=20, T=0.07) on the
whole train and val splits at the global crop size. A recipe counts as learning when every seed's
trained teacher beats its own random init by `--margin` points.

    # on a quiet 2-core CPU: seconds per step of each recipe
    python benchmarks/workshop_recipes.py --measure --speed results/speed.json
    # 3 seeds of 10 minutes each, on this CPU or (the same steps) on a GPU
    python benchmarks/workshop_recipes.py --speed results/speed.json --recipes lr1e-4_tt0.04 \\
        --seeds 0 1 2 --budget-min 10 --probe --csv results/recipes.csv [--device cuda]
    # kNN against minutes, one run scored at 0, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60 minutes
    python benchmarks/workshop_recipes.py --speed results/speed.json --curve --recipes lr1e-3 \\
        --seeds 0 --budget-min 60 --csv results/curve.csv [--device cuda]

Compare budgets only with speeds measured on one machine, quiet (`uptime` near 0).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitdino_core.eval_protocol import evaluate_features  # noqa: E402
from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import DINOTrainer  # noqa: E402

# the crops of notebook 06's run: 48 px global and 24 px local (4 x 4 and 2 x 2 patches of 12 px)
SMALL = dict(global_crops_size=48, local_crops_size=24, warmup_epochs=1)
# a peak lr of 1e-3 at batch 32 (DINO's linear rule would give 6e-5), no stochastic depth, 2048
# images: epochs of 64 steps, so that the warm-up and the cosine play out within the budget
FAST_LR = SMALL | dict(
    max_images=2048,
    batch_size_per_gpu=32,
    lr=8e-3,
    drop_path_rate=0.0,
    teacher_temp=0.02,
    warmup_teacher_temp=0.02,
)
# DINOv2's additions (notebook 10): iBOT masked patches, KoLeo, Sinkhorn-Knopp centering, registers
DINOV2 = dict(ibot=True, koleo_loss_weight=0.1, centering="sinkhorn_knopp", num_register_tokens=4)
# name -> overrides on top of workshop_tiny (notebook06: the run notebook 06's section 7 made before
# this study; lr1e-4_tt0.04: the one it makes now)
RECIPES: dict[str, dict] = {
    "notebook06": SMALL
    | dict(max_images=1024, batch_size_per_gpu=16, teacher_temp=0.02, warmup_teacher_temp=0.02),
    "lr1e-3": FAST_LR,
    "lr2e-3": FAST_LR | dict(lr=16e-3),
    "lr1e-3_m0.97": FAST_LR | dict(momentum_teacher=0.97),
    "lr1e-3_k256": FAST_LR | dict(out_dim=256),
    "lr1e-3_tt0.04": FAST_LR | dict(teacher_temp=0.04, warmup_teacher_temp=0.04),
    "lr3e-4_tt0.04": FAST_LR | dict(lr=2.4e-3, teacher_temp=0.04, warmup_teacher_temp=0.04),
    "lr1e-4_tt0.04": FAST_LR | dict(lr=8e-4, teacher_temp=0.04, warmup_teacher_temp=0.04),
    "lr1e-3_b64": FAST_LR | dict(batch_size_per_gpu=64, lr=4e-3, max_images=4096),
    "lr1e-3_patch8_32px": FAST_LR | dict(patch_size=8, global_crops_size=32, local_crops_size=16),
    # DINOv2's additions (notebook 10) on the same run: iBOT masked patches, KoLeo, Sinkhorn-Knopp
    # centering, 4 registers
    "lr1e-3_dinov2": FAST_LR | DINOV2,
    "lr1e-4_tt0.04_dinov2": FAST_LR
    | dict(lr=8e-4, teacher_temp=0.04, warmup_teacher_temp=0.04)
    | DINOV2,
}
CURVE_MARKS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)  # minutes
FIELDS = [
    "recipe",
    "seed",
    "minutes",
    "steps",
    "epochs",
    "knn_random_init",
    "knn_trained",
    "gain",
    "probe_random_init",
    "probe_trained",
    "images",
    "s_per_step_cpu",
    "device",
    "train_wall_s",
    "eval_image_size",
    "num_train",
    "num_val",
    "overrides",
]


def config_for(recipe: str, seed: int, epochs: int, out: str, **extra):
    values = (
        RECIPES[recipe]
        | dict(
            seed=seed,
            epochs=epochs,
            output_dir=out,
            run_name=f"{recipe}_s{seed}",
            num_workers=1,
            threads=THREADS,
            log_every=1,
            save_every_steps=0,
            saveckp_freq=0,
            precision="fp32",
        )
        | extra
    )
    return load_config("workshop_tiny", [f"{k}={v}" for k, v in values.items()])


def measure(recipe: str, out: str, steps: int = 40) -> float:
    """Seconds per step of the real loop (loader worker included) on this machine, after 5
    warm-up steps."""
    trainer = DINOTrainer(config_for(recipe, 0, 100, out, max_steps=steps), quiet=True)
    stamps = []
    trainer.fit(callback=lambda rec: stamps.append((rec["step"], time.perf_counter())))
    (s0, t0), (s1, t1) = stamps[4], stamps[-1]
    return (t1 - t0) / (s1 - s0)


MAX_EVAL: int | None = None  # --max-eval: a smoke test's few images (None: the whole splits)
PROBE = False  # --probe: the linear probe too
THREADS = 2  # --threads: 1 runs two recipes side by side on 2 cores (same steps, same results)


def knn(backbone: torch.nn.Module, size: int, device: str) -> float:
    res = evaluate_features(
        backbone.eval(),
        image_size=size,
        probe=PROBE,
        batch_size=256,
        device=device,
        max_train=MAX_EVAL,
        max_val=MAX_EVAL,
    )
    return res["knn_top1"], res


def run_recipe(recipe, seed, budget_min, s_per_step, out, device, marks=(), gpu_augment=False):
    """Train one seed of one recipe for the steps that fit `budget_min` minutes of the CPU loop
    (10% kept for start-up and epoch ends); score the teacher at the end or at each mark. On a GPU
    the crops are made on the device (`gpu_augment`: the CPU recipe, batched): a few CPU cores
    cannot crop for many runs at once."""
    extra = dict(device=device)
    if gpu_augment:
        extra |= dict(gpu_augment=True, num_workers=2, threads=1)
    probe = DINOTrainer(config_for(recipe, seed, 1, out, **extra), quiet=True)
    n = probe.steps_per_epoch
    budget_steps = int(budget_min * 60 / (s_per_step * 1.1))
    epochs = max(1, budget_steps // n)
    trainer = DINOTrainer(config_for(recipe, seed, epochs, out, **extra), quiet=True)
    before = copy.deepcopy(trainer.teacher.backbone)
    step_marks = sorted({int(m * 60 / (s_per_step * 1.1)) for m in marks if m < budget_min})
    kept = []

    def on_record(rec: dict) -> None:
        while step_marks and rec["step"] >= step_marks[0]:
            step_marks.pop(0)
            kept.append((rec["step"], copy.deepcopy(trainer.teacher.backbone.state_dict())))

    wall0 = time.perf_counter()
    trainer.fit(callback=on_record)
    wall = time.perf_counter() - wall0
    kept.append((trainer.step, trainer.teacher.backbone.state_dict()))
    size = trainer.cfg.global_crops_size
    base, res = knn(before, size, device)
    probe_base = res["linear_top1"]
    common = dict(
        recipe=recipe,
        seed=seed,
        epochs=epochs,
        images=len(trainer.dataset),
        s_per_step_cpu=round(s_per_step, 4),
        device=device,
        train_wall_s=round(wall, 1),
        eval_image_size=size,
        num_train=res["num_train"],
        num_val=res["num_val"],
        overrides=json.dumps(RECIPES[recipe], sort_keys=True),
        knn_random_init=base,
        probe_random_init=probe_base,
    )
    rows = (
        [common | dict(minutes=0.0, steps=0, knn_trained=base, gain=0.0, probe_trained=probe_base)]
        if marks
        else []
    )
    for step, state in kept:
        model = copy.deepcopy(before)
        model.load_state_dict(state)
        score, res = knn(model, size, device)
        minutes = round(step * s_per_step * 1.1 / 60, 2)
        rows.append(
            common
            | dict(minutes=minutes, steps=step, knn_trained=score, gain=round(score - base, 2))
            | dict(probe_trained=res["linear_top1"])
        )
    return rows


def append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if fresh:
            w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget-min", type=float, default=10.0, help="minutes of the CPU loop per run")
    p.add_argument("--margin", type=float, default=3.0, help="kNN points over random init")
    p.add_argument("--measure", action="store_true", help="time each recipe's loop here")
    p.add_argument("--speed", type=Path, required=True, help="JSON of seconds per step (--measure)")
    p.add_argument("--curve", action="store_true", help="score each run at several minutes")
    p.add_argument("--device", default="cpu", help="where to run the steps (cpu | cuda)")
    p.add_argument("--gpu-augment", action="store_true", help="crops on the device (GPU runs)")
    p.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV file")
    p.add_argument("--probe", action="store_true", help="the linear probe too (slower)")
    p.add_argument("--max-eval", type=int, default=None, help="score on this many images only")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (1: two at once)")
    p.add_argument("--keep-runs", type=Path, default=None, help="keep each run's folder here")
    args = p.parse_args(argv)
    global MAX_EVAL, PROBE, THREADS
    MAX_EVAL, PROBE, THREADS = args.max_eval, args.probe, args.threads
    if args.device.startswith("cuda"):  # fp32 as on the CPU: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    keep = args.keep_runs
    with tempfile.TemporaryDirectory() if keep is None else contextlib.nullcontext(keep) as out:
        if args.measure:
            speed = {r: round(measure(r, out), 4) for r in args.recipes}
            speed["_machine"] = dict(
                cpu=platform.processor() or platform.machine(),
                cores=os.cpu_count(),
                load_average=os.getloadavg(),
                torch=torch.__version__,
                threads=2,
                workers=1,
            )
            args.speed.parent.mkdir(parents=True, exist_ok=True)
            args.speed.write_text(json.dumps(speed, indent=1) + "\n")
            print(json.dumps(speed))
            return 0
        speed = json.loads(args.speed.read_text())
        marks = CURVE_MARKS if args.curve else ()
        rows = []
        for recipe in args.recipes:
            for seed in args.seeds:
                new = run_recipe(
                    recipe,
                    seed,
                    args.budget_min,
                    speed[recipe],
                    out,
                    args.device,
                    marks,
                    args.gpu_augment,
                )
                rows += new
                if args.csv:
                    append_csv(args.csv, new)
                print(json.dumps(new[-1]), file=sys.stderr, flush=True)
    verdict = {}
    for recipe in args.recipes:
        gains = [r["gain"] for r in rows if r["recipe"] == recipe and r["steps"]]
        verdict[recipe] = dict(
            gains=gains,
            learns=bool(gains) and min(gains) >= args.margin,
            mean_gain=round(sum(gains) / len(gains), 2) if gains else math.nan,
        )
    print(json.dumps(dict(budget_min=args.budget_min, margin=args.margin, recipes=verdict)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
