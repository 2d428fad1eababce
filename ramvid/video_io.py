"""Writing and reading video files with PyAV.

The synthetic set and BAIR are written losslessly: H.264 in its RGB flavour (`libx264rgb`,
`qp=0`) inside .mp4. Colours survive exactly (round-trip error 0), the files are small, and
the training loader reads them with PyAV. Real camera footage (Kinetics-600) and sample grids
are written lossy (`libx264`, yuv420p, CRF), which every player decodes.
"""
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path, frames, fps=10, crf=None):
    """Write `frames` (T, H, W, 3) uint8 RGB to `path` (.mp4 or .avi).

    crf=None writes losslessly; an integer writes yuv420p H.264 at that quality (H, W even).
    The file appears under its name only once complete (written beside it, then renamed).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps, crf) as writer:
        for frame in frames:
            writer.write(av.VideoFrame.from_ndarray(frame, format="rgb24"))


class VideoWriter:
    """Encode PyAV frames one by one; the output is renamed into place on a clean close."""

    def __init__(self, path, width, height, fps, crf=None):
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial{self.path.suffix}")
        self.container = av.open(str(self.partial), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        if crf is None:
            self.stream = self.container.add_stream("libx264rgb", rate=rate)
            self.stream.pix_fmt = "rgb24"
            self.stream.options = {"qp": "0", "preset": "veryfast"}
        elif "libx264" in av.codecs_available:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(crf), "preset": "medium"}
        else:  # an FFmpeg build without x264: MPEG-4 part 2, its default quality
            self.stream = self.container.add_stream("mpeg4", rate=rate)
            self.stream.pix_fmt = "yuv420p"
        self.stream.width, self.stream.height = width, height
        self.count = 0

    def write(self, frame):
        # Consecutive pts at the stream's rate: the output is constant frame rate.
        frame.pts = None
        self.container.mux(self.stream.encode(frame.reformat(format=self.stream.pix_fmt)))
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.container.mux(self.stream.encode())
        finally:
            self.container.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
        return False


def read_video(path):
    """All frames of the first video stream of `path` as (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)
