"""Turn a samples npz (uint8 N x T x H x W x C in `arr_0`) into gif, mp4 or png grids.

    python scripts/npz_to_video.py samples/16x20x64x64x3.npz --format gif --cond_frames 0,1,
    # -> samples/16x20x64x64x3_000.gif (videos 0-7), ..._001.gif (videos 8-15)

Any file written by `np.savez(path, arr)` with that layout works, including those of other
RaMViD implementations. Frames named by --cond_frames get a red border (given frames).
"""
import sys
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.errors import UsageError
from ramvid.flags import (Flag, add_flags, at_least, flag_values, int_tuple, make_parser, one_of,
                          user_errors)
from ramvid.metrics.command import load_clips
from ramvid.video_io import FORMATS, save_video_grid

FLAGS = (
    Flag("format", "gif", " | ".join(FORMATS), check=one_of(FORMATS)),
    Flag("cond_frames", "", "given frame indices to outline, e.g. 0,1,", convert=int_tuple),
    Flag("per_grid", 8, "videos per grid file", check=at_least(1)),
    Flag("max_videos", 0, "only the first N videos (0: all)", check=at_least(0)),
    Flag("fps", 4, "frames per second of gif/mp4 grids", check=at_least(1)),
    Flag("scale", 0, "integer upscaling (0: automatic)", check=at_least(0)),
    Flag("out_dir", "", "where the grids go (default: beside the npz)"),
)


def main(argv=None):
    with user_errors():
        parser = make_parser(__doc__.splitlines()[0])
        parser.add_argument("npz", help="the .npz file")
        add_flags(parser, FLAGS)
        raw = parser.parse_args(argv)
        args = SimpleNamespace(**flag_values(FLAGS, vars(raw)))
        npz = Path(raw.npz)
        videos = load_clips(npz, "npz")  # (N, T, H, W, C) uint8
        if len(videos) == 0:
            raise UsageError(f"{raw.npz}: arr_0 holds no videos")
        videos = videos[:args.max_videos or None]
        out_dir = Path(args.out_dir or npz.parent)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [save_video_grid(out_dir / f"{npz.stem}_{k:03d}.{args.format}",
                                   videos[first:first + args.per_grid],
                                   cond_frames=args.cond_frames, fps=args.fps,
                                   scale=args.scale or None)
                   for k, first in enumerate(range(0, len(videos), args.per_grid))]
        print(f"wrote {len(written)} {args.format} grid(s) of {min(args.per_grid, len(videos))} "
              f"videos to {out_dir}, e.g. {written[0]}")
        return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
