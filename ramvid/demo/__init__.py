"""The `make demo` pieces: baselines a video model must beat, scoring, the demo's pipeline, the
shipped checkpoint, and the command (ramvid.demo.command:main)."""
from ..metrics.frame_metrics import copy_last_given, linear_interpolation, mean_frame
from .report import format_table, plot_training_loss, read_progress, score, score_task

__all__ = ["copy_last_given", "format_table", "linear_interpolation", "mean_frame",
           "plot_training_loss", "read_progress", "score", "score_task"]
