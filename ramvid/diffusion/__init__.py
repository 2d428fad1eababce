"""Gaussian diffusion over videos: schedules, respacing, losses and samplers."""
from .gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion
from .resample import create_named_schedule_sampler
from .sampling import SAMPLERS, Conditioning, sample_loop
from .schedules import get_named_beta_schedule, space_timesteps
