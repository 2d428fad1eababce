"""The variational-bound losses by value: the t = 0 decoder likelihood and the `--use_kl` loss
against hand-computed numbers (scipy's normal CDF, the Gaussian KL written out in numpy).

The network is an x0-predictor that returns x0 + delta for a known delta, so the model's
Gaussian p(x_{t-1} | x_t) is known exactly: its mean is the posterior mean at the predicted
x0 and its variance the fixed table (`fixed_large`: beta_t, with the posterior variance of
step 1 at t = 0). Betas are recomputed here from the linear schedule's definition.
"""
import numpy as np
import pytest
import torch
from scipy.stats import norm

from ramvid import create_diffusion

STEPS = 100
SHAPE = (2, 1, 3, 6, 6)  # (N, C, T, H, W); video 0 has frame 0 given, video 1 none
OBS_MASK = torch.tensor([[True, False, False], [False, False, False]])
BIN = 1 / 255  # half the width of one 8-bit level on the [-1, 1] scale


def linear_betas(steps):
    """The linear schedule of Ho et al. (2020), scaled so that any step count spans the same
    range as 1000 steps."""
    scale = 1000 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


class ShiftedX0(torch.nn.Module):
    """Predicts x0 + delta whatever the input."""

    def __init__(self, prediction):
        super().__init__()
        self.register_buffer("prediction", prediction)

    def forward(self, x, t, **kwargs):
        return self.prediction


def eight_bit_video_and_shift(seed):
    """x0 on the 8-bit grid (both edges -1 and 1 included) and a shift of a few levels."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, SHAPE)
    levels.flat[:4] = [0, 255, 0, 255]
    levels.flat[-4:] = [255, 0, 255, 0]
    x0 = levels / 127.5 - 1
    delta = rng.choice([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], SHAPE) * BIN
    return x0, delta


def free_frame_mean(values):
    """Per-video mean over the frames that are not given (as exclude_conditional does)."""
    keep = ~OBS_MASK.numpy()[:, None, :, None, None]
    keep = np.broadcast_to(keep, values.shape)
    return (values * keep).reshape(len(values), -1).sum(1) / keep.reshape(len(values), -1).sum(1)


def losses(diffusion, x0, delta, t, seed=0):
    model = ShiftedX0(torch.tensor(x0 + delta, dtype=torch.float32))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    return diffusion.training_losses(model, torch.tensor(x0, dtype=torch.float32),
                                     torch.tensor(t), obs_mask=OBS_MASK, noise=noise)


def test_t0_decoder_nll_is_the_discretised_gaussian_in_bits():
    """At t = 0 the --use_kl loss is num_timesteps x the decoder NLL in bits per dimension:
    -log2 P(x0's 8-bit bin) under N(x0 + delta, beta~_1), the bins [x - 1/255, x + 1/255],
    the edge bins open to -inf / +inf, averaged over the free frames.

    The library evaluates the normal CDF with the tanh approximation (max error e, measured
    here against scipy); |log P_approx - log P| <= 2 e / P per element, which bounds the
    tolerance. Seen red with log_scales = log_variance (sigma squared), with a bin of half the
    width (0.5/255), with the edge bins treated like inner bins, and with the num_timesteps
    factor of RESCALED_KL dropped.
    """
    diffusion = create_diffusion(diffusion_steps=STEPS, use_kl=True, predict_xstart=True)
    betas = linear_betas(STEPS)
    abar = np.cumprod(1 - betas)
    sigma = np.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))  # fixed_large at t = 0
    x0, delta = eight_bit_video_and_shift(seed=0)
    mean = x0 + delta
    upper = np.where(x0 > 0.999, 1.0, norm.cdf((x0 + BIN - mean) / sigma))
    lower = np.where(x0 < -0.999, 0.0, norm.cdf((x0 - BIN - mean) / sigma))
    prob = upper - lower
    expected_bits = free_frame_mean(-np.log2(prob))

    grid = np.linspace(-10, 10, 400_001)
    approx = 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (grid + 0.044715 * grid ** 3)))
    cdf_error = np.abs(approx - norm.cdf(grid)).max()  # about 1.8e-4
    tolerance = 2 * cdf_error / prob.min() / np.log(2)

    terms = losses(diffusion, x0, delta, t=[0, 0])
    np.testing.assert_allclose(terms["vb"].numpy(), expected_bits, rtol=1e-5, atol=tolerance)
    np.testing.assert_allclose(terms["loss"].numpy(), STEPS * expected_bits, rtol=1e-5,
                               atol=STEPS * tolerance)


def test_use_kl_loss_is_the_gaussian_kl_in_bits_times_num_timesteps():
    """At t > 0 the --use_kl loss is num_timesteps x KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))
    in bits per dimension, with q from Bayes' rule and p = N(posterior mean at x0 + delta,
    beta_t) (fixed_large), averaged over the free frames; a batch mixing t = 0 and t > 0 takes
    the right term for each video.

    Seen red with the KL's variance ratio inverted (logvar1 - logvar2 in the exponent swapped),
    with the KL left in nats, and with t = 0 and t > 0 terms swapped in the selection.
    """
    diffusion = create_diffusion(diffusion_steps=STEPS, use_kl=True, predict_xstart=True)
    betas = linear_betas(STEPS)
    abar = np.cumprod(1 - betas)
    x0, delta = eight_bit_video_and_shift(seed=1)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).double().numpy()
    t = 37
    x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise
    x_t = np.where(OBS_MASK.numpy()[:, None, :, None, None], x0, x_t)  # given frames clean

    def bayes_mean(x_start):
        prior_var = 1 - abar[t - 1]
        var = 1 / (1 / prior_var + (1 - betas[t]) / betas[t])
        return var * (np.sqrt(abar[t - 1]) * x_start / prior_var
                      + np.sqrt(1 - betas[t]) * x_t / betas[t]), var

    q_mean, q_var = bayes_mean(x0)
    p_mean, _ = bayes_mean(x0 + delta)
    p_var = betas[t]
    kl_nats = 0.5 * (np.log(p_var / q_var) + q_var / p_var + (q_mean - p_mean) ** 2 / p_var - 1)
    expected_bits = free_frame_mean(kl_nats / np.log(2))

    terms = losses(diffusion, x0, delta, t=[t, t], seed=2)
    # float32 arithmetic on O(1e-2) bits: 1e-4 relative.
    np.testing.assert_allclose(terms["loss"].numpy(), STEPS * expected_bits, rtol=1e-4)

    mixed = losses(diffusion, x0, delta, t=[0, t], seed=2)
    at_zero = losses(diffusion, x0, delta, t=[0, 0], seed=2)
    assert mixed["loss"][0] == pytest.approx(at_zero["loss"][0].item(), rel=1e-6)
    assert mixed["loss"][1] == pytest.approx(STEPS * expected_bits[1], rel=1e-4)
