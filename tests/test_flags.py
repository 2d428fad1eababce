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
