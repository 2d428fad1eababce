import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The recorded reference tensors live beside the checkout (also in CI).
FIXTURES = REPO.parent / "shared" / "fixtures"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """The suite's own $RAMVID_CACHE (the sampling rates runs remember), in this process and the
    commands it starts; the I3D weights fetched before are linked in, not fetched again."""
    cache = tmp_path_factory.mktemp("ramvid_cache")
    weights = Path(os.environ.get("RAMVID_CACHE") or Path.home() / ".cache" / "ramvid") / "i3d"
    if weights.is_dir():
        (cache / "i3d").symlink_to(weights)
    os.environ["RAMVID_CACHE"] = str(cache)


@pytest.fixture(scope="session")
def reference():
    path = FIXTURES / "ramvid_reference.pt"
    if not path.exists():
        pytest.fail(f"reference fixtures missing at {path}")
    # The fixture file is ours to trust (it holds config dicts next to tensors).
    return torch.load(path, weights_only=False)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny convolutions gain nothing from a second)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
