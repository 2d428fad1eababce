"""Checkpoints saved by the original RaMViD code: a plain tensor dict with the reference's
parameter names and no args.json beside it. The model flags come from the command line or a
--preset, as docs/EVALUATION.md shows for the published BAIR, Kinetics-600 and UCF-101 files."""
import pytest
import torch

import ramvid
from ramvid.config import PRESETS, model_and_diffusion_defaults
from ramvid.sample import load_model
from sample_fixtures import load_npz, run_script, runs_as

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = ["--cond_generation", "False", "--num_samples", 2, "--timestep_respacing", 2,
          "--save_video", "none", "--progress", "False"]


_argv0 = runs_as("video_sample")


def _save_as_the_reference_does(state_dict, folder):
    """torch.save of the bare state dict (the reference saves model.state_dict() this way)."""
    folder.mkdir(parents=True)
    path = folder / "ema_0.9999_000000.pt"
    torch.save({k: v.float() for k, v in state_dict.items()}, path)
    return path


def test_reference_recorded_state_dict_samples_with_its_flags(reference, tmp_path, monkeypatch):
    """The weights and names recorded from the reference code (fixture UNet A) load by name and
    sample. Catches a renamed parameter (load_state_dict would name missing keys)."""
    unet = reference["unet"]["A"]
    path = _save_as_the_reference_does(unet["state_dict"], tmp_path / "official")
    config = unet["config"]
    flags = ["--image_size", config["image_size"], "--num_channels", config["num_channels"],
             "--num_res_blocks", config["num_res_blocks"], "--learn_sigma", config["learn_sigma"],
             "--attention_resolutions", config["attention_resolutions"],
             "--num_heads", config["num_heads"], "--seq_len", config["seq_len"],
             "--use_scale_shift_norm", config["use_scale_shift_norm"],
             "--scale_time_dim", config["scale_time_dim"],
             # The reference code's defaults, which its weights cannot reveal.
             "--num_heads_upsample", -1, "--diffusion_steps", 1000, "--noise_schedule", "linear",
             "--predict_xstart", False, "--rescale_timesteps", True, "--sigma_small", False]
    out = run_script("video_sample", ["--model_path", path, *flags, *COMMON], tmp_path / "out",
                     monkeypatch)
    samples = load_npz(out / "2x4x32x32x3.npz")["arr_0"]
    assert samples.shape == (2, 4, 32, 32, 3) and samples.std() > 0


def test_preset_alone_rebuilds_a_checkpoint_without_args_json(tmp_path, monkeypatch, capsys):
    """--preset supplies every model flag of a bare checkpoint (as --preset bair64 does for the
    published BAIR file), and the command says where each flag came from."""
    defaults = model_and_diffusion_defaults()
    flags = {**defaults, **{k: v for k, v in dict(PRESETS["demo"]).items() if k in defaults}}
    path = _save_as_the_reference_does(ramvid.create_model(**flags).state_dict(),
                                       tmp_path / "bare")
    out = run_script("video_sample", ["--model_path", path, "--preset", "demo", *COMMON],
                     tmp_path / "out", monkeypatch)
    assert load_npz(out / f"2x{flags['seq_len']}x16x16x3.npz")["arr_0"].dtype == "uint8"
    printed = capsys.readouterr().out
    assert "model flags: --preset demo: " in printed and "the command line: timestep_respacing" \
        in printed


def test_bare_checkpoint_without_preset_names_the_flags_its_weights_hide(tmp_path, monkeypatch,
                                                                        capsys):
    """A checkpoint without args.json whose weights fit the defaults' shapes (here: trained
    with --scale_time_dim 0, which changes only a stride) must not sample with the defaults
    (scale_time_dim 20): the command stops with one line listing the flags the weights cannot
    reveal, and samples with the preset; the notebook API refuses likewise. Seen red with the
    rule removed (the defaults then sampled without a word)."""
    tiny = dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                attention_resolutions="8", seq_len=8, diffusion_steps=100)
    path = _save_as_the_reference_does(
        ramvid.create_model(**tiny, scale_time_dim=0).state_dict(), tmp_path / "bare")
    shape_flags = [x for k, v in tiny.items() if k not in ("image_size", "seq_len",
                                                           "diffusion_steps")
                   for x in (f"--{k}", v)]
    with pytest.raises(SystemExit) as stop:
        run_script("video_sample", ["--model_path", path, *shape_flags, *COMMON],
                   tmp_path / "refused", monkeypatch)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    for flag in ("--image_size", "--seq_len", "--scale_time_dim", "--diffusion_steps",
                 "--noise_schedule", "--predict_xstart", "--rescale_timesteps"):
        assert flag in err, (flag, err)
    assert "--preset" in err and not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="--scale_time_dim"):
        load_model(path, **tiny)
    model, _, flags = load_model(path, **tiny, scale_time_dim=0, num_heads=4,
                                 num_heads_upsample=-1, noise_schedule="linear",
                                 predict_xstart=False, rescale_timesteps=True, sigma_small=False,
                                 device="cpu")
    assert flags["scale_time_dim"] == 0 and model.config.scale_time_dim == 0
