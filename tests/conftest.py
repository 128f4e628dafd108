import os
from pathlib import Path

import pytest
import torch

# Deterministic, bounded CPU work: CI has 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Copied from the project's shared/fixtures (outputs of the upstream code on tiny random
# checkpoints; see tests/fixtures/README.md) so the suite runs from a plain clone.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES}")
    return FIXTURES


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
