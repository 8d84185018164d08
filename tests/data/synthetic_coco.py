"""A COCO instances file shaped like ``instances_train2017.json``, for the scale test and ``benchmarks/data_speed.py``.

At full scale (``images=118_287``): about 671k annotations (5.67 per image, Poisson), 80 categories with COCO's
non-contiguous ids, star-shaped polygons of 6-21 points with two decimals (one in ten objects in two parts), boxes
and areas that are the polygons' own, 1% crowd regions as uncompressed RLE (as COCO stores them), the image
fields COCO has (``license``, ``coco_url``, ``date_captured``, ``flickr_url``): about 280 MB. Deterministic for a
seed. The file is streamed out chunk by chunk, so generating it never holds the whole dataset in memory. Nothing
here is resdense logic: it only writes data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from resdense.files import make_dir, write_with

__all__ = ["COCO_CATEGORY_IDS", "synthetic_instances", "placeholder_images"]

# The 80 category ids of COCO 2017 (1..90 without the 10 unused ones).
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# (height, width) of COCO images, the common ones; each image gets one of them.
SIZES = [(480, 640), (427, 640), (640, 480), (425, 640), (640, 427), (424, 640), (512, 640), (360, 640)]
_CHUNK = 2000  # images per generated chunk


def _polygons(rng: np.random.Generator, box_xywh: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """One star-shaped polygon (random radii along sorted angles: never self-intersecting) per part of each
    object; returns the segmentations, the boxes of the polygons (xywh) and their areas (shoelace)."""
    n = len(box_xywh)
    parts = np.where(rng.random(n) < 0.1, 2, 1)
    owner = np.repeat(np.arange(n), parts)
    npts = rng.integers(6, 22, len(owner))
    seg = np.repeat(np.arange(len(owner)), npts)
    angles = rng.uniform(0, 2 * np.pi, len(seg))
    order = np.lexsort((angles, seg))
    angles = angles[order]
    radii = rng.uniform(0.3, 1.0, len(seg))
    x, y, w, h = (box_xywh[owner][:, k] for k in range(4))
    # Two-part objects: each part fills one half of the box.
    first = np.r_[True, owner[1:] != owner[:-1]]
    half = parts[owner] == 2
    w = np.where(half, w / 2, w)
    x = np.where(half & ~first, x + w, x)
    cx, cy = (x + w / 2)[seg], (y + h / 2)[seg]
    px = np.round(cx + radii * np.cos(angles) * w[seg] / 2, 2)
    py = np.round(cy + radii * np.sin(angles) * h[seg] / 2, 2)
    # Shoelace area of each polygon, summed per object; extents per object.
    nxt = np.arange(len(seg)) + 1
    ends = np.cumsum(npts)
    nxt[ends - 1] = ends - npts
    cross = px * py[nxt] - px[nxt] * py
    area = np.abs(np.bincount(seg, cross, len(owner))) / 2
    obj = owner[seg]
    x0 = np.full(n, np.inf)
    y0 = np.full(n, np.inf)
    x1 = np.full(n, -np.inf)
    y1 = np.full(n, -np.inf)
    np.minimum.at(x0, obj, px)
    np.minimum.at(y0, obj, py)
    np.maximum.at(x1, obj, px)
    np.maximum.at(y1, obj, py)
    xy = np.stack([px, py], 1).reshape(-1).tolist()
    starts = np.r_[0, ends[:-1]] * 2
    polys = [xy[s:s + 2 * k] for s, k in zip(starts.tolist(), npts.tolist(), strict=True)]
    segms: list[list] = [[] for _ in range(n)]
    for i, p in zip(owner.tolist(), polys, strict=True):
        segms[i].append(p)
    boxes = np.round(np.stack([x0, y0, x1 - x0, y1 - y0], 1), 2)
    return segms, boxes, np.round(np.bincount(owner, area, n), 2)


def _crowd_rle(box: np.ndarray, h: int, w: int) -> dict:
    """The filled box as uncompressed RLE (column-major runs, starting with a 0-run)."""
    x0, y0, x1, y1 = int(box[0]), int(box[1]), int(np.ceil(box[0] + box[2])), int(np.ceil(box[1] + box[3]))
    x1, y1 = min(max(x1, x0 + 1), w), min(max(y1, y0 + 1), h)
    rows = y1 - y0
    counts = [x0 * h + y0]
    for _ in range(x0, x1 - 1):
        counts += [rows, h - rows]
    counts += [rows, (w - x1 + 1) * h - y1]
    return {"size": [h, w], "counts": counts}


def _images(rng: np.random.Generator, image_ids: np.ndarray, sizes: list) -> list[dict]:
    n = len(image_ids)
    hw = np.asarray(sizes)[rng.integers(0, len(sizes), n)].tolist()
    lic, day, minute = rng.integers(1, 9, n).tolist(), rng.integers(1, 29, n).tolist(), rng.integers(0, 60, n).tolist()
    return [{"license": lic[k], "file_name": f"{iid:012d}.jpg",
             "coco_url": f"http://images.cocodataset.org/train2017/{iid:012d}.jpg", "height": hw[k][0],
             "width": hw[k][1], "date_captured": f"2013-11-{day[k]:02d} 02:{minute[k]:02d}:48",
             "flickr_url": f"http://farm{lic[k]}.staticflickr.com/{iid % 9000}/{iid}_{iid % 997:x}a_z.jpg", "id": iid}
            for k, iid in enumerate(image_ids.tolist())]


def _annotations(rng: np.random.Generator, images: list[dict], first_id: int, per_image: float,
                 crowd: float) -> list[dict]:
    counts = rng.poisson(per_image, len(images))
    owner = np.repeat(np.arange(len(images)), counts)
    H = np.asarray([im["height"] for im in images], float)[owner]
    W = np.asarray([im["width"] for im in images], float)[owner]
    # Log-uniform sides from 4 px to the image size: small, medium and large objects all occur.
    bw = np.exp(rng.uniform(np.log(4), np.log(W)))
    bh = np.exp(rng.uniform(np.log(4), np.log(H)))
    box = np.stack([rng.uniform(0, W - bw), rng.uniform(0, H - bh), bw, bh], 1)
    segms, boxes, areas = _polygons(rng, box)
    is_crowd = (rng.random(len(owner)) < crowd).tolist()
    cats = np.asarray(COCO_CATEGORY_IDS)[rng.integers(0, 80, len(owner))].tolist()
    image_ids = [images[k]["id"] for k in owner.tolist()]
    anns = []
    for k, (segm, bbox, area) in enumerate(zip(segms, boxes.tolist(), areas.tolist(), strict=True)):
        ann = {"segmentation": segm, "area": area, "iscrowd": 0, "image_id": image_ids[k], "bbox": bbox,
               "category_id": cats[k], "id": first_id + k}
        if is_crowd[k]:
            b = np.round(box[k], 2)
            ann.update(segmentation=_crowd_rle(b, int(H[k]), int(W[k])), iscrowd=1, bbox=b.tolist(),
                       area=float(round(b[2] * b[3])))
        anns.append(ann)
    return anns


def synthetic_instances(path: str | os.PathLike, images: int = 118_287, *, seed: int = 0,
                        per_image: float = 5.67, crowd: float = 0.01, sizes: list | None = None) -> dict:
    """Write the file (see the module docstring) to ``path``; returns counts ``{"images", "annotations",
    "crowd", "bytes"}``. ``sizes``: the (height, width) choices of the images (COCO's by default)."""
    sizes = sizes or SIZES
    # COCO's image ids are sparse (up to 581,929 in train2017), in no particular order in the file.
    ids = np.random.default_rng(seed).choice(max(5 * images, 10), images, replace=False) + 1
    starts = range(0, images, _CHUNK)
    stats = {"images": images, "annotations": 0, "crowd": 0}

    def chunk_images(start: int) -> list[dict]:
        return _images(np.random.default_rng([seed, start, 0]), ids[start:start + _CHUNK], sizes)

    def write(f) -> None:
        licenses = ", ".join(f'{{"url": "http://x/{i}", "id": {i}, "name": "L{i}"}}' for i in range(1, 9))
        f.write(b'{"info": {"description": "synthetic COCO-like instances", "version": "1.0", "year": 2017}, '
                b'"licenses": [' + licenses.encode() + b'], "images": [')
        for start in starts:
            f.write((", " if start else "").encode() + json.dumps(chunk_images(start))[1:-1].encode())
        f.write(b'], "annotations": [')
        first = True
        for start in starts:  # images first, then annotations, as in COCO's files
            anns = _annotations(np.random.default_rng([seed, start, 1]), chunk_images(start),
                                stats["annotations"] + 1, per_image, crowd)
            if anns:
                f.write((b"" if first else b", ") + json.dumps(anns)[1:-1].encode())
                first = False
            stats["annotations"] += len(anns)
            stats["crowd"] += sum(a["iscrowd"] for a in anns)
        cats = [{"supercategory": f"super{c // 10}", "id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS]
        f.write(b'], "categories": ' + json.dumps(cats).encode() + b"}")

    write_with(path, write, "synthetic COCO file")
    stats["bytes"] = Path(path).stat().st_size
    return stats


def placeholder_images(ann_file: str | os.PathLike, images_dir: str | os.PathLike) -> Path:
    """Make every image of ``ann_file`` exist in ``images_dir``: one black JPEG per distinct size, and a hard link
    to it under each image's ``file_name`` (118k names cost directory entries, not data blocks; a symbolic link
    where the file system has no hard links)."""
    from PIL import Image

    images_dir = make_dir(images_dir)
    with open(ann_file, "rb") as f:
        data = json.load(f)
    made: dict = {}
    for im in data["images"]:
        hw = (im["height"], im["width"])
        if hw not in made:
            made[hw] = images_dir / f"_placeholder_{hw[0]}x{hw[1]}.jpg"
            write_with(made[hw], lambda f, hw=hw: Image.new("RGB", hw[::-1]).save(f, format="JPEG"), "image")
        link = images_dir / im["file_name"]
        if not link.exists():
            try:
                os.link(made[hw], link)
            except OSError:
                link.symlink_to(made[hw].name)
    return images_dir
