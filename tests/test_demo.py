"""The demo's pieces: baselines, scoring table, loss plot, data caching and the commands it runs.
(The full `make demo` trains for minutes and is not run here.)"""
import json
import sys

import numpy as np
import pytest

from datasets.synthetic import make_clips
from ramvid.demo.baselines import copy_last_given, linear_interpolation, mean_frame, nearest_given
from ramvid.demo.pipeline import (DemoConfig, launch_prefix, prepare_data, sample_command,
                                  train_command)
from ramvid.demo.report import format_table, plot_training_loss, read_progress, score
from ramvid.demo.results import (COPY_LAST, LINEAR, MEAN, OURS, margins, score_conditional_task,
                                 training_reference)
from ramvid.presets import preset_flags


def ramp_videos(n=2, t=8, size=4):
    """uint8 (n, t, size, size, 3) whose pixel values grow linearly in time: 20 * t + 10 * clip."""
    values = 20 * np.arange(t)[None, :] + 10 * np.arange(n)[:, None]  # (n, t)
    return np.broadcast_to(values[:, :, None, None, None], (n, t, size, size, 3)).astype(np.uint8)


def mask_of(frames, t=8):
    mask = np.zeros(t, dtype=bool)
    mask[frames] = True
    return mask


def test_nearest_given_frames():
    previous, following = nearest_given(mask_of([2, 5]))
    assert previous.tolist() == [-1, -1, 2, 2, 2, 5, 5, 5]
    assert following.tolist() == [2, 2, 2, 5, 5, 5, -1, -1]


def test_copy_last_given_repeats_the_latest_given_frame():
    videos = ramp_videos()
    out = copy_last_given(videos, mask_of([0, 1]))
    assert (out[:, :2] == videos[:, :2]).all()
    assert (out[:, 2:] == videos[:, 1:2]).all()
    # Frames before the first given frame take the first given frame.
    out = copy_last_given(videos, mask_of([3]))
    assert (out == videos[:, 3:4]).all()


def test_linear_interpolation_is_exact_on_linear_motion_and_holds_outside():
    videos = ramp_videos()
    assert (linear_interpolation(videos, mask_of([0, 7])) == videos).all()
    held = linear_interpolation(videos, mask_of([2, 4]))
    assert (held[:, 3] == videos[:, 3]).all()  # midway between given frames 2 and 4
    assert (held[:, 5:] == videos[:, 4:5]).all() and (held[:, :2] == videos[:, 2:3]).all()
    # With only leading given frames it is the copy-last baseline.
    pred = mask_of([0, 1])
    assert (linear_interpolation(videos, pred) == copy_last_given(videos, pred)).all()


def test_mean_frame_fills_missing_frames_with_the_reference_mean():
    videos = ramp_videos()
    reference = np.zeros((3, 8, 4, 4, 3), np.uint8)
    reference[0] = 90  # mean over 3 clips x 8 frames = 30
    out = mean_frame(videos, mask_of([0, 7]), reference)
    assert (out[:, [0, 7]] == videos[:, [0, 7]]).all()
    assert (out[:, 1:7] == 30).all()
    with pytest.raises(ValueError, match="share H, W, C"):
        mean_frame(videos, mask_of([0]), np.zeros((1, 8, 5, 5, 3), np.uint8))


def test_baselines_reject_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        copy_last_given(ramp_videos().astype(np.float32), mask_of([0]))
    with pytest.raises(ValueError, match="at least one given frame"):
        copy_last_given(ramp_videos(), np.zeros(8, bool))


def test_score_uses_generated_frames_only():
    gt = np.zeros((2, 8, 16, 16, 3), np.uint8)
    videos = np.full_like(gt, 51)  # 0.2 off on the [0, 1] scale everywhere: MSE 0.04
    videos[:, :2] = 255  # given frames are wildly wrong but must not count
    result = score(videos, gt, mask_of([0, 1]))
    assert result["psnr"] == pytest.approx(-10 * np.log10(0.04), abs=1e-4)
    assert len(result["psnr_per_clip"]) == 2
    assert score(gt, gt, mask_of([0, 1]))["ssim"] == pytest.approx(1.0)


def test_scoring_a_task_against_baselines_on_sprite_clips():
    gt = make_clips(4, image_size=16, num_frames=8, seed=3, split="test", max_sprites=1).videos
    reference = make_clips(6, image_size=16, num_frames=8, seed=3, max_sprites=1).videos
    scores, _ = score_conditional_task(gt.copy(), gt, [0, 1], reference)
    assert set(scores) == {OURS, COPY_LAST, MEAN}  # nothing lies between frames 0 and 1
    assert scores[OURS]["psnr"] == pytest.approx(100.0)  # a perfect "model" hits the cap
    assert scores[COPY_LAST]["psnr"] < 40
    infill, _ = score_conditional_task(gt.copy(), gt, [0, 7], reference)
    assert LINEAR in infill
    gain = margins({"prediction": scores})["prediction"]
    assert gain["psnr_gain_over_copy_last_db"] > 60 and gain["best_baseline"] in (COPY_LAST, MEAN)
    with pytest.raises(ValueError, match="differ in shape"):
        score_conditional_task(gt[:2], gt, [0, 1], reference)


def test_format_table_lists_every_task_and_method():
    scores = {"prediction": {"a": {"psnr": 20.5, "ssim": 0.81}},
              "infilling": {"a": {"psnr": 22.25, "ssim": 0.9}, "b": {"psnr": 18.0, "ssim": 0.7}}}
    lines = format_table(scores, ["a", "b"]).splitlines()
    assert lines[0].split() == ["task", "a", "b"]
    assert "20.50 / 0.810" in lines[3] and lines[3].rstrip().endswith("-")
    assert "22.25 / 0.900" in lines[4] and "18.00 / 0.700" in lines[4]


def test_loss_plot_from_progress_csv(tmp_path):
    csv = tmp_path / "progress.csv"
    csv.write_text("step,loss,mse,vb,loss_q0,loss_q1,loss_q2,loss_q3,samples_per_s\n"
                   "10,0.9,0.9,,0.5,0.8,1.0,1.2,12\n20,0.4,0.4,,0.2,0.3,0.5,0.6,13\n")
    columns = read_progress(csv)
    assert columns["loss"].tolist() == [0.9, 0.4] and np.isnan(columns["vb"]).all()
    png = plot_training_loss(csv, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(ValueError, match="no logged steps"):
        read_progress(tmp_path / "empty.csv")


def demo_config(tmp_path, **changes):
    fields = dict(run_dir=tmp_path / "run", data_dir=tmp_path / "data", max_steps=7, seq_len=8,
                  image_size=16, num_train=3, num_test=2, num_unconditional=4,
                  max_sprites=1, seed=0, procs=2, respacing="ddim25", eta=1.0)
    fields.update(changes)
    return DemoConfig(**fields)


def test_data_is_drawn_once_and_reused_while_settings_match(tmp_path):
    cfg = demo_config(tmp_path)
    _, reused = prepare_data(cfg)
    assert not reused
    assert len(list((cfg.data_dir / "train").glob("*.mp4"))) == 3
    assert len(list((cfg.data_dir / "test").glob("*.mp4"))) == 2
    assert json.loads((cfg.data_dir / "demo_data.json").read_text())["image_size"] == 16
    assert prepare_data(cfg) == (0.0, True)
    _, reused = prepare_data(demo_config(tmp_path, num_test=1))  # other settings: drawn anew
    assert not reused and len(list((cfg.data_dir / "test").glob("*.mp4"))) == 1
    assert training_reference(cfg.data_dir / "train", 16, 8).shape == (3, 8, 16, 16, 3)


def test_commands_use_the_real_scripts_and_flags(tmp_path):
    cfg = demo_config(tmp_path)
    mpi = launch_prefix(2, "/x/mpirun")
    assert mpi == ["/x/mpirun", "-n", "2", sys.executable]
    assert launch_prefix(2, None) == [sys.executable]

    train = train_command(cfg, mpi)
    assert train[4].endswith("scripts/video_train.py")
    flags = dict(zip(train[5::2], train[6::2]))
    assert flags["--preset"] == "demo" and flags["--max_steps"] == "7"
    assert flags["--save_interval"] == "7"  # the final checkpoint is the one sampled
    assert "--batch_size" not in flags  # the preset's, per rank
    single = train_command(cfg, [sys.executable])
    single = dict(zip(single[2::2], single[3::2]))
    # One process keeps the global batch of two ranks.
    assert single["--batch_size"] == str(2 * preset_flags("demo")["batch_size"])

    pred = sample_command(cfg, mpi, "ckpt.pt", "prediction")
    assert pred[4].endswith("scripts/video_sample.py")
    assert pred[pred.index("--cond_frames") + 1] == "0,1,"
    assert pred[pred.index("--save_gt") + 1] == "True"
    assert pred[pred.index("--timestep_respacing") + 1] == "ddim25"
    assert pred[pred.index("--use_ddim") + 1] == "True" and pred[pred.index("--eta") + 1] == "1.0"
    infill = sample_command(cfg, mpi, "ckpt.pt", "infilling")
    assert infill[infill.index("--cond_frames") + 1] == "0,7,"
    uncond = sample_command(cfg, mpi, "ckpt.pt", "unconditional")
    assert uncond[uncond.index("--cond_generation") + 1] == "False"
    assert uncond[uncond.index("--num_samples") + 1] == "4" and "--data_dir" not in uncond


def test_demo_preset_passes_the_training_flag_checks(tmp_path):
    from ramvid.train.options import parse_train_args

    cfg, model_flags, _ = parse_train_args(["--data_dir", str(tmp_path), "--preset", "demo"])
    preset = preset_flags("demo")
    assert cfg.batch_size == preset["batch_size"] and cfg.lr == preset["lr"]
    assert model_flags["image_size"] == preset["image_size"]
    assert model_flags["num_channels"] % 32 == 0  # GroupNorm's 32 groups


def test_commands_are_shown_relative_to_the_repository():
    from ramvid.demo.pipeline import REPO, shown

    assert shown([str(REPO / ".venv" / "bin" / "mpirun"), "-n", "2", "/elsewhere/x.py", "a b"]) \
        == ".venv/bin/mpirun -n 2 /elsewhere/x.py 'a b'"


def test_demo_flags_are_checked_in_one_line(capsys):
    sys.path.insert(0, str(__import__("ramvid.demo.pipeline", fromlist=["REPO"]).REPO / "scripts"))
    import demo

    for argv, flag in ((["--max_steps", "0"], "--max_steps"), (["--eta", "2"], "--eta"),
                       (["--timestep_respacing", "100"], "--timestep_respacing"),
                       (["--timestep_respacing", "ddimx"], "--timestep_respacing")):
        with pytest.raises(SystemExit) as info:
            demo.parse_args(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and err.count("\n") == 1, err
