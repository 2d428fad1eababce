"""Frame-accurate random access into video files with PyAV (docs/DATA_LOADER.md). Frame i of a
constant-rate stream is shown at `first_pts + i / (fps * time_base)`; a stream whose timestamps do
not follow that (variable frame rate, gif delays, no trustworthy frame count) gets a table of
every frame's timestamp, read by demuxing without decoding.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple

import av
import av.logging
import numpy as np
from av.video.reformatter import VideoReformatter

from ..errors import UsageError

# Containers whose stream header counts frames from a real index. Others (mkv, webm, gif, ...)
# report 0 or a guess, so their frames are counted by demuxing.
_INDEXED_CONTAINERS = frozenset({".mp4", ".mov", ".avi"})


class VideoInfo(NamedTuple):
    num_frames: int
    fps: float
    width: int
    height: int


class VideoReadError(UsageError):
    """The file is not a readable video (empty, truncated, no video stream, corrupt)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


class ShortVideoError(UsageError):
    """Decoding ended before the window was complete; `available` of `reported` frames exist."""

    def __init__(self, message: str, available: int, reported: int):
        super().__init__(message)
        self.available, self.reported = available, reported


@dataclass
class StreamMeta:
    """What random access into one video stream needs. Mutable: lengths get corrected."""

    num_frames: int
    fps: Fraction  # frames per second, maps timestamps to indices when there is no table
    time_base: Fraction  # seconds per pts tick
    first_pts: int  # pts of the first displayed frame
    width: int
    height: int
    stream_index: int
    pts_table: np.ndarray | None = None  # (num_frames,) sorted pts of every frame, when built

    def pts_of(self, index: int) -> int:
        if self.pts_table is not None:
            return int(self.pts_table[min(index, len(self.pts_table) - 1)])
        return self.first_pts + round(Fraction(index) / (self.fps * self.time_base))

    def index_of(self, pts: int) -> int:
        if self.pts_table is not None:
            table = self.pts_table
            i = int(np.searchsorted(table, pts))  # the nearer of the entries around pts
            if i == len(table) or (i > 0 and pts - table[i - 1] < table[i] - pts):
                i -= 1
            return i
        return round((pts - self.first_pts) * self.time_base * self.fps)


class _Overshoot(Exception):
    """The seek landed after the first wanted frame."""


class _IrregularTimestamps(Exception):
    """Consecutive frames did not map to consecutive indices under the constant-rate formula."""


_converters = threading.local()


def to_rgb(frame) -> np.ndarray:
    """uint8 (H, W, 3). One converter per thread and process: building one per frame costs
    more than the conversion. Single-threaded, because the DataLoader workers already use the
    cores and a threaded converter hangs in a forked worker."""
    if getattr(_converters, "owner", None) != os.getpid():
        _converters.reformatter, _converters.owner = VideoReformatter(), os.getpid()
    return _converters.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _usable_packet(packet) -> bool:
    return packet.size > 0 and not packet.is_corrupt and not packet.is_discard


def _open(path: Path):
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoReadError(path, f"cannot open ({_failure_reason(path, error)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream")
    return container


_logging_lock = threading.Lock()  # FFmpeg's log level is global; probes run in threads


def _failure_reason(path: Path, error: Exception) -> str:
    """FFmpeg's own last error line (e.g. "moov atom not found"), which the exception lacks
    while FFmpeg logging is off; it is switched on for one more attempt, captured, restored."""
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return "empty file"
    message, strerror = str(error), getattr(error, "strerror", None)
    logs = []
    with _logging_lock:
        level, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)
        try:
            # This thread's lines only (the exception's "last error log" is the whole process's:
            # another probe failing meanwhile would name its own file's error), kept out of the
            # user's log.
            with av.logging.Capture(local=True) as logs:
                av.open(str(path)).close()
        except (av.FFmpegError, OSError) as again:
            message, strerror = str(again), getattr(again, "strerror", None)
        finally:
            av.logging.set_level(level)
            av.logging.set_skip_repeated(skip_repeated)
    errors = [text.strip() for log_level, _, text in logs if log_level <= av.logging.ERROR]
    return errors[-1] if errors else strerror or message


def _count_frames(path: Path, meta: StreamMeta) -> None:
    """Set meta's frame count by demuxing the packets without decoding them and, when every
    packet has a timestamp, its table of sorted pts and its first pts."""
    with _open(path) as container:
        stamps = []
        try:
            for packet in container.demux(container.streams[meta.stream_index]):
                if _usable_packet(packet):
                    stamps.append(packet.pts)
        except av.FFmpegError:
            pass  # a truncated file: the packets read so far are the file's frames
    meta.num_frames = len(stamps)
    if stamps and None not in stamps:
        meta.pts_table = np.unique(np.asarray(stamps, dtype=np.int64))
        meta.num_frames, meta.first_pts = len(meta.pts_table), int(meta.pts_table[0])


def _tail_matches(container, stream, meta: StreamMeta) -> bool:
    """Does the last packet's timestamp map to index num_frames - 1? (cheap: one GOP demuxed)"""
    last = meta.num_frames - 1
    try:
        container.seek(meta.pts_of(last), stream=stream, backward=True, any_frame=False)
        stamps = [p.pts for p in container.demux(stream) if _usable_packet(p) and p.pts is not None]
    except av.FFmpegError:
        return False
    return bool(stamps) and meta.index_of(max(stamps)) == last


_cache: dict[tuple[str, int, int], StreamMeta] = {}


def stream_meta(path) -> StreamMeta:
    """Cached metadata of `path` (this process); raises VideoReadError for unreadable files."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise VideoReadError(path, error.strerror) from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as error:
            raise VideoReadError(path, f"cannot decode ({error})") from None
        if first is None:
            raise VideoReadError(path, "no decodable frame")
        meta = StreamMeta(stream.frames, Fraction(rate) if rate else Fraction(0),
                          Fraction(stream.time_base), first.pts if first.pts is not None else 0,
                          first.width, first.height, stream.index)
        trusted = (path.suffix.lower() in _INDEXED_CONTAINERS and meta.num_frames > 0
                   and meta.fps > 0 and first.pts is not None
                   and _tail_matches(container, stream, meta))
    if not trusted:
        _count_frames(path, meta)
    _cache[key] = meta
    return meta


def probe(path) -> VideoInfo:
    """Number of frames, frame rate and size of the first video stream of `path`."""
    meta = stream_meta(path)
    return VideoInfo(meta.num_frames, float(meta.fps), meta.width, meta.height)


def _decode_once(path, meta, start, length, convert, seek_to, counter):
    """Decode from the keyframe before frame `seek_to` (None: from the first frame)."""
    frames = []
    previous = None
    with _open(path) as container:
        stream = container.streams[meta.stream_index]
        if seek_to is not None:
            container.seek(meta.pts_of(seek_to), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                counter[0] += 1
                if frame.pts is not None:
                    index = meta.index_of(frame.pts)
                elif previous is not None or seek_to is None:
                    index = 0 if previous is None else previous + 1
                else:
                    raise _Overshoot  # no timestamp to place the first frame after a seek
                if previous is None and index > start:
                    raise _Overshoot
                if index >= start:
                    if index != start + len(frames):
                        raise _IrregularTimestamps
                    frames.append(convert(frame))
                    if len(frames) == length:
                        return frames
                previous = index
        except av.FFmpegError:
            pass  # undecodable data ends the usable part of the file
    available = previous + 1 if previous is not None else min(start, meta.num_frames)
    # The container over-reported its frames: trust what decoded, for every later window.
    reported, meta.num_frames = meta.num_frames, min(meta.num_frames, available)
    raise ShortVideoError(f"{path}: frames [{start}, {start + length}) requested, only "
                          f"{available} decode", available, reported)


def decode_window(path, meta: StreamMeta, start: int, length: int, convert: Callable, counter=None):
    """Frames [start, start + length) of `path`, each passed through `convert`.

    Raises ShortVideoError (with the number of frames that do exist) when the file ends early,
    after lowering meta.num_frames to that number.
    `counter`, a one-element list, accumulates the number of frames decoded (for tests).
    """
    counter = counter if counter is not None else [0]
    back = 0
    while True:
        # Some demuxers seek by decode time, so with B-frames the landing keyframe can lie
        # after the wanted frame; aim further back (1, 2, 4, ... frames) until it does not.
        seek_to = start - back if start - back > 0 else None
        try:
            return _decode_once(path, meta, start, length, convert, seek_to, counter)
        except _Overshoot:
            if seek_to is None:
                raise VideoReadError(path, f"first frame is not at pts {meta.first_pts}")
            back = 2 * back or 1
        except _IrregularTimestamps:
            if meta.pts_table is not None:
                raise VideoReadError(path, f"decoder skipped frames near {start}") from None
            _count_frames(Path(path), meta)
            if meta.pts_table is None:
                raise VideoReadError(path, "frame timestamps are irregular") from None


def read_window(path, start: int, length: int) -> np.ndarray:
    """Decoded frames [start, start + length) of `path`: uint8 (T, H, W, 3), no preprocessing."""
    if start < 0 or length < 1:
        raise ValueError(f"read_window: need start >= 0 and length >= 1, got {start}, {length}")
    meta = stream_meta(path)
    if start + length > meta.num_frames:
        raise ShortVideoError(f"{path}: frames [{start}, {start + length}) requested, the video "
                              f"has {meta.num_frames}", meta.num_frames, meta.num_frames)
    return np.stack(decode_window(path, meta, start, length, to_rgb))  # (T, H, W, 3)
