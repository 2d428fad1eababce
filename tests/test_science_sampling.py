"""The reverse process by value: each sampler's step distribution against closed forms.

The network is replaced by an oracle that knows the clean video x0, so the distribution of
every step is known in closed form (Bayes' rule on two Gaussians, the DDIM paper's sigma, the
forward step of re-noising). The model records every input it is called with; the step
x_in -> x_out of the loop is then checked on many independent elements: the standardised
residuals z = (x_out - mean) / std must have mean 0 and variance 1 within 5 standard errors
of n draws (SE 1/sqrt(n) and sqrt(2/n)). Every random draw comes from the test's own seeded
generator; betas are the test's own numbers, not a library schedule.
"""
import numpy as np
import pytest
import torch

from ramvid.diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType

BETAS = np.array([0.05, 0.2, 0.35])  # three steps with clearly different posterior variances
SHAPE = (50, 1, 4, 10, 10)  # 20,000 independent elements per checked step


def make_diffusion(var_type, betas=BETAS, mean_type=ModelMeanType.EPSILON):
    # rescale_timesteps=False: the network sees the step index itself (the oracle needs it).
    return GaussianDiffusion(betas=betas, model_mean_type=mean_type, model_var_type=var_type,
                             loss_type=LossType.MSE, rescale_timesteps=False)


def alpha_bar(betas):
    """abar[i] = prod_{j <= i} (1 - beta_j), with abar[-1] = 1 appended at the end."""
    return np.append(np.cumprod(1 - betas), 1.0)


def posterior(i, x_i, x0, betas):
    """Mean and variance of q(x_{i-1} | x_i, x0) by Bayes' rule, float64.

    Prior x_{i-1} ~ N(sqrt(abar_{i-1}) x0, 1 - abar_{i-1}); likelihood
    x_i | x_{i-1} ~ N(sqrt(1 - beta_i) x_{i-1}, beta_i). At i = 0 the prior is the point x0.
    """
    ab_prev = alpha_bar(betas)[i - 1]
    beta = betas[i]
    x_i, x0 = x_i.double(), x0.double()
    if i == 0:
        return x0, 0.0
    precision = 1 / (1 - ab_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(1 - beta) * x_i / beta)
    return mean, var


class Oracle(torch.nn.Module):
    """Predicts the true noise of x_t given the clean video x0 (or x0 itself), recording every
    call as (input, step index)."""

    def __init__(self, x0, betas, predicts="eps"):
        super().__init__()
        self.register_buffer("x0", x0)
        self.abar = alpha_bar(betas)
        self.predicts = predicts
        self.calls = []

    def forward(self, x, t, **kwargs):
        self.calls.append((x.clone(), int(t[0])))
        if self.predicts == "x0":
            return self.x0.expand_as(x)
        ab = torch.tensor(self.abar[t.long()], dtype=x.dtype).reshape(-1, 1, 1, 1, 1)
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def clean_video(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(SHAPE, generator=g) * 1.6 - 0.8  # inside [-1, 1]: clipping never acts


def start_noise(seed=2):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def assert_gaussian(sample, mean, var, what):
    """sample ~ N(mean, var) elementwise: standardised residuals have mean 0, variance 1
    within 5 standard errors of their count."""
    z = ((sample.double() - mean) / np.sqrt(var)).flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / np.sqrt(n), f"{what}: mean of z = {z.mean().item():.4f}"
    assert abs(z.var().item() - 1) < 5 * np.sqrt(2 / (n - 1)), \
        f"{what}: variance of z = {z.var().item():.4f}"


@pytest.mark.parametrize("var_type", [ModelVarType.FIXED_SMALL, ModelVarType.FIXED_LARGE])
def test_ancestral_steps_draw_from_the_gaussian_posterior(var_type):
    """p_sample_loop with an oracle: x_{i-1} | x_i ~ N(posterior mean, sigma_i^2) with
    sigma_i^2 the posterior variance (fixed_small) or beta_i (fixed_large); the last step
    adds no noise and returns x0.

    Seen red with exp(logvar) instead of exp(0.5 logvar) as the noise scale, with the posterior
    mean coefficients of step i - 1 used at step i (off by one), and with noise added at t=0.
    """
    x0, noise = clean_video(), start_noise()
    diffusion = make_diffusion(var_type)
    model = Oracle(x0, BETAS)
    final = diffusion.p_sample_loop(model, SHAPE, noise=noise, clip_denoised=False,
                                    generator=torch.Generator().manual_seed(3))
    inputs = [x for x, _ in model.calls]
    assert [t for _, t in model.calls] == [2, 1, 0]
    assert torch.equal(inputs[0], noise)
    for step, (x_in, x_out) in zip((2, 1), zip(inputs, inputs[1:])):
        mean, post_var = posterior(step, x_in, x0, BETAS)
        var = post_var if var_type == ModelVarType.FIXED_SMALL else BETAS[step]
        assert_gaussian(x_out, mean, var, f"step {step}")
    # Step 0: the posterior is the point x0 (up to float32 rounding of the oracle's noise).
    torch.testing.assert_close(final, x0, rtol=0, atol=1e-5)


def test_resample_steps_renoise_with_this_steps_forward_kernel():
    """--resample_steps 2: at each step i, denoise x_i -> y ~ posterior, then diffuse y back
    with fresh noise: x_i' ~ N(sqrt(1 - beta_i) y, beta_i), and denoise x_i' again.

    Checked on the model's recorded inputs: the timesteps repeat [2, 2, 1, 1, 0, 0]; the
    re-noised input has mean sqrt(1 - beta_i) * posterior mean and variance
    (1 - beta_i) sigma_i^2 + beta_i given the first input; the second pass is again a posterior
    step from x_i'. At i = 0 the first pass returns x0 exactly, so x_0' ~ N(sqrt(1-beta_0) x0,
    beta_0). Seen red with the re-noising skipped (x_i' = y), with alpha-bar used instead of
    alpha (sqrt(abar_i) y + sqrt(1 - abar_i) eps), and with noise added at t = 0.
    """
    x0, noise = clean_video(), start_noise()
    diffusion = make_diffusion(ModelVarType.FIXED_SMALL)
    model = Oracle(x0, BETAS)
    diffusion.p_sample_loop(model, SHAPE, noise=noise, clip_denoised=False, resample_steps=2,
                            generator=torch.Generator().manual_seed(4))
    assert [t for _, t in model.calls] == [2, 2, 1, 1, 0, 0]
    x = [x for x, _ in model.calls]
    for step, first, again, following in ((2, x[0], x[1], x[2]), (1, x[2], x[3], x[4])):
        mean, var = posterior(step, first, x0, BETAS)
        alpha, beta = 1 - BETAS[step], BETAS[step]
        assert_gaussian(again, np.sqrt(alpha) * mean, alpha * var + beta, f"re-noise at {step}")
        mean2, _ = posterior(step, again, x0, BETAS)
        assert_gaussian(following, mean2, var, f"second pass at {step}")
    assert_gaussian(x[5], np.sqrt(1 - BETAS[0]) * x0.double(), BETAS[0], "re-noise at 0")


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_draws_from_the_closed_form_step(eta):
    """ddim_sample_loop with eta > 0 (the demo's setting): x_{i-1} | x_i ~ N(sqrt(ab_prev) x0 +
    sqrt(1 - ab_prev - sigma^2) eps, sigma^2) with eps the oracle's noise and
    sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev) (Song et al. 2021, eq. 16).
    With eta = 1, sigma^2 is the posterior variance, which the closed form must agree with.

    Seen red with sigma computed without the eta factor, with sigma^2 left out of the
    direction term (sqrt(1 - ab_prev) eps), and with the noise term dropped.
    """
    x0, noise = clean_video(), start_noise()
    diffusion = make_diffusion(ModelVarType.FIXED_LARGE)
    model = Oracle(x0, BETAS)
    final = diffusion.ddim_sample_loop(model, SHAPE, noise=noise, clip_denoised=False, eta=eta,
                                       generator=torch.Generator().manual_seed(5))
    abar = alpha_bar(BETAS)
    x = [x for x, _ in model.calls]
    assert [t for _, t in model.calls] == [2, 1, 0]
    for step, x_in, x_out in ((2, x[0], x[1]), (1, x[1], x[2])):
        ab, ab_prev = abar[step], abar[step - 1]
        sigma2 = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        if eta == 1.0:
            assert sigma2 == pytest.approx(posterior(step, x_in[:1], x0[:1], BETAS)[1], rel=1e-12)
        eps = (x_in.double() - np.sqrt(ab) * x0.double()) / np.sqrt(1 - ab)
        mean = np.sqrt(ab_prev) * x0.double() + np.sqrt(1 - ab_prev - sigma2) * eps
        assert_gaussian(x_out, mean, sigma2, f"DDIM eta={eta} step {step}")
    torch.testing.assert_close(final, x0, rtol=0, atol=1e-5)


class FrameMixer(torch.nn.Module):
    """A linear x0-predictor across frames: output frame f = sum_g M[f, g] x_g. Its
    conditional and unconditional predictions are known in closed form."""

    def __init__(self, mix):
        super().__init__()
        self.register_buffer("mix", mix)

    def forward(self, x, t, **kwargs):
        return torch.einsum("fg,ncghw->ncfhw", self.mix, x)


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_guidance_mixes_conditional_and_noised_unconditional_predictions(w):
    """Frame guidance, defined independently: x0_hat = uncond + w (cond - uncond), where cond
    is the network on x with the given frames clean, and uncond the network on x with the
    given frames diffused to step t like every other frame (as in unconditional training:
    sqrt(abar_t) obs + sqrt(1 - abar_t) eps, fresh eps).

    A one-step process (x0 = the prediction at t = 0) and a linear frame mixer make the free
    frame's result Gaussian in closed form: frame 1 = M10 (w + (1 - w) sqrt(abar)) obs_0
    + M11 x_1 + M10 (1 - w) sqrt(1 - abar) eps. Seen red with the unconditional input's given
    frames left clean, with pure noise instead of the diffused frames, and with the mix
    written cond + w (cond - uncond).
    """
    n = 20_000
    betas = np.array([0.5])
    diffusion = make_diffusion(ModelVarType.FIXED_SMALL, betas, ModelMeanType.START_X)
    mix = torch.tensor([[0.3, -0.2], [0.8, 0.5]])
    g = torch.Generator().manual_seed(6)
    obs = torch.rand(n, 1, 2, 1, 1, generator=g) * 2 - 1
    noise = torch.randn(n, 1, 2, 1, 1, generator=g)
    obs_mask = torch.tensor([[True, False]]).expand(n, 2)
    final = diffusion.p_sample_loop(FrameMixer(mix), (n, 1, 2, 1, 1), noise=noise, obs=obs,
                                    obs_mask=obs_mask, guidance_scale=w, clip_denoised=False,
                                    generator=torch.Generator().manual_seed(7))
    assert torch.equal(final[:, :, 0], obs[:, :, 0])
    ab = 1 - betas[0]
    m10, m11 = mix[1, 0].item(), mix[1, 1].item()
    mean = (m10 * (w + (1 - w) * np.sqrt(ab)) * obs[:, :, 0].double()
            + m11 * noise[:, :, 1].double())
    var = (m10 * (1 - w)) ** 2 * (1 - ab)
    assert_gaussian(final[:, :, 1], mean, var, f"guidance w={w}")
