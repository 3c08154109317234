"""Multi-crop batches for training: a per-sample augmentation seed, the epoch's batches, the loader.

The crops of an image depend only on the run's seed, the epoch and the image, and the loader draws
nothing from the global random stream, so a resumed run sees exactly what an uninterrupted one
would.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A reproducible augmentation seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class MultiCropDataset(Dataset):
    """Applies `transform` (e.g. MultiCropAugmentation) with a per-sample seed.

    Keys are (index, seed) pairs from `EpochBatchSampler`: the crops of an image depend only on the
    run's seed, the epoch and the image, not on the number of workers, so a resumed run sees exactly
    the crops the uninterrupted run would have seen.
    """

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.dataset[index]
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label


class EpochBatchSampler:
    """Shuffled batches of (index, seed) keys; the order depends only on (seed, epoch).

    With `world_size` > 1 each rank takes every world_size-th index of the shared permutation (the
    DistributedSampler rule). What one iteration yields is a span of global steps (step s is batch s
    % len(self) of epoch s // len(self)): `set_epoch` picks one epoch's batches (or a slice of them,
    for resuming and max_steps), `set_steps` a span across epochs.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if len(self) == 0:
            raise ValueError(
                f"batch_size_per_gpu={batch_size} x {world_size} process(es) is larger than the"
                f" dataset ({num_samples} images) with drop_last: lower the batch size or use more"
                " images"
            )
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0, stop_batch: int | None = None) -> None:
        """Yield batches [start_batch, stop_batch) of this epoch's order on the next iteration."""
        n = len(self)
        stop = n if stop_batch is None else min(stop_batch, n)
        self.set_steps(epoch * n + start_batch, epoch * n + stop)

    def set_steps(self, start_step: int, stop_step: int) -> None:
        """Yield the batches of global steps [start_step, stop_step) on the next iteration, epoch
        after epoch. One iteration over several epochs keeps the loader's workers busy across
        epoch ends, where restarting the iteration would make the first batch of every epoch wait
        for a worker to build it from scratch."""
        self.start_step, self.stop_step = start_step, stop_step

    def __len__(self) -> int:
        per_rank = self.num_samples // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's image indices for `epoch`, in order: the shared permutation of (seed, epoch),
        every world_size-th."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        return perm[self.rank :: self.world_size][: self.num_samples // self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n, mine, mine_epoch = len(self), None, None
        for step in range(self.start_step, self.stop_step):
            epoch, b = divmod(step, n)
            if epoch != mine_epoch:  # one permutation per epoch
                mine, mine_epoch = self.epoch_order(epoch), epoch
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, epoch, i)) for i in idx]


def make_loader(
    dataset: MultiCropDataset,
    sampler: EpochBatchSampler,
    num_workers: int,
    collate_fn,
    pin_memory: bool,
    worker_init_fn=None,
) -> DataLoader:
    """A loader with its own generator: starting an epoch draws no number from the global RNG, which
    drop path uses, so a resumed run continues the exact random stream of an uninterrupted one."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(sampler.seed),
    )
