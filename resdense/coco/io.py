"""Reading COCO JSON files, and pycocotools without its prints.

:func:`read_json` is the one reader of annotation, ground-truth and results files: a missing file or invalid JSON
becomes one :class:`CocoFileError` naming the file, which the datasets re-raise as a ``DataError`` and the
evaluation as an ``EvaluationError``. pycocotools prints progress to stdout; the library never prints, so
:func:`quiet` routes those prints to the debug log.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resdense.errors import ResdenseError

__all__ = ["CocoFileError", "read_json", "quiet", "build_coco"]

logger = logging.getLogger(__name__)


class CocoFileError(ResdenseError, ValueError):
    """A JSON file that cannot be read. ``path`` names it; ``missing`` is True when it does not exist (else it is
    not JSON, and ``detail`` says why). ``str()`` is a one-line message naming the file."""

    def __init__(self, path: str | os.PathLike, missing: bool, detail: str = "") -> None:
        self.path, self.missing, self.detail = str(path), missing, detail
        super().__init__(f"{path}: annotation file not found" if missing else f"{path}: not a JSON file ({detail})")


def read_json(path: str | os.PathLike) -> Any:
    """The content of a JSON file (any top-level type: callers check it); raises :class:`CocoFileError`."""
    try:
        found = Path(path).is_file()
    except OSError:  # e.g. a name too long to be a file's
        found = False
    if not found:
        raise CocoFileError(path, missing=True)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoFileError(path, missing=False, detail=str(err)) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run pycocotools inside this: what it prints to stdout goes to the debug log instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = buffer.getvalue().strip()
    if text:
        logger.debug("pycocotools: %s", text.replace("\n", " | "))


def build_coco(dataset: dict):
    """A pycocotools ``COCO`` indexed from an in-memory dataset dict (quietly; the dict is used, not copied)."""
    from pycocotools.coco import COCO  # on first use: most callers never index a dataset

    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco
