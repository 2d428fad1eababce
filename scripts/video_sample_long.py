"""Sample videos longer than the model's seq_len frames, window by window.

    python scripts/video_sample_long.py --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/test --start_frames 2 --total_length 60 \
        --max_cond_frames 4 --prediction_step 12 --scheme autoregressive

--scheme autoregressive: each window of seq_len frames gives the last --max_cond_frames known
frames and keeps --prediction_step new ones. --scheme hierarchical: keyframes over the whole
length first, then windows that fill in between them. --start_frames K takes the first K frames
of each --data_dir clip as known (0: the first window is unconditional). Output as
video_sample.py: <N>x<total_length>x<H>x<W>x<C>.npz in the run's folder. The same as
`ramvid-sample-long`. See docs/SAMPLING.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.sample.command import sample_long_main

main = sample_long_main

if __name__ == "__main__":
    main()
