"""Sampling flags reach the sampler: scripts/video_sample.py against the notebook API.

For each of --resample_steps, --guidance_scale, --eta and --clip_denoised, the script's npz
must (1) equal `ramvid.sample.sample_videos` called with that option on the same model, seed
and given frames, and (2) differ from the script's run without the flag. (1) alone would pass
if both ignored the option; (2) alone if the script applied it wrongly.
"""
import numpy as np
import pytest
import torch

from ramvid.sample import load_model, sample_videos
from ramvid.video_io import write_video
from sample_fixtures import load_script, make_checkpoint

FLAGS = dict(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
             attention_resolutions="4", seq_len=4, scale_time_dim=0, diffusion_steps=50)
NUM = 3
COMMON = ["--cond_frames", "0,", "--num_samples", NUM, "--batch_size", NUM, "--seed", "7",
          "--timestep_respacing", "4", "--progress", "False", "--save_video", "none",
          "--save_gt", "True"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint whose every layer is perturbed away from its zero initialisation (so
    every input, given frames included, reaches the output), and three video files."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    ckpt = make_checkpoint(root / "run", perturbation=0.1, **FLAGS)
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(NUM):
        write_video(data / f"clip_{i}.mp4", rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return {"ckpt": ckpt, "data": data, "root": root}


def sample_with_script(setup, name, *flags):
    out = setup["root"] / name
    load_script("video_sample").main([str(a) for a in (
        "--model_path", setup["ckpt"], "--data_dir", setup["data"], *COMMON, *flags,
        "--out_dir", out)])
    (samples,) = [p for p in out.rglob("*.npz") if not p.name.startswith("gt_")]
    (gt,) = out.rglob("gt_*.npz")
    with np.load(samples) as s, np.load(gt) as g:
        return s["arr_0"], g["arr_0"]


CASES = {  # name: (script flags, the same setting for sample_videos, the run it must differ from)
    "ddpm": ([], {}, None),
    "resample": (["--resample_steps", "2"], {"resample_steps": 2}, "ddpm"),
    "guidance": (["--guidance_scale", "3"], {"guidance_scale": 3.0}, "ddpm"),
    "no_clip": (["--clip_denoised", "False"], {"clip_denoised": False}, "ddpm"),
    "ddim": (["--sampler", "ddim"], {"sampler": "ddim"}, None),
    "ddim_eta": (["--sampler", "ddim", "--eta", "1"], {"sampler": "ddim", "eta": 1.0}, "ddim"),
}


@pytest.fixture(scope="module")
def script_runs(setup):
    return {name: sample_with_script(setup, name, *flags) for name, (flags, _, _) in CASES.items()}


@pytest.mark.parametrize("case", [c for c, (_, _, base) in CASES.items() if base])
def test_sampling_flag_reaches_the_sampler(setup, script_runs, case):
    """The script's samples equal sample_videos with the flag's setting and differ from the
    run without the flag on at least a tenth of the generated pixels.

    Seen red with each of --resample_steps, --guidance_scale, --eta and --clip_denoised left
    at its default when the script builds its sampler options.
    """
    flags, options, base = CASES[case]
    samples, gt = script_runs[case]
    model, diffusion, _ = load_model(setup["ckpt"], device="cpu", timestep_respacing="4")
    expected = sample_videos(model, diffusion, NUM, obs=gt, cond_frames=[0], seed=7,
                             **options)
    # Float32 results that differ in the last bits (the two paths batch their work
    # differently) can round to neighbouring 8-bit levels; a dropped flag changes most pixels.
    levels = np.abs(samples.astype(int) - expected.astype(int))
    assert levels.max() <= 1 and (levels > 0).mean() <= 0.01, (levels.max(), (levels > 0).mean())
    assert np.array_equal(samples[:, 0], gt[:, 0])
    without = script_runs[base][0]
    assert (samples[:, 1:] != without[:, 1:]).mean() > 0.1
