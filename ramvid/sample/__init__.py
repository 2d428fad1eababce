"""Sampling from trained ramvid models: prediction, infilling, unconditional and long videos.

Notebook use:
    from ramvid.sample import load_model, sample_videos
    model, diffusion, flags = load_model("logs/run/ema_0.9999_200000.pt", timestep_respacing="100")
    videos = sample_videos(model, diffusion, 4, obs=clips, cond_frames=[0, 1], seed=0)
    # uint8 (4, T, H, W, C)
"""
from .compat import ModelFlagsMismatch, architecture_of, check_state_dict
from .core import SamplerOptions, denoise, sample_videos
from .loading import checkpoint_flags, load_model, load_state_dict, model_from_state_dict, resolve_flags
from .long import SCHEMES, Window, plan_autoregressive, plan_hierarchical, plan_long_video, rollout
from .output import from_uint8, npz_name, save_npz, to_uint8
from .run import LongJob, SampleJob, long_video_run, sample_run
from .seeds import sample_generators, sample_seed

__all__ = [
    "LongJob", "ModelFlagsMismatch", "SCHEMES", "SampleJob", "SamplerOptions", "Window",
    "architecture_of", "check_state_dict", "checkpoint_flags", "denoise", "from_uint8",
    "load_model", "load_state_dict", "long_video_run", "model_from_state_dict", "npz_name",
    "plan_autoregressive", "plan_hierarchical", "plan_long_video", "resolve_flags", "rollout",
    "sample_generators", "sample_run", "sample_seed", "sample_videos", "save_npz", "to_uint8",
]
