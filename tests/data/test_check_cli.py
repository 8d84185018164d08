"""``resdense data check``: every problem in one pass, one line each; exit 0 when clean, 2 otherwise."""

from __future__ import annotations

import numpy as np
from PIL import Image

from resdense.cli import main

from .conftest import make_coco, write_image


def _run(capsys, *args):
    code = main(["data", "check", *map(str, args)])
    return code, capsys.readouterr().out.splitlines()


def test_coco_problems_all_listed(tmp_path, capsys):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 1, "category_id": 1},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [50, 0, 30, 5], "segmentation": [[1, 2, 3]]},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [50, 0, 30, 5]},
    ]
    ann = make_coco(tmp_path, anns)
    (tmp_path / "img" / "2.png").unlink()
    write_image(tmp_path / "img" / "1.png", 10, 10)
    code, lines = _run(capsys, ann, "--images", tmp_path / "img")
    problems = [ln for ln in lines if ln.startswith("problem: ")]
    warnings = [ln for ln in lines if ln.startswith("warning: ")]
    assert code == 2 and len(problems) == 5, lines
    assert "annotation id 1: field 'category_id' = 99 is not in categories" in problems[0]
    assert "annotation id 2: field 'bbox' is missing" in problems[1]
    assert "annotation id 3: field 'segmentation' polygon 0 has an odd number of coordinates (3)" in problems[2]
    assert "img/1.png: image is 10x10 (width x height) but ann.json (image id 1) says 60x40" in problems[3]
    assert "img/2.png: image file not found" in problems[4]
    assert len(warnings) == 1 and "were clipped (annotation ids 4)" in warnings[0]
    assert lines[-1] == "5 problem(s), 1 warning(s): FAILED"


def test_not_json(tmp_path, capsys):
    (tmp_path / "a.json").write_text("{")
    code, lines = _run(capsys, tmp_path / "a.json")
    assert code == 2 and any("a.json: not a JSON file" in ln for ln in lines)


def test_mask_folder_problems(tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.jpg", 8, 8, seed=i)
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((8, 8), 2, np.uint8)).save(tmp_path / "masks" / "0.png")
    Image.fromarray(np.full((9, 8), 7, np.uint8)).save(tmp_path / "masks" / "1.png")
    code, lines = _run(capsys, tmp_path, "--num-classes", "3")
    problems = [ln for ln in lines if ln.startswith("problem: ")]
    assert code == 2 and len(problems) == 3, lines
    assert any("1.jpg: image is 8x8 (width x height) but its mask 1.png says 8x9" in p for p in problems)
    assert any("masks/1.png: mask value(s) 7 are outside the classes 0..2" in p for p in problems)
    assert any("images/2.jpg: no mask for this image" in p for p in problems)


def test_real_datasets_are_clean_or_named(shared_data, capsys):
    for name in ("raccoon", "membrane", "camvid"):
        code, lines = _run(capsys, shared_data / name)
        assert code == 0, lines
    code, lines = _run(capsys, shared_data / "labelme_coco")
    assert code == 2 and any("annotation id 0" in ln for ln in lines)
    code, lines = _run(capsys, shared_data / "camvid", "--num-classes", "11", "--ignore-index", "11")
    assert code == 0
