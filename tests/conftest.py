import pytest
import torch

# Test folders whose tiny models run on one thread (see one_thread).
ONE_THREAD_DIRS = ("engine", "cli")


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models run on one thread: as fast as two for 64 px inputs, and immune to a loaded machine, where
    OpenMP threads spin-wait for each other. Exact-resume tests also need parent and child on the same count."""
    if request.path.parent.name not in ONE_THREAD_DIRS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
