"""`python -m ramvid.train ...`: the training command (also `ramvid-train`, scripts/video_train.py)."""
import sys

from .command import main

sys.argv[0] = "python -m ramvid.train"  # the name its --help and error lines show
sys.exit(main())
