"""`load_data`: the training batches (infinite, resumable). Sampling reads `VideoClipDataset`."""
from __future__ import annotations

import itertools
import numbers
import signal
import warnings

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from ..errors import UsageError
from .clips import RandomClipDataset, Shard


class _CountFrom(Sampler):
    """Item indices start, start + 1, ... forever."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _ignore_stop_signals(worker_id):
    # Launchers (mpirun, SLURM, timeout) signal the whole process group: a worker must not die
    # of the SIGTERM/SIGINT/SIGUSR1 that asks the main process to finish its step and checkpoint.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # Slurm's --signal=USR1@seconds


class VideoLoader:
    """Iterator of `(video, cond)`: video float32 (N, C, T, H, W) in [-1, 1], cond a dict
    (`{"y": LongTensor (N,)}` with class conditioning, else `{}`).

    It never ends. `state_dict()` records how many items were delivered, so
    `load_state_dict()` on a fresh loader with the same seed, rank and world size continues with
    exactly the next items.
    """

    def __init__(self, dataset, *, batch_size, class_cond, num_workers, seed, rank, world_size):
        self.dataset = dataset
        self.batch_size = batch_size
        self.class_cond = class_cond
        self.num_workers = num_workers
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.class_names = dataset.shard.class_names
        self.num_classes = len(self.class_names)
        self.paths = [entry.path for entry in dataset.shard.entries]  # this rank's usable files
        self._consumed = 0
        self._batches = None

    def _start(self):
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=BatchSampler(_CountFrom(self._consumed), self.batch_size,
                                           drop_last=False),
                num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(),
                worker_init_fn=_ignore_stop_signals,
                # Worker base seeds come from this generator, not the global torch RNG, so
                # starting a loader does not shift the training run's random stream.
                generator=torch.Generator().manual_seed(self.seed),
            )
        )

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:
            self._batches = self._start()
        video, label = next(self._batches)  # (N, C, T, H, W), (N,)
        self._consumed += video.shape[0]
        return video, ({"y": label} if self.class_cond else {})

    def state_dict(self) -> dict:
        return {
            "items_consumed": self._consumed,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        changed = [k for k in ("seed", "rank", "world_size") if state.get(k) != mine[k]]
        if changed:
            warnings.warn(
                "data loader state saved with different "
                + ", ".join(f"{k} ({state.get(k)} -> {mine[k]})" for k in changed)
                + ": the data order will not continue exactly",
                stacklevel=2,
            )
        self._consumed = int(state["items_consumed"])
        self._batches = None  # restart the workers at the restored position


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")


def load_data(*, data_dir, batch_size: int, image_size: int, seq_len: int,
              class_cond: bool = False, rgb: bool = True, rank: int = 0, world_size: int = 1,
              seed: int = 0, num_workers: int = 2) -> VideoLoader:
    """Endless batches of `seq_len`-frame training clips from the videos below `data_dir` (this
    rank's shard): item k of rank r is a random window of a file, drawn from
    `numpy.random.default_rng([seed, r, 0, k])` with the files reshuffled each epoch.
    """
    _check_positive(batch_size=batch_size, image_size=image_size, seq_len=seq_len,
                    world_size=world_size)
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}")
    if not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise UsageError(f"--num_workers must be >= 0, got {num_workers!r}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")
    batch_size, image_size, seq_len = int(batch_size), int(image_size), int(seq_len)
    rank, world_size, num_workers, seed = int(rank), int(world_size), int(num_workers), int(seed)
    shard = Shard.scan(data_dir, seq_len, class_cond, rank, world_size)
    dataset = RandomClipDataset(shard, image_size, rgb, seed, rank)
    return VideoLoader(dataset, batch_size=batch_size, class_cond=class_cond,
                       num_workers=num_workers, seed=seed, rank=rank, world_size=world_size)
