import os
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models are dispatch-bound, so one thread is faster, and on a busy 2-core machine two
    threads have made them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
