import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run on one thread: as fast as two for 64 px inputs, and immune to a loaded machine, where
    OpenMP threads spin-wait for each other. Exact-resume tests also need parent and child on the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
