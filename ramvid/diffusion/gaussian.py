"""Gaussian diffusion over videos with frame-level conditioning.

All timesteps t are indices into this process (after respacing, 0..num_timesteps-1). The
network is called with `model_timesteps(t)`: the original step the index stands for, rescaled
to [0, 1000) when `rescale_timesteps` is set.

Conditioning is a bool `obs_mask` of shape (N, T): True marks a given (clean) frame.
"""
import enum
import math
from functools import partialmethod
from types import SimpleNamespace

import numpy as np
import torch

from . import sampling
from .sampling import extract


class ModelMeanType(enum.Enum):
    EPSILON = "epsilon"  # the network predicts the noise
    START_X = "start_x"  # the network predicts x_0


class ModelVarType(enum.Enum):
    FIXED_LARGE = "fixed_large"  # beta_t (with the posterior variance at t=0)
    FIXED_SMALL = "fixed_small"  # the posterior variance beta-tilde_t
    LEARNED_RANGE = "learned_range"  # interpolate log-variance between the two, per element


class LossType(enum.Enum):
    MSE = "mse"
    RESCALED_MSE = "rescaled_mse"  # MSE + VB * num_timesteps / 1000 (learned sigma)
    KL = "kl"
    RESCALED_KL = "rescaled_kl"  # VB * num_timesteps: the variational bound alone


# ----------------------------------------------------------------------------- the loss's pieces
def broadcast_mask(obs_mask, x):
    """(N, T) bool -> (N, 1, T, 1, 1), broadcastable against a video batch (N, C, T, H, W)."""
    return obs_mask.to(x.device)[:, None, :, None, None]


def masked_mean(values, frames):
    """Per-video mean of `values` (N, C, T, H, W) over the frames where `frames` (N, T) is True.

    A video with no such frame contributes 0 (not NaN).
    """
    weights = broadcast_mask(frames, values).to(values.dtype).expand_as(values)
    total = (values * weights).flatten(1).sum(1)
    count = weights.flatten(1).sum(1)
    return total / count.clamp(min=1)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    # The tanh approximation of the normal CDF keeps the bound comparable with published bpd.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood of 8-bit data x in [-1, 1] under a Gaussian discretised into 256 bins."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )


class GaussianDiffusion:
    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type,
                 rescale_timesteps=True, timestep_map=None, original_num_steps=None):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        self.betas = betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        self.original_num_steps = original_num_steps or self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas = np.sqrt(alphas)
        self.sqrt_betas = np.sqrt(betas)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0; its log is clipped to the value at t=1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        ) if self.num_timesteps > 1 else np.log(np.maximum(self.posterior_variance, 1e-20))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        # The variance of p(x_{t-1} | x_t) when it is not learned.
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            # beta_t, with the posterior variance at t=0 (beta_0 would make the last step too noisy)
            self.model_variance = (np.append(self.posterior_variance[1], betas[1:])
                                   if self.num_timesteps > 1 else betas)
            self.model_log_variance = np.log(self.model_variance)
        else:
            self.model_variance = self.posterior_variance
            self.model_log_variance = self.posterior_log_variance_clipped
        self._device_tables = {}

    def tables(self, device):
        """The (T,) float64 arrays above (and the samplers' own) as float32 tensors on `device`,
        `timestep_map` as integers.

        They are copied once per device, so reading them at t (a tensor on that device) is one
        gather: no numpy -> tensor copy and no host synchronisation per call.
        """
        device = torch.device(device)
        if device not in self._device_tables:
            arrays = {name: a for name, a in vars(self).items() if isinstance(a, np.ndarray)}
            arrays.update(sampling.sampler_tables(self.alphas_cumprod))
            self._device_tables[device] = SimpleNamespace(**{
                name: torch.from_numpy(a).to(device, torch.float32 if a.dtype == np.float64
                                             else None) for name, a in arrays.items()})
        return self._device_tables[device]

    # ----------------------------------------------------------------- forward process
    def q_sample(self, x_start, t, noise=None):
        """Draw x_t ~ q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        tab = self.tables(t.device)
        return (
            extract(tab.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + extract(tab.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        tab = self.tables(t.device)
        mean = (
            extract(tab.posterior_mean_coef1, t, x_t.ndim) * x_start
            + extract(tab.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        variance = extract(tab.posterior_variance, t, x_t.ndim)
        log_variance = extract(tab.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, variance, log_variance

    # ----------------------------------------------------------------- the network
    def model_timesteps(self, t):
        """The timestep value the network sees for process index t."""
        mapped = self.tables(t.device).timestep_map[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def learns_sigma(self):
        return self.model_var_type == ModelVarType.LEARNED_RANGE

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None,
                        model_output=None):
        """p(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_xstart).

        `model_output` may be given precomputed (e.g. combined by guidance); otherwise the
        network is called on (x, t).
        """
        if model_output is None:
            model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        channels = x.shape[1]
        tab = self.tables(t.device)
        if self.learns_sigma():
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learn_sigma=True needs {2 * channels} output channels, the model gives "
                    f"{model_output.shape[1]}"
                )
            model_output, var_values = model_output.split(channels, dim=1)
            min_log = extract(tab.posterior_log_variance_clipped, t, x.ndim)
            max_log = extract(tab.log_betas, t, x.ndim)
            frac = (var_values + 1) / 2  # the network outputs [-1, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            variance = extract(tab.model_variance, t, x.ndim).expand_as(x)
            log_variance = extract(tab.model_log_variance, t, x.ndim).expand_as(x)

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = model_output
        else:
            pred_xstart = self._predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    def _predict_xstart_from_eps(self, x_t, t, eps):
        tab = self.tables(t.device)
        return (
            extract(tab.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(tab.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        tab = self.tables(t.device)
        return (
            extract(tab.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - pred_xstart
        ) / extract(tab.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)

    # ----------------------------------------------------------------- sampling (sampling.py)
    sample_loop = sampling.sample_loop  # (model, shape, **kwargs) -> the (N, C, T, H, W) sample
    # The names improved-diffusion's users know.
    p_sample_loop = partialmethod(sampling.sample_loop, sampler="ddpm")
    ddim_sample_loop = partialmethod(sampling.sample_loop, sampler="ddim")

    # ----------------------------------------------------------------- training
    def training_losses(self, model, x_start, t, obs_mask=None, model_kwargs=None, noise=None,
                        exclude_conditional=True):
        """Per-video losses for one timestep t per video: dict of (N,) tensors.

        Given frames (obs_mask True) enter x_t clean; with `exclude_conditional` every term
        (MSE and VB alike) averages over the other frames only.
        """
        n, _, frames = x_start.shape[:3]
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        if obs_mask is None:
            obs_mask = torch.zeros(n, frames, dtype=torch.bool, device=x_start.device)
        obs_mask_5d = broadcast_mask(obs_mask, x_start)
        x_t = torch.where(obs_mask_5d, x_start, x_t)
        noise = torch.where(obs_mask_5d, torch.zeros_like(noise), noise)
        loss_frames = ~obs_mask if exclude_conditional else torch.ones_like(obs_mask)

        model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        terms = {}
        if self.loss_type in (LossType.KL, LossType.RESCALED_KL):
            terms["vb"] = self._vb_terms_bpd(model_output, x_start, x_t, t, loss_frames)
            terms["loss"] = terms["vb"] * (self.num_timesteps if self.loss_type == LossType.RESCALED_KL else 1)
            return terms

        channels = x_start.shape[1]
        if self.learns_sigma():
            mean_output, var_values = model_output.split(channels, dim=1)
            # The VB term trains only the variance: the mean enters it detached.
            frozen = torch.cat([mean_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t, loss_frames)
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            mean_output = model_output
        target = x_start if self.model_mean_type == ModelMeanType.START_X else noise
        terms["mse"] = masked_mean((target - mean_output) ** 2, loss_frames)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _vb_terms_bpd(self, model_output, x_start, x_t, t, loss_frames):
        """One term of the variational bound in bits per dimension, over the kept frames.

        KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0; the decoder NLL at t = 0.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=model_output)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = masked_mean(kl, loss_frames) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = masked_mean(nll, loss_frames) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


class SpacedDiffusion(GaussianDiffusion):
    """The process restricted to the original steps in `use_timesteps` (respacing).

    Betas are recomputed from the kept alpha-bars, so alpha-bar of the new process at index i
    equals the original alpha-bar at the i-th kept step.
    """

    def __init__(self, use_timesteps, *, betas, **kwargs):
        original = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        kept = sorted(set(int(s) for s in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= len(original):
            raise ValueError(f"respaced steps must lie in [0, {len(original)})")
        new_betas, last = [], 1.0
        for step in kept:
            new_betas.append(1.0 - original[step] / last)
            last = original[step]
        self.use_timesteps = set(kept)
        super().__init__(betas=np.array(new_betas), timestep_map=kept,
                         original_num_steps=len(original), **kwargs)
