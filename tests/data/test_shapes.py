"""``make_shapes`` is deterministic, valid COCO, and its polygons and mask PNGs agree pixel for pixel."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from resdense.cli import main
from resdense.data import SHAPES_CLASSES, CocoDetection, MaskDataset, check_path, make_shapes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    a = make_shapes(tmp_path / "a", 6, 2, seed=3)
    b = make_shapes(tmp_path / "b", 6, 2, seed=3)
    fa, fb = _files(a.root), _files(b.root)
    assert fa.keys() == fb.keys() and len(fa) == 2 * (6 + 2) + 2
    assert fa == fb  # JSON, masks and JPEG bytes
    c = make_shapes(tmp_path / "c", 6, 2, seed=4)
    assert _files(c.root)["train/instances.json"] != fa["train/instances.json"]


def test_valid_coco_and_masks_agree(shapes):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shapes.train.instances))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    assert len(coco.getImgIds()) == shapes.train.num_images == 12
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert 1 <= len(anns) <= 4
        sem = np.asarray(Image.open(shapes.train.masks / info["file_name"].replace(".jpg", ".png")))
        assert sem.shape == (128, 128) and Image.open(shapes.train.masks / "00000.png").mode == "L"
        rebuilt = np.zeros_like(sem)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            assert not (rebuilt[m] != 0).any()  # objects do not overlap
            rebuilt[m] = a["category_id"]
            assert a["area"] == m.sum() and 16 * 0.7 <= max(a["bbox"][2:]) <= 48 + 1
        np.testing.assert_array_equal(rebuilt, sem)


def test_loads_in_both_adapters_and_passes_check(shapes, capsys):
    det = CocoDetection(shapes.train.images, shapes.train.instances, masks=True)
    seg = MaskDataset(shapes.train.images, shapes.train.masks, ["background", *SHAPES_CLASSES])
    assert len(det) == len(seg) == 12 and det.class_names == list(SHAPES_CLASSES)
    image, target = det[0]
    _, mask = seg[0]
    assert image.shape == (3, 128, 128)
    # the semantic mask is the union of the instance masks, labelled by class
    union = (target["masks"] * target["labels"][:, None, None]).amax(0)
    assert np.array_equal(union.numpy(), mask.numpy())
    report = check_path(shapes.root)
    assert report.ok and not report.warnings and len(report.checked) == 4
    assert main(["data", "check", str(shapes.train.instances)]) == 0
    assert "0 problem(s), 0 warning(s): OK" in capsys.readouterr().out
    data = json.loads(shapes.val.instances.read_text())
    assert [im["id"] for im in data["images"]] == [1, 2, 3, 4] and min(a["id"] for a in data["annotations"]) == 1
