"""Data preparation for ramvid: the embedded synthetic sprite videos and converters that turn
BAIR robot pushing, UCF-101 and Kinetics-600 into folders the training script reads.

Every script writes `<out_dir>/<split>/<Class>_<id>.<ext>` so that `--class_cond True` finds
the class as the file name's prefix before the first underscore. See docs/DATASETS.md.
"""
