"""Command-line plumbing shared by the scripts: one-line user errors, presets, dry runs, args.json.

A user mistake (bad flag value, missing or unusable file) ends the program with exit code 2 and
one line on stderr that names the flag, file or value (`video_train.py: error: --lr 'abc': ...`),
never a traceback. Library code raises `UsageError`; a command's `main` is decorated with
`@entry_point`, which turns it into that line and exit code:

    @entry_point
    def main(argv=None):
        parser = make_parser("Train a RaMViD model.")
        add_flags(parser, defaults)                  # ramvid.flags
        add_common_flags(parser)                     # --preset, --dry_run
        args = parse_flags(parser, argv)             # applies --preset; explicit flags win
        check(parser, args.lr > 0, "lr", args.lr, "must be positive")
        if not Path(args.data_dir).is_dir():
            raise UsageError(f"--data_dir {args.data_dir}: not a directory")
        exit_if_dry_run(args, config)                # prints the resolved config as JSON, exit 0
        write_args_json(logdir, config)
"""
import argparse
import functools
import json
import os
import platform
import sys
from pathlib import Path

from .dist import env_rank
from .presets import PRESETS, preset_flags

ARGS_JSON = "args.json"
USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """A user mistake: a bad flag value, a missing or unusable file or folder. The message names
    the flag, file or value and what to do; `entry_point` prints it as one line, exit code 2."""


def exit_with_usage_error(message, prog=None):
    """Print `prog: error: message` (rank 0 only under a launcher) and exit with code 2."""
    # Under mpirun every rank parses the same flags; one copy of the message is enough.
    if env_rank() == 0:
        sys.stderr.write(f"{prog or Path(sys.argv[0]).name}: error: {message}\n")
        sys.stderr.flush()
    sys.exit(USAGE_EXIT_CODE)


def entry_point(main):
    """Decorate a command's `main(argv=None)`: a UsageError raised anywhere below it ends the
    program with one line `prog: error: message` and exit code 2; Ctrl-C with `prog: interrupted`
    and exit code 130. Other exceptions keep their traceback (they are bugs, not user mistakes)."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            exit_with_usage_error(_one_line(e))
        except KeyboardInterrupt:
            sys.stderr.write(f"{Path(sys.argv[0]).name}: interrupted\n")
            sys.exit(130)

    return run


class FlagParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump) and exact flag names only."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--lr_anneal` must not silently mean another flag
        super().__init__(*args, **kwargs)

    def error(self, message):
        exit_with_usage_error(message, self.prog)


def make_parser(description, prog=None):
    return FlagParser(description=description, prog=prog,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _preset_name(name):
    if name:
        try:
            preset_flags(name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return name


def add_common_flags(parser):
    parser.add_argument("--preset", default="", type=_preset_name, metavar="NAME",
                        help=f"named flag set: {', '.join(sorted(PRESETS))}; flags given "
                        "explicitly override it")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the resolved configuration as JSON and exit")


def parse_flags(parser, argv=None):
    """Parse argv; with --preset NAME, the preset's values replace the defaults of the flags this
    parser knows (flags the user wrote explicitly still win)."""
    args = parser.parse_args(argv)
    name = getattr(args, "preset", "")
    if not name:
        return args
    preset = preset_flags(name)
    known = {action.dest for action in parser._actions}
    parser.set_defaults(**{k: v for k, v in preset.items() if k in known})
    return parser.parse_args(argv)


def given_on_command_line(parser, argv, dest):
    """Whether argv sets flag `dest` itself, in any spelling argparse accepts (`--f v`, `--f=v`),
    rather than leaving it to a default, preset or args.json."""
    unset = object()
    namespace = argparse.Namespace(**{dest: unset})  # argparse fills only absent defaults
    parser.parse_args(argv, namespace=namespace)
    return getattr(namespace, dest) is not unset


def flag_error(parser, flag, value, reason):
    """Exit 2 with `prog: error: --flag 'value': reason`."""
    parser.error(f"--{flag} {value!r}: {reason}")


def check(parser, condition, flag, value, reason):
    if not condition:
        flag_error(parser, flag, value, reason)


def check_model_flags(parser, flags):
    """Validate model and diffusion flags without building the network; a ValueError from the
    library (whose message names the flag, e.g. `image_size=20 ...`) becomes a flag error."""
    from .config import (DIFFUSION_FLAGS, create_diffusion, model_and_diffusion_defaults,
                         unet_config_from_flags)

    defaults = model_and_diffusion_defaults()
    for build, names in ((unet_config_from_flags, None), (create_diffusion, DIFFUSION_FLAGS)):
        try:
            if names is None:
                build(flags)
            else:
                build(**{k: flags[k] for k in names if k in flags})
        except (ValueError, TypeError) as e:
            message = _one_line(e)
            if not any(name in message for name in defaults):
                # The library did not say which flag; name the ones this part reads that differ
                # from their defaults.
                suspects = [f"--{k} {flags[k]!r}" for k in (names or defaults)
                            if k in flags and flags[k] != defaults[k]]
                message = f"{', '.join(suspects) or 'model flags'}: {message}"
            parser.error(message)


def _one_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def versions():
    import numpy
    import torch

    from . import __version__

    return {"ramvid": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}


def config_json(config):
    return json.dumps(config, indent=2, sort_keys=False, default=str)


def exit_if_dry_run(args, config):
    if getattr(args, "dry_run", False):
        print(config_json(config))
        sys.exit(0)


def write_args_json(logdir, config):
    """Write `config` (plus library versions under "versions" unless present) to LOGDIR/args.json,
    atomically. Sampling reads it back with `read_args_json` to rebuild the model."""
    config = dict(config)
    config.setdefault("versions", versions())
    path = Path(logdir) / ARGS_JSON
    tmp = path.with_name(f".{ARGS_JSON}.{os.getpid()}.tmp")
    try:
        tmp.write_text(config_json(config) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
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


__all__ = [
    "ARGS_JSON", "USAGE_EXIT_CODE", "FlagParser", "UsageError", "entry_point",
    "exit_with_usage_error", "add_common_flags", "check", "check_model_flags", "config_json",
    "exit_if_dry_run", "flag_error", "make_parser", "parse_flags", "read_args_json", "versions",
    "write_args_json",
]
