"""The one writer of every file resdense writes: checkpoints, logs, metrics, reports, exports, splits, pictures.

A file is written to a temporary ``.<name>.<pid>.tmp`` in the target's directory, flushed and fsynced, then
``os.replace``d over the target and the directory fsynced: a reader sees the old file or the new one, never a torn
one (POSIX rename is atomic within a file system). Any failure of the OS underneath becomes a :class:`WriteError`:
one line naming the path and the OS error (``ENOSPC: No space left on device``), the previous file intact and no
temporary file left. That includes the failure torch's zip writer reports as a ``RuntimeError`` (``unexpected
pos``) after the ``OSError`` of a full disk, whose ``OSError`` is found in the exception's chain.

Writers that only take a path (``torch.onnx.export``, ``torch.jit.save`` of large programs) get a temporary path from
:func:`atomic_path`; the rest get a file object from :func:`atomic_open`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from resdense.errors import WriteError

__all__ = ["make_dir", "atomic_open", "atomic_path", "write_text", "write_bytes", "write_json", "append_text", "write_with", "save_torch",
           "os_error_in", "describe_os_error", "WriteError"]


def make_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p path``; an OS failure (a regular file on the way, a read-only file system) is a
    :class:`WriteError` naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"{path}: {what} not created ({describe_os_error(err)})") from None
    return path


def os_error_in(err: BaseException) -> OSError | None:
    """The ``OSError`` that caused ``err`` (``err`` itself, or one in its ``__cause__`` / ``__context__`` chain)."""
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        if isinstance(node, OSError) and not isinstance(node, WriteError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


def describe_os_error(err: OSError) -> str:
    """``ENOSPC: No space left on device``: the error's symbolic name and its text."""
    code = errno.errorcode.get(err.errno or -1)
    return f"{code}: {err.strerror}" if code and err.strerror else str(err)


def _failure(path: Path, err: OSError, what: str, existed: bool) -> WriteError:
    kept = f"the previous {path.name} is intact" if existed else f"there is no earlier {path.name}"
    return WriteError(f"{path}: {what} not written ({describe_os_error(err)}); {kept}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    Raises:
        WriteError: an OS failure while the block wrote, or while replacing (names ``path`` and the OS error; the
            previous file is intact, the temporary one removed). Other exceptions pass through, after the
            temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    existed = path.exists()
    try:
        if not path.parent.exists():  # one that exists as a file: ENOTDIR where the temporary file is opened
            path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync_file(tmp)  # the writer may have closed it without syncing
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a directory that cannot be written to: then there is no temporary file either
            pass
        cause = os_error_in(err)
        if cause is not None and not isinstance(err, WriteError):
            raise _failure(path, cause, what, existed) from None
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", what: str = "file", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing (``"w"`` or ``"wb"``), atomically: see :func:`atomic_path`."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r} must be 'w' or 'wb'")
    with atomic_path(path, what) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); ``what`` names the file in errors."""
    with atomic_open(path, "wb", what) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; ``what`` names the file in errors."""
    with atomic_open(path, "w", what, encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, what: str = "file", **dump_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (indent 2 unless ``dump_kwargs`` say otherwise) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, **({"indent": 2} | dump_kwargs)), what)


def write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """``write(f)`` into a binary file object for ``path`` (PIL's ``save``, matplotlib's ``savefig``, ...)."""
    with atomic_open(path, "wb", what) as f:
        write(f)
    return Path(path)


def append_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Append ``text`` to ``path`` and flush (log rows): an OS failure is a :class:`WriteError` naming the path."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as err:
        raise WriteError(f"{path}: {what} not written ({describe_os_error(err)})") from None


def save_torch(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``torch.save(obj, path)`` atomically. torch's zip writer meets a full disk as an ``OSError`` inside its
    stream and re-raises it as a ``RuntimeError`` on closing: both are one :class:`WriteError`."""
    import torch  # this module is used by layers that need no torch

    return write_with(path, lambda f: torch.save(obj, f), what)
