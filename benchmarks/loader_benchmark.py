"""How fast ramvid's loader reaches a random window of a long video, and the full pipeline.

    python benchmarks/loader_benchmark.py [--cache_dir DIR] [--minutes 5]

Generates once (cached) a long synthetic h264 video, then prints JSON: the times to read a
`seq_len`-frame window by seeking (`read_window`) and by decoding from the first frame at the
same random starts (both must return the same frames), and the items/s of `load_data`.
"""
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.data import load_data, probe, read_window  # noqa: E402
from ramvid.data.decode import to_rgb  # noqa: E402
from ramvid.flags import Flag, at_least, parse, positive, user_errors  # noqa: E402
from ramvid.video_io import video_writer  # noqa: E402


def generate_video(path: Path, minutes: float, width: int, height: int, fps: int, gop: int):
    """Frames are written straight as yuv420p planes so generation is encoder-bound. Frame i
    shows two smooth random textures (coarse, fine; twice the frame size) shifted in different
    directions, which no motion search cancels, so the stream carries a bit rate like real
    footage (about 9 Mbit/s at 720p with preset ultrafast)."""
    rng = np.random.default_rng(0)

    def texture(cell):
        small = rng.integers(0, 256, (2 * height // cell, 2 * width // cell), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((2 * width, 2 * height), Image.BICUBIC))

    back = (texture(16).astype(np.uint16) * 3 // 4).astype(np.uint8)
    front = texture(8) // 8
    num_frames = round(minutes * 60 * fps)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, stacked rows
    # crf 23: x264's own default quality
    with video_writer(path, width, height, fps, crf=23, preset="ultrafast", g=str(gop)) as write:
        for i in range(num_frames):
            y0, x0 = i % height, (2 * i) % width
            y1, x1 = (3 * i) % height, (width - i % width) % width
            luma = (back[y0 : y0 + height, x0 : x0 + width]
                    + front[y1 : y1 + height, x1 : x1 + width])  # (H, W), sums stay < 256
            write(av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p"))


def decode_from_start(path: Path, start: int, length: int) -> np.ndarray:
    """The slow way: decode every frame up to the end of the window (same RGB conversion)."""
    with av.open(str(path)) as container:
        frames = itertools.islice(container.decode(video=0), start, start + length)
        return np.stack([to_rgb(frame) for frame in frames])


def cpu_timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result). CPU time barely moves when other
    jobs share the machine; wall time does."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


FLAGS = (
    Flag("cache_dir", str(Path(tempfile.gettempdir()) / "ramvid_loader_benchmark"),
         "where the generated test video is kept between runs"),
    Flag("minutes", 5.0, "length of the test video", check=positive),
    Flag("width", 1280, "test video width in pixels", check=positive),
    Flag("height", 720, "test video height in pixels", check=positive),
    Flag("fps", 30, "test video frame rate", check=positive),
    Flag("gop", 250, "frames between keyframes (H.264 GOP size)", check=positive),
    Flag("seq_len", 20, "frames per clip", check=positive),
    Flag("starts", 11, "random windows to time, one per equal part of the file", check=positive),
    Flag("image_size", 64, "clip frames are resized to this", check=positive),
    Flag("batch_size", 4, "clips per batch", check=positive),
    Flag("batches", 10, "timed batches through the training loader", check=positive),
    Flag("num_workers", 2, "data-loading worker processes", check=at_least(0)),
    Flag("seed", 0, "seed of the random window starts"),
)


def summary(seek_times, full_times):
    seek, full = statistics.median(seek_times), statistics.median(full_times)
    return {
        "seek_window": [round(s, 4) for s in seek_times],
        "decode_from_start": [round(s, 4) for s in full_times],
        "seek_window_median": round(seek, 4),
        "decode_from_start_median": round(full, 3),
        "speedup_of_medians": round(full / seek, 1),
        "speedup_per_start_median": round(
            statistics.median(f / s for f, s in zip(full_times, seek_times)), 1),
    }


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n")[0], FLAGS, argv)
        video_dir = Path(args.cache_dir) / "videos"
        video_dir.mkdir(parents=True, exist_ok=True)
        name = f"textures_{args.minutes:g}min_{args.width}x{args.height}_{args.fps}fps_gop{args.gop}"
        path = video_dir / f"{name}.mp4"
        generated_s = None
        if not path.exists():
            generated_s, _, _ = cpu_timed(generate_video, path, args.minutes, args.width,
                                          args.height, args.fps, args.gop)

        load_before = os.getloadavg()[0]  # other processes on the machine skew every timing
        probe_s, _, info = cpu_timed(probe, path)
        rng = np.random.default_rng(args.seed)
        # One uniformly random start in each of `starts` equal parts of the file: random, yet
        # spread over the whole file so that the median is not at the mercy of a few draws.
        edges = np.linspace(0, info.num_frames - args.seq_len + 1, args.starts + 1).astype(int)
        starts = [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        seek, full = [], []  # (wall s, CPU s) of every start
        for start in starts:
            *seek_s, window = cpu_timed(read_window, path, start, args.seq_len)
            *full_s, reference = cpu_timed(decode_from_start, path, start, args.seq_len)
            seek.append(seek_s)
            full.append(full_s)
            if not np.array_equal(window, reference):
                raise SystemExit(f"seeking returned different frames than decoding at start {start}")
        loader = load_data(data_dir=video_dir, batch_size=args.batch_size,
                           image_size=args.image_size, seq_len=args.seq_len,
                           num_workers=args.num_workers, seed=args.seed)
        next(loader)  # worker start-up is not throughput
        began = time.perf_counter()
        for _ in range(args.batches):
            video, _ = next(loader)
        pipeline_s = time.perf_counter() - began

        report = {
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "pyav": av.__version__,
                        "load_avg_1min_before_after": [round(load_before, 2),
                                                       round(os.getloadavg()[0], 2)]},
            "video": {
                "path": str(path),
                "num_frames": info.num_frames,
                "size": [info.width, info.height],
                "fps": info.fps,
                "gop": args.gop,
                "megabytes": round(path.stat().st_size / 2**20, 1),
                "generated_s": None if generated_s is None else round(generated_s, 1),
            },
            "probe_s": round(probe_s, 4),
            "seq_len": args.seq_len,
            "starts": starts,
            "wall_seconds": summary([s[0] for s in seek], [f[0] for f in full]),
            "cpu_seconds": summary([s[1] for s in seek], [f[1] for f in full]),
            "pipeline": {
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "batches": args.batches,
                "batch_shape": list(video.shape),
                "items_per_s": round(args.batches * args.batch_size / pipeline_s, 2),
            },
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
