"""One batch of videos: given clips, obs_mask and labels y in, sampled videos out.

Sample i of a run with seed s depends on (s, i) only: its noise comes from its own generator,
seeded by a hash of (seed, index), so it does not depend on the batch it lands in, the number of
ranks, or the samples before it, and it can be regenerated alone. Generators live on the CPU, so
a seed gives the same noise on every device. Every sampling path of ramvid (the commands,
evaluation, long videos, `sample_videos` in a notebook) runs its batches through
`sample_batch`; the clips that condition them come from `ClipSource`.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import VideoClipDataset
from ..diffusion.sampling import model_device, sample_loop
from ..masking import mask_from_frames
from ..runtime import derive_seed

_NOISE_STREAM, _LABEL_STREAM = 0, 1
CLIP_DRAW_SEED = 0  # the order in which a run takes the clips of --data_dir
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SamplerOptions:
    """How the reverse process is run (the sampling flags; `sample_loop` checks them)."""

    sampler: str = "ddpm"  # one of ramvid.diffusion.SAMPLERS
    eta: float = 0.0  # DDIM noise; 0 = deterministic
    clip_denoised: bool = True
    resample_steps: int = 1
    guidance_scale: float = 1.0  # frame guidance; 1 = plain conditioning
    precision: str = "fp32"  # fp32 | bf16 | fp16: the network's calls under autocast


# --------------------------------------------------------------------------- per-sample seeds
def sample_generators(seed, indices):
    """One CPU torch.Generator per sample index (pass as `generator=` to `sample_loop`), seeded
    by a 63-bit SeedSequence hash of (seed, index)."""
    if int(seed) < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    return [torch.Generator().manual_seed(derive_seed(seed, i, _NOISE_STREAM)) for i in indices]


def labels_for(model, seed, indices, y=None):
    """The class labels of a batch: the clips' labels y where given (>= 0), else drawn uniformly
    from (seed, index); None for an unconditional model. LongTensor (n,)."""
    num_classes = model.config.num_classes
    if num_classes is None:
        return None
    drawn = torch.tensor([int(np.random.default_rng([int(seed), int(i), _LABEL_STREAM])
                              .integers(num_classes)) for i in indices], dtype=torch.long)
    if y is None:
        return drawn
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    bad = y[y >= num_classes]
    if len(bad):
        raise ValueError(f"labels {bad.tolist()} outside [0, num_classes={num_classes})")
    return torch.where(y >= 0, y, drawn)


# --------------------------------------------------------------------------- clips and pixels
def model_video_shape(model):
    """(C, T, H, W) of the videos `model` was built for."""
    cfg = model.config
    return cfg.in_channels, cfg.seq_len, cfg.image_size, cfg.image_size


class ClipSource:
    """The clips of --data_dir that condition a run: all K usable videos in sorted path order,
    or for a run that needs fewer, n, the first n of a fixed shuffle seeded by CLIP_DRAW_SEED
    (why: docs/SAMPLING.md). Sample i takes clip (i // S) mod n of them (S = samples_per_clip)."""

    def __init__(self, data_dir, flags, seq_len, samples_per_clip=1, num_clips=None,
                 scanned=None):
        """`scanned`: a ClipSource of the same data_dir, flags and seq_len whose scan (every file
        probed) is reused, so that a command's early check does not probe the files again."""
        if samples_per_clip < 1:
            raise ValueError(f"samples_per_clip={samples_per_clip} must be >= 1")
        self.samples_per_clip = samples_per_clip
        if scanned and scanned.dataset.seq_len != int(seq_len):
            raise ValueError(f"scanned clips of {scanned.dataset.seq_len} frames, {seq_len} needed")
        self.dataset = scanned.dataset if scanned else VideoClipDataset(
            data_dir, int(flags["image_size"]), int(seq_len),
            class_cond=bool(flags["class_cond"]), rgb=bool(flags["rgb"]))
        num_classes = int(flags.get("num_classes") or 0)
        if flags["class_cond"] and self.dataset.num_classes != num_classes:
            warnings.warn(f"--data_dir {data_dir} names {self.dataset.num_classes} classes, the "
                          f"model has {num_classes}: labels are the data's class indices (sorted "
                          "file-name prefixes)")
        self.data_clips = len(self.dataset)  # K
        if num_clips is None or num_clips >= self.data_clips:
            self.chosen = list(range(self.data_clips))
        else:
            shuffled = np.random.default_rng(CLIP_DRAW_SEED).permutation(self.data_clips)
            self.chosen = shuffled[:num_clips].tolist()
        self.files = [str(self.dataset.paths[i].relative_to(data_dir)) for i in self.chosen]

    def __len__(self):
        return len(self.chosen)

    def clips(self, indices):
        """(videos float (n, C, T, H, W) in [-1, 1], labels LongTensor (n,); -1 = no class)."""
        clip = self.chosen
        items = [self.dataset[clip[(i // self.samples_per_clip) % len(clip)]] for i in indices]
        videos = torch.stack([video for video, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return videos, labels


def to_uint8(videos):
    """float (N, C, T, H, W) in [-1, 1] -> uint8 numpy (N, T, H, W, C): ((x + 1) * 127.5) rounded
    and clamped. Rounding makes uint8 -> [-1, 1] -> uint8 exact (docs/SAMPLING.md#outputs) and
    removes the half-level downward bias that truncation puts on every sample."""
    videos = torch.as_tensor(videos)
    pixels = ((videos.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()


def from_uint8(videos):
    """uint8 (N, T, H, W, C) -> float32 (N, C, T, H, W) in [-1, 1] (as the data loader maps)."""
    videos = torch.as_tensor(np.asarray(videos))
    if videos.dtype != torch.uint8 or videos.ndim != 5:
        raise ValueError("expected uint8 videos N x T x H x W x C, "
                         f"got {videos.dtype} {tuple(videos.shape)}")
    return videos.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------- one batch
def sample_batch(model, diffusion, generators, *, obs=None, obs_mask=None, y=None,
                 options=SamplerOptions(), callback=None):
    """Run the reverse process for one batch, one generator per video: float (n, C, T, H, W) on
    the CPU. obs: (n, C, T, H, W) in [-1, 1] (T: the model's seq_len without it); obs_mask:
    bool (n, T), True = given; y: (n,) class labels."""
    channels, seq_len, height, width = model_video_shape(model)
    num_frames = obs.shape[2] if obs is not None else seq_len
    if obs_mask is not None and not bool(obs_mask.any()):
        obs, obs_mask = None, None  # nothing given: an unconditional batch
    device = model_device(model)
    with torch.inference_mode():
        videos = sample_loop(
            diffusion, model, (len(generators), channels, num_frames, height, width),
            sampler=options.sampler, obs=obs, obs_mask=obs_mask,
            guidance_scale=options.guidance_scale, resample_steps=options.resample_steps,
            eta=options.eta, clip_denoised=options.clip_denoised,
            model_kwargs=None if y is None else {"y": y.to(device)},
            generator=generators, callback=callback, device=device,
            autocast_dtype=AUTOCAST_DTYPES[options.precision])
    return videos.cpu()


def global_batches(num_samples, batch_size):
    """[range of sample indices] for every batch of `batch_size` consecutive samples, in order."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    return [range(k, min(num_samples, k + batch_size)) for k in range(0, num_samples, batch_size)]


def step_bar(total, enabled):
    """A tqdm bar over denoising steps (with ETA) and a callback that advances it."""
    bar = tqdm(total=total, desc="sampling", unit="step", disable=not enabled, dynamic_ncols=True)
    return bar, (lambda _out: bar.update(1))


# --------------------------------------------------------------------------- in a notebook
def _rows(tensor, batch):
    """The rows of a per-sample tensor (None stays None) for the samples in `batch`, cycling
    when it holds fewer rows than samples."""
    return None if tensor is None else tensor[[i % len(tensor) for i in batch]]


def sample_videos(model, diffusion, num_samples=None, *, obs=None, obs_mask=None,
                  cond_frames=None, y=None, seed=0, first_index=0, batch_size=8,
                  sampler="ddpm", eta=0.0, clip_denoised=True, resample_steps=1,
                  guidance_scale=1.0, progress=False):
    """Sample videos in memory: uint8 numpy (N, T, H, W, C), as in the npz files; the same
    batches as the sampling commands.

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
        obs = torch.as_tensor(obs)
        if obs.dtype == torch.uint8:
            obs = from_uint8(obs)
        elif obs.ndim != 5:
            raise ValueError("obs must be (N, C, T, H, W) floats or N x T x H x W x C uint8, "
                             f"got {tuple(obs.shape)}")
        obs = obs.float()
        seq_len = obs.shape[2]
        if obs_mask is None and cond_frames is None:
            raise ValueError("obs given without obs_mask or cond_frames: which frames are given?")
    if cond_frames is not None:
        obs_mask = mask_from_frames(cond_frames, 1, seq_len)
    if obs_mask is not None:
        obs_mask = torch.as_tensor(obs_mask, dtype=torch.bool).reshape(-1, seq_len)
        if obs is None and bool(obs_mask.any()):
            raise ValueError("obs_mask marks given frames but no obs was passed")
    if num_samples is None and obs is not None:
        num_samples = len(obs)
    if not num_samples or num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1 (or pass obs)")
    if y is not None:
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)

    batches = global_batches(num_samples, batch_size)
    bar, callback = step_bar(len(batches) * diffusion.num_timesteps, progress)
    out = []
    with bar:
        for batch in batches:
            indices = [first_index + j for j in batch]
            videos = sample_batch(model, diffusion, sample_generators(seed, indices),
                                  obs=_rows(obs, batch), obs_mask=_rows(obs_mask, batch),
                                  y=labels_for(model, seed, indices, _rows(y, batch)),
                                  options=options, callback=callback)
            out.append(to_uint8(videos))
    return np.concatenate(out)
