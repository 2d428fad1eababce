"""Train a RaMViD video diffusion model.

    python scripts/video_train.py --data_dir path/to/videos $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS
    mpirun -n 4 python scripts/video_train.py ...      (one process per GPU)
    torchrun --nproc_per_node 4 scripts/video_train.py ...

See docs/TRAINING.md for flags, logs, checkpoints and resuming.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.train.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
