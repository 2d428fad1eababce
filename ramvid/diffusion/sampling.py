"""The reverse process, top to bottom: from noise to videos, with given frames.

    x = noise                                                  (N, C, T, H, W)
    for i = num_timesteps - 1, ..., 0:
        repeat resample_steps times:
            x = impose(x)              given frames (obs_mask True) taken from obs
            out = predict(x, i)        the network's x0 (two calls mixed with frame guidance)
            x = step(x, i, out)        ddpm | ddim | dpm++2m: x_i -> x_{i-1}
            x = re-noise x_{i-1} -> x_i, except after the last repetition
    return impose(x)

The network sees x as it is, given frames clean, the rest noised to step i; it was trained
like that (random masks), so conditioning needs no second model. `Conditioning` carries what
the samples are conditioned on; the samplers share one signature
`step(diffusion, x, t, out, previous, generator) -> x_{t-1}`.

Indices i run over the (possibly respaced) process of `diffusion`: alpha_bar_i is
`diffusion.alphas_cumprod[i]`, and the last step (i = 0) lands on alpha_bar = 1, the clean video.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..runtime import to_device

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


# ----------------------------------------------------------------------------- the loop
def sample_loop(diffusion, model, shape, *, sampler="ddpm", obs=None, obs_mask=None,
                guidance_scale=1.0, resample_steps=1, eta=0.0, clip_denoised=True,
                model_kwargs=None, generator=None, noise=None, progress=False, callback=None,
                device=None, autocast_dtype=None):
    """Sample a batch of videos; returns the final (N, C, T, H, W) sample.

    sampler: "ddpm" (ancestral), "ddim" (eta = 0 deterministic, 1 ancestral-like) or
        "dpm++2m" (DPM-Solver++(2M): deterministic, second order, for few steps).
    obs (N, C, T, H, W), obs_mask (N, T) bool: the frames where obs_mask is True are given and
        equal obs in the result. guidance_scale w: frame guidance (see `predict`).
    resample_steps R: each step is done R times, re-noising in between, so that the generated
        frames agree better with the given ones.
    generator: one torch.Generator, or one per sample (then sample k's noise depends on its
        generator alone, not on the batch); noise is drawn on the generators' device.
    noise: the starting x_T (not modified); drawn from `generator` when None.
    callback(dict(sample, pred_xstart, t)) is called after every step.
    autocast_dtype: None runs the network in float32; torch.bfloat16 or torch.float16 runs its
        calls under autocast (the sampler's own arithmetic stays float32).
    """
    check_sampler(sampler, eta)
    step = {"ddpm": ddpm_step, "ddim": partial(ddim_step, eta=eta), "dpm++2m": dpmpp_2m_step}[sampler]
    device = torch.device(device) if device is not None else model_device(model)
    shape = tuple(shape)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the samples {shape}")
    # A fresh tensor: the caller's noise is never written to.
    x = noise.to(device).clone() if noise is not None else randn(shape, generator, device)
    conditioning = Conditioning.build(x, obs, obs_mask, guidance_scale, resample_steps)

    previous = None  # the last step's prediction (the multistep solver's memory)
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc="denoising",
                  disable=not progress, leave=False):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        with torch.no_grad():  # whatever the caller's context
            for r in range(conditioning.resample_steps):
                x = conditioning.impose(x)
                out = predict(diffusion, model, x, t, conditioning, clip_denoised, model_kwargs,
                              generator, autocast_dtype)
                x = step(diffusion, x, t, out, previous, generator)
                if r < conditioning.resample_steps - 1:
                    x = diffuse_one_step(diffusion, x, t, generator)
            x = conditioning.impose(x)
        previous = out
        if callback is not None:
            callback({"sample": x, "pred_xstart": out["pred_xstart"], "t": i})
    return x


def check_sampler(sampler, eta=0.0):
    """ValueError naming the argument unless `sampler` is one of SAMPLERS and `eta` fits it."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not one of: {', '.join(SAMPLERS)}")
    if eta != 0 and sampler != "ddim":
        raise ValueError(f"eta={eta}: only the ddim sampler reads eta, not {sampler}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta={eta} must lie in [0, 1]")


@dataclass(frozen=True)
class Conditioning:
    """What the samples are conditioned on, on the sampling device."""

    obs: Optional[torch.Tensor] = None  # (N, C, T, H, W): the video whose given frames are imposed
    obs_mask_5d: Optional[torch.Tensor] = None  # (N, 1, T, 1, 1) bool; None: no given frame
    guidance_scale: float = 1.0  # frame guidance weight w; 1 = plain conditioning
    resample_steps: int = 1  # repetitions of every step

    @classmethod
    def build(cls, x, obs=None, obs_mask=None, guidance_scale=1.0, resample_steps=1):
        """Checked and moved to the device and dtype of x (N, C, T, H, W) once.
        obs_mask: (N, T) bool, True = given."""
        shape = tuple(x.shape)
        if int(resample_steps) != resample_steps or resample_steps < 1:
            raise ValueError(f"resample_steps={resample_steps} must be an integer >= 1")
        if obs is not None and obs_mask is None:
            raise ValueError("obs was passed without obs_mask: which of its frames are given?")
        obs_mask_5d = None
        if obs_mask is not None:
            if tuple(obs_mask.shape) != (shape[0], shape[2]):
                raise ValueError(f"obs_mask has shape {tuple(obs_mask.shape)}, expected "
                                 f"(batch, frames) = {(shape[0], shape[2])}")
            if bool(obs_mask.any()):  # the one host read of the loop, before it starts
                if obs is None:
                    raise ValueError("obs_mask marks given frames but no obs was passed")
                if tuple(obs.shape) != shape:
                    raise ValueError(f"obs has shape {tuple(obs.shape)}, the samples {shape}")
                obs = to_device(obs, x.device).to(x.dtype)
                obs_mask_5d = to_device(obs_mask.bool(), x.device)[:, None, :, None, None]
        return cls(obs if obs_mask_5d is not None else None, obs_mask_5d, float(guidance_scale),
                   int(resample_steps))

    @property
    def guided(self):
        # Without a given frame the unconditional input equals the conditional one: w is moot.
        return self.obs_mask_5d is not None and self.guidance_scale != 1.0

    def impose(self, x):
        return x if self.obs_mask_5d is None else torch.where(self.obs_mask_5d, self.obs, x)


# ----------------------------------------------------------------------------- the network
def predict(diffusion, model, x, t, conditioning, clip_denoised=True, model_kwargs=None,
            generator=None, autocast_dtype=None):
    """The model's p(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_xstart).

    Frame guidance (w != 1): output = unguided + w (output - unguided), where `output` sees the
    given frames clean and `unguided` sees them diffused to step t like every other frame (the
    input of the videos trained without given frames, --uncondition_rate). Learned variance
    channels come from the call that sees the given frames clean.
    """
    kwargs = model_kwargs or {}
    timesteps = diffusion.model_timesteps(t)
    if conditioning.guided:
        noise = randn(x.shape, generator, x.device, x.dtype)
        unguided_input = torch.where(conditioning.obs_mask_5d,
                                     diffusion.q_sample(conditioning.obs, t, noise), x)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        output = model(x, timesteps, **kwargs).float()
        if conditioning.guided:
            unguided = model(unguided_input, timesteps, **kwargs).float()
    if conditioning.guided:
        c = x.shape[1]
        mixed = unguided[:, :c] + conditioning.guidance_scale * (output[:, :c] - unguided[:, :c])
        output = torch.cat([mixed, output[:, c:]], dim=1)
    return diffusion.p_mean_variance(None, x, t, clip_denoised, model_output=output)


# ----------------------------------------------------------------------------- samplers
# step(diffusion, x, t, out, previous, generator) -> x_{t-1}
#   x (N, C, T, H, W) at step t (N,); out = predict(x, t); previous = predict of the step
#   before (None at the first); generator as in sample_loop.

def ddpm_step(diffusion, x, t, out, previous, generator):
    """Ancestral step: x_{t-1} ~ N(mean, variance) of the model."""
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * step_noise(x, t, generator)


def ddim_step(diffusion, x, t, out, previous, generator, eta=0.0):
    """DDIM: x_{t-1} = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z, with ab' = alpha_bar_{t-1},
    s = eta sqrt((1 - ab') / (1 - ab) (1 - ab / ab')); eta = 0 is deterministic."""
    tab = diffusion.tables(x.device)
    eps = diffusion._predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = extract(tab.alphas_cumprod, t, x.ndim)
    alpha_bar_prev = extract(tab.alphas_cumprod_prev, t, x.ndim)
    sigma = (
        eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
    if eta == 0:
        return mean
    return mean + sigma * step_noise(x, t, generator)


def dpmpp_2m_step(diffusion, x, t, out, previous, generator):
    """DPM-Solver++(2M) (Lu et al. 2022), the probability-flow ODE in the data prediction x0.

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) and h = lambda' -
    lambda the step's size in lambda (primes: at the target step t-1):

        x' = sigma'/sigma x + alpha' (1 - e^-h) D,   D = x0 + (x0 - x0_prev) h / (2 h_prev)

    D extrapolates the x0 of this step and the previous one (h_prev: that step's size) to the
    middle of the step, which makes the solver second order. The first step has no previous x0
    and the last one lands on sigma' = 0 (h infinite): both use D = x0, i.e. a DDIM step.
    """
    tab = diffusion.tables(x.device)
    x0 = out["pred_xstart"]
    if previous is not None:
        x0 = x0 + extract(tab.dpm_correction, t, x.ndim) * (x0 - previous["pred_xstart"])
    return extract(tab.dpm_x_coef, t, x.ndim) * x + extract(tab.dpm_x0_coef, t, x.ndim) * x0


def sampler_tables(alphas_cumprod):
    """The solver coefficients of every step i -> i-1, float64 (T,) (see dpmpp_2m_step)."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    ab_prev = np.append(1.0, ab[:-1])  # the target of step i
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    alpha_prev, sigma_prev = np.sqrt(ab_prev), np.sqrt(1 - ab_prev)
    with np.errstate(divide="ignore"):
        lam, lam_prev = np.log(alpha / sigma), np.log(alpha_prev / sigma_prev)  # +inf at i = 0
    h = lam_prev - lam  # step i's size in lambda
    correction = np.zeros_like(ab)  # h_i / (2 h_{i+1}); 0 at the last (i = 0) and first step
    correction[1:-1] = h[1:-1] / (2 * h[2:])
    return {
        "dpm_x_coef": sigma_prev / sigma,
        "dpm_x0_coef": alpha_prev - alpha * sigma_prev / sigma,  # = alpha' (1 - e^-h)
        "dpm_correction": correction,
    }


# ----------------------------------------------------------------------------- noise, tables
def step_noise(x, t, generator):
    """Fresh noise z for the step x_t -> x_{t-1}, zero where t = 0 (the last step adds none)."""
    nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return nonzero * randn(x.shape, generator, x.device, x.dtype)


def diffuse_one_step(diffusion, x, t, generator=None):
    """x_{t-1} -> x_t: sqrt(1 - beta_t) x + sqrt(beta_t) z (resampling's re-noising)."""
    tab = diffusion.tables(x.device)
    noise = randn(x.shape, generator, x.device, x.dtype)
    return extract(tab.sqrt_alphas, t, x.ndim) * x + extract(tab.sqrt_betas, t, x.ndim) * noise


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Standard normal noise, drawn on the generator's device; `generator` may be one
    torch.Generator or one per sample (then sample k's noise comes from generator k alone)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        noise = torch.stack([
            torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator
        ])
        return to_device(noise, device)
    gen_device = generator.device if generator is not None else device
    return to_device(torch.randn(shape, generator=generator, device=gen_device, dtype=dtype), device)


def model_device(model):
    """The device of the model's parameters (the CPU for a plain function)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return first.device if first is not None else torch.device("cpu")


def extract(table, t, ndim):
    """table[t] for a (T,) table on t's device and index tensor t (N,), shaped (N, 1, ...)."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))
