"""The run folder of a sampling job and its record, `sample_args.json`.

Every invocation writes into its own folder: `--out_dir` exactly, or `<log dir>/<run name>`
where the name says what was sampled (task, given frames, count, frames, sampler and steps,
seed, checkpoint), e.g. `predict_c0-1_256x20_ddpm250_seed0_ema_0.9999_200000`. The log dir
is $OPENAI_LOGDIR, else a `samples/` folder beside the checkpoint. The record holds everything
evaluation needs (checkpoint, given frames, seq_len, clips, samples per clip, sampler and
steps, seed); video_eval.py reads it and refuses flags that contradict it.
"""
import json
import os
from pathlib import Path

from ..cli import UsageError, config_json, versions
from .output import GT_PREFIX

RECORD_JSON = "sample_args.json"
# Keys that may differ when a run is resumed (they change no sample), and also when a finished
# run is reused (batches and chunks only move float rounding).
_RESUMABLE_KEYS = ("versions", "save_video", "fps")
_REUSABLE_KEYS = _RESUMABLE_KEYS + ("batch_size", "chunk_size")


def task_of(cond_frames, long_scheme=None):
    """uncond | predict (the first frames given) | infill | long-<scheme>."""
    if long_scheme:
        return f"long-{long_scheme}"
    if not cond_frames:
        return "uncond"
    return "predict" if list(cond_frames) == list(range(len(cond_frames))) else "infill"


def run_name(record):
    parts = [record["task"]]
    if record["cond_frames"]:
        parts.append("c" + "-".join(str(f) for f in record["cond_frames"]))
    size = f"{record['num_samples']}x{record['seq_len']}"
    if record["samples_per_clip"] > 1:
        size += f"_s{record['samples_per_clip']}"
    parts += [size, f"{record['sampler']}{record['steps']}", f"seed{record['seed']}",
              Path(record["checkpoint"]).stem]
    return "_".join(parts)


def run_folder(record, out_dir=None):
    """--out_dir, else <$OPENAI_LOGDIR or the checkpoint's folder/samples>/<run name>."""
    if out_dir:
        return Path(out_dir)
    log_dir = os.environ.get("OPENAI_LOGDIR") or Path(record["checkpoint"]).parent / "samples"
    return Path(log_dir) / run_name(record)


def read_record(folder):
    """The record in `folder` (None when there is none)."""
    path = Path(folder) / RECORD_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or "cond_frames" not in record:
        raise UsageError(f"{path}: not a ramvid sampling record (no cond_frames)")
    return record


def run_files(folder):
    """(samples npz, its gt_ npz or None) of a finished run folder."""
    folder = Path(folder)
    found = [p for p in sorted(folder.glob("*.npz")) if not p.name.startswith(GT_PREFIX)]
    if len(found) != 1:
        raise UsageError(f"{folder}: a run folder holds one samples npz, found {len(found)} (an "
                         "unfinished run? rerun its sampling command)")
    gt = found[0].with_name(GT_PREFIX + found[0].name)
    return found[0], (gt if gt.exists() else None)


def _differences(old, new, ignored=_RESUMABLE_KEYS):
    keys = [k for k in new if k not in ignored]
    return [k for k in keys if old.get(k) != json.loads(config_json(new[k]))]


def prepare_folder(folder, record, finished, overwrite, reuse_finished=False):
    """Rank 0, before sampling: the folder is new, or holds an unfinished run of the same
    record (resumed), or `overwrite` says to start again; with `reuse_finished` a finished run
    of the same record (`finished`: its npz files, [] if it is not finished) is taken as it
    is. Writes the record; returns "new", "resume" or "finished"."""
    folder = Path(folder)
    old = read_record(folder) if folder.is_dir() else None
    if old is not None and not overwrite:
        reuse = reuse_finished and bool(finished)
        changed = _differences(old, record, _REUSABLE_KEYS if reuse else _RESUMABLE_KEYS)
        if changed:
            k = changed[0]
            raise UsageError(f"{folder} holds a run with {k}={old.get(k)!r}, not {record[k]!r}; "
                             "pass --out_dir for a new folder (or --overwrite True to replace it)")
    if finished and not overwrite:
        if reuse_finished and old is not None:
            return "finished"  # the record on disk stays the one the files were sampled with
        raise UsageError(f"{finished[0]} exists (a finished run); pass --overwrite True to "
                         "sample it again, or --out_dir for another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {folder}: {e.strerror or e}; set "
                         "--out_dir or $OPENAI_LOGDIR") from None
    if overwrite:
        for path in finished:
            path.unlink()
    path = folder / RECORD_JSON
    tmp = path.with_name(f".{RECORD_JSON}.tmp")
    tmp.write_text(config_json({**record, "versions": versions()}) + "\n")
    os.replace(tmp, path)
    return "resume" if old is not None and not overwrite else "new"


__all__ = ["RECORD_JSON", "prepare_folder", "read_record", "run_files", "run_folder", "run_name",
           "task_of"]
