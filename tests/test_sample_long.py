"""Long videos: window plans (pure index arithmetic), rollout with a tiny model, the script."""
import numpy as np
import pytest
import torch

from ramvid.data import VideoClipDataset
from ramvid.sample import load_model, to_uint8
from ramvid.sample.long import plan_autoregressive, plan_hierarchical, rollout
import ramvid.sample.long as long_module
from ramvid.sample.batch import SamplerOptions
from ramvid.sample.batch import sample_generators
from sample_fixtures import (TINY, load_npz, load_script, make_checkpoint, make_videos, run_script,
                             runs_as)

SEQ_LEN = TINY["seq_len"]


# Tiny models are fastest on one thread, above all when the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_thread")


_argv0 = runs_as("video_sample_long")


def check_plan(plan, total_length, seq_len, start):
    """Every frame after the start frames is written exactly once, only known frames are
    given, and every window is seq_len increasing frames."""
    known = set(range(start))
    written = []
    for window in plan:
        assert len(window.frames) == seq_len and list(window.frames) == sorted(set(window.frames))
        for frame, given in zip(window.frames, window.obs_mask):
            assert given == (frame in known), (window, sorted(known))
        assert set(window.new_frames) <= set(window.frames) - known and window.new_frames
        known |= set(window.new_frames)
        written += list(window.new_frames)
    assert sorted(written) == list(range(start, total_length))


@pytest.mark.parametrize("total, cond, step, start", [
    (20, 2, 4, 2), (20, 3, 3, 0), (7, 2, 4, 6), (6, 1, 5, 0), (4, 2, 2, 0), (31, 4, 1, 5),
])
def test_autoregressive_plan(total, cond, step, start):
    plan = plan_autoregressive(total, SEQ_LEN, cond, step, start)
    check_plan(plan, total, SEQ_LEN, start)
    for window in plan[1:] if start == 0 else plan:
        given = sum(window.obs_mask)
        assert given == min(cond, window.new_frames[0])  # the last known frames
        assert window.obs_mask[:given] == (True,) * given
        assert len(window.new_frames) <= step


@pytest.mark.parametrize("total, cond, start", [
    (40, 2, 2), (40, 3, 0), (25, 1, 1), (9, 2, 2), (6, 2, 0), (100, 4, 4), (13, 5, 5),
])
def test_hierarchical_plan(total, cond, start):
    plan = plan_hierarchical(total, SEQ_LEN, cond, start)
    check_plan(plan, total, SEQ_LEN, start)
    if total - start > SEQ_LEN - min(cond, start):
        keyframes = plan[0].new_frames
        assert keyframes[-1] == total - 1  # the first window spans the whole length
        assert len(plan[0].frames) - len(keyframes) == min(cond, start)


def test_plan_errors_name_the_flag():
    with pytest.raises(ValueError, match="prediction_step=5 must lie in"):
        plan_autoregressive(20, SEQ_LEN, 2, 5, 2)
    with pytest.raises(ValueError, match="max_cond_frames=6 must lie in"):
        plan_hierarchical(20, SEQ_LEN, 6, 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return {"ckpt": make_checkpoint(root / "run"), "data": make_videos(root / "data")}


@pytest.mark.parametrize("scheme", ["autoregressive", "hierarchical"])
def test_rollout_carries_known_frames_over_exactly(setup, scheme, monkeypatch):
    """Spies on every window's denoise call. Catches a rollout that hands a window stale or
    zero frames as given, or writes back other positions than the window's new frames."""
    model, diffusion, _ = load_model(setup["ckpt"], device="cpu", timestep_respacing="3")
    clips = VideoClipDataset(setup["data"], 16, SEQ_LEN)
    start = torch.stack([clips[i][0] for i in range(2)])[:, :, :2]  # (2, C, 2, H, W)
    total = 15
    plan = (plan_autoregressive(total, SEQ_LEN, 2, 3, 2) if scheme == "autoregressive"
            else plan_hierarchical(total, SEQ_LEN, 2, 2))
    calls, denoise = [], long_module.sample_batch

    def spy(*args, **kwargs):
        out = denoise(*args, **kwargs)
        calls.append((kwargs["obs"], out))
        return out

    monkeypatch.setattr(long_module, "sample_batch", spy)
    video = rollout(model, diffusion, plan, sample_generators(0, [0, 1]), total, start=start,
                    options=SamplerOptions())
    assert video.shape == (2, 3, total, 16, 16)
    assert torch.equal(video[:, :, :2], start)
    assert len(calls) == len(plan)
    for window, (obs, out) in zip(plan, calls):
        given = [i for i, g in enumerate(window.obs_mask) if g]
        # Given frames entered the window as the video held them, new frames left it unchanged.
        assert given and torch.equal(obs[:, :, given],
                                     video[:, :, [window.frames[i] for i in given]])
        new = [window.frames.index(f) for f in window.new_frames]
        assert torch.equal(out[:, :, new], video[:, :, list(window.new_frames)])


def test_long_script_writes_requested_length_with_start_frames_from_clips(setup, tmp_path, monkeypatch):
    total = 14
    run_script("video_sample_long", [
        "--model_path", setup["ckpt"], "--data_dir", setup["data"], "--start_frames", 2,
        "--max_cond_frames", 2, "--prediction_step", 4, "--total_length", total,
        "--num_samples", 3, "--batch_size", 2, "--timestep_respacing", 3, "--save_gt", "True",
        "--progress", "False", "--save_video", "gif",
    ], tmp_path, monkeypatch)
    samples = load_npz(tmp_path / f"3x{total}x16x16x3.npz")["arr_0"]
    gt = load_npz(tmp_path / f"gt_3x{total}x16x16x3.npz")["arr_0"]
    assert samples.dtype == np.uint8 and samples.shape == gt.shape == (3, total, 16, 16, 3)
    clips = VideoClipDataset(setup["data"], 16, total)
    assert np.array_equal(gt, to_uint8(torch.stack([clips[i][0] for i in range(3)])))
    assert np.array_equal(samples[:, :2], gt[:, :2])
    assert (samples[:, 2:] != gt[:, 2:]).mean() > 0.5
    assert len(list(tmp_path.glob("samples_*.gif"))) == 2


def test_long_script_hierarchical_unconditional_start(setup, tmp_path, monkeypatch):
    run_script("video_sample_long", [
        "--model_path", setup["ckpt"], "--cond_generation", "False", "--scheme", "hierarchical",
        "--max_cond_frames", 2, "--total_length", 13, "--num_samples", 2, "--batch_size", 2,
        "--timestep_respacing", 2, "--use_ddim", "True", "--progress", "False", "--save_video", "none",
    ], tmp_path, monkeypatch)
    samples = load_npz(tmp_path / "2x13x16x16x3.npz")["arr_0"]
    assert samples.shape == (2, 13, 16, 16, 3)
    assert not list(tmp_path.glob("samples_*"))


def test_long_class_conditional_labels_come_from_the_clips_without_start_frames(tmp_path,
                                                                               monkeypatch):
    """A class-conditional model with --data_dir and no start frames takes its labels from the
    clips (files a_, b_, c_: classes 0, 1, 2 in sorted order, sample i given clip i mod 3), as
    with start frames and as docs/SAMPLING.md says; no frame of the clips is given. Seen red
    with the long-video job reading no clips without start frames or --save_gt (labels drawn
    from the seed: [2, 2, 2, 2, 1, 1] here)."""
    ckpt = make_checkpoint(tmp_path / "run", class_cond=True, num_classes=3)
    data = make_videos(tmp_path / "data")
    out = run_script("video_sample_long", [
        "--model_path", ckpt, "--data_dir", data, "--start_frames", 0, "--total_length", 8,
        "--num_samples", 6, "--batch_size", 6, "--timestep_respacing", 1, "--progress", "False",
        "--save_video", "none",
    ], tmp_path / "out", monkeypatch)
    arrays = load_npz(out / "6x8x16x16x3.npz")
    assert arrays["arr_1"].tolist() == [0, 1, 2, 0, 1, 2]
    assert arrays["arr_0"].shape == (6, 8, 16, 16, 3)


@pytest.mark.parametrize("flags, starts", [
    (["--prediction_step", "5", "--max_cond_frames", "2"],
     "--prediction_step 5 must lie in [1, seq_len - max_cond_frames = 4]"),
    (["--max_cond_frames", "6"], "--max_cond_frames 6 must lie in [1, seq_len=6)"),
    (["--scheme", "zigzag"], "--scheme 'zigzag': must be one of autoregressive, hierarchical"),
    (["--total_length", "2", "--start_frames", "2", "--max_cond_frames", "2"],
     "--start_frames 2: must be fewer than --total_length 2"),
    (["--start_frames", "2", "--max_cond_frames", "2"], "--data_dir '': is needed for the start frames"),
])
def test_long_flag_errors(setup, capsys, flags, starts):
    with pytest.raises(SystemExit) as exit_info:
        load_script("video_sample_long").main(["--model_path", str(setup["ckpt"]), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("video_sample_long.py: error: " + starts), err
