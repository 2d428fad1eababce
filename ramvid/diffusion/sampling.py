"""Ancestral (DDPM) and DDIM sampling with given frames, driven by one loop.

Every step function has the signature `step(model, x, t, *, model_output, generator, ...)`
and returns dict(sample, pred_xstart); `_sample_loop_progressive` runs either of them,
overwrites the given frames with `obs` before every step, repeats each step
`resample_steps` times, and optionally mixes conditional and unconditional predictions
(frame guidance).
"""
import torch
from tqdm.auto import tqdm

from .tensors import broadcast_mask, extract


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Standard normal noise; `generator` may be one torch.Generator or one per sample.

    With one generator per sample, sample i's noise does not depend on the batch it is in,
    so any single sample can be reproduced alone from its seed.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([
            torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device)
            for g in generator
        ])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class SamplingMixin:
    """Sampling methods of GaussianDiffusion (see gaussian.py for the tables they read)."""

    # ----------------------------------------------------------------- step functions
    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                 model_output=None, generator=None):
        """One ancestral step x_t -> x_{t-1}."""

        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs,
                                   model_output=model_output)
        noise = randn(x.shape, generator, x.device, x.dtype)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # no noise at t=0
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                    eta=0.0, model_output=None, generator=None):
        """One DDIM step x_t -> x_{t-1}; eta=0 is deterministic."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs,
                                   model_output=model_output)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = extract(self.alphas_cumprod, t, x.ndim)
        alpha_bar_prev = extract(self.alphas_cumprod_prev, t, x.ndim)
        sigma = (
            eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        sample = mean
        if eta != 0:
            noise = randn(x.shape, generator, x.device, x.dtype)
            nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            sample = mean + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def diffuse_one_step(self, x, t, generator=None):
        """x_{t-1} -> x_t: sqrt(1 - beta_t) x + sqrt(beta_t) eps (used by resampling)."""
        noise = randn(x.shape, generator, x.device, x.dtype)
        return extract(self.sqrt_alphas, t, x.ndim) * x + extract(self.sqrt_betas, t, x.ndim) * noise

    # ----------------------------------------------------------------- guidance
    def guided_model_output(self, model, x, t, obs, obs_mask, guidance_scale, model_kwargs=None,
                            generator=None):
        """eps_uncond + w (eps_cond - eps_uncond) from one network trained with unconditioning.

        The unconditional input has no clean frames: the given frames are diffused to step t
        like every other frame, as in the training videos drawn unconditional. Learned
        variance channels are taken from the conditional prediction.
        """
        kwargs = model_kwargs or {}
        timesteps = self.model_timesteps(t)
        cond = model(x, timesteps, **kwargs)
        noised_obs = self.q_sample(obs, t, randn(obs.shape, generator, obs.device, obs.dtype))
        x_uncond = torch.where(broadcast_mask(obs_mask, x), noised_obs, x)
        uncond = model(x_uncond, timesteps, **kwargs)
        channels = x.shape[1]
        mixed = uncond[:, :channels] + guidance_scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([mixed, cond[:, channels:]], dim=1)

    # ----------------------------------------------------------------- loops
    def p_sample_loop(self, model, shape, **kwargs):
        """Ancestral sampling; returns the final (N, C, T, H, W) sample."""
        return _last(self.p_sample_loop_progressive(model, shape, **kwargs))["sample"]

    def ddim_sample_loop(self, model, shape, **kwargs):
        """DDIM sampling (eta=0 deterministic); returns the final (N, C, T, H, W) sample."""
        return _last(self.ddim_sample_loop_progressive(model, shape, **kwargs))["sample"]

    def p_sample_loop_progressive(self, model, shape, **kwargs):
        kwargs.pop("eta", None)
        return self._sample_loop_progressive(self.p_sample, model, shape, **kwargs)

    def ddim_sample_loop_progressive(self, model, shape, eta=0.0, **kwargs):
        def step(*args, **step_kwargs):
            return self.ddim_sample(*args, eta=eta, **step_kwargs)

        return self._sample_loop_progressive(step, model, shape, **kwargs)

    def _sample_loop_progressive(self, step, model, shape, noise=None, obs=None, obs_mask=None,
                                 clip_denoised=True, denoised_fn=None, resample_steps=1,
                                 model_kwargs=None, progress=False, callback=None, device=None,
                                 generator=None, guidance_scale=1.0):
        """Yield dict(sample, pred_xstart, t) after every denoising step."""
        if resample_steps < 1:
            raise ValueError(f"resample_steps={resample_steps} must be >= 1")
        if device is None:
            device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
        shape = tuple(shape)
        # A fresh tensor: the caller's noise is never written to.
        x = noise.to(device).clone() if noise is not None else randn(shape, generator, device)
        given = None
        if obs_mask is not None and bool(obs_mask.any()):
            if obs is None:
                raise ValueError("obs_mask marks given frames but no obs was passed")
            obs = obs.to(device=device, dtype=x.dtype)
            obs_mask = obs_mask.to(device)
            given = broadcast_mask(obs_mask, x)
        guided = given is not None and guidance_scale != 1.0

        indices = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(indices, desc="denoising", disable=not progress, leave=False):
            with torch.no_grad():  # the caller's context is left as it is between yields
                out = self._denoise_step(step, model, x, i, obs, obs_mask, given, guided,
                                         guidance_scale, resample_steps, clip_denoised,
                                         denoised_fn, model_kwargs, generator)
            x = out["sample"]
            if callback is not None:
                callback(out)
            yield out

    def _denoise_step(self, step, model, x, i, obs, obs_mask, given, guided, guidance_scale,
                      resample_steps, clip_denoised, denoised_fn, model_kwargs, generator):
        """Step i -> i - 1, repeated `resample_steps` times, given frames imposed before each."""
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        for r in range(resample_steps):
            if given is not None:
                x = torch.where(given, obs, x)
            model_output = None
            if guided:
                model_output = self.guided_model_output(
                    model, x, t, obs, obs_mask, guidance_scale, model_kwargs, generator
                )
            out = step(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                       model_kwargs=model_kwargs, model_output=model_output,
                       generator=generator)
            x = out["sample"]
            if r < resample_steps - 1:
                x = self.diffuse_one_step(x, t, generator)
        if given is not None:
            x = torch.where(given, obs, x)
        return {"sample": x, "pred_xstart": out["pred_xstart"], "t": i}


def _last(iterator):
    out = None
    for out in iterator:
        pass
    return out

