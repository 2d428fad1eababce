"""The flag tables are complete: for each command, the table in the module docstring of its flag
tests lists exactly the flags its --help prints, each once, and names tests that exist.

A table is a section `Flags of scripts/<name>.py:` (or of several scripts, named in one such
line, for the flags they share) followed by a markdown table `| flag | test | effect shown |`;
each row is a line starting with `| --`; a script's rows are those of every section naming it.
The test cell names one or more test functions, comma-separated: `test_name` (in the table's
own module) or `test_file.py::test_name` (another module under tests/).
"""
import ast
import functools
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from sample_fixtures import load_script

TESTS = Path(__file__).resolve().parent
TABLES = {  # script: the test module whose docstring holds its table
    "video_sample": "test_flags_sample.py",
    "video_sample_long": "test_flags_sample.py",
    "video_eval": "test_flags_sample.py",
    "video_train": "test_flags_train.py",
}
# An option line of argparse's help: two spaces, then the option (after `-h, ` for a short one).
OPTION_LINE = re.compile(r"^  (?:-\w, )?(--[a-z][a-z0-9_]*)")


def help_flags(script):
    """The --flags that `scripts/<script>.py --help` prints (without --help)."""
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, redirect_stdout(printed):
        load_script(script).main(["--help"])
    assert exit_info.value.code == 0
    flags = [m.group(1) for m in map(OPTION_LINE.match, printed.getvalue().splitlines()) if m]
    return [f for f in flags if f != "--help"]


def table_rows(module, script):
    """[(flag, test cell)] of every table whose `Flags of ...:` line names scripts/<script>.py
    in the docstring of tests/<module>; pytest.skip when the module is not in this checkout."""
    path = TESTS / module
    if not path.is_file():
        pytest.skip(f"tests/{module} (the flag table of scripts/{script}.py) is not in this "
                    "checkout")
    lines = (ast.get_docstring(ast.parse(path.read_text())) or "").splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("Flags of ")
               and script in re.findall(r"scripts/(\w+)\.py", line)]
    assert headers, f"tests/{module}: no line 'Flags of scripts/{script}.py:' in its docstring"
    rows = []
    for header in headers:
        in_table = False
        for line in lines[header + 1:]:
            if line.startswith("|"):
                in_table = True
                if line.startswith("| --"):
                    cells = [cell.strip() for cell in line.split("|")]
                    rows.append((cells[1], cells[2]))
            elif in_table or line.strip():
                break
    return rows


@functools.lru_cache(maxsize=None)
def defined_tests(module):
    """Names of the functions defined at the top level of tests/<module>."""
    path = TESTS / module
    assert path.is_file(), f"tests/{module} does not exist"
    return {node.name for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("script", TABLES)
def test_table_lists_every_flag_of_the_help_once(script):
    """Seen red with a row removed, a row doubled and a flag the help does not print."""
    rows = table_rows(TABLES[script], script)
    listed = [flag for flag, _ in rows]
    doubled = sorted({f for f in listed if listed.count(f) > 1})
    assert not doubled, f"listed twice in the table of scripts/{script}.py: {doubled}"
    printed = set(help_flags(script))
    assert printed, f"scripts/{script}.py --help printed no flag"
    assert not printed - set(listed), f"not in the table: {sorted(printed - set(listed))}"
    assert not set(listed) - printed, f"not flags of --help: {sorted(set(listed) - printed)}"


@pytest.mark.parametrize("script", TABLES)
def test_table_names_tests_that_exist(script):
    """Seen red with a test name misspelt, and with `test_other.py::` naming a module that
    does not define it."""
    module = TABLES[script]
    missing = []
    for flag, cell in table_rows(module, script):
        names = [name.strip() for name in cell.split(",")]
        assert all(names), f"{flag}: empty test cell {cell!r}"
        for name in names:
            other, _, test = name.rpartition("::")
            if test not in defined_tests(other or module):
                missing.append(f"{flag}: {name}")
    assert not missing, f"tests named in the table of scripts/{script}.py that do not exist: " \
                        f"{missing}"
