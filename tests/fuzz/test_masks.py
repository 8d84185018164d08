"""Fuzzing the reader of image + mask folders (``MaskDataset``, ``image_io.read_mask`` / ``read_image``,
``resdense data check``).

Masks of every PIL mode (1, L, P, I;16, I, LA, RGB, RGBA, and F, which is refused), values inside and outside the
class range, ``value_map`` and ``color_map``, masks of another size than their image, images of several modes and
truncated or corrupted files. A mask that is served must equal the one written (after the maps); one that cannot be
must be refused in one line.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from resdense.data import MaskDataset, check_path
from resdense.errors import DataError, ResdenseError

from ._fuzz import case, check_message, fuzz, outcome, scratch
from .strategies import damage

pytestmark = [pytest.mark.filterwarnings("ignore::resdense.data.common.DataWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning:PIL"),  # PIL's notes on the corrupted files
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\\")
STEMS = st.text(NAME_CHARS, min_size=1, max_size=8).filter(lambda s: not s.startswith("."))
# mode -> (file suffixes that can hold it, value range of the generated array)
MASK_MODES = {"1": ((".png", ".bmp", ".tif"), 0, 1), "L": ((".png", ".bmp", ".tif"), 0, 255),
              "P": ((".png", ".bmp", ".tif"), 0, 255), "I;16": ((".png", ".tif"), 0, 65535),
              "I": ((".tif",), -(2**31), 2**31 - 1), "LA": ((".png", ".tif"), 0, 255),
              "RGB": ((".png", ".bmp", ".tif"), 0, 255), "RGBA": ((".png", ".tif"), 0, 255), "F": ((".tif",), 0, 3)}
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif", "webp": ".webp"}
COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


@st.composite
def mask_arrays(draw, mode: str, h: int, w: int, k: int, ignore: int) -> np.ndarray:
    """Values of a mask of ``mode``: a few drawn values (mostly classes, sometimes ``ignore`` or anything the mode
    can hold) scattered by a drawn seed, so that a case costs a few draws, not one per pixel."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode in ("RGB", "RGBA"):
        colours = draw(st.lists(st.sampled_from(COLOURS), min_size=1, max_size=3))
        rgb = np.array(colours, np.uint8)[rng.integers(0, len(colours), (h, w))]
        return rgb if mode == "RGB" else np.concatenate([rgb, np.full((h, w, 1), 200, np.uint8)], axis=2)
    _, lo, hi = MASK_MODES[mode]
    pool = st.one_of(st.integers(0, max(0, min(k - 1, hi))), st.just(ignore).filter(lambda v: lo <= v <= hi),
                     st.integers(lo, hi))
    vals = draw(st.lists(pool, min_size=1, max_size=3))
    arr = np.array(vals, np.int64)[rng.integers(0, len(vals), (h, w))]
    if mode == "LA":
        return np.stack([arr, np.full_like(arr, 77)], axis=2).astype(np.uint8)
    return arr


def claim_size(data: bytes, w: int, h: int) -> bytes:
    """The file with a header claiming ``w`` x ``h`` pixels (PNG, its checksum kept valid; BMP; TIFF)."""
    out = bytearray(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        out[16:24] = struct.pack(">II", w, h)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif data[:2] == b"BM" and len(data) >= 26:
        out[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
    elif data[:4] == b"II*\x00":
        ifd = struct.unpack("<I", data[4:8])[0]
        for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
            e = ifd + 2 + 12 * i
            tag, kind = struct.unpack("<HH", data[e:e + 4])
            if tag in (256, 257):
                v = w if tag == 256 else h
                out[e + 8:e + 12] = struct.pack("<HH", min(v, 65535), 0) if kind == 3 else struct.pack("<I", v)
    return bytes(out)


def _save_mask(path, mode: str, arr: np.ndarray) -> None:
    if mode == "1":
        im = Image.fromarray(arr.astype(bool))
    elif mode == "P":
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    elif mode == "I;16":
        im = Image.fromarray(arr.astype(np.uint16))
    elif mode == "I":
        im = Image.fromarray(arr.astype(np.int32))
    elif mode == "F":
        im = Image.fromarray(arr.astype(np.float32))
    else:
        im = Image.fromarray(arr.astype(np.uint8), mode=mode)
    im.save(path)


@st.composite
def mask_folders(draw):
    k = draw(st.integers(1, 5))
    ignore = draw(st.sampled_from([255, 255, k, 1000, -1]))
    n = draw(st.integers(1, 3))
    stems = draw(st.lists(STEMS, min_size=n, max_size=n, unique_by=lambda s: s.lower()))
    pairs = []
    for stem in sorted(stems):
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        mode = draw(st.sampled_from(sorted(MASK_MODES)))
        mh, mw = (h, w) if draw(st.integers(0, 4)) else (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        pairs.append({"stem": stem, "image_mode": draw(st.sampled_from(["RGB", "L", "RGBA", "I;16"])),
                      "image_format": draw(st.sampled_from(sorted(IMAGE_FORMATS))),
                      "suffix": draw(st.sampled_from(MASK_MODES[mode][0])),
                      "size": (h, w), "mode": mode, "mask": draw(mask_arrays(mode, mh, mw, k, ignore))})
    value_map = color_map = None
    if draw(st.integers(0, 3)) == 0:
        raw = sorted({int(v) for p in pairs if p["mode"] not in ("RGB", "RGBA", "LA", "F")
                      for v in np.unique(p["mask"]) if 0 <= v < 65536})
        keep = draw(st.lists(st.sampled_from(raw), unique=True)) if raw else []
        value_map = {v: draw(st.sampled_from([*range(k), ignore])) for v in keep}
    if draw(st.booleans()):
        colours = draw(st.lists(st.sampled_from(COLOURS), unique=True, max_size=len(COLOURS)))
        color_map = {c: draw(st.integers(0, k - 1)) for c in colours} or None  # {}: no map, as the dataset reads it
    return {"k": k, "ignore": ignore, "pairs": pairs, "value_map": value_map, "color_map": color_map}


def _write(root, spec: dict) -> tuple:
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for p in spec["pairs"]:
        h, w = p["size"]
        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        fmt, mode = p["image_format"], p["image_mode"]
        if mode == "I;16" and fmt in ("png", "tiff"):
            im = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
        else:
            im = Image.fromarray(pixels).convert(mode if mode != "I;16" and (fmt, mode) != ("jpeg", "RGBA") else "RGB")
        im.save(images / (p["stem"] + IMAGE_FORMATS[fmt]), format=fmt.upper())
        _save_mask(masks / (p["stem"] + p["suffix"]), p["mode"], p["mask"])
    return images, masks


def _raw(p: dict, color_map) -> np.ndarray | None:
    """The mask's values as the dataset must read them (before value_map), or None when it must refuse it."""
    mode, arr = p["mode"], p["mask"]
    if mode == "F":
        return None
    if mode in ("RGB", "RGBA"):
        if color_map is None:
            return None
        codes = [tuple(c) for c in arr[..., :3].reshape(-1, 3).tolist()]
        if any(c not in color_map for c in codes):
            return None
        return np.array([color_map[c] for c in codes], np.int64).reshape(arr.shape[:2])
    return arr[..., 0].astype(np.int64) if mode == "LA" else arr.astype(np.int64)


def _expected(p: dict, spec: dict) -> np.ndarray | None:
    """The served mask, or None when the sample must be refused."""
    raw = _raw(p, spec["color_map"])
    if raw is None or raw.shape != p["size"]:
        return None
    if spec["value_map"] is not None:
        if not all(int(v) in spec["value_map"] for v in np.unique(raw)):
            return None
        return np.vectorize(lambda v: spec["value_map"][int(v)], otypes=[np.int64])(raw)
    k, ignore = spec["k"], spec["ignore"]
    return raw if (((raw >= 0) & (raw < k)) | (raw == ignore)).all() else None


def _binary_255(spec: dict) -> bool:
    """The dataset refuses a first mask of only 0 and ignore_index, mostly ignore_index (a 0/255 binary mask)."""
    raw = _raw(spec["pairs"][0], None)
    if spec["value_map"] is not None or spec["color_map"] is not None or raw is None:
        return False
    ignore = spec["ignore"]
    return set(np.unique(raw).tolist()) == {0, ignore} and (raw == ignore).mean() > 0.25


@fuzz(300)
@given(spec=mask_folders())
def test_masks_are_served_as_written_or_refused(fuzz_dir, spec):
    case("mask folders")
    with scratch(fuzz_dir) as root:
        images, masks = _write(root, spec)
        first_raw = _raw(spec["pairs"][0], None)
        bad_ignore = 0 <= spec["ignore"] < spec["k"]
        ds = outcome(MaskDataset, images, masks, classes=spec["k"], ignore_index=spec["ignore"],
                     value_map=spec["value_map"], color_map=spec["color_map"])
        if isinstance(ds, ResdenseError):
            # refused as a whole: a bad setting, a first mask that is not readable without color_map, or 0/255
            first = spec["pairs"][0]
            assert (bad_ignore or _binary_255(spec) or first["mode"] == "F"
                    or (first_raw is None and spec["value_map"] is None and spec["color_map"] is None)
                    or (spec["value_map"] and any(v not in range(spec["k"]) and v != spec["ignore"]
                                                  for v in spec["value_map"].values()))), ds
            return
        assert not bad_ignore and not _binary_255(spec)
        for i, p in enumerate(spec["pairs"]):
            want = _expected(p, spec)
            got = outcome(ds.__getitem__, i)
            if want is None:
                assert isinstance(got, DataError), f"{p['mode']} mask served, expected a refusal"
                continue
            assert not isinstance(got, ResdenseError), got
            image, mask = got
            assert image.shape == (3, *p["size"]) and 0 <= image.min() and image.max() <= 1
            np.testing.assert_array_equal(mask.numpy(), want)
        report = check_path(root, num_classes=spec["k"], ignore_index=spec["ignore"])
        for line in report.problems + report.warnings + report.checked:
            check_message(line)


@fuzz(300)
@given(spec=mask_folders(), draws=st.data())
def test_damaged_files_are_refused_in_one_line(fuzz_dir, spec, draws):
    case("mask folders")
    with scratch(fuzz_dir) as root:
        images, masks = _write(root, spec)
        files = sorted(images.iterdir()) + sorted(masks.iterdir())
        for path in draws.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True)):
            if draws.draw(st.booleans()):
                size = st.one_of(st.sampled_from([0, 1, 65535, 60000, 2**31 - 1]), st.integers(1, 40))
                path.write_bytes(claim_size(path.read_bytes(), draws.draw(size), draws.draw(size)))
            else:
                path.write_bytes(damage(draws.draw, path.read_bytes()))
        ds = outcome(MaskDataset, images, masks, classes=spec["k"], ignore_index=max(spec["ignore"], spec["k"]),
                     value_map=spec["value_map"], color_map=spec["color_map"])
        if not isinstance(ds, ResdenseError):
            for i in range(len(ds)):
                got = outcome(ds.__getitem__, i)
                if not isinstance(got, ResdenseError):
                    image, mask = got
                    valid = ((mask >= 0) & (mask < ds.num_classes)) | (mask == ds.ignore_index)
                    assert image.shape[1:] == mask.shape and bool(valid.all())
        report = outcome(check_path, root, num_classes=spec["k"], decode=True)
        if not isinstance(report, ResdenseError):
            for line in report.problems + report.warnings + report.checked:
                check_message(line)
