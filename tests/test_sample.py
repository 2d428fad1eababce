"""scripts/video_sample.py and the sampling API on a tiny checkpoint and real mp4 files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ramvid.unet
from ramvid.data import VideoClipDataset
from ramvid.sample import load_model, sample_videos, to_uint8
from ramvid.sample.batch import SamplerOptions, sample_batch, sample_generators
from ramvid.sample.files import npz_name
from ramvid.video_io import GENERATED_COLOR, GIVEN_COLOR
from sample_fixtures import (TINY, load_npz, load_script, make_checkpoint, make_videos,
                             mpirun_script, run_script, runs_as)

NUM, BATCH = 5, 2  # 5 samples in batches of 2 over 2 ranks: nothing divides evenly
COMMON = ["--timestep_respacing", "4", "--num_samples", NUM, "--batch_size", BATCH,
          "--progress", "False"]
SHAPE = (NUM, TINY["seq_len"], 16, 16, 3)


# Tiny models are fastest on one thread, above all when the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_thread")


_argv0 = runs_as("video_sample")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    return {"ckpt": make_checkpoint(root / "run"), "data": make_videos(root / "data"), "root": root}


@pytest.fixture(scope="module")
def conditional_run(setup, tmp_path_factory):
    """One single-process conditional run with ground truth, shared by several tests."""
    logdir = tmp_path_factory.mktemp("single")
    monkeypatch = pytest.MonkeyPatch()
    try:
        run_script("video_sample", ["--model_path", setup["ckpt"], "--data_dir", setup["data"],
                                    "--cond_frames", "0,1,", "--save_gt", "True", *COMMON],
                   logdir, monkeypatch, threads=1)
    finally:
        monkeypatch.undo()
    return logdir


def test_npz_files_named_by_shape_with_given_frames_equal_to_ground_truth(setup, conditional_run):
    samples = load_npz(conditional_run / "5x6x16x16x3.npz")
    gt = load_npz(conditional_run / "gt_5x6x16x16x3.npz")
    assert list(samples) == ["arr_0"] and samples["arr_0"].dtype == np.uint8
    assert samples["arr_0"].shape == gt["arr_0"].shape == SHAPE
    s, g = samples["arr_0"], gt["arr_0"]
    assert np.array_equal(s[:, :2], g[:, :2])
    assert (s[:, 2:] != g[:, 2:]).mean() > 0.5  # the other frames were generated
    # Sample i is conditioned on clip i mod 3 of the sorted files.
    clips = VideoClipDataset(setup["data"], 16, TINY["seq_len"])
    expected = to_uint8(torch.stack([clips[i % 3][0] for i in range(NUM)]))
    assert np.array_equal(g, expected)
    assert not np.array_equal(g[0], g[1]) and np.array_equal(g[0], g[3])


def test_grid_per_batch_outlines_given_frames(conditional_run):
    grids = sorted(conditional_run.glob("samples_*.gif"))
    assert [p.name for p in grids] == ["samples_000.gif", "samples_001.gif", "samples_002.gif"]
    assert len(list(conditional_run.glob("gt_*.gif"))) == 3
    with Image.open(grids[0]) as gif:
        assert gif.n_frames == TINY["seq_len"]
        colors = []
        for t in (0, 1, 2, 5):
            gif.seek(t)
            colors.append(np.asarray(gif.convert("RGB"))[3, 3])  # inside the first tile's border
    for color, want in zip(colors, [GIVEN_COLOR, GIVEN_COLOR, GENERATED_COLOR, GENERATED_COLOR]):
        assert np.abs(color.astype(int) - want).max() <= 8


def test_mpirun_two_ranks_equals_single_process(setup, conditional_run, tmp_path):
    done = mpirun_script("video_sample", ["--model_path", setup["ckpt"], "--data_dir", setup["data"],
                                          "--cond_frames", "0,1,", "--save_gt", "True", *COMMON],
                         tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("plan: 5 videos") == 1  # rank 0 speaks alone
    assert "on 2 rank(s)" in done.stdout
    for name in ("5x6x16x16x3.npz", "gt_5x6x16x16x3.npz"):
        assert np.array_equal(load_npz(tmp_path / name)["arr_0"],
                              load_npz(conditional_run / name)["arr_0"]), name
    assert len(list(tmp_path.glob("samples_*.gif"))) == 3


@pytest.mark.parametrize("script", ["video_sample", "video_eval"])
def test_each_data_file_is_probed_once(setup, tmp_path, monkeypatch, script):
    """The command's early --data_dir check and the run share one scan: every video's header is
    read once (on a 50k-clip data set a second probe of every file costs minutes). Seen red
    with the run scanning --data_dir again (each file probed twice)."""
    import ramvid.data.clips as clips

    probed = []
    real_probe = clips._meta_or_reason
    monkeypatch.setattr(clips, "_meta_or_reason", lambda path: probed.append(path) or
                        real_probe(path))
    common = ["--model_path", setup["ckpt"], "--data_dir", setup["data"], "--timestep_respacing",
              2]
    if script == "video_sample":
        run_script(script, [*common, "--cond_frames", "0,", "--num_samples", 2,
                            "--save_video", "none", "--progress", "False"], tmp_path / "out",
                   monkeypatch)
    else:
        load_script(script).main([*map(str, common), "--cond_frames", "0,", "--fvd", "False",
                                  "--work_dir", str(tmp_path / "out")])
    files = sorted(p for p in setup["data"].iterdir())
    assert sorted(probed) == files, probed


def test_unconditional_without_data_dir_and_class_labels(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "run", class_cond=True, num_classes=3)
    run_script("video_sample", ["--model_path", ckpt, "--cond_generation", "False",
                                "--save_video", "png", "--use_ddim", "True", *COMMON],
               tmp_path / "out", monkeypatch)
    out = load_npz(tmp_path / "out" / "5x6x16x16x3.npz")
    assert out["arr_0"].shape == SHAPE
    labels = out["arr_1"]
    assert labels.shape == (NUM,) and labels.min() >= 0 and labels.max() < 3
    assert len(list((tmp_path / "out").glob("samples_*.png"))) == 3


def test_samples_per_clip_orders_samples_clip_major(setup, conditional_run, tmp_path, monkeypatch):
    run_script("video_sample", ["--model_path", setup["ckpt"], "--data_dir", setup["data"],
                                "--samples_per_clip", 2, "--save_gt", "True", "--save_video", "none",
                                "--timestep_respacing", 2, "--num_samples", 5, "--progress", "False"],
               tmp_path, monkeypatch)
    gt = load_npz(tmp_path / "gt_5x6x16x16x3.npz")["arr_0"]
    looped = load_npz(conditional_run / "gt_5x6x16x16x3.npz")["arr_0"]  # clips 0, 1, 2, 0, 1
    for i, clip in enumerate([0, 0, 1, 1, 2]):
        assert np.array_equal(gt[i], looped[clip])


def _model(setup, **overrides):
    model, diffusion, flags = load_model(setup["ckpt"], device="cpu", timestep_respacing="4", **overrides)
    return model, diffusion


def test_load_model_reads_args_json_and_overrides_win(setup):
    model, diffusion, flags = load_model(setup["ckpt"], device="cpu", timestep_respacing="4")
    assert flags["seq_len"] == TINY["seq_len"] and flags["num_channels"] == 32
    assert diffusion.num_timesteps == 4 and not model.training
    with pytest.raises(ValueError, match="num_channels: flags give 64, the checkpoint has 32"):
        load_model(setup["ckpt"], device="cpu", num_channels=64)


def test_sample_i_reproducible_alone(setup):
    model, diffusion = _model(setup)
    clips = VideoClipDataset(setup["data"], 16, TINY["seq_len"])
    obs = torch.stack([clips[i][0] for i in range(3)])
    batch = sample_videos(model, diffusion, 3, obs=obs, cond_frames=[0], seed=7, batch_size=3)
    alone = sample_videos(model, diffusion, 1, obs=obs[2:], cond_frames=[0], seed=7, first_index=2)
    other_seed = sample_videos(model, diffusion, 1, obs=obs[2:], cond_frames=[0], seed=8, first_index=2)
    # Batched and single kernels may round differently in the last float bit; after 4 steps a
    # pixel can land one level apart, never more.
    assert np.abs(batch[2].astype(int) - alone[0]).max() <= 1
    assert (batch[2] == alone[0]).mean() > 0.99
    assert (batch[2][1:] != other_seed[0][1:]).mean() > 0.5


def test_ddim_eta0_reproducible_and_seeded(setup):
    model, diffusion = _model(setup)
    first = sample_videos(model, diffusion, 2, seed=3, sampler="ddim")
    again = sample_videos(model, diffusion, 2, seed=3, sampler="ddim")
    other = sample_videos(model, diffusion, 2, seed=4, sampler="ddim")
    assert np.array_equal(first, again)
    assert (first != other).mean() > 0.5


def test_guidance_scale_one_is_plain_conditioning(setup):
    """w -> 1 through the guided branch (two network calls per step) approaches the plain
    conditional sample; a large w changes it. DDIM eta=0 so no step draws noise."""
    model, diffusion = _model(setup)
    clips = VideoClipDataset(setup["data"], 16, TINY["seq_len"])
    obs = torch.stack([clips[i][0] for i in range(2)])
    mask = torch.zeros(2, TINY["seq_len"], dtype=torch.bool)
    mask[:, :2] = True

    def run(w):
        options = SamplerOptions(sampler="ddim", guidance_scale=w)
        return sample_batch(model, diffusion, sample_generators(0, [0, 1]), obs=obs, obs_mask=mask,
                       options=options)

    plain, near_one, strong = run(1.0), run(1.0 + 1e-6), run(3.0)
    assert torch.allclose(plain, near_one, atol=1e-3)
    assert (plain - strong).abs().max() > 1e-2
    assert torch.equal(strong[:, :, :2], obs[:, :, :2])  # given frames stay given under guidance


def _error(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bf16_runs_the_network_under_autocast_and_is_recorded(setup, conditional_run, tmp_path,
                                                             monkeypatch):
    """--bf16 True: every network call runs under bfloat16 autocast while the sampler's own x
    stays float32; the record and the folder name say so; the samples differ from the float32
    run on the same seeds, but only by rounding. Seen red with the autocast removed from
    `predict` (the calls then ran in float32 and the samples were equal)."""
    calls, forward = [], ramvid.unet.UNetModel.forward

    def spy(self, x, *args, **kwargs):
        calls.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), x.dtype))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(ramvid.unet.UNetModel, "forward", spy)
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path))
    load_script("video_sample").main([str(a) for a in [
        "--model_path", setup["ckpt"], "--data_dir", setup["data"], "--cond_frames", "0,1,",
        "--save_gt", "True", *COMMON, "--bf16", "True"]])
    [folder] = tmp_path.iterdir()
    assert "_ddpm4_bf16_" in folder.name
    assert json.loads((folder / "sample_args.json").read_text())["precision"] == "bf16"
    assert calls and all(c == (True, torch.bfloat16, torch.float32) for c in calls), calls[:3]
    bf16 = load_npz(folder / npz_name(SHAPE))["arr_0"].astype(float)
    fp32 = load_npz(conditional_run / npz_name(SHAPE))["arr_0"].astype(float)
    psnr = 10 * np.log10(255 ** 2 / np.mean((bf16 - fp32) ** 2))
    assert 25 < psnr < 100, psnr


@pytest.mark.parametrize("flags, names", [
    (["--num_channels", "64"], ["num_channels: flags give 64, the checkpoint has 32"]),
    (["--learn_sigma", "True"], ["learn_sigma: flags give True, the checkpoint has False"]),
    (["--rgb", "False"], ["rgb: flags give False, the checkpoint has True"]),
    (["--num_res_blocks", "2"], ["num_res_blocks: flags give 2"]),
    (["--channel_mult", "1,2,2"], ["channel_mult: flags give 1,2,2, the checkpoint has 1,2"]),
    (["--class_cond", "True", "--num_classes", "4"], ["class_cond: flags give True"]),
    (["--class_cond", "True"], ["class_cond: flags give True, the checkpoint has False"]),
    (["--attention_resolutions", "16"], ["attention_resolutions: flags give '16' with image_size 16, "
                                         "the checkpoint has attention at feature maps of 8 px"]),
    (["--use_scale_shift_norm", "False"], ["use_scale_shift_norm: flags give False"]),
])
def test_shape_mismatch_error_names_the_flag(setup, capsys, flags, names):
    argv = ["--model_path", setup["ckpt"], "--cond_generation", "False", *flags]
    err = _error("video_sample", argv, capsys)
    for name in names:
        assert name in err


def test_checkpoint_without_args_json_names_every_differing_flag(setup, capsys):
    bare = setup["root"] / "bare"
    bare.mkdir()
    (bare / "model000010.pt").write_bytes(setup["ckpt"].read_bytes())
    hidden = ["--image_size", 64, "--num_heads", 4, "--num_heads_upsample", -1,
              "--diffusion_steps", 1000, "--noise_schedule", "linear", "--predict_xstart", False,
              "--rescale_timesteps", True, "--sigma_small", False]  # all the weights cannot show
    err = _error("video_sample", ["--model_path", bare / "model000010.pt", "--cond_generation", "False",
                                  "--seq_len", "6", "--scale_time_dim", "0", *hidden], capsys)
    assert "num_channels: flags give 128, the checkpoint has 32" in err
    assert "channel_mult: flags give 1,2,3,4 (chosen by image_size 64)" in err


@pytest.mark.parametrize("flags, starts", [
    (None, "--model_path is required"),
    (["--model_path", "/no/such/model000001.pt"], "--model_path '/no/such/model000001.pt': no such file"),
    (["--cond_frames", "0,6,"], "--cond_frames '0,6': frames [6] outside [0, seq_len=6)"),
    (["--cond_frames", "0,x"], "--cond_frames '0,x': expected a comma list"),
    (["--eta", "0.5"], "--eta 0.5: only the ddim sampler reads eta"),
    (["--save_video", "avi"], "--save_video 'avi'"),
    (["--num_samples", "0"], "--num_samples 0: must be >= 1"),
])
def test_flag_errors_are_one_line(setup, capsys, flags, starts):
    argv = [] if flags is None else ["--model_path", setup["ckpt"], "--data_dir", setup["data"], *flags]
    assert _error("video_sample", argv, capsys).startswith("video_sample.py: error: " + starts)


def test_conditional_needs_data_dir_and_data_must_exist(setup, capsys, tmp_path):
    err = _error("video_sample", ["--model_path", setup["ckpt"]], capsys)
    assert err.startswith("video_sample.py: error: --data_dir '': is needed for conditional sampling")
    err = _error("video_sample", ["--model_path", setup["ckpt"], "--data_dir", tmp_path], capsys)
    assert err.startswith(f"video_sample.py: error: --data_dir {tmp_path}: found 0 files, "
                          "none of them a video")


def test_refuses_an_optimizer_file(setup, capsys, tmp_path):
    opt = tmp_path / "opt000010.pt"
    torch.save({"step": 10, "optimizer": {"state": {}}}, opt)
    err = _error("video_sample", ["--model_path", opt, "--preset", "demo", "--cond_generation", "False"], capsys)
    assert "is not a model state dict" in err


def test_npz_to_video_reads_any_samples_file(conditional_run, tmp_path):
    import av

    convert = load_script("npz_to_video")
    src = conditional_run / "5x6x16x16x3.npz"
    for fmt in ("gif", "mp4", "png"):
        written = convert.main([str(src), "--format", fmt, "--cond_frames", "0,1,", "--per_grid", "4",
                                "--out_dir", str(tmp_path)])
        assert [p.name for p in written] == [f"5x6x16x16x3_000.{fmt}", f"5x6x16x16x3_001.{fmt}"]
    with Image.open(tmp_path / "5x6x16x16x3_000.gif") as gif:
        assert gif.n_frames == 6
    with av.open(str(tmp_path / "5x6x16x16x3_001.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    with Image.open(tmp_path / "5x6x16x16x3_000.png") as png:
        # 4 rows x 6 columns of 64 x 64 frames (16 px upscaled x4) with 2 px borders, 2 px gaps
        assert png.size == (6 * 68 + 7 * 2, 4 * 68 + 5 * 2)


def test_uint8_round_trip_is_exact_for_every_level():
    from ramvid.sample.batch import from_uint8, to_uint8

    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16, 1).repeat(3, axis=-1)
    assert np.array_equal(to_uint8(from_uint8(levels)), levels)
