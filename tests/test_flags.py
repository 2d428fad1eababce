"""The one user-error mechanism (`ramvid.errors.UsageError` + `ramvid.flags.user_errors`) and the
flag helpers."""
import subprocess
import sys
import textwrap

import pytest

from ramvid.errors import UsageError
from ramvid.flags import user_errors
from ramvid.train.command import main as train_main

from conftest import REPO
from sample_fixtures import runs_as

_argv0 = runs_as("video_train")


def _run_command(tmp_path, body, env=None):
    script = tmp_path / "tool.py"
    header = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
              "from ramvid.errors import UsageError\n"
              "from ramvid.flags import make_parser, user_errors\n\n"
              "def main(argv=None):\n    with user_errors():\n")
    body = textwrap.indent(textwrap.dedent(body), "        ")
    script.write_text(header + body + "\n\nsys.exit(main())\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_usage_error_is_one_line_exit_2(tmp_path):
    """Catches: a UsageError escaping as a traceback (e.g. `user_errors` not catching it)."""
    done = _run_command(tmp_path, """\
        raise UsageError("--data_dir videos/: not a directory\\nsecond line")
        """)
    assert done.returncode == 2
    assert done.stderr == "tool.py: error: --data_dir videos/: not a directory\n"
    assert done.stdout == ""


def test_flag_parser_error_same_format(tmp_path):
    """Catches: the flag parser's errors drifting from UsageError's format or exit code."""
    done = _run_command(tmp_path, """\
        parser = make_parser("t")
        parser.add_argument("--lr", type=float)
        parser.parse_args(["--lr", "abc"])
        """)
    assert done.returncode == 2
    assert done.stderr.startswith("tool.py: error: argument --lr: invalid float value: 'abc'")
    assert done.stderr.count("\n") == 1


def test_only_rank_zero_prints(tmp_path):
    """Catches: every rank of an mpirun job printing the same message."""
    import os
    done = _run_command(tmp_path, 'raise UsageError("bad")\n',
                        env={**os.environ, "OMPI_COMM_WORLD_RANK": "3"})
    assert (done.returncode, done.stderr) == (2, "")


def test_user_errors_keeps_other_errors():
    """Catches: `user_errors` swallowing real bugs (they keep their traceback)."""
    with pytest.raises(KeyError):
        with user_errors():
            raise KeyError("bug")
    with pytest.raises(SystemExit) as stop:
        with user_errors():
            raise UsageError("x")
    assert stop.value.code == 2


# ---------------------------------------------------------------- declared flags

# The paper code's defaults for the model and diffusion flags (its script_util defaults, as the
# spec's REFERENCE.md describes them), written here independently of ramvid/config.py.
PAPER_CODE_DEFAULTS = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, learn_sigma=False,
    sigma_small=False, class_cond=False, num_classes=0, diffusion_steps=1000,
    noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
    rescale_timesteps=True, rescale_learned_sigmas=True, use_checkpoint=False,
    use_scale_shift_norm=True, scale_time_dim=20, rgb=True, seq_len=20,
)


def test_model_flag_defaults_are_the_paper_codes():
    """Catches: a default changed while moving the flags into one declaration table."""
    from ramvid.config import model_and_diffusion_defaults
    assert model_and_diffusion_defaults() == PAPER_CODE_DEFAULTS


def test_every_training_flag_has_help():
    """Catches: a flag added without a help text (break: drop one help string)."""
    from ramvid.train.command import build_parser
    missing = [a.option_strings[0] for a in build_parser()._actions if not a.help]
    assert missing == []


@pytest.mark.parametrize("flags, message", [
    ({"image_size": 0}, "--image_size 0: must be positive"),
    ({"attention_resolutions": "16,x"}, "--attention_resolutions '16,x': expected a comma list"),
    ({"attention_resolutions": "16,0"}, "--attention_resolutions '16,0': every entry must be"),
    ({"dropout": 1.0}, "--dropout 1.0: must lie in [0.0, 1.0)"),
    ({"noise_schedule": "cosin"}, "--noise_schedule 'cosin': not one of: linear, cosine"),
    ({"image_size": "abc"}, "--image_size 'abc': invalid literal"),
])
def test_declared_checks_name_the_flag(flags, message):
    """Catches: a declaration's check or choices not applied when the model is built."""
    from ramvid.config import create_model_and_diffusion
    with pytest.raises(UsageError) as error:
        create_model_and_diffusion(**flags)
    assert str(error.value).startswith(message)


def test_train_flag_error_from_declaration(capsys):
    """Catches: declared checks skipped by the training parser (it must exit 2, one line)."""
    with pytest.raises(SystemExit) as stop:
        train_main(["--data_dir", str(REPO), "--seq_len", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seq_len 0: must be positive" in err and err.count("\n") == 1


PROGRAMS = sorted(str(p.relative_to(REPO)) for folder in ("scripts", "datasets", "benchmarks")
                  for p in (REPO / folder).glob("*.py")
                  if "__main__" in p.read_text())


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_flag_has_help(program, monkeypatch, capsys):
    """Catches: a flag of any script without a help text (break: drop one help string)."""
    import argparse
    import runpy
    import sys

    silent = []
    add_argument = argparse._ActionsContainer.add_argument

    def recording(self, *names, **kwargs):
        action = add_argument(self, *names, **kwargs)
        if not action.help and action.option_strings:
            silent.append(action.option_strings[0])
        return action

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", recording)
    monkeypatch.setattr(sys, "argv", [str(REPO / program), "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / program), run_name="__main__")
    assert stop.value.code == 0, capsys.readouterr().err
    assert "usage:" in capsys.readouterr().out
    assert silent == [], f"{program}: flags without help: {silent}"


# ---------------------------------------------------------------- training flags

# What the training parser said for each bad command line before its flags were declared once
# (recorded from the earlier implementation); VIDEOS stands for an existing folder.
RECORDED_TRAIN_ERRORS = [
    (["--lr", "0"], "--lr 0.0: must be positive"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--batch_size", "0"], "--batch_size 0: must be positive"),
    (["--microbatch", "5", "--batch_size", "4"],
     "--microbatch 5: must be -1 (= batch_size) or in 1..batch_size (4)"),
    (["--microbatch", "-2"], "--microbatch -2: must be -1 (= batch_size) or in 1..batch_size (1)"),
    (["--ema_rate", ""], "--ema_rate '': needs at least one rate"),
    (["--ema_rate", "0.9,0.9"], "--ema_rate '0.9,0.9': lists a rate twice"),
    (["--ema_rate", "x"], "--ema_rate 'x': 'x' is not a number"),
    (["--ema_rate", "1.0"], "--ema_rate '1.0': rate 1.0 must lie in [0, 1)"),
    (["--mask_range", "3"], "--mask_range '3': expected two integers 'a,b'"),
    (["--mask_range", "5,2"], "--mask_range '5,2': needs 0 <= a < b <= seq_len (20)"),
    (["--mask_range", "2,30"], "--mask_range '2,30': needs 0 <= a < b <= seq_len (20)"),
    (["--max_num_mask_frames", "9", "--mask_range", "0,4"],
     "--max_num_mask_frames 9: exceeds the 4 frames of mask_range [0, 4)"),
    (["--anneal_type", "cosine"], "argument --anneal_type: invalid choice: 'cosine' (choose "
     "from 'none', 'linear', 'step', 'time_based')"),
    (["--anneal_type", "step"], "--steps_drop 0: must be positive with --anneal_type step"),
    (["--steps_drop", "3"], "--steps_drop 3: is only read with --anneal_type step"),
    (["--uncondition_rate", "1.5"], "--uncondition_rate 1.5: must lie in [0, 1]"),
    (["--bf16", "True", "--use_fp16", "True"],
     "--bf16 True: cannot be combined with --use_fp16 True; choose one"),
    (["--num_classes", "3"], "--num_classes 3: is only used with --class_cond True"),
    (["--keep_every", "5"], "--keep_every 5: only applies with --keep_checkpoints N (without it "
     "every checkpoint is kept)"),
    (["--keep_every", "5", "--keep_checkpoints", "2"], "--keep_every 5: must be a multiple of "
     "--save_interval (10000), or no checkpoint is ever kept by it"),
    (["--sample_interval", "5"],
     "--sample_interval 5: needs --val_data_dir (the held-out clips to sample)"),
    (["--val_data_dir", "VIDEOS"],
     "--val_data_dir 'VIDEOS': is only read with --sample_interval N > 0"),
    (["--resume_checkpoint", "foo.pt"],
     "--resume_checkpoint 'foo.pt': expected 'auto' or a path to a modelNNNNNN.pt file"),
    (["--resume_checkpoint", "model000100.pt"],
     "--resume_checkpoint 'model000100.pt': file not found"),
    (["--seq_len", "0"], "--seq_len 0: must be positive"),
    (["--image_size", "20"], "image_size=20 has no default channel_mult (known: [32, 64, 128, "
     "256]); pass --channel_mult, e.g. 1,2,2"),
    (["--schedule_sampler", "x"], "argument --schedule_sampler: invalid choice: 'x' (choose from "
     "'uniform', 'loss-second-moment', 'harmonic')"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--dist_timeout", "0"], "--dist_timeout 0.0: must be positive"),
    (["--data_dir", "NOWHERE"], "--data_dir 'NOWHERE': is not an existing directory"),
    (["--data_dir", ""], "--data_dir '': must name a folder of videos"),
]


@pytest.mark.parametrize("flags, message", RECORDED_TRAIN_ERRORS,
                         ids=[" ".join(f) for f, _ in RECORDED_TRAIN_ERRORS])
def test_train_flag_errors_as_recorded(flags, message, tmp_path, capsys):
    """Catches: a check lost or reworded while the training flags moved into one declaration
    each (break: drop the `check=` of --lr)."""
    argv = ["--data_dir", str(tmp_path), *flags]
    argv = [a.replace("VIDEOS", str(tmp_path)).replace("NOWHERE", str(tmp_path / "x"))
            for a in argv]
    with pytest.raises(SystemExit) as stop:
        train_main(argv)
    expected = message.replace("VIDEOS", str(tmp_path)).replace("NOWHERE", str(tmp_path / "x"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"video_train.py: error: {expected}\n"


# The dry-run JSON of one command before the flags were declared once (recorded), without the
# data folder, which the test chooses.
RECORDED_DRY_RUN = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1, "attention_resolutions": "16,8", "channel_mult": "",
    "dropout": 0.0, "learn_sigma": False, "sigma_small": False, "class_cond": False,
    "num_classes": 0, "diffusion_steps": 1000, "noise_schedule": "linear",
    "timestep_respacing": "", "use_kl": False, "predict_xstart": False,
    "rescale_timesteps": True, "rescale_learned_sigmas": True, "use_checkpoint": False,
    "use_scale_shift_norm": True, "scale_time_dim": 0, "rgb": True, "seq_len": 20,
    "schedule_sampler": "uniform", "lr": 2e-05, "weight_decay": 0.0, "lr_anneal_steps": 0,
    "batch_size": 4, "microbatch": 2, "ema_rate": "0.999,0.99", "log_interval": 10,
    "save_interval": 10000, "resume_checkpoint": "", "use_fp16": False, "bf16": False,
    "fp16_scale_growth": 0.001, "clip": 1.0, "seed": 0, "anneal_type": "step",
    "steps_drop": 100, "drop": 0.5, "decay": 0.0, "max_num_mask_frames": 4, "mask_range": "2,6",
    "uncondition_rate": 0.25, "exclude_conditional": True, "max_steps": 0, "num_workers": 2,
    "max_bad_steps": 20, "dist_timeout": 600.0, "sample_interval": 0, "val_data_dir": "",
    "log_dir": "", "overwrite": False, "break_lock": False, "keep_checkpoints": 0,
    "keep_every": 0, "compile": False, "tf32": True,
}
DRY_RUN_FLAGS = ["--preset", "bair64", "--ema_rate", "0.999,0.99", "--mask_range", "2,6",
                 "--anneal_type", "step", "--steps_drop", "100", "--drop", "0.5"]


def test_train_dry_run_as_recorded(tmp_path, capsys):
    """Catches: a default, a key or a value format of args.json/--dry_run changed by the
    declarations (break: write ema_rate as a list)."""
    import json

    with pytest.raises(SystemExit) as stop:
        train_main(["--data_dir", str(tmp_path), *DRY_RUN_FLAGS, "--dry_run"])
    assert stop.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed.pop("data_dir") == str(tmp_path)
    assert printed == RECORDED_DRY_RUN and list(printed) == list(RECORDED_DRY_RUN)


def test_train_config_survives_args_json(tmp_path):
    """Catches: to_json and the flag parsing disagreeing, so that the args.json of a run does
    not re-parse to the same config (break: write mask_range as 'a-b')."""
    from ramvid.train.command import parse_train_args
    cfg, model_flags = parse_train_args(["--data_dir", str(tmp_path), *DRY_RUN_FLAGS])
    again = []
    for name, value in {**model_flags, **cfg.to_json()}.items():
        again += [f"--{name}", str(value)]
    cfg2, model_flags2 = parse_train_args(again)
    assert (cfg2, model_flags2) == (cfg, model_flags)
    assert cfg.ema_rate == ("0.999", "0.99") and cfg.mask_range == (2, 6)


def test_microbatch_minus_one_is_the_whole_batch():
    """Catches: the config and the command line disagreeing on --microbatch's default (it was
    1 in the config and -1 = whole batch on the command line)."""
    from ramvid.train.command import TrainConfig
    assert TrainConfig(data_dir="videos", batch_size=4).microbatch == 4
    assert TrainConfig(data_dir="videos", batch_size=4, microbatch=2).microbatch == 2


def test_wrong_type_from_a_file_names_the_flag():
    """Catches: a null in an old args.json ending in a TypeError traceback instead of a
    message naming the flag (break: let the check's TypeError through)."""
    from ramvid.config import create_model
    with pytest.raises(UsageError, match="^--num_classes None: is a NoneType, expected int$"):
        create_model(num_classes=None)


def test_a_boolean_flag_is_a_bare_switch_or_takes_a_value():
    """Expected from the convention: `--flag` alone means True, `--flag False` and
    `--flag=True` as written, absent means the default. Catches a bare switch that fails
    ("expected one argument") or that swallows the next flag."""
    from ramvid.flags import Flag, parse
    flags = (Flag("overwrite", False, "h"), Flag("fvd", True, "h"), Flag("steps", 3, "h"))
    assert parse("t", flags, ["--overwrite"]).overwrite is True
    got = parse("t", flags, ["--overwrite", "--steps", "5", "--fvd", "False"])
    assert (got.overwrite, got.steps, got.fvd) == (True, 5, False)
    assert parse("t", flags, ["--overwrite=False"]).overwrite is False
    assert parse("t", flags, []).overwrite is False
