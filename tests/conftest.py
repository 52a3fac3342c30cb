import os

import pytest
import torch

# Tests run on CPU with few threads; keep them deterministic and quiet.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO
