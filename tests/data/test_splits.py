"""``split=``: every adapter serves exactly the samples a split file (or list) names, in its own order, and refuses
names it does not have with one line naming the split file and the names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resdense.data import CocoDetection, CocoSemantic, ImageFolder, MaskDataset, VocDetection
from resdense.data.split_names import name_keys, select_split
from resdense.errors import ConfigError, DataError

from .conftest import make_coco, make_mask_folder, make_voc, write_image


@pytest.fixture
def folder(tmp_path):
    return make_mask_folder(tmp_path / "d", [[0, 1], [1], [0], [0, 1], [1], [0]])


def _names(ds) -> list[str]:
    return [p.name for p in ds.image_paths]


def test_split_file_with_comments_and_blank_lines(folder, tmp_path):
    images, masks = folder
    split = tmp_path / "val.txt"
    split.write_text("# validation images\n\n003\n   001.png   # by file name\n\n#004\n  # 005\n")
    ds = MaskDataset(images, masks, 2, split=split)
    assert _names(ds) == ["001.png", "003.png"] and [p.name for p in ds.mask_paths] == ["001.png", "003.png"]
    image, mask = ds[1]  # the pixels of 003, not of the folder's second image
    expected = np.asarray(Image.open(images / "003.png").convert("RGB")).transpose(2, 0, 1) / 255
    torch.testing.assert_close(image, torch.from_numpy(expected.astype(np.float32)))
    np.testing.assert_array_equal(mask.numpy(), np.asarray(Image.open(masks / "003.png")))


def test_list_form_keeps_the_dataset_order(folder):
    images, masks = folder
    a = MaskDataset(images, masks, 2, split=["004", "000", "002.png"])
    b = MaskDataset(images, masks, 2, split=["002", "004.png", "000"])
    assert _names(a) == _names(b) == ["000.png", "002.png", "004.png"]
    assert len(MaskDataset(images, masks, 2)) == 6


def test_missing_names_name_the_split_file_and_the_first_names(folder, tmp_path):
    images, masks = folder
    split = tmp_path / "train.txt"
    split.write_text("000\nnope\n007\n001\n")
    with pytest.raises(DataError) as err:
        MaskDataset(images, masks, 2, split=split)
    assert str(err.value) == (f"{split}: 2 of 4 name(s) not found in {images}: 'nope', '007'; names are file names "
                              "or stems, e.g. '000.png'")
    many = [f"x{i}" for i in range(8)]
    with pytest.raises(DataError, match=r"^split list: 8 of 8 name\(s\) not found in .*: 'x0', 'x1', 'x2', 'x3', "
                                        r"'x4' and 3 more;"):
        MaskDataset(images, masks, 2, split=many)


@pytest.mark.parametrize("text,match", [
    ("000\n001\n000\n", r"val\.txt: '000' is listed twice \(lines 1 and 3\)$"),
    ("# nothing\n\n", r"val\.txt: the split lists no sample names$"),
    ("000\n000.png\n", r"val\.txt: '000' and '000\.png' name the same sample of "),
])
def test_bad_split_files(folder, tmp_path, text, match):
    (tmp_path / "val.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        MaskDataset(*folder, 2, split=tmp_path / "val.txt")


def test_split_file_not_found_and_wrong_type(folder, tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: split file not found$"):
        MaskDataset(*folder, 2, split=tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match=r"split = 3 is neither a split file \(path\) nor a list of sample names"):
        MaskDataset(*folder, 2, split=3)


def test_images_outside_the_split_need_no_mask(folder):
    images, masks = folder
    write_image(images / "extra.png", 8, 12)
    assert _names(MaskDataset(images, masks, 2, split=["000", "001"])) == ["000.png", "001.png"]
    with pytest.raises(DataError, match=r"extra\.png: no mask for this image"):
        MaskDataset(images, masks, 2, split=["000", "extra"])


def test_coco_split_subsets_records_and_ground_truth(tmp_path):
    ann = make_coco(tmp_path)  # image 1 (1.png) has annotations 1 and 2, image 2 (2.png) none
    for cls in (CocoDetection, CocoSemantic):
        one = cls(tmp_path / "img", ann, split=["1"])
        assert len(one) == 1 and one.image_ids == [1] and _names(one) == ["1.png"]
        assert one.coco.getImgIds() == [1] and sorted(one.coco.getAnnIds()) == [1, 2]
        two = cls(tmp_path / "img", ann, split=["2.png"])
        assert two.image_ids == [2] and two.coco.getImgIds() == [2] and two.coco.getAnnIds() == []
        assert one.class_names == two.class_names == cls(tmp_path / "img", ann).class_names
    _, target = CocoDetection(tmp_path / "img", ann, split=["1"])[0]
    assert target["image_id"] == 1 and target["labels"].tolist() == [1, 2]
    _, mask = CocoSemantic(tmp_path / "img", ann, split=["1"])[0]
    assert set(mask.unique().tolist()) == {0, 1, 2}


def test_coco_names_with_folders(tmp_path):
    images = [{"id": i + 1, "file_name": f"{d}/1.png", "height": 10, "width": 10} for i, d in enumerate("ab")]
    for d in "ab":
        write_image(tmp_path / d / "1.png", 10, 10)
    ann = make_coco(tmp_path, [], images=images)
    assert CocoDetection(tmp_path, ann, split=["b/1"]).image_ids == [2]
    assert CocoDetection(tmp_path, ann, split=["a/1.png"]).image_ids == [1]
    with pytest.raises(DataError, match=r"split list: '1' fits several samples of .*ann\.json; give the path"):
        CocoDetection(tmp_path, ann, split=["1"])


def test_voc_split_keeps_the_folder_image_ids(tmp_path):
    images, anns = make_voc(tmp_path, [["cat"], ["dog"], ["cat", "dog"], []])
    ds = VocDetection(images, anns, split=["img002", "img000.jpg"])
    assert _names(ds) == ["img000.jpg", "img002.jpg"] and ds.image_ids == [1, 3]
    assert ds.coco.getImgIds() == [1, 3] and len(ds.coco.getAnnIds()) == 3
    assert ds.class_names == ["cat", "dog"]
    _, target = ds[1]
    assert target["image_id"] == 3 and target["labels"].tolist() == [1, 2]
    with pytest.raises(DataError, match=r"1 of 2 name\(s\) not found in .*Annotations: 'img9'"):
        VocDetection(images, anns, split=["img9", "img000"])


def test_imagefolder_split(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / cls / f"{i}.png", 8, 8, seed=i)
    ds = ImageFolder(tmp_path, split=["dog/0.png", "cat/2"])
    assert ds.classes == ["cat", "dog"] and [t for _, t in ds.samples] == ds.targets == [0, 1]
    assert [p.relative_to(tmp_path).as_posix() for p in ds.image_paths] == ["cat/2.png", "dog/0.png"]
    assert len(ds) == 2 and ds[1][1] == 1
    assert len(ImageFolder(tmp_path)) == 6
    with pytest.raises(DataError, match=r"'0' fits several samples of .*; give the path with its extension"):
        ImageFolder(tmp_path, split=["0"])


def test_a_whole_file_name_names_its_sample_where_it_is_also_another_samples_stem():
    keys = [name_keys(n) for n in ("1.0", "1.0.png", "b/1.0.jpg")]  # '1.0' is a file and two other files' stem
    assert select_split(keys, ["1.0"], "the dataset") == [0]
    assert select_split(keys, ["1.0.png", "b/1.0"], "the dataset") == [1, 2]
    with pytest.raises(DataError, match="listed twice"):
        select_split(keys, ["1.0", "1.0"], "the dataset")
