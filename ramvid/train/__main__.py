"""`python -m ramvid.train ...`: the training command (also `ramvid-train`, scripts/video_train.py)."""
import sys

from .main import main

sys.exit(main(prog="python -m ramvid.train"))
