"""Multi-crop throughput of the data pipeline, CPU workers vs on the device, as one JSON object.

    python benchmarks/data_pipeline.py  # imagenette-96, 2x224 + 6x96 crops, workers 0 1 2
    python benchmarks/data_pipeline.py --device cuda --workers 0 4 8 --batch 256
    python benchmarks/data_pipeline.py --dataset random --images 64 --batch 8 --batches 2 \\
        --workers 0

CPU path: the loader train.py builds (dataset -> MultiCropAugmentation in DataLoader workers ->
collate_multicrop), timed per worker count after its first batch (worker start-up is reported
apart). Device path: the workers only decode to uint8 (Uint8Images + collate_uint8), and
GPUMultiCropAugmentation makes the crops of the whole batch on --device.

Training is data-bound when the pipeline's images/s is below the step's images/s
(benchmarks/train_step.py); `cpu_s_per_image` says how many cores it takes to keep up.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

from timing import sync  # noqa: E402

from vitdino_core.data import EpochBatchSampler, MultiCropDataset, make_loader  # noqa: E402
from vitdino_core.multicrop import MultiCropAugmentation, collate_multicrop  # noqa: E402
from vitdino_core.training.config import make_config  # noqa: E402
from vitdino_core.training.multicrop_gpu import (
    GPUMultiCropAugmentation,
    PaddedImages,
    Uint8Images,
    collate_uint8,
)  # noqa: E402
from vitdino_core.training.trainer import _worker_init, build_train_dataset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        default="imagenette",
        help="a dataset name of vitdino_core.data (imagenette, random, ...)",
    )
    p.add_argument("--data-path", default="", help="overrides where the dataset is looked for")
    p.add_argument(
        "--images", type=int, default=0, help="use the first N images of a fixed shuffle (0 = all)"
    )
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--batches",
        type=int,
        default=10,
        help="timed batches per measurement (after one warm-up batch)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--device", default="cpu", help="where the batched multi-crop runs: cpu | cuda | cuda:N"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in the main process (0 = PyTorch's default)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the device path's pixel work (as train.py does with compile=true)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=0,
        help=(
            "device path: shrink images to this longer side and pad batches to a square"
            " (gpu_augment_max_size)"
        ),
    )
    p.add_argument("--skip-cpu-path", action="store_true")
    p.add_argument("--skip-gpu-path", action="store_true")
    return p.parse_args(argv)


def cpu_seconds(children: bool = False) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_cfg(args):
    return make_config(
        dict(
            dataset=args.dataset,
            data_path=args.data_path,
            max_images=args.images,
            global_crops_size=args.global_size,
            local_crops_size=args.local_size,
            local_crops_number=args.local_crops,
            batch_size_per_gpu=args.batch,
            output_dir=tempfile.gettempdir(),
            patch_size=math.gcd(args.global_size, args.local_size),
        )
    )


def time_loader(make, nbatches: int, ncrops_per_image: int) -> dict:
    """Build a loader with make() -> (loader, sampler); one warm-up batch (worker start-up), then
    `nbatches` timed ones. CPU seconds include the workers' (counted once they have exited, after
    the loader is dropped)."""
    self0, kids0 = cpu_seconds(), cpu_seconds(children=True)
    loader, sampler = make()
    sampler.set_epoch(0, 0, nbatches + 1)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    n = sum(len(labels) for _, labels in it)
    t2 = time.perf_counter()
    del it, loader  # persistent workers exit here
    gc.collect()
    cpu = cpu_seconds() - self0 + cpu_seconds(children=True) - kids0
    return {
        "images_per_s": n / (t2 - t1),
        "crops_per_s": n * ncrops_per_image / (t2 - t1),
        "first_batch_s": t1 - t0,
        "timed_images": n,
        "cpu_s_per_image": cpu / (n + sampler.batch_size),
    }  # incl. the warm-up batch


def cpu_path(args, cfg, dataset) -> list[dict]:
    augment = MultiCropAugmentation(
        cfg.global_crops_scale,
        cfg.local_crops_scale,
        cfg.local_crops_number,
        cfg.global_crops_size,
        cfg.local_crops_size,
    )

    def make(w):
        sampler = EpochBatchSampler(len(dataset), args.batch, cfg.seed)
        return (
            make_loader(
                MultiCropDataset(dataset, augment),
                sampler,
                w,
                collate_multicrop,
                pin_memory=False,
                worker_init_fn=_worker_init,
            ),
            sampler,
        )

    return [
        {"workers": w, **time_loader(lambda: make(w), args.batches, cfg.ncrops)}
        for w in args.workers
    ]


def gpu_path(args, cfg, dataset) -> dict:
    device = torch.device(args.device)
    to_uint8 = Uint8Images(max_size=args.max_size or None)
    collate = partial(collate_uint8, pad_to=args.max_size or None)  # as train.py builds it

    def make(w):
        sampler = EpochBatchSampler(len(dataset), args.batch, cfg.seed)
        return (
            make_loader(
                MultiCropDataset(dataset, to_uint8),
                sampler,
                w,
                collate,
                pin_memory=device.type == "cuda",
                worker_init_fn=_worker_init,
            ),
            sampler,
        )

    loaders = [
        {"workers": w, **time_loader(lambda: make(w), args.batches, 1)} for w in args.workers
    ]
    for r in loaders:
        r.pop("crops_per_s")

    images, _ = collate(
        [(to_uint8(dataset[i][0]), 0) for i in range(args.batch)]
    )  # one batch: (B, 3, H, W) or PaddedImages
    images = images.to(device)
    augment = GPUMultiCropAugmentation(
        cfg.global_crops_scale,
        cfg.local_crops_scale,
        cfg.local_crops_number,
        cfg.global_crops_size,
        cfg.local_crops_size,
        compile=args.compile,
    )
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    augment(images, generator=gen)  # warm-up (and compiling, with --compile)
    sync(device)
    first_call_s = time.perf_counter() - t0
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(args.batches):
        crops = augment(images, generator=gen)
    sync(device)
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    n = args.batches * args.batch
    return {
        "device": str(device),
        "compiled": args.compile,
        "augment_first_call_s": first_call_s,
        "augment_images_per_s": n / dt,
        "augment_crops_per_s": n * cfg.ncrops / dt,
        "augment_s_per_batch": dt / args.batches,
        "augment_cpu_s_per_image": cpu / n,
        "augment_peak_memory_bytes": peak,
        "input_image_size": list(
            (images.images if isinstance(images, PaddedImages) else images).shape[-2:]
        ),
        "output_shapes": [list(c.shape) for c in crops],
        "loader_uint8": loaders,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU is visible")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = make_cfg(args)
    dataset = build_train_dataset(cfg)
    if len(dataset) < args.batch * (args.batches + 1):
        raise SystemExit(
            f"{len(dataset)} images are too few for {args.batches + 1} batches of {args.batch}; "
            "lower --batch or --batches, or raise --images"
        )
    result = {
        "benchmark": "data_pipeline",
        "config": {
            k: getattr(args, k)
            for k in (
                "dataset",
                "images",
                "global_size",
                "local_size",
                "local_crops",
                "batch",
                "batches",
                "workers",
                "device",
                "compile",
                "max_size",
            )
        },
        "dataset_images": len(dataset),
        "crops_per_image": cfg.ncrops,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if not args.skip_cpu_path:
        result["cpu_path"] = cpu_path(args, cfg, dataset)
        best = max(result["cpu_path"], key=lambda r: r["images_per_s"])
        result["cpu_path_best"] = {"workers": best["workers"], "images_per_s": best["images_per_s"]}
    if not args.skip_gpu_path:
        result["gpu_path"] = gpu_path(args, cfg, dataset)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
