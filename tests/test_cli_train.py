"""video_train.py flags: every bad value is one line naming the flag, exit code 2, no traceback."""
import json
import subprocess

import pytest
import torch

from ramvid.config import PRESETS
from ramvid.flags import read_args_json
from ramvid.runlock import LOCK_NAME
from ramvid.train.command import main as train_main, parse_train_args
from ramvid.train.rundir import record_start
from sample_fixtures import runs_as
from train_fixtures import PYTHON, TINY, TRAIN_SCRIPT, make_videos, script_env

_argv0 = runs_as("video_train")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(make_videos(tmp_path_factory.mktemp("videos"), num_mp4=2, extras=False))


BAD_FLAGS = [
    (["--lr", "abc"], "--lr"),
    (["--batch_size", "-1"], "--batch_size"),
    (["--batch_size", "2.5"], "--batch_size"),
    (["--image_size", "-8"], "image_size"),
    (["--num_channels", "30"], "num_channels"),
    (["--learn_sigma", "maybe"], "--learn_sigma"),
    (["--seq_len", "2", "--scale_time_dim", "8", "--channel_mult", "1,2,2",
      "--max_num_mask_frames", "1"], "scale_time_dim"),
    (["--mask_range", "0,9"], "--mask_range"),
    (["--mask_range", "3,1"], "--mask_range"),
    (["--mask_range", "a,b"], "--mask_range"),
    (["--max_num_mask_frames", "3", "--mask_range", "1,3"], "--max_num_mask_frames"),
    (["--max_num_mask_frames", "5"], "--max_num_mask_frames"),
    (["--uncondition_rate", "1.5"], "--uncondition_rate"),
    (["--microbatch", "3"], "--microbatch"),
    (["--microbatch", "-2"], "--microbatch"),
    (["--ema_rate", "1.5"], "--ema_rate"),
    (["--ema_rate", "0.99,x"], "--ema_rate"),
    (["--anneal_type", "cosine"], "--anneal_type"),
    (["--anneal_type", "linear"], "--lr_anneal_steps"),
    (["--lr_anneal_steps", "100"], "--lr_anneal_steps"),
    (["--anneal_type", "step", "--steps_drop", "10"], "--drop"),
    (["--decay", "0.1"], "--decay"),
    (["--schedule_sampler", "lossy"], "--schedule_sampler"),
    (["--noise_schedule", "quadratic"], "noise_schedule"),
    (["--timestep_respacing", "ddim7x"], "timestep_respacing"),
    (["--num_classes", "3"], "--num_classes"),
    (["--log_interval", "0"], "--log_interval"),
    (["--clip", "-1"], "--clip"),
    (["--max_steps", "-5"], "--max_steps"),
    (["--resume_checkpoint", "/nonexistent/model000010.pt"], "--resume_checkpoint"),
    (["--resume_checkpoint", "weights.bin"], "--resume_checkpoint"),
    (["--use_fp16", "True", "--bf16", "True"], "--bf16"),
    (["--preset", "imagenet"], "--preset"),
    (["--no_such_flag", "1"], "--no_such_flag"),
    (["--cond_frames", "0,1"], "--cond_frames"),  # a sampling flag is not silently ignored
    (["--lr_anneal", "10"], "--lr_anneal"),  # no abbreviations of real flags
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_naming_it(flags, named, data_dir, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--data_dir", data_dir, *TINY, "--batch_size", "2", *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("video_train.py: error:"), err
    assert named in err, err


def test_data_dir_is_required_and_must_exist(tmp_path, capsys):
    for argv in ([*TINY], ["--data_dir", str(tmp_path / "missing"), *TINY]):
        with pytest.raises(SystemExit) as info:
            train_main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--data_dir" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_on_cpu_is_refused(data_dir, capsys):
    with pytest.raises(SystemExit):
        train_main(["--data_dir", data_dir, "--use_fp16", "True"])
    assert "--use_fp16" in capsys.readouterr().err


def test_preset_sets_defaults_and_explicit_flags_win(data_dir):
    preset = dict(PRESETS["demo"])
    cfg, model_flags = parse_train_args(["--data_dir", data_dir, "--preset", "demo",
                                            "--lr", "0.5", "--num_channels", "64"])
    assert model_flags["image_size"] == preset["image_size"] != 64  # from the preset
    assert model_flags["seq_len"] == preset["seq_len"]
    assert cfg.ema_rate == (preset["ema_rate"],) and cfg.batch_size == preset["batch_size"]
    assert cfg.lr == 0.5 != preset["lr"] and model_flags["num_channels"] == 64  # explicit wins


def test_dry_run_prints_the_resolved_config(data_dir, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--data_dir", data_dir, "--preset", "bair64", "--dry_run",
                          "--mask_range", "0,10"])
    assert info.value.code == 0
    config = json.loads(capsys.readouterr().out)
    assert config["lr"] == 2e-5 and config["batch_size"] == 4 and config["microbatch"] == 2
    assert config["mask_range"] == "0,10" and config["scale_time_dim"] == 0


def test_args_json_round_trip(tmp_path):
    record_start(tmp_path, 0, {"lr": 1e-4, "seq_len": 20})
    back = read_args_json(tmp_path)
    assert back["seq_len"] == 20 and back["resumed_from_step"] == 0 and "torch" in back["versions"]


def _script(args, logdir):
    return subprocess.run([PYTHON, TRAIN_SCRIPT, *args], env=script_env(logdir),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_videos", "too_short", "bad_logdir", "fp16"])
def test_script_errors_have_no_traceback(case, tmp_path, data_dir):
    logdir = tmp_path / "log"
    folder = tmp_path / "data"
    folder.mkdir()
    args = ["--data_dir", str(folder), *TINY]
    if case == "no_videos":
        (folder / "notes.txt").write_text("not a video")
        named = "--data_dir"
    elif case == "too_short":
        args = ["--data_dir", data_dir, *TINY, "--seq_len", "12", "--max_num_mask_frames", "2"]
        named = "--data_dir"
    elif case == "bad_logdir":
        args = ["--data_dir", data_dir, *TINY]
        (tmp_path / "file").write_text("")
        logdir = tmp_path / "file" / "log"  # a folder below a regular file cannot exist
        named = "OPENAI_LOGDIR"
    else:
        if torch.cuda.is_available():
            pytest.skip("fp16 is allowed on a GPU")
        args = ["--data_dir", data_dir, "--use_fp16", "True"]
        named = "--use_fp16"
    result = _script(args, logdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert not (logdir / LOCK_NAME).exists()  # a data problem is found holding the lock
