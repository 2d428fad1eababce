"""Video data for ramvid: file discovery, seeking decoder, preprocessing, loaders.

Public API:
    list_videos(data_dir) -> list[Path]
    probe(path) -> VideoInfo(num_frames, fps, width, height)
    read_window(path, start, length) -> uint8 (T, H, W, 3)
    VideoClipDataset(data_dir, image_size, seq_len, ...)[i] -> ((C, T, H, W), label or -1)
    load_data(*, data_dir, batch_size, image_size, seq_len, ...) -> VideoLoader (training)
"""
from .clips import RandomClipDataset, VideoClipDataset
from .decode import ShortVideoError, VideoInfo, VideoReadError, probe, read_window
from .files import VIDEO_EXTENSIONS, VideoSkippedWarning, list_videos
from .loader import VideoLoader, load_data
from .preprocess import preprocess_frame, resize_and_crop

__all__ = [
    "RandomClipDataset",
    "ShortVideoError",
    "VIDEO_EXTENSIONS",
    "VideoClipDataset",
    "VideoInfo",
    "VideoLoader",
    "VideoReadError",
    "VideoSkippedWarning",
    "list_videos",
    "load_data",
    "preprocess_frame",
    "probe",
    "read_window",
    "resize_and_crop",
]
