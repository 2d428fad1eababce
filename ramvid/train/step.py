"""One optimisation step's pieces: its random inputs, gradient accumulation, loss statistics.

Every random choice of step s on rank r (masks, timesteps, noise) comes from a generator seeded
by (seed, r, s, stream), so a resumed run draws exactly what an uninterrupted run would, and the
whole batch's choices are made before it is cut into microbatches (any microbatch size gives the
same gradient).
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..runtime import to_device
from ..diffusion.resample import LossSecondMomentResampler
from ..masking import sample_train_mask
from ..runtime import derive_seed

MASK_STREAM, TIMESTEP_STREAM, NOISE_STREAM = 0, 1, 2
LOSS_TERMS = ("loss", "mse", "vb")


def stream_seed(seed, rank, step, stream):
    """A well-mixed 63-bit seed for one random stream of one step of one rank."""
    return derive_seed(seed, rank, step, stream)


@dataclass
class StepInputs:
    obs_mask: torch.Tensor  # (N, T) bool, True = frame given clean
    t: torch.Tensor  # (N,) long timestep indices
    weights: torch.Tensor  # (N,) importance weights of the schedule sampler
    noise: torch.Tensor  # (N, C, T, H, W)


def draw_step_inputs(cfg, schedule_sampler, video, rank, step):
    """Masks, timesteps and noise for the whole batch of step `step` on rank `rank`."""
    n, _, frames = video.shape[:3]
    device = video.device

    def generator(stream, on=torch.device("cpu")):
        return torch.Generator(device=on).manual_seed(stream_seed(cfg.seed, rank, step, stream))

    obs_mask = sample_train_mask(n, frames, cfg.uncondition_rate, cfg.max_num_mask_frames,
                                 cfg.mask_range, generator=generator(MASK_STREAM), device=device)
    t, weights = schedule_sampler.sample(n, "cpu", generator=generator(TIMESTEP_STREAM))
    t, weights = to_device(t, device), to_device(weights, device)  # no wait on the GPU
    noise = torch.randn(video.shape, generator=generator(NOISE_STREAM, device), device=device)
    return StepInputs(obs_mask, t, weights, noise)


def forward_backward(model, diffusion, video, model_kwargs, inputs, microbatch, *,
                     exclude_conditional=True, autocast=None, scaler=None, schedule_sampler=None):
    """Accumulate the gradient of the batch's mean weighted loss into `.grad`, `microbatch`
    videos at a time; `model_kwargs` ({"y": (N,)} or {}) go to the model. Returns the per-video
    loss terms, detached: {name: (N,)}.

    `model` may be DDP-wrapped: gradients are all-reduced on the last microbatch only.
    """
    n = video.shape[0]
    terms = {}
    for start in range(0, n, microbatch):
        part = slice(start, min(start + microbatch, n))
        size = part.stop - part.start
        last = part.stop == n
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast or nullcontext():
                losses = diffusion.training_losses(
                    model, video[part], inputs.t[part], obs_mask=inputs.obs_mask[part],
                    model_kwargs={k: v[part] for k, v in model_kwargs.items()},
                    noise=inputs.noise[part],
                    exclude_conditional=exclude_conditional,
                )
            # Weighting each microbatch's mean by its share of the batch makes the summed
            # gradients equal the full batch's, also when the last microbatch is smaller.
            loss = (losses["loss"] * inputs.weights[part]).mean() * (size / n)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if isinstance(schedule_sampler, LossSecondMomentResampler):
            schedule_sampler.update_with_local_losses(inputs.t[part], losses["loss"].detach())
        for name in LOSS_TERMS:
            if name in losses:
                terms.setdefault(name, []).append(losses[name].detach().float())
    return {name: torch.cat(parts) for name, parts in terms.items()}


def gradient_norm(parameters, clip):
    """Total L2 norm of the gradients (one fused computation); clipped to `clip` when clip > 0."""
    parameters = [p for p in parameters if p.grad is not None]
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, clip, foreach=True)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)


class LossStats:
    """Sums of the logged quantities over a log interval, kept on the device (no host sync)
    until `reduce`, which averages them over steps and ranks."""

    # Layout of the packed sum vector.
    TERMS = len(LOSS_TERMS)  # 0..2: sum of each loss term over videos
    QUARTILE_SUM, QUARTILE_COUNT = TERMS, TERMS + 4  # 3..6: loss sum per t-quartile, 7..10: count
    VIDEOS, GRAD_NORM, STEPS = TERMS + 8, TERMS + 9, TERMS + 10

    def __init__(self, num_timesteps, device):
        self.num_timesteps = num_timesteps
        self.device = device
        self.present = set()
        self.skipped = 0
        self.reset()

    def reset(self):
        self.sums = torch.zeros(self.TERMS + 11, dtype=torch.float64, device=self.device)
        self.skipped = 0

    def add(self, terms, t, grad_norm):
        s = self.sums
        for i, name in enumerate(LOSS_TERMS):
            if name in terms:
                self.present.add(name)
                s[i] += terms[name].sum()
        quartile = (4 * t // self.num_timesteps).clamp(max=3)
        s[self.QUARTILE_SUM:self.QUARTILE_SUM + 4].index_add_(0, quartile, terms["loss"].double())
        s[self.QUARTILE_COUNT:self.QUARTILE_COUNT + 4].index_add_(
            0, quartile, torch.ones_like(terms["loss"], dtype=torch.float64))
        s[self.VIDEOS] += t.numel()
        s[self.GRAD_NORM] += grad_norm.double()
        s[self.STEPS] += 1

    def reduce(self, all_reduce=None):
        """Means over the interval (and over ranks when `all_reduce` sums across them)."""
        packed = self.sums.clone()
        if all_reduce is not None:
            all_reduce(packed)
        values = packed.tolist()  # the one host sync of a log interval
        videos, steps = values[self.VIDEOS], values[self.STEPS]
        out = {}
        for i, name in enumerate(LOSS_TERMS):
            out[name] = values[i] / videos if name in self.present and videos else None
        for q in range(4):
            count = values[self.QUARTILE_COUNT + q]
            out[f"loss_q{q}"] = values[self.QUARTILE_SUM + q] / count if count else None
        out["grad_norm"] = values[self.GRAD_NORM] / steps if steps else None
        out["skipped_steps"] = self.skipped  # every rank skips the same steps
        self.reset()
        return out
