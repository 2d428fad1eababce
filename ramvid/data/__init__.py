"""Video data for ramvid (docs/DATA_LOADER.md): decoding with seeking (decode.py), and videos on
disk -> clips (clips.py: file listing, preprocessing, the datasets, the training loader)."""
from .clips import (VIDEO_EXTENSIONS, VideoClipDataset, VideoSkippedWarning, class_name_of,
                    is_video, list_videos, load_data, preprocess_frame)
from .decode import ShortVideoError, VideoInfo, VideoReadError, probe, read_window
