"""A sampling run on disk as it goes: finished chunks, then the final npz files.

Samples [k * size, (k + 1) * size) form chunk k, saved as `chunks/chunk_KKKK.npz` the moment it
is complete (written to a temporary name, then renamed: a chunk file is always whole). A rerun
of the same command skips the chunks that exist. When all are there, the final npz files are
streamed together from them one chunk at a time (rank 0 never holds more than one chunk) and the
chunk files are removed. Because every sample depends on its seed and index only, and a chunk's
batches start at the chunk, a run cut short and resumed writes the same bytes as one that never
stopped.
"""
import re
from pathlib import Path

import numpy as np

from .npzfile import PARTIAL_GLOB, NpzArray, read_npz, write_npz
from .ordered import global_batches
from .output import GT_PREFIX, npz_name

CHUNK_DIR = "chunks"
_CHUNK_FILE = re.compile(r"^chunk_(\d{4,})\.npz$")


class ChunkStore:
    """Chunks of one run. `fields`: the per-sample arrays each chunk holds, in order, as
    name -> (item shape, numpy dtype); "samples" first, then optionally "gt" and "labels"."""

    def __init__(self, folder, num_samples, chunk_size, fields):
        if num_samples < 1 or chunk_size < 1:
            raise ValueError(f"num_samples={num_samples} and chunk_size={chunk_size} must be >= 1")
        self.folder, self.fields = Path(folder), dict(fields)
        self.num_samples, self.chunk_size = num_samples, chunk_size

    @property
    def chunk_dir(self):
        return self.folder / CHUNK_DIR

    def ranges(self):
        """[range of sample indices] of every chunk, in order (cut as batches are)."""
        return global_batches(self.num_samples, self.chunk_size)

    def path(self, k):
        return self.chunk_dir / f"chunk_{k:04d}.npz"

    def finished(self):
        """Indices of the chunks already on disk."""
        if not self.chunk_dir.is_dir():
            return []
        found = (_CHUNK_FILE.match(p.name) for p in self.chunk_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < len(self.ranges()))

    def save(self, k, arrays):
        """Write chunk k (arrays: name -> (n, *item shape) array, n = the chunk's length)."""
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        expected = len(self.ranges()[k])
        for name, (shape, dtype) in self.fields.items():
            if arrays[name].shape != (expected, *shape):
                raise ValueError(f"chunk {k}: {name} has shape {arrays[name].shape}, "
                                 f"expected {(expected, *shape)}")
        write_npz(self.path(k), [np.asarray(arrays[name], dtype=dtype)
                                 for name, (_, dtype) in self.fields.items()])

    def discard(self):
        """Remove the chunks of an earlier run of this folder (--overwrite True)."""
        if self.chunk_dir.is_dir():
            for path in self.chunk_dir.glob("chunk_*.npz"):
                path.unlink()

    def _column(self, name):
        """NpzArray streaming field `name` over all chunks, one chunk read at a time."""
        shape, dtype = self.fields[name]
        position = list(self.fields).index(name)
        blocks = (read_npz(self.path(k))[position] for k in range(len(self.ranges())))
        return NpzArray((self.num_samples, *shape), dtype, blocks)

    def final_paths(self):
        """name -> path of the final npz files ("samples", and "gt" when the run keeps it)."""
        shape = (self.num_samples, *self.fields["samples"][0])
        paths = {"samples": self.folder / npz_name(shape)}
        if "gt" in self.fields:
            paths["gt"] = self.folder / npz_name(shape, GT_PREFIX)
        return paths

    def complete_files(self):
        """The final npz files of a finished run ([] while chunks remain or files are missing:
        an interrupted join is redone from the chunks)."""
        paths = list(self.final_paths().values())
        if self.chunk_dir.exists() or not all(p.exists() for p in paths):
            return []
        return paths

    def assemble(self):
        """Join the chunks into the final npz files (labels as arr_1), then remove the chunks."""
        missing = sorted(set(range(len(self.ranges()))) - set(self.finished()))
        if missing:
            raise RuntimeError(f"{self.chunk_dir}: chunks {missing} are missing")
        paths = self.final_paths()
        extra = ["labels"] if "labels" in self.fields else []
        for name, path in paths.items():
            write_npz(path, [self._column(n) for n in [name, *extra]])
        for k in range(len(self.ranges())):
            self.path(k).unlink()
        # Files half-written when an earlier attempt was killed (write_npz's temporary names).
        for stale in [*self.chunk_dir.glob(PARTIAL_GLOB), *self.folder.glob(PARTIAL_GLOB)]:
            stale.unlink()
        self.chunk_dir.rmdir()
        return paths


__all__ = ["CHUNK_DIR", "ChunkStore"]
