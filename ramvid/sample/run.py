"""Sample N videos over R ranks into a run folder, resumably: `sample_to_folder`.

It is the one path from a model to sample files: video_sample.py, video_sample_long.py and
video_eval.py --model_path all call it.

- The folder: every invocation writes into its own folder, `--out_dir` exactly, or
  `<log dir>/<run name>` where the name says what was sampled (task, given frames, count,
  frames, sampler and steps, seed, checkpoint), e.g.
  `predict_c0-1_256x20_ddpm250_seed0_ema_0.9999_200000`; the log dir is $OPENAI_LOGDIR, else
  `samples/` beside the checkpoint. Its record, `sample_args.json`, holds everything evaluation
  needs (checkpoint, given frames, seq_len, clips, samples per clip, sampler and steps, seed);
  video_eval.py reads it and refuses flags that contradict it.
- The order: samples are cut into chunks of `chunk_size` (files.py), chunks into global batches of
  `batch_size` consecutive samples; in every round each rank samples one batch (batch b goes to
  rank b mod R), then all ranks all-gather the round's results and rank 0 keeps them in index
  order, writes a grid per batch and each chunk file when complete. Batch contents do not depend
  on R, so a run on R ranks gives the same samples as a run on one, and a rerun after a
  preemption skips the chunks on disk.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..errors import UsageError
from ..flags import config_json, versions, write_json
from ..masking import mask_from_frames
from ..runlock import FolderLock
from ..runtime import cache_home
from ..video_io import save_video_grid
from .batch import (CLIP_DRAW_SEED, ClipSource, SamplerOptions, global_batches, labels_for,
                    model_video_shape, sample_batch, sample_generators, step_bar, to_uint8)
from .files import GT_PREFIX, ChunkStore
from .long import plan_long_video, rollout

RECORD_JSON = "sample_args.json"
# Keys that may differ when a run is resumed (they change no sample), and also when a finished
# run is reused (batches and chunks only move float rounding).
_RESUMABLE_KEYS = ("versions", "save_video", "fps")
_REUSABLE_KEYS = _RESUMABLE_KEYS + ("batch_size", "chunk_size")
# One rank may wait for another's whole batch at a gather; batches of 1000 steps on large
# models take long, so every sampling run (scripts and evaluation) uses this collective timeout.
COLLECTIVE_TIMEOUT_S = 6 * 3600
WARMUP_STEPS = 20


@dataclass(frozen=True)
class LongSettings:
    total_length: int
    scheme: str = "autoregressive"
    max_cond_frames: int = 4
    prediction_step: int = 0  # 0: seq_len - max_cond_frames
    start_frames: int = 0  # known first frames taken from the data clips (0: unconditional start)


@dataclass(frozen=True)
class SampleJob:
    """What to sample (the command's flags, resolved)."""

    model_path: str
    num_samples: int
    batch_size: int = 8
    seed: int = 0
    cond_frames: tuple = ()  # given frame indices; () = unconditional
    data_dir: str = ""
    samples_per_clip: int = 1  # consecutive samples sharing one clip (clip-major order)
    save_gt: bool = False
    chunk_size: int = 256
    options: SamplerOptions = field(default_factory=SamplerOptions)
    long: LongSettings = None
    save_video: str = "gif"  # gif | mp4 | png | none
    fps: int = 4
    progress: bool = True


# --------------------------------------------------------------------------- folder and record
def task_of(cond_frames, long_scheme=None):
    """uncond | predict (the first frames given) | infill | long-<scheme>."""
    if long_scheme:
        return f"long-{long_scheme}"
    if not cond_frames:
        return "uncond"
    return "predict" if list(cond_frames) == list(range(len(cond_frames))) else "infill"


def run_folder(record, out_dir=None):
    """--out_dir, else <$OPENAI_LOGDIR or the checkpoint's folder/samples>/<run name>."""
    if out_dir:
        return Path(out_dir)
    parts = [record["task"]]
    if record["cond_frames"]:
        parts.append("c" + "-".join(str(f) for f in record["cond_frames"]))
    size = f"{record['num_samples']}x{record['seq_len']}"
    if record["samples_per_clip"] > 1:
        size += f"_s{record['samples_per_clip']}"
    precision = "" if record["precision"] == "fp32" else f"_{record['precision']}"
    parts += [size, f"{record['sampler']}{record['steps']}{precision}", f"seed{record['seed']}",
              Path(record["checkpoint"]).stem]
    log_dir = os.environ.get("OPENAI_LOGDIR") or Path(record["checkpoint"]).parent / "samples"
    return Path(log_dir) / "_".join(parts)


def job_record(job, flags, diffusion, num_frames, source):
    """The sample_args.json of a job: what evaluation and a resumed run need to know. `source`:
    the job's ClipSource, or None without data."""
    options = job.options
    record = {
        "task": task_of(job.cond_frames, job.long and job.long.scheme),
        "checkpoint": str(Path(job.model_path).resolve()),
        "cond_frames": list(job.cond_frames), "seq_len": num_frames,
        "num_samples": job.num_samples, "num_clips": len(source) if source else 0,
        "data_clips": source.data_clips if source else 0,
        "samples_per_clip": job.samples_per_clip,
        "sampler": options.sampler, "steps": diffusion.num_timesteps,
        "timestep_respacing": flags.get("timestep_respacing", ""), "eta": options.eta,
        "resample_steps": options.resample_steps, "guidance_scale": options.guidance_scale,
        "clip_denoised": options.clip_denoised, "precision": options.precision, "seed": job.seed,
        "data_dir": str(Path(job.data_dir).resolve()) if job.data_dir else "",
        "save_gt": job.save_gt, "batch_size": job.batch_size, "chunk_size": job.chunk_size,
        "long": asdict(job.long) if job.long else None,
        "save_video": job.save_video, "fps": job.fps, "model_flags": flags,
    }
    if source:
        drawn = len(source) < source.data_clips
        record["clip_of_sample"] = (
            "sample i uses clip_files[(i // samples_per_clip) mod num_clips]: " +
            (f"a uniform draw (seed {CLIP_DRAW_SEED}) of num_clips of the data_clips usable "
             "videos" if drawn else "the usable videos in sorted path order"))
        record["clip_files"] = source.files
    return record


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


def prepare_folder(folder, record, finished, overwrite, reuse_finished=False):
    """Rank 0, before sampling: the folder is new, or holds an unfinished run of the same
    record (resumed), or `overwrite` says to start again; with `reuse_finished` a finished run
    of the same record (`finished`: its npz files, [] if it is not finished) is taken as it
    is. Writes the record; returns "new", "resume" or "finished"."""
    folder = Path(folder)
    old = read_record(folder) if folder.is_dir() else None
    if old is not None and not overwrite:
        ignored = _REUSABLE_KEYS if reuse_finished and finished else _RESUMABLE_KEYS
        changed = [k for k in record if k not in ignored
                   and old.get(k) != json.loads(config_json(record[k]))]
        if changed:
            k = changed[0]
            raise UsageError(f"{folder} holds a run with {k}={old.get(k)!r}, not {record[k]!r}; "
                             "pass --out_dir for a new folder (or --overwrite True to replace it)")
    if finished and not overwrite:
        if reuse_finished and old is not None:
            return "finished"  # the record on disk stays the one the files were sampled with
        raise UsageError(f"{finished[0]} exists (a finished run); pass --overwrite True to "
                         "sample it again, or --out_dir for another folder")
    if overwrite:
        for path in finished:
            path.unlink()
    write_json(folder / RECORD_JSON, {**record, "versions": versions()})
    return "resume" if old is not None and not overwrite else "new"


# --------------------------------------------------------------------------- one batch of a job
def _fields(model, num_frames, save_gt):
    """name -> (item shape, dtype) of the per-sample arrays a job produces."""
    channels, _, height, width = model_video_shape(model)
    item = (num_frames, height, width, channels)
    fields = {"samples": (item, np.uint8)}
    if save_gt:
        fields["gt"] = (item, np.uint8)
    if model.config.num_classes is not None:
        fields["labels"] = ((), np.int64)
    return fields


def _result(videos, gt, labels):
    result = {"samples": videos}
    if gt is not None:
        result["gt"] = gt
    if labels is not None:
        result["labels"] = labels
    return result


def fixed_length_work(model, diffusion, flags, job):
    """(work(indices, callback) -> arrays, frames per video, ClipSource or None); `flags`: the
    model's flags (image size, channels, labels of the clips to read)."""
    seq_len = model_video_shape(model)[1]
    cond_frames = list(job.cond_frames)
    needs_data = bool(cond_frames) or job.save_gt or (model.config.num_classes is not None
                                                      and bool(job.data_dir))
    source = ClipSource(job.data_dir, flags, seq_len, job.samples_per_clip,
                        _clips_needed(job)) if needs_data else None

    def work(indices, callback):
        clips, y = source.clips(indices) if source else (None, None)  # (n, C, T, H, W), (n,)
        labels = labels_for(model, job.seed, indices, y)
        videos = sample_batch(
            model, diffusion, sample_generators(job.seed, indices),
            obs=clips if cond_frames else None,
            obs_mask=mask_from_frames(cond_frames, len(indices), seq_len) if cond_frames else None,
            y=labels, options=job.options, callback=callback)
        return _result(to_uint8(videos), to_uint8(clips) if job.save_gt else None, labels)

    return work, seq_len, source


def long_video_work(model, diffusion, flags, job):
    """As fixed_length_work, for videos of job.long.total_length frames by a window plan."""
    seq_len = model_video_shape(model)[1]
    settings = job.long
    plan = window_plan(job, seq_len)
    # One source for the start frames and the ground truth, so both come from the same file;
    # the ground truth spans the whole length, so it needs files of >= total_length frames.
    length = settings.total_length if job.save_gt else seq_len
    source = ClipSource(job.data_dir, flags, length, job.samples_per_clip, _clips_needed(job)) \
        if settings.start_frames or job.save_gt else None

    def work(indices, callback):
        clips, y = source.clips(indices) if source else (None, None)  # (n, C, L, H, W), (n,)
        start = clips[:, :, : settings.start_frames] if settings.start_frames else None
        labels = labels_for(model, job.seed, indices, y)
        videos = rollout(model, diffusion, plan, sample_generators(job.seed, indices),
                         settings.total_length, start=start, y=labels, options=job.options,
                         callback=callback)
        return _result(to_uint8(videos), to_uint8(clips) if job.save_gt else None, labels)

    return work, settings.total_length, source


def window_plan(job, seq_len):
    """The windows of a long-video job (ramvid.sample.long)."""
    long = job.long
    return plan_long_video(long.scheme, long.total_length, seq_len, long.max_cond_frames,
                           long.prediction_step or seq_len - long.max_cond_frames,
                           long.start_frames)


def _clips_needed(job):
    return -(-job.num_samples // job.samples_per_clip)


# --------------------------------------------------------------------------- cost
def cost(job, diffusion, seq_len, rates=None):
    """What a job costs: videos, model calls, denoising steps of batches, and the time at each
    rate measured before for its model and batch ({device: {"s_per_step", "date"}}, kept in
    $RAMVID_CACHE/sampling_rates.json): a dict for --dry_run and the plan line."""
    steps = (len(window_plan(job, seq_len)) if job.long else 1) * diffusion.num_timesteps
    calls = steps * job.options.model_calls_per_step(bool(job.cond_frames))
    batch_steps = -(-job.num_samples // job.batch_size) * steps
    plan = {"videos": job.num_samples, "model_calls_per_video": calls,
            "model_calls": job.num_samples * calls, "batch_steps": batch_steps,
            "steps_per_batch": steps}
    plan["time"] = {device: f"{format_duration(batch_steps * r['s_per_step'])} of one device "
                    f"at {r['s_per_step']:.3g} s per step (measured {r['date']})"
                    for device, r in (rates or {}).items()} or (
        "not measured yet for this model and batch size: a run prints its rate after its "
        "first batch and remembers it for the next --dry_run")
    return plan


def rates_file():
    return cache_home() / "sampling_rates.json"


def measured_rates(key):
    """{device: {"s_per_step", "date"}} measured before under `key` ({} when none)."""
    try:
        return json.loads(rates_file().read_text()).get(key, {})
    except (OSError, ValueError):
        return {}


def remember_rate(key, device, seconds):
    """Record a measured rate for later dry runs; a cache that cannot be written is skipped."""
    try:
        rates = json.loads(rates_file().read_text()) if rates_file().is_file() else {}
        rates.setdefault(key, {})[device] = {"s_per_step": seconds,
                                             "date": time.strftime("%Y-%m-%d")}
        rates_file().parent.mkdir(parents=True, exist_ok=True)
        write_json(rates_file(), rates)
    except (OSError, ValueError):
        pass


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- the run
def sample_to_folder(model, diffusion, flags, job, info, out_dir=None, overwrite=False,
                     reuse_finished=False, break_lock=False, rate_key=None, announce=print):
    """Sample `job` on every rank into its run folder (every rank calls this, inside
    `dist.process_group`; a user mistake raises the same UsageError on every rank before any
    sampling); rank 0 returns {"folder", "samples", "gt"?, "state": new | resume | finished},
    other ranks None.
    reuse_finished: a finished run of the same settings is returned as it is (else an error).
    Rank 0 holds the folder's lock (ramvid.runlock) from before its first write to the end;
    break_lock takes over a lock left by a dead run on another host. rate_key: where rank 0
    remembers the measured seconds per step for later dry runs. The model must be on
    info.device."""
    build = long_video_work if job.long else fixed_length_work
    work, num_frames, source = build(model, diffusion, flags, job)
    plan = cost(job, diffusion, model_video_shape(model)[1])
    steps_per_batch = plan["steps_per_batch"]
    record = job_record(job, flags, diffusion, num_frames, source)
    folder = run_folder(record, out_dir)
    store = ChunkStore(folder, job.num_samples, job.chunk_size,
                       _fields(model, num_frames, job.save_gt))
    chunks = store.ranges()
    lock = FolderLock(folder, what="sampling run", break_lock=break_lock) if info.is_main else None

    def prepare():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the output folder {folder}: {e.strerror or e}; set "
                             "--out_dir or $OPENAI_LOGDIR") from None
        lock.acquire()
        state = prepare_folder(folder, record, store.complete_files(), overwrite, reuse_finished)
        if state == "finished":
            announce(f"reusing the finished run in {folder}")
            return state, []
        if overwrite:
            store.discard()
        done = store.finished() if state == "resume" else []
        announce(f"sampling into {folder}\nplan: {job.num_samples} videos of {num_frames} frames"
                 f" ({record['task']}, given frames {list(job.cond_frames)}); "
                 f"{plan['model_calls_per_video']} model "
                 f"calls per video; batches of {job.batch_size} on {info.world_size} rank(s); "
                 f"{len(chunks)} chunk(s) of {job.chunk_size}"
                 + (f", {len(done)} already finished" if done else ""))
        return state, [k for k in range(len(chunks)) if k not in done]

    try:
        state, todo = dist.run_on_main(prepare)  # an error there is raised on every rank
        if state == "finished":
            return {"folder": folder, **store.final_paths(), "state": state} \
                if info.is_main else None

        grids = grid_writer(folder, job.save_video, list(job.cond_frames), job.fps) \
            if info.is_main else None
        batches = [global_batches(len(chunk), job.batch_size) for chunk in chunks]
        batches_before = np.cumsum([0] + [len(b) for b in batches])
        rounds = sum(math.ceil(len(batches[k]) / info.world_size) for k in todo)
        remember = None if rate_key is None else \
            (lambda seconds: remember_rate(rate_key, device_name(info.device), seconds))
        bar, callback = _progress(rounds * steps_per_batch, steps_per_batch,
                                  job.progress and info.is_main, info.is_main and bool(todo),
                                  remember)
        with bar:
            for k in todo:
                start, local = chunks[k].start, batches[k]  # batches: indices within the chunk
                parts = {name: [] for name in store.fields}
                for first in range(0, len(local), info.world_size):  # one batch per rank
                    mine = first + info.rank
                    result = (work([start + i for i in local[mine]], callback)
                              if mine < len(local) else None)
                    for b, arrays in _gather_round(result, first):
                        for name in parts:
                            parts[name].append(arrays[name])
                        if grids is not None:
                            grids(int(batches_before[k]) + b, arrays)
                if info.is_main:
                    store.save(k, {name: np.concatenate(p) for name, p in parts.items()})
            if not info.is_main:
                return None
            return {"folder": folder, **store.assemble(), "state": state}
    finally:
        if lock is not None:
            lock.release()


def _gather_round(result, first):
    """Rank 0: [(b, {name: numpy array})] for the batches b = first, first + 1, ... that the
    ranks sampled this round, in index order; other ranks: []. Every rank takes part in the
    gather (an idle rank sends None), never only rank 0."""
    results = dist.all_gather_object(result)  # [rank 0's batch, rank 1's, ...]
    if dist.get_rank() != 0:
        return []
    return [(first + r, {name: np.asarray(value) for name, value in arrays.items()})
            for r, arrays in enumerate(results) if arrays is not None]


def _progress(total_steps, steps_per_batch, show, timed, remember=None):
    """The bar over denoising steps and its per-step callback. With `timed`, the callback times
    up to WARMUP_STEPS steps of the first batch after its first step (start-up, kernel
    selection, compilation), then prints the estimate and passes the rate to `remember`; a
    one-step batch is timed from the start."""
    bar, advance = step_bar(total_steps, show)
    measure = max(1, min(steps_per_batch - 1, WARMUP_STEPS))
    stamps = ([time.perf_counter()] if steps_per_batch == 1 else []) if timed else None

    def callback(out):
        nonlocal stamps
        advance(out)
        if stamps is None:
            return
        stamps.append(time.perf_counter())
        if len(stamps) > measure:
            per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
            # Rank 0 takes one batch per round, so its steps set the pace of the run.
            bar.write(f"measured {per_step:.3g} s per step (first batch, after its first step): "
                      f"estimated total {format_duration(per_step * bar.total)} for "
                      f"{bar.total} steps on rank 0")
            stamps = None
            if remember is not None:
                remember(per_step)

    return bar, callback


def format_duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def grid_writer(folder, save_video, cond_frames, fps):
    """Writes samples_BBB.<fmt> (and gt_BBB.<fmt>) for global batch BBB; None for no grids."""
    if save_video == "none":
        return None

    def write(number, result):
        for name, prefix in (("samples", "samples_"), ("gt", GT_PREFIX)):
            if name in result:
                save_video_grid(folder / f"{prefix}{number:03d}.{save_video}",
                                np.asarray(result[name]), cond_frames=cond_frames, fps=fps)
    return write
