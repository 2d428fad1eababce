"""A sampling run's files: npz files written part by part, and the chunks a run is made of.

`np.savez` needs every array in memory at once and stamps the current time into the zip, so
two runs that sample the same videos write different bytes. `write_npz` streams each array from
consecutive row blocks (one sampling chunk at a time) with a fixed time stamp into a temporary
file that is renamed into place only when complete.

Samples [k * size, (k + 1) * size) form chunk k, saved as `chunks/chunk_KKKK.npz` the moment it
is complete (a chunk file is always whole). When all are there, the final npz files are streamed
together from them (rank 0 never holds more than one chunk) and the chunk files are removed.
Every sample depends on its seed and index only, and a chunk's batches start at the chunk, so a
run cut short and resumed writes the same bytes as one that never stopped.
"""
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_path, remove_stale_temp_files
from .batch import global_batches

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
GT_PREFIX = "gt_"
CHUNK_DIR = "chunks"
_CHUNK_FILE = re.compile(r"^chunk_(\d{4,})\.npz$")


def _write_member(archive, name, shape, dtype, blocks):
    """Array `name` of `shape` and `dtype`, written from its rows block by block."""
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    rows = 0
    with archive.open(info, "w", force_zip64=True) as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": shape}
        np.lib.format.write_array_header_1_0(out, header)
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.shape[1:] != shape[1:]:
                raise ValueError(f"{name}: block of shape {block.shape} does not fit {shape}")
            out.write(block.tobytes())
            rows += len(block)
    if rows != shape[0]:
        raise ValueError(f"{name}: {rows} rows written, the header says {shape[0]}")


def write_npz(path, arrays):
    """Write `arrays` (in order: arr_0, arr_1, ...) to `path` atomically; an item is an array,
    or (full shape, dtype, its rows as blocks) to stream it."""
    with (atomic_path(path) as tmp,
          zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive):
        for k, item in enumerate(arrays):
            if not isinstance(item, tuple):
                item = np.asarray(item)
                item = (item.shape, item.dtype, [item])
            _write_member(archive, f"arr_{k}.npy", *item)
    return Path(path)


def _read_npy_header(file):
    """(shape, fortran_order, dtype) from the .npy header at the file's position, leaving it at
    the first byte of the data."""
    major, _ = np.lib.format.read_magic(file)
    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                   else np.lib.format.read_array_header_2_0)
    return read_header(file)


def npz_shape(path):
    """The shape of arr_0 of an npz file from its header alone (None if it has no arr_0):
    checking a 10 GB sample file against its record must not read it."""
    with zipfile.ZipFile(path) as archive:
        if "arr_0.npy" not in archive.namelist():
            return None
        with archive.open("arr_0.npy") as member:
            shape, _, _ = _read_npy_header(member)
    return shape


def map_npz_array(path):
    """arr_0 of an npz file as a read-only np.memmap, when the file stores it uncompressed (as
    write_npz does), else None. Rows are read from disk only when indexed, so evaluating 25,600
    BAIR samples never holds the 5 GB file in memory."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo("arr_0.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local_header = raw.read(30)  # fixed part of the zip local file header
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        raw.seek(info.header_offset + 30 + name_length + extra_length)
        shape, fortran_order, dtype = _read_npy_header(raw)
        offset = raw.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")


def npz_name(shape, prefix=""):
    """'16x20x64x64x3.npz' for shape (16, 20, 64, 64, 3)."""
    return prefix + "x".join(str(s) for s in shape) + ".npz"


class ChunkStore:
    """Chunks of one run. `fields`: the per-sample arrays each chunk holds, in order, as
    name -> (item shape, numpy dtype); "samples" first, then optionally "gt" and "labels"."""

    def __init__(self, folder, num_samples, chunk_size, fields):
        if num_samples < 1 or chunk_size < 1:
            raise ValueError(f"num_samples={num_samples} and chunk_size={chunk_size} must be >= 1")
        self.folder, self.fields, self.num_samples = Path(folder), dict(fields), num_samples
        self.chunk_dir = self.folder / CHUNK_DIR
        # [range of sample indices] of every chunk, in order (cut as batches are)
        self.ranges = global_batches(num_samples, chunk_size)

    def path(self, k):
        return self.chunk_dir / f"chunk_{k:04d}.npz"

    def finished(self):
        """Indices of the chunks already on disk."""
        found = (_CHUNK_FILE.match(p.name) for p in self.chunk_dir.glob("chunk_*.npz"))
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < len(self.ranges))

    def save(self, k, arrays):
        """Write chunk k (arrays: name -> (n, *item shape) array, n = the chunk's length)."""
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        expected = len(self.ranges[k])
        for name, (shape, dtype) in self.fields.items():
            if arrays[name].shape != (expected, *shape):
                raise ValueError(f"chunk {k}: {name} has shape {arrays[name].shape}, "
                                 f"expected {(expected, *shape)}")
        write_npz(self.path(k), [np.asarray(arrays[name], dtype=dtype)
                                 for name, (_, dtype) in self.fields.items()])

    def discard(self):
        """Remove the chunks of an earlier run of this folder (--overwrite True)."""
        for path in self.chunk_dir.glob("chunk_*.npz"):  # none when there is no such folder
            path.unlink()

    def _column(self, name):
        """Field `name` over all chunks as (shape, dtype, blocks), one chunk read at a time."""
        shape, dtype = self.fields[name]
        member = f"arr_{list(self.fields).index(name)}"  # a chunk's other fields stay unread
        blocks = (np.load(self.path(k))[member] for k in range(len(self.ranges)))
        return (self.num_samples, *shape), dtype, blocks

    def final_paths(self):
        """name -> path of the final npz files ("samples", and "gt" when the run keeps it)."""
        shape = (self.num_samples, *self.fields["samples"][0])
        return {name: self.folder / npz_name(shape, prefix)
                for name, prefix in (("samples", ""), ("gt", GT_PREFIX)) if name in self.fields}

    def complete_files(self):
        """The final npz files of a finished run ([] while chunks remain or files are missing:
        an interrupted join is redone from the chunks)."""
        paths = list(self.final_paths().values())
        return [] if self.chunk_dir.exists() or not all(p.exists() for p in paths) else paths

    def assemble(self):
        """Join the chunks into the final npz files (labels as arr_1), then remove the chunks."""
        missing = sorted(set(range(len(self.ranges))) - set(self.finished()))
        if missing:
            raise RuntimeError(f"{self.chunk_dir}: chunks {missing} are missing")
        paths = self.final_paths()
        extra = ["labels"] if "labels" in self.fields else []
        for name, path in paths.items():
            write_npz(path, [self._column(n) for n in [name, *extra]])
        for k in range(len(self.ranges)):
            self.path(k).unlink()
        # Files half-written when an earlier attempt was killed.
        remove_stale_temp_files(self.chunk_dir)
        remove_stale_temp_files(self.folder)
        self.chunk_dir.rmdir()
        return paths
