"""Model and diffusion flags -> (model, diffusion); the paper's configurations as presets.

The flags are declared once, in `MODEL_AND_DIFFUSION_FLAGS`: the training and sampling parsers,
`--help`, args.json and the checks below are built from it. `create_model_and_diffusion(**flags)`
takes the flag names of the paper's commands. `--preset NAME` expands to one of `PRESETS`; flags
given explicitly on the command line win.
"""
from .diffusion import (LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
                        get_named_beta_schedule, space_timesteps)
from .diffusion.schedules import NOISE_SCHEDULES
from .errors import UsageError
from .flags import Flag, at_least, flag_values, in_range, int_tuple, positive
from .unet import UNetConfig, UNetModel

# channel_mult chosen by image size when --channel_mult is not given.
CHANNEL_MULT_BY_SIZE = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def _all_positive(values):
    return None if all(v > 0 for v in values) else "every entry must be positive"


# The paper code's defaults; the paper's own commands (presets bair64, kinetics600, ucf101)
# change some of them.
MODEL_AND_DIFFUSION_FLAGS = (
    Flag("image_size", 64, "frame height and width in pixels (videos are resized and "
         "center-cropped to it)", check=positive),
    Flag("num_channels", 128, "channels of the first UNet level (and of the timestep embedding)",
         check=positive),
    Flag("num_res_blocks", 2, "residual blocks per UNet level", check=positive),
    Flag("num_heads", 4, "attention heads", check=positive),
    Flag("num_heads_upsample", -1, "attention heads on the upsampling path; -1 = --num_heads"),
    Flag("attention_resolutions", "16,8", "comma list of downsampling factors r whose level "
         "attends over all T*H*W positions (at image_size // r pixels); the middle block always "
         "attends; empty = middle block only", convert=int_tuple, check=_all_positive),
    Flag("channel_mult", "", "comma list of channel multipliers per UNet level, e.g. 1,2,3,4; "
         f"empty = chosen by --image_size ({', '.join(map(str, CHANNEL_MULT_BY_SIZE))})",
         convert=int_tuple, check=_all_positive),
    Flag("dropout", 0.0, "dropout rate in the residual blocks", check=in_range(0.0, 1.0)),
    Flag("learn_sigma", False, "the model also predicts the variance (2C output channels; "
         "hybrid loss)"),
    Flag("sigma_small", False, "fixed variance = the posterior variance (default: beta_t); "
         "ignored with --learn_sigma True"),
    Flag("class_cond", False, "condition on the class: the file name's prefix before the first "
         "'_' (cat_03.mp4 -> cat)"),
    Flag("num_classes", 0, "with --class_cond True: the number of classes (training takes it "
         "from the data)", check=at_least(0)),
    Flag("diffusion_steps", 1000, "T: steps of the forward (noising) process", check=positive),
    Flag("noise_schedule", "linear", "beta schedule of the forward process",
         choices=NOISE_SCHEDULES),
    Flag("timestep_respacing", "", "steps kept for sampling: 'N' (e.g. 250), section counts "
         "'a,b,c', 'ddimN', or 'logsnrN' (N steps evenly spread in log-SNR: for --sampler "
         "dpm++2m); empty = all --diffusion_steps"),
    Flag("use_kl", False, "train on the variational bound alone (with --learn_sigma True)"),
    Flag("predict_xstart", False, "the model predicts the clean video x0 instead of the noise"),
    Flag("rescale_timesteps", True, "feed the model t * 1000 / T, so respaced and full "
         "schedules share one timestep range"),
    Flag("rescale_learned_sigmas", True, "with --learn_sigma True: scale the variational-bound "
         "term by T / 1000"),
    Flag("use_checkpoint", False, "gradient checkpointing: recompute activations in the "
         "backward pass (less memory, slower)"),
    Flag("use_scale_shift_norm", True, "the timestep embedding scales and shifts the "
         "normalised features (FiLM) instead of being added"),
    Flag("scale_time_dim", 20, "S > 0: UNet levels also halve the time axis while S//2, S//4, "
         "... stay positive; 0 = time is never downsampled. The default 20 is the paper code's; "
         "the paper's own commands use 0", check=at_least(0)),
    Flag("rgb", True, "3 colour channels; False = grayscale (1 channel)"),
    Flag("seq_len", 20, "frames per training clip (and per sampled video)", check=positive),
)


def model_and_diffusion_defaults():
    """Every model and diffusion flag with its default (the paper code's defaults)."""
    return {f.name: f.default for f in MODEL_AND_DIFFUSION_FLAGS}


DIFFUSION_FLAGS = ("diffusion_steps", "noise_schedule", "timestep_respacing", "learn_sigma",
                   "sigma_small", "use_kl", "predict_xstart", "rescale_timesteps",
                   "rescale_learned_sigmas")


def unet_config_from_flags(flags):
    """Build the UNetConfig that the model flags describe (ValueError names a bad flag)."""
    v = flag_values(MODEL_AND_DIFFUSION_FLAGS, flags)
    image_size = v["image_size"]
    channel_mult = v["channel_mult"] or CHANNEL_MULT_BY_SIZE.get(image_size)
    if not channel_mult:
        raise ValueError(f"image_size={image_size} has no default channel_mult (known: "
                         f"{sorted(CHANNEL_MULT_BY_SIZE)}); pass --channel_mult, e.g. 1,2,2")
    if image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(f"image_size={image_size} is not divisible by "
                         f"2^{len(channel_mult) - 1} (channel_mult="
                         f"{','.join(map(str, channel_mult))} downsamples that often)")
    if v["class_cond"] and v["num_classes"] < 1:
        raise ValueError("class_cond=True needs num_classes >= 1 (set --num_classes)")
    channels = 3 if v["rgb"] else 1
    return UNetConfig(
        image_size=image_size,
        in_channels=channels,
        model_channels=v["num_channels"],
        out_channels=2 * channels if v["learn_sigma"] else channels,
        num_res_blocks=v["num_res_blocks"],
        attention_resolutions=tuple(image_size // r for r in v["attention_resolutions"]),
        channel_mult=channel_mult,
        dropout=v["dropout"],
        num_classes=v["num_classes"] if v["class_cond"] else None,
        use_checkpoint=v["use_checkpoint"],
        num_heads=v["num_heads"],
        num_heads_upsample=v["num_heads_upsample"],
        use_scale_shift_norm=v["use_scale_shift_norm"],
        scale_time_dim=v["scale_time_dim"],
        seq_len=v["seq_len"],
    )


def create_model(**flags):
    return UNetModel(unet_config_from_flags(flags))  # flags not given take their defaults


def create_diffusion(**flags):
    """The diffusion that the DIFFUSION_FLAGS among `flags` describe (others are ignored)."""
    v = flag_values([f for f in MODEL_AND_DIFFUSION_FLAGS if f.name in DIFFUSION_FLAGS], flags)
    betas = get_named_beta_schedule(v["noise_schedule"], v["diffusion_steps"])
    if v["use_kl"]:
        loss_type = LossType.RESCALED_KL
    elif v["rescale_learned_sigmas"]:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if v["learn_sigma"]:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if v["sigma_small"] else ModelVarType.FIXED_LARGE
    respacing = v["timestep_respacing"] or [v["diffusion_steps"]]
    return SpacedDiffusion(
        space_timesteps(v["diffusion_steps"], respacing, betas),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if v["predict_xstart"] else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=v["rescale_timesteps"],
    )


def create_model_and_diffusion(**flags):
    """(model, diffusion) from flags named as on the command line; unknown flags are an error."""
    unknown = sorted(set(flags) - set(model_and_diffusion_defaults()))
    if unknown:
        raise TypeError(f"unknown model/diffusion flags: {', '.join(unknown)}")
    return create_model(**flags), create_diffusion(**flags)


def check_model_flags(flags):
    """Validate model and diffusion flags without building the network: UsageError naming the
    flag (the library's ValueError names it as `image_size=20 ...`; where it does not, the flags
    that differ from their defaults are named)."""
    defaults = model_and_diffusion_defaults()
    for build, names in ((unet_config_from_flags, defaults),
                         (lambda given: create_diffusion(**given), DIFFUSION_FLAGS)):
        try:
            build(flags)
        except (ValueError, TypeError) as e:
            text = str(e).strip()
            message = text.splitlines()[0] if text else type(e).__name__
            if not any(name in message for name in defaults):
                suspects = [f"--{k} {flags[k]!r}" for k in names
                            if k in flags and flags[k] != defaults[k]]
                message = f"{', '.join(suspects) or 'model flags'}: {message}"
            raise UsageError(message) from None


# --------------------------------------------------------------------------- presets
# The paper's configurations (the original README): model, diffusion and training flags.
# No --max_steps: neither the original README nor the paper states how many steps the published
# models were trained for (the README's `model200000.pt` only illustrates the file name). Pass
# --max_steps yourself, or stop the run.
PAPER_COMMON = dict(
    image_size=64, num_channels=128, scale_time_dim=0,
    diffusion_steps=1000, noise_schedule="linear",
    lr=2e-5, microbatch=2, max_num_mask_frames=4,
)

PRESETS = {
    "bair64": dict(PAPER_COMMON, num_res_blocks=2, batch_size=4, seq_len=20, uncondition_rate=0.25),
    "kinetics600": dict(PAPER_COMMON, num_res_blocks=3, batch_size=8, seq_len=16, uncondition_rate=0.25),
    "ucf101": dict(PAPER_COMMON, num_res_blocks=3, batch_size=8, seq_len=16, uncondition_rate=0.75),
    # `make demo`: one synthetic sprite; 600 steps from scratch in a few minutes on 2 CPU cores,
    # and the shipped checkpoint (16000 steps of this preset; measurements in docs/DEMO.md).
    # 32 channels is the narrowest width GroupNorm's 32 groups allow; channel_mult (1, 1) keeps
    # 32 channels at 8 x 8 (twice the steps per second of (1, 2) at the same loss per step);
    # only the middle block attends (8 x 8 x T tokens).
    # x0-prediction: after a few hundred steps its DDIM samples are clean sprites, while an
    # epsilon model's are still noisy and colour-shifted.
    "demo": dict(
        image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1",
        attention_resolutions="", num_heads=4, scale_time_dim=0, seq_len=8,
        diffusion_steps=1000, noise_schedule="linear", learn_sigma=False, predict_xstart=True,
        lr=5e-4, batch_size=4, microbatch=-1, max_num_mask_frames=4, uncondition_rate=0.25,
        ema_rate="0.99",
    ),
}
