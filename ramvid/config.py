"""Flags -> typed configs -> (model, diffusion).

`model_and_diffusion_defaults()` and `create_model_and_diffusion(**flags)` are the stable surface
with the flag names of the paper's commands; inside, one `UNetConfig` and one `DiffusionConfig`
are built once and passed around.
"""
from dataclasses import dataclass

from .diffusion import (GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
                        get_named_beta_schedule, space_timesteps)
from .unet import UNetConfig, UNetModel

# channel_mult chosen by image size when --channel_mult is not given.
CHANNEL_MULT_BY_SIZE = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def model_and_diffusion_defaults():
    """Every model and diffusion flag with its default (the paper code's defaults)."""
    return dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        attention_resolutions="16,8",
        channel_mult="",  # empty: chosen by image_size
        dropout=0.0,
        learn_sigma=False,
        sigma_small=False,
        class_cond=False,
        num_classes=0,  # with class_cond: the number of classes (the training data sets it)
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=True,
        rescale_learned_sigmas=True,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        scale_time_dim=20,
        rgb=True,
        seq_len=20,
    )


MODEL_FLAGS = (
    "image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample",
    "attention_resolutions", "channel_mult", "dropout", "learn_sigma", "class_cond",
    "num_classes", "use_checkpoint", "use_scale_shift_norm", "scale_time_dim", "rgb", "seq_len",
)
DIFFUSION_FLAGS = (
    "diffusion_steps", "noise_schedule", "timestep_respacing", "learn_sigma", "sigma_small",
    "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas",
)


@dataclass(frozen=True)
class DiffusionConfig:
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    learn_sigma: bool = False
    sigma_small: bool = False
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = True
    rescale_learned_sigmas: bool = True


def _parse_ints(flag, value):
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    try:
        return tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}={value!r} is not a comma list of integers") from None


def unet_config_from_flags(flags):
    """Build the UNetConfig that the model flags describe (ValueError names a bad flag)."""
    image_size = int(flags["image_size"])
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be positive")
    if flags.get("channel_mult"):
        channel_mult = _parse_ints("channel_mult", flags["channel_mult"])
    elif image_size in CHANNEL_MULT_BY_SIZE:
        channel_mult = CHANNEL_MULT_BY_SIZE[image_size]
    else:
        raise ValueError(
            f"image_size={image_size} has no default channel_mult (known: "
            f"{sorted(CHANNEL_MULT_BY_SIZE)}); pass --channel_mult, e.g. 1,2,2"
        )
    if image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(
            f"image_size={image_size} is not divisible by 2^{len(channel_mult) - 1} "
            f"(channel_mult={','.join(map(str, channel_mult))} downsamples that often)"
        )
    resolutions = _parse_ints("attention_resolutions", flags["attention_resolutions"])
    if any(r <= 0 for r in resolutions):
        raise ValueError(f"attention_resolutions={flags['attention_resolutions']!r} must be positive")
    num_classes = None
    if flags["class_cond"]:
        num_classes = int(flags.get("num_classes") or 0)
        if num_classes < 1:
            raise ValueError("class_cond=True needs num_classes >= 1 (set --num_classes)")
    for flag in ("num_channels", "num_res_blocks", "seq_len"):
        if int(flags[flag]) < 1:
            raise ValueError(f"{flag}={flags[flag]} must be >= 1")
    if not 0.0 <= float(flags["dropout"]) < 1.0:
        raise ValueError(f"dropout={flags['dropout']} must lie in [0, 1)")
    channels = 3 if flags["rgb"] else 1
    return UNetConfig(
        image_size=image_size,
        in_channels=channels,
        model_channels=int(flags["num_channels"]),
        out_channels=2 * channels if flags["learn_sigma"] else channels,
        num_res_blocks=int(flags["num_res_blocks"]),
        attention_resolutions=tuple(image_size // r for r in resolutions),
        channel_mult=channel_mult,
        dropout=float(flags["dropout"]),
        num_classes=num_classes,
        use_checkpoint=bool(flags["use_checkpoint"]),
        num_heads=int(flags["num_heads"]),
        num_heads_upsample=int(flags["num_heads_upsample"]),
        use_scale_shift_norm=bool(flags["use_scale_shift_norm"]),
        scale_time_dim=int(flags["scale_time_dim"]),
        seq_len=int(flags["seq_len"]),
    )


def create_model(**flags):
    return UNetModel(unet_config_from_flags({**model_and_diffusion_defaults(), **flags}))


def create_gaussian_diffusion(config: DiffusionConfig):
    betas = get_named_beta_schedule(config.noise_schedule, config.diffusion_steps)
    if config.use_kl:
        loss_type = LossType.RESCALED_KL
    elif config.rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if config.learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if config.sigma_small else ModelVarType.FIXED_LARGE
    respacing = config.timestep_respacing or [config.diffusion_steps]
    return SpacedDiffusion(
        space_timesteps(config.diffusion_steps, respacing),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if config.predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=config.rescale_timesteps,
    )


def create_diffusion(**flags):
    merged = {**model_and_diffusion_defaults(), **flags}
    return create_gaussian_diffusion(DiffusionConfig(**{k: merged[k] for k in DIFFUSION_FLAGS}))


def create_model_and_diffusion(**flags):
    """(model, diffusion) from flags named as on the command line; unknown flags are an error."""
    defaults = model_and_diffusion_defaults()
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise TypeError(f"unknown model/diffusion flags: {', '.join(unknown)}")
    return create_model(**flags), create_diffusion(**flags)


__all__ = [
    "CHANNEL_MULT_BY_SIZE", "DiffusionConfig", "GaussianDiffusion", "MODEL_FLAGS",
    "DIFFUSION_FLAGS", "create_diffusion", "create_gaussian_diffusion", "create_model",
    "create_model_and_diffusion", "model_and_diffusion_defaults", "unet_config_from_flags",
]
