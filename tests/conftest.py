import os
from pathlib import Path

import pytest
import torch

# The real datasets (see their README): read from ../shared/data, never copied into the repository.
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it are skipped, with the reason, on a machine without it, except where the
    datasets are required (``RESDENSE_REQUIRE_DATA=1``, which ``.ci/run`` sets): there their absence fails."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("RESDENSE_REQUIRE_DATA") == "1":
            pytest.fail(f"real datasets not found at {SHARED_DATA.resolve()} and RESDENSE_REQUIRE_DATA=1")
        pytest.skip(f"real datasets not found at {SHARED_DATA.resolve()} (see its README); these tests need them")
    return SHARED_DATA
