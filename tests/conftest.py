import os
import tempfile

import pytest
import torch

# The synthetic benchmark is materialized once per machine in a temp folder (cached by its
# spec digest), never inside the repository. Must be set before vcm_d2 is imported.
os.environ.setdefault(
    "VCM_D2_SYNTHETIC", os.path.join(tempfile.gettempdir(), "vcm_d2_test_synthetic")
)
# Tests run on CPU with few threads, the cores shared among pytest-xdist workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    convolutions are much faster without thread contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def repo_root():
    return REPO
