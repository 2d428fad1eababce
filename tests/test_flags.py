"""The one user-error mechanism (`ramvid.cli.UsageError` + `entry_point`) and the flag helpers."""
import subprocess
import sys
import textwrap

import pytest

from ramvid.cli import UsageError, entry_point, make_parser

from conftest import REPO


def _run_command(tmp_path, body, env=None):
    script = tmp_path / "tool.py"
    header = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
              "from ramvid.cli import UsageError, entry_point, make_parser\n\n"
              "@entry_point\ndef main(argv=None):\n")
    body = textwrap.indent(textwrap.dedent(body), "    ")
    script.write_text(header + body + "\n\nsys.exit(main())\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_usage_error_is_one_line_exit_2(tmp_path):
    """Catches: a UsageError escaping as a traceback (e.g. `entry_point` not catching it)."""
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


def test_entry_point_passes_return_value_and_other_errors():
    """Catches: `entry_point` swallowing real bugs (they keep their traceback)."""
    assert entry_point(lambda argv=None: 7)() == 7

    @entry_point
    def broken(argv=None):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()
    with pytest.raises(SystemExit) as stop:
        entry_point(lambda: (_ for _ in ()).throw(UsageError("x")))()
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
    from ramvid.train.options import build_parser
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
    from ramvid.train.options import parse_train_args
    with pytest.raises(SystemExit) as stop:
        parse_train_args(["--data_dir", str(REPO), "--seq_len", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seq_len 0: must be positive" in err and err.count("\n") == 1


PROGRAMS = sorted(str(p.relative_to(REPO)) for folder in ("scripts", "datasets", "benchmarks")
                  for p in (REPO / folder).glob("*.py")
                  if "__main__" in p.read_text() and p.name != "make_i3d_fixture.py")


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
