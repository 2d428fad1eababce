"""ramvid: random-mask video diffusion (RaMViD) for video prediction, infilling and generation."""
from .config import (create_diffusion, create_model, create_model_and_diffusion,
                     model_and_diffusion_defaults)
from .flags import VERSION as __version__
from .masking import mask_from_frames, sample_train_mask
