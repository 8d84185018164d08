"""Reading images and label masks from disk, with one-line errors that name the file.

Images are decoded with OpenCV (``cv2.imdecode`` is faster than PIL and hands back a numpy array without an extra
copy); it applies the EXIF orientation tag, so the pixels come out as a viewer shows them, exactly once. Masks are
read with PIL because OpenCV turns palette PNGs into colours, while a palette mask's meaning is its indices.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resdense.errors import DataError

__all__ = ["read_image", "read_mask", "image_size", "IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "to_image_tensor"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
# Worker processes share the CPU with the loader; OpenCV's own thread pool only adds contention there.
cv2.setNumThreads(1)


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read image file ({err.strerror})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB array.

    Grayscale, palette and RGBA images become 3-channel RGB (alpha is dropped); 16-bit images are scaled to 8 bits;
    the EXIF orientation is applied.

    Returns:
        ``uint8`` array ``[H, W, 3]``, C-contiguous.

    Raises:
        DataError: the file is missing, empty, truncated or not an image (the message names the file).
    """
    data = _read_bytes(path)
    if not data:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    # A JPEG cut short still decodes (libjpeg pads it with grey and only prints a warning): refuse it instead.
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker); re-export or remove the file")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV decodes: PIL names the problem
        img = None
    if img is None:
        img = _read_image_pil(path)  # formats OpenCV was built without (e.g. some TIFF/WebP variants)
    else:
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)
    return img


def _read_image_pil(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image as displayed (EXIF orientation applied), reading only its header.

    Raises:
        DataError: the file is missing or not an image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    # Orientations 5..8 transpose the axes (EXIF 2.32, tag 0x0112).
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_mask(path: str | os.PathLike, color_map: dict[tuple[int, int, int], int] | None = None) -> np.ndarray:
    """Read a label mask as class indices.

    L (8-bit grey), P (palette: the indices, never the colours), I;16 / I (16-bit and 32-bit grey) and 1 (binary)
    masks are returned as they are stored. RGB masks need ``color_map`` ``{(r, g, b): index}``; a colour that is not
    in the map is an error naming the file and the colour.

    Returns:
        integer array ``[H, W]`` (``uint8``, ``uint16`` or ``int32``).

    Raises:
        DataError: missing or unreadable file, RGB mask without ``color_map``, colour not in ``color_map``.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("L", "P"):
                arr = np.asarray(im)
            elif mode == "1":
                arr = np.asarray(im, dtype=np.uint8)
            elif mode.startswith("I;16"):
                arr = np.asarray(im).astype(np.uint16, copy=False)
            elif mode == "I":
                arr = np.asarray(im).astype(np.int32, copy=False)
            elif mode in ("RGB", "RGBA"):
                arr = np.asarray(im.convert("RGB"))
            elif mode == "LA":
                arr = np.asarray(im.getchannel("L"))
            else:
                raise DataError(f"{path}: unsupported mask mode {mode!r} (expected L, P, I;16, I, 1 or RGB)")
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable mask ({type(err).__name__}: {err})") from None
    if arr.ndim == 3:
        if color_map is None:
            raise DataError(
                f"{path}: RGB colour mask (mode {mode}) but no color_map was given; pass "
                "color_map={(r, g, b): class_index} or save the mask as L/P (class indices)"
            )
        arr = _colors_to_indices(arr, color_map, path)
    return arr


def _colors_to_indices(rgb: np.ndarray, color_map: dict, path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for (r, g, b) in color_map], dtype=np.int32)
    vals = np.array(list(color_map.values()), dtype=np.int32)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    found = keys[pos] == code
    if not found.all():
        c = int(code[~found].flat[0])
        raise DataError(
            f"{path}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in color_map "
            f"({int((~found).sum())} pixels)"
        )
    return vals[pos]


def to_image_tensor(img: np.ndarray):
    """``uint8 [H, W, 3]`` array -> ``float32 [3, H, W]`` tensor in ``[0, 1]`` (one copy, contiguous)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return t.to(torch.float32).div_(255.0)
