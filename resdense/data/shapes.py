"""A small synthetic dataset on disk: squares, circles and triangles, as COCO instances and semantic masks.

It is a real dataset in the formats users bring (JPEG images, a COCO instances JSON with polygons, L-mode mask
PNGs), small and learnable enough that a U-Net or Faster R-CNN trains on it on a CPU in minutes. Every pixel is
derived from ``seed``, so the JSON and masks are byte-identical between runs (the JPEGs too, for one libjpeg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from resdense.coco.rle import decode_segms
from resdense.errors import ConfigError
from resdense.files import make_dir, write_json, write_with

__all__ = ["make_shapes", "ShapesDataset", "ShapesSplit", "SHAPES_CLASSES"]

SHAPES_CLASSES = ("square", "circle", "triangle")


@dataclass(frozen=True)
class ShapesSplit:
    """Paths of one split: ``images/*.jpg``, ``masks/*.png`` and ``instances.json``."""

    root: Path
    images: Path
    masks: Path
    instances: Path
    num_images: int


@dataclass(frozen=True)
class ShapesDataset:
    """What :func:`make_shapes` wrote. ``classes`` index 0 is background in the masks; COCO ids are 1..3."""

    root: Path
    train: ShapesSplit
    val: ShapesSplit
    classes: tuple[str, ...] = SHAPES_CLASSES

    def split(self, name: str) -> ShapesSplit:
        if name not in ("train", "val"):
            raise ConfigError(f"split = {name!r} is not 'train' or 'val'")
        return getattr(self, name)


def _polygon(kind: int, cx: float, cy: float, s: float, angle: float) -> np.ndarray:
    """Vertices ``[V, 2]`` of a shape of extent about ``s`` centred at ``(cx, cy)``."""
    if kind == 0:  # square of side s / sqrt(2) rotated: its extent stays within s
        r, n = s / 2, 4
    elif kind == 1:  # circle: a 48-gon
        r, n = s / 2, 48
    else:  # equilateral triangle inscribed in a circle of diameter s
        r, n = s / 2, 3
    t = angle + np.arange(n) * 2 * math.pi / n
    pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    return np.round(pts, 2)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    base = rng.uniform(70, 185, size=3)
    # Low-frequency texture (an 8x8 random grid, bilinearly upsampled) plus mild pixel noise.
    grid = rng.normal(0, 14, size=(8, 8, 3)).astype(np.float32)
    texture = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
    img = base[None, None, :] + texture + rng.normal(0, 5, size=(size, size, 3))
    return img, base


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    for _ in range(200):
        c = rng.uniform(0, 255, size=3)
        if all(np.linalg.norm(c - a) > 90 for a in avoid):
            return c
    return c


def _render(rng: np.random.Generator, size: int, image_id: int, ann_id: int):
    img, base = _background(rng, size)
    sem = np.zeros((size, size), dtype=np.uint8)
    scale = size / 128
    placed: list[tuple[float, float, float, float]] = []
    colours = [base]
    anns = []
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(0, 3))
        s = float(rng.uniform(16, 48)) * scale
        for _try in range(100):
            cx, cy = rng.uniform(s / 2 + 2, size - s / 2 - 2, size=2)
            box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
            if all(box[2] + 3 < p[0] or p[2] + 3 < box[0] or box[3] + 3 < p[1] or p[3] + 3 < box[1] for p in placed):
                break
        else:
            continue  # no free spot: fewer objects in this image
        placed.append(box)
        poly = _polygon(kind, float(cx), float(cy), s, float(rng.uniform(0, 2 * math.pi)))
        flat = [float(v) for v in poly.reshape(-1)]
        m = decode_segms([[flat]], size, size)[0].astype(bool)  # pycocotools' rasteriser: the COCO mask exactly
        colour = _pick_colour(rng, colours)
        colours.append(colour)
        img[m] = colour + rng.normal(0, 5, size=(int(m.sum()), 3))
        sem[m] = kind + 1
        x0, y0 = poly.min(axis=0).clip(0, size)
        x1, y1 = poly.max(axis=0).clip(0, size)
        anns.append({"id": ann_id + len(anns), "image_id": image_id, "category_id": kind + 1, "iscrowd": 0,
                     "segmentation": [flat], "area": float(m.sum()),
                     "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                              round(float(y1 - y0), 2)]})
    return np.clip(img, 0, 255).round().astype(np.uint8), sem, anns


def _write_split(root: Path, n: int, size: int, seed: int, split_index: int) -> ShapesSplit:
    images, masks = root / "images", root / "masks"
    make_dir(images)
    make_dir(masks)
    rng = np.random.default_rng([seed, split_index])
    coco = {"info": {"description": f"resdense shapes, seed {seed}"}, "images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                           for i, name in enumerate(SHAPES_CLASSES)]}
    for i in range(n):
        name = f"{i:05d}"
        img, sem, anns = _render(rng, size, i + 1, len(coco["annotations"]) + 1)
        write_with(images / f"{name}.jpg", partial(Image.fromarray(img).save, format="JPEG", quality=92))
        write_with(masks / f"{name}.png", partial(Image.fromarray(sem, mode="L").save, format="PNG"))
        coco["images"].append({"id": i + 1, "file_name": f"{name}.jpg", "height": size, "width": size})
        coco["annotations"].extend(anns)
    instances = root / "instances.json"
    write_json(instances, coco, separators=(",", ":"), indent=None)
    return ShapesSplit(root=root, images=images, masks=masks, instances=instances, num_images=n)


def make_shapes(root, n_train: int, n_val: int, size: int = 128, seed: int = 0) -> ShapesDataset:
    """Write the shapes dataset under ``root`` and return its paths.

    Each image holds 1-4 non-overlapping objects (squares, circles, triangles; 16-48 px across at ``size=128``,
    scaled with ``size``) in distinct random colours on a mildly textured, noisy background.

    Layout: ``root/{train,val}/images/NNNNN.jpg``, ``root/{train,val}/masks/NNNNN.png`` (L mode: 0 background,
    1 square, 2 circle, 3 triangle), ``root/{train,val}/instances.json`` (COCO, polygons, category ids 1..3,
    image and annotation ids from 1, ``file_name`` relative to ``images/``).

    Args:
        root: output folder (created).
        n_train, n_val: number of images per split.
        size: side of the square images in pixels (at least 64).
        seed: everything is a function of it.
    """
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} = {v!r} is not a non-negative integer")
    if not isinstance(size, int) or size < 64:
        raise ConfigError(f"size = {size!r}: shapes need images of at least 64 px")
    root = Path(root)
    train = _write_split(root / "train", n_train, size, seed, 0)
    val = _write_split(root / "val", n_val, size, seed, 1)
    return ShapesDataset(root=root, train=train, val=val)
