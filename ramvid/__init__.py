"""ramvid: random-mask video diffusion (RaMViD) for video prediction, infilling and generation."""
from .config import (create_diffusion, create_model, create_model_and_diffusion,
                     model_and_diffusion_defaults)
from .masking import mask_from_frames, sample_train_mask

__version__ = "0.1.0"
__all__ = [
    "create_diffusion", "create_model", "create_model_and_diffusion",
    "model_and_diffusion_defaults", "mask_from_frames", "sample_train_mask",
]
