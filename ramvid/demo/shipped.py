"""The demo checkpoint shipped in the repository, and the command that trained it.

A few minutes of CPU training shows the loss falling and the model learning; the shipped
checkpoint shows what the same `demo` preset reaches with longer training on the same clips:
SHIPPED_STEPS steps of one process with two threads (86 minutes on the development machine).
`python scripts/demo.py --retrain` runs `retrain_command` again and compares the result
with SHIPPED_SHA256.
"""
import sys
from pathlib import Path

from ..errors import UsageError
from ..metrics.i3d import sha256_of
from .pipeline import REPO

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_STEPS = 16000
LR_ANNEAL_STEPS = 16000  # the learning rate falls linearly from 5e-4 towards 0 at this step
SHIPPED_CHECKPOINT = SHIPPED_DIR / f"ema_0.99_{SHIPPED_STEPS:06d}.pt"  # args.json beside it
SHIPPED_SHA256 = "caa6e4b27ee01e9037e87e28c2faff9d8f5c0cd1b5bc85360997704b2d61b2b6"
RETRAIN_THREADS = 2  # the recorded run used two threads; another count changes float rounding
RETRAIN_MINUTES = "about 86 minutes"  # the recorded run, on the 2-core development machine


def retrain_command(data_dir):
    """The command that trained the shipped checkpoint (one process with RETRAIN_THREADS
    threads; global batch 8, as the preset's 4 per rank on 2 ranks), on the demo's clips in
    `data_dir`. It ends at SHIPPED_STEPS, the end of the learning-rate schedule, where the
    checkpoint was taken (docs/DEMO.md)."""
    return [
        sys.executable, str(REPO / "scripts" / "video_train.py"),
        "--data_dir", str(Path(data_dir) / "train"), "--preset", "demo", "--batch_size", "8",
        "--anneal_type", "linear", "--lr_anneal_steps", str(LR_ANNEAL_STEPS),
        "--max_steps", str(SHIPPED_STEPS),
        "--save_interval", "1000", "--log_interval", "10", "--seed", "0", "--num_workers", "1",
        "--sample_interval", "1000", "--val_data_dir", str(Path(data_dir) / "val"),
    ]


def verified_checkpoint():
    """The shipped checkpoint's path, after checking its bytes against SHIPPED_SHA256."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise UsageError(f"the shipped demo checkpoint {SHIPPED_CHECKPOINT} is missing; restore "
                         "it from git or rebuild it with `python scripts/demo.py --retrain`")
    found = sha256_of(SHIPPED_CHECKPOINT)
    if found != SHIPPED_SHA256:
        raise UsageError(f"{SHIPPED_CHECKPOINT} has sha256 {found}, not the recorded "
                         f"{SHIPPED_SHA256}; restore it from git or rebuild it with "
                         "`python scripts/demo.py --retrain`")
    return SHIPPED_CHECKPOINT


__all__ = ["RETRAIN_MINUTES", "RETRAIN_THREADS", "SHIPPED_CHECKPOINT", "SHIPPED_SHA256",
           "SHIPPED_STEPS", "retrain_command", "sha256_of", "verified_checkpoint"]
