"""Named flag sets: the paper's configurations and a CPU-sized demo.

`--preset NAME` expands to these flags; flags given explicitly on the command line win.
"""

# The paper's configurations (seed README): model, diffusion and training flags.
# No --max_steps: neither source this project has for the paper (the seed README and
# spec/REFERENCE.md) states how many steps the published models were trained for (the README's
# `model200000.pt` only illustrates the file name). Pass --max_steps yourself, or stop the run.
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


def preset_flags(name):
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])
