"""What an epoch end costs the training loop: the wall time of each epoch's first step against the
others.

    # workshop_tiny, 640 images, batch 32, 4 epochs, 2 workers
    python benchmarks/epoch_boundary.py
    python benchmarks/epoch_boundary.py --set num_workers=4 --set device=cuda \\
        --config imagenette_small

A short run of the real loop (`vitdino_core.training.trainer.train`) with a metrics record after
every step; the time between consecutive records is one step's wall time. The step after an epoch
end also carries what happens there: the epoch-end checkpoint and, if the loader had to start its
workers' iteration again, the wait for a batch built from scratch. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitdino_core.training.config import load_config  # noqa: E402
from vitdino_core.training.trainer import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="workshop_tiny")
    p.add_argument(
        "--images", type=int, default=640, help="max_images: a small dataset gives many epoch ends"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other config override"
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = tempfile.mkdtemp(prefix="epoch_boundary_")
    overrides = [
        f"max_images={args.images}",
        f"batch_size_per_gpu={args.batch}",
        f"epochs={args.epochs}",
        "log_every=1",
        "save_every_steps=0",
        "num_workers=2",
        "warmup_epochs=0",
        "warmup_teacher_temp_epochs=0",  # a few epochs fit any config
        f"output_dir={out}",
        "run_name=epoch_boundary",
        *args.set,
    ]
    trainer = train(load_config(args.config, overrides), quiet=True)
    times = [
        json.loads(line)["time"] for line in open(Path(out) / "epoch_boundary" / "metrics.jsonl")
    ]
    shutil.rmtree(out, ignore_errors=True)
    n = trainer.steps_per_epoch
    step_s = {
        i + 2: b - a for i, (a, b) in enumerate(zip(times, times[1:]))
    }  # step -> its wall seconds (step 1 has none)
    first = [t for s, t in step_s.items() if s % n == 1]  # the first step of epochs 2, 3, ...
    rest = [
        t for s, t in step_s.items() if s % n not in (0, 1)
    ]  # neither an epoch's first nor its last step
    result = {
        "benchmark": "epoch_boundary",
        "config": args.config,
        "overrides": overrides,
        "steps_per_epoch": n,
        "first_step_of_epoch_s": first,
        "other_steps_median_s": statistics.median(rest),
        "epoch_end_overhead_s_median": statistics.median(first) - statistics.median(rest),
        "device": str(trainer.device),
        "num_workers": trainer.cfg.num_workers,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
