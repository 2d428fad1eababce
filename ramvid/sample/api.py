"""`sample_videos`: the notebook entry point, on the same batches as the sampling scripts."""
import numpy as np
import torch

from ..masking import mask_from_frames
from .batch import SamplerOptions, model_video_shape, sample_batch
from .ordered import global_batches
from .output import from_uint8
from .progress import step_bar


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
                  cond_frames=None, y=None, seed=0, first_index=0, batch_size=8,
                  sampler="ddpm", eta=0.0, clip_denoised=True, resample_steps=1,
                  guidance_scale=1.0, progress=False):
    """Sample videos in memory: uint8 numpy (N, T, H, W, C), as in the npz files.

    obs: the videos holding the given frames, float (N, C, T, H, W) in [-1, 1] or uint8
    (N, T, H, W, C); video k of the result uses obs[k % len(obs)]. Which frames are given:
    obs_mask bool (N, T) or (T,), or cond_frames (a list of indices). Without obs the samples
    are unconditional. y: class labels (class-conditional models; default drawn from the
    seed). Sample k is global sample first_index + k of `seed`: to regenerate sample i alone
    pass num_samples=1, first_index=i and its obs.
    """
    options = SamplerOptions(sampler, eta, clip_denoised, resample_steps, guidance_scale)
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
    if y is not None:
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)

    batches = global_batches(num_samples, batch_size)
    bar, callback = step_bar(len(batches) * diffusion.num_timesteps, progress)
    out = []
    with bar:
        for batch in batches:
            k, n = batch.start, len(batch)
            videos, _ = sample_batch(
                model, diffusion, [first_index + j for j in batch], seed=seed,
                obs=None if obs is None else _rows(obs, k, n),
                obs_mask=None if obs_mask is None else _rows(obs_mask, k, n),
                y=None if y is None else _rows(y, k, n), options=options, callback=callback)
            out.append(videos)
    return np.concatenate(out)


__all__ = ["as_float_videos", "sample_videos"]
