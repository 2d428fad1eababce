"""Command-line flags, each declared once, and how a command reports a user's mistake.

A `Flag` holds its name, its default as written on the command line, its help, its choices, how
its text becomes the program's value and what makes a value wrong. The parser, `--help`, the
checks and the config object are all built from these declarations, so they cannot disagree:

    FLAGS = (Flag("lr", 1e-4, "AdamW learning rate", check=positive),
             Flag("ema_rate", "0.9999", "comma list of EMA rates", convert=ema_rates))
    def main(argv=None):
        with user_errors():                          # UsageError -> one line, exit code 2
            args = parse("Train a model.", FLAGS, argv)   # args.lr, args.ema_rate: checked
            require(args.lr < 1, "lr", args.lr, "is too large")   # cross-flag rules

Flags keep the names, defaults and meanings of the original RaMViD README, so a command pasted
from the paper works unchanged. Booleans are written `True`/`False` (a bare `--flag` means True);
lists as comma lists (`0,1,`). A run records its resolved flags as JSON (`args.json`).
"""
import argparse
import json
import platform
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .checkpoint import atomic_path
from .dist import detect_launch, error_line
from .errors import UsageError

VERSION = "0.1.0"  # the package's version (pyproject.toml reads it from here)
ARGS_JSON = "args.json"
USAGE_EXIT_CODE = 2


# --------------------------------------------------------------------------- values
def str2bool(value):
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def comma_items(text):
    """'0, 1,' -> ['0', '1']: the items of a comma list; a trailing comma (as in the paper's
    commands) and spaces are tolerated."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def int_tuple(value):
    """'0,1,' -> (0, 1), a Flag's `convert` (a list or tuple is taken item by item); ValueError
    with the reason otherwise."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    try:
        return tuple(int(p) for p in comma_items(value))
    except ValueError:
        raise ValueError("expected a comma list of integers") from None


def int_list(value):
    """int_tuple as an argparse `type`: '0,1,' -> [0, 1]; its error names the value itself."""
    try:
        return list(int_tuple(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {value!r}") from None


# Checks: value -> the reason it is wrong, or None.
def positive(value):
    return None if value > 0 else "must be positive"


def at_least(low):
    return lambda value: None if value >= low else f"must be >= {low}"


def in_range(low, high):
    return lambda value: None if low <= value < high else f"must lie in [{low}, {high})"


def unit_interval(value):
    """0 <= value <= 1 (a probability, DDIM's eta)."""
    return None if 0 <= value <= 1 else "must lie in [0, 1]"


def one_of(choices):
    """A check for a flag whose choices are also written in its help (no argparse choices)."""
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def existing_dir(path):
    return None if Path(path).is_dir() else "is not an existing directory"


def existing_file(path):
    return None if Path(path).is_file() else "is not an existing file"


# --------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Flag:
    name: str
    default: Any  # as written on the command line; also the value when the flag is not given
    help: str
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # converted value -> reason or None
    convert: Optional[Callable[[Any], Any]] = None  # parsed value -> the program's value
    # (raises ValueError with the reason); e.g. "0.9999,0.99" -> ("0.9999", "0.99")
    required: bool = False  # no default: the command line must give it

    def parse_type(self):
        if isinstance(self.default, bool):
            return str2bool
        if self.default is None:
            return str
        return type(self.default)

    def value(self, raw):
        """The program's value of `raw` (as parsed, or as text), or UsageError naming the flag."""
        try:
            value = raw
            if isinstance(value, str) and self.parse_type() is not str:
                value = self.parse_type()(value)
            value = self.convert(value) if self.convert else value
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise UsageError(f"--{self.name} {raw!r}: {e}") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"--{self.name} {raw!r}: not one of: {', '.join(map(str, self.choices))}")
        try:
            reason = self.check(value) if self.check else None
        except TypeError:  # e.g. None from an old args.json
            reason = f"is a {type(value).__name__}, expected {self.parse_type().__name__}"
        require(not reason, self.name, raw, reason)
        return value

    def to_json(self, value):
        """The program's value as the command line writes it (args.json stays re-parseable)."""
        if self.convert is None or not isinstance(value, (list, tuple, type(None))):
            return value
        return ",".join(map(str, value or ()))


def add_flags(parser, flags):  # parser: an ArgumentParser or an argument group
    for flag in flags:
        default = argparse.SUPPRESS if flag.required else flag.default  # no "(default: None)"
        switch = {"nargs": "?", "const": True} if flag.parse_type() is str2bool else {}
        parser.add_argument(f"--{flag.name}", default=default, type=flag.parse_type(),
                            choices=flag.choices if flag.convert is None else None,
                            required=flag.required, help=flag.help, **switch)


def flag_values(flags, raw):
    """{name: the program's value} for every declaration, from `raw` ({name: parsed value},
    missing names take their default); a bad value raises UsageError naming the flag."""
    return {f.name: f.value(raw.get(f.name, f.default)) for f in flags}


def config_class(name, flags):
    """A frozen dataclass with one field per declaration (required ones first, without a
    default; the others default to the program's value of their default) and `to_json()`, the
    values as the command line writes them (so args.json re-parses to the same config)."""
    ordered = sorted(flags, key=lambda f: not f.required)
    fields = [(f.name, Any) if f.required else (f.name, Any, field(default=f.value(f.default)))
              for f in ordered]

    def to_json(self):
        return {f.name: f.to_json(getattr(self, f.name)) for f in flags}

    return make_dataclass(name, fields, frozen=True, namespace={"to_json": to_json})


def require(condition, flag, value, reason):
    """A rule that reads more than one flag: UsageError `--flag 'value': reason` unless it holds."""
    if not condition:
        raise UsageError(f"--{flag} {value!r}: {reason}")


def as_flag_error(error):
    """A library ValueError that names its argument as the flag is named (`eta=0.5 is ...`) as
    the command line's UsageError (`--eta 0.5 is ...`)."""
    name, sep, rest = str(error).partition("=")
    return UsageError(f"--{name} {rest}" if sep and name.isidentifier() else str(error))


# --------------------------------------------------------------------------- parsing
class FlagParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are UsageErrors (one line, exit code 2 under `user_errors`)."""

    def error(self, message):
        raise UsageError(message)


def make_parser(description):
    # allow_abbrev=False: `--lr_anneal` must not silently mean another flag
    return FlagParser(description=description, allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_flags(parser, presets):
    """--preset NAME (one of `presets`, a {name: {flag: value}} dict) and --dry_run."""
    def preset_name(name):
        if name and name not in presets:
            raise argparse.ArgumentTypeError(
                f"preset={name!r} is not one of: {', '.join(sorted(presets))}")
        return name

    parser.add_argument("--preset", default="", type=preset_name, metavar="NAME",
                        help=f"named flag set: {', '.join(sorted(presets))}; flags given "
                        "explicitly override it")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the resolved configuration as JSON and exit")


def parse_flags(parser, argv, presets):
    """Parse argv; with --preset NAME, the preset's values replace the defaults of the flags this
    parser knows (flags the user wrote explicitly still win)."""
    args = parser.parse_args(argv)
    if not getattr(args, "preset", ""):
        return args
    known = {action.dest for action in parser._actions}
    parser.set_defaults(**{k: v for k, v in presets[args.preset].items() if k in known})
    return parser.parse_args(argv)


def given_on_command_line(parser, argv):
    """The flags (dests) that argv sets itself, in any spelling argparse accepts (`--f v`,
    `--f=v`), rather than leaving them to a default, preset or args.json."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions})
    parser.parse_args(argv, namespace=namespace)  # argparse fills only absent defaults
    return {dest for dest, value in vars(namespace).items() if value is not unset}


def parse(description, flags, argv=None):
    """The command line `argv` of a program whose flags are all `flags`, parsed and checked:
    an object with one attribute per flag (UsageError for a bad value)."""
    parser = make_parser(description)
    add_flags(parser, flags)
    return types.SimpleNamespace(**flag_values(flags, vars(parser.parse_args(argv))))


@contextmanager
def user_errors():
    """Around a command's body: a UsageError ends the program with one line `prog: error:
    message` on stderr (from rank 0 only, under a launcher) and exit code 2; Ctrl-C with
    `prog: interrupted` and exit code 130. Other exceptions keep their traceback (they are bugs,
    not user mistakes)."""
    try:
        yield
    except UsageError as e:
        if detect_launch().rank == 0:  # every rank parses the same flags; one copy of the message
            sys.stderr.write(error_line(e) + "\n")
            sys.stderr.flush()
        sys.exit(USAGE_EXIT_CODE)
    except KeyboardInterrupt:
        sys.stderr.write(f"{Path(sys.argv[0]).name}: interrupted\n")
        sys.exit(130)


# --------------------------------------------------------------------------- records
def versions():
    import numpy
    import torch

    return {"ramvid": VERSION, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}


def config_json(config):
    return json.dumps(config, indent=2, sort_keys=False, default=str)


def as_json(value):
    """`value` as its JSON file reads back: tuples as lists, other objects as their strings."""
    return json.loads(config_json(value))


def exit_if_dry_run(args, config):
    if getattr(args, "dry_run", False):
        print(config_json(config))
        sys.exit(0)


def write_json(path, config):
    """Write `config` as JSON to `path` atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(config_json(config) + "\n")
    except OSError as e:
        raise OSError(f"could not write {path}: {e.strerror or e}") from e
    return path


def read_args_json(path):
    """The config a training run wrote; `path` is the args.json file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / ARGS_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
