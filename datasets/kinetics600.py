"""Kinetics-600: downloaded clips -> trimmed, resized .mp4 files named so the class parses.

    python datasets/kinetics600.py --csv kinetics600/train.csv --clips_dir downloads/ \
        --out_dir data/kinetics600 --short_side 128

Each csv row (label, youtube_id, time_start, time_end, split) names a clip in `clips_dir`, cut
or whole (trimmed here); it is written to `out_dir/<split>/<Label>_<youtube_id>_<start>_<end>.mp4`
with the label in CamelCase as the class prefix (docs/DATASETS.md). A rerun resumes.
"""
import csv
import itertools
import re
import sys
from collections import Counter
from pathlib import Path

import av
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python datasets/kinetics600.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.common import parallel_map, warn, workers_flag  # noqa: E402
from ramvid.errors import UsageError  # noqa: E402
from ramvid.flags import (Flag, existing_dir, existing_file, in_range, parse,  # noqa: E402
                          user_errors)
from ramvid.video_io import video_writer  # noqa: E402

SOURCE_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")
_TRIMMED = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")
_YOUTUBE_ID_LENGTH = 11


def index_clips(clips_dir):
    """The downloaded clips under a folder: ({(youtube_id, start, end): path} of cut clips,
    {youtube_id: path} of whole videos)."""
    trimmed, whole = {}, {}
    for path in sorted(Path(clips_dir).rglob("*")):
        if path.suffix.lower() not in SOURCE_SUFFIXES or path.name.startswith("."):
            continue
        match = _TRIMMED.match(path.stem)
        if match:
            trimmed[(match["id"], int(match["start"]), int(match["end"]))] = path
        else:
            # `<id>.mp4`, or a downloader's `<id>.f137.mp4`-style name: index both.
            whole.setdefault(path.stem, path)
            whole.setdefault(path.stem[:_YOUTUBE_ID_LENGTH], path)
    return trimmed, whole


def read_annotations(csv_path, default_split):
    """[(label, youtube_id, start, end, split)] of the csv; bad rows are warned of and skipped."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column in REQUIRED_COLUMNS:
            if column not in columns:
                raise UsageError(f"--csv {csv_path}: no column {column!r} (has {columns})")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                warn(f"{csv_path}:{line}: time_start/time_end are not numbers; skipped")
                continue
            if end <= start:
                warn(f"{csv_path}:{line}: empty span {start}..{end}; skipped")
                continue
            rows.append((row.get("label") or "unlabeled", row["youtube_id"], start, end,
                         row.get("split") or default_split))
    return rows


def class_tokens(labels):
    """{label: file-name prefix}: the label's letters and digits in CamelCase ("massaging
    person's head" -> 'MassagingPersonsHead'); two labels with one prefix are an error."""
    tokens, owners = {}, {}
    for label in sorted(set(labels)):
        words = re.findall(r"[A-Za-z0-9]+", label.replace("'", ""))
        token = "".join(w[0].upper() + w[1:] for w in words)
        if not token:
            raise UsageError(f"label {label!r} has no letters or digits to name its class")
        if token in owners:
            raise UsageError(f"labels {owners[token]!r} and {label!r} both become class {token!r}")
        tokens[label], owners[token] = token, label
    return tokens


def span_frames(container, stream, start, end):
    """Decoded frames of `stream` whose time (from the stream's start) is in [start, end); all of
    them when start is None."""
    offset = stream.start_time * stream.time_base if stream.start_time is not None else 0
    if start is not None and start > 0:
        # Lands on the keyframe at or before `start`; the frames before it are dropped below.
        container.seek(int((start + offset) / stream.time_base), stream=stream)
    for frame in container.decode(stream):
        if start is not None:
            t = frame.pts * stream.time_base - offset
            if t >= end:
                return
            if t < start:
                continue
        yield frame


def convert_clip(job):
    """Trim (when start is not None) and resize one clip -> ('written' | 'broken', message)."""
    source, target, start, end, short_side, crf = job
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = span_frames(container, stream, start, end)
            first = next(frames, None)
            if first is None:
                raise ValueError(f"no frames in {start}..{end} s")
            scale = short_side / min(first.width, first.height)  # both sides even for yuv420p
            width, height = (max(2, round(side * scale / 2) * 2)
                             for side in (first.width, first.height))
            fps = stream.average_rate or stream.guessed_rate or 25
            with video_writer(target, width, height, fps, crf) as write:
                for frame in itertools.chain([first], frames):
                    write(frame.reformat(width=width, height=height, format="yuv420p",
                                         interpolation="AREA"))
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as err:
        return "broken", f"{source}: {type(err).__name__}: {err}"
    return "written", None


def convert(csv_path, clips_dir, out_dir, short_side=128, crf=18, split="train", workers=1,
            overwrite=False, progress=True):
    """Convert every annotated clip that was downloaded; returns a Counter of outcomes."""
    rows = read_annotations(csv_path, split)
    tokens = class_tokens(row[0] for row in rows)
    trimmed, whole = index_clips(clips_dir)
    outcomes, jobs = Counter(), []
    for label, youtube_id, start, end, split_name in rows:
        name = f"{tokens[label]}_{youtube_id}_{start:06d}_{end:06d}.mp4"
        target = Path(out_dir) / split_name / name
        if target.exists() and not overwrite:
            outcomes["existing"] += 1
            continue
        if (youtube_id, start, end) in trimmed:
            jobs.append((trimmed[(youtube_id, start, end)], target, None, end, short_side, crf))
        elif youtube_id in whole:
            jobs.append((whole[youtube_id], target, start, end, short_side, crf))
        else:
            outcomes["missing"] += 1
            warn(f"{youtube_id} ({start}..{end} s) not found in --clips_dir {clips_dir}; skipped")
    results = parallel_map(convert_clip, jobs, workers, chunksize=8)
    for status, message in tqdm(results, total=len(jobs), desc="kinetics", unit="clip",
                                disable=not progress):
        outcomes[status] += 1
        if message:
            warn(f"{message}; skipped")
    return outcomes


def _even_size(value):
    return None if value >= 2 and value % 2 == 0 else "must be a positive even number"


FLAGS = (
    Flag("csv", None, "annotation csv: label,youtube_id,time_start,time_end,split",
         check=existing_file, required=True),
    Flag("clips_dir", None, "folder of downloaded clips (searched recursively)",
         check=existing_dir, required=True),
    Flag("out_dir", None, "writes out_dir/<split>/", required=True),
    Flag("short_side", 128, "resize so the short side is this", check=_even_size),
    Flag("crf", 18, "H.264 quality (0 best .. 51 worst)", check=in_range(0, 52)),
    Flag("split", "train", "output folder when the csv has no split column"),
    workers_flag("clips"),
    Flag("overwrite", False, "re-encode clips whose output exists; False keeps them, so a rerun resumes"),
)


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)
        outcomes = convert(args.csv, args.clips_dir, args.out_dir, args.short_side, args.crf,
                           args.split, args.workers, args.overwrite)
        print(f"{outcomes['written']} clips written to {args.out_dir}, {outcomes['existing']} already "
              f"there, {outcomes['missing']} missing, {outcomes['broken']} unreadable")


if __name__ == "__main__":
    main()
