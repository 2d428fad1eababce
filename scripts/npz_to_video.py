"""Turn a samples npz (uint8 N x T x H x W x C in `arr_0`) into gif, mp4 or png grids.

    python scripts/npz_to_video.py samples/16x20x64x64x3.npz --format gif --cond_frames 0,1,
    # -> samples/16x20x64x64x3_000.gif (videos 0-7), ..._001.gif (videos 8-15)

Any file written by `np.savez(path, arr)` with that layout works, including those of other
RaMViD implementations. Frames named by --cond_frames get a red border (given frames).
"""
import sys
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ramvid.cli import check, make_parser
from ramvid.flags import int_list
from ramvid.video_grid import FORMATS, save_video_grid


def parse_args(argv=None):
    parser = make_parser(__doc__.splitlines()[0], prog=Path(__file__).name)
    parser.add_argument("npz", help="the .npz file")
    parser.add_argument("--format", default="gif", help=" | ".join(FORMATS))
    parser.add_argument("--cond_frames", type=int_list, default="",
                        help="given frame indices to outline, e.g. 0,1,")
    parser.add_argument("--per_grid", type=int, default=8, help="videos per grid file")
    parser.add_argument("--max_videos", type=int, default=0, help="only the first N videos (0: all)")
    parser.add_argument("--fps", type=int, default=4, help="frames per second of gif/mp4 grids")
    parser.add_argument("--scale", type=int, default=0, help="integer upscaling (0: automatic)")
    parser.add_argument("--out_dir", default="", help="where the grids go (default: beside the npz)")
    args = parser.parse_args(argv)
    check(parser, args.format in FORMATS, "format", args.format, f"must be one of {', '.join(FORMATS)}")
    for flag in ("per_grid", "fps"):
        check(parser, getattr(args, flag) >= 1, flag, getattr(args, flag), "must be >= 1")
    check(parser, args.max_videos >= 0, "max_videos", args.max_videos, "must be >= 0")
    check(parser, args.scale >= 0, "scale", args.scale, "must be >= 0")
    return parser, args


def load_videos(parser, path):
    path = Path(path)
    if not path.is_file():
        parser.error(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        parser.error(f"{path}: not an npz file (written by np.savez)")
    try:
        with np.load(path) as archive:
            if "arr_0" not in archive.files:
                parser.error(f"{path}: no arr_0 (holds {', '.join(archive.files) or 'nothing'})")
            videos = archive["arr_0"]
    except (OSError, ValueError) as e:
        parser.error(f"{path}: not a readable npz file ({str(e).splitlines()[0]})")
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3) or videos.dtype != np.uint8:
        parser.error(f"{path}: arr_0 is {videos.dtype} {videos.shape}; expected uint8 "
                     "N x T x H x W x C with C = 1 or 3")
    if len(videos) == 0:
        parser.error(f"{path}: arr_0 holds no videos")
    return videos


def main(argv=None):
    parser, args = parse_args(argv)
    videos = load_videos(parser, args.npz)
    if args.max_videos:
        videos = videos[: args.max_videos]
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.npz).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.npz).stem
    written = []
    for k, first in enumerate(range(0, len(videos), args.per_grid)):
        path = out_dir / f"{stem}_{k:03d}.{args.format}"
        written.append(save_video_grid(path, videos[first:first + args.per_grid],
                                       cond_frames=args.cond_frames, fps=args.fps,
                                       scale=args.scale or None))
    print(f"wrote {len(written)} {args.format} grid(s) of {min(args.per_grid, len(videos))} videos "
          f"to {out_dir}, e.g. {written[0]}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
