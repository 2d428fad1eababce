"""`python -m ramvid.sample ...`: the same command as scripts/video_sample.py (ramvid-sample)."""
import sys

from .command import sample_main

if __name__ == "__main__":
    sys.argv[0] = "python -m ramvid.sample"  # the name its --help and error lines show
    sample_main()
