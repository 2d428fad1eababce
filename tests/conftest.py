import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The recorded reference tensors live beside the checkout (also in CI).
FIXTURES = REPO.parent / "shared" / "fixtures"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


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
