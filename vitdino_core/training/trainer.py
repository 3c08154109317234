"""DINO training: one step and the loop around it, for the notebooks and the command line alike.

Each step: the teacher sees the 2 global crops, the student every crop; the DINO loss compares
every (teacher view, other student view) pair; the student takes an AdamW step; the teacher moves
towards the student by EMA. `fit()` runs the steps over the data and keeps the run's folder
(run_state.py): metrics, checkpoints, resuming.

DINOv2's additions (dinov2.py), each behind its config key and off by default, are branches of
`train_step`: Sinkhorn-Knopp targets in place of the centre (`centering: sinkhorn_knopp`), the KoLeo
term on the student's global CLS features (`koleo_loss_weight`), and iBOT's masked patch loss
(`ibot`); registers are the backbone's (`num_register_tokens`).
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..checkpoint import (
    BackgroundWriter,
    CheckpointError,
    backbone_state_dict,
    load_backbone_weights,
    load_checkpoint,
    nonfinite_tensors,
    refuse_nonfinite_weights,
)
from ..cli import UserError
from ..data import EpochBatchSampler, MultiCropDataset, build_dataset, make_loader
from ..dino_loss import DINOHead, DINOLoss
from ..dinov2 import (
    KoLeoLoss,
    MaskedMultiCropWrapper,
    MaskingGenerator,
    collate_masks,
    iBOTPatchLoss,
    sinkhorn_knopp_teacher,
)
from ..ema_training import (
    cancel_gradients_last_layer,
    clip_gradients,
    cosine_scheduler,
    get_params_groups,
    make_teacher,
    update_teacher,
)
from ..multicrop import MultiCropAugmentation, MultiCropWrapper, collate_multicrop
from ..vision_transformer import build_vit
from .config import ConfigError, TrainConfig
from .device import DistEnv, resolve_device, resolve_precision, setup_distributed, slow_precision
from .multicrop_gpu import GPUMultiCropAugmentation, PaddedImages, Uint8Images, collate_uint8
from .run_state import RunFolder, StopSignals


class TrainingDivergedError(UserError, RuntimeError):
    """The loss, the gradients or the weights became NaN/inf; nothing was written
    after the fault."""


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dim."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def collapse_state(rec: dict) -> str:
    """'uniform' when the teacher's output is ~uniform, 'one-dim' when one
    dimension wins everywhere."""
    if rec["kl_uniform"] < 0.05:
        return "uniform"
    if rec["batch_entropy"] < 0.5:
        return "one-dim"
    return ""


def split_crops(
    crops: list[torch.Tensor], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of crops stacked view-major and grouped by size -> (global crops (2B, 3, G, G), local
    crops (N*B, 3, L, L) or None). When global and local crops have one size they arrive as one
    tensor: its first 2B rows are the global views."""
    first, rest = crops[0], list(crops[1:])
    if first.shape[0] > 2 * batch_size:  # (V*B, 3, S, S): globals and locals of one size S
        first, rest = (
            first[: 2 * batch_size],
            [first[2 * batch_size :], *rest],
        )  # (2B, 3, S, S), [(N*B, 3, S, S)]
    local = None if not rest else rest[0] if len(rest) == 1 else torch.cat(rest)  # (N*B, 3, L, L)
    return first, local


# ----------------------------------------------------------------------------- building a run


def build_student(cfg: TrainConfig) -> MultiCropWrapper | MaskedMultiCropWrapper:
    backbone = build_vit(
        cfg.arch,
        cfg.patch_size,
        img_size=cfg.global_crops_size,
        drop_path_rate=cfg.drop_path_rate,
        fast=cfg.fast,
        num_register_tokens=cfg.num_register_tokens,
        use_mask_token=cfg.ibot,
    )  # the teacher, a copy, keeps the flag
    backbone.grad_checkpointing = cfg.grad_checkpointing
    head = DINOHead(
        backbone.embed_dim,
        cfg.out_dim,
        use_bn=cfg.use_bn_in_head,
        norm_last_layer=cfg.norm_last_layer,
    )
    if not reads_features(cfg):
        return MultiCropWrapper(backbone, head)
    ibot_head = (
        DINOHead(
            backbone.embed_dim,
            ibot_out_dim(cfg),
            use_bn=cfg.use_bn_in_head,
            norm_last_layer=cfg.norm_last_layer,
        )
        if cfg.ibot and cfg.ibot_separate_head
        else None
    )
    return MaskedMultiCropWrapper(backbone, head, ibot_head)


def reads_features(cfg: TrainConfig) -> bool:
    """Whether a step reads more than the CLS logits (iBOT's patch tokens, KoLeo's CLS features)."""
    return cfg.ibot or cfg.koleo_loss_weight > 0


def ibot_out_dim(cfg: TrainConfig) -> int:
    """The patch head's outputs: the DINO head's when shared (DINOv2's default)."""
    return (cfg.ibot_head_n_prototypes or cfg.out_dim) if cfg.ibot_separate_head else cfg.out_dim


def check_head_fits(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before building anything, an `out_dim` whose head cannot be allocated: its last layer
    (256 x out_dim) lives in the student, the teacher, the gradients and AdamW's two moments, 5
    float32 copies."""
    extra = ibot_out_dim(cfg) if cfg.ibot and cfg.ibot_separate_head else 0  # iBOT's own head
    need = 5 * 4 * (256 + 1) * (cfg.out_dim + extra)  # bytes
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"{device}'s memory"
    else:
        try:
            have, where = (
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "this machine's memory",
            )
        except (AttributeError, ValueError, OSError):
            return
    if need > 0.5 * have:
        raise ConfigError(
            f"out_dim={cfg.out_dim}: the DINO head's last layer alone would take {need / 2**30:.1f}"
            f" GiB (student, teacher, gradients, AdamW moments), more than half of {where}"
            f" ({have / 2**30:.1f} GiB); DINO uses 65536, the small configs far fewer"
        )


def build_train_dataset(cfg: TrainConfig):
    """The config's dataset (its first `max_images` of a fixed shuffle), checked to yield at least
    one image."""
    ds = build_dataset(
        cfg.dataset,
        "train",
        data_path=cfg.data_path or None,
        download=cfg.download,
        image_size=cfg.global_crops_size,
        seed=cfg.seed,
    )
    if 0 < cfg.max_images < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[
            : cfg.max_images
        ].tolist()
        ds = Subset(ds, sorted(keep))
    _load_one(ds)
    return ds


def _load_one(ds) -> None:
    """Load one image here, in this process: a folder with no readable image fails now, with the
    dataset's one-line error (not inside a loader worker, and without a warning for each file tried
    on the way)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds[0]
    for w in caught:  # the image was found: the files skipped to reach it are still reported
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _worker_init(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process


# ----------------------------------------------------------------------------- random streams


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device, aug_generator: torch.Generator | None) -> dict:
    """Every random stream a step draws from (torch, numpy, python, CUDA, the GPU augmentation's),
    as tensors and lists."""
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if aug_generator is not None:
        rng["augment"] = aug_generator.get_state()
    return rng


def set_rng_state(rng: dict, device: torch.device, rank: int, reseed) -> None:
    """Restore rank 0's streams; other ranks (whose streams were not saved) start fresh ones with
    `reseed()`."""
    if rank > 0:
        reseed()
    elif "torch" in rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(
            ("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0)
        )
        random.setstate((3, tuple(rng["python"]), None))
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)


class DINOTrainer:
    """Student, EMA teacher, loss, optimiser, schedules and data for one DINO run.

    `fit()` trains to the end (or `max_steps`), checkpointing as it goes; `train_step(global_crops,
    local_crops)` is one optimisation step, usable on its own (notebook 06 does).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv | None = None,
        dataset=None,
        quiet: bool = False,
        run: RunFolder | None = None,
    ):
        self.cfg, self.quiet = cfg, quiet
        self.env = env or setup_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.env)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if slow_precision(self.amp_dtype, self.device) and self.env.is_main:
            warnings.warn(slow_precision(self.amp_dtype, self.device), stacklevel=2)
        check_head_fits(cfg, self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # the same initial weights on every rank

        # data: the per-sample seed makes crops independent of workers and exact on resume
        self.dataset = dataset if dataset is not None else build_train_dataset(cfg)
        self._check_batch_fits()
        crop_args = (
            cfg.global_crops_scale,
            cfg.local_crops_scale,
            cfg.local_crops_number,
            cfg.global_crops_size,
            cfg.local_crops_size,
        )
        self.gpu_augment, self.aug_generator = None, None
        if (
            cfg.gpu_augment
        ):  # workers only decode to uint8; the crops are made in one batched pass on the device
            self.gpu_augment = GPUMultiCropAugmentation(*crop_args, compile=cfg.compile)
            self.aug_generator = torch.Generator(device=self.device).manual_seed(
                cfg.seed + 1 + self.env.rank
            )
            self.augment = Uint8Images(
                cfg.gpu_augment_size or None, cfg.gpu_augment_max_size or None
            )
            collate = partial(
                collate_uint8, pad_to=cfg.gpu_augment_max_size or None
            )  # one padded shape: one compiled graph
        else:
            self.augment, collate = MultiCropAugmentation(*crop_args), collate_multicrop
        self.sampler = EpochBatchSampler(
            len(self.dataset), cfg.batch_size_per_gpu, cfg.seed, self.env.rank, self.env.world_size
        )
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.loader = make_loader(
            MultiCropDataset(self.dataset, self.augment),
            self.sampler,
            cfg.num_workers,
            collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init,
        )

        # models: the teacher starts as a copy of the student (after DDP has broadcast rank 0's
        # weights) and never takes a gradient
        self.student = build_student(cfg).to(self.device)
        if (
            cfg.init_weights
        ):  # continue from a backbone trained earlier (a warm restart with a fresh head)
            weights = backbone_state_dict(load_checkpoint(cfg.init_weights))
            refuse_nonfinite_weights(weights, f"init_weights {cfg.init_weights}")
            own = self.student.backbone.state_dict()
            for key in ("register_tokens", "mask_token"):  # DINOv2's, new to a DINO backbone
                if key in own and key not in weights:
                    weights[key] = own[key]
            load_backbone_weights(self.student.backbone, weights)
        self.student_ddp: nn.Module = self.student
        if self.env.distributed:
            self.student_ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.teacher = make_teacher(self.student)
        seed_everything(cfg.seed + 1 + self.env.rank)  # drop path: a different stream on every rank
        if (
            cfg.compile
        ):  # one static graph per crop resolution (the student sees two): with automatic dynamic
            # shapes, torch 2.11's inductor failed an internal assertion on the second resolution on
            # a GPU
            self.student.backbone.compile(dynamic=False, mode=cfg.compile_mode)
            self.teacher.backbone.compile(dynamic=False, mode=cfg.compile_mode)

        self.loss_fn = DINOLoss(
            cfg.out_dim,
            cfg.ncrops,
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.epochs,
            cfg.student_temp,
            cfg.center_momentum,
        ).to(self.device)
        if cfg.koleo_loss_weight:
            self.koleo_loss = KoLeoLoss()
        if cfg.ibot:  # masks over the global crops' patch grid, as DINOv2 builds them
            grid = cfg.global_crops_size // cfg.patch_size
            self.mask_generator = MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid)
            self.ibot_patch_loss = iBOTPatchLoss(
                ibot_out_dim(cfg), cfg.student_temp, cfg.center_momentum
            ).to(self.device)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        # schedules, one value per step (lr scaled linearly with the total batch, as in DINO)
        total_batch = cfg.batch_size_per_gpu * self.env.world_size
        n, E = self.steps_per_epoch, cfg.epochs
        self.lr_schedule = cosine_scheduler(
            cfg.lr * total_batch / 256.0, cfg.min_lr, E, n, warmup_epochs=cfg.warmup_epochs
        )
        self.wd_schedule = cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, E, n)
        self.momentum_schedule = cosine_scheduler(cfg.momentum_teacher, 1.0, E, n)

        self.step = 0
        self.run = run or RunFolder(cfg.output_dir, cfg.run_name, self.env)
        self.run_dir, self.ckpt_path = self.run.path, self.run.checkpoint
        self.last_good: tuple[Path, int] | None = (
            None  # (file, step) of the newest checkpoint known to be sound
        )
        self._writer = BackgroundWriter()
        self._reset_meters()
        self._epoch_loss = torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ set-up helpers
    def _check_batch_fits(self) -> None:
        n, world, b = len(self.dataset), self.env.world_size, self.cfg.batch_size_per_gpu
        if n // world < b:
            per = f" x {world} processes" if world > 1 else ""
            raise ConfigError(
                f"batch_size_per_gpu={b}{per} is larger than the dataset ({n} images): not one full"
                " batch, so no step; lower batch_size_per_gpu or use more images (max_images,"
                " data_path)"
            )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the fused kernel where this PyTorch has one for the device, else
        the foreach one."""
        groups = get_params_groups(self.student)
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(get_params_groups(self.student), foreach=True)

    def _reset_meters(self) -> None:
        z = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self._m = {"loss": z(), "teacher_entropy": z(), "batch_entropy": z()}
        cfg = self.cfg  # DINOv2's terms: `loss` is their sum with the DINO loss
        for key, on in (
            ("dino_loss", reads_features(cfg)),
            ("koleo_loss", cfg.koleo_loss_weight > 0),
            ("ibot_loss", cfg.ibot),
        ):
            if on:
                self._m[key] = z()
        self._m_steps, self._m_images, self._m_time = 0, 0, time.perf_counter()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    # ------------------------------------------------------------------ one step
    def crops_of(self, batch, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A loader batch -> (global crops (2B, 3, G, G), local crops (N*B, 3, L, L) or None), on
        the device. With gpu_augment the batch is uint8 images (B, 3, H, W), cropped here in one
        pass."""
        if isinstance(batch, (torch.Tensor, PaddedImages)):
            if self.gpu_augment is None:
                raise ValueError(
                    "got a batch of images, not crops; set gpu_augment=true to crop on the device"
                )
            batch = self.gpu_augment(
                batch.to(self.device, non_blocking=True), generator=self.aug_generator
            )
        return split_crops([c.to(self.device, non_blocking=True) for c in batch], batch_size)

    def train_step(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One DINO step. global_crops: (2B, 3, G, G), view 1 of every image then view 2;
        local_crops: (N*B, 3, L, L), view-major likewise, or None. Returns the loss (a tensor: no
        host-device sync)."""
        it, epoch = self.step, self.epoch
        if it >= len(self.lr_schedule):
            raise ValueError(
                f"step {it} is past the end of training ({len(self.lr_schedule)} steps: epochs x"
                " steps per epoch); build the trainer with more epochs or images to step further"
            )
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])
            if i == 0:  # only the regularised group has weight decay
                group["weight_decay"] = float(self.wd_schedule[it])
        global_crops = global_crops.to(self.device, non_blocking=True)  # (2B, 3, G, G)
        crops = (
            [global_crops]
            if local_crops is None
            else [global_crops, local_crops.to(self.device, non_blocking=True)]
        )

        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32
        ):
            if self.cfg.ibot or self.cfg.koleo_loss_weight:  # features and patch logits too
                teacher, student = self.forward_dinov2(global_crops, crops)
                teacher_out, student_out = teacher["cls_logits"], student["cls_logits"]
            else:
                with torch.no_grad():
                    teacher_out = self.teacher(global_crops)  # (2B, K): the global views only
                student_out = self.student_ddp(crops)  # ((2+N)B, K): every view
        centering = self.cfg.centering == "centering"
        with torch.no_grad():
            teacher_probs = (
                self.loss_fn.teacher_probs(teacher_out, epoch)  # (2B, K), centred and sharpened
                if centering
                else sinkhorn_knopp_teacher(teacher_out, self.loss_fn.teacher_temp(epoch))
            )  # (2B, K), or evenly spread over the K prototypes (DINOv2), with no centre
            self._m["teacher_entropy"] += entropy(
                teacher_probs
            ).mean()  # per-image entropy: ln K when uniform
            self._m["batch_entropy"] += entropy(
                teacher_probs.mean(0)
            )  # of the batch mean: ~0 when one dim wins
        loss = self.loss_fn(
            student_out, teacher_out, epoch, teacher_probs=teacher_probs, update_center=centering
        )  # one teacher softmax, not two
        if "dino_loss" in self._m:
            self._m["dino_loss"] += loss.detach()
        if self.cfg.koleo_loss_weight:
            loss = loss + self.koleo_term(student["cls"][: global_crops.shape[0]])
        if self.cfg.ibot:
            loss = loss + self.ibot_term(student, teacher, epoch)

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
        self._epoch_loss += loss.detach()
        self._m_steps += 1
        self._m_images += global_crops.shape[0] // 2 * self.env.world_size
        self.step += 1
        return loss.detach()

    # ------------------------------------------------------------------ DINOv2's additions
    def forward_dinov2(self, global_crops: torch.Tensor, crops: list) -> tuple[dict, dict]:
        """Teacher and student outputs (`MaskedMultiCropWrapper`) when iBOT or KoLeo is on: with
        iBOT the student sees its global crops masked, the teacher sees them whole, and both are
        read at the masked patches."""
        masks = self.ibot_masks(global_crops.shape[0]) if self.cfg.ibot else None
        where = {} if masks is None else {"mask_indices": masks["mask_indices_list"]}
        with torch.no_grad():
            teacher = self.teacher([global_crops], **where)  # cls_logits (2B, K)
        student = self.student_ddp(
            crops, masks=None if masks is None else masks["collated_masks"], **where
        )  # cls_logits ((2+N)B, K)
        student["masks"] = masks
        return teacher, student

    def ibot_masks(self, n_images: int) -> dict:
        """`collate_masks` for this step's global crops, on the device, with `n_masked` (M, an int).
        Python's `random` (which the mask code draws from) is seeded by (seed, rank, step) for the
        draw and put back after: a resumed run draws the same masks, the other streams are
        untouched."""
        state = random.getstate()
        random.seed(f"ibot masks {self.cfg.seed} {self.env.rank} {self.step}")
        try:
            masks = collate_masks(
                n_images,
                self.mask_generator.num_patches,
                self.mask_generator,
                self.cfg.ibot_mask_ratio_min_max,
                self.cfg.ibot_mask_sample_probability,
            )
        finally:
            random.setstate(state)
        out = {
            k: masks[k].to(self.device, non_blocking=True)
            for k in ("collated_masks", "mask_indices_list", "masks_weight")
        }  # (2B, P), (M,), (M,)
        out["n_masked"] = masks["mask_indices_list"].shape[0]
        return out

    def koleo_term(self, cls_global: torch.Tensor) -> torch.Tensor:
        """koleo_loss_weight x KoLeo of each global view's student CLS features (2B, D): one term
        per view, so two crops of one image are never each other's neighbour (as DINOv2)."""
        koleo = self.cfg.koleo_loss_weight * sum(self.koleo_loss(p) for p in cls_global.chunk(2))
        self._m["koleo_loss"] += koleo.detach()
        return koleo

    def ibot_term(self, student: dict, teacher: dict, epoch: int) -> torch.Tensor:
        """ibot_loss_weight x iBOT's patch loss: the student's logits at its masked patches against
        the teacher's targets there, made like the CLS targets (centre or Sinkhorn-Knopp)."""
        masks, temp = student["masks"], self.loss_fn.teacher_temp(epoch)
        t_logits = teacher["patch_logits"]  # (M, K')
        with torch.no_grad():
            if self.cfg.centering == "centering":
                t_probs = self.ibot_patch_loss.softmax_center_teacher(
                    t_logits.unsqueeze(0), temp
                ).squeeze(0)  # (M, K'), with the patches' own centre
                if masks["n_masked"] > 0:  # the mean of no patch would be NaN: keep the centre
                    self.ibot_patch_loss.update_center(t_logits.unsqueeze(0))  # mean of (1, M, K')
            else:
                t_probs = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    t_logits, temp, n_masked_patches_tensor=masks["n_masked"]
                )  # (M, K'), each masked patch one sample
        ibot = self.cfg.ibot_loss_weight * self.ibot_patch_loss.forward_masked(
            student["patch_logits"],
            t_probs,
            student_masks_flat=masks["collated_masks"],
            n_masked_patches=masks["n_masked"],
            masks_weight=masks["masks_weight"],
        )
        self._m["ibot_loss"] += ibot.detach()
        return ibot

    # ------------------------------------------------------------------ metrics
    def collect_metrics(self) -> dict:
        """Average the meters since the last call into one record (one host-device sync)."""
        n = max(self._m_steps, 1)
        vals = {k: v.item() / n for k, v in self._m.items()}
        dt = time.perf_counter() - self._m_time
        it = max(self.step - 1, 0)
        lnK = math.log(self.cfg.out_dim)
        rec = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "loss": vals["loss"],
            "teacher_entropy": vals["teacher_entropy"],
            "batch_entropy": vals["batch_entropy"],
            "kl_uniform": lnK - vals["teacher_entropy"],
            "kl_teacher_student": vals.get("dino_loss", vals["loss"]) - vals["teacher_entropy"],
            "lr": float(self.lr_schedule[it]),
            "wd": float(self.wd_schedule[it]),
            "momentum": float(self.momentum_schedule[it]),
            "teacher_temp": self.loss_fn.teacher_temp(it // self.steps_per_epoch),
            "images_per_s": self._m_images / dt if dt > 0 else float("nan"),
            "time": time.time(),
            **{k: vals[k] for k in ("dino_loss", "koleo_loss", "ibot_loss") if k in vals},
        }
        self._reset_meters()
        return rec

    def _diverged(self, what: str) -> TrainingDivergedError:
        kept = (
            f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]}): continue"
            " from it with --resume and one of these changes"
            if self.last_good
            else "no good checkpoint of this run was written; try"
        )
        return TrainingDivergedError(
            f"{what} by step {self.step} (epoch {self.epoch}); nothing was written after the fault;"
            f" {kept}: a lower lr (--set lr=...), fp32 (--set precision=fp32), a smaller"
            " teacher_temp or a longer warmup_teacher_temp_epochs, or a smaller clip_grad"
        )

    def check_finite(self) -> None:
        """Raise TrainingDivergedError if a loss or a gradient norm was NaN/inf since the last check
        (every rank alike)."""
        bad = self._nonfinite.clone()
        if self.env.distributed:
            bad = bad.to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad):
            raise self._diverged("the loss or the gradients became NaN/inf")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The checkpoint of a trainer: everything a resumed run needs to continue bit for bit."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "dino_loss": self.loss_fn.state_dict(),
            **({"ibot_patch_loss": self.ibot_patch_loss.state_dict()} if self.cfg.ibot else {}),
            "step": self.step,
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "rng": rng_state(self.device, self.aug_generator),
            "world_size": self.env.world_size,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Put a checkpoint of `state_dict` back into a trainer built from the same config (random
        streams included)."""
        missing = [
            k
            for k in ("student", "teacher", "optimizer", "scaler", "dino_loss", "step")
            + (("ibot_patch_loss",) if self.cfg.ibot else ())
            if k not in ckpt
        ]
        if missing:
            raise CheckpointError(f"not a training checkpoint of this project: it lacks {missing}")
        try:
            self.student.load_state_dict(ckpt["student"])
            self.teacher.load_state_dict(ckpt["teacher"])
            self.loss_fn.load_state_dict(ckpt["dino_loss"])
            if self.cfg.ibot:
                self.ibot_patch_loss.load_state_dict(ckpt["ibot_patch_loss"])
        except RuntimeError as e:
            saved = ckpt.get("config", {})
            was = ", ".join(
                f"{k}={saved[k]}"
                for k in ("arch", "patch_size", "out_dim", "num_register_tokens", "ibot")
                if k in saved
            )
            raise CheckpointError(
                "the checkpoint does not fit this run's model (it was trained with"
                f" {was or 'another config'}):\n{e}"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        rank, seed = self.env.rank, self.cfg.seed + 1 + self.env.rank + 7919 * self.step
        rng = ckpt.get("rng", {})
        set_rng_state(rng, self.device, rank, reseed=lambda: seed_everything(seed))
        if self.aug_generator is not None:
            if rank == 0 and "augment" in rng:
                self.aug_generator.set_state(rng["augment"].cpu())
            else:
                self.aug_generator.manual_seed(seed)

    def save(self, block: bool = True) -> None:
        """Checkpoint (rank 0 only), only when loss, gradients and every saved tensor are finite;
        written atomically.

        block=False returns once the state is copied to CPU memory and writes the file on a thread
        (`fit` does this at epoch ends on a GPU: the write no longer stalls it); `wait_for_save`
        joins it."""
        self.check_finite()
        if self.env.is_main:
            state = self.state_dict()
            bad = nonfinite_tensors(
                {
                    k: state[k]
                    for k in ("student", "teacher", "optimizer", "dino_loss", "ibot_patch_loss")
                    if k in state
                }
            )
            if bad:
                raise self._diverged(
                    f"NaN/inf in {len(bad)} tensor(s) of the state to save (e.g. {bad[0]})"
                )
            paths = [self.ckpt_path]
            freq = self.cfg.saveckp_freq
            if freq and self.step % self.steps_per_epoch == 0 and self.epoch % freq == 0:
                paths.append(self.run_dir / f"checkpoint{self.epoch:04d}.pth")
            self._writer.write(state, paths, block)
        self.last_good = (self.ckpt_path, self.step)

    def wait_for_save(self) -> None:
        """Block until the last checkpoint is on disk (raises the writer's error, if any)."""
        self._writer.wait()

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from a checkpoint: the run's own (checkpoint.pth in its folder) unless `path` is
        given."""
        path = Path(path) if path else self.ckpt_path
        ckpt = load_checkpoint(path, map_location=self.device)
        bad = nonfinite_tensors({k: ckpt.get(k) for k in ("student", "teacher")})
        if bad:
            raise CheckpointError(
                f"{path} holds NaN/inf weights ({bad[0]}, ...): it cannot be resumed"
            )
        self.load_state_dict(ckpt)
        self.last_good = (path, self.step)

    # ------------------------------------------------------------------ the loop
    def say(self, text: str) -> None:
        """A line for the person watching (stderr, above the progress bar); nothing when quiet and
        on ranks > 0."""
        if self.env.is_main and not self.quiet:
            tqdm.write(text, file=progress_stream())

    def summary(self) -> str:
        """What is about to run: data, steps, model, device, precision, folder."""
        cfg, env = self.cfg, self.env
        n_student = sum(p.numel() for p in self.student.parameters())
        n_backbone = sum(p.numel() for p in self.student.backbone.parameters())
        where = f"{cfg.dataset}" + (f" ({cfg.data_path})" if cfg.data_path else "")
        procs = f" on each of {env.world_size} processes" if env.distributed else ""
        dtype = {
            torch.float32: "fp32",
            torch.bfloat16: "bf16 autocast",
            torch.float16: "fp16 autocast",
        }[self.amp_dtype]
        return "\n".join(
            [
                (
                    f"data:   {where}, {len(self.dataset):,} images; batch"
                    f" {cfg.batch_size_per_gpu}{procs}, {self.steps_per_epoch} steps per epoch,"
                    f" {self.total_steps} step{'s' if self.total_steps > 1 else ''} in all"
                ),
                (
                    f"model:  {cfg.arch}/{cfg.patch_size} + DINO head ({cfg.out_dim} outputs):"
                    f" {n_student / 1e6:.2f}M parameters ({n_backbone / 1e6:.2f}M in the backbone)"
                ),
                (
                    f"device: {self.device}, {torch.get_num_threads()}"
                    f" thread{'s' if torch.get_num_threads() > 1 else ''}, {dtype}"
                ),
                *([f"dinov2: {self._dinov2()}"] if self._dinov2() else []),
                f"path:   {self._path()}",
                f"run:    {self.run_dir}",
            ]
        )

    def _dinov2(self) -> str:
        """DINOv2's additions that are on, in a line ("" when none: plain DINO)."""
        cfg, parts = self.cfg, []
        if cfg.ibot:
            head = "its own head" if cfg.ibot_separate_head else "the DINO head"
            parts.append(f"iBOT (weight {cfg.ibot_loss_weight:g}, {head})")
        if cfg.koleo_loss_weight:
            parts.append(f"KoLeo (weight {cfg.koleo_loss_weight:g})")
        if cfg.centering == "sinkhorn_knopp":
            parts.append("Sinkhorn-Knopp centering")
        if cfg.num_register_tokens:
            parts.append(f"{cfg.num_register_tokens} registers")
        return ", ".join(parts)

    def _path(self) -> str:
        """Which forward runs (the model's `fast` flag) and, when fast, the tricks that act on this
        device."""
        if not self.cfg.fast:
            return "plain (every module as DINO writes it; fast=true for the speed tricks)"
        cpu = self.device.type == "cpu"
        tricks = ["the last block computes the CLS row alone"]
        skips = (
            cpu and not self.cfg.compile and self.cfg.drop_path_rate > 0
        )  # eager CPU training with stochastic depth
        tricks += ["a dropped branch is not computed"] if skips else []
        tricks += (
            ["attention as the explicit softmax"]
            if cpu and self.amp_dtype == torch.bfloat16
            else []
        )
        return f"fast ({'; '.join(tricks)}; the same values as plain)"

    def _epoch_bar(self) -> tqdm:
        """A progress bar over the current epoch's steps, starting where this epoch stands."""
        start = self.step % self.steps_per_epoch
        end = min(self.steps_per_epoch, start + self.total_steps - self.step)
        self._bar = tqdm(
            total=end,
            initial=start,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            disable=not self.env.is_main or self.quiet,
            leave=False,
            dynamic_ncols=True,
            file=progress_stream(),
        )
        return self._bar

    def _end_epoch(self, steps: int, started: float) -> None:
        """One line per finished epoch, kept on the screen when its progress bar goes: the mean loss
        of its `steps`."""
        loss = self._epoch_loss.item() / max(steps, 1)
        self.say(
            f"epoch {self.epoch}/{self.cfg.epochs}: loss {loss:.4f} (step"
            f" {self.step}/{self.total_steps}, {_clock(time.perf_counter() - started)} so far)"
        )
        self._epoch_loss.zero_()

    def fit(self, callback: Callable[[dict], None] | None = None) -> list[dict]:
        """Train from `self.step` to the end; returns the metrics records of this call."""
        self.run.open(continuing=self.last_good is not None)
        try:
            self.run.begin(self.step, self.cfg)
            self.say(self.summary())
            started = time.perf_counter()
            with StopSignals(self.env, self.device) as stop:
                try:
                    records = self._loop(callback, stop, started)
                finally:
                    try:
                        # the file of the last epoch end is on disk before fit returns or raises
                        self.wait_for_save()
                    finally:
                        if getattr(self, "_bar", None) is not None:
                            # an error's line starts on a line of its own, not after the bar
                            self._bar.close()
        finally:
            self.run.close()
        if records:
            self.say(
                f"done: step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}) in"
                f" {_clock(time.perf_counter() - started)}; final loss {records[-1]['loss']:.4f},"
                f" checkpoint {self.ckpt_path}"
            )
        else:
            self.say(
                f"nothing left to train: step {self.step} of {self.total_steps} was done already"
                f" (raise epochs or max_steps to go on); checkpoint {self.ckpt_path}"
            )
        return records

    def _loop(self, callback, stop: StopSignals, started: float) -> list[dict]:
        cfg, records = self.cfg, []
        collapse_run, warned = 0, False
        self.student.train()
        self.teacher.train()
        self._reset_meters()
        self._epoch_loss.zero_()
        # one pass over the loader for all remaining steps: its workers build the next epoch's first
        # batches while this epoch ends, instead of starting from scratch at every epoch
        self.sampler.set_steps(self.step, self.total_steps)
        bar, epoch_first = None, self.step
        for batch, labels in self.loader:
            if bar is None:  # the first step of this call, or of a new epoch
                bar, epoch_first = self._epoch_bar(), self.step
            self.train_step(*self.crops_of(batch, len(labels)))
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
                    warnings.warn(
                        f"step {self.step}: the teacher looks collapsed ({collapse}) for"
                        f" {collapse_run} log records; see README 'What can go wrong'",
                        stacklevel=3,
                    )
                    warned = True
                records.append(rec)
                self.run.log(rec)
                if self.env.is_main:
                    bar.set_postfix(
                        loss=f"{rec['loss']:.3f}",
                        img_s=f"{rec['images_per_s']:.1f}",
                        **({"warn": f"collapse:{rec['collapse']}"} if rec["collapse"] else {}),
                    )
                    if callback:
                        callback(rec)
            if self.device.type == "cpu":
                self.check_finite()
            periodic = cfg.save_every_steps and self.step % cfg.save_every_steps == 0
            stopping = (
                stop.requested()
                if (self.device.type == "cpu" or self.step % cfg.log_every == 0)
                else False
            )
            if periodic or stopping or last:
                # on a GPU the epoch-end file is written on a thread while the GPU trains on; a CPU
                # has
                # no cores to spare for it, and there the write is short next to a step anyway
                self.save(
                    block=stopping or self.step >= self.total_steps or self.device.type == "cpu"
                )
            if stopping or epoch_end:
                bar.close()
                bar = None
            if epoch_end:
                self._end_epoch(self.step - epoch_first, started)
            if stopping:
                raise KeyboardInterrupt
        if bar is not None:
            bar.close()
        return records


def progress_stream():
    """Where progress lines go: stderr in a terminal (stdout carries the command's JSON summary),
    stdout in a notebook, where JupyterLab paints stderr as an error box."""
    return sys.stdout if type(sys.stderr).__module__.startswith("ipykernel") else sys.stderr


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def train(
    cfg: TrainConfig,
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    quiet: bool = False,
) -> DINOTrainer:
    """Train one run: a new one (its folder must hold no checkpoint) or, with resume=True, the one
    in its folder."""
    env = setup_distributed(cfg.device)
    check_head_fits(cfg, resolve_device(cfg.device, env))  # before the folder is made
    run = RunFolder(cfg.output_dir, cfg.run_name, env)
    run.check(resume)  # before the minutes of building: fail fast
    run.open(continuing=resume)  # the lock, held until fit ends
    try:
        trainer = DINOTrainer(cfg, env=env, quiet=quiet, run=run)
        if resume:
            trainer.resume()
            trainer.say(
                f"resumed {trainer.ckpt_path} at step {trainer.step} (epoch {trainer.epoch})"
            )
        trainer.fit(callback)
    finally:
        run.close()
    return trainer
