"""Sampling from trained ramvid models: prediction, infilling, unconditional and long videos.

Notebook use:
    from ramvid.sample import load_model, sample_videos
    model, diffusion, flags = load_model("logs/run/ema_0.9999_200000.pt", timestep_respacing="100")
    videos = sample_videos(model, diffusion, 4, obs=clips, cond_frames=[0, 1], seed=0)
    # uint8 (4, T, H, W, C)

The commands (`python -m ramvid.sample`, ramvid-sample, ramvid-sample-long) run the same
batches through `sample_to_folder`, which writes resumable chunks and then the npz files.
"""
from .api import sample_videos
from .batch import SAMPLERS, SamplerOptions, denoise, sample_batch
from .compat import ModelFlagsMismatch, architecture_of, check_state_dict
from .jobs import LongSettings, SampleJob, sample_to_folder
from .loading import checkpoint_flags, load_model, load_state_dict, model_from_state_dict, resolve_flags
from .long import SCHEMES, Window, plan_autoregressive, plan_hierarchical, plan_long_video, rollout
from .output import from_uint8, npz_name, save_npz, to_uint8
from .record import RECORD_JSON, read_record
from .seeds import sample_generators, sample_seed

__all__ = [
    "LongSettings", "ModelFlagsMismatch", "RECORD_JSON", "SAMPLERS", "SCHEMES", "SampleJob",
    "SamplerOptions", "Window", "architecture_of", "check_state_dict", "checkpoint_flags",
    "denoise", "from_uint8", "load_model", "load_state_dict", "model_from_state_dict",
    "npz_name", "plan_autoregressive", "plan_hierarchical", "plan_long_video", "read_record",
    "resolve_flags", "rollout", "sample_batch", "sample_generators", "sample_seed",
    "sample_to_folder", "sample_videos", "save_npz", "to_uint8",
]
