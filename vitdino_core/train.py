"""The training command line: a config, a few overrides, a run folder.

    python -m vitdino_core.train --config workshop_tiny [--set key=value ...] [--resume]
    torchrun --nproc_per_node 4 -m vitdino_core.train --config imagenette_small

Results land in <output_dir>/<run_name>/ (training/run_state.py): checkpoint.pth, metrics.jsonl,
config.yaml. Progress goes to stderr; the last line on stdout is a JSON summary of the run. A
mistake in what was asked is one line and exit code 2 (`--debug` or VITDINO_DEBUG=1 shows its
traceback). The training itself is `DINOTrainer` (training/trainer.py), the same one the notebooks
use.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from .cli import EXIT_INTERRUPTED, run_cli
from .training.config import load_config
from .training.run_state import resume_config
from .training.trainer import train


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vitdino_core.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--config",
        required=True,
        help="a YAML file or the name of a shipped config (vitdino_core/configs)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the run in <output_dir>/<run_name>/ from its checkpoint.pth (an error if"
            " there is none)"
        ),
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also VITDINO_DEBUG=1)"
    )
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume:
            cfg = resume_config(cfg, args.overrides)
        trainer = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        print("stopped; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.env.is_main:
        print(
            json.dumps(
                {
                    "run_dir": str(trainer.run_dir),
                    "checkpoint": str(trainer.ckpt_path),
                    "step": trainer.step,
                    "epoch": trainer.epoch,
                }
            )
        )
    return 0


@record
def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
