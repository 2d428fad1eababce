"""Data preparation for ramvid: the embedded synthetic sprite videos and converters that turn
BAIR robot pushing, UCF-101 and Kinetics-600 into `<out_dir>/<split>/<Class>_<id>.<ext>` files
(the class is the prefix `--class_cond True` reads). See docs/DATASETS.md.
"""
