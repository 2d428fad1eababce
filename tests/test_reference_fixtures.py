"""ramvid computes what the reference implementation computed (../shared/fixtures)."""
import numpy as np
import pytest
import torch

from ramvid.config import create_diffusion, create_model
from ramvid.diffusion.sampling import ddim_step
from ramvid.unet import UNetConfig, UNetModel

SCHEDULE_TABLES = ["betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                   "posterior_mean_coef1", "posterior_mean_coef2"]


def unet_a(reference):
    cfg = reference["unet"]["A"]["config"]
    model = create_model(
        image_size=cfg["image_size"], num_channels=cfg["num_channels"],
        num_res_blocks=cfg["num_res_blocks"], scale_time_dim=cfg["scale_time_dim"],
        learn_sigma=cfg["learn_sigma"], class_cond=cfg["class_cond"],
        use_checkpoint=cfg["use_checkpoint"], attention_resolutions=cfg["attention_resolutions"],
        num_heads=cfg["num_heads"], num_heads_upsample=cfg["num_heads_upsample"],
        use_scale_shift_norm=cfg["use_scale_shift_norm"], dropout=cfg["dropout"], rgb=cfg["rgb"],
        seq_len=cfg["seq_len"],
    )
    return model


def unet_b(reference):
    cfg = reference["unet"]["B"]["config"]
    return UNetModel(UNetConfig(
        image_size=32, in_channels=cfg["in_channels"], model_channels=cfg["model_channels"],
        out_channels=cfg["out_channels"], num_res_blocks=cfg["num_res_blocks"],
        attention_resolutions=tuple(cfg["attention_resolutions"]), channel_mult=tuple(cfg["channel_mult"]),
        dropout=cfg["dropout"], num_classes=cfg["num_classes"], use_checkpoint=cfg["use_checkpoint"],
        num_heads=cfg["num_heads"], num_heads_upsample=cfg["num_heads_upsample"],
        use_scale_shift_norm=cfg["use_scale_shift_norm"], scale_time_dim=cfg["scale_time_dim"],
        seq_len=cfg["seq_len"],
    ))


def load_reference_weights(model, record):
    state = {k: v.float() for k, v in record["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("name,build", [("A", unet_a), ("B", unet_b)])
def test_unet_parameter_names_and_shapes(reference, name, build):
    model = build(reference)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in reference["unet"][name]["param_shapes"].items()}


@pytest.mark.parametrize("name,build", [("A", unet_a), ("B", unet_b)])
def test_unet_forward_matches_reference(reference, name, build):
    record = reference["unet"][name]
    model = load_reference_weights(build(reference), record)
    with torch.no_grad():
        out = model(record["x"], record["timesteps"], **record["model_kwargs"])
    torch.testing.assert_close(out, record["output"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("key", [
    "linear-1000-full", "linear-1000-10", "linear-1000-ddim10", "linear-1000-50,30,20",
    "linear-100-full", "cosine-1000-full", "cosine-1000-10", "cosine-1000-ddim10",
    "cosine-1000-50,30,20", "cosine-100-full",
])
def test_schedules_match_reference(reference, key):
    tables = reference["schedules"][key]
    schedule, steps, respacing = key.split("-")
    diffusion = create_diffusion(noise_schedule=schedule, diffusion_steps=int(steps),
                                 timestep_respacing="" if respacing == "full" else respacing)
    for table in SCHEDULE_TABLES:
        np.testing.assert_allclose(getattr(diffusion, table), tables[table].numpy(), rtol=0,
                                   atol=1e-12, err_msg=table)
    assert list(diffusion.timestep_map) == list(tables["timestep_map"])
    assert sorted(diffusion.use_timesteps) == sorted(tables["use_timesteps"])


def diffusion_for(setting):
    return create_diffusion(
        diffusion_steps=setting["steps"], learn_sigma=setting["learn_sigma"],
        sigma_small=setting.get("sigma_small", False),
        predict_xstart=setting.get("predict_xstart", False),
        timestep_respacing=setting["timestep_respacing"],
    )


@pytest.fixture(scope="module")
def reference_unet_a(reference):
    return load_reference_weights(unet_a(reference), reference["unet"]["A"])


def model_for(setting, unet):
    if setting["learn_sigma"]:
        return unet
    return lambda x, t, **kw: unet(x, t, **kw)[:, :3]  # fixed variance: mean channels only


def cond_mask(record):
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for i, frames in enumerate(record["loss_cond_frames"]):
        mask[i, frames] = True
    return mask


SETTINGS = ["learned_range-eps-1000", "learned_range-eps-resp10", "fixed_large-eps-1000",
            "fixed_small-eps-resp10", "fixed_large-x0-resp10"]

# pred_xstart from an epsilon model is x_t / sqrt(abar) - eps sqrt(1/abar - 1): the network's
# 1e-5 float error is amplified by up to sqrt(1/abar - 1) ~ 160 at the noisiest step.
PRED_XSTART_ATOL = 2e-3


@pytest.mark.parametrize("setting", SETTINGS)
def test_q_sample_and_p_mean_variance_match_reference(reference, reference_unet_a, setting):
    record = reference["diffusion"][setting]
    diffusion = diffusion_for(record["setting"])
    model = model_for(record["setting"], reference_unet_a)
    with torch.no_grad():
        x_t = diffusion.q_sample(record["x_start"], record["t"], record["noise"])
        torch.testing.assert_close(x_t, record["x_t"], atol=1e-6, rtol=0)
        for key, t, clip in [("p_mean_variance", record["t"], True),
                             ("p_mean_variance_t_other_noclip", record["t_other"], False)]:
            out = diffusion.p_mean_variance(model, record["x_t"], t, clip_denoised=clip)
            for name in ("mean", "variance", "log_variance"):
                torch.testing.assert_close(out[name], record[key][name], atol=1e-4, rtol=1e-4,
                                           msg=f"{key}.{name}")
            torch.testing.assert_close(out["pred_xstart"], record[key]["pred_xstart"],
                                       atol=PRED_XSTART_ATOL, rtol=0)


@pytest.mark.parametrize("setting", SETTINGS)
def test_ddim_step_matches_reference(reference, reference_unet_a, setting):
    record = reference["diffusion"][setting]
    diffusion = diffusion_for(record["setting"])
    with torch.no_grad():
        out = diffusion.p_mean_variance(model_for(record["setting"], reference_unet_a),
                                        record["x_t"], record["t"])
        sample = ddim_step(diffusion, record["x_t"], record["t"], out, None, None, eta=0.0)
    torch.testing.assert_close(sample, record["ddim_eta0"]["sample"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_xstart"], record["ddim_eta0"]["pred_xstart"],
                               atol=PRED_XSTART_ATOL, rtol=0)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not s.startswith("learned")])
def test_masked_training_losses_match_reference(reference, reference_unet_a, setting):
    record = reference["diffusion"][setting]
    diffusion = diffusion_for(record["setting"])
    with torch.no_grad():
        losses = diffusion.training_losses(model_for(record["setting"], reference_unet_a),
                                           record["x_start"], record["t"],
                                           obs_mask=cond_mask(record), noise=record["noise"])
    for name, expected in record["training_losses"].items():
        torch.testing.assert_close(losses[name], expected, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.startswith("learned")])
def test_masked_vb_for_learned_sigma_matches_closed_form(reference, reference_unet_a, setting):
    """The reference crashed here; check the masked VB against a direct computation."""
    record = reference["diffusion"][setting]
    assert "error" in record["training_losses"]
    diffusion = diffusion_for(record["setting"])
    mask = cond_mask(record)
    x0, t, noise = record["x_start"], record["t"], record["noise"]
    with torch.no_grad():
        losses = diffusion.training_losses(reference_unet_a, x0, t, obs_mask=mask, noise=noise)

        given = mask[:, None, :, None, None]
        x_t = torch.where(given, x0, diffusion.q_sample(x0, t, noise))
        out = reference_unet_a(x_t, diffusion.model_timesteps(t)).double()
        # The closed form runs in float64; the library's float32 differs by rounding only.
        x0, x_t, noise = x0.double(), x_t.double(), noise.double()
        eps, v = out[:, :3], out[:, 3:]

        def table(values):
            return torch.from_numpy(values)[t].view(-1, 1, 1, 1, 1)

        ab, ab_prev, beta = (table(diffusion.alphas_cumprod), table(diffusion.alphas_cumprod_prev),
                             table(diffusion.betas))
        alpha = 1 - beta
        coef_x0 = beta * ab_prev.sqrt() / (1 - ab)
        coef_xt = (1 - ab_prev) * alpha.sqrt() / (1 - ab)
        true_mean = coef_x0 * x0 + coef_xt * x_t
        x0_hat = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        model_mean = coef_x0 * x0_hat + coef_xt * x_t
        min_log = table(diffusion.posterior_log_variance_clipped)
        log_var = (v + 1) / 2 * beta.log() + (1 - (v + 1) / 2) * min_log
        true_log_var = min_log
        kl = 0.5 * (log_var - true_log_var + (true_log_var.exp() + (true_mean - model_mean) ** 2)
                    / log_var.exp() - 1)
        keep = (~given).float().expand_as(kl)
        expected_vb = (kl * keep).flatten(1).sum(1) / keep.flatten(1).sum(1) / np.log(2.0)
        expected_vb = expected_vb * (diffusion.num_timesteps / 1000.0)  # rescale_learned_sigmas
        expected_mse = (((noise - eps) ** 2) * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
    assert (t > 0).all(), "closed form above is the KL branch (t > 0)"
    torch.testing.assert_close(losses["vb"].double(), expected_vb, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(losses["mse"].double(), expected_mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert torch.isfinite(losses["loss"]).all()
