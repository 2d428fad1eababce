"""Command-line flag helpers shared by the scripts.

Flags keep the names, defaults and meanings of the seed README, so a command pasted from the
paper works unchanged. Booleans are written `True`/`False`; lists as comma lists (`0,1,`).
"""
import argparse


def str2bool(value):
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _comma_list(value, cast, kind):
    if isinstance(value, (list, tuple)):
        return [cast(v) for v in value]
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        return [cast(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of {kind}, got {value!r}")


def int_list(value):
    """'0,1,' -> [0, 1]; a trailing comma (as in the paper's commands) is tolerated."""
    return _comma_list(value, int, "integers")


def float_list(value):
    return _comma_list(value, float, "numbers")


def add_flags(parser, defaults, help_texts=None):
    """Add `--name` for every entry of `defaults`, typed by the default's type."""
    help_texts = help_texts or {}
    for name, default in defaults.items():
        if isinstance(default, bool):
            kind = str2bool
        elif default is None:
            kind = str
        else:
            kind = type(default)
        parser.add_argument(f"--{name}", default=default, type=kind, help=help_texts.get(name))


def select(args, keys):
    """The entries of an argparse namespace named by `keys`, as a dict."""
    return {k: getattr(args, k) for k in keys}
