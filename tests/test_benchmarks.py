"""The benchmark scripts run end to end on a tiny input and print their JSON (the numbers in
docs/PERFORMANCE.md come from them; a benchmark that no longer imports the code it measures
would fail only when someone needs it)."""
import json
import os
import subprocess
import sys

from conftest import REPO


def _json_out(args, timeout):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_benchmark_times_one_training_and_sampling_step_of_the_tiny_config():
    """Seen red when benchmark.py imported step helpers that the training loop no longer has."""
    out = _json_out(["benchmarks/benchmark.py", "--configs", "tiny", "--steps", "1", "--warmup",
                     "0", "--sample_steps", "1", "--batch_size", "1"], timeout=180)
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert (row["config"], row["batch_size"], row["microbatch"]) == ("tiny", 1, 1)
    for key in ("train_step_s", "sample_step_ddpm_s", "sample_step_ddim_s", "forward_GFLOP",
                "peak_mem_MB"):
        assert row[key] > 0, key


def test_loader_benchmark_reads_the_same_windows_by_seeking_and_from_the_start(tmp_path):
    """The script stops with an error when seeking and decoding from the first frame disagree.
    Seen red with decode_from_start reading one frame late."""
    out = _json_out(["benchmarks/loader_benchmark.py", "--cache_dir", str(tmp_path),
                     "--minutes", "0.05", "--width", "64", "--height", "48", "--fps", "10",
                     "--gop", "10", "--seq_len", "4", "--starts", "2", "--image_size", "16",
                     "--batch_size", "2", "--batches", "2", "--num_workers", "0"], timeout=120)
    report = json.loads(out)
    assert report["video"]["num_frames"] == round(0.05 * 60 * 10)  # minutes x 60 x fps
    assert report["video"]["size"] == [64, 48]
    assert report["pipeline"]["batch_shape"] == [2, 3, 4, 16, 16]  # (N, C, T, H, W)
    assert len(report["starts"]) == 2 and report["wall_seconds"]["seek_window_median"] > 0


def test_gpu_suite_quality_and_protocol_sections_run(tmp_path):
    """The quality sweep (the demo's shipped checkpoint, two 2-step samplers) and the protocol
    cost run through gpu_suite.py (its train/script sections drive benchmark.py and
    video_train.py, tested above and elsewhere). Seen red with run_quality importing a name
    ramvid.sample.batch does not have."""
    import numpy as np

    clips = tmp_path / "clips.npz"
    np.savez(clips, np.random.default_rng(0).integers(0, 256, (2, 8, 16, 16, 3), np.uint8))
    out = tmp_path / "suite.json"
    _json_out(["benchmarks/gpu_suite.py", "--tiny", "--sections", "quality,protocol",
               "--model_path", "ramvid/demo/shipped/ema_0.99_016000.pt", "--clips_npz",
               str(clips), "--quality_runs", "ddim:ddim2,dpm++2m:logsnr2", "--out", str(out)],
              timeout=120)
    results = json.loads(out.read_text())
    assert sorted(results["quality"]) == ["ddim:ddim2", "dpm++2m:logsnr2"]
    assert all(run["steps"] == 2 and run["psnr_mean"] > 0 for run in results["quality"].values())
    paper = results["protocol"]["computed_from_step_times"]["paper_code_ddpm1000"]
    # 256 clips x 100 samples in batches of 8, 1000 steps of 0.191 s each
    assert paper["gpu_hours"] == round(256 * 100 / 8 * 1000 * 0.191 / 3600, 2)
