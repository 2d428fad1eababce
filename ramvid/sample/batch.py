"""One batch of videos: given clips, obs_mask and labels y in, sampled videos out.

Sample k of a batch is global sample `indices[k]`: its noise comes from its own generator
(see seeds.py), so it is the same whatever batch it lands in, and can be regenerated alone.
Every sampling path of ramvid (the scripts, evaluation, long videos, the notebook API) runs
its batches through `denoise`.
"""
from dataclasses import dataclass

import torch

from ..diffusion import SAMPLERS
from ..diffusion.sampling import model_device
from .output import to_uint8
from .seeds import sample_generators, sample_labels


@dataclass(frozen=True)
class SamplerOptions:
    """How the reverse process is run (the sampling flags)."""

    sampler: str = "ddpm"  # one of ramvid.diffusion.SAMPLERS
    eta: float = 0.0  # DDIM noise; 0 = deterministic
    clip_denoised: bool = True
    resample_steps: int = 1
    guidance_scale: float = 1.0  # frame guidance; 1 = plain conditioning

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is not one of: {', '.join(SAMPLERS)}")
        if self.eta != 0 and self.sampler != "ddim":
            raise ValueError(f"eta={self.eta}: only the ddim sampler has eta")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta={self.eta} must lie in [0, 1]")

    def model_calls_per_step(self, guided):
        """Network evaluations per denoising step (guidance doubles them)."""
        return self.resample_steps * (2 if guided and self.guidance_scale != 1.0 else 1)


def model_video_shape(model):
    """(C, T, H, W) of the videos `model` was built for."""
    cfg = model.config
    return cfg.in_channels, cfg.seq_len, cfg.image_size, cfg.image_size


def is_class_conditional(model):
    return model.config.num_classes is not None


def labels_for(model, seed, indices, y=None):
    """The class labels of a batch: the clips' labels y where given (>= 0), else drawn from
    (seed, index); None for an unconditional model."""
    if not is_class_conditional(model):
        return None
    drawn = sample_labels(seed, indices, model.config.num_classes)
    if y is None:
        return drawn
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    bad = y[y >= model.config.num_classes]
    if len(bad):
        raise ValueError(f"labels {bad.tolist()} outside [0, num_classes={model.config.num_classes})")
    return torch.where(y >= 0, y, drawn)


def denoise(model, diffusion, generators, *, num_frames=None, obs=None, obs_mask=None, y=None,
            options=SamplerOptions(), callback=None):
    """Run the reverse process for one batch (one generator per video); float (n, C, T, H, W)
    on the CPU. obs: (n, C, T, H, W) in [-1, 1]; obs_mask: bool (n, T), True = given; y: (n,)."""
    channels, seq_len, height, width = model_video_shape(model)
    shape = (len(generators), channels, num_frames or seq_len, height, width)
    device = model_device(model)
    with torch.inference_mode():
        videos = diffusion.sample_loop(
            model, shape, sampler=options.sampler, obs=obs, obs_mask=obs_mask,
            guidance_scale=options.guidance_scale, resample_steps=options.resample_steps,
            eta=options.eta, clip_denoised=options.clip_denoised,
            model_kwargs=None if y is None else {"y": y.to(device)},
            generator=generators, callback=callback, device=device,
        )
    return videos.cpu()


def sample_batch(model, diffusion, indices, *, seed, obs=None, obs_mask=None, y=None,
                 options=SamplerOptions(), callback=None):
    """Global samples `indices` of `seed`: uint8 (n, T, H, W, C) videos and their labels (or
    None). obs (n, C, T, H, W) holds the given frames where obs_mask (n, T) is True; y are the
    clips' class labels (-1 or None: drawn from the seed)."""
    labels = labels_for(model, seed, indices, y)
    any_given = obs_mask is not None and bool(obs_mask.any())
    videos = denoise(model, diffusion, sample_generators(seed, indices),
                     num_frames=None if obs is None else obs.shape[2],
                     obs=obs if any_given else None, obs_mask=obs_mask if any_given else None,
                     y=labels, options=options, callback=callback)
    return to_uint8(videos), labels


__all__ = ["SAMPLERS", "SamplerOptions", "denoise", "is_class_conditional", "labels_for", "model_device",
           "model_video_shape", "sample_batch"]
