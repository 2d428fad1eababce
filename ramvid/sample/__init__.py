"""Sampling from trained ramvid models: prediction, infilling, unconditional and long videos.

Notebook use:
    from ramvid.sample import load_model, sample_videos
    model, diffusion, flags = load_model("runs/bair/ema_0.9999_200000.pt", timestep_respacing="100")
    videos = sample_videos(model, diffusion, 4, obs=clips, cond_frames=[0, 1], seed=0)
    # uint8 (4, T, H, W, C)

The commands (video_sample.py, video_sample_long.py; installed as ramvid-sample,
ramvid-sample-long) run the same batches through `sample_to_folder`, which writes resumable
chunks and then the npz files.
"""
from .batch import SamplerOptions, from_uint8, sample_batch, sample_generators, sample_videos, to_uint8
from .loading import load_model
from .run import SampleJob, read_record, sample_to_folder
