"""BAIR robot pushing (softmotion30_44k) TFRecords -> one lossless .mp4 per sequence.

    python datasets/bair.py --bair_dir path/to/softmotion30_44k --out_dir data/bair

Each tf.train.Example (frames `<i>/image_aux1/encoded`, raw 64x64x3 uint8) becomes
`out_dir/<split>/bair_<record file>_<k>.mp4`. No TensorFlow: the records, their checksums and
the protobuf are read here (docs/DATASETS.md).
"""
import re
import struct
import sys
import time
from pathlib import Path

import google_crc32c
import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python datasets/bair.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.common import (OUT_DIR, OVERWRITE, parallel_map, prepare_split_dir,  # noqa: E402
                             workers_flag)
from ramvid.errors import UsageError  # noqa: E402
from ramvid.flags import Flag, existing_dir, parse, user_errors  # noqa: E402
from ramvid.video_io import write_video  # noqa: E402

FRAME_SHAPE = (64, 64, 3)
FPS = 10  # the BAIR robot was recorded at about 10 Hz


# ----------------------------------------------------------------------------- TFRecord files
class TFRecordError(Exception):
    """A TFRecord file that is truncated, corrupted or not a tf.train.Example."""


def masked_crc32c(data):
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant, mod 2^32."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """Yield the data of every record of a TFRecord file, checking both checksums. A record is
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data), little
    endian."""
    with open(path, "rb") as f:
        offset = 0
        while header := f.read(12):
            if len(header) < 12:
                raise TFRecordError(f"{path}: truncated record header at byte {offset}")
            length, length_crc = struct.unpack("<QI", header)
            # Check the length before trusting it with a read of that size.
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(
                    f"{path}: length checksum mismatch in the record at byte {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: truncated record at byte {offset}")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(
                    f"{path}: data checksum mismatch in the record at byte {offset}")
            yield data
            offset += 12 + length + 4


def _read_varint(buf, pos):
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise TFRecordError("protobuf varint runs past the end of its message")
        byte, pos = buf[pos], pos + 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise TFRecordError("protobuf varint longer than 10 bytes")


def _bytes_fields(buf, number):
    """The values of the length-delimited field `number` of a serialized protobuf message; the
    other fields (varints, fixed 32/64-bit values, other numbers) are skipped."""
    buf, pos = memoryview(buf), 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        wire_type = key & 7
        if wire_type == 0:  # varint
            _, pos = _read_varint(buf, pos)
            continue
        if wire_type == 2:  # length-delimited
            size, pos = _read_varint(buf, pos)
        elif wire_type in (1, 5):  # fixed 64 / 32 bit
            size = 8 if wire_type == 1 else 4
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wire_type} (field {key >> 3})")
        if pos + size > len(buf):
            raise TFRecordError(f"protobuf field {key >> 3} runs past the end of its message")
        if key >> 3 == number and wire_type == 2:
            yield buf[pos:pos + size]
        pos += size


def parse_example(data):
    """A serialized tf.train.Example -> {feature name: [bytes, ...]}. Only bytes features are
    read; a float or int64 feature (BAIR's actions and positions) maps to []."""
    # Example.features = 1 -> Features.feature = 1, map entries (key = 1, value = 2)
    # -> Feature.bytes_list = 1 -> BytesList.value = 1
    features = {}
    for message in _bytes_fields(data, 1):
        for entry in _bytes_fields(message, 1):
            names = [bytes(name).decode("utf-8") for name in _bytes_fields(entry, 1)]
            if not names:
                raise TFRecordError("tf.train.Example feature entry without a name")
            features[names[-1]] = [bytes(value) for feature in _bytes_fields(entry, 2)
                                   for values in _bytes_fields(feature, 1)
                                   for value in _bytes_fields(values, 1)]
    return features


# ----------------------------------------------------------------------------- conversion
def sequence_frames(example, camera):
    """The frames of one parsed Example as (T, 64, 64, 3) uint8, steps 0, 1, ... in order."""
    frames = []
    while (key := f"{len(frames)}/{camera}/encoded") in example:
        values = example[key]
        if len(values) != 1 or len(values[0]) != np.prod(FRAME_SHAPE):
            size = len(values[0]) if len(values) == 1 else f"{len(values)} values"
            raise TFRecordError(f"feature {key} holds {size} bytes, expected one raw "
                                f"{'x'.join(map(str, FRAME_SHAPE))} uint8 frame")
        frames.append(np.frombuffer(values[0], np.uint8).reshape(FRAME_SHAPE))
    if not frames:
        raise TFRecordError(f"no feature 0/{camera}/encoded (features: {sorted(example)[:6]} ...)")
    return np.stack(frames)


def convert_file(job):
    """Write every sequence of one TFRecord file; returns the number written."""
    record_path, split_dir, camera = job
    count = 0
    for k, data in enumerate(read_records(record_path)):
        try:
            frames = sequence_frames(parse_example(data), camera)
        except TFRecordError as err:
            raise TFRecordError(f"{record_path}, record {k}: {err}") from None
        write_video(split_dir / f"bair_{record_path.stem}_{k:03d}.mp4", frames, fps=FPS)
        count += 1
    return count


def natural_key(path):
    """traj_256_to_511 sorts after traj_0_to_255, not between traj_2... and traj_3...."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def convert(bair_dir, out_dir, camera="image_aux1", workers=1, overwrite=False, progress=True):
    """Convert train/ and test/ of `bair_dir`; returns {split: number of sequences written}."""
    bair_dir = Path(bair_dir)
    files = {split: sorted((bair_dir / split).glob("*.tfrecord*"), key=natural_key)
             for split in ("train", "test")}
    for split, paths in files.items():
        if not paths:
            raise UsageError(f"--bair_dir {bair_dir}: no *.tfrecords files in {bair_dir / split}")
    split_dirs = {split: prepare_split_dir(out_dir, split, overwrite) for split in files}
    written = {}
    for split, paths in files.items():
        counts = parallel_map(convert_file, [(p, split_dirs[split], camera) for p in paths],
                              workers)
        try:
            written[split] = sum(tqdm(counts, total=len(paths), desc=f"bair {split}", unit="file",
                                      disable=not progress))
        except (TFRecordError, OSError) as err:
            raise UsageError(str(err)) from None
    return written


FLAGS = (
    Flag("bair_dir", None, "softmotion30_44k folder holding train/ and test/ *.tfrecords",
         check=existing_dir, required=True),
    OUT_DIR,
    Flag("camera", "image_aux1", "image feature to read: <i>/<camera>/encoded"),
    workers_flag("record files"),
    OVERWRITE,
)


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)
        start = time.time()
        written = convert(args.bair_dir, args.out_dir, camera=args.camera, workers=args.workers,
                          overwrite=args.overwrite)
        for split, count in written.items():
            print(f"{split}: {count} sequences in {Path(args.out_dir) / split}")
        print(f"lossless H.264 (.mp4), 64x64 at {FPS} fps; {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
