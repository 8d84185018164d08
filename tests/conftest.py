import errno
import io
import os
import subprocess
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


class _QuotaFile(io.FileIO):
    """A real file whose writes fail with ENOSPC once its folder's quota is spent, as a full file system's do."""

    def __init__(self, path, mode, quota: dict) -> None:
        super().__init__(path, mode)
        self.quota = quota

    def write(self, data) -> int:
        n = len(memoryview(data))
        if self.quota["left"] < n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.quota["left"] -= n
        return super().write(data)


class Disk:
    """A folder on a file system of ``size`` bytes (see :func:`small_disk`); :meth:`fill` spends what is left."""

    def __init__(self, folder: Path, quota: dict | None) -> None:
        self.folder, self.quota = folder, quota

    def fill(self) -> None:
        if self.quota is not None:
            self.quota["left"] = 0
            return
        fd = os.open(self.folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (65536, 512, 1):  # big writes, then what the last partial block left
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
        finally:
            os.close(fd)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """``make(size_bytes) -> Disk``: a folder on a file system that holds ``size_bytes``. A real tmpfs where the
    tests may mount one (root, as CI runs), unmounted afterwards. Elsewhere a folder whose files, opened by
    resdense's writer (:mod:`resdense.files`), fail with ENOSPC past the quota in their own ``write``: underneath
    ``torch.save``'s zip writer, PIL and json, as a full disk's do."""
    mounted = []

    def make(size: int) -> Disk:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0
        if done:
            mounted.append(folder)
            return Disk(folder, None)
        import resdense.files

        quota = {"left": size}
        real_open = open

        def quota_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax") and Path(file).resolve().is_relative_to(folder.resolve()):
                raw = _QuotaFile(file, "a" if "a" in mode else "w", quota)
                if "b" in mode:
                    return io.BufferedWriter(raw)
                return io.TextIOWrapper(io.BufferedWriter(raw), encoding=kwargs.get("encoding") or "utf-8",
                                        newline=kwargs.get("newline"))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(resdense.files, "open", quota_open, raising=False)
        mounted.append(None)
        return Disk(folder, quota)

    yield make
    for folder in mounted:
        if folder is not None:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
