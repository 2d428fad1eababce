"""Sample N videos over R ranks into a run folder, resumably: `sample_to_folder`, the one path
from a model to sample files (video_sample.py, video_sample_long.py, video_eval.py
--model_path). docs/SAMPLING.md describes the folder, its record `sample_args.json` (which
video_eval.py reads and holds flags to), and why R ranks give the same samples as one.

Samples are cut into chunks of `chunk_size` (files.py), chunks into global batches of
`batch_size` consecutive samples; in every round each rank samples one batch (batch b on rank
b mod R), and rank 0 keeps the gathered results in index order, writes a grid per batch and
each chunk file when complete.
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
from ..flags import as_json, versions, write_json
from ..masking import mask_from_frames
from ..runlock import FolderLock, format_duration
from ..runtime import cache_home
from ..video_io import save_video_grid
from .batch import (CLIP_DRAW_SEED, ClipSource, SamplerOptions, global_batches, labels_for,
                    model_video_shape, sample_batch, sample_generators, step_bar, to_uint8)
from .files import GT_PREFIX, ChunkStore
from .long import LongSettings, plan_long_video, rollout

RECORD_JSON = "sample_args.json"
# Keys that may differ when a run is resumed (they change no sample), and also when a finished
# run is reused (batches and chunks only move float rounding).
_RESUMABLE_KEYS = ("versions", "save_video", "fps")
_REUSABLE_KEYS = _RESUMABLE_KEYS + ("batch_size", "chunk_size")
# One rank may wait for another's whole batch at a gather; batches of 1000 steps on large
# models take long, so every sampling run (scripts and evaluation) uses this collective timeout.
COLLECTIVE_TIMEOUT_S = 6 * 3600
WARMUP_STEPS = 20
RATES_JSON = "sampling_rates.json"  # in cache_home(): {rate key: {device: {"s_per_step", "date"}}}


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

    def clip_frames(self, seq_len, class_cond):
        """Frames each --data_dir clip must have, 0 when the job reads none: clips give the
        given frames, the ground truth and a class-conditional model's labels. A long video's
        start frames and ground truth come from one clip (the same file), which then spans the
        whole length."""
        if not (self.cond_frames or self.save_gt or (class_cond and self.data_dir)):
            return 0
        return self.long.total_length if self.long and self.save_gt else seq_len


# --------------------------------------------------------------------------- folder and record
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
    options, frames = job.options, list(job.cond_frames)
    record = {
        "task": f"long-{job.long.scheme}" if job.long else "uncond" if not frames
        else "predict" if frames == list(range(len(frames))) else "infill",
        "checkpoint": str(Path(job.model_path).resolve()),
        "cond_frames": frames, "seq_len": num_frames,
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


def prepare_folder(folder, record, finished, overwrite, reuse_finished=False):
    """Rank 0, before sampling: the folder is new, or holds an unfinished run of the same
    record (resumed), or `overwrite` says to start again; with `reuse_finished` a finished run
    of the same record (`finished`: its npz files, [] if it is not finished) is taken as it
    is. Writes the record; returns "new", "resume" or "finished"."""
    folder = Path(folder)
    old = read_record(folder)
    if old is not None and not overwrite:
        ignored = _REUSABLE_KEYS if reuse_finished and finished else _RESUMABLE_KEYS
        changed = [k for k in record if k not in ignored
                   and old.get(k) != as_json(record[k])]
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
def _work(model, diffusion, flags, job, scanned=None):
    """(work(indices, callback) -> {name: array}, frames per video, the arrays as ChunkStore
    fields, ClipSource or None); `flags`: the model's flags (image size, channels, labels of
    the clips to read); `scanned`: the command's ClipSource of job.data_dir, if it made one."""
    channels, seq_len, height, width = model_video_shape(model)
    long, cond_frames = job.long, list(job.cond_frames)
    num_frames = long.total_length if long else seq_len
    video = ((num_frames, height, width, channels), np.uint8)
    fields = {"samples": video}
    if job.save_gt:
        fields["gt"] = video
    if model.config.num_classes is not None:
        fields["labels"] = ((), np.int64)
    plan = plan_long_video(long, seq_len) if long else None
    length = job.clip_frames(seq_len, flags["class_cond"])  # of each clip; 0: none is read
    source = ClipSource(job.data_dir, flags, length, job.samples_per_clip,
                        -(-job.num_samples // job.samples_per_clip), scanned) if length else None

    def work(indices, callback):
        clips, y = source.clips(indices) if source else (None, None)  # (n, C, L, H, W), (n,)
        labels = labels_for(model, job.seed, indices, y)
        generators = sample_generators(job.seed, indices)
        if long:
            videos = rollout(model, diffusion, plan, generators, num_frames,
                             start=clips[:, :, : long.start_frames] if long.start_frames else None,
                             y=labels, options=job.options, callback=callback)
        else:
            # (without given frames sample_batch runs an unconditional batch)
            videos = sample_batch(model, diffusion, generators, obs=clips,
                                  obs_mask=mask_from_frames(cond_frames, len(indices), seq_len),
                                  y=labels, options=job.options, callback=callback)
        arrays = {"samples": to_uint8(videos), "gt": to_uint8(clips) if job.save_gt else None,
                  "labels": labels}
        return {name: array for name, array in arrays.items() if array is not None}

    return work, num_frames, fields, source


# --------------------------------------------------------------------------- cost
def cost(job, diffusion, seq_len, rate_key=None):
    """What a job costs: videos, model calls, denoising steps of batches, and the time at each
    rate measured before under `rate_key` (its model and batch): a dict for --dry_run and the
    plan line."""
    try:
        rates = json.loads((cache_home() / RATES_JSON).read_text()).get(rate_key, {})
    except (OSError, ValueError):
        rates = {}
    steps = (len(plan_long_video(job.long, seq_len)) if job.long else 1) * diffusion.num_timesteps
    guided = job.cond_frames and job.options.guidance_scale != 1.0  # two network calls a step
    calls = steps * job.options.resample_steps * (2 if guided else 1)
    # A chunk's batches start at the chunk (files.py): a chunk of n samples takes ceil(n / B).
    chunks = global_batches(job.num_samples, job.chunk_size)
    batch_steps = sum(-(-len(chunk) // job.batch_size) for chunk in chunks) * steps
    plan = {"videos": job.num_samples, "model_calls_per_video": calls,
            "model_calls": job.num_samples * calls, "batch_steps": batch_steps,
            "steps_per_batch": steps}
    plan["time"] = {device: f"{format_duration(batch_steps * r['s_per_step'])} of one device "
                    f"at {r['s_per_step']:.3g} s per step (measured {r['date']})"
                    for device, r in rates.items()} or (
        "not measured yet for this model and batch size: a run prints its rate after its "
        "first batch and remembers it for the next --dry_run")
    return plan


def remember_rate(key, device, seconds):
    """Record a measured rate for later dry runs; a cache that cannot be written is skipped."""
    device = torch.device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{device.type} ({torch.get_num_threads()} threads)")
    path = cache_home() / RATES_JSON
    try:
        rates = json.loads(path.read_text()) if path.is_file() else {}
        rates.setdefault(key, {})[name] = {"s_per_step": seconds,
                                           "date": time.strftime("%Y-%m-%d")}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rates)
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- the run
def sample_to_folder(model, diffusion, flags, job, info, out_dir=None, overwrite=False,
                     reuse_finished=False, break_lock=False, rate_key=None, scanned=None):
    """Sample `job` into its run folder; every rank calls this inside `dist.process_group` (a user
    mistake raises the same UsageError on every rank before any sampling). Rank 0 returns
    {"folder", "samples", "gt"?, "state": new | resume | finished}, other ranks None; with
    reuse_finished a finished run of the same settings is returned as it is (else an error).
    Rank 0 holds the folder's lock (ramvid.runlock) from before its first write to the end;
    break_lock takes over a lock left by a dead run on another host. rate_key: where rank 0
    remembers the measured seconds per step; scanned: the command's checked ClipSource of
    job.data_dir (its files are not probed again). The model must be on info.device."""
    work, num_frames, fields, source = _work(model, diffusion, flags, job, scanned)
    plan = cost(job, diffusion, model_video_shape(model)[1])
    record = job_record(job, flags, diffusion, num_frames, source)
    folder = run_folder(record, out_dir)
    store = ChunkStore(folder, job.num_samples, job.chunk_size, fields)
    chunks = store.ranges
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
            print(f"reusing the finished run in {folder}", flush=True)
            return state, []
        if overwrite:
            store.discard()
        done = store.finished() if state == "resume" else []
        print(f"sampling into {folder}\nplan: {job.num_samples} videos of {num_frames} frames "
              f"({record['task']}, given frames {list(job.cond_frames)}); "
              f"{plan['model_calls_per_video']} model calls per video; batches of "
              f"{job.batch_size} on {info.world_size} rank(s); {len(chunks)} chunk(s) of "
              f"{job.chunk_size}" + (f", {len(done)} already finished" if done else ""), flush=True)
        return state, [k for k in range(len(chunks)) if k not in done]

    try:
        state, todo = dist.run_on_main(prepare)  # an error there is raised on every rank
        if state == "finished":
            return {"folder": folder, **store.final_paths(), "state": state} \
                if info.is_main else None

        batches = [global_batches(len(chunk), job.batch_size) for chunk in chunks]
        batches_before = np.cumsum([0] + [len(b) for b in batches])
        rounds = sum(math.ceil(len(batches[k]) / info.world_size) for k in todo)
        bar, callback = _progress(rounds, plan["steps_per_batch"], job.progress and info.is_main,
                                  info.is_main and bool(todo), rate_key, info.device)
        with bar:
            for k in todo:
                start, local = chunks[k].start, batches[k]  # batches: indices within the chunk
                parts = {name: [] for name in fields}
                for first in range(0, len(local), info.world_size):  # one batch per rank
                    mine = first + info.rank
                    result = (work([start + i for i in local[mine]], callback)
                              if mine < len(local) else None)
                    # Every rank takes part (an idle one sends None): [rank 0's batch, ...].
                    results = dist.all_gather_object(result)
                    for r, arrays in enumerate(results if info.is_main else []):
                        if arrays is None:
                            continue
                        arrays = {name: np.asarray(value) for name, value in arrays.items()}
                        for name in parts:
                            parts[name].append(arrays[name])
                        number = batches_before[k] + first + r  # the global batch
                        for name, prefix in (("samples", "samples_"), ("gt", GT_PREFIX)):
                            if name in arrays and job.save_video != "none":  # its grids
                                save_video_grid(folder / f"{prefix}{number:03d}.{job.save_video}",
                                                arrays[name], cond_frames=list(job.cond_frames),
                                                fps=job.fps)
                if info.is_main:
                    store.save(k, {name: np.concatenate(p) for name, p in parts.items()})
            return {"folder": folder, **store.assemble(), "state": state} if info.is_main else None
    finally:
        if lock is not None:
            lock.release()


def _progress(rounds, steps_per_batch, show, timed, rate_key, device):
    """The bar over the denoising steps of `rounds` batches and its per-step callback. With
    `timed`, the callback times up to WARMUP_STEPS steps of the first batch after its first step
    (start-up, kernel selection, compilation), then prints the estimate and remembers the rate
    under `rate_key` (unless None); a one-step batch is timed from the start."""
    bar, advance = step_bar(rounds * steps_per_batch, show)
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
            if rate_key is not None:
                remember_rate(rate_key, device, per_step)

    return bar, callback
