"""Training: flags (`options`), the loop (`loop.train`), EMA, lr schedules, logs, resumable state.

    python scripts/video_train.py --data_dir videos/ --preset demo --max_steps 1000
    ramvid-train ... / python -m ramvid.train ...      (the same command, installed)
"""
from .ema import EMA
from .loop import train
from .main import main
from .options import TrainConfig, build_parser, parse_train_args, training_defaults
from .schedules import last_step, lr_at

__all__ = ["EMA", "TrainConfig", "build_parser", "last_step", "lr_at", "main",
           "parse_train_args", "train", "training_defaults"]
