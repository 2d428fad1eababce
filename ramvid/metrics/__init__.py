"""Evaluation metrics: FVD with the Kinetics-400 I3D network, per-frame PSNR and SSIM."""
from .frame_metrics import frame_metrics
from .fvd import compute_fvd, frechet_distance, i3d_features
from .i3d import I3D, load_i3d
