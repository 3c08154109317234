"""DINO training: one engine for the notebooks and the command line, on CPU, one GPU or many.

    python -m vitdino_core.train --config workshop_tiny [--set key=value ...] [--resume]
    torchrun --nproc_per_node 4 -m vitdino_core.train --config imagenette_small

Each step: the teacher sees the 2 global crops, the student all crops; the DINO loss compares
every (teacher view, other student view) pair; the student takes an AdamW step; the teacher
moves towards the student by EMA. Results land in <output_dir>/<run_name>/: checkpoint.pth
(written atomically), metrics.jsonl and config.yaml.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data import Subset
from tqdm.auto import tqdm

from .cli import UserError
from .checkpoint import BackgroundWriter, CheckpointError, backbone_state_dict, load_backbone_weights, load_checkpoint
from .config import ConfigError, TrainConfig, load_config, make_config, save_config
from .data import EpochBatchSampler, MultiCropDataset, build_dataset, make_loader
from .dino_loss import DINOHead, DINOLoss
from .ema_training import (cancel_gradients_last_layer, clip_gradients, cosine_scheduler, get_params_groups, make_teacher,
                           update_teacher)
from .multicrop import MultiCropAugmentation, MultiCropWrapper, collate_multicrop
from .multicrop_gpu import GPUMultiCropAugmentation, PaddedImages, Uint8Images, collate_uint8
from .device import DistEnv, resolve_device, resolve_precision, setup_distributed
from .speedups import apply_speedups
from .vision_transformer import build_vit


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or the gradients became NaN/inf; the last good checkpoint was kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dim."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


# ----------------------------------------------------------------------------- the trainer

def build_student(cfg: TrainConfig) -> MultiCropWrapper:
    backbone = build_vit(cfg.arch, cfg.patch_size, img_size=cfg.global_crops_size, drop_path_rate=cfg.drop_path_rate)
    backbone.grad_checkpointing = cfg.grad_checkpointing
    head = DINOHead(backbone.embed_dim, cfg.out_dim, use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)
    return apply_speedups(MultiCropWrapper(backbone, head))  # the step's speed tricks, one place (speedups.py)


def build_train_dataset(cfg: TrainConfig):
    ds = build_dataset(cfg.dataset, "train", data_path=cfg.data_path or None, download=cfg.download,
                       image_size=cfg.global_crops_size, seed=cfg.seed)
    if 0 < cfg.max_images < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: cfg.max_images].tolist()
        ds = Subset(ds, sorted(keep))
    return ds


def _worker_init(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process


class DINOTrainer:
    """Student, EMA teacher, loss, optimiser, schedules and data for one DINO run.

    `fit()` trains to the end (or `max_steps`), checkpointing as it goes; `train_step(crops)` is one
    optimisation step on a batch of crops, usable on its own (notebook 06 does).
    """

    def __init__(self, cfg: TrainConfig, env: DistEnv | None = None, dataset=None, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.env = env or setup_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.env)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # the same initial weights on every rank

        # data: the per-sample seed makes crops independent of workers and exact on resume
        self.dataset = dataset if dataset is not None else build_train_dataset(cfg)
        crop_args = (cfg.global_crops_scale, cfg.local_crops_scale, cfg.local_crops_number, cfg.global_crops_size, cfg.local_crops_size)
        self.gpu_augment, self.aug_generator = None, None
        if cfg.gpu_augment:  # workers only decode to uint8; the crops are made in one batched pass on the device
            self.gpu_augment = GPUMultiCropAugmentation(*crop_args, compile=cfg.compile)
            self.aug_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1 + self.env.rank)
            self.augment = Uint8Images(cfg.gpu_augment_size or None, cfg.gpu_augment_max_size or None)
            collate = partial(collate_uint8, pad_to=cfg.gpu_augment_max_size or None)  # one padded shape: one compiled graph
        else:
            self.augment, collate = MultiCropAugmentation(*crop_args), collate_multicrop
        self.sampler = EpochBatchSampler(len(self.dataset), cfg.batch_size_per_gpu, cfg.seed, self.env.rank, self.env.world_size)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.loader = make_loader(MultiCropDataset(self.dataset, self.augment), self.sampler, cfg.num_workers,
                                  collate, pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init)

        # models: the teacher starts as a copy of the student (after DDP has broadcast rank 0's
        # weights) and never takes a gradient
        self.student = build_student(cfg).to(self.device)
        if cfg.init_weights:  # continue from a backbone trained earlier (a warm restart with a fresh head)
            load_backbone_weights(self.student.backbone, backbone_state_dict(load_checkpoint(cfg.init_weights)))
        self.student_ddp: nn.Module = self.student
        if self.env.distributed:
            self.student_ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.teacher = make_teacher(self.student)
        seed_everything(cfg.seed + 1 + self.env.rank)  # drop path: a different stream on every rank
        if cfg.compile:  # one static graph per crop resolution (the student sees two): with automatic dynamic
            # shapes, torch 2.11's inductor failed an internal assertion on the second resolution on a GPU
            self.student.backbone.compile(dynamic=False, mode=cfg.compile_mode)
            self.teacher.backbone.compile(dynamic=False, mode=cfg.compile_mode)

        self.loss_fn = DINOLoss(cfg.out_dim, cfg.ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                cfg.warmup_teacher_temp_epochs, cfg.epochs, cfg.student_temp, cfg.center_momentum).to(self.device)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # schedules, one value per step (lr scaled linearly with the total batch, as in DINO)
        total_batch = cfg.batch_size_per_gpu * self.env.world_size
        n, E = self.steps_per_epoch, cfg.epochs
        self.lr_schedule = cosine_scheduler(cfg.lr * total_batch / 256.0, cfg.min_lr, E, n, warmup_epochs=cfg.warmup_epochs)
        self.wd_schedule = cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, E, n)
        self.momentum_schedule = cosine_scheduler(cfg.momentum_teacher, 1.0, E, n)

        self.step = 0
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        self.ckpt_path = self.run_dir / "checkpoint.pth"
        self.last_good_step: int | None = None
        self._writer = BackgroundWriter()
        self._stop_signal: int | None = None
        self._reset_meters()

    # ------------------------------------------------------------------ set-up helpers
    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the fused kernel where this PyTorch has one for the device, else the foreach one."""
        groups = get_params_groups(self.student)
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(get_params_groups(self.student), foreach=True)

    def _autocast(self):
        if self.amp_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _reset_meters(self) -> None:
        z = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self._m = {"loss": z(), "teacher_entropy": z(), "batch_entropy": z()}
        self._m_steps, self._m_images, self._m_time = 0, 0, time.perf_counter()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    # ------------------------------------------------------------------ one step
    def train_step(self, crops) -> torch.Tensor:
        """One DINO step on [globals (2B,3,G,G), locals (N*B,3,L,L)] (or, with gpu_augment, on uint8
        images (B,3,H,W) that are cropped here); returns the loss (a tensor, no sync)."""
        it, epoch = self.step, self.epoch
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])
            if i == 0:  # only the regularised group has weight decay
                group["weight_decay"] = float(self.wd_schedule[it])
        if isinstance(crops, (torch.Tensor, PaddedImages)):  # uint8 images: multi-crop on the device
            if self.gpu_augment is None:
                raise ValueError("train_step got a batch of images, not crops; set gpu_augment=true to crop on the device")
            crops = self.gpu_augment(crops.to(self.device, non_blocking=True), generator=self.aug_generator)
        crops = [c.to(self.device, non_blocking=True) for c in crops]

        with self._autocast():
            with torch.no_grad():
                teacher_out = self.teacher(crops[0])  # (2B, K): global views only
            student_out = self.student_ddp(crops)  # (V*B, K): all views
        with torch.no_grad():
            teacher_probs = self.loss_fn.teacher_probs(teacher_out, epoch)  # (2B, K), centred and sharpened
            self._record_teacher_stats(teacher_probs)
        loss = self.loss_fn(student_out, teacher_out, epoch, teacher_probs=teacher_probs)  # one teacher softmax, not two

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad:
            norms = clip_gradients(self.student, self.cfg.clip_grad)
            self._nonfinite |= ~torch.isfinite(norms).all()
        cancel_gradients_last_layer(epoch, self.student, self.cfg.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        update_teacher(self.student, self.teacher, float(self.momentum_schedule[it]))

        self._nonfinite |= ~torch.isfinite(loss.detach())
        self._m["loss"] += loss.detach()
        self._m_steps += 1
        self._m_images += crops[0].shape[0] // 2 * self.env.world_size
        self.step += 1
        return loss.detach()

    def _record_teacher_stats(self, p: torch.Tensor) -> None:
        """p: the teacher's centred and sharpened distribution, (2B, K)."""
        self._m["teacher_entropy"] += entropy(p).mean()  # per-sample entropy: ln K when uniform
        self._m["batch_entropy"] += entropy(p.mean(0))  # entropy of the batch mean: ~0 when one dim wins

    # ------------------------------------------------------------------ logging
    def collect_metrics(self) -> dict:
        """Average the meters since the last call into one record (one host-device sync)."""
        n = max(self._m_steps, 1)
        vals = {k: v.item() / n for k, v in self._m.items()}
        dt = time.perf_counter() - self._m_time
        it = max(self.step - 1, 0)
        lnK = math.log(self.cfg.out_dim)
        rec = {
            "step": self.step, "epoch": self.step / self.steps_per_epoch,
            "loss": vals["loss"], "teacher_entropy": vals["teacher_entropy"], "batch_entropy": vals["batch_entropy"],
            "kl_uniform": lnK - vals["teacher_entropy"], "kl_teacher_student": vals["loss"] - vals["teacher_entropy"],
            "lr": float(self.lr_schedule[it]), "wd": float(self.wd_schedule[it]),
            "momentum": float(self.momentum_schedule[it]), "teacher_temp": self.loss_fn.teacher_temp(it // self.steps_per_epoch),
            "images_per_s": self._m_images / dt if dt > 0 else float("nan"), "time": time.time(),
        }
        self._reset_meters()
        return rec

    def check_finite(self) -> None:
        bad = self._nonfinite.clone()
        if self.env.distributed:
            bad = bad.to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad):
            kept = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_good_step})" if self.last_good_step is not None
                    else "no checkpoint had been written yet")
            raise TrainingDivergedError(
                f"loss or gradients became NaN/inf by step {self.step} (epoch {self.epoch}); {kept}, and nothing was "
                "written after the fault. Try: a lower lr (--set lr=...), fp32 (--set precision=fp32), "
                "a smaller teacher_temp or a longer warmup_teacher_temp_epochs, or a smaller clip_grad."
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
               "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.aug_generator is not None:
            rng["augment"] = self.aug_generator.get_state()
        return {
            "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "dino_loss": self.loss_fn.state_dict(), "step": self.step, "epoch": self.epoch,
            "config": self.cfg.to_dict(), "rng": rng, "world_size": self.env.world_size,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        missing = [k for k in ("student", "teacher", "optimizer", "scaler", "dino_loss", "step") if k not in ckpt]
        if missing:
            raise CheckpointError(f"not a training checkpoint of this project: it lacks {missing}")
        try:
            self.student.load_state_dict(ckpt["student"])
            self.teacher.load_state_dict(ckpt["teacher"])
            self.loss_fn.load_state_dict(ckpt["dino_loss"])
        except RuntimeError as e:
            saved = ckpt.get("config", {})
            was = ", ".join(f"{k}={saved[k]}" for k in ("arch", "patch_size", "out_dim") if k in saved)
            raise CheckpointError(f"the checkpoint does not fit this run's model (it was trained with {was or 'another config'}):\n{e}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        rng = ckpt.get("rng", {})
        if self.env.rank > 0:  # only rank 0's RNG is saved; other ranks start a fresh stream
            seed_everything(self.cfg.seed + 1 + self.env.rank + 7919 * self.step)
        elif "torch" in rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
            random.setstate((3, tuple(rng["python"]), None))
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.aug_generator is not None:
            if self.env.rank == 0 and "augment" in rng:
                self.aug_generator.set_state(rng["augment"].cpu())
            else:
                self.aug_generator.manual_seed(self.cfg.seed + 1 + self.env.rank + 7919 * self.step)
        self.last_good_step = self.step

    def save(self, block: bool = True) -> None:
        """Checkpoint (rank 0 only), never after a NaN: check first, then write atomically.

        block=False returns once the state is copied to CPU memory and writes the file on a thread
        (`fit` does this at epoch ends: the write no longer stalls the GPU); `wait_for_save` joins it."""
        self.check_finite()
        if self.env.is_main:
            paths = [self.ckpt_path]
            freq = self.cfg.saveckp_freq
            if freq and self.step % self.steps_per_epoch == 0 and self.epoch % freq == 0:
                paths.append(self.run_dir / f"checkpoint{self.epoch:04d}.pth")
            self._writer.write(self.state_dict(), paths, block)
        self.last_good_step = self.step

    def wait_for_save(self) -> None:
        """Block until the last checkpoint is on disk (raises the writer's error, if any)."""
        self._writer.wait()

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load the run's checkpoint if there is one; returns whether training resumes."""
        path = Path(path) if path else self.ckpt_path
        if not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        self._trim_metrics()
        return True

    def _trim_metrics(self) -> None:
        """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
        f = self.run_dir / "metrics.jsonl"
        if self.env.is_main and f.is_file():
            keep = [ln for ln in f.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            f.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ the loop
    def _handle_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.env.is_main:
            print(f"\n{signal.Signals(signum).name} received: finishing this step, saving, then stopping "
                  "(press Ctrl-C again to stop at once)", file=sys.stderr)

    def _should_stop(self) -> bool:
        flag = self._stop_signal is not None
        if self.env.distributed:
            t = torch.tensor(int(flag), device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t)
        return flag

    def _epoch_bar(self) -> tqdm:
        """A progress bar over the current epoch's steps, starting where this epoch stands."""
        start = self.step % self.steps_per_epoch
        end = min(self.steps_per_epoch, start + self.total_steps - self.step)
        return tqdm(total=end, initial=start, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                    disable=not self.env.is_main or self.quiet, leave=False, dynamic_ncols=True)

    def fit(self, callback: Callable[[dict], None] | None = None) -> list[dict]:
        """Train from `self.step` to the end; returns the metrics records of this call."""
        cfg, records = self.cfg, []
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        in_main_thread = __import__("threading").current_thread() is __import__("threading").main_thread()
        old = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        collapse_run, warned = 0, False
        self.student.train()
        self.teacher.train()
        self._reset_meters()
        try:
            # one pass over the loader for all remaining steps: its workers build the next epoch's first
            # batches while this epoch ends, instead of starting from scratch at every epoch
            self.sampler.set_steps(self.step, self.total_steps)
            bar = None
            for crops, _ in self.loader:
                if bar is None:  # the first step of this call, or of a new epoch
                    bar = self._epoch_bar()
                self.train_step(crops)
                bar.update(1)
                epoch_end = self.step % self.steps_per_epoch == 0
                last = self.step >= self.total_steps or epoch_end
                if self.step % cfg.log_every == 0 or last:
                    if self.device.type != "cpu":
                        self.check_finite()
                    rec = self.collect_metrics()
                    collapse = collapse_state(rec)
                    collapse_run = collapse_run + 1 if collapse else 0
                    rec["collapse"] = collapse if collapse_run >= cfg.collapse_patience else ""
                    if rec["collapse"] and not warned and self.env.is_main:
                        warnings.warn(f"step {self.step}: the teacher looks collapsed ({collapse}) for {collapse_run} "
                                      "log records; see README 'What can go wrong'", stacklevel=2)
                        warned = True
                    records.append(rec)
                    if self.env.is_main:
                        with open(self.run_dir / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rec['images_per_s']:.1f}",
                                        **({"warn": f"collapse:{rec['collapse']}"} if rec["collapse"] else {}))
                        if callback:
                            callback(rec)
                if self.device.type == "cpu":
                    self.check_finite()
                periodic = cfg.save_every_steps and self.step % cfg.save_every_steps == 0
                stop = self._should_stop() if (self.device.type == "cpu" or self.step % cfg.log_every == 0) else False
                if periodic or stop or last:
                    # on a GPU the epoch-end file is written on a thread while the GPU trains on; a CPU has
                    # no cores to spare for it, and there the write is short next to a step anyway
                    self.save(block=stop or self.step >= self.total_steps or self.device.type == "cpu")
                if stop or epoch_end:
                    bar.close()
                    bar = None
                if stop:
                    raise KeyboardInterrupt
            if bar is not None:
                bar.close()
        finally:
            self.wait_for_save()  # the file of the last epoch end is on disk before fit returns or raises
            for s, h in old.items():
                signal.signal(s, h)
        return records


def collapse_state(rec: dict) -> str:
    """'uniform' when the teacher's output is ~uniform, 'one-dim' when one dimension wins everywhere."""
    if rec["kl_uniform"] < 0.05:
        return "uniform"
    if rec["batch_entropy"] < 0.5:
        return "one-dim"
    return ""


# ----------------------------------------------------------------------------- command line

def train(cfg: TrainConfig, resume: bool = False, callback: Callable[[dict], None] | None = None, quiet: bool = False) -> DINOTrainer:
    """Build a trainer, optionally resume it from its run folder, and train it; returns the trainer."""
    trainer = DINOTrainer(cfg, quiet=quiet)
    if resume and trainer.resume() and trainer.env.is_main and not quiet:
        print(f"resumed {trainer.ckpt_path} at step {trainer.step} (epoch {trainer.epoch})")
    trainer.fit(callback)
    return trainer


def config_for_resume(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Resuming uses the run's own config (from its checkpoint) with only the command line's --set on top."""
    path = Path(cfg.output_dir) / cfg.run_name / "checkpoint.pth"
    if not path.is_file():
        return cfg
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no config; cannot resume it")
    values = dict(saved)
    from .config import parse_override

    values.update(parse_override(o) for o in overrides)
    return make_config(values)


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitdino_core.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a YAML file or the name of a shipped config (vitdino_core/configs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue <output_dir>/<run_name>/checkpoint.pth if it exists")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume:
            cfg = config_for_resume(cfg, args.overrides)
        trainer = train(cfg, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, TrainingDivergedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped; continue with the same command and --resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.env.is_main:
        print(json.dumps({"run_dir": str(trainer.run_dir), "step": trainer.step, "epoch": trainer.epoch}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
