"""Training: the command (`command.main`, flags in `command.TRAIN_FLAGS`), the loop
(`loop.train`), EMA, lr schedules, logs, resumable state.

    python scripts/video_train.py --data_dir videos/ --preset demo --max_steps 1000
    ramvid-train ... / python -m ramvid.train ...      (the same command, installed)
"""
