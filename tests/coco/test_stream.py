"""walk_instances: a COCO file's annotations decoded a piece at a time give exactly what json.loads gives."""

from __future__ import annotations

import json

import pytest

from resdense.coco import walk_instances


def _ann(aid: int, **kw) -> dict:
    return {"id": aid, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0, **kw}


def _streamed(text: str, step: int):
    chunks: list[list] = []
    walked = walk_instances(text, chunks.append, step=step)
    if walked is None:
        return None
    fields, pieces = walked
    annotations = [a for c in chunks for a in c]
    assert [pieces.fetch(i) for i in range(len(annotations))] == annotations  # each decoded again from the text
    return {**fields, "annotations": annotations}


@pytest.mark.parametrize("step", [1, 40, 1 << 19])
def test_walking_a_file_gives_what_json_gives(step):
    anns = [_ann(i, segmentation=[[1.5, 2, 3, 4, 5, 6]]) for i in range(1, 30)]
    anns[3]["attrs"] = [{"a": 1}, {"b": "}, {"}]  # an object list in an annotation: a cut there is no boundary
    anns[7]["segmentation"] = {"size": [40, 60], "counts": "a}, {b"}
    # Annotations first: the walk needs neither images nor categories before them.
    data = {"annotations": anns, "images": [{"id": 1, "file_name": "1.png", "height": 40, "width": 60}],
            "categories": [{"id": 1, "name": "a"}], "info": {"x": [1, {"y": 2}]}}
    for text in (json.dumps(data), json.dumps(data, separators=(",", ":")), json.dumps(data, indent=2),
                 json.dumps({**data, "annotations": []})):
        assert _streamed(text, step) == json.loads(text)


@pytest.mark.parametrize("text", [
    '{"images": [], "annotations": [{"id": 1}, ], "categories": []}',  # trailing comma
    '{"images": [], "annotations": [], "annotations": [], "categories": []}',  # a repeated key: json keeps the last
    '{"images": [], "annotations": {}, "categories": []}',
    '{"images": []}',
    '[1, 2]',
    '{"images": [], "annotations": [{"id": 1}, {"id": 2}',
    '{"annotations": [{"id": 1}]} x',
])
def test_walking_leaves_anything_else_to_json(text):
    assert _streamed(text, 4) is None
