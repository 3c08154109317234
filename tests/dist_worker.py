"""Run by tests under torchrun: train a few steps, save this rank's weights, optionally fail on
purpose.

torchrun --nproc_per_node 2 tests/dist_worker.py OUT_DIR [--fail-rank R] -- key=value ...
"""

import argparse
import os
import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from vitdino_core.training.config import load_config
from vitdino_core.training.trainer import DINOTrainer


@record
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = load_config("workshop_tiny", args.overrides)
    trainer = DINOTrainer(cfg, quiet=True)
    if (
        trainer.env.rank == args.fail_rank
    ):  # inside fit, after one step: every collective before it is matched
        step = trainer.train_step

        def step_then_fail(*crops):
            step(*crops)
            raise RuntimeError(f"rank {trainer.env.rank} fails on purpose")

        trainer.train_step = step_then_fail
    trainer.fit()
    state = {
        "student": trainer.student.state_dict(),
        "teacher": trainer.teacher.state_dict(),
        "center": trainer.loss_fn.center,
        "step": trainer.step,
    }
    torch.save(state, os.path.join(args.out, f"rank{trainer.env.rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
