"""Ground-truth clips for sampling: sample i takes clip (i // S) mod K of --data_dir.

Clip j is the first `seq_len` frames of the j-th of the K video files in sorted path order (see
ramvid.data.VideoClipDataset), so every rank, and every run, pairs sample i with the same clip.
S = samples_per_clip: with S = 1 the samples loop over the clips (0, 1, ..., K-1, 0, 1, ...);
with S > 1 each clip conditions S consecutive samples (clip-major, as scripts/video_eval.py reads
a file holding several samples per clip).
"""
import warnings

import torch

from ..data import VideoClipDataset


class ClipSource:
    def __init__(self, data_dir, flags, seq_len=None, samples_per_clip=1):
        if samples_per_clip < 1:
            raise ValueError(f"samples_per_clip={samples_per_clip} must be >= 1")
        self.samples_per_clip = samples_per_clip
        self.dataset = VideoClipDataset(
            data_dir, int(flags["image_size"]), int(seq_len or flags["seq_len"]),
            class_cond=bool(flags["class_cond"]), rgb=bool(flags["rgb"]),
        )
        num_classes = int(flags.get("num_classes") or 0)
        if flags["class_cond"] and self.dataset.num_classes != num_classes:
            warnings.warn(
                f"--data_dir {data_dir} names {self.dataset.num_classes} classes, the model has "
                f"{num_classes}: labels are the data's class indices (sorted file-name prefixes)"
            )

    def __len__(self):
        return len(self.dataset)

    def clip_index(self, sample_index):
        return (sample_index // self.samples_per_clip) % len(self.dataset)

    def clips(self, indices):
        """(videos float (n, C, T, H, W) in [-1, 1], labels LongTensor (n,); -1 = no class)."""
        items = [self.dataset[self.clip_index(i)] for i in indices]
        videos = torch.stack([video for video, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return videos, labels


__all__ = ["ClipSource"]
