"""npz files written part by part, atomically, with the same bytes for the same arrays.

`np.savez` needs every array in memory at once and stamps the current time into the zip, so
two runs that sample the same videos write different bytes. `write_npz` takes each array as
its shape, dtype and an iterator of consecutive row blocks (one sampling chunk at a time), writes
`arr_0`, `arr_1`, ... as `np.load` reads them, with a fixed time stamp, to a temporary file
that is renamed into place only when complete.
"""
import os
import zipfile
from pathlib import Path

import numpy as np

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
PARTIAL_GLOB = ".*.npz.*.partial"  # what a killed write leaves behind


class NpzArray:
    """One array of an npz file: its full shape and dtype, and its rows block by block."""

    def __init__(self, shape, dtype, blocks):
        self.shape, self.dtype, self.blocks = tuple(int(s) for s in shape), np.dtype(dtype), blocks

    @classmethod
    def whole(cls, array):
        array = np.asarray(array)
        return cls(array.shape, array.dtype, [array])


def _write_member(archive, name, item):
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    rows = 0
    with archive.open(info, "w", force_zip64=True) as out:
        header = {"descr": np.lib.format.dtype_to_descr(item.dtype), "fortran_order": False,
                  "shape": item.shape}
        np.lib.format.write_array_header_1_0(out, header)
        for block in item.blocks:
            block = np.ascontiguousarray(block, dtype=item.dtype)
            if block.shape[1:] != item.shape[1:]:
                raise ValueError(f"{name}: block of shape {block.shape} does not fit {item.shape}")
            out.write(block.tobytes())
            rows += len(block)
    if rows != item.shape[0]:
        raise ValueError(f"{name}: {rows} rows written, the header says {item.shape[0]}")


def write_npz(path, arrays):
    """Write `arrays` (NpzArray or ndarray, in order: arr_0, arr_1, ...) to `path` atomically."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for k, item in enumerate(arrays):
                if not isinstance(item, NpzArray):
                    item = NpzArray.whole(item)
                _write_member(archive, f"arr_{k}.npy", item)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _read_npy_header(file):
    """(shape, fortran_order, dtype) from the .npy header at the file's position, leaving it at
    the first byte of the data."""
    major, _ = np.lib.format.read_magic(file)
    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                   else np.lib.format.read_array_header_2_0)
    return read_header(file)


def npz_shape(path, name="arr_0"):
    """The shape of array `name` of an npz file from its header alone (None if it has no such
    array): checking a 10 GB sample file against its record must not read it."""
    with zipfile.ZipFile(path) as archive:
        if f"{name}.npy" not in archive.namelist():
            return None
        with archive.open(f"{name}.npy") as member:
            shape, _, _ = _read_npy_header(member)
    return shape


def map_npz_array(path, name="arr_0"):
    """Array `name` of an npz file as a read-only np.memmap, when the file stores it
    uncompressed (as write_npz does), else None. Rows are read from disk only when indexed, so
    evaluating 25,600 BAIR samples never holds the 5 GB file in memory."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local_header = raw.read(30)  # fixed part of the zip local file header
        name_length = int.from_bytes(local_header[26:28], "little")
        extra_length = int.from_bytes(local_header[28:30], "little")
        raw.seek(info.header_offset + 30 + name_length + extra_length)
        shape, fortran_order, dtype = _read_npy_header(raw)
        offset = raw.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")


def read_npz(path):
    """[arr_0, arr_1, ...] of an npz file."""
    with np.load(path) as archive:
        return [archive[f"arr_{k}"] for k in range(len(archive.files))]


__all__ = ["PARTIAL_GLOB", "NpzArray", "map_npz_array", "npz_shape", "read_npz",
           "write_npz"]
