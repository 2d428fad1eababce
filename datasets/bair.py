"""BAIR robot pushing (softmotion30_44k) TFRecords -> one lossless .mp4 per sequence.

    python datasets/bair.py --bair_dir path/to/softmotion30_44k --out_dir data/bair

`bair_dir` holds `train/*.tfrecords` and `test/*.tfrecords` (as unpacked from
bair_robot_pushing_dataset_v0.tar). Every record is one tf.train.Example whose feature
`<i>/image_aux1/encoded` holds frame i as raw 64x64x3 uint8 bytes (30 steps). Each sequence
becomes `out_dir/<split>/bair_<record file>_<k>.mp4`; the class prefix is `bair` for all.
No TensorFlow is needed: datasets/tfrecord.py reads the records and checks their checksums.
"""
import re
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python datasets/bair.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.common import (OUT_DIR, OVERWRITE, prepare_split_dir, worker_pool,  # noqa: E402
                             workers_flag)
from datasets.tfrecord import TFRecordError, parse_example, read_records  # noqa: E402
from ramvid.errors import UsageError  # noqa: E402
from ramvid.flags import Flag, existing_dir, parse, user_errors  # noqa: E402
from ramvid.video_io import write_video  # noqa: E402

FRAME_SHAPE = (64, 64, 3)
FPS = 10  # the BAIR robot was recorded at about 10 Hz


def sequence_frames(example, camera="image_aux1"):
    """The frames of one parsed Example as (T, 64, 64, 3) uint8, steps 0, 1, ... in order."""
    frames = []
    while f"{len(frames)}/{camera}/encoded" in example:
        key = f"{len(frames)}/{camera}/encoded"
        values = example[key]
        if len(values) != 1 or len(values[0]) != np.prod(FRAME_SHAPE):
            size = len(values[0]) if len(values) == 1 else f"{len(values)} values"
            raise TFRecordError(f"feature {key} holds {size} bytes, expected one raw "
                                f"{'x'.join(map(str, FRAME_SHAPE))} uint8 frame")
        frames.append(np.frombuffer(values[0], np.uint8).reshape(FRAME_SHAPE))
    if not frames:
        raise TFRecordError(f"no feature 0/{camera}/encoded (features: {sorted(example)[:6]} ...)")
    return np.stack(frames)


def convert_file(record_path, split_dir, camera="image_aux1"):
    """Write every sequence of one TFRecord file; returns the number written."""
    record_path = Path(record_path)
    count = 0
    for k, data in enumerate(read_records(record_path)):
        try:
            frames = sequence_frames(parse_example(data), camera)
        except TFRecordError as err:
            raise TFRecordError(f"{record_path}, record {k}: {err}") from None
        write_video(Path(split_dir) / f"bair_{record_path.stem}_{k:03d}.mp4", frames, fps=FPS)
        count += 1
    return count


def _convert_job(job):
    return convert_file(*job)


def natural_key(path):
    """traj_256_to_511 sorts after traj_0_to_255, not between traj_2... and traj_3...."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def convert(bair_dir, out_dir, splits=("train", "test"), camera="image_aux1", workers=1,
            overwrite=False, progress=True):
    """Convert every split of `bair_dir`; returns {split: number of sequences written}."""
    bair_dir = Path(bair_dir)
    files = {split: sorted((bair_dir / split).glob("*.tfrecord*"), key=natural_key)
             for split in splits}
    for split, paths in files.items():
        if not paths:
            raise UsageError(f"--bair_dir {bair_dir}: no *.tfrecords files in {bair_dir / split}")
    split_dirs = {split: prepare_split_dir(out_dir, split, overwrite) for split in splits}
    written = {}
    with worker_pool(workers) as pool:
        for split, paths in files.items():
            jobs = [(p, split_dirs[split], camera) for p in paths]
            counts = tqdm(pool.imap_unordered(_convert_job, jobs), total=len(jobs),
                          desc=f"bair {split}", unit="file", disable=not progress)
            try:
                written[split] = sum(counts)
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
