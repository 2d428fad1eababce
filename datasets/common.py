"""Helpers shared by the dataset scripts: class names in file names, output folders, worker
pools, warnings.

A problem with the user's input (a flag, a file) is a `ramvid.errors.UsageError`: the scripts'
`main` runs under `ramvid.flags.user_errors()`, which reports it as one line, exit code 2.
"""
import re
import sys
from multiprocessing import Pool
from pathlib import Path

from ramvid.data import is_video
from ramvid.errors import UsageError
from ramvid.flags import Flag, positive

# The flags every preparation script shares.
OUT_DIR = Flag("out_dir", None, "writes out_dir/train and out_dir/test", required=True)
OVERWRITE = Flag("overwrite", False, "replace videos already in out_dir/train and out_dir/test")


def workers_flag(items):
    return Flag("workers", 1, f"{items} converted in parallel", check=positive)


def worker_pool(workers):
    """A multiprocessing Pool of `workers`, or with one worker the same interface run in this
    process (easier to debug and to interrupt)."""
    return Pool(workers) if workers > 1 else _InProcess()


class _InProcess:
    def imap_unordered(self, fn, jobs, chunksize=1):
        return map(fn, jobs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def class_token(label):
    """A class label as a file-name prefix: CamelCase alphanumerics, no spaces or underscores.

    'playing guitar' -> 'PlayingGuitar', "massaging person's head" -> 'MassagingPersonsHead',
    'passing American football (in game)' -> 'PassingAmericanFootballInGame'.
    """
    words = re.findall(r"[A-Za-z0-9]+", label.replace("'", ""))
    token = "".join(w[0].upper() + w[1:] for w in words)
    if not token:
        raise UsageError(f"label {label!r} has no letters or digits to name its class")
    return token


def prepare_split_dir(out_dir, split, overwrite):
    """Create `out_dir/split`; refuse to mix with videos already there unless `overwrite`.

    With `overwrite` the old videos are deleted, so a smaller new set leaves no stale clips.
    """
    split_dir = Path(out_dir) / split
    old = [p for p in split_dir.glob("*") if is_video(p)] \
        if split_dir.is_dir() else []
    if old and not overwrite:
        raise UsageError(
            f"{split_dir} already holds {len(old)} videos; pass --overwrite True to replace them")
    for path in old:
        path.unlink()
    split_dir.mkdir(parents=True, exist_ok=True)
    return split_dir


def warn(message):
    print(f"warning: {message}", file=sys.stderr)
