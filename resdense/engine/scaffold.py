"""``resdense new``: a recipe written from a user's own data folder, that trains as it is.

The data is found as ``resdense data check`` finds it (:func:`~resdense.data.check.find_layouts`, or ``images`` /
``masks`` folders named by the user), then read for what a recipe needs: the classes (mask values or categories,
with names where the data has them), an ignore value, the image sizes (crop and evaluation size), and a train / val
split (folders the data already splits into, else split files written beside the recipe, named by absolute path so
a copied recipe still finds them). The recipe is a short commented YAML for a CPU (from scratch, a time budget) or a
GPU (ImageNet weights), checked by :func:`~resdense.engine.build.load_config` before this returns.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from resdense.data import make_split
from resdense.data.check import DataLayout, find_layouts, mask_layout
from resdense.data.coco_parse import images_root_for, load_json
from resdense.data.image_io import image_size, read_mask
from resdense.data.masks import pair_by_stem
from resdense.data.voc import parse_voc_xml
from resdense.errors import ConfigError, DataError
from resdense.files import write_text

from .build import load_config

__all__ = ["new_recipe", "DataSummary"]

# Files that name the classes of a mask folder, one per line (VOC's labelmap.txt: "name:r,g,b:..." lines).
NAME_FILES = ("classes.txt", "class_names.txt", "labels.txt", "labelmap.txt")
VOID_NAMES = {"void", "ignore", "unlabeled", "unlabelled", "don't care"}
_SAMPLE = 64  # images whose sizes are read


@dataclass
class DataSummary:
    """What :func:`new_recipe` found in the data (also printed by ``resdense new``)."""

    kind: str
    sections: dict[str, dict[str, Any]]
    classes: list[str]
    ignore_index: int | None = None
    value_map: dict[int, int] | None = None
    size: tuple[int, int] = (0, 0)  # median height, width
    split_note: str = ""
    notes: list[str] = field(default_factory=list)


def new_recipe(task: str, data: str | os.PathLike | None, out: str | os.PathLike, *, images: str | None = None,
               masks: str | None = None, device: str = "cpu", seed: int = 0) -> DataSummary:
    """Write a recipe for ``task`` (``segmentation`` or ``detection``) on the data at ``data`` into ``out``.

    Raises:
        DataError: no dataset of that task found (names what was looked for), or several to choose from.
        ConfigError: an unknown task or device.
    """
    if task not in ("segmentation", "detection"):
        raise ConfigError(f"resdense new: task {task!r} is not one of 'segmentation', 'detection'")
    if device not in ("cpu", "gpu"):
        raise ConfigError(f"resdense new: --device {device!r} is not one of 'cpu', 'gpu'")
    out = Path(out)
    layouts = _layouts(task, data, images, masks)
    summary = (_segmentation if task == "segmentation" else _detection)(layouts, out, seed)
    write_text(out, _render(task, summary, device, out), "recipe")
    load_config(out)  # what was written trains as it is: every key checked
    return summary


# ---- finding the data ---------------------------------------------------------------------------------------------
def _layouts(task: str, data, images, masks) -> list[DataLayout]:
    if masks is not None or images is not None:
        if task != "segmentation":
            raise ConfigError("--images / --masks name a mask folder: for detection give the COCO .json or VOC folder")
        return [mask_layout(images, masks)]
    if data is None:
        raise ConfigError("resdense new: give DATA, or --images DIR --masks DIR")
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    found = [DataLayout("coco", path)] if path.is_file() else find_layouts(path)
    if path.is_dir() and not found:
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            found += find_layouts(sub)
    wanted = ("masks",) if task == "segmentation" else ("coco", "voc")
    found = [lay for lay in found if lay.kind in wanted]
    if not found:
        what = ("mask folder (images/ + masks/, JPEGImages/ + SegmentationClass/, X/ + Xannot/; or name them with "
                "--images DIR --masks DIR)" if task == "segmentation" else "COCO .json file or VOC folder")
        raise DataError(f"{path}: found no {what}")
    return found


def _pick_sections(layouts: list[DataLayout]) -> tuple[DataLayout, DataLayout | None]:
    """The training layout and, when the data is already split into folders (``train``/``val``), the validation one."""
    if len(layouts) == 1:
        return layouts[0], None
    names = {_subset_name(lay): lay for lay in layouts}
    if "train" in names and ("val" in names or "valid" in names):
        return names["train"], names.get("val") or names["valid"]
    listed = ", ".join(f"{lay.kind} {lay.path}" for lay in layouts)
    raise DataError(f"several datasets found ({listed}); give one of them, or folders named train/ and val/")


def _subset_name(layout: DataLayout) -> str:
    base = layout.images if layout.kind == "masks" else layout.path
    for part in reversed(Path(base).parts):
        if part.lower() in ("train", "val", "valid", "test", "training", "validation"):
            return {"training": "train", "validation": "val"}.get(part.lower(), part.lower())
    return Path(base).name.lower()


def _split(layout: DataLayout, out: Path, seed: int, section: dict[str, Any]) -> tuple[dict, dict, str]:
    """Train and val sections of one dataset: split files beside the recipe (absolute paths)."""
    folder = out.parent / f"{out.stem}_splits"
    data = {"masks": None, "voc": layout.path.parent}.get(layout.kind, layout.path)  # a VOC split reads the folder
    split = make_split(data, val=0.2, seed=seed,
                       images=layout.images if layout.kind == "masks" else None,
                       masks=layout.path if layout.kind == "masks" else None)
    files = {p.stem: p.resolve() for p in split.write(folder)}
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.subsets.items())
    note = f"split by `resdense data split` (val 0.2, seed {seed}; stratified by label): {sizes}, files in {folder}"
    return {**section, "split": str(files["train"])}, {**section, "split": str(files["val"])}, note


# ---- segmentation --------------------------------------------------------------------------------------------------
def _segmentation(layouts: list[DataLayout], out: Path, seed: int) -> DataSummary:
    train, val = _pick_sections(layouts)
    pairs = _mask_pairs(train) + (_mask_pairs(val) if val else [])
    values: dict[int, int] = {}
    for _, mask in pairs:
        found, counts = np.unique(read_mask(mask), return_counts=True)
        for v, c in zip(found.tolist(), counts.tolist(), strict=True):
            values[v] = values.get(v, 0) + c
    names = _class_names(train.path.parent) or _class_names(train.images.parent)
    summary = DataSummary("masks", {}, [])
    _classes_from_values(sorted(values), names, summary)
    summary.size = _median_size([image for image, _ in pairs])
    section = {"images_dir": str(train.images.resolve()), "masks_dir": str(train.path.resolve()),
               "classes": summary.classes}
    if summary.ignore_index is not None:
        section["ignore_index"] = summary.ignore_index
    if summary.value_map is not None:
        section["value_map"] = summary.value_map
    if val is None:
        train_sec, val_sec, summary.split_note = _split(train, out, seed, section)
    else:
        train_sec = section
        val_sec = {**section, "images_dir": str(val.images.resolve()), "masks_dir": str(val.path.resolve())}
        summary.split_note = f"the data's own folders: train {train.images}, val {val.images}"
    summary.sections = {"train": train_sec, "val": val_sec}
    return summary


def _mask_pairs(layout: DataLayout) -> list[tuple[Path, Path]]:
    pairs, lonely, _ = pair_by_stem(layout.images, layout.path)
    if not pairs:
        raise DataError(f"{layout.images}: no image has a mask of the same name in {layout.path}")
    if lonely:
        raise DataError(f"{lonely[0]}: no mask for this image in {layout.path} ({len(lonely)} image(s) without one)")
    return pairs


def _class_names(folder: Path) -> list[str] | None:
    for name in NAME_FILES:
        path = folder / name
        if path.is_file():
            lines = [ln.split(":")[0].strip() for ln in path.read_text().splitlines()]
            return [ln for ln in lines if ln and not ln.startswith("#")]
    return None


def _classes_from_values(values: list[int], names: list[str] | None, summary: DataSummary) -> None:
    """Classes, ignore value and value map from the mask values found (and class names where the data has them)."""
    void = [i for i, n in enumerate(names or []) if n.strip().lower() in VOID_NAMES]
    if void:  # a "void" class in the names file: its value is ignored
        summary.ignore_index = void[0]
        summary.classes = [n for i, n in enumerate(names) if i != void[0]]
        summary.notes.append(f"class {void[0]} '{names[void[0]]}' of the names file is ignored (ignore_index)")
        if void[0] != len(names) - 1:
            raise DataError(f"the void class '{names[void[0]]}' is value {void[0]}, not the last one: remap the masks "
                            "(value_map) by hand")
        return
    if values == [0, 255] and not names:  # a binary mask saved as 0 / 255
        summary.value_map, summary.classes = {0: 0, 255: 1}, ["background", "foreground"]
        summary.notes.append("masks hold 0 and 255: two classes, 255 -> 1 (value_map)")
        return
    if 255 in values and len(values) > 2:
        summary.ignore_index = 255
        values = [v for v in values if v != 255]
        summary.notes.append("value 255 beside other classes: taken as the ignore value")
    k = max(values) + 1
    if names and len(names) < k:
        raise DataError(f"the masks hold values up to {k - 1}, the names file only {len(names)} names")
    summary.classes = list(names[:k]) if names else [f"class{i}" for i in range(k)]
    if not names:
        summary.notes.append(f"no class names in the data (looked for {', '.join(NAME_FILES)}): class0..class{k - 1}")


def _median_size(images: list[Path]) -> tuple[int, int]:
    step = max(1, len(images) // _SAMPLE)
    sizes = [image_size(p) for p in images[::step]]
    return int(statistics.median(h for h, _ in sizes)), int(statistics.median(w for _, w in sizes))


# ---- detection -----------------------------------------------------------------------------------------------------
def _detection(layouts: list[DataLayout], out: Path, seed: int) -> DataSummary:
    train, val = _pick_sections(layouts)
    summary = DataSummary(train.kind, {}, [])
    if train.kind == "coco":
        coco = load_json(train.path)
        cats = sorted(coco.get("categories") or [], key=lambda c: c["id"])
        summary.classes = [str(c.get("name", c["id"])) for c in cats]
        images_dir = images_root_for(train.path, [im["file_name"] for im in coco.get("images", [])])
        hw = [(im["height"], im["width"]) for im in coco.get("images", []) if "height" in im and "width" in im]
        summary.size = (int(statistics.median(h for h, _ in hw)), int(statistics.median(w for _, w in hw))) \
            if hw else (0, 0)
        section = {"images_dir": str(images_dir.resolve()), "ann_file": str(train.path.resolve())}
    else:
        parsed = [parse_voc_xml(x) for x in sorted(train.path.glob("*.xml"))]
        summary.classes = sorted({name for *_, objs in parsed for name, _, _ in objs})
        # <size> holds text, and may be absent: the sizes of the files that state whole numbers
        hw = [(int(p[3]), int(p[2])) for p in parsed if str(p[2]).isdigit() and str(p[3]).isdigit()]
        summary.size = (int(statistics.median(h for h, _ in hw)), int(statistics.median(w for _, w in hw))) \
            if hw else (0, 0)
        section = {"images_dir": str(train.images.resolve()), "annotations_dir": str(train.path.resolve())}
    if val is None:
        train_sec, val_sec, summary.split_note = _split(train, out, seed, section)
    else:
        key = "ann_file" if val.kind == "coco" else "annotations_dir"
        val_sec = {**section, key: str(val.path.resolve())}
        if val.kind == "voc":
            val_sec["images_dir"] = str(val.images.resolve())
        train_sec = section
        summary.split_note = f"the data's own sets: train {train.path}, val {val.path}"
    summary.sections = {"train": train_sec, "val": val_sec}
    return summary


class _PlainDumper(yaml.SafeDumper):
    """Safe YAML without anchors: the class list is written out in both sections, as a person would."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# ---- the recipe ----------------------------------------------------------------------------------------------------
def _multiple(n: float, of: int = 32, low: int = 64) -> int:
    return max(low, int(n) // of * of)


def _render(task: str, s: DataSummary, device: str, out: Path) -> str:
    h, w = s.size
    cpu = device == "cpu"
    header = [f"# {task} recipe written by `resdense new` from the data below; edit freely.",
              f"# Data: {s.kind}, {len(s.classes)} classes ({', '.join(s.classes)}), median image {w}x{h} (w x h).",
              f"# Split: {s.split_note}."]
    header += [f"# {note}." for note in s.notes]
    header.append("# CPU: from scratch (nothing is downloaded), a 10 min budget over which the cosine schedule runs."
                  if cpu else "# GPU: ImageNet backbone weights (downloaded once), fp16 autocast, more iterations.")
    if task == "segmentation":
        crop = min(_multiple(min(h, w)), 256 if cpu else 512)
        model = {"arch": "unet", "backbone": "resnet18" if cpu else "resnet50", "num_classes": len(s.classes),
                 "weights_backbone": None if cpu else "imagenet"}
        if cpu:
            model["decoder_channels"] = [64, 32, 16, 16]  # four stages: a CPU's budget goes further
        long_side = max(h, w)
        val_size = None if long_side <= 1024 else 1024
        ignore = {"ignore_index": s.ignore_index} if s.ignore_index is not None else {}
        transforms = {"train_transforms": {"size": crop, "scale": [0.25, 1.0], "hflip": 0.5, "color_jitter": 0.2,
                                           **ignore},
                      "val_transforms": {"size": val_size, **ignore}}
        train = {"loss": "ce+dice", "batch_size": 8}
        evaluation = {"batch_size": 2}
        dataset = "mask"
    else:
        min_size = min(_multiple(min(h, w)), 320 if cpu else 800)
        max_size = max(min_size, min(_multiple(max(h, w)), 416 if cpu else 1333))
        model = {"arch": "faster_rcnn", "backbone": "resnet18" if cpu else "resnet50",
                 "weights_backbone": None if cpu else "imagenet", "min_size": min_size, "max_size": max_size}
        if cpu:
            model.update(fpn_channels=128, representation_size=256)
        transforms = {"train_transforms": {"size": min_size, "scale": [0.4, 1.0], "hflip": 0.5, "color_jitter": 0.2},
                      "val_transforms": {"size": max_size}}
        train = {"batch_size": 4, "grad_clip": 10.0}
        evaluation = {"batch_size": 4, "metric": "bbox/AP50"}
        dataset = s.kind
    schedule = ({"iterations": 5000, "max_minutes": 10, "schedule_by": "time", "lr": 0.003 if task ==
                 "segmentation" else 0.001} if cpu else {"iterations": 6000, "lr": 0.0003})
    recipe = {
        "task": task,
        "model": model,
        "data": {"dataset": dataset, **s.sections, **transforms},
        "train": {"amp": "auto", "output_dir": f"runs/{out.stem}", **schedule, **train, "optimizer": "adamw",
                  "weight_decay": 0.0001, "warmup_iters": 50, "schedule": "cosine", "ema_decay": 0.99,
                  "checkpoint_every": 100},
        "eval": {"every_iters": 200, **evaluation},
    }
    body = yaml.dump(recipe, Dumper=_PlainDumper, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(header) + "\n" + body
