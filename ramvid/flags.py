"""Command-line flags, each declared once.

A `Flag` holds everything about one flag: its name, its default as written on the command line,
its help text, its allowed choices, how its text becomes the value the program uses, and what
makes a value wrong. The parser, the defaults, `--help`, the checks and the config object are all
built from these declarations, so they cannot disagree:

    FLAGS = (
        Flag("lr", 1e-4, "AdamW learning rate", check=positive),
        Flag("ema_rate", "0.9999", "comma list of EMA rates", convert=ema_rates),
    )
    add_flags(parser, FLAGS)                     # --lr, --ema_rate with type, help, choices
    values = flag_values(FLAGS, vars(args))      # converted and checked, or UsageError
    Config = config_class("Config", FLAGS)       # frozen dataclass: Config(**values).lr
    args = parse("What the program does.", FLAGS)   # all three at once, for a small tool

Flags keep the names, defaults and meanings of the seed README, so a command pasted from the
paper works unchanged. Booleans are written `True`/`False` (a bare `--flag` means True); lists
as comma lists (`0,1,`).
"""
import argparse
import types
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .cli import UsageError, make_parser


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


def int_list(value):
    """'0,1,' -> [0, 1]."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    try:
        return [int(p) for p in comma_items(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {value!r}")


# Checks: value -> the reason it is wrong, or None.
def positive(value):
    return None if value > 0 else "must be positive"


def at_least(low):
    return lambda value: None if value >= low else f"must be >= {low}"


def in_range(low, high):
    """low <= value < high."""
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
        if reason:
            raise UsageError(f"--{self.name} {raw!r}: {reason}")
        return value

    def to_json(self, value):
        """The program's value as the command line writes it (args.json stays re-parseable)."""
        if self.convert is None:
            return value
        if value is None:
            return ""
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return value


def defaults(flags):
    """{name: default} of the declarations, in order."""
    return {f.name: f.default for f in flags}


def add_flags(parser, flags, help_texts=None):
    """Add `--name` for every declaration (or, older style, every entry of a {name: default}
    dict with help from `help_texts`)."""
    if isinstance(flags, dict):
        help_texts = help_texts or {}
        flags = [Flag(name, default, help_texts.get(name)) for name, default in flags.items()]
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


def parse(description, flags, argv=None):
    """The command line `argv` of a program whose flags are all `flags`, parsed and checked:
    an object with one attribute per flag (UsageError for a bad value)."""
    parser = make_parser(description)
    add_flags(parser, flags)
    return types.SimpleNamespace(**flag_values(flags, vars(parser.parse_args(argv))))


def select(args, keys):
    """The entries of an argparse namespace named by `keys`, as a dict."""
    return {k: getattr(args, k) for k in keys}
