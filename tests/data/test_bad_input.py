"""The bad-input corpus: each malformed input gets a one-line error naming file, field and value, or a counted
warning where the adapters repair or drop."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resdense.data import CocoDetection, CocoSemantic, DataWarning, MaskDataset, VocDetection
from resdense.errors import ConfigError, DataError, ResdenseError

from .conftest import make_coco, write_image


def _ann(aid, **kw):
    a = {"id": aid, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0}
    a.update(kw)
    return a


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- image files ---------------------------------------------------------------------------------------------
def test_missing_image_names_the_file(tmp_path):
    ann = make_coco(tmp_path)
    (tmp_path / "img" / "2.png").unlink()
    with pytest.raises(DataError, match=r"img/2\.png: image file not found \(image id 2; 1 of 2 images missing"):
        CocoDetection(tmp_path / "img", ann)


def test_missing_image_opt_in_skip_counts(tmp_path):
    ann = make_coco(tmp_path)
    (tmp_path / "img" / "2.png").unlink()
    with pytest.warns(DataWarning, match=r"skipped 1 image\(s\) whose file is missing, e.g. .*img/2\.png"):
        ds = CocoDetection(tmp_path / "img", ann, bad_images="skip")
    assert ds.image_ids == [1]


def test_corrupt_image_names_the_file(tmp_path):
    ann = make_coco(tmp_path)
    (tmp_path / "img" / "1.png").write_bytes(b"this is not a png")
    ds = CocoDetection(tmp_path / "img", ann)
    with pytest.raises(DataError, match=r"img/1\.png: not a readable image") as err:
        ds[0]
    _one_line(err)


def test_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / "img" / "1.jpg"
    write_image(path, 40, 60)
    path.write_bytes(path.read_bytes()[:300])
    images = [{"id": 1, "file_name": "1.jpg", "height": 40, "width": 60}]
    ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, [], images=images))
    with pytest.raises(DataError, match=r"img/1\.jpg: truncated JPEG"):
        ds[0]


def test_corrupt_image_opt_in_skip_counts(tmp_path):
    ann = make_coco(tmp_path)
    (tmp_path / "img" / "1.png").write_bytes(b"garbage")
    ds = CocoDetection(tmp_path / "img", ann, bad_images="skip")
    with pytest.warns(DataWarning, match=r"\(1 skipped so far\): .*img/1\.png"):
        image, target = ds[0]
    assert target["image_id"] == 2 and len(ds.skipped) == 1  # the next readable sample stands in


def test_image_size_differs_from_json(tmp_path):
    ann = make_coco(tmp_path)
    write_image(tmp_path / "img" / "1.png", 41, 60)
    ds = CocoDetection(tmp_path / "img", ann)
    with pytest.raises(DataError, match=r"img/1\.png: image is 60x41 \(width x height\) but the annotation file "
                                        r"says 60x40 for image id 1"):
        ds[0]


def test_exif_orientation_applied_once_and_with_targets(tmp_path):
    # Stored 60 wide x 40 high with orientation 6 (rotate 90 cw): shown 40 wide x 60 high.
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:, :10] = 255  # a white band on the stored left edge -> the shown top edge
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "img").mkdir()
    Image.fromarray(raw).save(tmp_path / "img" / "1.jpg", exif=exif.tobytes(), quality=95)
    images = [{"id": 1, "file_name": "1.jpg", "height": 60, "width": 40}]
    anns = [_ann(1, bbox=[0, 0, 40, 10])]  # annotated on the image as shown: the band
    ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, anns, images=images))
    image, t = ds[0]
    assert image.shape == (3, 60, 40) and t["orig_size"].tolist() == [60, 40]
    band = image[:, :10, :].mean()
    assert band > 0.9 and image[:, 12:, :].mean() < 0.1  # the pixels under the box are the band
    # A JSON written with the stored (pre-rotation) size is refused with a hint.
    images = [{"id": 1, "file_name": "1.jpg", "height": 40, "width": 60}]
    ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, [], images=images))
    with pytest.raises(DataError, match=r"before EXIF rotation"):
        ds[0]


# -- annotation files ----------------------------------------------------------------------------------------
def test_annotation_file_not_json(tmp_path):
    bad = tmp_path / "ann.json"
    bad.write_text("images: [oops")
    with pytest.raises(DataError, match=r"ann\.json: not a JSON file"):
        CocoDetection(tmp_path, bad)


def test_annotation_file_missing(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_annotation_id_zero_refused(tmp_path):
    ann = make_coco(tmp_path, [_ann(0), _ann(1)])
    with pytest.raises(DataError, match=r"annotation id 0 \(annotations\[0\]\): pycocotools"):
        CocoDetection(tmp_path / "img", ann)


def test_duplicate_annotation_ids_refused(tmp_path):
    ann = make_coco(tmp_path, [_ann(3), _ann(7), _ann(3), _ann(7), _ann(8)])
    with pytest.raises(DataError, match=r"duplicate annotation ids 3, 7:"):
        CocoDetection(tmp_path / "img", ann)
    ds = CocoDetection(tmp_path / "img", ann, renumber_ann_ids=True)
    assert sorted(ds.coco.getAnnIds()) == [1, 2, 3, 4, 5]


def test_category_not_in_categories(tmp_path):
    ann = make_coco(tmp_path, [_ann(1), _ann(2, category_id=99)])
    with pytest.raises(DataError, match=r"annotation id 2: field 'category_id' = 99 is not in categories \(ids 1, 2\)"):
        CocoDetection(tmp_path / "img", ann)


def test_missing_bbox(tmp_path):
    a = _ann(4)
    del a["bbox"]
    with pytest.raises(DataError, match=r"ann\.json: annotation id 4: field 'bbox' is missing"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]))


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], [1, 2, float("nan"), 4]])
def test_malformed_bbox(tmp_path, bbox):
    with pytest.raises(DataError, match=r"annotation id 1: field 'bbox' = .* is not 4 finite numbers"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [_ann(1, bbox=bbox)]))


def test_negative_box_size(tmp_path):
    with pytest.raises(DataError, match=r"annotation id 1: field 'bbox' = \[10, 10, -4, 5\] has a negative width"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [_ann(1, bbox=[10, 10, -4, 5])]))


def test_degenerate_boxes_dropped_with_count(tmp_path):
    anns = [_ann(1), _ann(2, bbox=[3, 3, 0, 5]), _ann(3, bbox=[3, 3, 5, 0])]
    with pytest.warns(DataWarning, match=r"2 degenerate box\(es\) with zero width or height were dropped "
                                         r"\(annotation ids 2, 3\)"):
        ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, anns))
    assert len(ds[0][1]["boxes"]) == 1


def test_box_outside_image_clipped_or_dropped_with_counts(tmp_path):
    anns = [_ann(1, bbox=[-5, 30, 20, 20]), _ann(2, bbox=[70, 0, 10, 10]), _ann(3)]  # image is 60x40
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, anns))
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert len(msgs) == 2
    assert "1 box(es) extend outside their image by more than 1 px and were clipped (annotation ids 1)" in msgs[0]
    assert "1 box(es) lie entirely outside their image and were dropped (annotation ids 2)" in msgs[1]
    boxes = ds[0][1]["boxes"]
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 30, 15, 40], [5, 6, 15, 18]]))


def test_polygon_with_odd_length(tmp_path):
    a = _ann(5, segmentation=[[1, 2, 3, 4, 5, 6, 7]])
    with pytest.raises(DataError, match=r"annotation id 5: field 'segmentation' polygon 0 has an odd number of "
                                        r"coordinates \(7\)"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]))


def test_polygon_with_fewer_than_3_points(tmp_path):
    anns = [_ann(1, segmentation=[[5, 6, 15, 6]]), _ann(2, segmentation=[[5, 6, 15, 6, 15, 18]])]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, anns), masks=True)
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert any("1 annotation(s) whose polygons all have fewer than 3 points have no mask (annotation ids 1)" in m
               for m in msgs)
    assert any("1 annotation(s) have no usable segmentation; their mask is the filled box" in m for m in msgs)
    masks = ds[0][1]["masks"]
    assert masks[0].sum() == 10 * 12  # the filled box stands in


def test_rle_of_the_wrong_size(tmp_path):
    a = _ann(1, segmentation={"size": [10, 10], "counts": [100]})
    with pytest.raises(DataError, match=r"annotation id 1: field 'segmentation' RLE size \[10, 10\] differs from "
                                        r"the image size \[40, 60\]"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]))


def test_rle_counts_that_do_not_add_up(tmp_path):
    a = _ann(1, segmentation={"size": [40, 60], "counts": [100, 5]})
    with pytest.raises(DataError, match=r"annotation id 1: field 'segmentation' RLE 'counts' sum to 105, not "
                                        r"height x width = 2400"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]))


def test_compressed_rle_that_does_not_decode(tmp_path):
    a = _ann(1, segmentation={"size": [40, 60], "counts": "\x01garbage"})
    with pytest.raises(DataError, match=r"ann\.json: annotation id 1: field 'segmentation' RLE 'counts' string does "
                                        r"not decode \(the string ends inside a count\)"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]), masks=True)


def test_compressed_rle_that_does_not_cover_the_image(tmp_path):
    # pycocotools would decode it into uninitialised memory
    a = _ann(1, segmentation={"size": [40, 60], "counts": "0"})
    with pytest.raises(DataError, match=r"annotation id 1: field 'segmentation' RLE 'counts' sum to 0, not height x "
                                        r"width = 2400"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, [a]), masks=True)


@pytest.mark.parametrize("data, match", [
    ({"images": {}, "annotations": [], "categories": []}, r"field 'images' is a dict, expected a list"),
    ({"annotations": [], "categories": []}, r"field 'images' is missing"),
    ({"images": [{"id": "x"}], "annotations": [], "categories": []}, r"images\[0\]: field 'id' = 'x'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 5}], "annotations": [], "categories": []},
     r"image id 1: field 'width' = 0 is not a positive integer"),
    ({"images": [], "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}],
      "categories": [{"id": 1, "name": "a"}]}, r"annotation id 1: field 'image_id' = 7 is not in images"),
    ({"images": [], "annotations": [5], "categories": []}, r"annotations\[0\] is a int, expected an object"),
    ({"images": [], "annotations": [], "categories": [{"name": "a"}]}, r"categories\[0\]: field 'id' = None"),
    ([1, 2], r"top level is a list"),
])
def test_structural_errors_never_escape_as_bare_exceptions(tmp_path, data, match):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match) as err:
        CocoDetection(tmp_path, path)
    assert isinstance(err.value, ResdenseError | ValueError)
    _one_line(err)


def test_many_problems_reported_as_first_plus_count(tmp_path):
    anns = [_ann(1, category_id=9), _ann(2, category_id=8), _ann(3, bbox=None)]
    with pytest.raises(DataError, match=r"category_id' = 9 .*\(and 2 more problem\(s\); run `resdense data check"):
        CocoDetection(tmp_path / "img", make_coco(tmp_path, anns))


def test_semantic_ignore_index_inside_classes(tmp_path):
    with pytest.raises(ConfigError, match=r"ignore_index = 1 collides with class indices 0..2"):
        CocoSemantic(tmp_path / "img", make_coco(tmp_path), ignore_index=1)


# -- mask folders --------------------------------------------------------------------------------------------
def _mask_folder(tmp_path, n=2, h=20, w=30, values=(0, 1, 2)):
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(tmp_path / "images" / f"{i}.jpg", h, w, seed=i)
        m = rng.choice(np.array(values, np.uint8), size=(h, w))
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(m, mode="L").save(tmp_path / "masks" / f"{i}.png")
    return tmp_path / "images", tmp_path / "masks"


def test_mask_missing_for_an_image(tmp_path):
    images, masks = _mask_folder(tmp_path)
    write_image(images / "extra.png", 20, 30)
    with pytest.raises(DataError, match=r"images/extra\.png: no mask for this image in .*masks \(1 image\(s\) "):
        MaskDataset(images, masks, 3)


def test_mask_size_mismatch(tmp_path):
    images, masks = _mask_folder(tmp_path)
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(masks / "1.png")
    ds = MaskDataset(images, masks, 3)
    with pytest.raises(DataError, match=r"masks/1\.png: mask is 30x21 \(width x height\) but its image 1\.jpg is 30x20"):
        ds[1]


def test_mask_value_outside_classes(tmp_path):
    images, masks = _mask_folder(tmp_path, values=(0, 1, 2, 7))
    ds = MaskDataset(images, masks, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"masks/0\.png: mask value\(s\) 7 are outside the classes 0\.\.2 and not "
                                        r"ignore_index=255"):
        ds[0]


def test_value_map_missing_value(tmp_path):
    images, masks = _mask_folder(tmp_path, values=(0, 1, 2))
    ds = MaskDataset(images, masks, ["a", "b"], value_map={0: 0, 1: 1})
    with pytest.raises(DataError, match=r"masks/0\.png: mask value\(s\) 2 not in value_map \(keys \[0, 1\]\)"):
        ds[0]
    with pytest.raises(ConfigError, match=r"value_map\[2\] = 5 is neither a class 0..1 nor ignore_index=255"):
        MaskDataset(images, masks, ["a", "b"], value_map={0: 0, 2: 5})


def test_rgb_mask_without_colour_map(tmp_path):
    images, masks = _mask_folder(tmp_path, n=1)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:, :] = (128, 0, 0)
    Image.fromarray(rgb).save(masks / "0.png")
    with pytest.raises(DataError, match=r"masks/0\.png: RGB colour mask \(mode RGB\) but no color_map"):
        MaskDataset(images, masks, 2)  # the first mask is looked at on construction
    ds = MaskDataset(images, masks, 2, color_map={(0, 0, 0): 0, (128, 0, 0): 1})
    mask = ds[0][1]
    assert mask[:5].eq(0).all() and mask[5:].eq(1).all()
    ds = MaskDataset(images, masks, 2, color_map={(0, 0, 0): 0})
    with pytest.raises(DataError, match=r"masks/0\.png: colour \(128, 0, 0\) is not in color_map \(450 pixels\)"):
        ds[0]


def test_palette_mask_read_as_indices_and_16_bit(tmp_path):
    images, masks = _mask_folder(tmp_path, n=2)
    idx = np.zeros((20, 30), np.uint8)
    idx[:, 10:] = 2
    p = Image.fromarray(idx, mode="P")
    p.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)  # colours far from the indices
    p.save(masks / "0.png")
    Image.fromarray(idx.astype(np.uint16) * 1000).save(masks / "1.png")  # 16-bit: values 0 and 2000
    ds = MaskDataset(images, masks, 3, value_map={0: 0, 2: 2, 2000: 1})
    np.testing.assert_array_equal(ds[0][1].numpy(), idx)
    np.testing.assert_array_equal(ds[1][1].numpy(), (idx > 0).astype(np.int64))


def test_ignore_index_inside_class_range(tmp_path):
    images, masks = _mask_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"ignore_index = 2 lies inside the class range 0..2"):
        MaskDataset(images, masks, 3, ignore_index=2)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    images, masks = _mask_folder(tmp_path, n=2)
    gray = write_image(images / "0.png", 20, 30, mode="L")
    (images / "0.jpg").unlink()
    rgba = write_image(images / "1.png", 20, 30, mode="RGBA")
    (images / "1.jpg").unlink()
    ds = MaskDataset(images, masks, 3)
    g, a = ds[0][0], ds[1][0]
    torch.testing.assert_close(g, torch.from_numpy(gray / 255.0).float().expand(3, -1, -1))
    torch.testing.assert_close(a, torch.from_numpy(rgba[..., :3].transpose(2, 0, 1) / 255.0).float())


# -- VOC -----------------------------------------------------------------------------------------------------
def _voc(tmp_path, obj="<object><name>cat</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax>"
                       "<ymax>15</ymax></bndbox></object>"):
    write_image(tmp_path / "JPEGImages" / "a.jpg", 30, 40)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height></size>{obj}</annotation>")
    return tmp_path / "JPEGImages", tmp_path / "Annotations"


def test_voc_missing_field_names_file_and_field(tmp_path):
    images, anns = _voc(tmp_path, "<object><name>cat</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax>"
                                  "</bndbox></object>")
    with pytest.raises(DataError, match=r"Annotations/a\.xml: field <ymax> is missing or empty"):
        VocDetection(images, anns)


def test_voc_unknown_class(tmp_path):
    images, anns = _voc(tmp_path)
    with pytest.raises(DataError, match=r"a\.xml: object class 'cat' is not in classes \['dog'\]"):
        VocDetection(images, anns, classes=["dog"])


def test_voc_not_xml(tmp_path):
    images, anns = _voc(tmp_path)
    (anns / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"a\.xml: not valid XML"):
        VocDetection(images, anns)


def test_index_out_of_range_is_an_index_error_with_message(tmp_path):
    ds = CocoDetection(tmp_path / "img", make_coco(tmp_path))
    with pytest.raises(IndexError, match="index 5 out of range for a dataset of 2 images"):
        ds[5]
    assert len(list(iter(ds))) == 2  # the sequence protocol still ends iteration
