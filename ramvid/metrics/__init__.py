"""Evaluation metrics: FVD with the Kinetics-400 I3D network, per-frame PSNR and SSIM."""
from .frame_metrics import frame_metrics
from .fvd import I3D, compute_fvd, frechet_distance, i3d_features, load_i3d

__all__ = ["I3D", "compute_fvd", "frame_metrics", "frechet_distance", "i3d_features",
           "load_i3d"]
