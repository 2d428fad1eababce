"""The 3D UNet that predicts noise (and optionally variance) for a whole video at once.

Every convolution is 3D (kernel 3x3x3), attention blocks attend over all T*H*W positions of a
feature map, and the parameter names and shapes are those of published RaMViD checkpoints, so
`model.load_state_dict(torch.load(path, weights_only=True))` works on them.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class UNetConfig:
    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: Tuple[int, ...]  # downsampling rates ds at which attention sits
    channel_mult: Tuple[int, ...]
    dropout: float = 0.0
    num_classes: Optional[int] = None
    use_checkpoint: bool = False
    num_heads: int = 4
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    scale_time_dim: int = 0
    seq_len: int = 20

    def __post_init__(self):
        widths = [self.model_channels * m for m in self.channel_mult]
        for flag, width in [("num_channels", self.model_channels)] + [
                ("num_channels x channel_mult", w) for w in widths]:
            if width % 32:
                raise ValueError(f"{flag}={width} is not divisible by 32 (GroupNorm uses 32 "
                                 "groups)")
        for flag, heads in (("num_heads", self.num_heads),
                            ("num_heads_upsample", self.heads_upsample)):
            if heads < 1 or any(width % heads for width in widths):
                raise ValueError(f"{flag}={heads} must divide the channel counts {widths}")
        if self.scale_time_dim < 0:
            raise ValueError(f"scale_time_dim={self.scale_time_dim} must be >= 0")
        halvings = self.time_strides().count(2)
        if self.scale_time_dim > 0 and 2 ** halvings > self.seq_len:
            raise ValueError(f"scale_time_dim={self.scale_time_dim} halves time {halvings} times, "
                             f"more than seq_len={self.seq_len} frames allow")

    @property
    def heads_upsample(self):
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    def time_strides(self):
        """Temporal stride of each downsampling step: level k halves time while S // 2^(k+1) > 0."""
        return [2 if self.scale_time_dim // 2 ** (level + 1) > 0 else 1
                for level in range(len(self.channel_mult) - 1)]


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps: (N,) -> (N, dim), cos then sin
    (dim is even: a multiple of 32)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, its statistics in float32 even under autocast (a low-precision
    variance over T*H*W drifts)."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).type(x.dtype)


def zero_module(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm_silu(norm, x, scale, shift):
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


def norm_silu(norm, x, scale=None, shift=None):
    """silu(norm(x) * (1 + scale) + shift), keeping only x for the backward pass: both are cheap
    to recompute, and each would keep a full-size feature map alive (docs/PERFORMANCE.md)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(_norm_silu, norm, x, scale, shift, use_reentrant=False)
    return _norm_silu(norm, x, scale, shift)


class TimestepEmbedSequential(nn.Sequential):
    """Layers of one UNet block: a ResBlock also takes the timestep embedding, an Upsample the
    (T, H, W) to land on."""

    def forward(self, x, emb, out_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's (T, H, W), then a 3x3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x, out_size):
        # (N, C, T, H, W); out_size is the recorded (T, H, W) of the level above, so odd
        # temporal lengths (7 -> 4 on the way down) are restored exactly on the way up.
        x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, channels, time_stride):
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=(time_stride, 2, 2), padding=1)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, dropout, out_channels, use_scale_shift_norm,
                 use_checkpoint):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv3d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        norm_in, _, conv_in = self.in_layers
        norm_out, _, dropout, conv_out = self.out_layers
        h = conv_in(norm_silu(norm_in, x))
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]  # (N, C', 1, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_silu(norm_out, h, scale, shift)
        else:
            h = norm_silu(norm_out, h + emb_out)
        return self.skip_connection(x) + conv_out(dropout(h))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all T*H*W positions (full spatio-temporal attention)."""

    def __init__(self, channels, num_heads, use_checkpoint):
        super().__init__()
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x):
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)  # (N, C, L), L = T*H*W
        # The 1x1 convolutions run as linear maps over channels-last tokens, so q, k and v
        # come out with unit stride in the head dimension, which the fused attention
        # kernels need (otherwise SDPA falls back to materialising the L x L matrix).
        tokens = self.norm(x).transpose(1, 2)  # (N, L, C)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # (N, L, 3C)
        # q/k/v are split per head: channels [h*3d, (h+1)*3d) hold head h's q, k, v.
        head_dim = c // self.num_heads
        qkv = qkv.reshape(n, -1, self.num_heads, 3 * head_dim).transpose(1, 2)  # (N, h, L, 3d)
        q, k, v = qkv.split(head_dim, dim=-1)  # each (N, h, L, d)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v: (N, h, L, d)
        h = h.transpose(1, 2).reshape(n, -1, c)  # (N, L, C)
        h = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias)  # (N, L, C)
        return (x + h.transpose(1, 2)).reshape(n, c, *spatial)


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res_block(ch_in, ch_out):
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm,
                            cfg.use_checkpoint)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv3d(cfg.in_channels, mc, 3, padding=1))]
        )
        skip_channels = [mc]
        ch, ds = mc, 1
        time_strides = cfg.time_strides()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res_block(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.use_checkpoint))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, time_strides[level])))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), AttentionBlock(ch, cfg.num_heads, cfg.use_checkpoint), res_block(ch, ch)
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.heads_upsample, cfg.use_checkpoint))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(  # applied as norm_silu + conv in forward
            GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv3d(ch, cfg.out_channels, 3, padding=1))
        )

    def forward(self, x, timesteps, y=None):
        """x: (N, C, T, H, W); timesteps: (N,) already rescaled; y: (N,) class labels."""
        if (y is not None) != (self.config.num_classes is not None):
            raise ValueError("pass class labels y exactly when the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)

        h = x
        skips = []
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # An upsampling block must land on the (T, H, W) of the next skip it meets.
            out_size = skips[-1].shape[2:] if skips else None
            h = module(h, emb, out_size)
        norm, _, conv = self.out
        return conv(norm_silu(norm, h))
