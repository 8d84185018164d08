"""Instance-id mask folders: :class:`InstanceMaskDataset`, ``resdense data convert`` and the derived membrane cells.

The reference is the COCO path: the shapes set's polygons, rasterised by pycocotools into instance-id PNGs, must come
back as the targets :class:`CocoDetection` serves from the polygons, and the converter's JSON must serve, through
:class:`CocoDetection`, exactly what the folder dataset serves, augmentations included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.ops import masks_to_boxes

from resdense.cli import main
from resdense.data import (
    SHAPES_CLASSES,
    CocoDetection,
    DataWarning,
    DetectionTransform,
    InstanceMaskDataset,
    derive_instance_folder,
    detection_transforms,
    make_split,
)
from resdense.data.convert import convert_to_coco
from resdense.data.instance_masks import connected_instances
from resdense.errors import ConfigError, DataError

from .conftest import write_image


def _stem(image_id: int) -> str:
    return f"{image_id:02d} ped.v1 (ü)"  # spaces, dots, parentheses and a non-ASCII letter


@pytest.fixture(scope="module")
def folder(shapes, tmp_path_factory) -> Path:
    """The shapes training split as a Penn-Fudan-like folder: ``PNGImages/<stem>.jpg``, ``PedMasks/<stem>_mask.png``
    (instance ids 1..N in annotation order, rasterised by pycocotools), ``classes/<stem>_cls.png`` (the shapes
    class masks) and ``coco/instances.json`` (the shapes COCO file with the new file names)."""
    root = tmp_path_factory.mktemp("pedlike")
    for sub in ("PNGImages", "PedMasks", "classes"):
        (root / sub).mkdir()
    coco = COCO(str(shapes.train.instances))
    data = json.loads(shapes.train.instances.read_text())
    for im in data["images"]:
        stem = _stem(im["id"])
        shutil.copy(shapes.train.images / im["file_name"], root / "PNGImages" / f"{stem}.jpg")
        shutil.copy(shapes.train.masks / im["file_name"].replace(".jpg", ".png"), root / "classes" / f"{stem}_cls.png")
        ids = np.zeros((im["height"], im["width"]), np.uint8)
        for k, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=im["id"])), start=1):
            ids[coco.annToMask(ann) > 0] = k
        Image.fromarray(ids).save(root / "PedMasks" / f"{stem}_mask.png")
        im["file_name"] = f"{stem}.jpg"
    (root / "coco").mkdir()
    (root / "coco" / "instances.json").write_text(json.dumps(data))
    return root


def _shapes_dataset(folder: Path, **kwargs) -> InstanceMaskDataset:
    return InstanceMaskDataset(folder / "PNGImages", folder / "PedMasks", list(SHAPES_CLASSES),
                               class_masks_dir=folder / "classes", **kwargs)


def _assert_same_item(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(torch.as_tensor(a[1][key]), torch.as_tensor(b[1][key])), key


def test_targets_are_those_of_the_coco_polygons(folder):
    ds = _shapes_dataset(folder)
    ref = CocoDetection(folder / "PNGImages", folder / "coco" / "instances.json", masks=True)
    assert ds.mask_suffix == "_mask" and len(ds) == len(ref) == 12
    assert ds.class_names == ref.class_names == list(SHAPES_CLASSES) and ds.label_to_cat_id == ref.label_to_cat_id
    assert ds.image_paths == ref.image_paths
    for i in range(len(ds)):
        (image, target), (ref_image, ref_target) = ds[i], ref[i]
        assert torch.equal(image, ref_image)
        for key in ("masks", "labels", "area", "iscrowd", "image_id", "orig_size", "size"):
            assert torch.equal(torch.as_tensor(target[key]), torch.as_tensor(ref_target[key])), key
        # COCO boxes are the polygons' extents; the folder knows only pixels: its boxes are the masks' pixel edges.
        edges = masks_to_boxes(ref_target["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert torch.equal(target["boxes"], edges)
        assert (target["boxes"] - ref_target["boxes"]).abs().max() < 1.5


@pytest.mark.parametrize("train", [False, True], ids=["no_transforms", "train_preset"])
def test_converted_json_serves_identical_targets(folder, tmp_path, train):
    out = tmp_path / "converted.json"
    done = convert_to_coco(folder, out, classes=list(SHAPES_CLASSES), class_masks_dir=folder / "classes")
    assert done.layout.kind == "instances" and done.layout.images == folder / "PNGImages"

    def transforms():
        return detection_transforms(train=True, size=96, rotate=15, seed=3) if train else None

    ds = _shapes_dataset(folder, transforms=transforms())
    ref = CocoDetection(done.layout.images, out, masks=True, transforms=transforms())
    for _ in range(2 if train else 1):  # with augmentations, two epochs of draws
        for i in range(len(ds)):
            _assert_same_item(ds[i], ref[i])
    assert ds.coco.dataset["annotations"] == ref.coco.dataset["annotations"]  # the same ground truth for evaluation
    assert ds.coco.dataset["images"] == ref.coco.dataset["images"]


def test_converter_cli_output_loads_in_pycocotools(folder, tmp_path, capsys):
    out = tmp_path / "peds.json"
    code = main(["data", "convert", str(folder), "--to", "coco", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and f"wrote {out} from instances {folder / 'PedMasks'}: 12 images" in printed
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["person"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == sum(len(np.unique(np.asarray(Image.open(p)))) - 1 for p in (folder / "PedMasks").iterdir())
    for ann in anns:
        im = coco.loadImgs(ann["image_id"])[0]
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == [im["height"], im["width"]]
        ids = np.asarray(Image.open(folder / "PedMasks" / im["mask_file"]))
        np.testing.assert_array_equal(coco.annToMask(ann), ids == ann["instance_id"])
        whole = mask_utils.encode(np.asfortranarray(ids == ann["instance_id"], dtype=np.uint8))
        assert ann["segmentation"]["counts"] == whole["counts"].decode()  # what pycocotools encodes, byte for byte
        assert ann["area"] == (ids == ann["instance_id"]).sum()


# ---- small generated folders -------------------------------------------------------------------------------------
def _write_folder(root: Path, masks: dict[str, np.ndarray], size=(12, 16), ext=".png",
                  suffix: str = "") -> tuple[Path, Path]:
    """``root/images/<name>.png`` of ``size`` and ``root/masks/<name><suffix><ext>`` holding each array."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, (name, ids) in enumerate(masks.items()):
        write_image(root / "images" / f"{name}.png", *size, seed=i)
        Image.fromarray(ids).save(root / "masks" / f"{name}{suffix}{ext}")
    return root / "images", root / "masks"


def _blocks(h: int, w: int, values, dtype=np.uint8) -> np.ndarray:
    """Vertical bands of ``values`` across an ``h x w`` mask."""
    ids = np.zeros((h, w), dtype)
    for v, cols in zip(values, np.array_split(np.arange(w), len(values)), strict=True):
        ids[:, cols] = v
    return ids


def test_size_mismatch_names_both_files(tmp_path):
    images, masks = _write_folder(tmp_path, {"a": _blocks(12, 16, [0, 1]), "b": _blocks(13, 16, [0, 1])})
    with pytest.raises(DataError) as err:
        InstanceMaskDataset(images, masks)
    assert str(err.value) == f"{masks / 'b.png'}: instance mask is 16x13 (width x height) but its image " \
                             f"{images / 'b.png'} is 16x12"
    with pytest.warns(DataWarning, match=r"masks: skipped 1 image\(s\) that cannot be read as instances, e\.g\. "):
        ds = InstanceMaskDataset(images, masks, bad_images="skip")
    assert [p.name for p in ds.image_paths] == ["a.png"] and ds.image_ids == [1]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_masks_are_refused(tmp_path, mode):
    colour = np.zeros((12, 16, len(mode)), np.uint8)
    colour[:, 8:, 0] = 200
    images, masks = _write_folder(tmp_path, {"a": colour}, suffix="_mask")
    with pytest.raises(DataError, match=rf"a_mask\.png: instance mask of mode {mode} is refused; save instance ids as "
                                        r"L \(up to 255\), I;16 \(up to 65535\) or I") as err:
        InstanceMaskDataset(images, masks)
    assert "\n" not in str(err.value)
    code = main(["data", "check", str(tmp_path), "--instances"])
    assert code == 2


def test_16_and_32_bit_ids(tmp_path):
    # 400 instances of 2x2 pixels with ids 1..400 need 16 bits; ids with gaps far above 255 too.
    ids = np.kron(np.arange(1, 401, dtype=np.uint16).reshape(20, 20), np.ones((2, 2), np.uint16))
    ids[0, 0] = 0
    sparse = _blocks(40, 40, [0, 300, 65535, 1000], np.uint16)
    images, masks = _write_folder(tmp_path / "i16", {"many": ids, "sparse": sparse}, size=(40, 40))
    assert Image.open(masks / "many.png").mode == "I;16"
    ds = InstanceMaskDataset(images, masks)
    many, sparse_t = ds[0][1], ds[1][1]
    assert len(many["masks"]) == 400 and many["area"].tolist() == [3.0] + [4.0] * 399
    assert many["masks"][399].nonzero().tolist() == [[38, 38], [38, 39], [39, 38], [39, 39]]
    cols = [torch.nonzero(m.any(0)).flatten().tolist() for m in sparse_t["masks"]]
    assert cols == [list(range(10, 20)), list(range(30, 40)), list(range(20, 30))]  # id order: 300, 1000, 65535
    # Palette masks (Penn-Fudan's PedMasks) hold the ids as indices, whatever the colours.
    palette = Image.fromarray(_blocks(12, 16, [0, 2, 1]), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    images, masks = _write_folder(tmp_path / "p", {"a": np.zeros((12, 16), np.uint8)})
    palette.save(masks / "a.png")
    assert Image.open(masks / "a.png").mode == "P"
    assert InstanceMaskDataset(images, masks)[0][1]["boxes"][:, 0].tolist() == [11.0, 6.0]  # ids 1, 2
    # 32-bit ids (mode I, as TIFF: PNG holds 16 bits at most) above 65535, and a negative one, refused.
    big = _blocks(12, 16, [0, 70000, 2], np.int32)
    images, masks = _write_folder(tmp_path / "i32", {"a": big, "b": _blocks(12, 16, [70001, 70000], np.int32)},
                                  ext=".tif")
    assert Image.open(masks / "a.tif").mode == "I"
    ds = InstanceMaskDataset(images, masks)
    target = ds[0][1]
    assert target["masks"].sum((1, 2)).tolist() == [60, 60] and target["boxes"][:, 0].tolist() == [11.0, 6.0]
    assert ds[1][1]["boxes"][:, 0].tolist() == [8.0, 0.0]  # no background at all: ids 70000, 70001
    Image.fromarray(_blocks(12, 16, [0, -3], np.int32)).save(masks / "a.tif")
    with pytest.raises(DataError, match=r"a\.tif: instance id -3 is negative; ids are integers >= 0"):
        InstanceMaskDataset(images, masks)


def test_instance_cut_away_by_a_crop_is_dropped(tmp_path):
    ids = np.zeros((32, 32), np.uint8)
    ids[2:7, 2:7] = 1  # inside the crop
    ids[20:29, 20:29] = 2  # outside it
    ids[10:20, 10:13] = 3  # cut in half
    images, masks = _write_folder(tmp_path, {"a": ids}, size=(32, 32))
    crop = DetectionTransform([A.Crop(x_min=0, y_min=0, x_max=16, y_max=16)])
    target = InstanceMaskDataset(images, masks, transforms=crop)[0][1]
    assert target["boxes"].tolist() == [[2.0, 2.0, 7.0, 7.0], [10.0, 10.0, 13.0, 16.0]]
    assert target["area"].tolist() == [25.0, 18.0] and target["masks"].shape == (2, 16, 16)
    assert torch.equal(target["masks"][1], torch.from_numpy((ids[:16, :16] == 3).astype(np.uint8)))


def test_missing_mask_raises_or_is_skipped(tmp_path):
    images, masks = _write_folder(tmp_path, {"a": _blocks(12, 16, [0, 1]), "b": _blocks(12, 16, [0, 1])},
                                  suffix="_mask")
    write_image(images / "c.png", 12, 16)
    with pytest.raises(DataError, match=r"images/c\.png: no instance mask for this image in .*masks "
                                        r"\(mask_suffix '_mask'\)$"):
        InstanceMaskDataset(images, masks)
    with pytest.warns(DataWarning, match=r"skipped 1 image\(s\)"):
        ds = InstanceMaskDataset(images, masks, bad_images="skip")
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    # A split that leaves the image out needs no mask for it; image ids stay those of the whole folder.
    ds = InstanceMaskDataset(images, masks, split=["b"])
    assert ds.image_ids == [2] and [p.name for p in ds.mask_paths] == ["b_mask.png"]


def test_mask_suffix_detection(tmp_path):
    images, masks = _write_folder(tmp_path, {"a": _blocks(12, 16, [0, 1])})
    for extra in ("a_color", "a_instanceIds"):
        Image.fromarray(_blocks(12, 16, [0, 1])).save(masks / f"{extra}.png")
    with pytest.raises(DataError, match=r"masks: the mask names fit several suffixes \('', '_color', "
                                        r"'_instanceIds', each pairing 1 image\(s\)\); give mask_suffix$"):
        InstanceMaskDataset(images, masks)
    assert InstanceMaskDataset(images, masks, mask_suffix="_instanceIds").mask_paths == [masks / "a_instanceIds.png"]
    write_image(tmp_path / "other" / "z.png", 12, 16)
    with pytest.raises(DataError, match=r"masks: no mask is named like an image of .*other, with or without a "
                                        r"suffix \(e\.g\. image 'z', mask 'a'\)$"):
        InstanceMaskDataset(tmp_path / "other", masks)


# ---- classes -----------------------------------------------------------------------------------------------------
def test_class_rules(tmp_path):
    ids = _blocks(12, 16, [0, 1, 2, 3])
    classes = np.zeros((12, 16), np.uint8)
    classes[:, 4:8] = 2  # instance 1: all class 2
    classes[:5, 8:12], classes[5:, 8:12] = 1, 3  # instance 2: 5 rows of class 1, 7 of class 3 -> class 3
    classes[:, 12:14] = 255  # instance 3: half void, half background: a tie, the smaller (background) wins
    images, masks = _write_folder(tmp_path, {"a": ids})
    (tmp_path / "cls").mkdir()
    Image.fromarray(classes).save(tmp_path / "cls" / "a.png")
    single = InstanceMaskDataset(images, masks)[0][1]
    assert single["labels"].tolist() == [1, 1, 1]
    with pytest.warns(DataWarning, match=r"left out 1 instance\(s\) whose class is not in classes \(class id 0: 1\)"):
        by_pixels = InstanceMaskDataset(images, masks, ["a", "b", "c"], class_masks_dir=tmp_path / "cls")
    assert by_pixels[0][1]["labels"].tolist() == [2, 3] and by_pixels.class_names == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"classes names 2 classes but nothing gives an instance its class"):
        InstanceMaskDataset(images, masks, ["a", "b"])
    with pytest.raises(ConfigError, match=r"classes names 'background': list the object classes only"):
        InstanceMaskDataset(images, masks, ["background", "person"], class_masks_dir=tmp_path / "cls")


def test_cityscapes_ids(tmp_path):
    # person 24, car 26; 7 is a stuff class (road), 24 alone a crowd of people, 33001 a bicycle (not listed).
    ids = _blocks(12, 16, [7, 24001, 24, 26001, 24002, 33001, 0, 26002], np.uint16)
    images, masks = _write_folder(tmp_path, {"frame": ids}, suffix="_instanceIds")
    with pytest.warns(DataWarning, match=r"left out 1 instance\(s\) .* \(class id 33: 1\)"):
        ds = InstanceMaskDataset(images, masks, {24: "person", "26": "car"}, id_rule="cityscapes")
    target = ds[0][1]
    assert ds.mask_suffix == "_instanceIds" and ds.class_names == ["person", "car"]
    assert ds.label_to_cat_id == {1: 24, 2: 26}
    assert target["labels"].tolist() == [1, 1, 2, 2]  # ids 24001, 24002, 26001, 26002
    assert target["boxes"][:, 0].tolist() == [2.0, 8.0, 6.0, 14.0]
    with pytest.raises(ConfigError, match=r"class_masks_dir and id_rule='cityscapes' both give classes"):
        InstanceMaskDataset(images, masks, {24: "person"}, id_rule="cityscapes", class_masks_dir=masks)


# ---- data check / split ------------------------------------------------------------------------------------------
def test_check_and_split_find_instance_folders(folder, tmp_path, capsys):
    code = main(["data", "check", str(folder)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    assert any(ln.startswith(f"checked instances: {folder / 'PNGImages'} + {folder / 'PedMasks'} (12 images, ")
               and ln.endswith("mask suffix '_mask')") for ln in lines), lines
    split = make_split(folder, val=0.25, seed=0)
    assert split.layout.kind == "instances" and len(split.subsets["val"]) == 3
    assert all(n.startswith(tuple(_stem(i) for i in range(1, 13))) for n in split.subsets["val"])
    written = split.write(tmp_path / "splits")
    val = InstanceMaskDataset(folder / "PNGImages", folder / "PedMasks", split=written[1])
    assert sorted(p.stem for p in val.image_paths) == sorted(split.subsets["val"])
    # images/ + masks/ is a semantic folder unless --instances says otherwise.
    _write_folder(tmp_path / "plain", {"a": _blocks(12, 16, [0, 1, 2])})
    main(["data", "check", str(tmp_path / "plain")])
    assert "checked masks: " in capsys.readouterr().out
    main(["data", "check", str(tmp_path / "plain"), "--instances"])
    assert "checked instances: " in capsys.readouterr().out
    with pytest.raises(DataError, match=r"plain: found no instances or voc dataset here; a folder of instance ids is "
                                        r"found by its name or read with instances=True \(--instances\)$"):
        convert_to_coco(tmp_path / "plain", tmp_path / "x.json")
    assert convert_to_coco(tmp_path / "plain", tmp_path / "x.json", instances=True).num_annotations == 2


# ---- training ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mask_rcnn_recipe_trains_on_an_instance_folder(folder, tmp_path):
    from resdense.engine import run_training

    from ..engine.recipes import det_recipe, write

    names = sorted(p.stem for p in (folder / "PNGImages").iterdir())
    common = {"images_dir": str(folder / "PNGImages"), "masks_dir": str(folder / "PedMasks"),
              "classes": list(SHAPES_CLASSES), "class_masks_dir": str(folder / "classes")}
    raw = det_recipe(tmp_path / "unused", tmp_path / "run", iterations=2)
    raw["model"]["arch"] = "mask_rcnn"
    raw["data"] = {"dataset": "instance_masks", "train": {**common, "split": names[:8]},
                   "val": {**common, "split": names[8:]},
                   "train_transforms": {"size": None, "hflip": 0.5, "color_jitter": 0.2},
                   "val_transforms": {"size": None}}
    raw["eval"]["every_iters"] = 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the engine tests run: a tiny model gains nothing from threads on a busy machine
    try:
        final = run_training(write(raw, tmp_path / "inst.yaml"))["final"]
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= final["segm/AP"] <= 1.0 and 0.0 <= final["bbox/AP"] <= 1.0


# ---- derived instances -------------------------------------------------------------------------------------------
def test_connected_instances(tmp_path):
    mask = np.array([[255, 255, 0, 0, 255],
                     [0, 255, 0, 255, 0],
                     [0, 0, 0, 0, 0],
                     [255, 0, 7, 255, 255]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    ids = connected_instances(tmp_path / "m.png", out_png=tmp_path / "ids.png")
    # 4-connectivity: the pixels (0, 4) and (1, 3) touch only at a corner, so they are two regions.
    assert ids.tolist() == [[1, 1, 0, 0, 2],
                            [0, 1, 0, 3, 0],
                            [0, 0, 0, 0, 0],
                            [4, 0, 0, 5, 5]]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ids.png")), ids)
    with pytest.raises(ConfigError, match=r"min_area = -1 is not an integer >= 0"):
        connected_instances(mask, min_area=-1)
    big = connected_instances(mask, min_area=2)
    assert big.tolist() == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 2, 2]]


def test_membrane_cells(shared_data, tmp_path):
    images, masks = shared_data / "membrane" / "images", shared_data / "membrane" / "masks"
    derived = derive_instance_folder(images, masks, tmp_path / "cells")
    counts = np.array(list(derived.counts.values()))
    assert len(counts) == 30 and 50 < counts.mean() < 250  # about 115 cells per 512 x 512 image
    ds = InstanceMaskDataset(derived.images, derived.masks, ["cell"])
    areas = np.array([a["area"] for a in ds.coco.dataset["annotations"]])
    assert len(areas) == counts.sum() and 200 < np.median(areas) < 2000  # about 570 px
    # Every interior pixel belongs to exactly one cell.
    interior = sum(int((np.asarray(Image.open(p)) == 255).sum()) for p in sorted(masks.iterdir()))
    assert areas.sum() == interior
    # The cache: the same derivation is not rewritten; another min_area is, and drops exactly the small cells.
    first = (derived.masks / "0.png").stat().st_mtime_ns
    assert derive_instance_folder(images, masks, tmp_path / "cells").counts == derived.counts
    assert (derived.masks / "0.png").stat().st_mtime_ns == first
    large = derive_instance_folder(images, masks, tmp_path / "cells", min_area=50)
    assert sum(large.counts.values()) == (areas >= 50).sum() < len(areas)
