"""Closed-form identities, oracle denoisers and masking invariants of the diffusion process."""
import numpy as np
import pytest
import torch

from ramvid import create_diffusion, mask_from_frames, sample_train_mask
from ramvid.diffusion import create_named_schedule_sampler, space_timesteps
from ramvid.diffusion.gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from ramvid.diffusion.sampling import Conditioning, predict
from ramvid.diffusion.schedules import get_named_beta_schedule

SHAPE = (2, 3, 4, 8, 8)


def video(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


class OracleEps(torch.nn.Module):
    """Returns the exact noise that turns x0 into x_t: the perfect epsilon network."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.diffusion, self.x0 = diffusion, x0
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the loop a device

    def forward(self, x, timesteps):
        original = timesteps * self.diffusion.original_num_steps / 1000.0  # undo the rescaling
        index = torch.as_tensor(
            [int(np.searchsorted(self.diffusion.timestep_map, int(s))) for s in original.round()]
        )
        ab = torch.from_numpy(self.diffusion.alphas_cumprod)[index].float().view(-1, 1, 1, 1, 1)
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def test_q_sample_moments_match_closed_form():
    """x_t ~ N(sqrt(ab) x0, 1 - ab). Seen red with q_sample's noise scaled by (1 - ab) instead
    of its square root (variance 0.96 instead of 0.98), and with sqrt(ab) replaced by ab."""
    n = 200_000
    diffusion = create_diffusion(diffusion_steps=100)
    x0 = torch.full((n, 1, 1, 1, 1), 0.5)
    t = torch.full((n,), 60)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = diffusion.q_sample(x0, t, noise=noise).double()
    ab = diffusion.alphas_cumprod[60]
    # 5 standard errors of the sample mean and of the sample variance of n Gaussian draws.
    assert abs(xt.mean().item() - np.sqrt(ab) * 0.5) < 5 * np.sqrt((1 - ab) / n)
    assert abs(xt.var().item() - (1 - ab)) < 5 * (1 - ab) * np.sqrt(2 / (n - 1))


def test_posterior_is_the_gaussian_product_formula():
    """q(x_{t-1}|x_t,x0) mean and variance from Bayes' rule on the two Gaussians."""
    diffusion = create_diffusion(diffusion_steps=50, noise_schedule="cosine")
    x0, xt = video(1), video(2)
    t = torch.tensor([7, 30])
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        beta, ab_prev = diffusion.betas[step], diffusion.alphas_cumprod_prev[step]
        # prior N(sqrt(ab_prev) x0, 1 - ab_prev), likelihood x_t ~ N(sqrt(1-beta) x_{t-1}, beta)
        precision = 1 / (1 - ab_prev) + (1 - beta) / beta
        expected_var = 1 / precision
        expected_mean = expected_var * (np.sqrt(ab_prev) * x0[i].double() / (1 - ab_prev)
                                        + np.sqrt(1 - beta) * xt[i].double() / beta)
        assert np.isclose(var[i].item(), expected_var, rtol=1e-5)
        torch.testing.assert_close(mean[i].double(), expected_mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("respacing", ["10", "ddim25", "5,3,2"])
def test_respaced_alpha_bar_equals_kept_original(respacing):
    full = create_diffusion(diffusion_steps=100, noise_schedule="cosine")
    spaced = create_diffusion(diffusion_steps=100, noise_schedule="cosine", timestep_respacing=respacing)
    kept = sorted(space_timesteps(100, respacing))
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-10)
    assert list(spaced.timestep_map) == kept
    t = torch.arange(spaced.num_timesteps)
    assert torch.equal(spaced.model_timesteps(t), torch.tensor(kept).float() * 10.0)


def test_bad_respacing_and_schedule_name_the_flag():
    with pytest.raises(ValueError, match="timestep_respacing"):
        space_timesteps(100, "ddim45")
    with pytest.raises(ValueError, match="timestep_respacing"):
        space_timesteps(10, "20")
    with pytest.raises(ValueError, match="timestep_respacing"):
        space_timesteps(100, "ddim7x")
    with pytest.raises(ValueError, match="noise_schedule"):
        get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="diffusion_steps=20"):
        get_named_beta_schedule("linear", 20)


@pytest.mark.parametrize("respacing", ["", "ddim10"])
def test_oracle_denoiser_makes_ddim_recover_x0(respacing):
    diffusion = create_diffusion(diffusion_steps=100, timestep_respacing=respacing)
    x0 = video(3) * 0.9
    model = OracleEps(diffusion, x0)
    sample = diffusion.ddim_sample_loop(model, SHAPE, noise=torch.randn(SHAPE), eta=0.0)
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


def test_ddim_eta0_is_deterministic_and_noise_is_not_mutated():
    diffusion = create_diffusion(timestep_respacing="20")
    model = OracleEps(diffusion, video(4) * 0.5)
    noise = torch.randn(SHAPE)
    noise_copy = noise.clone()
    obs, obs_mask = video(5), mask_from_frames([0], SHAPE[0], SHAPE[2])
    obs_copy = obs.clone()
    a = diffusion.ddim_sample_loop(model, SHAPE, noise=noise, obs=obs, obs_mask=obs_mask)
    b = diffusion.ddim_sample_loop(model, SHAPE, noise=noise, obs=obs, obs_mask=obs_mask)
    assert torch.equal(a, b)
    assert torch.equal(noise, noise_copy) and torch.equal(obs, obs_copy)


class Scrambler(torch.nn.Module):
    """An arbitrary network: a fixed random function of its input."""

    def __init__(self, out_channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, out_channels, 3, padding=1)

    def forward(self, x, timesteps):
        return torch.tanh(self.conv(x) + timesteps.view(-1, 1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
@pytest.mark.parametrize("resample_steps", [1, 3])
def test_sampled_given_frames_equal_obs_exactly(loop, resample_steps):
    diffusion = create_diffusion(timestep_respacing="10")
    obs = video(6)
    obs_mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    sample = getattr(diffusion, loop)(Scrambler(), SHAPE, obs=obs, obs_mask=obs_mask,
                                      resample_steps=resample_steps)
    given = obs_mask[:, None, :, None, None].expand(SHAPE)
    assert torch.equal(sample[given], obs[given])
    assert not torch.equal(sample[~given], obs[~given])


def test_given_frames_are_imposed_before_every_step():
    diffusion = create_diffusion(timestep_respacing="6")
    obs = video(7)
    obs_mask = mask_from_frames([1, 2], SHAPE[0], SHAPE[2])
    seen = []

    def model(x, timesteps):
        seen.append(x[:, :, 1:3].clone())
        return torch.zeros_like(x)

    diffusion.p_sample_loop(model, SHAPE, obs=obs, obs_mask=obs_mask, resample_steps=2,
                            device="cpu")
    assert len(seen) == 12  # 6 steps x 2 repetitions
    assert all(torch.equal(s, obs[:, :, 1:3]) for s in seen)


def test_per_sample_generators_make_samples_independent_of_the_batch():
    diffusion = create_diffusion(timestep_respacing="5")
    model = Scrambler()

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = diffusion.p_sample_loop(model, SHAPE, generator=gens([11, 12]))
    alone = diffusion.p_sample_loop(model, (1,) + SHAPE[1:], generator=gens([12]))
    torch.testing.assert_close(both[1:], alone)


def test_guidance_scale_one_equals_plain_conditioning():
    diffusion = create_diffusion(timestep_respacing="5")
    obs, obs_mask = video(8), mask_from_frames([0, 1], SHAPE[0], SHAPE[2])
    noise = torch.randn(SHAPE)
    kwargs = dict(noise=noise, obs=obs, obs_mask=obs_mask)
    plain = diffusion.ddim_sample_loop(Scrambler(), SHAPE, **kwargs)
    guided = diffusion.ddim_sample_loop(Scrambler(), SHAPE, guidance_scale=1.0, **kwargs)
    strong = diffusion.ddim_sample_loop(Scrambler(), SHAPE, guidance_scale=3.0, **kwargs)
    assert torch.equal(plain, guided)
    assert not torch.equal(plain, strong)


def test_guided_output_is_the_linear_combination():
    diffusion = create_diffusion(timestep_respacing="10")
    x, obs = video(9), video(10)
    obs_mask = mask_from_frames([0], SHAPE[0], SHAPE[2])
    t = torch.tensor([3, 7])
    model = Scrambler()
    gen = torch.Generator().manual_seed(0)
    conditioning = Conditioning.build(x, obs, obs_mask, guidance_scale=2.5)
    mixed = predict(diffusion, model, x, t, conditioning, clip_denoised=False, generator=gen)
    gen = torch.Generator().manual_seed(0)
    noised = diffusion.q_sample(obs, t, torch.randn(obs.shape, generator=gen))
    uncond = model(torch.where(obs_mask[:, None, :, None, None], noised, x), diffusion.model_timesteps(t))
    conditional = model(x, diffusion.model_timesteps(t))
    expected = diffusion.p_mean_variance(None, x, t, clip_denoised=False,
                                         model_output=uncond + 2.5 * (conditional - uncond))
    torch.testing.assert_close(mixed["pred_xstart"], expected["pred_xstart"])


# ----------------------------------------------------------------------------- losses
LOSS_SETTINGS = [
    dict(),
    dict(predict_xstart=True),
    dict(sigma_small=True),
    dict(learn_sigma=True),
    dict(learn_sigma=True, rescale_learned_sigmas=False),
    dict(learn_sigma=True, use_kl=True),
    dict(rescale_timesteps=False),
]


@pytest.mark.parametrize("flags", LOSS_SETTINGS, ids=lambda f: ",".join(f) or "default")
def test_loss_ignores_network_output_on_given_frames(flags):
    diffusion = create_diffusion(diffusion_steps=50, **flags)
    out_channels = 6 if flags.get("learn_sigma") else 3
    base = Scrambler(out_channels)
    obs_mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    given = obs_mask[:, None, :, None, None]

    def perturbed(x, timesteps):
        out = base(x, timesteps)
        return torch.where(given, out + 5.0 * torch.randn_like(out), out)

    x0, noise, t = video(11), torch.randn(SHAPE), torch.tensor([0, 25])
    with torch.no_grad():
        a = diffusion.training_losses(base, x0, t, obs_mask=obs_mask, noise=noise)
        b = diffusion.training_losses(perturbed, x0, t, obs_mask=obs_mask, noise=noise)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
        assert torch.isfinite(a[name]).all()
    if flags.get("use_kl"):
        assert set(a) == {"vb", "loss"}
    elif flags.get("learn_sigma"):
        assert set(a) == {"vb", "mse", "loss"}
        torch.testing.assert_close(a["loss"], a["mse"] + a["vb"])


def test_loss_depends_on_network_output_on_free_frames():
    diffusion = create_diffusion(diffusion_steps=50)
    obs_mask = mask_from_frames([0], SHAPE[0], SHAPE[2])
    x0, noise, t = video(12), torch.randn(SHAPE), torch.tensor([10, 20])
    a = diffusion.training_losses(Scrambler(), x0, t, obs_mask=obs_mask, noise=noise)
    b = diffusion.training_losses(lambda x, s: Scrambler()(x, s) + 0.1, x0, t, obs_mask=obs_mask, noise=noise)
    assert (a["loss"] != b["loss"]).all()


def test_fully_given_video_contributes_zero_loss_not_nan():
    diffusion = create_diffusion(diffusion_steps=50, learn_sigma=True)
    obs_mask = torch.tensor([[True] * 4, [False] * 4])
    losses = diffusion.training_losses(Scrambler(6), video(13), torch.tensor([5, 5]), obs_mask=obs_mask)
    assert losses["loss"][0].item() == 0.0 and losses["loss"][1].item() > 0


def test_given_frames_enter_x_t_clean_and_mse_matches_definition():
    diffusion = create_diffusion(diffusion_steps=50)
    obs_mask = torch.tensor([[False, True, False, False], [False, False, False, False]])
    x0, noise, t = video(14), torch.randn(SHAPE), torch.tensor([30, 40])
    seen = {}

    def model(x, timesteps):
        seen["x"] = x
        return torch.zeros_like(x)

    losses = diffusion.training_losses(model, x0, t, obs_mask=obs_mask, noise=noise)
    assert torch.equal(seen["x"][0, :, 1], x0[0, :, 1])
    assert not torch.equal(seen["x"][0, :, 0], x0[0, :, 0])
    expected0 = noise[0][:, [0, 2, 3]].pow(2).mean()
    torch.testing.assert_close(losses["mse"][0], expected0)
    torch.testing.assert_close(losses["mse"][1], noise[1].pow(2).mean())


def test_exclude_conditional_false_trains_on_all_frames():
    diffusion = create_diffusion(diffusion_steps=50)
    obs_mask = mask_from_frames([0], SHAPE[0], SHAPE[2])
    x0, noise, t = video(15), torch.randn(SHAPE), torch.tensor([30, 40])
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    losses = diffusion.training_losses(zero, x0, t, obs_mask=obs_mask, noise=noise,
                                       exclude_conditional=False)
    target = noise.clone()
    target[:, :, 0] = 0  # given frames carry no noise to predict
    torch.testing.assert_close(losses["mse"], target.pow(2).flatten(1).mean(1))


def test_vb_at_t0_is_the_decoder_nll():
    diffusion = create_diffusion(timestep_respacing="20", learn_sigma=True, use_kl=True)
    losses = diffusion.training_losses(Scrambler(6), video(16), torch.tensor([0, 0]))
    assert diffusion.loss_type == LossType.RESCALED_KL
    assert (losses["vb"] > 0).all() and torch.isfinite(losses["vb"]).all()


# ----------------------------------------------------------------------------- masks and samplers
def test_train_masks_follow_the_paper_recipe():
    gen = torch.Generator().manual_seed(0)
    masks = sample_train_mask(4000, 10, uncondition_rate=0.25, max_num_mask_frames=4,
                              mask_range=(2, 8), generator=gen)
    counts = masks.sum(1)
    assert masks[:, :2].sum() == 0 and masks[:, 8:].sum() == 0
    assert counts.max() == 4
    assert abs((counts == 0).float().mean().item() - 0.25) < 0.03
    conditioned = counts[counts > 0].float()
    assert abs(conditioned.mean().item() - 2.5) < 0.1  # r ~ U{1..4}
    again = sample_train_mask(4000, 10, 0.25, 4, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_train_mask_validation_names_the_flag():
    with pytest.raises(ValueError, match="mask_range"):
        sample_train_mask(2, 8, 0.0, 2, mask_range=(0, 9))
    with pytest.raises(ValueError, match="max_num_mask_frames"):
        sample_train_mask(2, 8, 0.0, 5, mask_range=(0, 4))
    with pytest.raises(ValueError, match="cond_frames"):
        mask_from_frames([0, 8], 2, 8)


def test_schedule_samplers():
    diffusion = create_diffusion(diffusion_steps=30)
    uniform = create_named_schedule_sampler("uniform", diffusion)
    t, w = uniform.sample(1000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 30 and torch.allclose(w, torch.ones_like(w))

    harmonic = create_named_schedule_sampler("harmonic", diffusion)
    t, w = harmonic.sample(5000, "cpu", generator=torch.Generator().manual_seed(0))
    assert (t < 5).float().mean() > 0.4  # 1/(t+1) puts most mass at small t
    assert abs(w.mean().item() - 1.0) < 0.15  # importance weights are unbiased

    lsm = create_named_schedule_sampler("loss-second-moment", diffusion)
    assert np.allclose(lsm.weights(), 1.0)  # uniform until every t has its history
    for _ in range(10):
        ts = torch.arange(30)
        lsm.update_with_local_losses(ts, ts.float() + 1.0)
    w = lsm.weights()
    assert np.isclose(w.sum(), 1.0) and w[29] > 20 * w[0]
    with pytest.raises(ValueError, match="schedule_sampler"):
        create_named_schedule_sampler("nope", diffusion)


def test_variance_types_are_wired_from_flags():
    assert create_diffusion(learn_sigma=True).model_var_type == ModelVarType.LEARNED_RANGE
    assert create_diffusion(sigma_small=True).model_var_type == ModelVarType.FIXED_SMALL
    assert create_diffusion().model_var_type == ModelVarType.FIXED_LARGE
    assert create_diffusion(predict_xstart=True).model_mean_type == ModelMeanType.START_X
    assert isinstance(create_diffusion(), GaussianDiffusion)


# ----------------------------------------------------------------------------- one sampling loop
def test_lineage_loops_are_sample_loop():
    """Catches p_sample_loop/ddim_sample_loop drifting from sample_loop (e.g. a lost argument)."""
    diffusion = create_diffusion(timestep_respacing="5")
    obs, obs_mask = video(20), mask_from_frames([0], SHAPE[0], SHAPE[2])
    kwargs = dict(obs=obs, obs_mask=obs_mask, resample_steps=2, guidance_scale=2.0)
    for lineage, sampler, extra in [("p_sample_loop", "ddpm", {}), ("ddim_sample_loop", "ddim", {"eta": 0.5})]:
        a = getattr(diffusion, lineage)(Scrambler(), SHAPE, generator=torch.Generator().manual_seed(1),
                                        **kwargs, **extra)
        b = diffusion.sample_loop(Scrambler(), SHAPE, sampler=sampler,
                                  generator=torch.Generator().manual_seed(1), **kwargs, **extra)
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs,named", [
    (dict(sampler="ddpm", eta=0.5), "eta"),
    (dict(sampler="dpm++2m", eta=1.0), "eta"),
    (dict(sampler="ddim", eta=1.5), "eta"),
    (dict(sampler="euler"), "sampler"),
    (dict(obs=video(21)), "obs_mask"),
    (dict(obs_mask=mask_from_frames([0], 2, 4)), "no obs"),
    (dict(obs=video(21)[:1], obs_mask=mask_from_frames([0], 2, 4)), "obs has shape"),
    (dict(obs=video(21), obs_mask=mask_from_frames([0], 1, 4)), "obs_mask has shape"),
    (dict(resample_steps=0), "resample_steps"),
    (dict(noise=torch.zeros(1, 3, 4, 8, 8)), "noise"),
])
def test_bad_sampling_combinations_are_errors(kwargs, named):
    """Catches a combination the loop would silently ignore (eta with ddpm was dropped once)."""
    diffusion = create_diffusion(timestep_respacing="3")
    with pytest.raises(ValueError, match=named):
        diffusion.sample_loop(Scrambler(), SHAPE, **kwargs)


def test_tables_are_read_on_the_device_without_numpy_copies(monkeypatch):
    """After the first use every coefficient is a gather from cached tensors: no numpy ->
    tensor copy per call. Catches `extract` converting its numpy table on each call."""
    diffusion = create_diffusion(timestep_respacing="4", learn_sigma=True)
    model = Scrambler(6)
    obs, obs_mask = video(22), mask_from_frames([1], SHAPE[0], SHAPE[2])
    assert diffusion.tables("cpu") is diffusion.tables(torch.device("cpu"))

    def refuse(*args):
        raise AssertionError("torch.from_numpy called after the tables were cached")

    monkeypatch.setattr(torch, "from_numpy", refuse)
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        diffusion.sample_loop(model, SHAPE, sampler=sampler, obs=obs, obs_mask=obs_mask,
                              guidance_scale=2.0, resample_steps=2)
    diffusion.training_losses(model, video(23), torch.tensor([0, 3]), obs_mask=obs_mask)
    diffusion.q_posterior_mean_variance(video(23), video(24), torch.tensor([1, 2]))
