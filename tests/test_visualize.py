"""Prediction pictures: every class is drawn and in the legend, class 0 too, unless it is a declared background."""

from __future__ import annotations

import numpy as np
import pytest

from resdense.visualize import is_background, overlay_mask, palette

CAMVID = ["Sky", "Building", "Pole"]


def _legend_swatches(picture: np.ndarray, width: int) -> set[tuple[int, int, int]]:
    """The swatch colours in the legend panel, read back from its pixels (each swatch's centre, row by row)."""
    panel = picture[:, width:]
    found = set()
    for y in range(4 + 6, panel.shape[0], 16):
        found.add(tuple(int(c) for c in panel[y, 6 + 5]))
    return found - {(255, 255, 255)}


@pytest.mark.parametrize("names,drawn", [(CAMVID, True), (["background", "cat", "dog"], False),
                                         (["_background_", "cat", "dog"], False)])
def test_class_0_is_drawn_and_listed_unless_a_declared_background(names, drawn):
    image = np.full((32, 48, 3), 100, np.uint8)
    mask = np.zeros((32, 48), np.int64)
    mask[:, 24:] = 2
    picture = overlay_mask(image, mask, names)
    colours = palette(len(names), background=not drawn)
    region0 = picture[8:24, 4:16].reshape(-1, 3)
    assert (region0 != 100).any(axis=1).all() == drawn  # class 0's pixels coloured, or left as they were
    swatches = _legend_swatches(picture, 48)
    assert (tuple(int(c) for c in colours[0]) in swatches) == drawn
    assert tuple(int(c) for c in colours[2]) in swatches  # class 2 always
    assert tuple(int(c) for c in colours[1]) not in swatches  # absent from the mask: not listed


def test_background_rule_and_override():
    assert is_background(["Background", "x"]) and is_background(["bg"]) and not is_background(CAMVID)
    image = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), np.int64)
    assert (overlay_mask(image, mask, CAMVID, background=True, legend=False) == 100).all()
    assert not (overlay_mask(image, mask, ["background", "x"], background=False, legend=False) == 100).all()
