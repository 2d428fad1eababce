"""DPM-Solver++(2M) against closed forms: exact trajectories for a point mass, second-order
convergence to the probability-flow ODE solution of Gaussian data, given frames and guidance."""
import numpy as np
import pytest
import torch

from ramvid import create_diffusion, mask_from_frames
from ramvid.diffusion.sampling import dpmpp_2m_step

SHAPE = (2, 3, 4, 8, 8)


def alpha_bar_at(diffusion, timesteps):
    """alpha_bar (float64, (N, 1, 1, 1, 1)) of the process index the network's timesteps stand for."""
    original = (timesteps.double() * diffusion.original_num_steps / 1000.0).round().long().numpy()
    index = np.searchsorted(diffusion.timestep_map, original)
    assert (diffusion.timestep_map[index] == original).all()
    return torch.from_numpy(diffusion.alphas_cumprod[index]).view(-1, 1, 1, 1, 1)


class GaussianDataEps(torch.nn.Module):
    """The exact noise prediction for data x0 ~ N(mean, std^2) elementwise (std = 0: a point).

    x_t = a x0 + s eps, so E[x0 | x_t] = mean + a std^2 (x_t - a mean) / (a^2 std^2 + s^2)
    and the exact eps is (x_t - a E[x0 | x_t]) / s.
    """

    def __init__(self, diffusion, mean, std):
        super().__init__()
        self.diffusion, self.mean, self.std = diffusion, mean, std
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # loop device

    def forward(self, x, timesteps):
        ab = alpha_bar_at(self.diffusion, timesteps)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = self.mean + a * self.std ** 2 * (x - a * self.mean) / (a ** 2 * self.std ** 2 + s ** 2)
        return ((x - a * x0) / s).to(x.dtype)


def noise(seed, dtype=torch.float64):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("respacing", ["", "25", "ddim10"])
def test_point_mass_trajectory_is_exact_at_every_step(respacing):
    """Data = one point x0*: the exact x0 makes every step land on the ODE solution
    x' = a' x0* + s' (x_T - a_T x0*) / s_T. Catches wrong step coefficients (e.g. s/s' swapped)."""
    diffusion = create_diffusion(diffusion_steps=100, timestep_respacing=respacing)
    target = noise(1) * 0.3
    model = GaussianDataEps(diffusion, target, 0.0)
    x_T = noise(2)
    ab_T = diffusion.alphas_cumprod[-1]
    direction = (x_T - np.sqrt(ab_T) * target) / np.sqrt(1 - ab_T)
    seen = []
    out = diffusion.sample_loop(model, SHAPE, sampler="dpm++2m", noise=x_T, clip_denoised=False,
                                callback=lambda step: seen.append(step))
    assert len(seen) == diffusion.num_timesteps
    for step in seen:
        ab = diffusion.alphas_cumprod_prev[step["t"]]  # where step t lands
        expected = np.sqrt(ab) * target + np.sqrt(1 - ab) * direction
        torch.testing.assert_close(step["sample"], expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(out, target, atol=2e-5, rtol=0)


def gaussian_ode_error(sampler, respacing, mean=0.3, std=0.5):
    """Max error of `sampler` with `steps` steps against the exact probability-flow ODE solution.

    For Gaussian data the ODE keeps z = (x - a mean) / sqrt(a^2 std^2 + s^2) constant. Every
    respacing below keeps the first and last original step, so the exact answer is the same:
    the ODE from the first step to the last, then the last step's jump to E[x0 | x].
    """
    diffusion = create_diffusion(diffusion_steps=1000, timestep_respacing=respacing)
    model = GaussianDataEps(diffusion, mean, std)
    x_T = noise(3)
    out = diffusion.sample_loop(model, SHAPE, sampler=sampler, noise=x_T, clip_denoised=False)

    a_T, s_T = np.sqrt(diffusion.alphas_cumprod[-1]), np.sqrt(1 - diffusion.alphas_cumprod[-1])
    z = (x_T - a_T * mean) / np.sqrt(a_T ** 2 * std ** 2 + s_T ** 2)
    a, s = np.sqrt(diffusion.alphas_cumprod[0]), np.sqrt(1 - diffusion.alphas_cumprod[0])
    x_last = a * mean + np.sqrt(a ** 2 * std ** 2 + s ** 2) * z
    expected = mean + a * std ** 2 * (x_last - a * mean) / (a ** 2 * std ** 2 + s ** 2)
    return (out - expected).abs().max().item()


def convergence_order(sampler, steps=(20, 40, 80, 160), spacing="logsnr"):
    errors = [gaussian_ode_error(sampler, f"{spacing}{n}") for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return -slope, errors


def test_dpmpp_2m_converges_at_second_order_and_ddim_at_first():
    """Error against the closed-form ODE solution falls like steps^-2 for dpm++2m and like
    steps^-1 for DDIM (the same solver without the correction), with steps evenly spread in
    log-SNR. Catches a lost or wrongly scaled second-order correction (zeroing it gives ~1)."""
    order_2m, errors_2m = convergence_order("dpm++2m")
    order_ddim, errors_ddim = convergence_order("ddim")
    assert 1.7 < order_2m < 2.5, (order_2m, errors_2m)
    assert 0.7 < order_ddim < 1.3, (order_ddim, errors_ddim)
    assert errors_2m[-1] < errors_ddim[-1] / 10


def test_dpmpp_2m_is_second_order_on_uneven_steps_too():
    """Steps evenly spread in t are uneven in log-SNR (step ratios far from 1), where the
    correction's weight h / (2 h_prev) matters: order 2 (measured 2.01). Catches the ratio
    inverted to h_prev / (2 h) (measured 1.77)."""
    order, errors = convergence_order("dpm++2m", steps=(40, 80, 160, 320), spacing="")
    assert 1.9 < order < 2.2, (order, errors)


def test_one_step_is_the_published_update():
    """One 2M step against Lu et al. 2022 (DPM-Solver++, Algorithm 2) computed in float64:
    x' = sigma'/sigma x - alpha' (e^-h - 1) ((1 + 1/2r) x0 - 1/2r x0_prev), r = h_prev / h.
    Catches any wrong coefficient of the step, e.g. the inverted ratio."""
    diffusion = create_diffusion(diffusion_steps=1000, timestep_respacing="ddim20", noise_schedule="cosine")
    x, x0, x0_prev = noise(8), noise(9) * 0.5, noise(10) * 0.5
    for i in (5, 12, 18):
        t = torch.full((SHAPE[0],), i)
        got = dpmpp_2m_step(diffusion, x, t, {"pred_xstart": x0}, {"pred_xstart": x0_prev}, None)

        ab = diffusion.alphas_cumprod
        lam = lambda a: 0.5 * np.log(a / (1 - a))  # noqa: E731
        h, h_prev = lam(ab[i - 1]) - lam(ab[i]), lam(ab[i]) - lam(ab[i + 1])
        r = h_prev / h
        expected = (np.sqrt(1 - ab[i - 1]) / np.sqrt(1 - ab[i]) * x
                    - np.sqrt(ab[i - 1]) * (np.exp(-h) - 1) * ((1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_few_logsnr_steps_solve_the_ode_well():
    """25 steps spread in log-SNR: dpm++2m is 10x closer to the exact solution than DDIM
    (measured 0.015 vs 0.15 for data std 0.5), and than itself on 25 steps spread evenly in t."""
    error = gaussian_ode_error("dpm++2m", "logsnr25")
    assert error < 0.03
    assert error < gaussian_ode_error("ddim", "logsnr25") / 5
    assert error < gaussian_ode_error("dpm++2m", "25") / 5


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 25, 100])
def test_logsnr_respacing_spreads_steps_evenly_in_log_snr(schedule, steps):
    """N distinct steps, first and last kept, consecutive log-SNR gaps equal up to the grid of
    original steps. Catches a spacing uniform in t (its gaps differ by orders of magnitude)."""
    full = create_diffusion(diffusion_steps=1000, noise_schedule=schedule)
    spaced = create_diffusion(diffusion_steps=1000, noise_schedule=schedule,
                              timestep_respacing=f"logsnr{steps}")
    kept = list(spaced.timestep_map)
    assert len(kept) == steps and kept[0] == 0 and kept[-1] == 999
    log_snr = np.log(full.alphas_cumprod / (1 - full.alphas_cumprod))
    ideal = (log_snr[0] - log_snr[-1]) / (steps - 1)
    grid = np.abs(np.diff(log_snr)).max()  # the largest gap between neighbouring original steps
    gaps = -np.diff(log_snr[kept])
    assert np.abs(gaps - ideal).max() <= grid + 1e-9
    with pytest.raises(ValueError, match="timestep_respacing"):
        create_diffusion(diffusion_steps=1000, timestep_respacing="logsnrX")


@pytest.mark.parametrize("resample_steps", [1, 2])
def test_given_frames_are_imposed_at_every_step_and_in_the_result(resample_steps):
    """Catches the solver's history or update leaking into the given frames."""
    diffusion = create_diffusion(diffusion_steps=100, timestep_respacing="6")
    obs = noise(4, torch.float32).clamp(-1, 1)
    obs_mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    given = obs_mask[:, None, :, None, None].expand(SHAPE)
    seen = []

    def model(x, timesteps):
        seen.append(x.clone())
        return torch.tanh(x.roll(1, dims=2))  # an arbitrary network that mixes frames

    out = diffusion.sample_loop(model, SHAPE, sampler="dpm++2m", obs=obs, obs_mask=obs_mask,
                                resample_steps=resample_steps, device="cpu")
    assert len(seen) == 6 * resample_steps
    assert all(torch.equal(x[given], obs[given]) for x in seen)
    assert torch.equal(out[given], obs[given])
    assert not torch.equal(out[~given], obs[~given])


def test_guidance_mixes_the_two_predictions():
    """w = 1 is plain conditioning (one call per step); w != 1 calls the network twice and changes
    the result. Catches guidance ignored by the solver."""
    diffusion = create_diffusion(diffusion_steps=100, timestep_respacing="5")
    obs, obs_mask = noise(5, torch.float32), mask_from_frames([0], SHAPE[0], SHAPE[2])
    calls = []

    def model(x, timesteps):
        calls.append(1)
        return torch.tanh(x.roll(1, dims=2) + timesteps.view(-1, 1, 1, 1, 1) / 1000)

    kwargs = dict(sampler="dpm++2m", obs=obs, obs_mask=obs_mask, noise=noise(6, torch.float32),
                  device="cpu")
    plain = diffusion.sample_loop(model, SHAPE, **kwargs)
    assert len(calls) == 5
    same = diffusion.sample_loop(model, SHAPE, guidance_scale=1.0, **kwargs)
    guided = diffusion.sample_loop(model, SHAPE, guidance_scale=3.0,
                                   generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(calls) == 5 + 5 + 10
    assert torch.equal(plain, same) and not torch.equal(plain, guided)


def test_solver_is_deterministic_and_works_with_learned_sigma_and_x0_models():
    """The solver reads only the x0 prediction: learned variance channels are ignored and an
    x0-predicting model gives the same answer as the equivalent eps model."""
    diffusion = create_diffusion(diffusion_steps=100, timestep_respacing="8")
    x0_diffusion = create_diffusion(diffusion_steps=100, timestep_respacing="8", predict_xstart=True)
    sigma_diffusion = create_diffusion(diffusion_steps=100, timestep_respacing="8", learn_sigma=True)
    eps_model = GaussianDataEps(diffusion, 0.2, 0.4)

    def x0_model(x, timesteps):
        ab = alpha_bar_at(diffusion, timesteps)
        return (x - (1 - ab).sqrt() * eps_model(x, timesteps)) / ab.sqrt()

    def sigma_model(x, timesteps):
        return torch.cat([eps_model(x, timesteps), torch.ones_like(x)], dim=1)

    x_T = noise(7)
    kwargs = dict(sampler="dpm++2m", noise=x_T, device="cpu")
    a = diffusion.sample_loop(eps_model, SHAPE, **kwargs)
    assert torch.equal(a, diffusion.sample_loop(eps_model, SHAPE, **kwargs))
    torch.testing.assert_close(x0_diffusion.sample_loop(x0_model, SHAPE, **kwargs), a,
                               atol=1e-5, rtol=0)
    assert torch.equal(sigma_diffusion.sample_loop(sigma_model, SHAPE, **kwargs), a)
