"""``resdense data split``: deterministic, stratified split files that the datasets' ``split=`` reads back."""

from __future__ import annotations

import json

import pytest

from resdense.cli import main
from resdense.data import CocoDetection, MaskDataset, VocDetection, make_split
from resdense.errors import ConfigError, DataError

from .conftest import make_mask_folder, make_voc, write_image


def _read(path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _split_cli(capsys, *args) -> tuple[int, str]:
    code = main(["data", "split", *map(str, args)])
    return code, capsys.readouterr().out


def _mask_values(n: int, rare: dict[int, list[int]]) -> list[list[int]]:
    """``n`` masks with background 0 and class 1; class ``c`` of ``rare`` also in the samples listed for it."""
    values = [[0, 1] for _ in range(n)]
    for c, where in rare.items():
        for i in where:
            values[i].append(c)
    return values


@pytest.fixture
def masks_root(tmp_path):
    root = tmp_path / "masks_set"
    make_mask_folder(root, _mask_values(30, {2: [3, 17], 3: [5, 11, 23], 4: list(range(0, 30, 3))}))
    return root


def test_same_seed_same_files_other_seed_other_files(masks_root, tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        code, out_text = _split_cli(capsys, masks_root, "--val", "0.2", "--test", "0.1", "--seed", seed, "--out", out)
        assert code == 0, out_text
    for name in ("train.txt", "val.txt", "test.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert _read(a / "val.txt") != _read(c / "val.txt")
    lines = out_text.splitlines()
    assert lines[0] == f"split masks {masks_root / 'masks'} (30 samples): train 21, val 6, test 3"
    assert lines[1] == f"wrote {c / 'train.txt'}, {c / 'val.txt'}, {c / 'test.txt'}"
    assert lines[2].split() == ["label", "train", "val", "test"] and lines[5].split() == ["mask", "value", "2", "1",
                                                                                          "1", "0"]
    assert (a / "val.txt").read_text().startswith(f"# val: 6 of 30 samples of {masks_root / 'masks'} (masks), "
                                                  "written by `resdense data split` --val 0.2 --test 0.1 --seed 0\n")


def test_fractions_are_respected_and_subsets_partition_the_data(masks_root, tmp_path):
    split = make_split(masks_root, val=0.2, test=0.1, seed=3)
    sizes = {k: len(v) for k, v in split.subsets.items()}
    assert sizes == {"train": 21, "val": 6, "test": 3}
    every = [n for names in split.subsets.values() for n in names]
    assert sorted(every) == [f"{i:03d}" for i in range(30)]
    paths = split.write(tmp_path / "out")
    assert [p.name for p in paths] == ["train.txt", "val.txt", "test.txt"]
    images, masks = masks_root / "images", masks_root / "masks"
    sets = {p.stem: MaskDataset(images, masks, 5, split=p) for p in paths}
    assert {k: len(v) for k, v in sets.items()} == sizes
    assert [p.stem for p in sets["val"].image_paths] == split.subsets["val"] == sorted(split.subsets["val"])
    assert make_split(masks_root, val=0.2, seed=3).subsets.keys() == {"train", "val"}


@pytest.mark.parametrize("seed", range(8))
def test_rare_classes_reach_every_subset_they_can(masks_root, seed):
    split = make_split(masks_root, val=0.2, test=0.1, seed=seed)
    counts = split.label_counts
    # class 2 is in 2 masks: one in train, one in val; class 3 in 3 masks: one in each subset.
    assert counts["mask value 2"] == {"train": 1, "val": 1, "test": 0}
    assert counts["mask value 3"] == {"train": 1, "val": 1, "test": 1}
    # class 4 is in 10 masks: its share of each subset follows the fractions (7 / 2 / 1) within one sample.
    c4 = counts["mask value 4"]
    assert sum(c4.values()) == 10 and abs(c4["train"] - 7) <= 1 and abs(c4["val"] - 2) <= 1 and c4["test"] >= 1
    names = split.subsets
    assert {"003", "017"} <= set(names["train"]) | set(names["val"])
    assert len({"003", "017"} & set(names["val"])) == 1


def _coco_file(tmp_path, n=20):
    images = [{"id": i + 1, "file_name": f"im{i:02d}.png", "height": 20, "width": 20} for i in range(n)]
    for im in images:
        write_image(tmp_path / "img" / im["file_name"], 20, 20)
    cats = [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
            for i in range(0, n, 2)]  # every other image has a box; the others are empty
    anns += [{"id": 100 + i, "image_id": i, "category_id": 2, "bbox": [8, 8, 5, 5], "area": 25, "iscrowd": 0}
             for i in (4, 9)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("seed", range(4))
def test_coco_split_by_category_reads_back(tmp_path, capsys, seed):
    ann = _coco_file(tmp_path)
    code, out = _split_cli(capsys, ann, "--val", "0.25", "--seed", seed, "--out", tmp_path / "s")
    assert code == 0 and out.splitlines()[0] == f"split coco {ann} (20 samples): train 15, val 5"
    assert "category rare" in out and "category common" in out
    train = CocoDetection(tmp_path / "img", ann, split=tmp_path / "s" / "train.txt")
    val = CocoDetection(tmp_path / "img", ann, split=tmp_path / "s" / "val.txt")
    assert len(train) == 15 and len(val) == 5 and not set(train.image_ids) & set(val.image_ids)
    assert _read(tmp_path / "s" / "val.txt")[0].startswith("im")  # names are the file_name fields
    rare = {ann_["image_id"] for ann_ in val.coco.dataset["annotations"] if ann_["category_id"] == 2}
    assert len(rare) == 1  # one of the two 'rare' images in val, the other in train


def test_voc_split_names_are_ids_and_read_back(tmp_path):
    images, anns = make_voc(tmp_path / "voc", [["cat"]] * 6 + [["dog"], ["dog"], []] + [["cat", "dog"]])
    split = make_split(tmp_path / "voc", val=0.3, seed=0)
    assert split.layout.kind == "voc" and all(n.startswith("img") and "." not in n for n in split.subsets["val"])
    assert split.label_counts["category dog"]["val"] >= 1 and split.label_counts["category dog"]["train"] >= 1
    paths = split.write(tmp_path / "s")
    sizes = [len(VocDetection(images, anns, split=p)) for p in paths]
    assert sizes == [7, 3]


def test_blocks_keep_consecutive_frames_together(tmp_path):
    root = tmp_path / "video"
    make_mask_folder(root, [[0, 1]] * 23)  # blocks of 5: 000-004, ..., 015-019, and 020-022
    for seed in range(6):
        split = make_split(root, val=0.2, seed=seed, block=5)
        blocks = {int(n) // 5 for n in split.subsets["val"]}
        expected = sorted(f"{i:03d}" for b in blocks for i in range(5 * b, min(5 * b + 5, 23)))
        assert split.subsets["val"] == expected  # whole blocks only
        assert abs(len(expected) - 5) < 5  # round(0.2 * 23) = 5 frames, to within one block
        assert len(split.subsets["train"]) + len(expected) == 23


def test_bad_arguments_and_ambiguous_folders(masks_root, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"val = 1\.5 must lie in \(0, 1\)"):
        make_split(masks_root, val=1.5)
    with pytest.raises(ConfigError, match=r"val \+ test = 1 leaves no training samples"):
        make_split(masks_root, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match=r"block = 0 must be a positive integer"):
        make_split(masks_root, block=0)
    _coco_file(masks_root)  # now the folder holds a mask dataset and a COCO file
    with pytest.raises(DataError, match=r"holds several datasets \(coco .*instances\.json, masks .*masks\)"):
        make_split(masks_root)
    assert make_split(masks_root, kind="masks").layout.kind == "masks"
    with pytest.raises(DataError, match=r"masks: found no voc dataset here$"):
        make_split(masks_root / "masks", kind="voc")
    with pytest.raises(DataError, match=r"images: found no COCO \.json, VOC Annotations/, images/ \+ masks/ or "
                                        r"instance-mask \(e\.g\. PNGImages/ \+ PedMasks/\) folders here$"):
        make_split(masks_root / "images")
    tiny = tmp_path / "tiny"
    make_mask_folder(tiny, [[0]])
    with pytest.raises(DataError, match=r"1 sample\(s\) are too few for a train / val split"):
        make_split(tiny)
    code = main(["data", "split", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert code == 2 and "nothing: no such file or folder" in capsys.readouterr().err
