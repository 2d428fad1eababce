"""Clips of `seq_len` preprocessed frames: which files a rank uses, and how item k is chosen."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UsageError
from .decode import (
    ShortVideoError,
    StreamMeta,
    VideoReadError,
    decode_window,
    stream_meta,
    to_rgb,
)
from .files import class_name_of, class_names_of, list_videos, warn_once
from .preprocess import frames_to_tensor, preprocess_frame

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
        return str(error).removeprefix(f"{path}: ")


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


@dataclass
class Shard:
    """The usable videos of one rank, in sorted path order."""

    data_dir: Path
    entries: list[VideoEntry]
    class_names: list[str]
    seq_len: int

    @classmethod
    def scan(cls, data_dir, seq_len: int, class_cond: bool, rank: int, world_size: int):
        data_dir = Path(data_dir)
        videos = list_videos(data_dir)
        if not videos:
            raise UsageError(
                f"--data_dir {data_dir}: found {_count_files(data_dir)} files, none of them a "
                "video (.mp4 .avi .gif .mov .mkv .webm)"
            )
        if world_size > len(videos):
            raise UsageError(
                f"--data_dir {data_dir}: {len(videos)} video files for {world_size} ranks; "
                "every rank needs at least one file"
            )
        # Classes are numbered over all files before sharding, so every rank agrees.
        class_names = class_names_of(videos)
        class_index = {name: i for i, name in enumerate(class_names)}
        shard = videos[rank::world_size]
        with ThreadPoolExecutor(max_workers=min(4, len(shard))) as pool:
            metas = list(pool.map(_meta_or_reason, shard))
        entries, rejected = [], []
        for path, meta in zip(shard, metas):
            if isinstance(meta, str):
                reason = meta
            elif meta.num_frames < seq_len:
                reason = f"{meta.num_frames} frames < --seq_len {seq_len}"
            else:
                label = class_index[class_name_of(path)] if class_cond else -1
                entries.append(VideoEntry(path, meta, label))
                continue
            rejected.append(f"{path.relative_to(data_dir)} ({reason})")
            warn_once(str(path), f"skipping video {path}: {reason}")
        if not entries:
            where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
            listed = ", ".join(rejected[:_LISTED_IN_ERRORS])
            unlisted = len(rejected) - _LISTED_IN_ERRORS
            more = f", ... {unlisted} more" if unlisted > 0 else ""
            raise UsageError(
                f"--data_dir {data_dir}{where}: no usable video; found {_count_files(data_dir)} "
                f"files, {len(shard)} videos, 0 of >= {seq_len} frames: {listed}{more}"
            )
        return cls(data_dir, entries, class_names, seq_len)

    def usable(self, entry: VideoEntry) -> bool:
        return not entry.dropped and entry.meta.num_frames >= self.seq_len

    def correct_length(self, entry: VideoEntry, available: int) -> None:
        """The container over-reported its frames; trust what decoded."""
        reported = entry.meta.num_frames
        entry.meta.num_frames = min(reported, available)
        if self.usable(entry):
            warn_once(
                f"{entry.path}#length",
                f"video {entry.path}: header says {reported} frames, only {available} decode",
            )
        else:
            warn_once(
                str(entry.path),
                f"skipping video {entry.path}: only {available} frames decode "
                f"< --seq_len {self.seq_len}",
            )

    def drop(self, entry: VideoEntry, reason: str) -> None:
        entry.dropped = True
        warn_once(str(entry.path), f"skipping video {entry.path}: {reason}")


class _ClipReader:
    """Reads preprocessed clips from a shard, correcting lengths that turn out wrong."""

    def __init__(self, shard: Shard, image_size: int, rgb: bool):
        self.shard = shard
        self.image_size = image_size
        self.rgb = rgb

    def _frame(self, frame) -> np.ndarray:
        return preprocess_frame(Image.fromarray(to_rgb(frame)), self.image_size, self.rgb)

    def read(self, entry: VideoEntry, start: int) -> torch.Tensor:
        """(C, T, H, W) float32 in [-1, 1]; raises ShortVideoError/VideoReadError."""
        frames = decode_window(entry.path, entry.meta, start, self.shard.seq_len, self._frame)
        return frames_to_tensor(frames)

    def read_or_repair(self, entry: VideoEntry, start: int) -> torch.Tensor | None:
        """The clip, or None after correcting the file's length or dropping it (then retry)."""
        try:
            return self.read(entry, start)
        except ShortVideoError as error:
            self.shard.correct_length(entry, error.available)
        except VideoReadError as error:
            self.shard.drop(entry, str(error).removeprefix(f"{entry.path}: "))
        return None


class RandomClipDataset(Dataset):
    """Item k of rank r: a random window of a file; a pure function of (seed, r, k).

    Files are visited in a fresh random order every epoch (epoch = k // number of files);
    the window start is drawn from `default_rng([seed, rank, 0, k])`. Items therefore do not
    depend on the number of DataLoader workers, and resuming at item k replays the same data.
    """

    def __init__(self, shard: Shard, image_size: int, rgb: bool, seed: int, rank: int):
        self.shard = shard
        self.reader = _ClipReader(shard, image_size, rgb)
        self.seed, self.rank = seed, rank
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            rng = np.random.default_rng([self.seed, self.rank, _EPOCH_STREAM, epoch])
            self._epoch_order = (epoch, rng.permutation(len(self.shard.entries)))
        return self._epoch_order[1]

    def _entry_for(self, item: int) -> VideoEntry:
        entries = self.shard.entries
        epoch, position = divmod(item, len(entries))
        order = self._order(epoch)
        # A file found unusable after the scan passes its turn to the next one in the order.
        for step in range(len(entries)):
            entry = entries[order[(position + step) % len(entries)]]
            if self.shard.usable(entry):
                return entry
        raise UsageError(f"--data_dir {self.shard.data_dir}: no usable video left")

    def __getitem__(self, item: int):
        while True:  # every retry follows a length correction or a drop, so this ends
            entry = self._entry_for(item)
            rng = np.random.default_rng([self.seed, self.rank, _ITEM_STREAM, item])
            last_start = entry.meta.num_frames - self.shard.seq_len
            start = int(rng.integers(0, last_start + 1))
            clip = self.reader.read_or_repair(entry, start)
            if clip is not None:
                return clip, entry.label


class VideoClipDataset(Dataset):
    """Deterministic clips for sampling and evaluation: clip i = file i (sorted), frames
    [start, start + seq_len). A file shorter than start + seq_len gives its last window.

    `__getitem__(i)` -> (video (C, T, H, W) float32 in [-1, 1], class index or -1).
    """

    def __init__(
        self,
        data_dir,
        image_size: int,
        seq_len: int,
        *,
        class_cond: bool = False,
        rgb: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if start < 0:
            raise UsageError(f"start frame must be >= 0, got {start}")
        self.shard = Shard.scan(data_dir, seq_len, class_cond, rank, world_size)
        self.reader = _ClipReader(self.shard, image_size, rgb)
        self.start = start
        self.class_names = self.shard.class_names
        self.num_classes = len(self.class_names)

    @property
    def paths(self) -> list[Path]:
        return [entry.path for entry in self.shard.entries]

    def __len__(self) -> int:
        return len(self.shard.entries)

    def __getitem__(self, index: int):
        entry = self.shard.entries[index]
        while self.shard.usable(entry):
            start = min(self.start, entry.meta.num_frames - self.shard.seq_len)
            clip = self.reader.read_or_repair(entry, start)
            if clip is not None:
                return clip, entry.label
        raise UsageError(f"clip {index}: video {entry.path} has no {self.shard.seq_len} frames")
