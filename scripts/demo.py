"""The ramvid demo (`make demo`): train a small RaMViD model on CPU, then watch it predict and
infill held-out clips beside the shipped checkpoint and simple baselines. See docs/DEMO.md.

    .venv/bin/python scripts/demo.py [--max_steps 600] [--retrain]     # = ramvid-demo
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.demo.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
