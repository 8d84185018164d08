"""Checking plain (YAML) values against Python type annotations, and comparing recipes: the helpers behind
:mod:`resdense.config` and the engine's ``model`` / ``data`` checks, with their one-line error messages."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resdense.errors import ConfigError

__all__ = ["NOT_SET", "check_type", "first_difference", "unknown_key_error", "wrong_type_error"]


# ---- comparing recipes ------------------------------------------------------------------------------------------
NOT_SET = "<not set>"


def first_difference(old: Any, new: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first place where two plain recipe values differ, as ``(dotted key, old value, new value)`` (a key
    present on one side only has the value :data:`NOT_SET` on the other); ``None`` when they are equal. Mappings
    are walked in ``old``'s key order, then ``new``'s extra keys; lists of equal length element by element
    (``key[i]``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{key}.{k}"
            if k not in old or k not in new:
                return sub, old.get(k, NOT_SET), new.get(k, NOT_SET)
            if (found := first_difference(old[k], new[k], sub)) is not None:
                return found
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if (found := first_difference(a, b, f"{key}[{i}]")) is not None:
                return found
        return None
    return None if old == new else (key, old, new)


# ---- type checking -----------------------------------------------------------------------------------------------
def check_type(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type annotation (int, float, bool, str, lists, tuples, dicts, unions, Literal).

    Types YAML cannot express (modules, callables) accept anything: the constructor will judge.
    """
    if annotation is Any or annotation is dataclasses.MISSING or annotation is None:
        return True
    if annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(check_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # NaN and infinity are no settings (lr: .nan would train on silently)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int)
                                                                                  or math.isfinite(value))
    if annotation is str:
        return isinstance(value, str)
    if annotation in (os.PathLike, Path):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(check_type(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(check_type(v, args[0]) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or annotation in (dict,):
        if not isinstance(value, Mapping):
            return False
        return not args or all(check_type(v, args[1]) for v in value.values())
    return True


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    return any(_non_finite(v) for v in items)


def wrong_type_error(source: str, key: str, value: Any, annotation: Any) -> ConfigError:
    """``<source>: <key> = <value> is not a <type>`` (or holds NaN or infinity, which no setting may be)."""
    if _non_finite(value):
        return ConfigError(f"{source}: {key} = {value!r}: NaN and infinity are not settings")
    expected = _type_name(annotation)
    article = "an" if expected[0] in "aeiou" else "a"
    return ConfigError(f"{source}: {key} = {value!r} is not {article} {expected}")


def unknown_key_error(source: str, key: str, known: Sequence[str]) -> ConfigError:
    """``<source>: unknown key '<key>' (did you mean ...?); known: ...`` (the closest known names as the hint)."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=3)
    if close:  # every name as close as the closest one (flip: hflip or vflip), alphabetically
        score = {c: difflib.SequenceMatcher(None, leaf, c).ratio() for c in close}
        close = sorted(c for c in close if score[c] == score[close[0]])
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{hint}; known: {', '.join(sorted(known))}")
