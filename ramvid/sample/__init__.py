"""Sampling from trained ramvid models: prediction, infilling, unconditional and long videos;
in a notebook `load_model` then `sample_videos` (docs/SAMPLING.md#notebook-api). The commands
(video_sample.py, video_sample_long.py) run the same batches through `sample_to_folder`, which
writes resumable chunks and then the npz files.
"""
from .batch import (SamplerOptions, from_uint8, sample_batch, sample_generators, sample_videos,
                    to_uint8)
from .loading import load_model
from .run import SampleJob, read_record, sample_to_folder
