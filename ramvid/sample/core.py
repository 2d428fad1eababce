"""Sampling batches of videos with per-sample seeds, and the notebook API `sample_videos`.

Sample k of a call is global sample `first_index + k`: its noise comes from its own generator
(see seeds.py), so it is the same whatever the batch size, and can be regenerated alone.
"""
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..masking import mask_from_frames
from .output import from_uint8, to_uint8
from .seeds import sample_generators, sample_labels


@dataclass(frozen=True)
class SamplerOptions:
    """How the reverse process is run (the sampling flags)."""

    use_ddim: bool = False
    eta: float = 0.0  # DDIM only; 0 = deterministic
    clip_denoised: bool = True
    resample_steps: int = 1
    guidance_scale: float = 1.0  # frame guidance; 1 = plain conditioning


def model_video_shape(model):
    """(C, T, H, W) of the videos `model` was built for."""
    cfg = model.config
    return cfg.in_channels, cfg.seq_len, cfg.image_size, cfg.image_size


def model_device(model):
    return next(model.parameters()).device


def is_class_conditional(model):
    return model.config.num_classes is not None


def labels_for(model, seed, indices, labels=None):
    """The class labels of a batch: given ones, else drawn from (seed, index); None for an
    unconditional model."""
    if not is_class_conditional(model):
        if labels is not None:
            raise ValueError("labels were given but the model is not class-conditional")
        return None
    if labels is None:
        return sample_labels(seed, indices, model.config.num_classes)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    bad = labels[(labels < 0) | (labels >= model.config.num_classes)]
    if len(bad):
        raise ValueError(f"labels {bad.tolist()} outside [0, num_classes={model.config.num_classes})")
    return labels


def denoise(model, diffusion, generators, *, num_frames=None, obs=None, obs_mask=None,
            labels=None, options=SamplerOptions(), callback=None):
    """Run the reverse process for one batch (one generator per video); float (n, C, T, H, W)
    on the CPU. obs: (n, C, T, H, W) in [-1, 1]; obs_mask: bool (n, T), True = given."""
    channels, seq_len, height, width = model_video_shape(model)
    shape = (len(generators), channels, num_frames or seq_len, height, width)
    device = model_device(model)
    loop = diffusion.ddim_sample_loop if options.use_ddim else diffusion.p_sample_loop
    extra = {"eta": options.eta} if options.use_ddim else {}
    with torch.inference_mode():
        videos = loop(
            model, shape, obs=obs, obs_mask=obs_mask, clip_denoised=options.clip_denoised,
            resample_steps=options.resample_steps, guidance_scale=options.guidance_scale,
            model_kwargs=None if labels is None else {"y": labels.to(device)},
            generator=generators, callback=callback, device=device, **extra,
        )
    return videos.cpu()


def step_bar(total, enabled, desc="sampling"):
    """A tqdm bar over denoising steps (with ETA) and a callback that advances it."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
    return bar, (lambda _out: bar.update(1))


def as_float_videos(videos):
    """float32 (N, C, T, H, W) in [-1, 1] from such a tensor or from uint8 (N, T, H, W, C)."""
    if isinstance(videos, np.ndarray) and videos.dtype == np.uint8:
        return from_uint8(videos)
    videos = torch.as_tensor(videos)
    if videos.dtype == torch.uint8:
        return from_uint8(videos.numpy())
    if videos.ndim != 5:
        raise ValueError("obs must be (N, C, T, H, W) floats or N x T x H x W x C uint8, "
                         f"got {tuple(videos.shape)}")
    return videos.float()


def _rows(tensor, k, count):
    """Rows k, k+1, ... of a per-sample tensor, cycling when it holds fewer rows than samples."""
    return tensor[[(k + j) % len(tensor) for j in range(count)]]


def sample_videos(model, diffusion, num_samples=None, *, obs=None, obs_mask=None,
                  cond_frames=None, labels=None, seed=0, first_index=0, batch_size=8,
                  use_ddim=False, eta=0.0, clip_denoised=True, resample_steps=1,
                  guidance_scale=1.0, progress=False):
    """Sample videos in memory: uint8 numpy (N, T, H, W, C), as in the npz files.

    obs: the videos holding the given frames, float (N, C, T, H, W) in [-1, 1] or uint8
    (N, T, H, W, C); video k of the result uses obs[k % len(obs)]. Which frames are given:
    obs_mask bool (N, T) or (T,), or cond_frames (a list of indices). Without obs the samples
    are unconditional. Sample k is global sample first_index + k of `seed`: to regenerate
    sample i alone pass num_samples=1, first_index=i and its obs.
    """
    options = SamplerOptions(use_ddim, eta, clip_denoised, resample_steps, guidance_scale)
    seq_len = model_video_shape(model)[1]
    if obs is not None:
        obs = as_float_videos(obs)
        seq_len = obs.shape[2]
        if obs_mask is None and cond_frames is None:
            raise ValueError("obs given without obs_mask or cond_frames: which frames are given?")
    if cond_frames is not None:
        obs_mask = mask_from_frames(cond_frames, 1, seq_len)
    if obs_mask is not None:
        obs_mask = torch.as_tensor(obs_mask, dtype=torch.bool).reshape(-1, seq_len)
        if obs is None and bool(obs_mask.any()):
            raise ValueError("obs_mask marks given frames but no obs was passed")
    num_samples = num_samples if num_samples is not None else (len(obs) if obs is not None else None)
    if not num_samples or num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1 (or pass obs)")
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)

    batches = [range(k, min(num_samples, k + batch_size)) for k in range(0, num_samples, batch_size)]
    bar, callback = step_bar(len(batches) * diffusion.num_timesteps, progress)
    out = []
    with bar:
        for batch in batches:
            k, n = batch.start, len(batch)
            indices = [first_index + j for j in batch]
            out.append(to_uint8(denoise(
                model, diffusion, sample_generators(seed, indices), num_frames=seq_len,
                obs=None if obs is None else _rows(obs, k, n),
                obs_mask=None if obs_mask is None else _rows(obs_mask, k, n),
                labels=labels_for(model, seed, indices, None if labels is None else _rows(labels, k, n)),
                options=options, callback=callback,
            )))
    return np.concatenate(out)


__all__ = ["SamplerOptions", "as_float_videos", "denoise", "is_class_conditional", "labels_for",
           "model_device", "model_video_shape", "sample_videos", "step_bar"]
