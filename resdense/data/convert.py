"""Writing a dataset on disk as a COCO instances file (``resdense data convert PATH --to coco``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from resdense.errors import ConfigError
from resdense.files import write_json

from .check import DataLayout, pick_layout
from .coco_parse import parse_coco, raise_first
from .instance_masks import read_instance_folder
from .voc import voc_to_coco

__all__ = ["convert_to_coco", "Converted"]


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_to_coco` wrote: the file, the dataset it came from, and its size."""

    out: Path
    layout: DataLayout
    num_images: int
    num_annotations: int
    class_names: list[str]


def convert_to_coco(path: str | os.PathLike, out: str | os.PathLike, *, kind: str | None = None,
                    instances: bool = False, classes: Sequence[str] | Mapping[int, str] | None = None,
                    class_masks_dir=None, id_rule: str = "plain", mask_suffix: str | None = None,
                    class_mask_suffix: str | None = None) -> Converted:
    """Write the instance-mask folder or VOC folder at ``path`` as a COCO instances JSON ``out``.

    ``file_name`` fields are relative to the dataset's image folder (``Converted.layout.images``), so
    ``CocoDetection(layout.images, out, masks=True)`` serves exactly what :class:`InstanceMaskDataset` serves.
    Instance segmentations are compressed RLE ``{"size": [h, w], "counts": str}``; categories come from
    ``classes`` (instances: default ``["person"]``; VOC: default the sorted names found).

    Args:
        path: the dataset folder (found as ``resdense data check`` finds it, :func:`~resdense.data.check.find_layouts`).
        kind: ``"instances"`` or ``"voc"`` when ``path`` holds several datasets.
        instances: read ``images/`` + ``masks/`` as instance ids.
        classes, class_masks_dir, id_rule, mask_suffix, class_mask_suffix: instance folders only, see
            :func:`~resdense.data.read_instance_folder`.

    Raises:
        ConfigError: instance options for a VOC folder.
        DataError: no instance-mask or VOC folder at ``path`` (a COCO file or semantic masks only), or the first
            problem of the data, as the datasets raise it; nothing is written then.
    """
    layout = pick_layout(path, kind, instances, among=("instances", "voc"))
    if layout.kind == "instances":
        data = read_instance_folder(layout.images, layout.path, ("person",) if classes is None else classes,
                                    class_masks_dir=class_masks_dir, id_rule=id_rule, mask_suffix=mask_suffix,
                                    class_mask_suffix=class_mask_suffix).data
    else:
        if class_masks_dir is not None or id_rule != "plain" or mask_suffix or class_mask_suffix:
            raise ConfigError(f"{layout.path}: a VOC folder has no masks; class_masks_dir, id_rule and mask "
                              "suffixes apply to instance-mask folders")
        if isinstance(classes, Mapping):
            raise ConfigError(f"classes = {dict(classes)!r}: VOC classes are names, given as a list")
        data = voc_to_coco(layout.images, layout.path, classes)
    parsed = parse_coco(data, str(layout.path))
    raise_first(parsed)  # a file that our own reader would refuse is not written
    write_json(out, data, "COCO file", separators=(",", ":"), indent=None)
    return Converted(Path(out), layout, len(data["images"]), len(data["annotations"]), parsed.class_names)
