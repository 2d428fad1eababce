"""Evaluation metrics: FVD with the Kinetics-400 I3D network, per-frame PSNR and SSIM."""
from .fvd import I3D, compute_fvd, frechet_distance, i3d_features, load_i3d

__all__ = ["I3D", "compute_fvd", "frechet_distance", "i3d_features", "load_i3d"]
