"""Reading COCO JSON files, and pycocotools without its prints.

:func:`read_json` is the one reader of annotation, ground-truth and results files: a missing file or invalid JSON
becomes one :class:`CocoFileError` naming the file, which the datasets re-raise as a ``DataError`` and the
evaluation as an ``EvaluationError``. pycocotools prints progress to stdout; the library never prints, so
:func:`quiet` routes those prints to the debug log. :func:`gc_paused` keeps the cycle collector out of the way while
a large file becomes Python objects.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from resdense.errors import ResdenseError

__all__ = ["CocoFileError", "read_json", "read_text", "loads", "walk_instances", "TextPieces", "quiet", "build_coco",
           "gc_paused"]

logger = logging.getLogger(__name__)


class CocoFileError(ResdenseError, ValueError):
    """A JSON file that cannot be read. ``path`` names it; ``missing`` is True when it does not exist (else it is
    not JSON, and ``detail`` says why). ``str()`` is a one-line message naming the file."""

    def __init__(self, path: str | os.PathLike, missing: bool, detail: str = "") -> None:
        self.path, self.missing, self.detail = str(path), missing, detail
        super().__init__(f"{path}: annotation file not found" if missing else f"{path}: not a JSON file ({detail})")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (restored on exit; nested use is fine).

    Decoding a train2017-sized file allocates millions of lists and dicts; each allocation burst triggers a
    collection that walks every young container, and the occasional full one walks them all, which made up a third
    of ``json.load``'s time there. JSON objects hold no reference cycles, so those walks can find nothing; objects
    freed inside the block are freed by reference counting as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_text(path: str | os.PathLike) -> str:
    """The text of a JSON file (its encoding detected as ``json`` does); raises :class:`CocoFileError`."""
    try:
        found = Path(path).is_file()
    except OSError:  # e.g. a name too long to be a file's
        found = False
    if not found:
        raise CocoFileError(path, missing=True)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as err:
        raise CocoFileError(path, missing=False, detail=str(err)) from None


def loads(text: str, path: str | os.PathLike) -> Any:
    """``json.loads(text)`` with the collector paused; invalid JSON is a :class:`CocoFileError` naming ``path``."""
    try:
        with gc_paused():
            return json.loads(text)
    except json.JSONDecodeError as err:
        raise CocoFileError(path, missing=False, detail=str(err)) from None


def read_json(path: str | os.PathLike) -> Any:
    """The content of a JSON file (any top-level type: callers check it); raises :class:`CocoFileError`."""
    # Decoded apart from parsing, so that the bytes are freed first: json.load keeps them alive next to the text
    # and the objects (290 MB more at the peak for a train2017-sized file).
    return loads(read_text(path), path)


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as the json module's decoder has it
_BETWEEN_OBJECTS = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")


class TextPieces:
    """Where the elements of an array decoded by :func:`walk_instances` are in its text: piece ``p`` is
    ``text[start[p]:end[p]]``, whole elements (comma-separated) from element ``first[p]`` on. :meth:`fetch`
    decodes element ``i`` again, from its piece (the last piece is cached: fetching in order decodes each once)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.start: list[int] = []
        self.end: list[int] = []
        self.first: list[int] = []
        self.n = 0
        self._scan = json.JSONDecoder().scan_once
        self._cached: tuple[int, list] = (-1, [])

    def add(self, start: int, end: int, count: int) -> None:
        self.start.append(start)
        self.end.append(end)
        self.first.append(self.n)
        self.n += count

    def fetch(self, i: int):
        p = bisect.bisect_right(self.first, i) - 1
        if self._cached[0] != p:
            self._cached = (p, self._scan("[" + self.text[self.start[p]:self.end[p]] + "]", 0)[0])
        return self._cached[1][i - self.first[p]]


def walk_instances(text: str, on_annotations: Callable[[list], None], step: int = 1 << 19):
    """Decode a JSON text whose top level is an object, handing its ``annotations`` array to ``on_annotations``
    a piece at a time instead of building it: the annotations of a large file never all exist as Python objects
    at once. The values are ``json``'s own: its scanner decodes each piece, about ``step`` characters of whole
    elements (cut where an object ends and the next begins, ``}, {``; where such a cut is not between two
    elements, the piece fails to decode and its elements are decoded one by one).

    Returns:
        ``(fields, pieces)``: the object's other fields, and the annotations' :class:`TextPieces`. ``None`` when
        the text is not such an object (invalid JSON, a top level that is not an object, a repeated top-level key,
        no ``annotations`` array): decode it with :func:`loads` then, which gives the answer (or the error) for
        any text.
    """
    scan = json.JSONDecoder().scan_once
    ws = _WHITESPACE.match
    fields: dict = {}
    pieces = TextPieces(text)
    try:
        i = ws(text, 0).end()
        if text[i:i + 1] != "{":
            return None
        i = ws(text, i + 1).end()
        while text[i:i + 1] != "}":
            if text[i:i + 1] != '"':
                return None
            key, i = json.decoder.scanstring(text, i + 1)
            i = ws(text, i).end()
            if text[i:i + 1] != ":" or key in fields:
                return None
            i = ws(text, i + 1).end()
            if key == "annotations":
                if text[i:i + 1] != "[":
                    return None
                i = _walk_array(text, ws(text, i + 1).end(), scan, on_annotations, pieces, step)
                fields[key] = None
            else:
                fields[key], i = scan(text, i)
            i = ws(text, i).end()
            if text[i:i + 1] != ",":
                break
            i = ws(text, i + 1).end()
            if text[i:i + 1] != '"':
                return None
        if text[i:i + 1] != "}" or ws(text, i + 1).end() != len(text) or "annotations" not in fields:
            return None
    except (StopIteration, json.JSONDecodeError):
        return None
    del fields["annotations"]
    return fields, pieces


def _walk_array(text: str, i: int, scan, on_elements, pieces: TextPieces, step: int) -> int:
    """Decode the array whose first element is at ``text[i]``, a piece at a time; returns the index after its
    ``]``. Raises ``StopIteration`` or ``JSONDecodeError`` where the text is not a JSON array."""
    ws = _WHITESPACE.match
    if text[i:i + 1] == "]":
        return i + 1
    failures = 0
    while True:
        cut = _BETWEEN_OBJECTS.search(text, i + step) if failures < 3 else None
        k = cut.start() + 1 if cut else len(text)
        if failures < 3:
            piece = "[" + text[i:k] + "]"
            try:
                elements, end = scan(piece, 0)
            except (StopIteration, json.JSONDecodeError):
                failures += 1
            else:
                if end < len(piece):  # the array ends inside the piece, at text[i + end - 2]
                    on_elements(elements)
                    pieces.add(i, i + end - 2, len(elements))
                    return i + end - 1
                if cut is None:  # the rest of the text was elements: the array does not end
                    raise StopIteration(len(text))
                on_elements(elements)
                pieces.add(i, k, len(elements))
                i = cut.end() - 1
                continue
        # The cut fell inside an element (a list of objects in an object): its elements one by one, up to the cut.
        elements = []
        while True:
            obj, end = scan(text, i)
            elements.append(obj)
            pieces.add(i, end, 1)
            i = ws(text, end).end()
            if text[i:i + 1] == "]":
                on_elements(elements)
                return i + 1
            if text[i:i + 1] != ",":
                raise StopIteration(i)
            i = ws(text, i + 1).end()
            if i >= k:
                break
        on_elements(elements)


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
