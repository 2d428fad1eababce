"""Every flag of the sampling and evaluation commands is seen to change a real step.

The scripts run in-process through their command path; ramvid.unet.UNetModel.forward is
recorded (inputs, timesteps, labels, outputs) and what the network receives, what the sampler
computes from it and what is written is compared with the maths, computed here from
REFERENCE.md's formulas (schedules, respacing, DDPM, DDIM and DPM-Solver++(2M) steps), with
videos decoded here by PyAV and with scores computed here by hand. Shared flags are tested on
all three scripts (the parametrisation names the script); video_sample_long.py runs them on
one window (6 frames, 2 start frames).

Accepted and deliberately ignored when sampling: --use_kl and --rescale_learned_sigmas
(training losses), --use_checkpoint (gradient checkpointing), --dropout (the network runs in
eval mode); test_training_flags_change_no_sample shows the samples do not change.

Flags of scripts/video_sample.py, scripts/video_sample_long.py and scripts/video_eval.py:

| flag | test | effect shown |
|---|---|---|
| --model_path | test_model_path_picks_the_weights | network outputs = a UNet with that file's state dict, not the other file's |
| --seed | test_seed_sets_each_samples_noise | x_T of sample i is N(0, 1) from (seed, i): equal in batches of 2 and 1, other with another seed |
| --sampler | test_sampler_steps_follow_their_update_rule | next network input = the DDIM / DDPM / DPM-Solver++(2M) step of the call before |
| --use_ddim | test_use_ddim_is_sampler_ddim | the bytes of --sampler ddim, not DDPM's |
| --eta | test_eta_draws_noise | 0: next input = DDIM mean exactly; 1: mean + sigma_eta N(0, 1) |
| --clip_denoised | test_clip_denoised_clips_pred_x0 | the DDIM step uses x0 clipped to [-1, 1] (True) or unclipped (False) |
| --resample_steps | test_resample_steps_repeat_each_step | 2 calls per step, re-noised sqrt(1 - beta) x + sqrt(beta) N(0, 1) in between |
| --guidance_scale | test_guidance_scale_calls_twice_with_given_frames_noised | 3: 2 calls per step, the second with the given frames diffused, the step on the mixed output; 1: 1 call |
| --data_dir | test_data_dir_clip_i_is_the_ith_sorted_file | sample i is given the first frames of the i-th sorted file (runs that use every file) |
| --compile | test_compile_calls_torch_compile | True: the UNet handed to torch.compile and sampled through its result; False: not called |
| --tf32 | test_tf32_sets_cuda_backend_flags_only | CUDA matmul and cuDNN allow_tf32 = the value during the calls; CPU samples byte-identical |
| --bf16 | test_bf16_runs_the_network_under_autocast | True: every call under bfloat16 autocast, x float32, record precision bf16; False: float32 |
| --use_fp16 | test_use_fp16_needs_a_cuda_gpu | True without CUDA: one line naming the flag, no call; with --bf16: choose one |
| --break_lock | test_break_lock_takes_over_a_lock_from_another_host | False: a lock of another host refuses the run; True: taken over, sampled, released |
| --image_size | test_model_flag_on_the_command_line_wins_over_args_json | network input H = W = 8 (args.json's 16: the checkpoint does not fit) |
| --num_channels | test_model_flag_on_the_command_line_wins_over_args_json | the checkpoint's 32 channels load (args.json's 64 do not fit) |
| --num_res_blocks | test_model_flag_on_the_command_line_wins_over_args_json | 1 block per level loads (args.json's 2 do not fit) |
| --num_heads | test_model_flag_on_the_command_line_wins_over_args_json | network outputs = a UNet with 2 heads on the same inputs (4 heads differ) |
| --num_heads_upsample | test_model_flag_on_the_command_line_wins_over_args_json | network outputs = a UNet with 1 upsampling head (-1 = 2 heads differ) |
| --attention_resolutions | test_model_flag_on_the_command_line_wins_over_args_json | attention at 8 px // 4 loads (args.json's 2 does not fit) |
| --channel_mult | test_model_flag_on_the_command_line_wins_over_args_json | 1,2 loads (args.json's 1,2,2 does not fit) |
| --dropout | test_model_flag_on_the_command_line_wins_over_args_json, test_training_flags_change_no_sample | Dropout(p=0.25) in the network (args.json: 0.0); IGNORED when sampling: eval mode, samples byte-identical with 0.0 |
| --learn_sigma | test_model_flag_on_the_command_line_wins_over_args_json | C output channels load (args.json's True: 2C do not fit) |
| --sigma_small | test_model_flag_on_the_command_line_wins_over_args_json | DDPM steps add beta-tilde_i-scaled N(0, 1) noise (False: beta_i) |
| --class_cond | test_model_flag_on_the_command_line_wins_over_args_json | labels y = the clips' classes reach the network (False: none, the checkpoint does not fit) |
| --num_classes | test_model_flag_on_the_command_line_wins_over_args_json | 3 classes load (args.json's 5 do not fit) |
| --diffusion_steps | test_model_flag_on_the_command_line_wins_over_args_json | 40: fed timesteps 39, 26, 13, 0 (args.json's 100: 99, 66, 33, 0) |
| --noise_schedule | test_model_flag_on_the_command_line_wins_over_args_json | DDPM steps follow the cosine alpha-bar (linear's posterior does not fit them) |
| --timestep_respacing | test_model_flag_on_the_command_line_wins_over_args_json | 4 network calls per loop at the kept steps (args.json's '': 40) |
| --use_kl | test_training_flags_change_no_sample | IGNORED when sampling (a training loss): samples byte-identical when flipped, the record keeps it |
| --predict_xstart | test_model_flag_on_the_command_line_wins_over_args_json | DDPM steps take the output as x0 (as noise they do not fit) |
| --rescale_timesteps | test_model_flag_on_the_command_line_wins_over_args_json | False: fed t itself (True: t * 1000 / T) |
| --rescale_learned_sigmas | test_training_flags_change_no_sample | IGNORED when sampling (a training loss): samples byte-identical when flipped, the record keeps it |
| --use_checkpoint | test_training_flags_change_no_sample | IGNORED when sampling (gradient checkpointing, no backward pass): samples byte-identical when flipped, the record keeps it |
| --use_scale_shift_norm | test_model_flag_on_the_command_line_wins_over_args_json | False loads (args.json's True does not fit) |
| --scale_time_dim | test_model_flag_on_the_command_line_wins_over_args_json | network outputs = a UNet halving time once (6; 0 differs) |
| --rgb | test_model_flag_on_the_command_line_wins_over_args_json | network input has 1 channel (args.json's True: 3, does not fit) |
| --seq_len | test_model_flag_on_the_command_line_wins_over_args_json | network input has 6 frames (args.json's 8) |
| --preset | test_preset_supplies_the_model_flags | demo: the demo architecture and 1000 steps for a bare checkpoint, explicit --seq_len wins; none: defaults |
| --dry_run | test_dry_run_prints_the_configuration_and_samples_nothing | the resolved flags printed, exit 0, no network call, no folder |

Flags of scripts/video_sample.py and scripts/video_sample_long.py:

| flag | test | effect shown |
|---|---|---|
| --num_samples | test_num_samples_sets_the_count | 3 / 2 npz rows and videos through the network |
| --batch_size | test_batch_size_sets_network_batches | 3 samples: network batches 2, 1 (batch 2) or 1, 1, 1 (batch 1) |
| --samples_per_clip | test_samples_per_clip_pairs_samples_with_clips | 2: samples 2c, 2c + 1 given clip c; 1: sample i given clip i |
| --cond_generation | test_cond_generation_false_gives_no_frame_and_reads_no_data | False: no data read, every frame noise; True: the clips read |
| --save_gt | test_save_gt_writes_the_clips | gt_ file = the decoded clips; none without |
| --chunk_size | test_chunk_size_cuts_chunk_files | 3: batches 2, 1 | 2, chunk 0 on disk while chunk 1 samples = the first rows; 5: batches 2, 2, 1, no chunk file |
| --out_dir | test_out_dir_is_where_it_writes | files in X itself; else $OPENAI_LOGDIR/<run name> or samples/<run name> |
| --overwrite | test_overwrite_replaces_a_finished_run | without: other settings refused, file untouched; True: sampled again with them |
| --save_video | test_save_video_writes_a_grid_per_batch_at_fps | samples_000 and _001 .gif / .mp4 / .png for 2 batches; none: no grid |
| --fps | test_save_video_writes_a_grid_per_batch_at_fps | gif frame duration 1000 / fps ms, mp4 rate fps |
| --progress | test_progress_draws_a_bar | True: a bar over every step of the run; False: none |

Flags of scripts/video_sample.py:

| flag | test | effect shown |
|---|---|---|
| --cond_frames | test_cond_frames_given_clean_and_kept | 0,5, / 0,1,: exactly those frames given clean and equal to the clip in the npz |

Flags of scripts/video_sample_long.py:

| flag | test | effect shown |
|---|---|---|
| --total_length | test_long_windows_follow_the_plan | 12 / 9 frames: 3 / 2 windows, npz of that length |
| --max_cond_frames | test_long_windows_follow_the_plan | 3: windows given 2, 3, 3, 3 frames (2: 2 each) |
| --prediction_step | test_long_windows_follow_the_plan | 2: 5 windows of 2 new frames (default 4: 3 windows) |
| --start_frames | test_long_windows_follow_the_plan | 0: the first window unconditional (2: given the clip's frames 0, 1) |
| --scheme | test_long_windows_follow_the_plan | hierarchical: keyframes 2, 5, 8, 11 first, then windows given 3 frames |

Flags of scripts/video_eval.py:

| flag | test | effect shown |
|---|---|---|
| --samples | test_eval_samples_and_gt_files_are_what_is_scored, test_eval_record.py::test_record_decides_given_frames_and_samples_per_clip | the files scored (PSNR by hand); two files joined per clip; a run folder's record |
| --gt | test_eval_samples_and_gt_files_are_what_is_scored | the reference of the scores: another file, other PSNR (by hand) |
| --protocol | test_eval_scores_the_frames_cond_frames_and_protocol_leave, test_eval_protocol_sets_the_clip_length_and_given_frames_in_model_mode | bair / kinetics600: the first 16 frames, 1 / 5 given; ucf101: no PSNR; sampling: 16 frames, frame 0 given |
| --samples_per_clip | test_eval_samples_per_clip_groups_rows, test_eval_samples_per_clip_and_cond_frames_in_model_mode | rows 2c, 2c + 1 are clip c's (3: an error); sampling: 2 samples per clip |
| --cond_frames | test_eval_scores_the_frames_cond_frames_and_protocol_leave, test_eval_samples_per_clip_and_cond_frames_in_model_mode, test_eval_refuses_cond_frames_that_contradict_the_protocol_before_sampling | the frames left out of PSNR; sampling: the frames given clean; contradicting --protocol: refused before any sample |
| --fvd_include_given | test_fvd_include_given_chooses_the_frames_i3d_sees | I3D shown every frame (default) or frames 1..17 (False) |
| --fvd | test_fvd_is_the_frechet_distance_of_i3d_features | True: Fréchet distance of the I3D features (by hand); False: no I3D call |
| --batch_size | test_fvd_batch_size_sets_i3d_batches | I3D batches 4, 2, 3 (4) or 6, 3 (16) |
| --device | test_device_places_i3d | I3D moved to cpu (given) or cuda (default, CUDA available) |
| --output | test_eval_output_names_the_results_file | the JSON written there; default <samples>_eval.json |
| --num_clips | test_eval_num_clips_takes_the_first_sorted_clips | 3 / 2 clips sampled and scored |
| --sample_batch_size | test_batch_size_sets_network_batches | 3 clips: network batches 2, 1 (2) or 1, 1, 1 (1) |
| --chunk_clips | test_eval_chunk_clips_cuts_chunk_files | 1: a chunk per clip, on disk while the next samples; 4: batches 2, 1 |
| --work_dir | test_eval_work_dir_is_the_run_folder | the run and eval.json in X; default samples/<run name> |
| --overwrite | test_eval_overwrite_samples_again | without: a finished run reused (no call); True: sampled again |
"""
import io
import json
import math
import os
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import ramvid
from ramvid.unet import UNetModel
from sample_fixtures import SCRIPTS, TINY, load_script, make_checkpoint

SEED = 5
GIVEN = (0, 1)  # the given frames of the shared runs
FILE_FRAMES, SIZE = 16, 8
FILE_NAMES = ("c_0.mp4", "a_1.mp4", "b_2.mp4")  # written in this order; sorted: a, b, c
SAMPLE, LONG, EVAL = "video_sample", "video_sample_long", "video_eval"
SCRIPTS_SAMPLING = (SAMPLE, LONG, EVAL)
BATCH_FLAG = {SAMPLE: "--batch_size", LONG: "--batch_size", EVAL: "--sample_batch_size"}

# sample_fixtures.TINY at 8 x 8 pixels (a network call costs a quarter of 16 x 16's).
FLAGS = {**TINY, "image_size": SIZE, "attention_resolutions": "4"}

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # SSIM of 8 x 8 frames skips its 11-pixel Gaussian window (and says so).
              pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")]


# ----------------------------------------------------------------------------- the maths
def alpha_bars(schedule, steps):
    """alpha-bar_t, t = 0..T-1, of REFERENCE.md's schedules (float64)."""
    if schedule == "linear":
        betas = np.linspace(0.1 / steps, 20.0 / steps, steps)
    else:
        def f(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)])
    return np.cumprod(1 - betas)


def kept_steps(steps, respacing):
    """The original steps 'N' keeps: N evenly spread over [0, T-1], both ends included (this
    module only uses N that divide T-1 into whole strides); '' keeps every step."""
    if not respacing:
        return list(range(steps))
    count = int(respacing)
    stride, rest = divmod(steps - 1, count - 1)
    assert rest == 0, "choose a respacing with a whole stride"
    return [j * stride for j in range(count)]


@dataclass
class Process:
    """The respaced reverse process: alpha-bar of kept step i, and the timestep the network
    sees at i (t * 1000 / T with --rescale_timesteps True, else t)."""
    ab: np.ndarray
    fed: list

    @classmethod
    def of(cls, flags):
        steps = int(flags["diffusion_steps"])
        kept = kept_steps(steps, flags["timestep_respacing"])
        ab = alpha_bars(flags["noise_schedule"], steps)[kept]
        scale = 1000.0 / steps if flags["rescale_timesteps"] else 1.0
        return cls(ab, [t * scale for t in kept])

    def at(self, i):
        """(alpha-bar_i, alpha-bar_{i-1}) as float64 scalars; alpha-bar_{-1} = 1."""
        return float(self.ab[i]), (1.0 if i == 0 else float(self.ab[i - 1]))


# The shared runs' process: 100 linear steps, --timestep_respacing 4 keeps 0, 33, 66, 99.
PROCESS = Process.of({**FLAGS, "timestep_respacing": "4", "noise_schedule": "linear",
                      "rescale_timesteps": True})


def predicted_x0(x, out, i, process, clip=True, predict_xstart=False):
    """The network's clean-video estimate at step i (first C output channels)."""
    ab, _ = process.at(i)
    o = out[:, : x.shape[1]]
    x0 = o if predict_xstart else (x - math.sqrt(1 - ab) * o) / math.sqrt(ab)
    return x0.clamp(-1, 1) if clip else x0


def ddim_step(x, x0, i, process, eta=0.0):
    """(mean, sigma) of DDIM's x_{i-1}."""
    ab, ab_prev = process.at(i)
    eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps, sigma


def ddpm_step(x, x0, i, process, sigma_small=False):
    """(posterior mean, sigma) of the ancestral step with beta_i (or beta-tilde_i) variance."""
    ab, ab_prev = process.at(i)
    beta = 1 - ab / ab_prev
    mean = (beta * math.sqrt(ab_prev) * x0 + (1 - ab_prev) * math.sqrt(1 - beta) * x) / (1 - ab)
    variance = beta * (1 - ab_prev) / (1 - ab) if sigma_small else beta
    return mean, math.sqrt(variance)


def dpm_step(x, x0, x0_before, i, process):
    """DPM-Solver++(2M): x' = s'/s x + a' (1 - e^-h) D, D = x0 + (x0 - x0_before) h / (2 h_before)
    (D = x0 at the first step), with lambda = log(a / s), h = lambda_{i-1} - lambda_i."""
    def lam(k):
        ab = float(process.ab[k])
        return math.log(math.sqrt(ab) / math.sqrt(1 - ab))
    ab, ab_prev = process.at(i)
    h = lam(i - 1) - lam(i)
    d = x0
    if x0_before is not None:
        d = x0 + (x0 - x0_before) * h / (2 * (lam(i) - lam(i + 1)))
    return math.sqrt((1 - ab_prev) / (1 - ab)) * x + math.sqrt(ab_prev) * (1 - math.exp(-h)) * d


def standard_normal(residual):
    """Whether n >= 500 values look like N(0, 1) draws: mean and standard deviation within 5
    standard errors of 0 and 1."""
    n = residual.numel()
    return n >= 500 and abs(float(residual.mean())) < 5 / math.sqrt(n) \
        and abs(float(residual.std()) - 1) < 5 / math.sqrt(2 * n)


def generated(x, given=GIVEN):
    """The frames of (N, C, T, H, W) that are not given."""
    return x[:, :, [f for f in range(x.shape[2]) if f not in given]]


# ----------------------------------------------------------------------------- observing
@dataclass
class Call:
    """One network evaluation: float64 copies of its input and output."""
    x: torch.Tensor  # (n, C, T, H, W)
    t: torch.Tensor  # (n,)
    y: torch.Tensor  # (n,) or None
    out: torch.Tensor
    network: torch.nn.Module
    tf32: tuple  # (cuda matmul, cudnn) allow_tf32 during the call
    chunks: list  # chunk files in the watched run folder during the call
    autocast: tuple  # (the input's dtype, the CPU autocast dtype or None) during the call

    @property
    def step(self):
        return float(self.t[0])


class Calls(list):
    """The recorded calls, and the arrays of every chunk file seen during them."""
    chunk_samples: dict


def record_network(monkeypatch, watch=None):
    """The list every UNetModel.forward call is appended to from now on; `watch`: a run
    folder whose chunk files are listed (and read once) at each call."""
    calls = Calls()
    calls.chunk_samples = {}
    forward = UNetModel.forward

    def recording(self, x, timesteps, *args, **kwargs):
        out = forward(self, x, timesteps, *args, **kwargs)
        y = kwargs.get("y", args[0] if args else None)
        chunks = sorted((Path(watch) / "chunks").glob("*.npz")) if watch else []
        for path in chunks:
            if path.name not in calls.chunk_samples:
                with np.load(path) as chunk:
                    calls.chunk_samples[path.name] = chunk["arr_0"]
        calls.append(Call(x.detach().double().clone(), timesteps.detach().clone(),
                          None if y is None else y.detach().clone(),
                          out.detach().double().clone(), self,
                          (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
                          [p.name for p in chunks],
                          (x.dtype, torch.get_autocast_dtype("cpu")
                           if torch.is_autocast_enabled("cpu") else None)))
        return out

    monkeypatch.setattr(UNetModel, "forward", recording)
    return calls


@dataclass
class Run:
    """What a script run did: its network calls, its folder, its stdout and stderr."""
    calls: list
    folder: Path
    out: str
    err: str

    def loops(self):
        """The calls split into denoising loops (a new loop where the timestep goes up)."""
        loops = []
        for call in self.calls:
            if not loops or call.step > loops[-1][-1].step:
                loops.append([])
            loops[-1].append(call)
        return loops

    def npz(self, gt=False):
        (path,) = [p for p in self.folder.glob("*.npz") if p.name.startswith("gt_") == gt]
        with np.load(path) as data:
            return data["arr_0"]

    @property
    def record(self):
        return json.loads((self.folder / "sample_args.json").read_text())

    def first_inputs(self):
        """x_T with the given frames of every sample, in sample order: (N, C, T, H, W)."""
        return torch.cat([loop[0].x for loop in self.loops()])

    def clip_of(self, k):
        """The sorted position of the file that conditions sample k: sample k takes clip
        (k // S) mod n of the run's clips, all files in sorted order or, when the run needs
        fewer, the draw its record lists."""
        record = self.record
        files = record.get("clip_files") or sorted(FILE_NAMES)
        return sorted(FILE_NAMES).index(files[(k // record["samples_per_clip"]) % len(files)])


def run(script, argv, folder=None, watch=None, env=None, exit_code=0):
    """scripts/<script>.py main(argv) in this process (one torch thread), recording the
    network; the CUDA TF32 switches are restored afterwards. A run that must end with
    SystemExit passes its `exit_code`."""
    stdout, stderr = io.StringIO(), io.StringIO()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    threads = torch.get_num_threads()
    code = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [str(SCRIPTS / f"{script}.py")])
        mp.delenv("OPENAI_LOGDIR", raising=False)
        for key, value in (env or {}).items():
            mp.setenv(key, str(value))
        calls = record_network(mp, watch)
        torch.set_num_threads(1)
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                load_script(script).main([str(a) for a in argv])
        except SystemExit as exit_info:
            code = exit_info.code
        finally:
            torch.set_num_threads(threads)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert code == exit_code, stderr.getvalue()[-2000:]
    return Run(calls, Path(folder) if folder else None, stdout.getvalue(), stderr.getvalue())


def fails(script, argv, **kwargs):
    """A run that ends with one line `<script>.py: error: ...` and exit code 2."""
    done = run(script, argv, exit_code=2, **kwargs)
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: "), lines
    return done


# ----------------------------------------------------------------------------- data
def colour(clip, frame):
    """The flat RGB colour of frame `frame` of the clip at sorted position `clip`."""
    return (30 + 90 * clip, 220 - 10 * frame, 60 + 8 * frame)


def write_flat_videos(folder):
    """The FILE_NAMES mp4 files of SIZE x SIZE flat-coloured frames (read without resizing),
    written in an order that is not their sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES:
        clip = sorted(FILE_NAMES).index(name)
        with av.open(str(folder / name), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width = stream.height = SIZE
            stream.pix_fmt = "yuv420p"
            for t in range(FILE_FRAMES):
                image = np.empty((SIZE, SIZE, 3), np.uint8)
                image[:] = colour(clip, t)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return folder


def decoded(folder, frames):
    """uint8 (files, frames, H, W, 3): the first frames of each file in sorted order,
    decoded here with PyAV."""
    clips = []
    for path in sorted(Path(folder).glob("*.mp4")):
        with av.open(str(path)) as container:
            clip = [f.to_ndarray(format="rgb24") for _, f in zip(range(frames),
                                                                 container.decode(video=0))]
        clips.append(np.stack(clip))
    return np.stack(clips)


def as_model_input(uint8_frames):
    """uint8 (..., T, H, W, C) -> float64 (..., C, T, H, W) in [-1, 1] as the network sees them."""
    x = torch.from_numpy(uint8_frames).double() / 127.5 - 1
    return x.movedim(-1, -4)


# ----------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    return {"root": root, "ckpt": make_checkpoint(root / "run", perturbation=0.1, **FLAGS),
            "data": write_flat_videos(root / "data"),
            "clips": decoded(root / "data", FILE_FRAMES)}


def base_argv(script, setup, folder, n=2, batch=2, steps=4, ckpt=None):
    """Predict from the given frames 0 and 1 of the sorted --data_dir clips, seed SEED, into
    `folder` (None: the script's default folder)."""
    common = ["--model_path", ckpt or setup["ckpt"], "--data_dir", setup["data"], "--seed", SEED,
              "--timestep_respacing", steps, BATCH_FLAG[script], batch]
    if folder is not None:
        common += ["--work_dir" if script == EVAL else "--out_dir", folder]
    if script == EVAL:
        return common + ["--cond_frames", "0,1,", "--num_clips", n, "--samples_per_clip", 1,
                         "--fvd", "False"]
    common += ["--num_samples", n, "--progress", "False", "--save_video", "none"]
    if script == LONG:
        return common + ["--total_length", 6, "--max_cond_frames", 2, "--start_frames", 2]
    return common + ["--cond_frames", "0,1,"]


SHARED_RUNS = {  # name: (samples, batch, flags)
    "ddim": (3, 2, ["--sampler", "ddim"]),
    "alone": (3, 1, ["--sampler", "ddim"]),
    "seed6": (2, 2, ["--sampler", "ddim", "--seed", 6]),
    "use_ddim": (3, 2, ["--use_ddim", "True"]),
    "ddpm": (2, 2, []),
    "dpm": (2, 2, ["--sampler", "dpm++2m"]),
    "eta": (2, 2, ["--sampler", "ddim", "--eta", 1]),
    "no_clip": (2, 2, ["--sampler", "ddim", "--clip_denoised", "False"]),
    "resample": (2, 2, ["--sampler", "ddim", "--resample_steps", 2]),
    "guided": (2, 2, ["--sampler", "ddim", "--guidance_scale", 3]),
    "tf32_off": (3, 2, ["--sampler", "ddim", "--tf32", "False"]),
}


@pytest.fixture(scope="module")
def runs(setup):
    """runs(script, name): the SHARED_RUNS run of a script, run once per module."""
    done = {}

    def get(script, name):
        if (script, name) not in done:
            n, batch, flags = SHARED_RUNS[name]
            folder = setup["root"] / script / name
            done[script, name] = run(script, base_argv(script, setup, folder, n, batch) + flags,
                                     folder)
        return done[script, name]
    return get


def network_with_weights(path, flags=FLAGS):
    """A UNet built here from `flags` with the state dict of the file `path`."""
    model = ramvid.create_model(**flags)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def steps_of(loop, process=PROCESS):
    """(i, the call at step i, the next call) along a loop of one call per step; the loop must
    see the process's timesteps, from the noisiest down."""
    assert [c.step for c in loop] == pytest.approx(process.fed[::-1])
    top = len(process.ab) - 1
    return [(top - k, loop[k], loop[k + 1]) for k in range(len(loop) - 1)]


def relative_gap(a, b):
    return float(((a - b).abs() / (1 + b.abs())).max())


def ddim_gap(done, clip=True):
    """Largest relative distance of a next network input (generated frames) from the DDIM
    mean of the call before, over all steps of all loops of a run."""
    gaps = []
    for loop in done.loops():
        for i, call, nxt in steps_of(loop):
            x0 = predicted_x0(call.x, call.out, i, PROCESS, clip=clip)
            mean, _ = ddim_step(call.x, x0, i, PROCESS)
            gaps.append(relative_gap(generated(nxt.x), generated(mean)))
    return max(gaps)


def given_clips(done, clips):
    """The given frames the network saw first, and those of the clips sample k should take."""
    seen = done.first_inputs()[:, :, list(GIVEN)]
    want = torch.stack([as_model_input(clips[done.clip_of(k)][list(GIVEN)])
                        for k in range(len(seen))])
    return seen, want


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m"])
def test_sampler_steps_follow_their_update_rule(runs, script, sampler):
    """Each next network input (generated frames) follows the sampler's step from the call
    before: DDIM eta 0 exactly; DDPM posterior mean plus beta_i-scaled N(0, 1) noise;
    DPM-Solver++(2M) exactly, second order after the first step. Seen red with the sampler
    options built with sampler="ddpm" whatever --sampler says (the ddim and dpm++2m cases),
    and with sampler="ddim" (the ddpm and dpm++2m cases)."""
    if sampler == "ddim":
        assert ddim_gap(runs(script, "ddim")) < 1e-4
    elif sampler == "ddpm":
        done = runs(script, "ddpm")
        for loop in done.loops():
            for i, call, nxt in steps_of(loop):
                x0 = predicted_x0(call.x, call.out, i, PROCESS)
                mean, sigma = ddpm_step(call.x, x0, i, PROCESS)
                assert standard_normal(generated(nxt.x - mean) / sigma), i
        assert ddim_gap(done) > 0.1
    else:
        done = runs(script, "dpm")
        for loop in done.loops():
            before = None
            for i, call, nxt in steps_of(loop):
                x0 = predicted_x0(call.x, call.out, i, PROCESS)
                want = dpm_step(call.x, x0, before, i, PROCESS)
                assert relative_gap(generated(nxt.x), generated(want)) < 1e-4, i
                first_order = dpm_step(call.x, x0, None, i, PROCESS)
                if before is not None:  # the second-order term is seen
                    assert relative_gap(generated(nxt.x), generated(first_order)) > 1e-3
                before = x0


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_use_ddim_is_sampler_ddim(runs, script):
    """--use_ddim True samples the bytes --sampler ddim does (and not DDPM's). Seen red with
    --use_ddim ignored when --sampler is empty."""
    ddim, use_ddim = runs(script, "ddim").npz(), runs(script, "use_ddim").npz()
    assert np.array_equal(use_ddim, ddim)
    assert ddim_gap(runs(script, "use_ddim")) < 1e-4
    assert (use_ddim[:2] != runs(script, "ddpm").npz()).mean() > 0.5


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_eta_draws_noise(runs, script):
    """--eta 0: the next input is DDIM's mean exactly (deterministic given x_T); --eta 1: the
    mean plus sigma_eta N(0, 1), sigma_eta = eta sqrt((1 - ab')/(1 - ab)) sqrt(1 - ab/ab').
    Seen red with args.eta left out of the sampler options (eta 0 always)."""
    assert ddim_gap(runs(script, "ddim")) < 1e-4
    done = runs(script, "eta")
    for loop in done.loops():
        for i, call, nxt in steps_of(loop):
            x0 = predicted_x0(call.x, call.out, i, PROCESS)
            mean, sigma = ddim_step(call.x, x0, i, PROCESS, eta=1.0)
            assert standard_normal(generated(nxt.x - mean) / sigma), i


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_clip_denoised_clips_pred_x0(runs, script):
    """By default (True) the DDIM step uses x0 clipped to [-1, 1]; with False the unclipped
    x0; each run matches its own rule and not the other. Seen red with --clip_denoised False
    not passed on (clipping always)."""
    clipped, unclipped = runs(script, "ddim"), runs(script, "no_clip")
    assert ddim_gap(clipped, clip=True) < 1e-4 and ddim_gap(clipped, clip=False) > 1e-2
    assert ddim_gap(unclipped, clip=False) < 1e-4 and ddim_gap(unclipped, clip=True) > 1e-2


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_resample_steps_repeat_each_step(runs, setup, script):
    """--resample_steps 2: two calls per step at the same timestep; between them x_{i-1} is
    re-noised to x_i: sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) N(0, 1); the given frames are
    imposed again. Seen red with args.resample_steps left out of the sampler options."""
    done = runs(script, "resample")
    given, want = given_clips(done, setup["clips"])
    for loop in done.loops():
        assert [c.step for c in loop] == pytest.approx(np.repeat(PROCESS.fed[::-1], 2))
        for k in range(len(loop) - 1):
            call, nxt = loop[k], loop[k + 1]
            i = len(PROCESS.ab) - 1 - k // 2
            x0 = predicted_x0(call.x, call.out, i, PROCESS)
            mean, _ = ddim_step(call.x, x0, i, PROCESS)
            assert torch.equal(nxt.x[:, :, list(GIVEN)], call.x[:, :, list(GIVEN)])
            if k % 2 == 0:  # re-noised within step i
                ab, ab_prev = PROCESS.at(i)
                beta = 1 - ab / ab_prev
                residual = generated(nxt.x - math.sqrt(1 - beta) * mean) / math.sqrt(beta)
                assert standard_normal(residual), i
            else:
                assert relative_gap(generated(nxt.x), generated(mean)) < 1e-4
    assert torch.allclose(given, want, atol=1e-6)


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_guidance_scale_calls_twice_with_given_frames_noised(runs, setup, script):
    """--guidance_scale 3: two calls per step; the second sees the given frames diffused to
    step i (sqrt(ab) x + sqrt(1 - ab) N(0, 1)) and the rest as the first; the step uses
    out_uncond + 3 (out_cond - out_uncond). With 1 (the ddim run): one call per step. Seen red
    with args.guidance_scale left out of the sampler options."""
    assert [len(loop) for loop in runs(script, "ddim").loops()] == [4, 4]
    done = runs(script, "guided")
    clips = torch.stack([as_model_input(setup["clips"][done.clip_of(k)][:6]) for k in range(2)])
    for loop in done.loops():
        assert [c.step for c in loop] == pytest.approx(np.repeat(PROCESS.fed[::-1], 2))
        for k in range(0, len(loop), 2):
            cond, uncond = loop[k], loop[k + 1]
            i = len(PROCESS.ab) - 1 - k // 2
            ab, _ = PROCESS.at(i)
            assert torch.allclose(cond.x[:, :, list(GIVEN)], clips[:, :, list(GIVEN)], atol=1e-6)
            assert torch.equal(generated(uncond.x), generated(cond.x))
            noise = (uncond.x - math.sqrt(ab) * clips)[:, :, list(GIVEN)] / math.sqrt(1 - ab)
            assert standard_normal(noise), i
            if k + 2 < len(loop):
                mixed = uncond.out + 3 * (cond.out - uncond.out)
                x0 = predicted_x0(cond.x, mixed, i, PROCESS)
                mean, _ = ddim_step(cond.x, x0, i, PROCESS)
                assert relative_gap(generated(loop[k + 2].x), generated(mean)) < 1e-4


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_seed_sets_each_samples_noise(runs, script):
    """x_T of sample i is N(0, 1) from (seed, i) alone: the same whether it shares a batch
    (batch 2) or not (batch 1); another --seed gives other noise. Seen red with args.seed
    replaced by 0 in the job."""
    together = generated(runs(script, "ddim").first_inputs())
    alone = generated(runs(script, "alone").first_inputs())
    other = generated(runs(script, "seed6").first_inputs())
    assert torch.equal(together, alone)
    assert standard_normal(together) and standard_normal(other)
    assert not torch.isclose(other, together[:2]).any()


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_batch_size_sets_network_batches(runs, script):
    """3 samples in batches of 2 -> the network sees batches of 2 then 1, each for all 4
    steps; batches of 1 -> three loops of 1. Seen red with the batch flag ignored (8)."""
    for name, sizes in (("ddim", [2, 1]), ("alone", [1, 1, 1])):
        loops = runs(script, name).loops()
        assert [loop[0].x.shape[0] for loop in loops] == sizes
        assert all([c.x.shape[0] for c in loop] == [loop[0].x.shape[0]] * 4 for loop in loops)


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_tf32_sets_cuda_backend_flags_only(runs, script):
    """--tf32 sets torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 (read during
    the network calls); on the CPU the samples are byte-identical. Seen red with
    configure_tf32(True) called whatever the flag."""
    on, off = runs(script, "ddim"), runs(script, "tf32_off")
    assert {c.tf32 for c in on.calls} == {(True, True)}
    assert {c.tf32 for c in off.calls} == {(False, False)}
    assert np.array_equal(on.npz(), off.npz())


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_compile_calls_torch_compile(setup, tmp_path, monkeypatch, script):
    """--compile True hands the UNet to torch.compile (replaced here by a recorder that
    returns the module) and samples through what it returns; False does not call it. Seen
    red with compile_model(model, False) whatever the flag."""
    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    for flag in ("False", "True"):
        argv = base_argv(script, setup, tmp_path / flag, n=1, batch=1, steps=2)
        done = run(script, argv + ["--compile", flag], tmp_path / flag)
        assert len(done.calls) == 2
    assert len(compiled) == 1 and isinstance(compiled[0], UNetModel)
    assert done.calls[0].network is compiled[0]


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_model_path_picks_the_weights(runs, setup, script):
    """The network is the --model_path file's: its outputs equal a UNet built here with that
    file's state dict, on the inputs it was given, and differ from the other file's. Seen red
    with the checkpoint's state dict not loaded into the built network."""
    other = make_checkpoint(setup["root"] / f"other_{script}", perturbation=0.3, **FLAGS)
    folder = setup["root"] / script / "other_model"
    done = run(script, base_argv(script, setup, folder, n=1, batch=1, steps=2, ckpt=other),
               folder)
    for own_file, other_file, call in ((setup["ckpt"], other, runs(script, "ddim").calls[0]),
                                       (other, setup["ckpt"], done.calls[0])):
        with torch.no_grad():
            own, wrong = (network_with_weights(path)(call.x.float(), call.t)
                          for path in (own_file, other_file))
        assert torch.allclose(own.double(), call.out, atol=1e-5)
        assert (wrong.double() - call.out).abs().max() > 1e-2


# The model flags of --preset demo (docs/DEMO.md).
DEMO = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1",
            attention_resolutions="", num_heads=4, scale_time_dim=0, seq_len=8,
            diffusion_steps=1000, noise_schedule="linear", learn_sigma=False, predict_xstart=True)


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_preset_supplies_the_model_flags(setup, tmp_path, script):
    """A checkpoint of the demo architecture without args.json samples with --preset demo:
    the network is that architecture with the file's weights, its timesteps are those of the
    preset's 1000 steps kept at 0 and 999, and an explicit --seq_len 4 wins over the preset's
    8 (--dry_run: 32 channels). Without --preset (and without args.json) the command stops
    in one line naming the flags the weights cannot reveal. Seen red with the preset's values
    not applied (parse_flags returning before set_defaults)."""
    ckpt = make_checkpoint(tmp_path / "bare", write_args_json=False, **DEMO)
    argv = base_argv(script, setup, tmp_path / "out", n=1, batch=1, steps=2, ckpt=ckpt)
    done = run(script, argv + ["--preset", "demo", "--seq_len", 4], tmp_path / "out")
    assert [tuple(c.x.shape) for c in done.loops()[0]] == [(1, 3, 4, 16, 16)] * 2
    assert [c.step for c in done.loops()[0]] == [999.0, 0.0]
    with torch.no_grad():
        out = network_with_weights(ckpt, {**DEMO, "seq_len": 4})(done.calls[0].x.float(),
                                                                 done.calls[0].t)
    assert torch.allclose(out.double(), done.calls[0].out, atol=1e-5)
    config = json.loads(run(script, argv + ["--preset", "demo", "--dry_run"], exit_code=0).out)
    assert config["num_channels"] == 32
    refused = fails(script, argv + ["--dry_run"])
    assert "no args.json" in refused.err and "--scale_time_dim" in refused.err


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_dry_run_prints_the_configuration_and_samples_nothing(setup, tmp_path, script):
    """--dry_run prints the resolved flags as JSON (seq_len from args.json, the command
    line's seed and respacing) and exits 0 before any network call or folder. Seen red with
    the dry-run exit removed (the run samples)."""
    argv = base_argv(script, setup, tmp_path / "out", n=1, batch=1, steps=2)
    done = run(script, argv + ["--dry_run"], exit_code=0)
    config = json.loads(done.out)
    assert (config["seq_len"], config["seed"], config["timestep_respacing"]) == (6, SEED, "2")
    assert not done.calls and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_data_dir_clip_i_is_the_ith_sorted_file(runs, setup, script):
    """A run that uses every file: sample i is given the first frames of the i-th --data_dir
    file in sorted order (files written c, a, b), exactly as PyAV decodes them; the record lists
    those files; the saved given frames are those bytes. Seen red with the files listed in
    reverse sorted order."""
    done = runs(script, "ddim")
    order = np.arange(len(FILE_NAMES))
    assert done.record["clip_files"] == sorted(FILE_NAMES)
    seen, want = given_clips(done, setup["clips"])
    assert torch.allclose(seen, want, atol=1e-6)
    assert np.array_equal(done.npz()[:, list(GIVEN)], setup["clips"][order][:, list(GIVEN)])
    if script == EVAL:  # evaluation keeps the whole clips as its ground truth
        assert np.array_equal(done.npz(gt=True), setup["clips"][order][:, :6])


# Every model and diffusion flag twice: the value the checkpoint was built with and is sampled
# with (on the command line), and another one its args.json claims.
COMMAND_LINE = {
    **FLAGS, "num_heads": 2, "num_heads_upsample": 1, "dropout": 0.25, "learn_sigma": False,
    "sigma_small": True, "class_cond": True, "num_classes": 3, "diffusion_steps": 40,
    "noise_schedule": "cosine", "timestep_respacing": "4", "use_kl": True,
    "predict_xstart": True, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "use_checkpoint": True, "use_scale_shift_norm": False, "scale_time_dim": 6, "rgb": False,
}
ARGS_JSON = dict(
    image_size=16, num_channels=64, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    attention_resolutions="2", channel_mult="1,2,2", dropout=0.0, learn_sigma=True,
    sigma_small=False, class_cond=False, num_classes=5, diffusion_steps=100,
    noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
    rescale_timesteps=True, rescale_learned_sigmas=True, use_checkpoint=False,
    use_scale_shift_norm=True, scale_time_dim=0, rgb=True, seq_len=8,
)
# Accepted by the sampling commands (args.json carries them from training) and without effect
# on sampling: training losses, gradient checkpointing, dropout (the network runs in eval mode).
IGNORED_WHEN_SAMPLING = ("dropout", "rescale_learned_sigmas", "use_checkpoint", "use_kl")


def command_line(flags):
    return [a for k, v in flags.items() for a in (f"--{k}", v)]


def mismatches(flags, done, state_dict):
    """How the first loop of a run disagrees with a model and diffusion built from `flags`:
    input shape, labels, timesteps, the Dropout rate, the network's outputs (that model with
    the checkpoint's weights on the recorded inputs) and the DDPM steps (posterior mean and
    variance of the flags' schedule, respacing, mean and variance types)."""
    found = []
    loop = done.loops()[0]
    first = loop[0]
    shape = (first.x.shape[0], 3 if flags["rgb"] else 1, flags["seq_len"], flags["image_size"],
             flags["image_size"])
    if tuple(first.x.shape) != shape:
        found.append(f"input shape {tuple(first.x.shape)}, not {shape}")
    # Each file is a class of its own, numbered in sorted order.
    labels = torch.tensor([done.clip_of(k) for k in range(first.x.shape[0])]) \
        if flags["class_cond"] else None
    if not (first.y is labels is None or (first.y is not None and labels is not None
                                          and torch.equal(first.y, labels))):
        found.append(f"labels {first.y}, not {labels}")
    process = Process.of(flags)
    steps = [c.step for c in loop]
    same_steps = steps == pytest.approx(process.fed[::-1])
    if not same_steps:
        found.append(f"timesteps {steps}, not {process.fed[::-1]}")
    rates = {m.p for m in first.network.modules() if isinstance(m, torch.nn.Dropout)}
    if rates != {flags["dropout"]}:
        found.append(f"dropout {rates}")
    try:
        model = ramvid.create_model(**flags)
        model.load_state_dict(state_dict)
        with torch.no_grad():
            out = model.eval()(first.x.float(), first.t, **({} if first.y is None
                                                           else {"y": first.y}))
    except (ValueError, RuntimeError) as error:
        return found + [f"the checkpoint does not fit: {str(error)[:80]}"]
    if out.shape != first.out.shape or not torch.allclose(out.double(), first.out, atol=1e-5):
        found.append("network outputs")
    if same_steps:
        for i, call, nxt in steps_of(loop, process):
            x0 = predicted_x0(call.x, call.out, i, process, predict_xstart=flags["predict_xstart"])
            mean, sigma = ddpm_step(call.x, x0, i, process, flags["sigma_small"])
            if not standard_normal(generated(nxt.x - mean) / sigma):
                found.append(f"DDPM step {i}")
    return found


@pytest.fixture(scope="module")
def overridden(setup):
    """overridden(script, **changes): (run, state dict) of a checkpoint whose args.json
    contradicts every model flag, sampled with COMMAND_LINE (and `changes`) given explicitly."""
    folder = setup["root"] / "overridden"
    ckpt = make_checkpoint(folder, write_args_json=False, perturbation=0.1, **COMMAND_LINE)
    defaults = ramvid.model_and_diffusion_defaults()
    assert set(ARGS_JSON) == set(defaults) and all(COMMAND_LINE[k] != v for k, v in ARGS_JSON.items())
    (folder / "args.json").write_text(json.dumps({**defaults, **ARGS_JSON, "lr": 1e-4}))
    state_dict = torch.load(ckpt, weights_only=True)
    done = {}

    def get(script, **changes):
        key = (script, tuple(sorted(changes)))
        if key not in done:
            out = folder / f"{script}_{len(done)}"
            argv = base_argv(script, setup, out, n=3, batch=3, ckpt=ckpt)
            done[key] = run(script, argv + command_line({**COMMAND_LINE, **changes}), out)
        return done[key], state_dict
    return get


@pytest.mark.parametrize("flag", sorted(set(ARGS_JSON) - set(IGNORED_WHEN_SAMPLING)
                                        | {"dropout"}))
@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_model_flag_on_the_command_line_wins_over_args_json(overridden, script, flag):
    """With args.json contradicting every model and diffusion flag and the command line
    giving the checkpoint's values, the run is what the command line's values predict
    (mismatches() lists nothing) and not what args.json's value of `flag` would (then the
    checkpoint does not fit, or the shapes, timesteps, network outputs, dropout rate or DDPM
    steps differ). Seen red (every case of the script) with args.json's values applied after
    parsing, and with that done for --noise_schedule, --sigma_small, --num_heads or --seq_len
    alone."""
    done, state_dict = overridden(script)
    assert mismatches(COMMAND_LINE, done, state_dict) == []
    assert mismatches({**COMMAND_LINE, flag: ARGS_JSON[flag]}, done, state_dict) != []


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_training_flags_change_no_sample(overridden, script):
    """--dropout, --use_kl, --rescale_learned_sigmas and --use_checkpoint are accepted (the
    record keeps their values) and ignored when sampling: all four flipped, the samples are
    byte-identical; the network runs in eval mode. Seen red with the model left in training
    mode (dropout active)."""
    changes = {"dropout": 0.0, "use_kl": False, "rescale_learned_sigmas": True,
               "use_checkpoint": False}
    assert all(COMMAND_LINE[k] != v for k, v in changes.items())
    first, _ = overridden(script)
    second, _ = overridden(script, **changes)
    assert np.array_equal(first.npz(), second.npz())
    assert not first.calls[0].network.training
    for done, flags in ((first, COMMAND_LINE), (second, {**COMMAND_LINE, **changes})):
        recorded = done.record["model_flags"]
        assert {k: recorded[k] for k in IGNORED_WHEN_SAMPLING} == \
            {k: flags[k] for k in IGNORED_WHEN_SAMPLING}


# ----------------------------------------------------------------------------- files (sample, long)
@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_num_samples_sets_the_count(runs, script):
    """--num_samples 3 and 2: that many rows in the npz and that many videos through the
    network, each for every step. Seen red with args.num_samples replaced by 2."""
    for name, count in (("ddim", 3), ("ddpm", 2)):
        done = runs(script, name)
        assert done.npz().shape == (count, 6, SIZE, SIZE, 3)
        assert sum(loop[0].x.shape[0] for loop in done.loops()) == count


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_chunk_size_cuts_chunk_files(setup, tmp_path, script):
    """5 samples in batches of 2 with --chunk_size 3: batches [0, 1], [2] | [3, 4]; chunk 0
    (samples 0..2) is on disk while chunk 1 samples and holds the final file's first rows; the
    chunks are removed at the end. --chunk_size 5: batches [0, 1], [2, 3], [4], no chunk file
    while sampling. Seen red with args.chunk_size replaced by 256."""
    results = {}
    for size in (3, 5):
        folder = tmp_path / str(size)
        argv = base_argv(script, setup, folder, n=5, batch=2, steps=2)
        results[size] = run(script, argv + ["--chunk_size", size], folder, watch=folder)
    cut, whole = results[3], results[5]
    assert [loop[0].x.shape[0] for loop in cut.loops()] == [2, 1, 2]
    assert [c.chunks for c in cut.calls] == [[]] * 4 + [["chunk_0000.npz"]] * 2
    assert np.array_equal(cut.calls.chunk_samples["chunk_0000.npz"], cut.npz()[:3])
    assert [loop[0].x.shape[0] for loop in whole.loops()] == [2, 2, 1]
    assert all(c.chunks == [] for c in whole.calls)
    assert not (cut.folder / "chunks").exists()


def test_dry_run_counts_the_batches_of_every_chunk(setup, tmp_path):
    """A chunk's batches start at the chunk: 6 samples in chunks of 3 and batches of 2 are
    batches [0, 1], [2] | [3, 4], [5], four of them (not ceil(6 / 2) = 3), and --dry_run's plan
    counts the batches the run takes. Seen red with the plan counting ceil(6 / 2) batches."""
    argv = base_argv(SAMPLE, setup, tmp_path, n=6, batch=2, steps=2) + ["--chunk_size", 3]
    plan = json.loads(run(SAMPLE, argv + ["--dry_run"], exit_code=0).out)["plan"]
    done = run(SAMPLE, argv, tmp_path)
    assert [loop[0].x.shape[0] for loop in done.loops()] == [2, 1, 2, 1]
    assert plan["batch_steps"] == 4 * plan["steps_per_batch"]


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_samples_per_clip_pairs_samples_with_clips(runs, setup, tmp_path, script):
    """--samples_per_clip 2: samples 2c and 2c + 1 are given clip c (record: 2); with 1
    (the ddim run) sample i is given clip i. Seen red with samples_per_clip left at 1 in the
    job."""
    argv = base_argv(script, setup, tmp_path, n=4, batch=2, steps=2)
    done = run(script, argv + ["--samples_per_clip", 2], tmp_path)
    seen, want = given_clips(done, setup["clips"])
    assert torch.allclose(seen, want, atol=1e-6) and done.record["samples_per_clip"] == 2
    seen, want = given_clips(runs(script, "ddim"), setup["clips"])
    assert torch.allclose(seen, want, atol=1e-6)


def no_given_frame(x):
    """Every frame of every video in (N, C, T, H, W) is noise (leaves [-1, 1] somewhere)."""
    return bool((x.abs().amax(dim=(1, 3, 4)) > 1).all())


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_cond_generation_false_gives_no_frame_and_reads_no_data(setup, tmp_path, script):
    """--cond_generation False with a --data_dir whose only file is not a video: no data is
    read (the run succeeds), every frame the network first sees is N(0, 1) noise, the record
    has no given frames. With True the same folder is a one-line error. Seen red with
    cond_generation ignored (the clips read)."""
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a_0.mp4").write_bytes(b"not a video")
    argv = base_argv(script, {**setup, "data": garbage}, tmp_path / "out", n=2, steps=2)
    done = run(script, argv + ["--cond_generation", "False"], tmp_path / "out")
    first = done.first_inputs()
    assert no_given_frame(first) and standard_normal(first)
    assert done.record["cond_frames"] == []
    with pytest.warns(Warning, match="skipping video"):
        assert "--data_dir" in fails(script, argv).err


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_save_gt_writes_the_clips(runs, setup, tmp_path, script):
    """--save_gt True writes gt_<shape>.npz = the first frames of the sorted files as PyAV
    decodes them (all --total_length 12 frames for long videos); without it no gt file.
    Seen red with the gt field dropped from the job."""
    length = 12 if script == LONG else 6
    argv = base_argv(script, setup, tmp_path, n=2, steps=2) + ["--save_gt", "True"]
    done = run(script, argv + (["--total_length", length] if script == LONG else []), tmp_path)
    assert np.array_equal(done.npz(gt=True),
                          setup["clips"][[done.clip_of(k) for k in range(2)], :length])
    assert not list(runs(script, "ddim").folder.glob("gt_*"))


def run_name(script, n, steps):
    """<task>_c<given frames>_<N>x<T>_<sampler><steps>_seed<seed>_<checkpoint> (--out_dir's
    help) of a base_argv run with --sampler ddim."""
    task = "long-autoregressive" if script == LONG else "predict"
    return f"{task}_c0-1_{n}x6_ddim{steps}_seed{SEED}_ema_0.9999_000010"


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_out_dir_is_where_it_writes(setup, tmp_path, script):
    """--out_dir X: the files are in X itself; without it, in <$OPENAI_LOGDIR>/<run name>, or
    without that in samples/<run name> beside the checkpoint. Seen red with --out_dir
    ignored (the run named folder used)."""
    ckpt = make_checkpoint(tmp_path / "run", perturbation=0.1, **FLAGS)
    argv = base_argv(script, setup, None, n=1, batch=1, steps=2, ckpt=ckpt) + ["--sampler", "ddim"]
    name = run_name(script, 1, 2)
    folders = [tmp_path / "exactly", tmp_path / "logs" / name, tmp_path / "run" / "samples" / name]
    run(script, argv + ["--out_dir", folders[0]])
    run(script, argv, env={"OPENAI_LOGDIR": tmp_path / "logs"})
    run(script, argv)
    for folder in folders:
        assert (folder / "1x6x8x8x3.npz").is_file() and (folder / "sample_args.json").is_file()


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_overwrite_replaces_a_finished_run(runs, setup, tmp_path, script):
    """Into a finished run's folder, other settings (--seed 6) are refused in one line
    (exit 2, no network call, the file untouched); with --overwrite True the folder is
    sampled again with them (x_T of seed 6). Seen red with args.overwrite passed as True."""
    argv = base_argv(script, setup, tmp_path, n=1, batch=1, steps=2) + ["--sampler", "ddim"]
    run(script, argv, tmp_path)
    path = next(tmp_path.glob("1x*.npz"))
    before = path.read_bytes()
    refused = fails(script, argv + ["--seed", 6])
    assert "--overwrite True" in refused.err and not refused.calls
    assert path.read_bytes() == before
    done = run(script, argv + ["--seed", 6, "--overwrite", "True"], tmp_path)
    assert torch.equal(done.first_inputs(), runs(script, "seed6").first_inputs()[:1])
    assert path.read_bytes() != before and done.record["seed"] == 6


@pytest.mark.parametrize("script", [SAMPLE, LONG])
@pytest.mark.parametrize("fmt, fps", [("gif", 5), ("mp4", 7), ("png", 3)])
def test_save_video_writes_a_grid_per_batch_at_fps(runs, setup, tmp_path, script, fmt, fps):
    """--save_video FMT --fps F: samples_000.FMT and samples_001.FMT for 2 batches of 1; a gif
    shows each of the 6 frames for 1000/F ms, an mp4 plays at F frames per second;
    --save_video none (the ddim run) writes no grid. Seen red with save_video and fps left at
    their defaults in the job."""
    argv = base_argv(script, setup, tmp_path, n=2, batch=1, steps=2)
    run(script, argv + ["--save_video", fmt, "--fps", fps], tmp_path)
    grids = sorted(p.name for p in tmp_path.glob("samples_*"))
    assert grids == [f"samples_000.{fmt}", f"samples_001.{fmt}"]
    if fmt == "gif":
        with Image.open(tmp_path / grids[0]) as gif:
            assert gif.n_frames == 6 and gif.info["duration"] == 1000 / fps
    if fmt == "mp4":
        with av.open(str(tmp_path / grids[0])) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == fps and stream.frames == 6
    assert not list(runs(script, "ddim").folder.glob("samples_*"))


@pytest.mark.parametrize("script", [SAMPLE, LONG])
def test_progress_draws_a_bar(runs, setup, tmp_path, script):
    """--progress True draws a 'sampling' bar over every denoising step of the run (2 steps
    x 1 window, or x 3 windows of a 12-frame long video); False (the ddim run) draws none.
    Seen red with progress=False passed whatever the flag."""
    argv = base_argv(script, setup, tmp_path, n=1, batch=1, steps=2) + ["--progress", "True"]
    total = 2
    if script == LONG:
        argv, total = argv + ["--total_length", 12], 6
    done = run(script, argv, tmp_path)
    assert "sampling: 100%" in done.err and f"{total}/{total}" in done.err
    assert "sampling:" not in runs(script, "ddim").err


def test_cond_frames_given_clean_and_kept(runs, setup, tmp_path):
    """--cond_frames 0,5,: frames 0 and 5 reach the network as the clip's frames (the others
    as noise) and are the clip's bytes in the npz, the others are not; 0,1, (the ddim run)
    likewise for frames 0 and 1. Seen red with the given frames fixed to 0,1."""
    argv = base_argv(SAMPLE, setup, tmp_path, n=1, batch=1, steps=2)
    infill = run(SAMPLE, argv + ["--cond_frames", "0,5,"], tmp_path)
    for done, given in ((infill, [0, 5]), (runs(SAMPLE, "ddim"), [0, 1])):
        first, samples = done.first_inputs(), done.npz()
        clips = setup["clips"][[done.clip_of(k) for k in range(len(samples))], :6]
        other = [f for f in range(6) if f not in given]
        assert torch.allclose(first[:, :, given], as_model_input(clips)[:, :, given], atol=1e-6)
        assert no_given_frame(first[:, :, other])
        assert np.array_equal(samples[:, given], clips[:, given])
        assert (samples[:, other] != clips[:, other]).mean() > 0.5


# ----------------------------------------------------------------------------- long videos
# Windows of seq_len 6 by the plan's arithmetic (--help of video_sample_long.py): the video
# frames each window stands for and the positions given to the network, for 12 frames, 2
# start frames, --max_cond_frames 2 and prediction step 6 - 2 = 4, unless the case changes it.
LONG_CASES = {
    # the last 2 known frames given, 4 new ones kept; the last window runs past frame 11
    "base": ([], 12, [(range(0, 6), [0, 1]), (range(4, 10), [0, 1]), (range(8, 14), [0, 1])]),
    "total_length": (["--total_length", 9], 9, [(range(0, 6), [0, 1]), (range(4, 10), [0, 1])]),
    "max_cond_frames": (["--max_cond_frames", 3], 12, [  # 2 start frames, then 3 given, 3 kept
        (range(0, 6), [0, 1]), (range(2, 8), [0, 1, 2]), (range(5, 11), [0, 1, 2]),
        (range(8, 14), [0, 1, 2])]),
    "prediction_step": (["--prediction_step", 2], 12, [
        (range(k, k + 6), [0, 1]) for k in (0, 2, 4, 6, 8)]),
    "start_frames": (["--start_frames", 0], 12, [  # an unconditional first window keeps all 6
        (range(0, 6), []), (range(4, 10), [0, 1]), (range(8, 14), [0, 1])]),
    # keyframes 2, 5, 8, 11 = round(linspace(2, 11, 4)) after the start frames, then windows
    # from 2 frames before the first missing one, every known frame in them given
    "scheme": (["--scheme", "hierarchical"], 12, [
        ([0, 1, 2, 5, 8, 11], [0, 1]), (range(1, 7), [0, 1, 4]), (range(5, 11), [0, 1, 3])]),
}


@pytest.mark.parametrize("case", LONG_CASES)
def test_long_windows_follow_the_plan(setup, tmp_path, case):
    """Each window is one denoising loop; the frames the network is given in it (clean, in
    [-1, 1]; the others N(0, 1) noise) are at the plan's positions and are the video's frames
    the window stands for: the start frames of the sorted clip, later frames as the npz holds
    them (to half a uint8 level). Seen red with each of --total_length, --max_cond_frames,
    --prediction_step, --start_frames and --scheme replaced by its default in LongSettings
    (--start_frames: --max_cond_frames)."""
    extra, length, windows = LONG_CASES[case]
    argv = base_argv(LONG, setup, tmp_path, n=1, batch=1, steps=2) + [
        "--sampler", "ddim", "--total_length", 12, "--max_cond_frames", 2, "--start_frames", 2]
    done = run(LONG, argv + extra, tmp_path)
    video = as_model_input(done.npz()[0])  # (C, length, H, W)
    start = 0 if case == "start_frames" else 2
    assert video.shape[1] == length
    assert np.array_equal(done.npz()[0, :start], setup["clips"][done.clip_of(0), :start])
    loops = done.loops()
    assert len(loops) == len(windows)
    for loop, (frames, given) in zip(loops, windows):
        x = loop[0].x[0]  # (C, 6, H, W)
        clean = [p for p in range(6) if x[:, p].abs().max() <= 1]
        assert clean == given
        for p in given:
            assert (x[:, p] - video[:, list(frames)[p]]).abs().max() <= 0.5 / 127.5 + 1e-6


# ----------------------------------------------------------------------------- evaluation
def psnr_by_hand(samples, gt, per_clip, scored):
    """(best-of-N, mean-of-N) PSNR on the [0, 1] scale over frames `scored`, rows i*S..i*S+S-1
    belonging to clip i (numpy only)."""
    s = samples.reshape(len(gt), per_clip, *samples.shape[1:])[:, :, scored] / 255.0
    g = gt[:, None, scored] / 255.0
    psnr = (-10 * np.log10(((s - g) ** 2).mean(axis=(3, 4, 5)))).mean(axis=2)  # (clips, S)
    return psnr.max(axis=1).mean(), psnr.mean()


def eval_json(done):
    return json.loads((done.folder / "eval.json").read_text())


def test_eval_num_clips_takes_the_first_sorted_clips(runs):
    """--num_clips 3 and 2: that many samples (one per clip), given the first clips in sorted
    order, and that many clips scored. Seen red with num_clips replaced by all clips."""
    for name, count in (("ddim", 3), ("ddpm", 2)):
        done = runs(EVAL, name)
        assert done.npz().shape[0] == count and eval_json(done)["num_clips"] == count


def test_eval_chunk_clips_cuts_chunk_files(setup, tmp_path):
    """--chunk_clips 1 with --sample_batch_size 2: each clip is its own chunk (batches of 1),
    chunk k on disk while clip k + 1 samples and equal to the final file's row k; with the
    default 4 (the ddim run) the 3 clips are one chunk: batches of 2 and 1. Seen red with
    chunk_clips replaced by 4."""
    argv = base_argv(EVAL, setup, tmp_path, n=3, batch=2, steps=2)
    done = run(EVAL, argv + ["--chunk_clips", 1], tmp_path, watch=tmp_path)
    assert [loop[0].x.shape[0] for loop in done.loops()] == [1, 1, 1]
    assert [c.chunks for c in done.calls] == [[], [], ["chunk_0000.npz"], ["chunk_0000.npz"],
                                              ["chunk_0000.npz", "chunk_0001.npz"]] + \
        [["chunk_0000.npz", "chunk_0001.npz"]]
    for k in range(2):
        assert np.array_equal(done.calls.chunk_samples[f"chunk_{k:04d}.npz"], done.npz()[k:k + 1])


def test_eval_work_dir_is_the_run_folder(runs, setup, tmp_path):
    """--work_dir X holds the sample run and its evaluation; without it the run is
    samples/<run name> beside the checkpoint, as video_sample.py names it. Seen red with
    --work_dir ignored."""
    assert sorted(p.name for p in runs(EVAL, "ddim").folder.iterdir()) == [
        "3x6x8x8x3.npz", "eval.json", "gt_3x6x8x8x3.npz", "sample_args.json"]
    ckpt = make_checkpoint(tmp_path / "run", perturbation=0.1, **FLAGS)
    argv = base_argv(EVAL, setup, None, n=1, batch=1, steps=2, ckpt=ckpt) + ["--sampler", "ddim"]
    run(EVAL, argv)
    assert (tmp_path / "run" / "samples" / run_name(SAMPLE, 1, 2) / "eval.json").is_file()


def test_eval_overwrite_samples_again(setup, tmp_path):
    """A rerun reuses the finished sample run (no network call); with --overwrite True it
    samples again (every step of the clip) to the same bytes. Seen red with overwrite passed
    as False."""
    argv = base_argv(EVAL, setup, tmp_path, n=1, batch=1, steps=2) + ["--sampler", "ddim"]
    first = run(EVAL, argv, tmp_path)
    samples = first.npz()
    again = run(EVAL, argv, tmp_path)
    assert not again.calls and "reusing the finished run" in again.out
    fresh = run(EVAL, argv + ["--overwrite", "True"], tmp_path)
    assert len(fresh.calls) == 2 and np.array_equal(fresh.npz(), samples)


def test_eval_samples_per_clip_and_cond_frames_in_model_mode(setup, tmp_path):
    """--model_path with --samples_per_clip 2 --cond_frames 0,3,: samples 2c and 2c + 1 are
    given frames 0 and 3 of clip c (the others noise) and the scores are best- and mean-of-2
    PSNR over frames 1, 2, 4, 5 of the files written. Seen red with the samples per clip
    replaced by 1, and with the given frames fixed to 0, 1."""
    argv = base_argv(EVAL, setup, tmp_path, n=2, batch=2, steps=2)
    done = run(EVAL, argv + ["--samples_per_clip", 2, "--cond_frames", "0,3,"], tmp_path)
    first = done.first_inputs()
    clips = as_model_input(setup["clips"][[done.clip_of(k) for k in range(4)], :6])
    assert torch.allclose(first[:, :, [0, 3]], clips[:, :, [0, 3]], atol=1e-6)
    assert no_given_frame(first[:, :, [1, 2, 4, 5]])
    results = eval_json(done)
    assert (results["samples_per_clip"], results["cond_frames"]) == (2, [0, 3])
    best, mean = psnr_by_hand(done.npz(), setup["clips"][[done.clip_of(0), done.clip_of(2)], :6],
                              2, [1, 2, 4, 5])
    assert (results["psnr_best"], results["psnr_mean"]) == pytest.approx((best, mean), rel=1e-5)


def test_eval_protocol_sets_the_clip_length_and_given_frames_in_model_mode(setup, tmp_path):
    """--protocol bair with --model_path: 16-frame videos with frame 0 given (the others
    noise), scored as BAIR. Seen red with the protocol ignored in sampling mode (custom)."""
    argv = ["--model_path", setup["ckpt"], "--data_dir", setup["data"], "--protocol", "bair",
            "--samples_per_clip", 1, "--num_clips", 1, "--timestep_respacing", 2,
            "--fvd", "False", "--work_dir", tmp_path]
    done = run(EVAL, argv, tmp_path)
    first = done.first_inputs()
    assert first.shape == (1, 3, 16, SIZE, SIZE) and no_given_frame(first[:, :, 1:])
    assert torch.allclose(first[:, :, 0],
                          as_model_input(setup["clips"][[done.clip_of(0)], :1])[:, :, 0], atol=1e-6)
    results = eval_json(done)
    assert (results["protocol"], results["num_frames"], results["cond_frames"]) == ("bair", 16, [0])


EVAL_FRAMES, PER_CLIP = 18, 2


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    """npz files without a sample record: 3 ground-truth clips of 18 flat 8 x 8 frames, 2
    samples per clip (clip-major), a second ground truth, the samples split by sample."""
    folder = tmp_path_factory.mktemp("eval_files")
    rng = np.random.default_rng(4)
    gt = np.repeat(rng.integers(40, 200, (3, EVAL_FRAMES, 1, 1, 3)), PER_CLIP, axis=0)
    offsets = rng.integers(5, 30, gt.shape)  # brighter samples: an FVD well above rounding
    arrays = {
        "gt": gt[::PER_CLIP],
        "samples": gt + offsets,
        "other_gt": rng.integers(40, 200, (3, EVAL_FRAMES, 1, 1, 3)),
    }
    arrays["by_sample_0"], arrays["by_sample_1"] = arrays["samples"][0::2], arrays["samples"][1::2]
    files = {}
    for name, array in arrays.items():
        flat = np.broadcast_to(array, (*array.shape[:2], 8, 8, 3)).astype(np.uint8)
        np.savez(folder / f"{name}.npz", flat)
        files[name], arrays[name] = folder / f"{name}.npz", flat
    return {"folder": folder, "files": files, **arrays}


def evaluate(eval_files, *flags, samples=("samples",), gt="gt", output="out.json", **kwargs):
    """video_eval.py on eval_files; (run, results)."""
    files = eval_files["files"]
    argv = ["--samples", *(files[s] for s in samples), "--gt", files[gt], *flags]
    output = eval_files["folder"] / output if output else None
    done = run(EVAL, argv + (["--output", output] if output else []), **kwargs)
    return done, (json.loads(output.read_text()) if output else None)


SCORED_FRAMES = {  # flags: (frames scored, frames per clip)
    "--cond_frames 0,": (range(1, 18), 18),
    "--cond_frames 0,1,2,": (range(3, 18), 18),
    "--protocol bair": (range(1, 16), 16),
    "--protocol kinetics600": (range(5, 16), 16),
    "--protocol ucf101": (None, 16),
}


@pytest.mark.parametrize("flags", SCORED_FRAMES)
def test_eval_scores_the_frames_cond_frames_and_protocol_leave(eval_files, flags):
    """PSNR best- and mean-of-2 over exactly the frames that are neither given nor beyond the
    protocol's 16 (BAIR: 1 given; Kinetics-600: 5 given); UCF-101 (unconditional) has no
    PSNR/SSIM. Seen red with --cond_frames read as the protocol's and with --protocol
    ignored (custom)."""
    scored, frames = SCORED_FRAMES[flags]
    _, results = evaluate(eval_files, *flags.split(), "--samples_per_clip", PER_CLIP,
                          "--fvd", "False")
    assert results["num_frames"] == frames
    if scored is None:
        assert "psnr_best" not in results and results["cond_frames"] == []
        return
    best, mean = psnr_by_hand(eval_files["samples"], eval_files["gt"], PER_CLIP, list(scored))
    assert (results["psnr_best"], results["psnr_mean"]) == pytest.approx((best, mean), rel=1e-6)


def test_eval_samples_and_gt_files_are_what_is_scored(eval_files):
    """--samples FILE --gt FILE are scored against each other (by hand); another --gt gives
    other scores; two --samples files with one sample per clip each are joined per clip (the
    same scores as the file holding both). Seen red with the second --samples file dropped,
    and with --gt ignored."""
    common = ["--cond_frames", "0,", "--fvd", "False"]
    _, whole = evaluate(eval_files, *common, "--samples_per_clip", PER_CLIP)
    _, other = evaluate(eval_files, *common, "--samples_per_clip", PER_CLIP, gt="other_gt")
    _, joined = evaluate(eval_files, *common, "--samples_per_clip", 1,
                         samples=("by_sample_0", "by_sample_1"))
    for results, gt in ((whole, "gt"), (other, "other_gt"), (joined, "gt")):
        best, mean = psnr_by_hand(eval_files["samples"], eval_files[gt], PER_CLIP, list(range(1, 18)))
        assert (results["psnr_best"], results["psnr_mean"]) == pytest.approx((best, mean), rel=1e-6)
    assert whole["psnr_mean"] != pytest.approx(other["psnr_mean"], rel=1e-3)
    assert joined["samples_per_clip"] == whole["samples_per_clip"] == PER_CLIP


def test_eval_samples_per_clip_groups_rows(eval_files):
    """--samples_per_clip 2: rows 2c and 2c + 1 are clip c's samples (best-of-2 above
    mean-of-2, by hand); 3 does not divide 6 rows into 3 clips: a one-line error naming it.
    Seen red with the rows grouped clip-minor (row c + 3s)."""
    _, results = evaluate(eval_files, "--cond_frames", "0,", "--samples_per_clip", 2,
                          "--fvd", "False")
    best, mean = psnr_by_hand(eval_files["samples"], eval_files["gt"], 2, list(range(1, 18)))
    assert (results["psnr_best"], results["psnr_mean"]) == pytest.approx((best, mean), rel=1e-6)
    assert results["psnr_best"] > results["psnr_mean"]
    files = eval_files["files"]
    failed = fails(EVAL, ["--samples", files["samples"], "--gt", files["gt"], "--cond_frames",
                          "0,", "--samples_per_clip", 3, "--fvd", "False"])
    assert "--samples_per_clip 3" in failed.err


def test_eval_output_names_the_results_file(eval_files):
    """--output X: the results JSON (as printed) is X; without it, <samples file>_eval.json
    beside the first samples file. Seen red with --output ignored."""
    done, results = evaluate(eval_files, "--cond_frames", "0,", "--samples_per_clip", 2,
                             "--fvd", "False", output="named.json")
    assert done.out.startswith(json.dumps(results, indent=2))
    evaluate(eval_files, "--cond_frames", "0,", "--samples_per_clip", 2, "--fvd", "False",
             output=None)
    default = json.loads((eval_files["folder"] / "samples_eval.json").read_text())
    assert default["psnr_best"] == results["psnr_best"]


@pytest.fixture(scope="module")
def fvd_runs(eval_files):
    """Evaluations with a stand-in for the I3D network (ramvid.metrics.I3D's forward: one
    feature, the mean of the video it is shown; .to() records the device and stays on the
    CPU), with CUDA reported available: name -> (results, I3D inputs (B, 3, T) at pixel
    (0, 0), devices)."""
    from ramvid.metrics import I3D
    from ramvid.metrics.fvd import _cached_i3d

    done = {}
    cases = {
        "all_frames": ["--batch_size", 4, "--device", "cpu"],
        "predicted_frames": ["--fvd_include_given", "False"],
        "no_fvd": ["--fvd", "False"],
    }
    for name, flags in cases.items():
        inputs, devices = [], []

        def forward(self, x):
            inputs.append(x[:, :, :, 0, 0].double().clone())
            return x.mean(dim=(1, 2, 3, 4))[:, None]

        def to(self, device, *args, **kwargs):
            devices.append(str(device))
            return self

        with pytest.MonkeyPatch.context() as mp:
            _cached_i3d.cache_clear()  # an I3D cached by an earlier test would skip .to()
            mp.setattr(I3D, "forward", forward)
            mp.setattr(I3D, "to", to)
            mp.setattr(torch.cuda, "is_available", lambda: True)
            _, results = evaluate(eval_files, "--cond_frames", "0,", "--samples_per_clip",
                                  PER_CLIP, *flags, output=f"{name}.json")
        done[name] = results, inputs, devices
    return done


def fvd_by_hand(samples, gt, frames):
    """FVD of 1-D features (the video's mean on [-1, 1]): (m_a - m_b)^2 + (s_a - s_b)^2."""
    fake = (samples[:, frames] / 127.5 - 1).mean(axis=(1, 2, 3, 4))
    real = (gt[:, frames] / 127.5 - 1).mean(axis=(1, 2, 3, 4))
    return (fake.mean() - real.mean()) ** 2 + (fake.std(ddof=1) - real.std(ddof=1)) ** 2


def test_fvd_is_the_frechet_distance_of_i3d_features(fvd_runs, eval_files):
    """--fvd True: the Fréchet distance of the features of all 6 samples against the 3 clips
    (by hand); --fvd False: no I3D call and no fvd result. Seen red with --fvd read as
    True always."""
    for name, frames in (("all_frames", range(18)), ("predicted_frames", range(1, 18))):
        results, _, _ = fvd_runs[name]
        want = fvd_by_hand(eval_files["samples"], eval_files["gt"], list(frames))
        # I3D's input is float32: the feature means agree to about 1e-7.
        assert want > 1e-3 and results["fvd"] == pytest.approx(want, rel=1e-4)
        assert (results["fvd_num_samples"], results["fvd_num_real"]) == (6, 3)
    results, inputs, devices = fvd_runs["no_fvd"]
    assert "fvd" not in results and not inputs and not devices


def test_fvd_include_given_chooses_the_frames_i3d_sees(fvd_runs, eval_files):
    """I3D is shown every frame by default (the protocol's True) and only the predicted
    frames 1..17 with --fvd_include_given False: samples first, then the clips, their values
    2 v / 255 - 1. Seen red with fvd_include_given passed as None (the default)."""
    videos = np.concatenate([eval_files["samples"], eval_files["gt"]])[:, :, 0, 0]  # (9, T, 3)
    for name, frames in (("all_frames", range(18)), ("predicted_frames", range(1, 18))):
        _, inputs, _ = fvd_runs[name]
        seen = torch.cat(inputs).movedim(1, 2)  # (9, T', 3)
        want = torch.from_numpy(videos[:, list(frames)]).double() / 127.5 - 1
        assert torch.allclose(seen, want, atol=1e-5)


def test_fvd_batch_size_sets_i3d_batches(fvd_runs):
    """--batch_size 4: I3D sees the 6 samples as 4 + 2 and the 3 clips as 3; the default 16:
    6 and 3. Seen red with batch_size left at 16."""
    assert [len(x) for x in fvd_runs["all_frames"][1]] == [4, 2, 3]
    assert [len(x) for x in fvd_runs["predicted_frames"][1]] == [6, 3]


def test_device_places_i3d(fvd_runs):
    """With CUDA available I3D goes to --device cpu when given, else to cuda. Seen red with
    args.device dropped."""
    assert fvd_runs["all_frames"][2] == ["cpu"]
    assert fvd_runs["predicted_frames"][2] == ["cuda"]


def test_eval_refuses_cond_frames_that_contradict_the_protocol_before_sampling(setup, tmp_path):
    """--protocol bair gives frame 0; --cond_frames 0,1, contradicts it. Evaluating files,
    that is a one-line error naming both; with --model_path it must be so before any sample
    is drawn (BAIR's run is 25,600 videos), not after the run is sampled. Seen red before the
    check was made in sampling mode (the run was sampled, then refused)."""
    argv = ["--model_path", setup["ckpt"], "--data_dir", setup["data"], "--protocol", "bair",
            "--cond_frames", "0,1,", "--samples_per_clip", 1, "--num_clips", 1,
            "--timestep_respacing", 2, "--fvd", "False", "--work_dir", tmp_path]
    done = fails(EVAL, argv)
    assert "--protocol bair" in done.err and "--cond_frames" in done.err
    assert not done.calls


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_bf16_runs_the_network_under_autocast(runs, setup, tmp_path, script):
    """--bf16 True: every network call runs under CPU bfloat16 autocast while the input x the
    sampler hands it stays float32, and the record says precision bf16; --bf16 False (the
    ddim run): float32, no autocast. Seen red with args.bf16 left out of the precision."""
    argv = base_argv(script, setup, tmp_path, n=1, batch=1, steps=2) + ["--bf16", "True"]
    done = run(script, argv, tmp_path)
    assert done.calls and {c.autocast for c in done.calls} == {(torch.float32, torch.bfloat16)}
    assert done.record["precision"] == "bf16"
    plain = runs(script, "ddim")
    assert {c.autocast for c in plain.calls} == {(torch.float32, None)}
    assert plain.record["precision"] == "fp32"


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_use_fp16_needs_a_cuda_gpu(setup, tmp_path, script):
    """--use_fp16 True on a machine without CUDA: one line naming the flag and --bf16, before
    any network call; with --bf16 True as well: one line saying to choose one. Seen red with
    args.use_fp16 left out of the precision (the run sampled in float32)."""
    argv = base_argv(script, setup, tmp_path, n=1, batch=1, steps=2) + ["--use_fp16", "True"]
    refused = fails(script, argv)
    assert "--use_fp16 True: needs a CUDA GPU" in refused.err and not refused.calls
    both = fails(script, argv + ["--bf16", "True"])
    assert "--bf16 True: cannot be combined with --use_fp16 True" in both.err


@pytest.mark.parametrize("script", SCRIPTS_SAMPLING)
def test_break_lock_takes_over_a_lock_from_another_host(setup, tmp_path, script):
    """A run folder whose lock names a process on another host (last heartbeat 5 min ago):
    refused in one line naming that host and --break_lock True, no network call, the lock
    untouched; with --break_lock True the run takes it over, samples, and leaves no lock.
    Seen red with break_lock not passed on to the run folder's lock."""
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / ".ramvid.lock"
    lock.write_text(json.dumps({"what": "sampling run", "host": "gpu-node-17", "pid": 4242,
                                "started": "2026-01-01T00:00:00+00:00", "token": "abc"}))
    then = time.time() - 300
    os.utime(lock, (then, then))
    argv = base_argv(script, setup, folder, n=1, batch=1, steps=2)
    refused = fails(script, argv)
    assert "host gpu-node-17" in refused.err and "--break_lock True" in refused.err
    assert not refused.calls and json.loads(lock.read_text())["token"] == "abc"
    with pytest.warns(UserWarning, match="removed the stale lock .* gpu-node-17"):
        done = run(script, argv + ["--break_lock", "True"], folder)
    assert done.calls and not lock.exists()
