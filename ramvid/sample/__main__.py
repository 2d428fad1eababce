"""`python -m ramvid.sample ...`: the same command as scripts/video_sample.py (ramvid-sample)."""
from .commands import sample_main

if __name__ == "__main__":
    sample_main()
