"""A sampling job from its settings to the npz files in its run folder.

`sample_to_folder` is the one path from a model to sample files: scripts/video_sample.py,
scripts/video_sample_long.py and video_eval.py --model_path all call it. Fixed-length videos
run one batch through `sample_batch`; long videos run a window plan (long.py).
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import dist
from ..masking import mask_from_frames
from .batch import SamplerOptions, is_class_conditional, labels_for, model_video_shape, sample_batch
from .chunks import ChunkStore
from .clips import ClipSource
from .long import plan_long_video, rollout
from .output import to_uint8
from .record import prepare_folder, run_folder, task_of
from .runner import agree_on, grid_writer, run_chunks
from .seeds import sample_generators


@dataclass(frozen=True)
class LongSettings:
    total_length: int
    scheme: str = "autoregressive"
    max_cond_frames: int = 4
    prediction_step: int = 0  # 0: seq_len - max_cond_frames
    start_frames: int = 0  # known first frames taken from the data clips (0: unconditional start)


@dataclass(frozen=True)
class SampleJob:
    """What to sample (the script's flags, resolved)."""

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


def _fields(model, num_frames, save_gt):
    channels, _, height, width = model_video_shape(model)
    item = (num_frames, height, width, channels)
    fields = {"samples": (item, np.uint8)}
    if save_gt:
        fields["gt"] = (item, np.uint8)
    if is_class_conditional(model):
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
    """(work(indices, callback) -> arrays, denoising steps per batch, frames, data clips);
    `flags`: the model's flags (image size, channels, labels of the clips to read)."""
    seq_len = model_video_shape(model)[1]
    cond_frames = list(job.cond_frames)
    needs_data = bool(cond_frames) or job.save_gt or (is_class_conditional(model)
                                                      and bool(job.data_dir))
    source = ClipSource(job.data_dir, flags, seq_len, job.samples_per_clip) \
        if needs_data else None

    def work(indices, callback):
        clips, y = source.clips(indices) if source else (None, None)
        obs_mask = mask_from_frames(cond_frames, len(indices), seq_len) if cond_frames else None
        videos, labels = sample_batch(model, diffusion, indices, seed=job.seed, obs=clips,
                                      obs_mask=obs_mask, y=y, options=job.options,
                                      callback=callback)
        return _result(videos, to_uint8(clips) if job.save_gt else None, labels)

    return work, diffusion.num_timesteps, seq_len, (len(source) if source else 0)


def long_video_work(model, diffusion, flags, job):
    """As fixed_length_work, for videos of job.long.total_length frames by a window plan."""
    seq_len = model_video_shape(model)[1]
    settings = job.long
    plan = plan_long_video(settings.scheme, settings.total_length, seq_len,
                           settings.max_cond_frames,
                           settings.prediction_step or seq_len - settings.max_cond_frames,
                           settings.start_frames)
    per_clip = job.samples_per_clip
    start_source = ClipSource(job.data_dir, flags, seq_len, per_clip) if settings.start_frames else None
    # The ground truth spans the whole length, so it needs files of >= total_length frames.
    gt_source = ClipSource(job.data_dir, flags, settings.total_length, per_clip) if job.save_gt else None

    def work(indices, callback):
        start, y = start_source.clips(indices) if start_source else (None, None)
        if start is not None:
            start = start[:, :, : settings.start_frames]
        gt = gt_source.clips(indices)[0] if gt_source else None
        labels = labels_for(model, job.seed, indices, y)
        videos = rollout(model, diffusion, plan, sample_generators(job.seed, indices),
                         settings.total_length, start=start, y=labels, options=job.options,
                         callback=callback)
        return _result(to_uint8(videos), None if gt is None else to_uint8(gt), labels)

    sources = [s for s in (start_source, gt_source) if s]
    return (work, len(plan) * diffusion.num_timesteps, settings.total_length,
            len(sources[0]) if sources else 0)


def job_record(job, flags, diffusion, num_frames, data_clips):
    """The sample_args.json of a job: what evaluation and a resumed run need to know."""
    options = job.options
    num_clips = 0
    if data_clips:
        num_clips = min(-(-job.num_samples // job.samples_per_clip), data_clips)
    return {
        "task": task_of(job.cond_frames, job.long and job.long.scheme),
        "checkpoint": str(Path(job.model_path).resolve()),
        "cond_frames": list(job.cond_frames), "seq_len": num_frames,
        "num_samples": job.num_samples, "num_clips": num_clips, "data_clips": data_clips,
        "samples_per_clip": job.samples_per_clip,
        "clip_of_sample": "sample i uses clip (i // samples_per_clip) mod data_clips",
        "sampler": options.sampler, "steps": diffusion.num_timesteps,
        "timestep_respacing": flags.get("timestep_respacing", ""), "eta": options.eta,
        "resample_steps": options.resample_steps, "guidance_scale": options.guidance_scale,
        "clip_denoised": options.clip_denoised, "seed": job.seed,
        "data_dir": str(Path(job.data_dir).resolve()) if job.data_dir else "",
        "save_gt": job.save_gt, "batch_size": job.batch_size, "chunk_size": job.chunk_size,
        "long": asdict(job.long) if job.long else None,
        "save_video": job.save_video, "fps": job.fps, "model_flags": flags,
    }


def sample_to_folder(model, diffusion, flags, job, info, out_dir=None, overwrite=False,
                     reuse_finished=False, announce=print):
    """Sample `job` on every rank into its run folder (every rank calls this; a user mistake
    raises the same UsageError on every rank before any sampling); rank 0 returns
    {"folder", "samples", "gt"?, "state": new | resume | finished}, other ranks None.
    reuse_finished: a finished run of the same settings is returned as it is (else an error).
    The model must be on info.device."""
    build = long_video_work if job.long else fixed_length_work
    work, steps_per_batch, num_frames, data_clips = build(model, diffusion, flags, job)
    record = job_record(job, flags, diffusion, num_frames, data_clips)
    folder = run_folder(record, out_dir)
    store = ChunkStore(folder, job.num_samples, job.chunk_size,
                       _fields(model, num_frames, job.save_gt))

    def prepare():
        state = prepare_folder(folder, record, store.complete_files(), overwrite, reuse_finished)
        if state == "finished":
            announce(f"reusing the finished run in {folder}")
            return state, []
        if overwrite:
            store.discard()
        done = store.finished() if state == "resume" else []
        calls = job.options.model_calls_per_step(bool(job.cond_frames)) * steps_per_batch
        announce(f"sampling into {folder}\nplan: {job.num_samples} videos of {num_frames} frames"
                 f" ({record['task']}, given frames {list(job.cond_frames)}); {calls} model "
                 f"calls per video; batches of {job.batch_size} on {info.world_size} rank(s); "
                 f"{len(store.ranges())} chunk(s) of {job.chunk_size}"
                 + (f", {len(done)} already finished" if done else ""))
        return state, [k for k in range(len(store.ranges())) if k not in done]

    state, todo = agree_on(prepare, info)
    if state == "finished":
        return {"folder": folder, **store.final_paths(), "state": state} if info.is_main else None
    grids = grid_writer(folder, job.save_video, list(job.cond_frames), job.fps) if info.is_main else None
    # From here on an error in one rank must end all of them (no rank left in a gather).
    dist.run_or_abort(run_chunks, work, store, batch_size=job.batch_size,
                      steps_per_batch=steps_per_batch, todo=todo, grids=grids, info=info,
                      progress=job.progress)
    if not info.is_main:
        return None
    return {"folder": folder, **store.assemble(), "state": state}


__all__ = ["LongSettings", "SampleJob", "fixed_length_work", "job_record", "long_video_work",
           "sample_to_folder"]
