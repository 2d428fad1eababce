"""Videos on disk -> clips (docs/DATA_LOADER.md): which files are videos and of which class,
which of them a rank reads (`ShardClips`), how a frame is preprocessed, the two datasets (random
training windows, deterministic clips for sampling and evaluation) and the endless, resumable
training loader. Decoding (seeking, frame counts) is ramvid.data.decode's job.
"""
from __future__ import annotations

import hashlib
import itertools
import numbers
import signal
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset

from .. import dist
from ..errors import UsageError
from .decode import ShortVideoError, StreamMeta, VideoReadError, decode_window, stream_meta, to_rgb

# --------------------------------------------------------------------------- files
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".gif", ".mov", ".mkv", ".webm"})


class VideoSkippedWarning(UserWarning):
    """A video file was left out of the data set (empty, truncated, undecodable or too short)."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Warn about `key` (a file path) at most once per process, however often it is met."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, VideoSkippedWarning, stacklevel=3)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def list_videos(data_dir) -> list[Path]:
    """Every video file below `data_dir` (recursive), sorted by path so all ranks agree."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"--data_dir {root} is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_video(p))


def _check_ranks_agree(data_dir: Path, videos: list[Path]) -> None:
    """UsageError on every rank unless all ranks listed the same files: per-node copies out of
    step, a data set being updated or a network file system's stale cache would give overlapping
    or missing shards and, with class conditioning, other class numbers."""
    names = [p.relative_to(data_dir).as_posix() for p in videos]
    if len(set(dist.all_gather_object(hashlib.sha256("\n".join(names).encode()).digest()))) == 1:
        return
    lists = dist.all_gather_object(names)  # only now: the message names the difference
    rank = next(r for r, other in enumerate(lists) if other != lists[0])
    i = next((i for i, pair in enumerate(zip(lists[0], lists[rank])) if pair[0] != pair[1]),
             min(len(lists[0]), len(lists[rank])))
    found = [lists[r][i] if i < len(lists[r]) else "no more files" for r in (rank, 0)]
    raise UsageError(
        f"--data_dir {data_dir} holds other videos on rank {rank} ({len(lists[rank])}) than on "
        f"rank 0 ({len(lists[0])}); first difference in sorted order: {found[0]} on rank {rank}, "
        f"{found[1]} on rank 0. Every rank must see the same files (sync the per-node copies, or "
        f"wait until the data set is complete)")


def class_name_of(path) -> str:
    """The class of a video is its file name up to the first underscore ("cat_03.mp4" -> "cat")."""
    return Path(path).stem.split("_", 1)[0]


# --------------------------------------------------------------------------- frames
def preprocess_frame(image: Image.Image, image_size: int, rgb: bool = True) -> np.ndarray:
    """Short side -> image_size, then the central square: uint8 (H, W, C), C = 3 (rgb) or 1
    ("L"). Halving with a 2x2 box filter while the image is at least twice too large averages
    every source pixel (no aliasing), cheaply; bicubic covers the remaining factor in [1, 2)."""
    while min(image.size) >= 2 * image_size:
        image = image.reduce(2)
    scale = image_size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         resample=Image.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image.convert("RGB" if rgb else "L"), dtype=np.uint8)
    return array if rgb else array[:, :, None]


# --------------------------------------------------------------------------- a rank's files
# Domain tags keep the per-item and per-epoch random streams of one (seed, rank) apart.
_ITEM_STREAM, _EPOCH_STREAM = 0, 1
_LISTED_IN_ERRORS = 10


@dataclass
class VideoEntry:
    path: Path
    meta: StreamMeta  # shared with the process-wide cache; num_frames may get corrected
    label: int  # class index, -1 without class conditioning
    dropped: bool = False  # found undecodable after the scan


def _meta_or_reason(path: Path):
    try:
        return stream_meta(path)
    except VideoReadError as error:
        return error.reason


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- datasets
class ShardClips(Dataset):
    """Preprocessed clips of rank `rank`'s usable videos (files rank, rank + world_size, ... of
    the sorted list), correcting lengths that turn out wrong."""

    def __init__(self, data_dir, image_size: int, seq_len: int, *, class_cond: bool = False,
                 rgb: bool = True, rank: int = 0, world_size: int = 1):
        self.data_dir = data_dir = Path(data_dir)
        self.image_size, self.seq_len, self.rgb = image_size, seq_len, rgb
        self.class_cond, self.rank, self.world_size = class_cond, rank, world_size
        videos = list_videos(data_dir)
        if world_size > 1:
            _check_ranks_agree(data_dir, videos)
        if not videos:
            raise UsageError(f"--data_dir {data_dir}: found {_count_files(data_dir)} files, none "
                             "of them a video (.mp4 .avi .gif .mov .mkv .webm)")
        if world_size > len(videos):
            raise UsageError(f"--data_dir {data_dir}: {len(videos)} video files for {world_size} "
                             "ranks; every rank needs at least one file")
        # Classes are numbered over all files before sharding, so every rank agrees.
        self.class_names = sorted({class_name_of(p) for p in videos})
        self.num_classes = len(self.class_names)
        class_index = {name: i for i, name in enumerate(self.class_names)}
        shard = videos[rank::world_size]
        with ThreadPoolExecutor(max_workers=min(4, len(shard))) as pool:
            metas = list(pool.map(_meta_or_reason, shard))
        self.entries, rejected = [], []
        for path, meta in zip(shard, metas):
            if isinstance(meta, str):
                reason = meta
            elif meta.num_frames < seq_len:
                reason = f"{meta.num_frames} frames < --seq_len {seq_len}"
            else:
                label = class_index[class_name_of(path)] if class_cond else -1
                self.entries.append(VideoEntry(path, meta, label))
                continue
            rejected.append(f"{path.relative_to(data_dir)} ({reason})")
            warn_once(str(path), f"skipping video {path}: {reason}")
        if not self.entries:
            where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
            listed = ", ".join(rejected[:_LISTED_IN_ERRORS])
            unlisted = len(rejected) - _LISTED_IN_ERRORS
            more = f", ... {unlisted} more" if unlisted > 0 else ""
            raise UsageError(
                f"--data_dir {data_dir}{where}: no usable video; found {_count_files(data_dir)} "
                f"files, {len(shard)} videos, 0 of >= {seq_len} frames: {listed}{more}")

    @property
    def paths(self) -> list[Path]:
        return [entry.path for entry in self.entries]

    def usable(self, entry: VideoEntry) -> bool:
        return not entry.dropped and entry.meta.num_frames >= self.seq_len

    def _frame(self, frame) -> np.ndarray:
        return preprocess_frame(Image.fromarray(to_rgb(frame)), self.image_size, self.rgb)

    def read_or_repair(self, entry: VideoEntry, start: int) -> torch.Tensor | None:
        """(C, T, H, W) float32 in [-1, 1], or None after the file's length was corrected
        (decode_window lowers it to what decoded) or the file dropped; then retry."""
        path = entry.path
        try:
            frames = decode_window(path, entry.meta, start, self.seq_len, self._frame)
            video = torch.from_numpy(np.stack(frames))  # (T, H, W, C) uint8
            return video.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
        except ShortVideoError as error:
            reported, available = error.reported, error.available
            if self.usable(entry):
                warn_once(f"{path}#length",
                          f"video {path}: header says {reported} frames, only {available} decode")
            else:
                warn_once(str(path), f"skipping video {path}: only {available} frames decode "
                                     f"< --seq_len {self.seq_len}")
        except VideoReadError as error:
            entry.dropped = True
            warn_once(str(path), f"skipping video {path}: {error.reason}")
        return None


class RandomClipDataset(ShardClips):
    """Item k of rank r: a random window of a file, a pure function of (seed, r, k) whatever the
    number of workers, so resuming at item k replays the same data (docs/DATA_LOADER.md)."""

    def __init__(self, data_dir, image_size: int, seq_len: int, *, seed: int = 0, **shard):
        super().__init__(data_dir, image_size, seq_len, **shard)
        self.seed = seed
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def _entry_for(self, item: int) -> VideoEntry:
        epoch, position = divmod(item, len(self.entries))
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            rng = np.random.default_rng([self.seed, self.rank, _EPOCH_STREAM, epoch])
            self._epoch_order = (epoch, rng.permutation(len(self.entries)))
        order = self._epoch_order[1]
        # A file found unusable after the scan passes its turn to the next one in the order.
        for step in range(len(self.entries)):
            entry = self.entries[order[(position + step) % len(self.entries)]]
            if self.usable(entry):
                return entry
        raise UsageError(f"--data_dir {self.data_dir}: no usable video left")

    def __getitem__(self, item: int):
        while True:  # every retry follows a length correction or a drop, so this ends
            entry = self._entry_for(item)
            rng = np.random.default_rng([self.seed, self.rank, _ITEM_STREAM, item])
            start = int(rng.integers(0, entry.meta.num_frames - self.seq_len + 1))
            clip = self.read_or_repair(entry, start)
            if clip is not None:
                return clip, entry.label


class VideoClipDataset(ShardClips):
    """Deterministic clips for sampling and evaluation: clip i = file i (sorted), frames
    [start, start + seq_len). A file shorter than start + seq_len gives its last window.

    `__getitem__(i)` -> (video (C, T, H, W) float32 in [-1, 1], class index or -1).
    """

    def __init__(self, data_dir, image_size: int, seq_len: int, *, start: int = 0, **shard):
        if start < 0:
            raise UsageError(f"start frame must be >= 0, got {start}")
        super().__init__(data_dir, image_size, seq_len, **shard)
        self.start = start

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        while self.usable(entry):
            clip = self.read_or_repair(entry, min(self.start, entry.meta.num_frames - self.seq_len))
            if clip is not None:
                return clip, entry.label
        raise UsageError(f"clip {index}: video {entry.path} has no {self.seq_len} frames")


# --------------------------------------------------------------------------- training batches
def _ignore_stop_signals(worker_id):
    # Launchers (mpirun, SLURM, timeout) signal the whole process group: a worker must not die
    # of the stop signal that asks the main process to finish its step and checkpoint.
    for stop in dist.STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


class VideoLoader:
    """Endless iterator of `(video, cond)`: video float32 (N, C, T, H, W) in [-1, 1], cond
    `{"y": LongTensor (N,)}` with class conditioning, else `{}`. Its state is the number of
    items delivered: a fresh loader with the same seed, rank and world size continues exactly."""

    def __init__(self, dataset: RandomClipDataset, batch_size: int, num_workers: int):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.seed, self.rank, self.world_size = dataset.seed, dataset.rank, dataset.world_size
        self.class_names, self.num_classes = dataset.class_names, dataset.num_classes
        self.paths = dataset.paths  # this rank's usable files
        self._consumed = 0
        self._batches = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:
            self._batches = iter(DataLoader(
                self.dataset,
                # item indices consumed, consumed + 1, ... forever
                batch_sampler=BatchSampler(itertools.count(self._consumed), self.batch_size,
                                           drop_last=False),
                num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                worker_init_fn=_ignore_stop_signals,
                # Worker base seeds come from this generator, not the global torch RNG, so
                # starting a loader does not shift the training run's random stream.
                generator=torch.Generator().manual_seed(self.seed)))
        video, label = next(self._batches)  # (N, C, T, H, W), (N,)
        self._consumed += video.shape[0]
        return video, ({"y": label} if self.dataset.class_cond else {})

    def state_dict(self) -> dict:
        return {"items_consumed": self._consumed, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        changed = [k for k in ("seed", "rank", "world_size") if state.get(k) != mine[k]]
        if changed:
            warnings.warn("data loader state saved with different "
                          + ", ".join(f"{k} ({state.get(k)} -> {mine[k]})" for k in changed)
                          + ": the data order will not continue exactly", stacklevel=2)
        self._consumed = int(state["items_consumed"])
        self._batches = None  # restart the workers at the restored position


def load_data(*, data_dir, batch_size: int, image_size: int, seq_len: int,
              class_cond: bool = False, rgb: bool = True, rank: int = 0, world_size: int = 1,
              seed: int = 0, num_workers: int = 2) -> VideoLoader:
    """Endless batches of `seq_len`-frame training clips from this rank's share of the videos
    below `data_dir`, item k a pure function of (seed, rank, k) (`RandomClipDataset`)."""
    for name, value in (("batch_size", batch_size), ("image_size", image_size),
                        ("seq_len", seq_len), ("world_size", world_size)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}")
    if not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise UsageError(f"--num_workers must be >= 0, got {num_workers!r}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")
    # Plain ints: numpy integers pass the checks above, not BatchSampler's.
    dataset = RandomClipDataset(data_dir, int(image_size), int(seq_len), class_cond=class_cond,
                                rgb=rgb, rank=int(rank), world_size=int(world_size),
                                seed=int(seed))
    return VideoLoader(dataset, int(batch_size), int(num_workers))
