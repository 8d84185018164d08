"""Generators shared by the fuzz tests: odd JSON/YAML values, mutations of a valid tree, damaged bytes."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# Values that break naive readers: huge and negative integers, NaN, infinities, unicode look-alike digits, empty and
# multi-line strings, booleans where numbers belong.
ODD_NUMBERS = st.sampled_from([0, -1, 1, 2, 255, 65535, 2**31, -(2**31), 2**63, 10**30, -(10**30), 0.5, -0.0, 1e-300,
                               1e308, -1e308, float("nan"), float("inf"), float("-inf"), True, False])
ODD_STRINGS = st.sampled_from(["", " ", "\n", "a\nb", "nan", "inf", "1e999", "²", "٣", "-1", "0x10", "\u2028", "é",
                               "../x", "/abs", "\x00", "null", "[1, 2]", "{a: 1}", "x" * 300])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), ODD_NUMBERS,
                    ODD_STRINGS)


def values(keys: list[str] | None = None, max_leaves: int = 8) -> st.SearchStrategy:
    """Any JSON-like value (scalars, lists, dicts with string keys, some of them ``keys``)."""
    key = st.text(max_size=6) if not keys else st.one_of(st.sampled_from(keys), st.text(max_size=6))
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4),
                        max_leaves=max_leaves)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _node(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate(draw, tree: Any, replacement: st.SearchStrategy, rounds: int = 3) -> Any:
    """A deep copy of ``tree`` with 1..``rounds`` random edits: a node replaced by a drawn value, a key or list item
    deleted, a list item duplicated (duplicate ids), a value inserted into a list."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, rounds))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "insert"]))
        if not path:
            if kind == "replace":
                tree = draw(replacement)
            continue
        parent, last = _node(tree, path[:-1]), path[-1]
        if kind == "replace":
            parent[last] = draw(replacement)
        elif kind == "delete":
            del parent[last]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        elif kind == "insert" and isinstance(parent, list):
            parent.insert(last, draw(replacement))
    return tree


def damage(draw, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, or with junk spliced in."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if not data:
        return draw(st.binary(max_size=64))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=32)) + data[i:]
