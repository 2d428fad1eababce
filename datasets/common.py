"""What the dataset scripts share: the output flags, split folders, the worker pool, warnings."""
import sys
from multiprocessing import Pool
from pathlib import Path

from ramvid.data import is_video
from ramvid.errors import UsageError
from ramvid.flags import Flag, positive

OUT_DIR = Flag("out_dir", None, "writes out_dir/train and out_dir/test", required=True)
OVERWRITE = Flag("overwrite", False, "replace videos already in out_dir/train and out_dir/test")


def workers_flag(items):
    return Flag("workers", 1, f"{items} converted in parallel", check=positive)


def parallel_map(fn, jobs, workers, chunksize=1):
    """fn(job) of every job, in any order: in `workers` processes, or with one worker in this
    process (easier to debug and to interrupt)."""
    if workers == 1:
        yield from map(fn, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize)


def prepare_split_dir(out_dir, split, overwrite):
    """Create `out_dir/split`; refuse to mix with videos already there unless `overwrite`,
    which deletes them, so that a smaller new set leaves no stale clips."""
    split_dir = Path(out_dir) / split
    old = [p for p in split_dir.glob("*") if is_video(p)]
    if old and not overwrite:
        raise UsageError(
            f"{split_dir} already holds {len(old)} videos; pass --overwrite True to replace them")
    for path in old:
        path.unlink()
    split_dir.mkdir(parents=True, exist_ok=True)
    return split_dir


def warn(message):
    print(f"warning: {message}", file=sys.stderr)
