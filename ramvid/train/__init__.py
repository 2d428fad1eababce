"""Training: the command (`command.main`, flags in `command.TRAIN_FLAGS`), the loop and its
pieces (`loop.train`), the log dir and its checkpoints (`rundir`), what a run writes for people
(`logs`).

    python scripts/video_train.py --data_dir videos/ --preset demo --max_steps 1000
    ramvid-train ... / python -m ramvid.train ...      (the same command, installed)
"""
