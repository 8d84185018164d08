"""Fuzzing the readers of COCO files: ``CocoDetection`` / ``CocoSemantic`` (``coco_parse``, ``coco.validate``),
``resdense data check`` and the evaluation's ground truth and results (``coco_map``).

Valid generated files are read and checked against what was generated (images, boxes, labels, areas, masks, and a
perfect detection scoring AP 1); mutated ones (missing fields, wrong types, NaN, huge or negative boxes, bad
polygons and RLE, duplicate ids, truncated bytes) must be read or refused in one line.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from resdense.coco import decode_segms, pack_segms, unpack_masks
from resdense.data import CocoDetection, CocoSemantic, check_path
from resdense.data.coco_parse import BACKGROUND_NAMES
from resdense.errors import ResdenseError
from resdense.evaluation import coco_map

from ._fuzz import case, check_message, fuzz, outcome, scratch
from .strategies import ODD_NUMBERS, ODD_STRINGS, damage, mutate, values

pytestmark = [pytest.mark.filterwarnings("ignore::resdense.data.common.DataWarning"),
              pytest.mark.filterwarnings("ignore:coco_map:UserWarning")]

# File names as users write them: any printable unicode but the path separators, sometimes in a subfolder.
NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\\")
COCO_KEYS = ["images", "annotations", "categories", "id", "image_id", "category_id", "bbox", "area", "iscrowd",
             "segmentation", "file_name", "height", "width", "name", "size", "counts"]


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a binary mask (column-major runs, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, current, n = [], 0, 0
    for v in flat.tolist():
        if v != current:
            counts.append(n)
            current, n = v, 0
        n += 1
    counts.append(n)
    return counts


def _span(draw, size: int) -> tuple[float, float]:
    """A non-empty interval inside ``[0, size]`` on the half-pixel grid (exact in float32)."""
    a = draw(st.integers(0, 2 * size - 1))
    b = draw(st.integers(a + 1, 2 * size))
    return a / 2, b / 2


@st.composite
def coco_files(draw):
    """A valid COCO instances dict, and for each annotation the mask it must decode to (None: not exactly known)."""
    n_images = draw(st.integers(1, 3))
    stems = draw(st.lists(st.text(NAME_CHARS, min_size=1, max_size=8), min_size=n_images, max_size=n_images,
                          unique_by=lambda s: s.lower()))
    image_ids = draw(st.lists(st.integers(1, 2**40), min_size=n_images, max_size=n_images, unique=True))
    images = []
    for iid, stem in zip(image_ids, stems, strict=True):
        folder = draw(st.sampled_from(["", "", "sub/"]))
        images.append({"id": iid, "file_name": f"{folder}{stem}.png", "height": draw(st.integers(1, 12)),
                       "width": draw(st.integers(1, 12))})
    n_cats = draw(st.integers(1, 3))
    cat_ids = draw(st.lists(st.integers(1, 10**6), min_size=n_cats, max_size=n_cats, unique=True))
    names = draw(st.lists(st.text(max_size=6).filter(lambda s: s not in BACKGROUND_NAMES), min_size=n_cats,
                          max_size=n_cats))
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, names, strict=True)]
    anns, exact = [], []
    for k in range(draw(st.integers(0, 6))):
        im = draw(st.sampled_from(images))
        H, W = im["height"], im["width"]
        (x0, x1), (y0, y1) = _span(draw, W), _span(draw, H)
        ann = {"id": k + 1, "image_id": im["id"], "category_id": draw(st.sampled_from(cat_ids)),
               "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(draw(st.integers(0, 4)) == 0)}
        if draw(st.booleans()):
            ann["area"] = draw(st.floats(0.5, 500, allow_nan=False))
        kind = draw(st.sampled_from(["none", "polygon", "rle", "compressed"]))
        mask = None
        if kind == "none" and not ann["iscrowd"]:
            mask = np.zeros((H, W), np.uint8)  # the filled box, rounded to whole pixels
            mask[round(y0):round(y1), round(x0):round(x1)] = 1
        elif kind == "polygon" or (kind == "none" and ann["iscrowd"]):
            ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        else:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # one draw per mask, not per pixel
            mask = (rng.random((H, W)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))).astype(np.uint8)
            if kind == "rle":
                ann["segmentation"] = {"size": [H, W], "counts": _runs(mask)}
            else:
                rle = mask_utils.encode(np.asfortranarray(mask))
                ann["segmentation"] = {"size": [H, W], "counts": rle["counts"].decode()}
        anns.append(ann)
        exact.append(mask)
    return {"images": images, "annotations": anns, "categories": categories}, exact


def _write(root, data: dict | bytes) -> tuple:
    """The images of ``data`` (tiny PNGs of the sizes it declares, where it declares usable ones) and its JSON file."""
    images_dir = root / "images"
    images_dir.mkdir()
    try:
        entries = data["images"] if isinstance(data, dict) else []
        for i, im in enumerate(entries):
            name, h, w = im["file_name"], im["height"], im["width"]
            if not (isinstance(h, int) and isinstance(w, int) and 0 < h <= 32 and 0 < w <= 32):
                h = w = 4
            path = images_dir / name
            if not path.resolve().is_relative_to(root.resolve()):
                continue  # an absolute or climbing name: nothing is written outside the scratch folder
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((h, w, 3), i * 40 % 256, np.uint8)).save(path, format="PNG")
    except (TypeError, KeyError, ValueError, OSError, AttributeError):
        pass  # a mutated entry that names no writable file: its image is simply missing
    ann = root / "instances.json"
    ann.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return images_dir, ann


def _expected(data: dict):
    labels = {c: k + 1 for k, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    per_image = {im["id"]: [a for a in data["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
                 for im in data["images"]}
    return labels, per_image


@fuzz(200)
@given(generated=coco_files())
def test_valid_coco_reads_what_was_written(fuzz_dir, generated):
    case("coco json")
    data, exact = generated
    with scratch(fuzz_dir) as root:
        images_dir, ann = _write(root, data)
        ds = CocoDetection(images_dir, ann, masks=True)
        labels, per_image = _expected(data)
        assert ds.image_ids == [im["id"] for im in data["images"]]
        assert ds.num_classes == len(data["categories"])
        exact_of = {id(a): m for a, m in zip(data["annotations"], exact, strict=True)}
        for i, im in enumerate(data["images"]):
            image, target = ds[i]
            H, W = im["height"], im["width"]
            assert image.shape == (3, H, W)
            anns = per_image[im["id"]]
            want = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
            np.testing.assert_array_equal(target["boxes"].numpy(), want.reshape(-1, 4))
            assert target["labels"].tolist() == [labels[a["category_id"]] for a in anns]
            areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns]
            np.testing.assert_allclose(target["area"].numpy(), np.array(areas, np.float32).reshape(-1))
            masks = target["masks"].numpy()
            assert masks.shape == (len(anns), H, W) and set(np.unique(masks).tolist()) <= {0, 1}
            for m, a in zip(masks, anns, strict=True):
                if exact_of[id(a)] is not None:
                    np.testing.assert_array_equal(m, exact_of[id(a)])
            rec = ds._records[i]
            packed = pack_segms(rec.segms, H, W, rec.boxes)
            np.testing.assert_array_equal(unpack_masks(packed.array, np.arange(packed.n)),
                                          decode_segms(rec.segms, H, W, rec.boxes))
        sem = CocoSemantic(images_dir, ann)
        for i in range(len(sem)):
            _, mask = sem[i]
            assert set(np.unique(mask.numpy()).tolist()) <= set(range(sem.num_classes)) | {255}
        report = check_path(ann)
        assert report.ok, report.problems


def _perfect_results(data: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0 - 0.1 * k}
            for k, a in enumerate(a for a in data["annotations"] if not a["iscrowd"])]


@fuzz(120)
@given(generated=coco_files())
def test_perfect_detections_score_ap_1(generated):
    case("coco eval")
    data, _ = generated
    gt = json.loads(json.dumps(data))
    for a in gt["annotations"]:
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    results = _perfect_results(data)
    stats = {backend: coco_map(gt, results, backend=backend) for backend in ("faster", "pycocotools")}
    assert stats["faster"]["AP"] == (1.0 if results else -1.0)
    for key, value in stats["faster"].items():
        assert math.isclose(value, stats["pycocotools"][key], abs_tol=1e-12), key


BAD_BOXES = st.one_of(st.lists(st.one_of(ODD_NUMBERS, st.floats()), min_size=0, max_size=6),
                      st.lists(st.integers(-(10**20), 10**20), min_size=4, max_size=4))
BAD_POLYGONS = st.lists(st.lists(st.one_of(ODD_NUMBERS, st.floats(), st.integers(-(10**12), 10**12)), max_size=9),
                        max_size=3)
BAD_RLE = st.fixed_dictionaries(
    {"size": st.one_of(st.lists(st.one_of(st.integers(-2, 16), ODD_NUMBERS), max_size=3), values())},
    optional={"counts": st.one_of(st.text(max_size=12), st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
                                  st.lists(st.one_of(st.integers(-5, 300), ODD_NUMBERS), max_size=12), values())})


def _mutation(draw, data: dict):
    """``data`` (a valid COCO dict) damaged: its tree edited, a box or segmentation replaced, or its JSON bytes."""
    data = json.loads(json.dumps(data))
    kind = draw(st.sampled_from(["tree", "tree", "box", "segmentation", "name", "bytes"]))
    if kind == "name":
        draw(st.sampled_from(data["images"]))["file_name"] = draw(st.one_of(st.text(max_size=8), ODD_STRINGS))
        return data
    if kind == "tree":
        return mutate(draw, data, values(COCO_KEYS))
    if kind == "bytes":
        return damage(draw, json.dumps(data).encode())
    if not data["annotations"]:
        return data
    ann = draw(st.sampled_from(data["annotations"]))
    if kind == "box":
        ann["bbox"] = draw(BAD_BOXES)
    else:
        ann["segmentation"] = draw(st.one_of(BAD_POLYGONS, BAD_RLE, st.lists(ODD_NUMBERS, max_size=8)))
    return data


@st.composite
def mutated_coco(draw):
    return _mutation(draw, draw(coco_files())[0])


@fuzz(400)
@given(data=mutated_coco())
def test_mutated_coco_is_read_or_refused(fuzz_dir, data):
    case("coco json")
    with scratch(fuzz_dir) as root:
        images_dir, ann = _write(root, data)
        for cls in (CocoDetection, CocoSemantic):
            ds = outcome(cls, images_dir, ann, **({"masks": True} if cls is CocoDetection else {}))
            if isinstance(ds, ResdenseError):
                continue
            for i in range(len(ds)):
                item = outcome(ds.__getitem__, i)
                if isinstance(item, ResdenseError):
                    continue
                image, target = item
                h, w = image.shape[1:]
                if cls is CocoSemantic:  # classes, or the ignored crowd regions and overlaps
                    assert set(target.unique().tolist()) <= set(range(ds.num_classes)) | {ds.ignore_index}
                    continue
                boxes, labels = target["boxes"].numpy(), target["labels"].numpy()
                assert ((labels >= 1) & (labels <= ds.num_classes)).all() and np.isfinite(boxes).all()
                assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
                assert (boxes[:, :2] < boxes[:, 2:]).all() and target["masks"].shape == (len(boxes), h, w)
        report = outcome(check_path, ann)
        if not isinstance(report, ResdenseError):
            for line in report.problems + report.warnings + report.checked:
                check_message(line)


@fuzz(320)
@given(generated=coco_files(), draws=st.data())
def test_mutated_evaluation_inputs_are_scored_or_refused(generated, draws):
    case("coco eval")
    data, _ = generated
    results = _perfect_results(data)
    what = draws.draw(st.sampled_from(["gt", "results", "both"]))
    gt = _mutation(draws.draw, data) if what != "results" else data
    if isinstance(gt, bytes):
        gt = data
    if what != "gt":
        results = mutate(draws.draw, results, values(COCO_KEYS + ["score"]))
    for iou_type in ("bbox", "segm"):
        stats = outcome(coco_map, gt, results, iou_type=iou_type)
        if isinstance(stats, dict):
            assert all(v == -1 or 0 <= v <= 1 for v in stats.values()), stats
