"""Video data for ramvid: decoding with seeking (decode.py), and videos on disk -> clips
(clips.py: file listing, preprocessing, the datasets, the training loader).

    list_videos(data_dir) -> list[Path]
    probe(path) -> VideoInfo(num_frames, fps, width, height)
    read_window(path, start, length) -> uint8 (T, H, W, 3)
    VideoClipDataset(data_dir, image_size, seq_len, ...)[i] -> ((C, T, H, W), label or -1)
    load_data(*, data_dir, batch_size, image_size, seq_len, ...) -> VideoLoader (training)
"""
from .clips import (VIDEO_EXTENSIONS, RandomClipDataset, VideoClipDataset, VideoLoader,
                    VideoSkippedWarning, class_name_of, is_video, list_videos, load_data,
                    preprocess_frame, resize_and_crop)
from .decode import ShortVideoError, VideoInfo, VideoReadError, probe, read_window
