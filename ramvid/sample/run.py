"""Whole sampling runs as the scripts perform them: batches over ranks -> npz files and grids.

`sample_run` (fixed-length videos, scripts/video_sample.py) and `long_video_run`
(scripts/video_sample_long.py) share the flow: every rank samples its global batches, rank 0
receives all of them in index order, writes a grid per batch as it arrives and the npz files
at the end.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..masking import mask_from_frames
from ..video_grid import save_video_grid
from .clips import ClipSource
from .core import (SamplerOptions, denoise, is_class_conditional, labels_for, model_video_shape,
                   step_bar)
from .long import plan_long_video, rollout
from .ordered import BatchSpec, num_rounds, run_in_order
from .output import GT_PREFIX, save_npz, to_uint8
from .seeds import sample_generators


@dataclass
class SampleJob:
    """What to sample and where to put it (the script's flags, resolved)."""

    num_samples: int
    batch_size: int
    seed: int = 0
    cond_frames: list = None  # given frame indices; None or [] = unconditional
    data_dir: str = ""
    samples_per_clip: int = 1  # consecutive samples sharing one clip (clip-major order)
    save_gt: bool = False
    save_video: str = "gif"  # gif | mp4 | png | none
    fps: int = 4
    options: SamplerOptions = field(default_factory=SamplerOptions)
    progress: bool = True


@dataclass
class LongJob(SampleJob):
    total_length: int = 0
    scheme: str = "autoregressive"
    max_cond_frames: int = 4
    prediction_step: int = 0  # 0: seq_len - max_cond_frames
    start_frames: int = 0  # known first frames taken from the data clips (0: unconditional start)


class _Collector:
    """Rank 0: receives batches in order, writes a grid per batch, keeps arrays for the npz."""

    def __init__(self, logdir, job, given_frames):
        self.logdir, self.job, self.given_frames = Path(logdir), job, given_frames
        self.parts = {}
        self.grids = []

    def __call__(self, b, indices, result):
        for name, value in result.items():
            self.parts.setdefault(name, []).append(value.numpy())
        if self.job.save_video != "none":
            for name, prefix in (("samples", "samples_"), ("gt", GT_PREFIX)):
                if name in result:
                    path = self.logdir / f"{prefix}{b:03d}.{self.job.save_video}"
                    self.grids.append(save_video_grid(path, result[name].numpy(),
                                                      cond_frames=self.given_frames, fps=self.job.fps))

    def write(self):
        arrays = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        labels = arrays.get("labels")
        paths = {"samples": save_npz(self.logdir, arrays["samples"], labels)}
        if "gt" in arrays:
            paths["gt"] = save_npz(self.logdir, arrays["gt"], labels, prefix=GT_PREFIX)
        paths["grids"] = self.grids
        return paths


def _spec(model, num_frames, save_gt):
    channels, _, height, width = model_video_shape(model)
    item = (num_frames, height, width, channels)
    fields = {"samples": (item, torch.uint8)}
    if save_gt:
        fields["gt"] = (item, torch.uint8)
    if is_class_conditional(model):
        fields["labels"] = ((), torch.long)
    return BatchSpec(**fields)


def _labels(model, job, indices, clip_labels):
    if not is_class_conditional(model):
        return None
    return labels_for(model, job.seed, indices, clip_labels)


def _result(samples, gt, labels):
    result = {"samples": to_uint8(samples)}
    if gt is not None:
        result["gt"] = to_uint8(gt)
    if labels is not None:
        result["labels"] = labels
    return result


def _run(model, logdir, job, num_frames, given_frames, steps_per_batch, work, rank, world_size,
         device):
    collector = _Collector(logdir, job, given_frames) if rank == 0 else None
    rounds = num_rounds(job.num_samples, job.batch_size, world_size)
    bar, callback = step_bar(rounds * steps_per_batch, job.progress and rank == 0)
    with bar:
        run_in_order(job.num_samples, job.batch_size, lambda idx: work(idx, callback),
                     _spec(model, num_frames, job.save_gt), collector, rank=rank,
                     world_size=world_size, device=device)
    return collector.write() if rank == 0 else None


def sample_run(model, diffusion, job, logdir, *, rank=0, world_size=1, device="cpu"):
    """Sample job.num_samples videos of seq_len frames; on rank 0 write
    <N>x<T>x<H>x<W>x<C>.npz (and gt_<...>.npz, grids) into logdir and return their paths."""
    seq_len = model_video_shape(model)[1]
    cond_frames = list(job.cond_frames or [])
    needs_data = bool(cond_frames) or job.save_gt or (is_class_conditional(model) and bool(job.data_dir))
    source = None
    if needs_data:
        source = ClipSource(job.data_dir, _flags_of(model), seq_len, job.samples_per_clip)

    def work(indices, callback):
        clips, clip_labels = source.clips(indices) if source else (None, None)
        labels = _labels(model, job, indices, clip_labels)
        obs_mask = mask_from_frames(cond_frames, len(indices), seq_len) if cond_frames else None
        samples = denoise(model, diffusion, sample_generators(job.seed, indices),
                          obs=clips if cond_frames else None, obs_mask=obs_mask, labels=labels,
                          options=job.options, callback=callback)
        return _result(samples, clips if job.save_gt else None, labels)

    return _run(model, logdir, job, seq_len, cond_frames, diffusion.num_timesteps, work, rank,
                world_size, device)


def long_video_run(model, diffusion, job, logdir, *, rank=0, world_size=1, device="cpu"):
    """Sample job.num_samples videos of job.total_length frames by a window plan; on rank 0
    write the npz files (and grids) into logdir and return their paths."""
    seq_len = model_video_shape(model)[1]
    prediction_step = job.prediction_step or seq_len - job.max_cond_frames
    plan = plan_long_video(job.scheme, job.total_length, seq_len, job.max_cond_frames,
                           prediction_step, job.start_frames)
    flags = _flags_of(model)
    per_clip = job.samples_per_clip
    start_source = ClipSource(job.data_dir, flags, seq_len, per_clip) if job.start_frames else None
    # The ground truth spans the whole length, so it needs files of >= total_length frames.
    gt_source = ClipSource(job.data_dir, flags, job.total_length, per_clip) if job.save_gt else None

    def work(indices, callback):
        start, clip_labels = start_source.clips(indices) if start_source else (None, None)
        if start is not None:
            start = start[:, :, : job.start_frames]
        gt = gt_source.clips(indices)[0] if gt_source else None
        labels = _labels(model, job, indices, clip_labels)
        videos = rollout(model, diffusion, plan, sample_generators(job.seed, indices),
                         job.total_length, start=start, labels=labels, options=job.options,
                         callback=callback)
        return _result(videos, gt, labels)

    return _run(model, logdir, job, job.total_length, list(range(job.start_frames)),
                len(plan) * diffusion.num_timesteps, work, rank, world_size, device)


def _flags_of(model):
    cfg = model.config
    return {"image_size": cfg.image_size, "seq_len": cfg.seq_len, "rgb": cfg.in_channels == 3,
            "class_cond": cfg.num_classes is not None, "num_classes": cfg.num_classes or 0}


__all__ = ["LongJob", "SampleJob", "long_video_run", "sample_run"]
