"""Fixtures of the data tests: a shapes dataset, and writers of tiny COCO, mask-folder and VOC datasets
(``shared_data`` is in the top-level conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    from resdense.data import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=4, size=128, seed=0)


def write_image(path: Path, h: int, w: int, mode: str = "RGB", seed: int = 0, **save) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, **save)
    return arr


def make_coco(tmp: Path, annotations=None, *, images=None, categories=None, size=(40, 60), **extra) -> Path:
    """A COCO file ``tmp/ann.json`` with images ``tmp/img/{1,2}.png`` of ``size`` (H, W) unless given."""
    h, w = size
    if images is None:
        images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i in (1, 2)]
        for i in (1, 2):
            write_image(tmp / "img" / f"{i}.png", h, w, seed=i)
    if categories is None:
        categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0,
             "segmentation": [[5, 6, 15, 6, 15, 18, 5, 18]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 8, 8], "area": 64, "iscrowd": 0,
             "segmentation": [[20, 10, 28, 10, 28, 18, 20, 18]]},
        ]
    ann = tmp / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories, **extra}))
    return ann


def make_mask_folder(root: Path, values: list[list[int]], size: tuple[int, int] = (8, 12)) -> tuple[Path, Path]:
    """``root/images/NNN.png`` + ``root/masks/NNN.png`` (L mode); mask ``i`` holds exactly the values ``values[i]``
    (in vertical bands). Returns ``(images_dir, masks_dir)``."""
    h, w = size
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, vals in enumerate(values):
        write_image(root / "images" / f"{i:03d}.png", h, w, seed=i)
        band = np.array_split(np.arange(w), max(len(vals), 1))
        mask = np.zeros((h, w), np.uint8)
        for v, cols in zip(vals, band, strict=False):
            mask[:, cols] = v
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:03d}.png")
    return root / "images", root / "masks"


def make_voc(root: Path, objects: list[list[str]], size: tuple[int, int] = (30, 40)) -> tuple[Path, Path]:
    """``root/JPEGImages/imgNNN.jpg`` + ``root/Annotations/imgNNN.xml``; image ``i`` has one box per class name in
    ``objects[i]``. Returns ``(images_dir, annotations_dir)``."""
    h, w = size
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, names in enumerate(objects):
        write_image(root / "JPEGImages" / f"img{i:03d}.jpg", h, w, seed=i)
        objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{2 + k}</xmin><ymin>3</ymin><xmax>{12 + k}</xmax>"
                       f"<ymax>15</ymax></bndbox></object>" for k, n in enumerate(names))
        (root / "Annotations" / f"img{i:03d}.xml").write_text(
            f"<annotation><filename>img{i:03d}.jpg</filename><size><width>{w}</width><height>{h}</height></size>"
            f"{objs}</annotation>")
    return root / "JPEGImages", root / "Annotations"
