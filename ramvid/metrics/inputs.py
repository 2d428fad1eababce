"""What to evaluate: sample files, their ground truth, and the settings that say how.

A sample run's record (`sample_args.json` beside its npz, written by video_sample.py) is the
contract: the given frames and the samples per clip come from there, and a --protocol,
--cond_frames or --samples_per_clip that contradicts it is an error naming both values. Without
a record (a foreign npz) those flags are required and the report says so.
"""
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli import UsageError
from ..masking import frame_indices_problem, mask_from_frames
from ..sample.output import GT_PREFIX
from ..sample.npzfile import map_npz_array, npz_shape
from ..sample.record import RECORD_JSON, read_record, run_files
from .evaluation import PROTOCOLS


def load_clips(path: Path, flag: str) -> np.ndarray:
    """arr_0 of an npz: uint8 N x T x H x W x C, C = 1 or 3; mapped from disk when the file
    stores it uncompressed (every file ramvid writes), else read whole."""
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        clips = map_npz_array(path)
        if clips is None:
            with np.load(path) as data:
                if "arr_0" not in data:
                    raise UsageError(f"{flag} {path}: no arr_0 in the npz (has "
                                     f"{list(data.keys())})")
                clips = data["arr_0"]
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise UsageError(f"{flag} {path}: not a readable npz file ({err})") from None
    if clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise UsageError(f"{flag} {path}: arr_0 must be N x T x H x W x C with C = 1 or 3, got "
                         f"shape {clips.shape}")
    if clips.dtype != np.uint8:
        raise UsageError(f"{flag} {path}: arr_0 must be uint8, got {clips.dtype}")
    return clips


@dataclass
class SampleFile:
    path: Path
    record: dict = None  # the sample run's sample_args.json, if it sits beside the file

    @property
    def gt_path(self):
        """The run's own ground truth (video_sample.py --save_gt True), if recorded."""
        if self.record and self.record.get("save_gt"):
            return self.path.with_name(GT_PREFIX + self.path.name)
        return None


def find_sample_file(path: Path) -> SampleFile:
    """--samples names an npz or a sample run's folder (its one samples npz)."""
    if path.is_dir():
        try:
            path = run_files(path)[0]
        except UsageError as e:
            raise UsageError(f"--samples {e}") from None
    elif not path.is_file():
        raise UsageError(f"--samples {path}: no such file")
    record = read_record(path.parent)
    if record is not None:
        try:
            shape = npz_shape(path)
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise UsageError(f"--samples {path}: not a readable npz file ({err})") from None
        if shape is None or shape[:2] != (record["num_samples"], record["seq_len"]):
            raise UsageError(f"--samples {path}: {path.parent / RECORD_JSON} beside it records "
                             f"{record['num_samples']} samples of {record['seq_len']} frames, the "
                             f"file holds shape {shape}; move the file or the record")
    return SampleFile(path, record)


def _frames_flag(frames):
    return ",".join(map(str, frames)) + ","


def resolve_settings(files, protocol_name, cond_frames, samples_per_clip):
    """(given frames, samples per clip or None, origin) from the records, checked against the
    flags (None = not given)."""
    records = [(f.path.parent / RECORD_JSON, f.record) for f in files if f.record]
    protocol = PROTOCOLS[protocol_name or "custom"]
    if not records:
        frames = cond_frames if cond_frames is not None else protocol.cond_frames
        if frames is None:
            raise UsageError("--cond_frames is required without a sample record "
                             f"({RECORD_JSON} beside the samples) and with --protocol custom "
                             "(e.g. 0,)")
        if samples_per_clip is None:
            raise UsageError("--samples_per_clip is required without a sample record "
                             f"({RECORD_JSON} beside the samples): how many samples of each clip "
                             "one file holds (rows i*S .. i*S+S-1 belong to clip i)")
        return list(frames), samples_per_clip, "the command line (no sample_args.json beside the samples)"
    if len(records) != len(files):
        raise UsageError(f"--samples: {RECORD_JSON} beside some files but not beside "
                         f"{next(f.path for f in files if not f.record)}")
    path, first = records[0]
    for other_path, other in records[1:]:
        for key in ("cond_frames", "seq_len", "samples_per_clip", "data_dir"):
            if other[key] != first[key]:
                raise UsageError(f"--samples: {path} records {key}={first[key]!r}, {other_path} "
                                 f"{other[key]!r}; evaluate them separately")
    frames = list(first["cond_frames"])
    if cond_frames is not None and list(cond_frames) != frames:
        raise UsageError(f"--cond_frames {_frames_flag(cond_frames)} contradicts {path}: the "
                         f"samples were drawn with given frames {frames} (--cond_frames "
                         f"{_frames_flag(frames)}); drop --cond_frames")
    if protocol.cond_frames is not None and list(protocol.cond_frames) != frames:
        raise UsageError(f"--protocol {protocol.name} gives frames {list(protocol.cond_frames)} "
                         f"but {path} records given frames {frames}; drop --protocol (the "
                         f"record decides) or sample with --cond_frames "
                         f"{_frames_flag(protocol.cond_frames) if protocol.cond_frames else '(none)'}")
    recorded = first["samples_per_clip"]
    if samples_per_clip is not None and samples_per_clip != recorded:
        raise UsageError(f"--samples_per_clip {samples_per_clip} contradicts {path}: the run "
                         f"drew {recorded} samples per clip; drop --samples_per_clip")
    return frames, recorded, str(path)


def one_row_per_clip(gt: np.ndarray, num_sample_rows: int, per_clip) -> np.ndarray:
    """video_sample.py --samples_per_clip S --save_gt True writes each ground-truth clip S
    times (clip-major, like the samples); keep one row per clip after checking that."""
    per_clip = per_clip or 1
    if per_clip == 1 or gt.shape[0] != num_sample_rows or gt.shape[0] % per_clip:
        return gt
    grouped = gt.reshape(gt.shape[0] // per_clip, per_clip, *gt.shape[1:])
    if not all((clip == clip[:1]).all() for clip in grouped):  # clip by clip: gt may be mapped
        raise UsageError(f"--gt has as many rows as --samples but its rows do not repeat in "
                         f"groups of --samples_per_clip {per_clip}; pass one row per clip")
    print(f"--gt repeats each clip {per_clip} times: using one row per clip", file=sys.stderr)
    return np.ascontiguousarray(grouped[:, 0])


def _per_clip(num_rows: int, num_clips: int, requested, path: Path) -> int:
    per_clip = requested if requested is not None else num_rows // max(num_clips, 1)
    if per_clip < 1 or num_rows != num_clips * per_clip:
        hint = ("; pass --samples_per_clip" if requested is None else
                f" (--samples_per_clip {requested})")
        raise UsageError(f"--samples {path}: {num_rows} clips are not {num_clips} ground-truth "
                         f"clips x a whole number of samples{hint}")
    return per_clip


def load_samples(paths, gt: np.ndarray, per_clip, first=None) -> np.ndarray:
    """Files of clip-major samples -> one (N_clips, S, T, H, W, C) array, filled file by file
    so that the peak memory is the result plus one file (``first``: paths[0], loaded)."""
    num_clips = gt.shape[0]
    if len(paths) == 1 and first is not None:  # a view of the one file, no second copy
        if first.shape[1:] != gt.shape[1:]:
            raise UsageError(f"--samples {paths[0]}: clips of shape {first.shape[1:]} (T x H x W "
                             f"x C) differ from --gt {gt.shape[1:]}")
        count = _per_clip(first.shape[0], num_clips, per_clip, paths[0])
        return first.reshape(num_clips, count, *gt.shape[1:])
    combined, filled = None, 0
    for i, path in enumerate(paths):
        clips = first if i == 0 and first is not None else load_clips(path, "--samples")
        if clips.shape[1:] != gt.shape[1:]:
            raise UsageError(f"--samples {path}: clips of shape {clips.shape[1:]} (T x H x W x "
                             f"C) differ from --gt {gt.shape[1:]}")
        count = _per_clip(clips.shape[0], num_clips, per_clip, path)
        if combined is None:
            # Files after the first are assumed to hold as many samples per clip.
            combined = np.empty((num_clips, count * len(paths), *gt.shape[1:]), np.uint8)
        if filled + count > combined.shape[1]:
            raise UsageError(f"--samples {path}: every file must hold the same number of "
                             "samples per clip")
        combined[:, filled:filled + count] = clips.reshape(num_clips, count, *gt.shape[1:])
        filled += count
    if filled != combined.shape[1]:
        raise UsageError("--samples: every file must hold the same number of samples per clip")
    return combined


def load_inputs(sample_paths, gt_path, protocol, cond_frames, samples_per_clip):
    """(samples (N_clips, S, T, H, W, C), gt (N_clips, T, H, W, C), given frames, origin,
    the gt file used)."""
    files = [find_sample_file(Path(p)) for p in sample_paths]
    frames, per_clip, origin = resolve_settings(files, protocol, cond_frames, samples_per_clip)
    gt_path = Path(gt_path) if gt_path else files[0].gt_path
    if gt_path is None:
        raise UsageError("--gt is required: the samples' run did not save its ground truth "
                         "(--save_gt True)")
    gt = load_clips(gt_path, "--gt")
    first = load_clips(files[0].path, "--samples")
    if len(files) == 1:
        gt = one_row_per_clip(gt, first.shape[0], per_clip)
    samples = load_samples([f.path for f in files], gt, per_clip, first)
    return samples, gt, frames, origin, gt_path


def protocol_setup(protocol_name, cond_frames, num_clips, num_frames, fvd_include_given):
    """The protocol's clip length and FVD setting applied to these clips: dict(protocol,
    num_frames, obs_mask bool (N_clips, T), include_given)."""
    protocol = PROTOCOLS[protocol_name or "custom"]
    if protocol.num_frames is not None:
        if num_frames < protocol.num_frames:
            raise UsageError(f"--protocol {protocol.name} needs {protocol.num_frames} frames "
                             f"per clip, the files have {num_frames}")
        num_frames = protocol.num_frames  # longer clips: the protocol's first frames
    reason = frame_indices_problem(cond_frames, num_frames)
    if reason:
        raise UsageError(f"--cond_frames {cond_frames}: {reason}")
    obs_mask = mask_from_frames(cond_frames, num_clips, num_frames).numpy()
    if obs_mask[0].all():
        raise UsageError(f"--cond_frames {cond_frames} gives every frame: nothing to evaluate")
    include_given = (fvd_include_given if fvd_include_given is not None
                     else protocol.fvd_include_given)
    return dict(protocol=protocol, num_frames=num_frames, obs_mask=obs_mask,
                include_given=include_given)


__all__ = ["SampleFile", "find_sample_file", "load_clips", "load_inputs", "load_samples",
           "one_row_per_clip", "protocol_setup", "resolve_settings"]
