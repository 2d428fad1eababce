"""Every flag of scripts/video_train.py, seen by value in what a real training step receives,
computes or saves.

Each test runs the command in this process (`scripts/video_train.py`'s `main(argv)`) on tiny
GIF clips whose frames are solid colours (lossless, so the clean clip is known exactly) and
observes it at the torch level only:

- the network's inputs and output (`ramvid.unet.UNetModel.forward` wrapped): x_t, the
  timesteps, the class labels, the autocast dtype;
- the gradient of the step's loss with respect to the network's output (a tensor hook). For an
  MSE-trained video i of a batch of N with importance weight w_i it is
  2 w_i (out - target) / (N count_i) on its loss frames and 0 elsewhere (count_i = C H W times
  the number of loss frames), so it reveals the loss frames and the training target;
- the optimiser's learning rate, gradients and weights around every step (global optimiser
  step hooks);
- the files the run writes (modelNNNNNN.pt, ema_RATE_NNNNNN.pt, optNNNNNN.pt, progress.csv,
  args.json).

Expected values come from outside the code under test: the maths of AdamW, the EMA, gradient
clipping and the lr schedules, the noise schedules written out below, the masks' definition.
A second run of the same command is used only where a flag must change nothing
(--fp16_scale_growth), where its maths says "the same result" (microbatches, gradient
checkpointing, data workers), or as the input the maths is applied to (the unclipped gradient
for --clip, the same step's vb and gradients for the vb-scaling flags).

Flags of scripts/video_train.py:

| flag | test | effect shown |
|---|---|---|
| --data_dir | test_data_dir_is_the_clip_the_network_sees | the given frames of x are exactly the frames of that folder's clip, for two folders |
| --schedule_sampler | test_schedule_sampler_draws_timesteps_and_weights_the_loss | received timesteps and each video's loss weight w = 1/(T p(t)): 1 (uniform), 1/(T p) with p ~ 1/(t+1) (harmonic), and p ~ sqrt(E[loss_t^2]) of the recorded losses once every t has 10 (loss-second-moment) |
| --lr | test_lr_and_weight_decay_make_the_first_adamw_update | first update w1 = w0 (1 - lr wd) - lr g / (abs(g) + eps) |
| --weight_decay | test_lr_and_weight_decay_make_the_first_adamw_update | the decoupled decay term -lr wd w0 (alone where g = 0) |
| --lr_anneal_steps | test_anneal_schedule_sets_the_lr_of_every_step | linear: lr (1 - s/N) at update s, and the run ends after N updates |
| --batch_size | test_batch_size_is_the_videos_per_step | videos per forward and the samples column, for 3 and 5 |
| --microbatch | test_microbatches_split_the_batch_into_passes_with_the_same_gradient | forward passes of 3 + 1 videos for batch 4, the same x and gradient as one pass |
| --ema_rate | test_ema_files_hold_the_closed_form_average | file names per rate; ema_k = sum_i (1-r) r^(k-i) w_i + r^k w_0 |
| --log_interval | test_log_interval_rows_average_their_steps | progress.csv rows at multiples only; grad_norm is the mean of the steps' norms |
| --save_interval | test_save_interval_writes_the_weights_of_those_steps | checkpoints at multiples (and the last step) holding the weights after that step |
| --resume_checkpoint | test_resume_checkpoint_starts_from_the_named_files | the first step starts from that model file; the EMA continues from its ema file |
| --use_fp16 | test_use_fp16_on_cpu_is_a_one_line_error | on CPU: exit 2, one line naming --use_fp16, nothing trained or written |
| --bf16 | test_bf16_autocasts_the_network | bfloat16 autocast and output inside the step; none without |
| --fp16_scale_growth | test_fp16_scale_growth_is_ignored | identical bytes of every saved .pt for two values; args.json records the value |
| --clip | test_clip_scales_the_gradient_to_the_threshold | g min(1, c / norm(g)) reaches AdamW (norm c when larger); the logged norm is the raw one |
| --seed | test_seed_sets_initial_weights_and_draws | initial weights = the factory's under torch.manual_seed(seed); masks/noise/timesteps differ |
| --anneal_type | test_anneal_schedule_sets_the_lr_of_every_step | the lr of every update for none, linear, step, time_based |
| --steps_drop | test_anneal_schedule_sets_the_lr_of_every_step | step: lr drop^(s // steps_drop) |
| --drop | test_anneal_schedule_sets_the_lr_of_every_step | step: lr drop^(s // steps_drop) |
| --decay | test_anneal_schedule_sets_the_lr_of_every_step | time_based: lr / (1 + decay s) |
| --max_num_mask_frames | test_max_num_mask_frames_bounds_the_given_frames | given frames per video: none (0), exactly 1 (1), 1..3 with 3 reached (3) |
| --mask_range | test_mask_range_confines_the_given_frames | given frames only in [1, 3) vs anywhere |
| --uncondition_rate | test_uncondition_rate_removes_every_given_frame | rate 1: no given frame; rate 0: every video has 1..K |
| --exclude_conditional | test_exclude_conditional_selects_the_loss_frames | loss frames = free frames (True) or all frames with target 0 on given ones (False) |
| --max_steps | test_max_steps_is_the_number_of_updates | exactly 3 optimiser steps and forwards, exit 0, final checkpoint of step 3 |
| --num_workers | test_num_workers_loads_the_same_batches_in_workers | DataLoader workers 0 / 1, identical network inputs |
| --max_bad_steps | test_max_bad_steps_stops_after_that_many_nonfinite_steps | exit 3 after 1 good + 2 NaN steps; with 0 it never stops; NaN steps never update |
| --dist_timeout | test_dist_timeout_is_the_process_groups_timeout | the process group's timeout is 7.5 s (600 s by default) |
| --sample_interval | test_sample_interval_previews_the_ema_on_held_out_clips | a preview after step 2 only (gif and preview.csv row), with the EMA weights of step 2 |
| --val_data_dir | test_sample_interval_previews_the_ema_on_held_out_clips | the preview's given frames are that folder's clip |
| --log_dir | test_log_dir_is_where_the_run_writes | files in --log_dir, not in $OPENAI_LOGDIR (used without the flag) |
| --overwrite | test_restart.py::test_restart_in_a_used_folder_is_refused_and_touches_nothing | refused without it (bytes unchanged); with True the other run's checkpoints are deleted |
| --break_lock | test_restart.py::test_a_lock_from_another_host_needs_break_lock | False: a log dir locked by another host refuses the run (exit 2, naming --break_lock True); True: taken over with a warning |
| --keep_checkpoints | test_restart.py::test_keep_checkpoints | exactly the newest N complete sets remain |
| --keep_every | test_restart.py::test_keep_checkpoints | multiples of K are kept besides the newest N |
| --compile | test_compile_runs_the_unet_through_torch_compile | torch.compile receives the UNet (dynamic=False) and every forward goes through it |
| --tf32 | test_tf32_sets_the_cuda_backend_flags_only | CUDA matmul/cuDNN allow_tf32 equal the flag during the step; CPU precision unchanged |
| --image_size | test_image_size_is_the_frame_size_the_network_sees | x and output (N, C, T, S, S) for S = 8, 16 |
| --num_channels | test_num_channels_sets_the_saved_widths | first conv and time embedding widths 32 vs 64 |
| --num_res_blocks | test_num_res_blocks_sets_the_saved_blocks | 4 vs 6 input blocks, 4 vs 6 output blocks |
| --num_heads | test_attention_heads_per_path | heads of the down and middle attention calls |
| --num_heads_upsample | test_attention_heads_per_path | heads of the up-path attention calls (-1 = --num_heads) |
| --attention_resolutions | test_attention_resolutions_choose_the_attending_levels | tokens T H W of each attention call: levels at 8/r pixels plus the middle |
| --channel_mult | test_channel_mult_sets_levels_and_widths | middle width 32 vs 64 and its tokens 64 vs 16 (one more level) |
| --dropout | test_dropout_rate_reaches_every_res_block | every ResBlock's dropout runs with p = 0.3 (0.0 by default) in training mode |
| --learn_sigma | test_learn_sigma_doubles_the_output_and_logs_vb | output 6 vs 3 channels (saved conv too); vb column filled vs empty |
| --sigma_small | test_sigma_small_sets_the_fixed_variance_of_the_vb | with --use_kl: output gradient ratio (1 - ab_t) / (1 - ab_{t-1}) (1 at t = 0) |
| --class_cond | test_class_cond_feeds_each_videos_class | y = the file's class index (cat 0, dog 1) per video; label embedding saved; no y without |
| --num_classes | test_num_classes_comes_from_the_data_in_training | 2 label rows for 2 classes whatever --num_classes; without --class_cond: one-line error |
| --diffusion_steps | test_diffusion_steps_set_timesteps_and_noise_levels | x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps with the linear schedule of T = 50, 100; t received as t 1000/T |
| --noise_schedule | test_noise_schedule_sets_the_noise_level_of_x_t | x_t's coefficients follow the cosine schedule, not the linear one |
| --timestep_respacing | test_timestep_respacing_keeps_only_its_steps | training timesteps only among the 10 kept of 50 |
| --use_kl | test_use_kl_trains_on_the_rescaled_bound_alone | loss = T vb, no mse term, vs loss = mse + vb |
| --predict_xstart | test_predict_xstart_sets_the_regression_target | the MSE target is x0 (True) or the noise of x_t (False) |
| --rescale_timesteps | test_rescale_timesteps_sets_the_timestep_values | the network receives t 1000/T (float) or t (integer) |
| --rescale_learned_sigmas | test_rescale_learned_sigmas_scales_the_vb_term | vb(True) / vb(False) = T / 1000 for the same step |
| --use_checkpoint | test_use_checkpoint_recomputes_in_backward_with_the_same_gradient | attention runs twice per step (forward + backward recompute), same gradient |
| --use_scale_shift_norm | test_use_scale_shift_norm_sets_the_embedding_projection | ResBlock embedding projection 2C vs C outputs |
| --scale_time_dim | test_scale_time_dim_halves_the_time_axis | middle attention tokens 4x4x4 vs 2x4x4 |
| --rgb | test_rgb_false_feeds_one_luma_channel | x has 1 channel equal to Pillow's L of the colours |
| --seq_len | test_seq_len_is_the_clip_length | x has 6 or 4 frames: the whole clip or 4 consecutive frames |
| --preset | test_preset_expands_and_explicit_flags_win | demo: batch 4 of 16x16 clips, ema 0.99, x0 target; explicit --lr and --seq_len win |
| --dry_run | test_dry_run_prints_the_config_and_trains_nothing | the resolved config as JSON, exit 0, no forward pass, no log dir |

The tests of another module named in the table show their flag by value through the same
command path (`ramvid.train.main`, which scripts/video_train.py runs).
"""
import csv
import hashlib
import json
import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

import ramvid
from ramvid.unet import UNetModel
from sample_fixtures import load_script, runs_as
from train_fixtures import TINY, free_port

_argv0 = runs_as("video_train")

VIDEO_TRAIN = load_script("video_train")
TINY_VALUES = dict(zip(TINY[::2], TINY[1::2]))
TINY_MODEL = {flag[2:]: value for flag, value in TINY_VALUES.items()
              if flag[2:] in ramvid.model_and_diffusion_defaults()}
STEPS = int(TINY_VALUES["--diffusion_steps"])  # T of the tiny model
K = int(TINY_VALUES["--max_num_mask_frames"])
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which training keeps

# Frame f of clip `name` is filled with COLOURS[name][f] (RGB); every frame of every clip differs.
COLOURS = {name: np.random.default_rng(k).integers(0, 256, (6, 3), dtype=np.uint8)
           for k, name in enumerate(("a", "b", "cat", "dog", "val"))}


# ----------------------------------------------------------------------------- data
def write_gif(path, colours, size=8):
    """A GIF whose frame f is filled with colours[f]: a palette image, so decoding is exact."""
    frames = [Image.fromarray(np.full((size, size, 3), c, np.uint8)) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def clean_clip(name, frames=4, size=8):
    """(C, T, H, W) float64: the clip as training sees it, pixel u -> u / 127.5 - 1."""
    colours = torch.as_tensor(COLOURS[name][:frames], dtype=torch.float64) / 127.5 - 1  # (T, 3)
    return colours.T[:, :, None, None].expand(-1, -1, size, size).clone()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Folders of solid-colour GIFs: `clip` (a 4-frame clip "a": every training video is that
    clip), `other` ("b"), `classes` (cat_0.gif, dog_0.gif), `long` (6 frames of "a"), `val`,
    `val_dog` (dog_1.gif: held-out clip "val" of class dog)."""
    every_frame = np.concatenate(list(COLOURS.values()))
    assert len({tuple(c) for c in every_frame}) == len(every_frame)
    root = tmp_path_factory.mktemp("gifs")
    folders = {}
    for folder, files in {"clip": {"a_0": ("a", 4)}, "other": {"b_0": ("b", 4)},
                          "classes": {"cat_0": ("cat", 4), "dog_0": ("dog", 4)},
                          "long": {"a_0": ("a", 6)}, "val": {"val_0": ("val", 4)},
                          "val_dog": {"dog_1": ("val", 4)}}.items():
        folders[folder] = root / folder
        folders[folder].mkdir()
        for stem, (name, frames) in files.items():
            write_gif(folders[folder] / f"{stem}.gif", COLOURS[name][:frames])
    return SimpleNamespace(**folders)


# ----------------------------------------------------------------------------- running
class Run(SimpleNamespace):
    """What one command did: `code`, `logdir`, `calls` (one dict per network forward: x, t, y,
    out, grad, autocast, tf32, grad_enabled, module), `steps` (one dict per optimiser step:
    lr, before, grad, after; weights and gradients by parameter name), `attention` ((heads,
    tokens) of every attention computation) and `dropout` ((p, training) of every dropout)."""

    @property
    def train_calls(self):
        return [c for c in self.calls if c["grad_enabled"]]

    def rows(self):
        with open(self.logdir / "progress.csv", newline="") as f:
            return list(csv.DictReader(f))

    def load(self, name):
        return torch.load(self.logdir / name, map_location="cpu", weights_only=True)

    def checkpoints(self):
        return sorted(p.name for p in self.logdir.glob("*.pt"))


def train(logdir, data_dir, *flags, poison=None):
    """Run `video_train.py --data_dir DATA_DIR <TINY> --log_dir LOGDIR FLAGS` in this process, on
    the CPU with one thread whatever the machine has, and record it; logdir None: no --log_dir.
    `poison(k)` true: the k-th forward (from 1) returns NaN."""
    calls, steps, attention, dropout = [], [], [], []
    real_forward = UNetModel.forward
    functional = torch.nn.functional
    real_attention, real_dropout = functional.scaled_dot_product_attention, functional.dropout

    def scaled_dot_product_attention(q, k, v, *args, **kwargs):
        attention.append((q.shape[1], q.shape[2]))  # q: (N, heads, tokens, d)
        return real_attention(q, k, v, *args, **kwargs)

    def dropout_(x, p=0.5, training=True, inplace=False):
        dropout.append((p, training))
        return real_dropout(x, p, training, inplace)

    def forward(module, x, timesteps, y=None):
        out = real_forward(module, x, timesteps, y)
        if poison is not None and poison(len(calls) + 1):
            out = out * math.nan
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        call = dict(module=module, x=x.detach().clone(), t=timesteps.detach().clone(),
                    y=None if y is None else y.detach().clone(), out=out.detach().clone(),
                    grad=None, grad_enabled=torch.is_grad_enabled(), autocast=autocast,
                    tf32=(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        if out.requires_grad:
            out.register_hook(lambda grad: call.update(grad=grad.detach().clone()))
        calls.append(call)
        return out

    def named(optimizer, tensors):
        module = next(c["module"] for c in reversed(calls) if c["grad_enabled"])
        name_of = {id(p): n for n, p in module.named_parameters()}
        return {name_of[id(p)]: tensors(p) for p in optimizer.param_groups[0]["params"]}

    def before_step(optimizer, args, kwargs):
        steps.append(dict(lr=optimizer.param_groups[0]["lr"],
                          before=named(optimizer, lambda p: p.detach().clone()),
                          grad=named(optimizer, lambda p: None if p.grad is None
                                     else p.grad.detach().clone())))

    def after_step(optimizer, args, kwargs):
        steps[-1]["after"] = named(optimizer, lambda p: p.detach().clone())

    where = [] if logdir is None else ["--log_dir", str(logdir)]
    argv = ["--data_dir", str(data_dir), *TINY, *where, *map(str, flags)]
    threads = torch.get_num_threads()
    hooks = [register_optimizer_step_pre_hook(before_step),
             register_optimizer_step_post_hook(after_step)]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(UNetModel, "forward", forward)
            patch.setattr(functional, "scaled_dot_product_attention", scaled_dot_product_attention)
            patch.setattr(functional, "dropout", dropout_)
            patch.setattr(torch.cuda, "is_available", lambda: False)
            torch.set_num_threads(1)  # tiny convolutions gain nothing from a second thread
            code = VIDEO_TRAIN.main(argv)
    finally:
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()
    return Run(code=code, logdir=logdir and Path(logdir), calls=calls, steps=steps,
               attention=attention, dropout=dropout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(data_dir, *flags) -> Run; a command that several tests read runs once."""
    done = {}

    def get(data_dir, *flags):
        key = (str(data_dir), *map(str, flags))
        if key not in done:
            done[key] = train(tmp_path_factory.mktemp("run"), data_dir, *flags)
            assert done[key].code == 0, key
        return done[key]

    return get


# Three updates of batch 3 on clip "a", without clipping, a checkpoint after step 2 and at the
# end, two EMA rates, a progress row every 2 steps.
SHARED = ("--batch_size", 3, "--max_steps", 3, "--save_interval", 2, "--log_interval", 2,
          "--ema_rate", "0.5,0.9", "--lr", 0.01, "--weight_decay", 0.5, "--clip", 0)


ONE_STEP = ("--max_steps", 1)  # one video, one update: with no other flag, TINY's defaults


@pytest.fixture(scope="module")
def shared(runs, data):
    return runs(data.clip, *SHARED)


# ----------------------------------------------------------------------------- observations
def given_frames(x, clip):
    """(N, T) bool: the frames of the network input x (N, C, T, H, W) that are exactly the
    clean clip (C, T, H, W); a noised frame never is."""
    return (x.double() - clip).abs().amax(dim=(1, 3, 4)) <= 1e-6


def loss_frames(call):
    """(N, T) bool: the frames where the loss gradient reaches the network output."""
    return call["grad"].abs().amax(dim=(1, 3, 4)) > 0


def element_counts(call):
    """(N,) number of output elements of each video's loss frames."""
    out = call["out"]
    return loss_frames(call).sum(1).double() * out.shape[1] * out.shape[3] * out.shape[4]


def regression_target(call):
    """(N, C, T, H, W) float64: the MSE target out - N count grad / 2 (importance weight 1, one
    pass for the batch), on the loss frames."""
    scale = (len(call["out"]) * element_counts(call) / 2)[:, None, None, None, None]
    return call["out"].double() - call["grad"].double() * scale


def loss_weights(call, clip):
    """(N,) importance weight of each video's MSE term, for an x0-predicting network (target =
    the clean clip): w = N count <grad, out - x0> / (2 |out - x0|^2) over its loss frames."""
    diff = (call["out"].double() - clip) * loss_frames(call)[:, None, :, None, None]
    along = (call["grad"].double() * diff).flatten(1).sum(1)
    return len(diff) * element_counts(call) * along / (2 * diff.pow(2).flatten(1).sum(1))


def alpha_bar(schedule, steps):
    """The cumulative signal fraction of each step: Ho et al.'s linear betas 1e-4..0.02 scaled by
    1000 / T, or Nichol & Dhariwal's cosine alpha-bar (s = 0.008, betas clipped at 0.999)."""
    if schedule == "linear":
        betas = np.linspace(0.1 / steps, 20.0 / steps, steps)
    else:
        f = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
        betas = np.minimum([1 - f[i + 1] / f[i] for i in range(steps)], 0.999)
    return np.cumprod(1 - betas)


def noise_steps(call, clip, table):
    """For each video with a free frame: the step s whose x_t = sqrt(ab_s) x0 + sqrt(1 - ab_s)
    eps the network received, eps being its regression target (epsilon prediction). Asserts
    the least-squares coefficients of x0 and eps are that step's, within 1e-5."""
    eps, frames, x = regression_target(call), loss_frames(call), call["x"].double()
    found = []
    for i in range(len(x)):
        free = frames[i]
        if not free.any():
            found.append(None)
            continue
        design = torch.stack([clip[:, free].flatten(), eps[i][:, free].flatten()], 1)
        a, b = torch.linalg.lstsq(design, x[i][:, free].flatten()[:, None]).solution.flatten()
        step = int(np.argmin(np.abs(np.sqrt(table) - float(a))))
        assert float(a) == pytest.approx(math.sqrt(table[step]), abs=1e-5), (i, float(a))
        assert float(b) == pytest.approx(math.sqrt(1 - table[step]), abs=1e-5), (i, float(b))
        found.append(step)
    return found


def flat(state):
    return torch.cat([v.flatten().double() for v in state.values()])


# ----------------------------------------------------------------------------- data and masks
def test_data_dir_is_the_clip_the_network_sees(runs, data):
    """Every video has 1..K given frames (defaults), and each given frame of x is exactly the
    frame of the folder's clip at that position, for two folders with different clips.

    Seen red with the loader reading the folder beside --data_dir (clip "a") instead of it."""
    for folder, name in ((data.clip, "a"), (data.other, "b")):
        call = runs(folder, "--batch_size", 4, "--max_steps", 1).train_calls[0]
        counts = given_frames(call["x"], clean_clip(name)).sum(1)
        assert ((counts >= 1) & (counts <= K)).all(), (name, counts)


def test_uncondition_rate_removes_every_given_frame(runs, data):
    """--uncondition_rate 1: no video has a given frame; 0: every video has 1..K.

    Seen red with the rate passed as its default 0 to the masks."""
    x0 = clean_clip("a")
    none = runs(data.clip, "--batch_size", 6, "--max_steps", 1, "--uncondition_rate", 1)
    some = runs(data.clip, "--batch_size", 6, "--max_steps", 1, "--uncondition_rate", 0)
    assert not given_frames(none.train_calls[0]["x"], x0).any()
    counts = given_frames(some.train_calls[0]["x"], x0).sum(1)
    assert ((counts >= 1) & (counts <= K)).all(), counts


def test_max_num_mask_frames_bounds_the_given_frames(runs, data):
    """Given frames per video: none with K = 0, exactly one with K = 1, 1..3 with K = 3 and
    some video reaching 3 (12 videos).

    Seen red with K passed as TINY's 2 to the masks."""
    counts = {}
    for k in (0, 1, 3):
        call = runs(data.clip, "--batch_size", 12, "--max_steps", 1,
                    "--max_num_mask_frames", k).train_calls[0]
        counts[k] = given_frames(call["x"], clean_clip("a")).sum(1).tolist()
    assert set(counts[0]) == {0} and set(counts[1]) == {1}
    assert set(counts[3]) <= {1, 2, 3} and max(counts[3]) == 3, counts[3]


def test_mask_range_confines_the_given_frames(runs, data):
    """--mask_range 1,3: given frames only at positions 1 and 2; without it frames 0 and 3 are
    given too (12 videos).

    Seen red with mask_range dropped (None) on its way to the masks."""
    x0 = clean_clip("a")
    ranged = runs(data.clip, "--batch_size", 12, "--max_steps", 1, "--mask_range", "1,3")
    anywhere = runs(data.clip, "--batch_size", 12, "--max_steps", 1)
    inside = given_frames(ranged.train_calls[0]["x"], x0)
    assert inside.sum(1).min() >= 1 and not inside[:, [0, 3]].any()
    assert given_frames(anywhere.train_calls[0]["x"], x0)[:, [0, 3]].any()


def test_exclude_conditional_selects_the_loss_frames(runs, data):
    """Second step (the zero-initialised output layer has moved, so the output is not 0):
    True (default): the loss reaches exactly the frames that are not given. False: it reaches
    every frame, and the target on given frames is 0 (their noise is zeroed: eps-prediction).

    Seen red with exclude_conditional passed as True whatever the flag."""
    x0 = clean_clip("a")
    for value in (True, False):
        call = runs(data.clip, "--batch_size", 6, "--max_steps", 2,
                    "--exclude_conditional", value).train_calls[1]
        given = given_frames(call["x"], x0)
        assert given.any()
        if value:
            assert torch.equal(loss_frames(call), ~given)
        else:
            assert loss_frames(call).all()
            target = regression_target(call).permute(0, 2, 1, 3, 4)[given]  # (given, C, H, W)
            assert target.abs().max() < 1e-5


def test_seq_len_is_the_clip_length(runs, data):
    """From a 6-frame clip: --seq_len 6 gives x of 6 frames, frame f of the clip at position f;
    --seq_len 4 gives 4 consecutive frames s..s+3 of it.

    Seen red with seq_len passed to the loader as TINY's 4."""
    whole = clean_clip("a", frames=6)
    for seq_len in (6, 4):
        x = runs(data.long, "--batch_size", 4, "--max_steps", 1,
                 "--seq_len", seq_len).train_calls[0]["x"]
        assert x.shape == (4, 3, seq_len, 8, 8)
        for video in x:
            assert any(given_frames(video[None], whole[:, s:s + seq_len]).any()
                       for s in range(6 - seq_len + 1)), seq_len


def test_rgb_false_feeds_one_luma_channel(runs, data):
    """--rgb False: x and the output have 1 channel and a given frame is Pillow's "L" (ITU-R
    601-2 luma) of the frame's colour; the saved first conv takes 1 channel.

    Seen red with rgb passed to the loader as True (3 channels reach a 1-channel network)."""
    run = runs(data.clip, "--batch_size", 4, "--max_steps", 1, "--rgb", False)
    call = run.train_calls[0]
    luma = [np.asarray(Image.fromarray(np.full((1, 1, 3), c, np.uint8)).convert("L"))[0, 0]
            for c in COLOURS["a"][:4]]
    gray = (torch.tensor(luma, dtype=torch.float64) / 127.5 - 1)[None, :, None, None]
    assert call["x"].shape[1] == call["out"].shape[1] == 1
    assert given_frames(call["x"], gray.expand(1, 4, 8, 8)).sum(1).min() >= 1
    assert run.load("model000001.pt")["input_blocks.0.0.weight"].shape[1] == 1


def test_image_size_is_the_frame_size_the_network_sees(runs, data):
    """x and the output are (N, 3, 4, S, S) for --image_size 8 and 16 (the 8x8 clip upscaled).

    Seen red with image_size passed to the loader as 8."""
    for size in (8, 16):
        call = runs(data.clip, "--batch_size", 2, "--max_steps", 1,
                    "--image_size", size).train_calls[0]
        assert call["x"].shape == call["out"].shape == (2, 3, 4, size, size)


# ----------------------------------------------------------------------------- optimiser
def test_lr_and_weight_decay_make_the_first_adamw_update(shared):
    """AdamW's first update from zero moments is w1 = w0 (1 - lr wd) - lr g / (|g| + eps)
    (bias-corrected m / sqrt(v) = g / |g|), with --lr 0.01 and --weight_decay 0.5; the zero
    gradients of the layers behind zero-initialised convolutions show the decay alone.

    Seen red with the lr of every update (the schedule's) set to the default 1e-4 instead of
    --lr, and with weight_decay passed to AdamW as 0."""
    step = shared.steps[0]
    assert step["lr"] == 0.01
    zero_grad = 0
    for name, w0 in step["before"].items():
        g = step["grad"][name].double()
        zero_grad += int((g == 0).all())
        expected = w0.double() * (1 - 0.01 * 0.5) - 0.01 * g / (g.abs() + ADAM_EPS)
        torch.testing.assert_close(step["after"][name].double(), expected, rtol=0, atol=2e-7,
                                   msg=name)
    assert 0 < zero_grad < len(step["before"])


def test_clip_scales_the_gradient_to_the_threshold(runs, data):
    """With --clip c AdamW receives g * min(1, c / |g|): norm exactly c when |g| > c, g itself
    when |g| < c (g: the gradient of --clip 0). progress.csv logs |g| (before clipping) in every
    run.

    Seen red with clip passed as 0 (nothing clipped) and with the clipped norm logged."""
    base = ("--batch_size", 2, "--max_steps", 1, "--log_interval", 1)
    raw = runs(data.clip, *base, "--clip", 0)
    g = flat(raw.steps[0]["grad"])
    norm = float(g.norm())
    for clip in (round(norm / 3, 4), round(norm * 3, 4)):
        run = runs(data.clip, *base, "--clip", clip)
        clipped = flat(run.steps[0]["grad"])
        torch.testing.assert_close(clipped, g * min(1.0, clip / norm), rtol=1e-4, atol=1e-9)
        assert float(clipped.norm()) == pytest.approx(min(clip, norm), rel=1e-5)
        assert float(run.rows()[0]["grad_norm"]) == pytest.approx(norm, rel=1e-5)


@pytest.mark.parametrize("flags,lrs", [
    ((), [1e-3] * 2),
    (("--anneal_type", "linear", "--lr_anneal_steps", 4), [1e-3, 0.75e-3, 0.5e-3, 0.25e-3]),
    (("--anneal_type", "step", "--steps_drop", 2, "--drop", 0.5), [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]),
    (("--anneal_type", "time_based", "--decay", 0.5), [1e-3, 1e-3 / 1.5, 1e-3 / 2]),
], ids=["none", "linear", "step", "time_based"])
def test_anneal_schedule_sets_the_lr_of_every_step(runs, data, flags, lrs):
    """The lr AdamW uses at update s (s = 0, 1, ... updates done) is the schedule's closed form:
    lr, lr (1 - s / lr_anneal_steps), lr drop^(s // steps_drop), lr / (1 + decay s); a linear
    schedule ends the run after lr_anneal_steps updates (no --max_steps given).

    Seen red with steps_drop read as 1, drop as 0.1, decay as 0.1 and lr_anneal_steps as 8
    (each alone), and with every schedule computed as "none"."""
    max_steps = () if "linear" in flags else ("--max_steps", len(lrs))
    run = runs(data.clip, "--lr", 1e-3, *flags, *max_steps)
    assert [s["lr"] for s in run.steps] == pytest.approx(lrs, rel=1e-12)


def test_batch_size_is_the_videos_per_step(shared, runs, data):
    """Every forward of a step takes --batch_size videos (3, then 5), and progress.csv counts
    3 per step.

    Seen red with batch_size passed to the loader as 2."""
    assert [c["x"].shape[0] for c in shared.train_calls] == [3, 3, 3]
    assert [int(r["samples"]) for r in shared.rows()] == [6]
    five = runs(data.clip, "--batch_size", 5, "--max_steps", 1)
    assert [c["x"].shape[0] for c in five.train_calls] == [5]


def test_microbatches_split_the_batch_into_passes_with_the_same_gradient(runs, data):
    """--batch_size 4 --microbatch 3: passes of 3 and 1 videos whose inputs are those of the one
    pass of --microbatch -1, and the gradient AdamW receives is the same (up to float32
    summation order).

    Seen red with microbatch passed as the batch size, and with each microbatch's loss weighted
    1/2 instead of size / batch."""
    base = ("--batch_size", 4, "--max_steps", 1, "--clip", 0)
    whole, split = runs(data.clip, *base), runs(data.clip, *base, "--microbatch", 3)
    assert [c["x"].shape[0] for c in whole.train_calls] == [4]
    assert [c["x"].shape[0] for c in split.train_calls] == [3, 1]
    assert torch.equal(torch.cat([c["x"] for c in split.train_calls]), whole.train_calls[0]["x"])
    g = flat(whole.steps[0]["grad"])
    torch.testing.assert_close(flat(split.steps[0]["grad"]), g, rtol=0,
                               atol=1e-5 * float(g.abs().max()))


def test_seed_sets_initial_weights_and_draws(runs, data):
    """The first step starts from the weights `ramvid.create_model_and_diffusion` makes after
    torch.manual_seed(seed), for seeds 0 and 1, and the step's random draws (masks, timesteps,
    noise: the network's x and t) differ between the seeds.

    Seen red with the model created before seeding, and with the step draws seeded by 0."""
    firsts = {}
    for seed in (0, 1):
        run = runs(data.clip, "--batch_size", 4, "--max_steps", 1, "--seed", seed)
        torch.manual_seed(seed)
        model, _ = ramvid.create_model_and_diffusion(**TINY_MODEL)
        for name, value in model.named_parameters():
            assert torch.equal(run.steps[0]["before"][name], value.detach()), (seed, name)
        firsts[seed] = run.train_calls[0]
    assert not torch.equal(firsts[0]["x"], firsts[1]["x"])
    assert not torch.equal(firsts[0]["t"], firsts[1]["t"])


def test_max_bad_steps_stops_after_that_many_nonfinite_steps(data, tmp_path):
    """The network returns NaN from its 2nd forward on. --max_bad_steps 2: exit 3 after 3
    forwards (1 good step, 2 bad); --max_bad_steps 0: all 4 steps run, exit 0. Either way only
    the good step reaches AdamW.

    Seen red with max_bad_steps passed as its default 20."""
    for limit, code, forwards in ((2, 3, 3), (0, 0, 4)):
        run = train(tmp_path / str(limit), data.clip, "--max_steps", 4,
                    "--max_bad_steps", limit, poison=lambda k: k >= 2)
        assert (run.code, len(run.calls), len(run.steps)) == (code, forwards, 1), limit


# ----------------------------------------------------------------------------- files
def test_ema_files_hold_the_closed_form_average(shared):
    """--ema_rate 0.5,0.9 writes one ema file per rate per checkpoint, and the file of step k
    holds sum_i (1 - r) r^(k - i) w_i + r^k w_0 of the weights w_i after each update i
    (w_0 the initial weights), for k = 2 and 3.

    Seen red with the EMA update dropped from the loop, and with every rate's file holding the
    first rate's average."""
    assert shared.checkpoints() == [
        "ema_0.5_000002.pt", "ema_0.5_000003.pt", "ema_0.9_000002.pt", "ema_0.9_000003.pt",
        "model000002.pt", "model000003.pt", "opt000002.pt", "opt000003.pt"]
    weights = [shared.steps[0]["before"]] + [s["after"] for s in shared.steps]
    for rate in (0.5, 0.9):
        for k in (2, 3):
            saved = shared.load(f"ema_{rate}_{k:06d}.pt")
            for name in weights[0]:
                expected = rate ** k * weights[0][name].double() + sum(
                    (1 - rate) * rate ** (k - i) * weights[i][name].double()
                    for i in range(1, k + 1))
                torch.testing.assert_close(saved[name].double(), expected, rtol=0, atol=1e-6,
                                           msg=f"{rate} {k} {name}")


def test_save_interval_writes_the_weights_of_those_steps(shared):
    """--save_interval 2 over 3 steps: model files of steps 2 and 3 only (3: the last step),
    each equal to the weights after that update.

    Seen red with save_interval passed as 1."""
    assert [p for p in shared.checkpoints() if p.startswith("model")] == \
        ["model000002.pt", "model000003.pt"]
    for k in (2, 3):
        saved = shared.load(f"model{k:06d}.pt")
        assert all(torch.equal(saved[n], w) for n, w in shared.steps[k - 1]["after"].items())


def test_max_steps_is_the_number_of_updates(shared):
    """--max_steps 3: three forwards, three AdamW steps, exit 0, the newest checkpoint is step 3.

    Seen red with the run ending after max_steps + 1 updates."""
    assert (shared.code, len(shared.train_calls), len(shared.steps)) == (0, 3, 3)
    assert max(shared.checkpoints()) == "opt000003.pt"


def test_log_interval_rows_average_their_steps(shared):
    """--log_interval 2 over 3 steps: one progress.csv row, step 2, whose grad_norm is the mean
    of the gradient norms of updates 1 and 2 (no clipping: what AdamW received) and lr the lr.

    Seen red with log_interval passed as 1."""
    (row,) = shared.rows()
    norms = [float(flat(s["grad"]).norm()) for s in shared.steps[:2]]
    assert row["step"] == "2" and float(row["lr"]) == 0.01
    assert float(row["grad_norm"]) == pytest.approx(np.mean(norms), rel=1e-5)


def test_resume_checkpoint_starts_from_the_named_files(shared, tmp_path, data):
    """--resume_checkpoint <shared run>/model000002.pt --max_steps 3 in a new log dir: one
    update, starting from that file's weights; the new ema_0.5_000003.pt is 0.5 * the named
    run's ema_0.5_000002.pt + 0.5 * the weights after the update (the EMA continues), and the
    update equals the uninterrupted run's third (AdamW moments restored).

    Seen red with the resume path ignored (a fresh start)."""
    run = train(tmp_path, data.clip, *SHARED, "--resume_checkpoint",
                shared.logdir / "model000002.pt")
    assert run.code == 0 and len(run.steps) == 1
    start = shared.load("model000002.pt")
    assert all(torch.equal(w, start[n]) for n, w in run.steps[0]["before"].items())
    ema, previous = run.load("ema_0.5_000003.pt"), shared.load("ema_0.5_000002.pt")
    for name, w in run.steps[0]["after"].items():
        torch.testing.assert_close(ema[name], 0.5 * previous[name] + 0.5 * w, rtol=0, atol=1e-7)
        torch.testing.assert_close(w, shared.steps[2]["after"][name], rtol=0, atol=1e-7)


def test_log_dir_is_where_the_run_writes(tmp_path, monkeypatch, data):
    """--log_dir wins over $OPENAI_LOGDIR (which stays empty); without it the run writes to
    $OPENAI_LOGDIR.

    Seen red with $OPENAI_LOGDIR taking precedence over --log_dir."""
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    monkeypatch.setenv("OPENAI_LOGDIR", str(env_dir))
    assert train(flag_dir, data.clip, *ONE_STEP).code == 0
    assert (flag_dir / "model000001.pt").is_file() and not env_dir.exists()
    assert train(None, data.clip, *ONE_STEP).code == 0
    assert (env_dir / "model000001.pt").is_file()


def test_fp16_scale_growth_is_ignored(runs, data):
    """--fp16_scale_growth is accepted for compatibility and changes nothing: every saved .pt
    file of a 1-step run is byte-identical for 1e-3 and 0.5; args.json records the value.

    Seen red with the lr of every update multiplied by (1 + value)."""
    hashes = {}
    for value, flags in ((1e-3, ()), (0.5, ("--fp16_scale_growth", 0.5))):
        run = runs(data.clip, *ONE_STEP, *flags)
        hashes[value] = {name: hashlib.sha256((run.logdir / name).read_bytes()).hexdigest()
                         for name in run.checkpoints()}
        assert json.loads((run.logdir / "args.json").read_text())["fp16_scale_growth"] == value
    assert len(hashes[0.5]) == 3 and hashes[1e-3] == hashes[0.5]


def test_sample_interval_previews_the_ema_on_held_out_clips(runs, data):
    """--sample_interval 2 --val_data_dir VAL over 3 steps: one preview, after step 2
    (preview/step_000002.gif and a preview.csv row of step 2). Its network calls (no gradient)
    run the weights of ema_0.9_000002.pt, and their given frames are VAL's clip: frames 0 and 1
    (prediction) and 0 and 3 (infilling), never a frame of the training clip. Without the flags
    no preview call and no preview folder.

    Seen red with the preview fed the live weights instead of the EMA, with sample_interval
    passed as 1, and with the preview clips read from --data_dir."""
    base = ("--batch_size", 2, "--max_steps", 3, "--save_interval", 2, "--ema_rate", 0.9)
    run = runs(data.clip, *base, "--sample_interval", 2, "--val_data_dir", data.val)
    previews = [c for c in run.calls if not c["grad_enabled"]]
    assert previews and len(run.train_calls) == 3
    assert sorted(p.name for p in (run.logdir / "preview").glob("*.gif")) == ["step_000002.gif"]
    with open(run.logdir / "preview" / "preview.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["2"]
    ema = run.load("ema_0.9_000002.pt")
    module = previews[0]["module"]
    assert module is not run.train_calls[0]["module"]
    assert all(torch.equal(p, ema[n]) for n, p in module.named_parameters())
    given = {tuple(given_frames(c["x"], clean_clip("val"))[0].tolist()) for c in previews}
    assert {(True, True, False, False), (True, False, False, True)} <= given  # the two tasks
    assert not any(given_frames(c["x"], clean_clip("a")).any() for c in previews)

    plain = runs(data.clip, *base)
    assert all(c["grad_enabled"] for c in plain.calls) and not (plain.logdir / "preview").exists()


# ----------------------------------------------------------------------------- command line
def test_use_fp16_on_cpu_is_a_one_line_error(tmp_path, capsys, data):
    """Without CUDA: exit code 2, one stderr line naming --use_fp16 and CUDA, no forward pass
    and no log dir.

    Seen red with the CUDA check removed (the run then trains)."""
    with pytest.raises(SystemExit) as stop:
        train(tmp_path / "log", data.clip, "--use_fp16", "True", "--max_steps", 1)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("video_train.py: error: --use_fp16") and "CUDA" in err
    assert not (tmp_path / "log").exists()


def test_dry_run_prints_the_config_and_trains_nothing(tmp_path, capsys, data):
    """--dry_run: exit 0 with the resolved configuration as JSON on stdout (the given --lr,
    TINY's model flags, defaults), no forward pass, no log dir.

    Seen red with --dry_run ignored (the run trains)."""
    with pytest.raises(SystemExit) as stop:
        train(tmp_path / "log", data.clip, "--lr", 3e-3, "--max_steps", 1, "--dry_run")
    config = json.loads(capsys.readouterr().out)
    assert stop.value.code == 0 and not (tmp_path / "log").exists()
    assert config["lr"] == 3e-3 and config["num_channels"] == 32 and config["batch_size"] == 1
    assert config["data_dir"] == str(data.clip) and config["ema_rate"] == "0.9999"
    assert config["max_steps"] == 1


def test_preset_expands_and_explicit_flags_win(runs, data):
    """--preset demo with TINY's explicit flags and --lr 1e-3: the preset's batch of 4, its EMA
    rate 0.99 (file name) and x0-prediction (the MSE target is the clean clip); the explicit
    --lr 1e-3, --image_size 8, --seq_len 4 and --diffusion_steps 50 win over the preset's 5e-4,
    16, 8 and 1000 (timesteps are multiples of 1000 / 50).

    Seen red with the preset's values applied after the explicit flags."""
    run = runs(data.clip, "--preset", "demo", "--lr", 1e-3, "--max_steps", 1)
    call = run.train_calls[0]
    assert call["x"].shape == (4, 3, 4, 8, 8) and run.steps[0]["lr"] == 1e-3
    assert "ema_0.99_000001.pt" in run.checkpoints()
    assert torch.equal(call["t"] % 20, torch.zeros(4))
    frames = loss_frames(call)
    target = regression_target(call).permute(0, 2, 1, 3, 4)[frames]  # (frames, C, H, W)
    clip = clean_clip("a").permute(1, 0, 2, 3).expand(4, -1, -1, -1, -1)[frames]
    assert (target - clip).abs().max() < 1e-5


def test_dist_timeout_is_the_process_groups_timeout(monkeypatch, data, tmp_path):
    """Started as rank 0 of 2 (torchrun's variables), the process group is created with
    timeout = --dist_timeout seconds (7.5), and 600 s by default. (The group is not joined: the
    recording stops the command.)

    Seen red with dist_timeout passed to the set-up as its default 600."""
    class Joined(Exception):
        pass

    seen = []

    def init_process_group(**kwargs):
        seen.append(kwargs["timeout"])
        raise Joined

    for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.distributed, "rendezvous",  # no store: rank 1 never comes
                        lambda *args, **kwargs: iter([(None, 0, 2)]))
    argv = ["--data_dir", str(data.clip), *TINY, "--log_dir", str(tmp_path)]
    for flags in (["--dist_timeout", "7.5"], []):
        with pytest.raises(Joined):
            VIDEO_TRAIN.main([*argv, *flags])
    assert seen == [timedelta(seconds=7.5), timedelta(seconds=600)]


def test_num_workers_loads_the_same_batches_in_workers(data, monkeypatch, tmp_path):
    """--num_workers 1 builds the DataLoader with one worker process (0: none), and the network
    receives the same inputs from the two-file folder: data order and draws do not depend on
    the workers.

    Seen red with num_workers passed to the loader as 0."""
    workers = []
    real_init = torch.utils.data.DataLoader.__init__

    def init(loader, *args, **kwargs):
        workers.append(kwargs.get("num_workers", 0))
        real_init(loader, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", init)
    inputs = {}
    for count in (0, 1):
        run = train(tmp_path / str(count), data.classes, "--batch_size", 2, "--max_steps", 2,
                    "--num_workers", count)
        assert run.code == 0
        inputs[count] = torch.cat([c["x"] for c in run.train_calls])
    assert workers == [0, 1]
    assert torch.equal(inputs[0], inputs[1])


def test_compile_runs_the_unet_through_torch_compile(data, monkeypatch, tmp_path):
    """--compile True hands the UNet (an `ramvid.unet.UNetModel`, dynamic=False) to
    torch.compile once, every training forward goes through the compiled callable, and the
    saved state dict has plain names (no `_orig_mod.`). --compile False never calls it.

    Seen red with compile passed as False."""
    compiled, through = [], []

    def fake_compile(model, **kwargs):
        compiled.append((model, kwargs))

        def run(*args, **kw):
            through.append(1)
            return model(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = train(tmp_path / "eager", data.clip, *ONE_STEP)
    assert plain.code == 0 and compiled == []
    run = train(tmp_path / "compiled", data.clip, *ONE_STEP, "--compile", True)
    assert run.code == 0 and len(compiled) == 1
    model, kwargs = compiled[0]
    assert isinstance(model, UNetModel) and kwargs == {"dynamic": False}
    assert len(through) == len(run.train_calls) == 1
    assert not any(k.startswith("_orig_mod") for k in run.load("model000001.pt"))


def test_tf32_sets_the_cuda_backend_flags_only(data, tmp_path):
    """During the step the CUDA matmul and cuDNN allow_tf32 flags equal --tf32 (each set to the
    opposite before the run); the CPU's float32 precision settings (oneDNN matmul and conv, the
    generic default) stay as they were.

    Seen red with tf32 passed to the set-up as True."""
    cuda, cudnn, backends = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends
    before = (cuda.allow_tf32, cudnn.allow_tf32)

    def cpu_precision():
        return (backends.fp32_precision, backends.mkldnn.matmul.fp32_precision,
                backends.mkldnn.conv.fp32_precision)

    cpu = cpu_precision()
    try:
        for value in (True, False):
            cuda.allow_tf32 = cudnn.allow_tf32 = not value
            run = train(tmp_path / str(value), data.clip, "--max_steps", 1, "--tf32", value)
            assert run.code == 0 and run.calls[0]["tf32"] == (value, value)
            assert cpu_precision() == cpu
    finally:
        cuda.allow_tf32, cudnn.allow_tf32 = before


def test_bf16_autocasts_the_network(runs, data):
    """--bf16 True: the network runs under CPU autocast to bfloat16 (its output is bfloat16);
    False: no autocast, float32 output.

    Seen red with bf16 passed as False to the autocast."""
    for value, dtype, out in ((True, torch.bfloat16, torch.bfloat16), (False, None, torch.float32)):
        call = runs(data.clip, *ONE_STEP, *(("--bf16", True) if value else ())).train_calls[0]
        assert (call["autocast"], call["out"].dtype) == (dtype, out), value


# ----------------------------------------------------------------------------- diffusion
NOISE = ("--batch_size", 8, "--max_steps", 2)  # 16 draws of (mask, t, noise) on clip "a"


def test_diffusion_steps_set_timesteps_and_noise_levels(runs, data):
    """For T = 50 and 100 (linear schedule), every video's x_t is sqrt(ab_s) x0 + sqrt(1 - ab_s)
    eps for a step s of that T's schedule (eps: the regression target), and the network receives
    t = s 1000 / T.

    Seen red with diffusion_steps passed to the diffusion as 50 whatever the flag."""
    for steps, flags in ((50, ()), (100, ("--diffusion_steps", 100))):
        run, table, seen = runs(data.clip, *NOISE, *flags), alpha_bar("linear", steps), 0
        for call in run.train_calls:
            for i, s in enumerate(noise_steps(call, clean_clip("a"), table)):
                if s is not None:
                    assert float(call["t"][i]) == pytest.approx(s * 1000 / steps, rel=1e-6)
                    seen += 1
        assert seen >= 12, steps


def test_noise_schedule_sets_the_noise_level_of_x_t(runs, data):
    """--noise_schedule cosine: x_t's coefficients are those of the cosine schedule at the step
    the network receives (t 1000 / T), where the linear schedule's differ by more than 1e-3.

    Seen red with noise_schedule passed as "linear"."""
    cosine, linear = alpha_bar("cosine", STEPS), alpha_bar("linear", STEPS)
    run, seen = runs(data.clip, *NOISE, "--noise_schedule", "cosine"), 0
    for call in run.train_calls:
        for i, s in enumerate(noise_steps(call, clean_clip("a"), cosine)):
            if s is not None:
                assert float(call["t"][i]) == pytest.approx(s * 1000 / STEPS, rel=1e-6)
                seen += abs(math.sqrt(cosine[s]) - math.sqrt(linear[s])) > 1e-3
    assert seen >= 8


def test_rescale_timesteps_sets_the_timestep_values(runs, data):
    """For the step s of x_t's noise level: --rescale_timesteps True (default) feeds the network
    t = s 1000 / T as float, False the integer index s.

    Seen red with rescale_timesteps passed as True."""
    table = alpha_bar("linear", STEPS)
    for value, flags in ((True, ()), (False, ("--rescale_timesteps", False))):
        for call in runs(data.clip, *NOISE, *flags).train_calls:
            assert call["t"].dtype == (torch.float32 if value else torch.int64)
            for i, s in enumerate(noise_steps(call, clean_clip("a"), table)):
                if s is not None:
                    assert float(call["t"][i]) == pytest.approx(s * 1000 / STEPS if value else s)


def test_timestep_respacing_keeps_only_its_steps(runs, data):
    """--timestep_respacing 10 (training uses the respaced process, as the original code does):
    every x_t is at one of the 10 kept steps round(j 49 / 9) of the 50, and the network receives
    that original step's s 1000 / 50.

    Seen red with the respacing dropped from the diffusion that training uses."""
    kept = {round(j * 49 / 9) for j in range(10)}
    table, steps = alpha_bar("linear", STEPS), []
    for call in runs(data.clip, *NOISE, "--timestep_respacing", 10).train_calls:
        for i, s in enumerate(noise_steps(call, clean_clip("a"), table)):
            if s is not None:
                assert float(call["t"][i]) == pytest.approx(s * 1000 / STEPS, rel=1e-6)
                steps.append(s)
    assert len(steps) >= 12 and set(steps) <= kept, steps


def test_predict_xstart_sets_the_regression_target(runs, data):
    """--predict_xstart True: the MSE target on the loss frames is the clean clip x0. False: it
    is the noise eps of x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (checked inside noise_steps), far
    from x0.

    Seen red with predict_xstart passed as False."""
    x0 = clean_clip("a").permute(1, 0, 2, 3)  # (T, C, H, W)
    for value, flags in ((True, ("--predict_xstart", True)), (False, ())):
        for call in runs(data.clip, *NOISE, *flags).train_calls:
            frames = loss_frames(call)
            target = regression_target(call).permute(0, 2, 1, 3, 4)[frames]  # (F, C, H, W)
            clean = x0.expand(len(frames), -1, -1, -1, -1)[frames]
            if value:
                assert (target - clean).abs().max() < 1e-5
            else:
                assert (target - clean).abs().max() > 0.5
                noise_steps(call, clean_clip("a"), alpha_bar("linear", STEPS))


@pytest.mark.parametrize("sampler", ["uniform", "harmonic", "loss-second-moment"])
def test_schedule_sampler_draws_timesteps_and_weights_the_loss(runs, data, sampler):
    """T = 2 (cosine), x0-prediction, 8 videos per step (5 steps for loss-second-moment, else
    2). The network receives
    t in {0, 500}, and each video's MSE term is weighted (read from the output gradient) by
    1 / (T p(t)) of the sampler's p: uniform 1; harmonic p ~ 1 / (t + 1), so 0.75 and 1.5;
    loss-second-moment: 1 until every t has 10 recorded losses, then
    p = 0.999 sqrt(E[loss_t^2]) / sum + 0.001 / T over the last 10 per-video losses of each t
    (computed here from the network's outputs of the earlier steps).

    Seen red with the sampler chosen as "uniform" whatever the flag, and with the loss history
    not updated (loss-second-moment then stays uniform)."""
    steps = 5 if sampler == "loss-second-moment" else 2
    run = runs(data.clip, "--diffusion_steps", 2, "--noise_schedule", "cosine",
               "--predict_xstart", True, "--batch_size", 8, "--max_steps", steps,
               "--schedule_sampler", sampler)
    x0, history, weighted_steps = clean_clip("a"), {0: [], 1: []}, 0
    for call in run.train_calls:
        assert set(call["t"].tolist()) <= {0.0, 500.0}
        t = (call["t"] / 500).long()
        if sampler == "harmonic":
            p = np.array([1.0, 0.5]) / 1.5
        elif sampler == "loss-second-moment" and min(map(len, history.values())) >= 10:
            rms = np.array([math.sqrt(np.mean(np.square(history[s][-10:]))) for s in (0, 1)])
            p = 0.999 * rms / rms.sum() + 0.001 / 2
            weighted_steps += 1
        else:
            p = np.array([0.5, 0.5])
        expected = torch.as_tensor(1 / (2 * p[t.numpy()]))
        torch.testing.assert_close(loss_weights(call, x0), expected, rtol=1e-4, atol=0)
        error = (call["out"].double() - x0).pow(2) * loss_frames(call)[:, None, :, None, None]
        for s, loss in zip(t.tolist(), (error.flatten(1).sum(1) / element_counts(call))):
            history[s].append(float(loss))
    if sampler == "loss-second-moment":
        assert weighted_steps >= 2


def test_learn_sigma_doubles_the_output_and_logs_vb(runs, data):
    """--learn_sigma True: 6 output channels (mean and variance of 3), the saved output conv
    has 6 filters, progress.csv has a vb value; False: 3, 3 and an empty vb.

    Seen red with learn_sigma passed as False to the model and diffusion."""
    for value, channels in ((True, 6), (False, 3)):
        run = runs(data.clip, "--batch_size", 2, "--max_steps", 1, "--log_interval", 1,
                   "--learn_sigma", value)
        assert run.train_calls[0]["out"].shape[1] == channels
        assert run.load("model000001.pt")["out.2.weight"].shape[0] == channels
        assert (run.rows()[0]["vb"] != "") == value


LEARNED = ("--batch_size", 2, "--max_steps", 1, "--log_interval", 1, "--learn_sigma", True)


def test_rescale_learned_sigmas_scales_the_vb_term(runs, data):
    """With --learn_sigma True, the same step's vb term is T / 1000 = 0.05 times as large with
    --rescale_learned_sigmas True as with False, its mse the same, and loss = mse + vb.

    Seen red with rescale_learned_sigmas passed as False."""
    scaled, plain = (runs(data.clip, *LEARNED, "--rescale_learned_sigmas", v).rows()[0]
                     for v in (True, False))
    assert float(scaled["vb"]) == pytest.approx(float(plain["vb"]) * STEPS / 1000, rel=2e-5)
    assert scaled["mse"] == plain["mse"]
    for row in (scaled, plain):
        assert float(row["loss"]) == pytest.approx(float(row["mse"]) + float(row["vb"]), rel=2e-5)


def test_use_kl_trains_on_the_rescaled_bound_alone(runs, data):
    """--use_kl True: the loss is the variational bound times T (loss = 50 vb), with no mse
    term; False: loss = mse + vb.

    Seen red with use_kl passed as False."""
    kl = runs(data.clip, *LEARNED, "--use_kl", True).rows()[0]
    hybrid = runs(data.clip, *LEARNED, "--use_kl", False).rows()[0]
    assert kl["mse"] == "" and float(kl["loss"]) == pytest.approx(STEPS * float(kl["vb"]), rel=2e-5)
    assert float(hybrid["loss"]) == pytest.approx(float(hybrid["mse"]) + float(hybrid["vb"]),
                                                  rel=2e-5)


def test_sigma_small_sets_the_fixed_variance_of_the_vb(runs, data):
    """With --use_kl True and a fixed variance, the KL's gradient with respect to the network
    output is proportional to 1 / sigma^2. sigma^2 is beta_s (False) or the posterior variance
    beta_s (1 - ab_{s-1}) / (1 - ab_s) (True), so the same step's gradients differ per video by
    the factor (1 - ab_s) / (1 - ab_{s-1}), and by 1 at s = 0 (both decoders use the posterior
    variance of step 1).

    Seen red with sigma_small passed as False."""
    table = alpha_bar("linear", STEPS)
    small, large = (runs(data.clip, "--batch_size", 8, "--max_steps", 1, "--use_kl", True,
                         "--sigma_small", v).train_calls[0] for v in (True, False))
    assert torch.equal(small["t"], large["t"])
    s = (large["t"] * STEPS / 1000).round().long().numpy()
    ratio = np.where(s > 0, (1 - table[s]) / (1 - table[np.maximum(s - 1, 0)]), 1.0)
    assert ratio.max() > 1.01, s
    expected = large["grad"].double() * torch.as_tensor(ratio)[:, None, None, None, None]
    torch.testing.assert_close(small["grad"].double(), expected, rtol=1e-4,
                               atol=1e-6 * float(expected.abs().max()))


def test_class_cond_feeds_each_videos_class(runs, data):
    """--class_cond True on cat_0.gif and dog_0.gif: the network receives y = 0 for each video
    whose given frames are the cat clip and 1 for the dog clip (classes sorted by name), and the
    saved model has a label embedding of 2 rows; without it, no y and no embedding.

    Seen red with the labels passed as all zeros, and with class_cond passed as False."""
    run = runs(data.classes, "--batch_size", 6, "--max_steps", 1, "--class_cond", True)
    call = run.train_calls[0]
    cat = given_frames(call["x"], clean_clip("cat")).any(1)
    dog = given_frames(call["x"], clean_clip("dog")).any(1)
    assert torch.equal(cat, ~dog) and cat.any() and dog.any()
    assert torch.equal(call["y"], dog.long())
    assert run.load("model000001.pt")["label_emb.weight"].shape == (2, 128)

    plain = runs(data.classes, "--batch_size", 6, "--max_steps", 1)
    assert plain.train_calls[0]["y"] is None
    assert not any(k.startswith("label_emb") for k in plain.load("model000001.pt"))


def test_num_classes_comes_from_the_data_in_training(runs, data, tmp_path, capsys):
    """With --class_cond True training takes the class count from the data (as its help says):
    --num_classes 5 on 2 classes still gives a 2-row label embedding and num_classes 2 in
    args.json. Without --class_cond it is a one-line error naming --num_classes.

    Seen red with the data's count replaced by the flag's value."""
    run = runs(data.classes, "--batch_size", 2, "--max_steps", 1, "--class_cond", True,
               "--num_classes", 5)
    assert run.load("model000001.pt")["label_emb.weight"].shape[0] == 2
    assert json.loads((run.logdir / "args.json").read_text())["num_classes"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train(tmp_path, data.classes, "--num_classes", 3)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--num_classes" in err, err


def test_preview_labels_are_the_training_classes(runs, data):
    """--class_cond True on cat_0.gif and dog_0.gif (cat = 0, dog = 1, as args.json's
    class_names says) with --sample_interval 1 --val_data_dir holding only dog_1.gif: every
    preview call of the network must receive y = 1, the label the network was trained to read
    as dog. Seen red before the preview mapped the held-out classes by name (every preview
    call received y = 0: the folder's own numbering, ["dog"] -> dog = 0)."""
    run = runs(data.classes, "--batch_size", 2, "--max_steps", 1, "--class_cond", True,
               "--sample_interval", 1, "--val_data_dir", data.val_dog)
    assert json.loads((run.logdir / "args.json").read_text())["class_names"] == ["cat", "dog"]
    previews = [c for c in run.calls if not c["grad_enabled"]]
    assert previews and all(given_frames(c["x"], clean_clip("val")).any() for c in previews)
    assert all(torch.equal(c["y"], torch.ones_like(c["y"])) for c in previews)


# ----------------------------------------------------------------------------- network


def test_num_channels_sets_the_saved_widths(runs, data):
    """--num_channels 32 (TINY) / 64: the first conv has that many filters and the time
    embedding maps C -> 4C.

    Seen red with num_channels passed to the model as 32."""
    for channels, flags in ((32, ()), (64, ("--num_channels", 64))):
        state = runs(data.clip, *ONE_STEP, *flags).load("model000001.pt")
        assert state["input_blocks.0.0.weight"].shape == (channels, 3, 3, 3, 3)
        assert state["time_embed.0.weight"].shape == (4 * channels, channels)


def test_num_res_blocks_sets_the_saved_blocks(runs, data):
    """Two levels: 1 + 2 n + 1 input blocks (stem, n per level, one downsampling) and 2 (n + 1)
    output blocks: 4 and 4 for n = 1 (TINY), 6 and 6 for n = 2.

    Seen red with num_res_blocks passed to the model as 1."""
    for count, flags in ((4, ()), (6, ("--num_res_blocks", 2))):
        state = runs(data.clip, *ONE_STEP, *flags).load("model000001.pt")
        for path in ("input_blocks", "output_blocks"):
            assert len({k.split(".")[1] for k in state if k.startswith(path + ".")}) == count


def test_use_scale_shift_norm_sets_the_embedding_projection(runs, data):
    """True (default): a ResBlock's timestep projection gives scale and shift (2 x 32 outputs);
    False: one added vector (32).

    Seen red with use_scale_shift_norm passed as True."""
    for rows, flags in ((64, ()), (32, ("--use_scale_shift_norm", False))):
        state = runs(data.clip, *ONE_STEP, *flags).load("model000001.pt")
        assert state["input_blocks.1.0.emb_layers.1.weight"].shape == (rows, 128)


def test_channel_mult_sets_levels_and_widths(runs, data):
    """--channel_mult 1,1: the middle block has 32 channels and attends over 4x4x4 tokens;
    1,2,2: 64 channels, one more halving, 4x2x2 tokens.

    Seen red with channel_mult passed to the model as TINY's 1,2."""
    for mult, width, tokens in (("1,1", 32, 64), ("1,2,2", 64, 16)):
        run = runs(data.clip, *ONE_STEP, "--channel_mult", mult)
        assert run.load("model000001.pt")["middle_block.0.in_layers.2.weight"].shape[0] == width
        assert min(t for _, t in run.attention) == tokens


def test_attention_resolutions_choose_the_attending_levels(runs, data):
    """Attention calls of one forward, (heads, tokens T H W): TINY's 4 is the 4x4 level (4 x 4 x 4
    tokens, once down and twice up) and the middle block; 8 is the 8x8 level (4 x 8 x 8 = 256)
    and the middle; an empty list leaves the middle block alone.

    Seen red with attention_resolutions passed to the model as TINY's 4."""
    at_4x4, at_8x8 = (4, 4 * 4 * 4), (4, 4 * 8 * 8)  # (heads, tokens); the middle block is 4x4
    for flags, expected in (((), [at_4x4] * 4),
                            (("--attention_resolutions", "8"), [at_8x8, at_4x4, at_8x8, at_8x8]),
                            (("--attention_resolutions", ""), [at_4x4])):
        assert runs(data.clip, *ONE_STEP, *flags).attention == expected, flags


def test_attention_heads_per_path(runs, data):
    """Heads of the attention calls of one forward (down level, middle, up level twice):
    --num_heads 2 gives 2 everywhere (num_heads_upsample -1); with --num_heads_upsample 8 the
    up path uses 8.

    Seen red with num_heads passed to the model as 4, and with the up path given num_heads."""
    for flags, heads in ((("--num_heads", 2), [2, 2, 2, 2]),
                         (("--num_heads", 2, "--num_heads_upsample", 8), [2, 2, 8, 8])):
        assert [h for h, _ in runs(data.clip, *ONE_STEP, *flags).attention] == heads, flags


def test_scale_time_dim_halves_the_time_axis(runs, data):
    """--scale_time_dim 2 makes the one downsampling also halve time: every attention call (at
    the 4x4 level) sees 2 x 4 x 4 tokens instead of TINY's (0) 4 x 4 x 4; input and output keep
    4 frames.

    Seen red with scale_time_dim passed to the model as 0."""
    for tokens, flags in ((64, ()), (32, ("--scale_time_dim", 2))):
        run = runs(data.clip, *ONE_STEP, *flags)
        assert {t for _, t in run.attention} == {tokens}
        assert run.calls[0]["out"].shape[2] == 4


def test_use_checkpoint_recomputes_in_backward_with_the_same_gradient(runs, data):
    """--use_checkpoint True: each of the 4 attention blocks runs twice per step (forward, then
    recomputed in the backward pass) instead of once, and AdamW receives the same gradient.

    Seen red with use_checkpoint passed to the model as False."""
    grads = {}
    for value, calls in ((False, 4), (True, 8)):
        run = runs(data.clip, "--batch_size", 2, "--max_steps", 1, "--clip", 0,
                   "--use_checkpoint", value)
        assert len(run.attention) == calls
        grads[value] = flat(run.steps[0]["grad"])
    torch.testing.assert_close(grads[True], grads[False], rtol=0,
                               atol=1e-6 * float(grads[False].abs().max()))


def test_dropout_rate_reaches_every_res_block(runs, data):
    """Every dropout of the step's forward (one per ResBlock: 2 down, 2 middle, 4 up) runs in
    training mode with p = --dropout: 0.3, and 0.0 by default.

    Seen red with dropout passed to the model as 0."""
    for p, flags in ((0.3, ("--dropout", 0.3)), (0.0, ())):
        assert runs(data.clip, *ONE_STEP, *flags).dropout == [(p, True)] * 8, flags
