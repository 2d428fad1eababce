"""ramvid: random-mask video diffusion."""
