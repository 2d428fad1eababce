"""Sample videos from a trained ramvid model: prediction, infilling or unconditional generation.

    python scripts/video_sample.py --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/test --cond_frames 0,1, --num_samples 16 --timestep_respacing 100
    mpirun -n 2 python scripts/video_sample.py ...       # same samples, split over 2 ranks

Each run writes into its own folder (--out_dir, else <$OPENAI_LOGDIR or samples/ beside the
checkpoint>/<task>_c<given frames>_...): <N>x<T>x<H>x<W>x<C>.npz (`arr_0`, uint8, channels
last; `arr_1` = labels for class-conditional models), gt_<shape>.npz with --save_gt True, a grid
per batch and sample_args.json. Finished chunks survive a preemption: rerun the same command.
The same as `ramvid-sample` and `python -m ramvid.sample`. See docs/SAMPLING.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.sample.command import sample_main

main = sample_main

if __name__ == "__main__":
    main()
