"""Split files: which samples of a folder or annotation file a dataset serves (``split=`` of every adapter).

A split is a text file of sample names, one per line, as in Pascal VOC's ``ImageSets/*/train.txt`` and mmseg's
``ann_file``; blank lines are skipped and ``#`` starts a comment (at the start of a line or after a space). It may
also be given as a list of names. A name is a sample's file name or stem (the path below the dataset's folder, with
or without its extension, or just the last part of it when that is unambiguous; a sample's whole path always names
that sample, also where it is another sample's stem). The dataset keeps its own order (sorted file names, or the
annotation file's order) and serves the samples the split names; the order of the lines
does not matter, so two split files with the same names give the same dataset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from resdense.errors import ConfigError, DataError

__all__ = ["SplitArg", "read_split", "select_split", "name_keys", "quote_names"]

SplitArg = str | os.PathLike | Sequence[str]
_COMMENT = re.compile(r"(^|\s)#.*$")


def quote_names(names: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` (and ``and N more`` past ``limit``) for messages."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_split(split: SplitArg) -> tuple[list[str], str]:
    """The names of a split and where they come from (the file, or ``"split list"``), in the order given.

    Raises:
        DataError: missing or unreadable file, a name listed twice, no names at all.
        ConfigError: ``split`` is neither a path nor a list of strings.
    """
    if isinstance(split, str | os.PathLike):
        path = Path(split)
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is no name
        except FileNotFoundError:
            raise DataError(f"{path}: split file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read split file ({getattr(err, 'strerror', None) or err})") from None
        where = str(path)
        lines = [(n, _COMMENT.sub("", line).strip()) for n, line in enumerate(text.splitlines(), start=1)]
    elif isinstance(split, Sequence) and all(isinstance(n, str) for n in split):
        where = "split list"
        lines = [(n, name.strip()) for n, name in enumerate(split, start=1)]
    else:
        raise ConfigError(f"split = {split!r} is neither a split file (path) nor a list of sample names")
    first_seen: dict[str, int] = {}
    for n, name in lines:
        if not name:
            continue
        if name in first_seen:
            line = "line" if where != "split list" else "item"
            raise DataError(f"{where}: {name!r} is listed twice ({line}s {first_seen[name]} and {n})")
        first_seen[name] = n
    if not first_seen:
        raise DataError(f"{where}: the split lists no sample names")
    return list(first_seen), where


def name_keys(relpath: str) -> tuple[str, ...]:
    """The names a sample answers to: its path below the dataset folder (``/``-separated) with and without the
    extension, and the same for its last part: ``"a/b.png"`` -> ``("a/b.png", "a/b", "b.png", "b")``."""
    p = PurePosixPath(relpath)
    keys = (str(p), str(p.with_suffix("")) if p.suffix else str(p), p.name, p.stem)
    return tuple(dict.fromkeys(keys))


def select_split(keys: Sequence[Iterable[str]], split: SplitArg, what: str) -> list[int]:
    """Indices of the samples a split names, in dataset order.

    Args:
        keys: for each sample of the dataset, the names it answers to (see :func:`name_keys`).
        split: a split file or a list of names (see the module docstring).
        what: the dataset, for messages (its folder or annotation file).

    Raises:
        DataError: names not in the dataset (the message names the split file and the first missing names), a
            name that fits several samples, two names for one sample.
    """
    names, where = read_split(split)
    keys = [tuple(ks) for ks in keys]
    exact = {ks[0]: i for i, ks in enumerate(keys) if ks}  # a whole path names its sample, even where it is
    owner, ambiguous = dict(exact), set()                   # another sample's stem ("x" beside "x.png")
    for i, ks in enumerate(keys):
        for k in ks[1:]:
            if k not in exact and owner.setdefault(k, i) != i:
                ambiguous.add(k)
    missing = [n for n in names if n not in owner]
    if missing:
        example = next(iter(keys[0]), None) if len(keys) else None
        hint = f"; names are file names or stems, e.g. {example!r}" if example is not None else ""
        raise DataError(f"{where}: {len(missing)} of {len(names)} name(s) not found in {what}: "
                        f"{quote_names(missing)}{hint}")
    clash = [n for n in names if n in ambiguous]
    if clash:
        raise DataError(f"{where}: {clash[0]!r} fits several samples of {what}; give the path with its extension")
    chosen: dict[int, str] = {}
    for n in names:
        if owner[n] in chosen:
            raise DataError(f"{where}: {chosen[owner[n]]!r} and {n!r} name the same sample of {what}")
        chosen[owner[n]] = n
    return sorted(chosen)
