"""UCF-101 -> train/test folders by an official split, named so the class parses.

    python datasets/ucf101.py --ucf_dir path/to/UCF-101 --split_dir path/to/ucfTrainTestlist \
        --out_dir data/ucf101 --split 1 --mode symlink

Each listed video is linked (or copied) as `<ClassFolder>_gXX_cXX.avi`: the original names start
with `v_`, which `--class_cond True` would read as every video's class, and a few spell the class
unlike their folder (`HandstandPushups/v_HandStandPushups_g01_c01.avi`; docs/DATASETS.md).
"""
import re
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python datasets/ucf101.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.common import OUT_DIR, OVERWRITE, prepare_split_dir, warn  # noqa: E402
from ramvid.errors import UsageError  # noqa: E402
from ramvid.flags import Flag, existing_dir, parse, user_errors  # noqa: E402

SPLIT_LISTS = {"train": "trainlist0{}.txt", "test": "testlist0{}.txt"}
_UCF_NAME = re.compile(r"^v_[^_]+_(?P<rest>g\d+_c\d+)$")


def output_name(label, file_name):
    """`HandstandPushups`, `v_HandStandPushups_g01_c01.avi` -> `HandstandPushups_g01_c01.avi`."""
    path = Path(file_name)
    match = _UCF_NAME.match(path.stem)
    rest = match.group("rest") if match else path.stem
    if "_" in label:
        raise UsageError(f"class {label!r} contains '_', which would break class parsing")
    return f"{label}_{rest}{path.suffix}"


def arrange(ucf_dir, split_dir, out_dir, split=1, mode="symlink", overwrite=False):
    """Link or copy the videos of split `split`; returns {split: count} and warns on misses."""
    ucf_dir, split_dir = Path(ucf_dir), Path(split_dir)
    lists = {}  # {split: [(class, relative path)]}
    for name, pattern in SPLIT_LISTS.items():
        path = split_dir / pattern.format(split)
        if not path.is_file():
            raise UsageError(f"--split_dir {split_dir}: no {path.name} for --split {split}")
        lists[name] = []
        for fields in map(str.split, path.read_text().splitlines()):
            if not fields:
                continue
            # The class is the path's folder, or without one the word after the name's `v_`.
            relative = fields[0].replace("\\", "/")
            folder, _, file_name = relative.rpartition("/")
            match = re.match(r"^v_([^_]+)_", file_name)
            if not (folder or match):
                raise UsageError(f"{path}: cannot tell the class of {relative!r}")
            lists[name].append((folder or match.group(1), relative))
    by_name = None  # videos found anywhere under ucf_dir, indexed on first need
    out_dirs = {name: prepare_split_dir(out_dir, name, overwrite) for name in lists}
    written, missing = {name: 0 for name in lists}, []
    for name, entries in lists.items():
        for label, relative in entries:
            source = ucf_dir / relative
            if not source.is_file():
                if by_name is None:
                    by_name = {p.name: p for p in ucf_dir.rglob("*") if p.is_file()}
                source = by_name.get(Path(relative).name)
            if source is None:
                missing.append(relative)
                continue
            target = out_dirs[name] / output_name(label, Path(relative).name)
            if mode == "copy":
                shutil.copy2(source, target)
            else:
                target.symlink_to(source.resolve())
            written[name] += 1
    if missing and not sum(written.values()):
        raise UsageError(f"--ucf_dir {ucf_dir}: none of the {len(missing)} listed videos is "
                         f"there (looked for {ucf_dir / missing[0]})")
    for relative in missing:
        warn(f"{relative} is listed but not found under {ucf_dir}; skipped")
    return written, missing


FLAGS = (
    Flag("ucf_dir", None, "the unpacked UCF-101 folder (one folder per class)",
         check=existing_dir, required=True),
    Flag("split_dir", None, "folder of trainlist0N.txt and testlist0N.txt", check=existing_dir,
         required=True),
    OUT_DIR,
    Flag("split", 1, "official split", choices=(1, 2, 3)),
    Flag("mode", "symlink", "symlink (no extra disk) or copy the videos",
         choices=("symlink", "copy")),
    OVERWRITE,
)


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)
        written, missing = arrange(args.ucf_dir, args.split_dir, args.out_dir, args.split, args.mode,
                                   args.overwrite)
        for name, count in written.items():
            print(f"{name}: {count} videos ({args.mode}) in {Path(args.out_dir) / name}")
        if missing:
            print(f"{len(missing)} listed videos were missing and skipped")


if __name__ == "__main__":
    main()
