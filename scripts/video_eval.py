"""Evaluate predicted videos: PSNR/SSIM (best- and mean-of-N) and FVD.

A video_sample.py run's folder holds everything evaluation needs (sample_args.json records
the given frames and the samples per clip; --save_gt True writes the ground truth):

    python scripts/video_eval.py --samples logs/run/samples/predict_c0_256x16_s100_...

or sample a checkpoint first and evaluate those samples (resumable, under mpirun too):

    python scripts/video_eval.py --protocol bair --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/bair/test

Results go to a JSON file (--output, default eval.json in the run folder) and stdout,
followed by a table and the protocol in words. The same as `ramvid-eval`.
See docs/EVALUATION.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.metrics.command import eval_main

main = eval_main

if __name__ == "__main__":
    main()
