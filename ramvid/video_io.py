"""Writing video files with PyAV (ramvid.data reads them), and grids of videos to look at.

Datasets are written losslessly (`libx264rgb`, `qp=0` in .mp4: colours survive exactly, see
docs/DATASETS.md); camera footage (Kinetics-600) and grids lossy (`libx264`, yuv420p, CRF), which
every player decodes. A grid is animated (gif, mp4) or a filmstrip (png) of uint8 videos
(N, T, H, W, C), C = 1 or 3, as in the sample npz files; every frame gets a border, coloured for
a given (conditioning) frame and dark for a generated one.

    save_video_grid("samples.gif", videos, obs_mask=mask)  # mask: bool (N, T) or (T,)
    save_video_grid("samples.png", videos, cond_frames=[0, 1])
"""
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .checkpoint import atomic_path

GIVEN_COLOR = (230, 40, 40)  # red: a frame the model was given
GENERATED_COLOR = (40, 40, 40)  # dark grey: a frame the model generated
BACKGROUND = (255, 255, 255)
FORMATS = ("gif", "mp4", "png")


def write_video(path, frames, fps=10, crf=None):
    """Write `frames` (T, H, W, 3) uint8 RGB to `path` (.mp4 or .avi): losslessly with
    crf=None, else yuv420p H.264 at quality `crf` (H, W even); complete or not at all."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with video_writer(path, frames.shape[2], frames.shape[1], fps, crf) as write:
        for frame in frames:
            write(av.VideoFrame.from_ndarray(frame, format="rgb24"))


@contextmanager
def video_writer(path, width, height, fps, crf=None, **options):
    """`with video_writer(...) as write:` encode PyAV frames one by one with `write(frame)`; the
    file appears at `path` (through `atomic_path`) when the block ends without an exception.
    `options` (e.g. preset="ultrafast", g="250") override the encoder options chosen here."""
    rate = Fraction(fps).limit_denominator(1001)
    muxer = Path(path).suffix.lower()[1:].replace("mkv", "matroska")  # the temporary name has none
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=muxer) as container:
        if crf is None:
            stream = container.add_stream("libx264rgb", rate=rate)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "veryfast"}
        elif "libx264" in av.codecs_available:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:  # an FFmpeg build without x264: MPEG-4 part 2, its default quality
            stream = container.add_stream("mpeg4", rate=rate)
            stream.pix_fmt = "yuv420p"
        stream.options = {**stream.options, **options}
        stream.width, stream.height = width, height

        def write(frame):
            # The encoder numbers frames without a pts in the frame's own time base (a decoded
            # frame brings its source's): in 1 / rate, one frame apart, a constant frame rate.
            frame.pts, frame.time_base = None, 1 / rate
            container.mux(stream.encode(frame.reformat(format=stream.pix_fmt)))

        yield write
        container.mux(stream.encode())


# --------------------------------------------------------------------------- grids
def as_rgb_videos(videos):
    """uint8 (N, T, H, W, 3) from uint8 (N, T, H, W, C) with C in {1, 3}; ValueError otherwise."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(f"expected videos of shape N x T x H x W x C with C = 1 or 3, got "
                         f"{videos.shape}")
    if videos.dtype != np.uint8:
        raise ValueError(f"expected uint8 videos (0..255), got dtype {videos.dtype}")
    return np.repeat(videos, 3, axis=-1) if videos.shape[-1] == 1 else videos


def grid_obs_mask(num_videos, num_frames, obs_mask=None, cond_frames=None):
    """bool (N, T): True where a frame was given. `obs_mask` is (N, T) or (T,); `cond_frames` a
    list of frame indices shared by all videos (indices beyond T are ignored)."""
    mask = np.zeros((num_videos, num_frames), dtype=bool)
    if obs_mask is not None:
        mask |= np.broadcast_to(np.asarray(obs_mask, dtype=bool), (num_videos, num_frames))
    mask[:, [frame for frame in cond_frames or () if 0 <= frame < num_frames]] = True
    return mask


def bordered_frames(videos, mask, border=2, scale=1):
    """(N, T, H', W', 3): every frame upscaled by `scale` (nearest) inside a `border`-pixel frame
    coloured by whether it was given."""
    videos = as_rgb_videos(videos)
    if scale > 1:
        videos = videos.repeat(scale, axis=2).repeat(scale, axis=3)
    n, t, h, w, _ = videos.shape
    colors = np.where(mask[..., None], np.array(GIVEN_COLOR, np.uint8),
                      np.array(GENERATED_COLOR, np.uint8))  # (N, T, 3)
    out = np.empty((n, t, h + 2 * border, w + 2 * border, 3), dtype=np.uint8)
    out[:] = colors[:, :, None, None, :]
    out[:, :, border:border + h, border:border + w] = videos
    return out


def _tile(tiles, cols, gap):
    """Tiles (n, h, w, 3) on one canvas, row-major, `cols` per row; blanks end the last row."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    canvas = np.full((rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap, 3), BACKGROUND,
                     dtype=np.uint8)
    for k, tile in enumerate(tiles):
        top, left = gap + k // cols * (h + gap), gap + k % cols * (w + gap)
        canvas[top:top + h, left:left + w] = tile
    return canvas


def filmstrip(videos, mask, border=2, gap=2, scale=1):
    """One image (rows = videos, columns = frames): uint8 (H_grid, W_grid, 3)."""
    frames = bordered_frames(videos, mask, border, scale)  # (N, T, h, w, 3)
    return _tile(frames.reshape(-1, *frames.shape[2:]), frames.shape[1], gap)


def animated_grid(videos, mask, columns=None, border=2, gap=2, scale=1):
    """Frames of an animation whose frame t shows frame t of every video in a grid:
    uint8 (T, H_grid, W_grid, 3). Default: up to 8 videos per row."""
    frames = bordered_frames(videos, mask, border, scale)  # (N, T, h, w, 3)
    cols = min(len(frames), columns or 8)
    return np.stack([_tile(frames[:, t], cols, gap) for t in range(frames.shape[1])])


def save_video_grid(path, videos, obs_mask=None, cond_frames=None, fps=4, scale=None,
                    columns=None):
    """Write a grid of `videos` (uint8 (N, T, H, W, C)) to `path`; the format follows the
    suffix: .gif / .mp4 (animated, one tile per video) or .png (filmstrip). Small frames are
    enlarged to about 64 pixels unless `scale` is given. Returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"{path}: grid format must be one of {', '.join(FORMATS)}")
    videos = as_rgb_videos(videos)
    n, t, h = videos.shape[:3]
    mask = grid_obs_mask(n, t, obs_mask, cond_frames)
    scale = max(1, 64 // max(1, h)) if scale is None else int(scale)
    if fmt == "png":
        Image.fromarray(filmstrip(videos, mask, scale=scale)).save(path)
        return path
    frames = animated_grid(videos, mask, columns=columns, scale=scale)  # (T, H', W', 3)
    if fmt == "gif":
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0, optimize=False)
    else:  # yuv420p (what every player decodes) needs even width and height: a white margin
        even = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
        # crf 18: visually lossless enough to judge samples
        write_video(path, np.pad(frames, even, constant_values=255), fps, crf=18)
    return path
