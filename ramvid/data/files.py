"""Finding videos in a data directory, naming their classes, and reporting bad files once."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

from ..errors import UsageError

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


def class_name_of(path: Path) -> str:
    """The class of a video is its file name up to the first underscore ("cat_03.mp4" -> "cat")."""
    return path.stem.split("_", 1)[0]


def class_names_of(paths: list[Path]) -> list[str]:
    return sorted({class_name_of(p) for p in paths})
