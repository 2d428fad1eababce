"""The demo's pieces: baselines, scoring (best-of-N), table, loss plot, data caching, the commands
it runs and the shipped checkpoint. (The full `make demo` takes minutes and is not run here.)"""
import json
import re
import sys

import numpy as np
import pytest

from datasets.synthetic import make_clips
from ramvid.errors import UsageError
from ramvid.metrics.frame_metrics import copy_last_given, linear_interpolation, mean_frame
from ramvid.demo import command as demo
from ramvid.demo.command import (COPY_LAST, LINEAR, MEAN, DemoConfig, common_truth, format_table,
                                 launch_prefix, margins, plot_training_loss, prepare_data,
                                 read_progress, sample_command, score, score_task,
                                 short_run_command, task_samples, training_reference)
from ramvid.config import PRESETS


def ramp_videos(n=2, t=8, size=4):
    """uint8 (n, t, size, size, 3) whose pixel values grow linearly in time: 20 * t + 10 * clip."""
    values = 20 * np.arange(t)[None, :] + 10 * np.arange(n)[:, None]  # (n, t)
    return np.broadcast_to(values[:, :, None, None, None], (n, t, size, size, 3)).astype(np.uint8)


def mask_of(frames, t=8):
    mask = np.zeros(t, dtype=bool)
    mask[frames] = True
    return mask


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
    result = score(videos[:, None], gt, mask_of([0, 1]))
    assert result["psnr"] == pytest.approx(-10 * np.log10(0.04), abs=1e-4)
    assert len(result["psnr_per_clip"]) == 2
    assert score(gt[:, None], gt, mask_of([0, 1]))["ssim"] == pytest.approx(1.0)


def test_best_of_n_takes_each_clips_best_sample_and_one_sample_the_mean():
    """Catches best-of-N and the one-sample mean swapped or averaged over the wrong axis."""
    gt = np.zeros((2, 8, 16, 16, 3), np.uint8)
    samples = np.zeros((2, 2, 8, 16, 16, 3), np.uint8)
    samples[:, 0] = 51  # MSE 0.04 on the [0, 1] scale: 13.98 dB
    samples[0, 1] = 102  # MSE 0.16: 7.96 dB; clip 1's second sample is perfect (capped 100 dB)
    result = score(samples, gt, mask_of([0, 1]))
    good, bad = -10 * np.log10(0.04), -10 * np.log10(0.16)
    assert result["psnr_best"] == pytest.approx((good + 100.0) / 2, abs=1e-4)
    assert result["psnr"] == pytest.approx(((good + bad) / 2 + (good + 100.0) / 2) / 2, abs=1e-4)
    assert result["samples_per_clip"] == 2


def test_scoring_a_task_against_baselines_on_sprite_clips():
    gt = make_clips(4, image_size=16, num_frames=8, seed=3, split="test", max_sprites=1).videos
    reference = make_clips(6, image_size=16, num_frames=8, seed=3, max_sprites=1).videos
    scores, videos = score_task({"ours": gt[:, None].copy()}, gt, [0, 1], reference)
    assert set(scores) == {"ours", COPY_LAST, MEAN}  # nothing lies between frames 0 and 1
    assert scores["ours"]["psnr"] == pytest.approx(100.0)  # a perfect "model" hits the cap
    assert scores[COPY_LAST]["psnr"] < 40 and videos[COPY_LAST].shape == gt.shape
    infill, _ = score_task({"ours": gt[:, None].copy()}, gt, [0, 7], reference)
    assert LINEAR in infill
    gain = margins({"prediction": scores}, "ours")["prediction"]
    assert gain["psnr_gain_over_copy_last_db"] > 60 and gain["best_baseline"] in (COPY_LAST, MEAN)
    assert "psnr_gain_over_linear_db" in margins({"infilling": infill}, "ours")["infilling"]


def sample_run(task_dir, samples, truth_rows, name="predict_c0-1_6x8_s2_ddim25_seed0_ema"):
    """A video_sample.py run folder in task_dir (its OPENAI_LOGDIR) with 2 samples per clip and
    frames 0, 1 given: samples, gt_ file, record."""
    run = task_dir / name
    run.mkdir(parents=True)
    np.savez(run / "6x8x16x16x3.npz", samples)
    np.savez(run / "gt_6x8x16x16x3.npz", truth_rows)
    (run / "sample_args.json").write_text(json.dumps(dict(
        cond_frames=[0, 1], samples_per_clip=2, num_samples=len(samples),
        seq_len=samples.shape[1], save_gt=True)))
    return run


def test_samples_are_grouped_by_clip_and_checked_against_their_clips(tmp_path, capsys):
    """Catches a sample order that is not clip-major (samples scored against another clip's
    truth), samples whose given frames are not their clip's, a run of other settings than the
    task's, and a task folder with two runs; the run's own gt_ file, repeated by design, is read
    without a note. Seen red with the given-frame check removed from task_samples, with
    load_samples' one_row_per_clip call removed (clips interleaved), and with one_row_per_clip's
    note printed for every repeated ground truth."""
    gt = make_clips(3, image_size=16, num_frames=8, seed=4, split="test", max_sprites=1).videos
    truth_rows = np.repeat(gt, 2, axis=0)  # clip-major: clip i's samples are rows 2i, 2i + 1
    samples = truth_rows.copy()
    samples[:, 2:] = 0
    sample_run(tmp_path / "ok", samples, truth_rows)
    grouped, truth = task_samples(tmp_path / "ok", [0, 1], 2)
    assert capsys.readouterr().err == ""
    assert grouped.shape == (3, 2, 8, 16, 16, 3) and (truth == gt).all()
    assert (grouped[1, 1] == samples[3]).all()
    run = sample_run(tmp_path / "interleaved", samples, np.tile(gt, (2, 1, 1, 1, 1)))
    with pytest.raises(UsageError, match=re.escape(f"--gt {run / 'gt_6x8x16x16x3.npz'}: as many")):
        task_samples(tmp_path / "interleaved", [0, 1], 2)
    wrong = samples.copy()
    wrong[4, 1] = 0
    run = sample_run(tmp_path / "wrong", wrong, truth_rows)
    with pytest.raises(UsageError, match=re.escape(f"{run / '6x8x16x16x3.npz'}: samples do not")):
        task_samples(tmp_path / "wrong", [0, 1], 2)
    with pytest.raises(UsageError, match="--samples_per_clip 3 contradicts .* 2 samples per clip"):
        task_samples(tmp_path / "ok", [0, 1], 3)
    with pytest.raises(UsageError, match=r"given frames \[0, 1\]"):
        task_samples(tmp_path / "ok", [0, 7], 2)
    sample_run(tmp_path / "ok", samples, truth_rows, name="another_run")
    with pytest.raises(UsageError, match="expected one sample run .* found 2"):
        task_samples(tmp_path / "ok", [0, 1], 2)


def test_two_models_are_scored_only_on_the_same_clips():
    """Catches scoring one model's samples against the other model's clips (the demo once kept
    whichever truth it read last)."""
    gt = make_clips(3, image_size=16, num_frames=8, seed=4, split="test", max_sprites=1).videos
    assert common_truth({"shipped": gt, "this run": gt.copy()}) is gt
    other = gt.copy()
    other[2, 5] = 255 - other[2, 5]
    with pytest.raises(UsageError, match="this run and shipped were sampled on different clips"):
        common_truth({"shipped": gt, "this run": other})
    with pytest.raises(UsageError, match="different clips"):
        common_truth({"shipped": gt, "this run": gt[:2]})


def test_format_table_has_one_row_per_method_and_two_columns_per_task():
    rows = [("ours", {"prediction": {"psnr": 20.5, "ssim": 0.81},
                      "infilling": {"psnr": 22.25, "ssim": 0.9}}),
            ("linear", {"prediction": None, "infilling": {"psnr": 18.0, "ssim": 0.7}})]
    lines = format_table(rows, ["prediction", "infilling"]).splitlines()
    assert lines[0].split() == ["method", "prediction", "infilling"]
    assert lines[1].split() == ["PSNR", "dB", "SSIM", "PSNR", "dB", "SSIM"]
    assert lines[3].split() == ["ours", "20.50", "0.810", "22.25", "0.900"]
    assert lines[4].split() == ["linear", "-", "-", "18.00", "0.700"]


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
    fields = dict(run_dir=tmp_path / "run", data_dir=tmp_path / "data", max_steps=7, num_test=2,
                  samples_per_clip=3, num_unconditional=4, seed=0, procs=2, respacing="ddim25",
                  eta=1.0, sample_interval=5)
    fields.update(changes)
    return DemoConfig(**fields)


def test_data_is_drawn_once_and_reused_while_settings_match(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.DEMO_DATA, "num_train", 3)  # the demo's 2000 take seconds
    monkeypatch.setitem(demo.DEMO_DATA, "num_val", 2)
    cfg = demo_config(tmp_path)
    _, reused = prepare_data(cfg)
    assert not reused
    counts = {split: len(list((cfg.data_dir / split).glob("*.mp4")))
              for split in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 2, "test": 2}
    assert json.loads((cfg.data_dir / "demo_data.json").read_text())["speed"] == [0.125, 0.125]
    assert prepare_data(cfg) == (0.0, True)
    _, reused = prepare_data(demo_config(tmp_path, num_test=1))  # other settings: drawn anew
    assert not reused and len(list((cfg.data_dir / "test").glob("*.mp4"))) == 1
    assert training_reference(cfg.data_dir / "train").shape == (3, 8, 16, 16, 3)


def test_commands_use_the_real_scripts_and_flags(tmp_path):
    cfg = demo_config(tmp_path)
    mpi = launch_prefix(2, "/x/mpirun")
    assert mpi == ["/x/mpirun", "-n", "2", sys.executable]
    assert launch_prefix(2, None) == [sys.executable]

    train = short_run_command(cfg, mpi)
    assert train[4].endswith("scripts/video_train.py")
    flags = dict(zip(train[5::2], train[6::2]))
    assert flags["--preset"] == "demo" and flags["--max_steps"] == "7"
    assert flags["--save_interval"] == "7"  # the final checkpoint is the one sampled
    assert flags["--sample_interval"] == "5" and flags["--val_data_dir"].endswith("val")
    assert "--batch_size" not in flags  # the preset's, per rank
    single = short_run_command(cfg, [sys.executable])
    single = dict(zip(single[2::2], single[3::2]))
    # One process keeps the global batch of two ranks.
    assert single["--batch_size"] == str(2 * dict(PRESETS["demo"])["batch_size"])

    pred = sample_command(cfg, mpi, "ckpt.pt", "prediction")
    assert pred[4].endswith("scripts/video_sample.py")
    assert pred[pred.index("--cond_frames") + 1] == "0,1,"
    assert pred[pred.index("--save_gt") + 1] == "True"
    assert pred[pred.index("--timestep_respacing") + 1] == "ddim25"
    assert pred[pred.index("--use_ddim") + 1] == "True" and pred[pred.index("--eta") + 1] == "1.0"
    # N samples for each of the test clips, clip-major.
    assert pred[pred.index("--samples_per_clip") + 1] == "3"
    assert pred[pred.index("--num_samples") + 1] == "6"
    infill = sample_command(cfg, mpi, "ckpt.pt", "infilling")
    assert infill[infill.index("--cond_frames") + 1] == "0,7,"
    uncond = sample_command(cfg, mpi, "ckpt.pt", "unconditional")
    assert uncond[uncond.index("--cond_generation") + 1] == "False"
    assert uncond[uncond.index("--num_samples") + 1] == "4" and "--data_dir" not in uncond


def test_shipped_checkpoint_matches_its_recorded_sha256_and_loads_as_weights():
    """Catches a shipped checkpoint replaced or corrupted without updating SHIPPED_SHA256, and
    one that no longer fits the demo preset (args.json beside it)."""
    import torch

    from ramvid.config import create_model
    from ramvid.sample.loading import resolve_flags

    path = demo.verified_checkpoint()
    assert path.stat().st_size < 10 * 2**20  # the repository ships at most 10 MB
    state = torch.load(path, map_location="cpu", weights_only=True)
    flags = resolve_flags(path)
    for name in ("image_size", "num_channels", "channel_mult", "seq_len", "predict_xstart"):
        assert flags[name] == dict(PRESETS["demo"])[name], name
    create_model(**flags).load_state_dict(state)  # strict: every weight fits


def test_a_changed_or_missing_shipped_checkpoint_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "ema_0.99_000001.pt"
    fake.write_bytes(b"not the shipped weights")
    monkeypatch.setattr(demo, "SHIPPED_CHECKPOINT", fake)
    with pytest.raises(UsageError, match="not the recorded"):
        demo.verified_checkpoint()
    monkeypatch.setattr(demo, "SHIPPED_SHA256", demo.sha256_of(fake))
    assert demo.verified_checkpoint() == fake
    monkeypatch.setattr(demo, "SHIPPED_CHECKPOINT", tmp_path / "gone.pt")
    with pytest.raises(UsageError, match="missing"):
        demo.verified_checkpoint()


def test_recorded_retrain_command_is_a_valid_training_command(tmp_path):
    """The command that trained the shipped checkpoint passes the training flag checks and ends
    at the shipped step."""
    from ramvid.train.command import parse_train_args
    from ramvid.train.loop import last_step

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    command = demo.retrain_command(tmp_path)
    assert command[1].endswith("scripts/video_train.py")
    cfg, model_flags = parse_train_args(command[2:])
    assert last_step(cfg) == demo.SHIPPED_STEPS
    assert cfg.batch_size == 2 * dict(PRESETS["demo"])["batch_size"]  # the demo's 2 ranks
    assert model_flags["seq_len"] == dict(PRESETS["demo"])["seq_len"]
    name = f"ema_{cfg.ema_rate[0]}_{demo.SHIPPED_STEPS:06d}.pt"
    assert demo.SHIPPED_CHECKPOINT.name == name


def test_demo_preset_passes_the_training_flag_checks(tmp_path):
    from ramvid.train.command import parse_train_args

    cfg, model_flags = parse_train_args(["--data_dir", str(tmp_path), "--preset", "demo"])
    preset = dict(PRESETS["demo"])
    assert cfg.batch_size == preset["batch_size"] and cfg.lr == preset["lr"]
    assert model_flags["image_size"] == preset["image_size"]
    assert model_flags["num_channels"] % 32 == 0  # GroupNorm's 32 groups


def test_commands_are_shown_relative_to_the_repository():
    command = [str(demo.REPO / ".venv" / "bin" / "mpirun"), "-n", "2", "/elsewhere/x.py", "a b"]
    assert demo.shown(command) == ".venv/bin/mpirun -n 2 /elsewhere/x.py 'a b'"


def test_demo_flags_are_checked_in_one_line(capsys):
    for argv, flag in ((["--max_steps", "0"], "--max_steps"), (["--eta", "2"], "--eta"),
                       (["--samples_per_clip", "0"], "--samples_per_clip"),
                       (["--timestep_respacing", "100"], "--timestep_respacing"),
                       (["--timestep_respacing", "ddimx"], "--timestep_respacing")):
        with pytest.raises(SystemExit) as info:
            demo.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and err.count("\n") == 1, err
    assert demo.parse_args(["--retrain"]).retrain is True  # a bare switch, as documented
    assert demo.parse_args([]).retrain is False
