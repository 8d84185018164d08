"""``resdense predict``: a checkpoint or a package on image files, one picture per image and, for a detector, the
COCO results of them all.

>>> from resdense.inference import run_prediction                                       # doctest: +SKIP
>>> run_prediction(None, "runs/demo/best.pt", ["a.png", "b.png"], "preds", json="preds.json")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resdense.coco import CocoFileError, detection_results, encode_masks, read_json
from resdense.config import Config
from resdense.data import read_image
from resdense.engine.loading import as_config
from resdense.engine.package import trained_model_path
from resdense.errors import ConfigError, DataError
from resdense.files import write_json
from resdense.visualize import save_image

from .predictor import Predictor
from .tta import TTA

__all__ = ["run_prediction", "prediction_picture", "prediction_results"]


def run_prediction(config: Config | str | os.PathLike | None, checkpoint: str | os.PathLike | None,
                   images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   score_threshold: float | None = None, overrides: Sequence[str] = (), tile: int | None = None,
                   overlap: float = 0.25, blend: str = "gaussian", tile_batch: int | None = None,
                   tta: TTA | bool | None = None, json: str | os.PathLike | None = None,
                   coco: str | os.PathLike | None = None) -> list[Path]:
    """Predict on image files and write one readable PNG overlay per image into ``out_dir``. ``checkpoint``: a
    checkpoint or a package folder (``None``: ``config``, which must then be a package); ``config``: its recipe
    instead of the stored one (``None``: the stored one).

    Segmentation: class-coloured mask blended over the image with a legend. Detection: boxes with
    ``"label score"`` captions (``score_threshold``, default ``eval.score_threshold``) over the instance masks of a
    Mask R-CNN. Classification: the top-5 classes written on the image. ``tile`` / ``overlap`` / ``blend`` /
    ``tile_batch`` / ``tta``: see :class:`~resdense.inference.predictor.Predictor`.

    Args:
        json: detection only: also write the detections of every image to this file as COCO results
            (:func:`~resdense.coco.detection_results`: ``bbox``, ``score``, ``category_id`` and, for a Mask R-CNN,
            ``segmentation`` RLEs), which ``pycocotools.coco.COCO.loadRes`` reads.
        coco: a COCO file whose ids the results use: ``image_id`` of the image of the same file name and
            ``category_id`` of the category of the same name. Without it, ``image_id`` is the file name's number
            when every name is a distinct number (COCO's own naming), else the image's position (1, 2, ...), and
            ``category_id`` is the label (1..K, the checkpoint's classes in order).

    Returns:
        The paths written: the pictures, then the JSON file.
    """
    checkpoint = trained_model_path(config, checkpoint)
    cfg = as_config(config, overrides) if config is not None else None
    predictor = Predictor.from_checkpoint(checkpoint, cfg, score_threshold=score_threshold, tile=tile,
                                          overlap=overlap, blend=blend, tile_batch=tile_batch, tta=tta)
    out_dir = Path(out_dir)
    if coco is not None and json is None:
        raise ConfigError(f"coco = {str(coco)!r} sets the ids of the COCO results: give json too")
    if json is not None and predictor.kind != "detection":
        raise ConfigError(f"json = {str(json)!r}: COCO results are written for detection recipes; this checkpoint "
                          f"is a {predictor.kind} model")
    ids = _result_ids(images, predictor.class_names, coco) if json is not None else None
    written, results = [], []
    for i, path in enumerate(images):
        img = read_image(path)
        pred = predictor(img)
        written.append(save_image(prediction_picture(predictor, img, pred), out_dir / (Path(path).stem + ".png")))
        if ids is not None:
            results += prediction_results(pred, ids[0][i], ids[1], predictor.mask_threshold)
    if json is not None:
        written.append(write_json(json, results, "COCO results", indent=None))
    return written


def prediction_results(pred: dict[str, Any], image_id: int, category_ids: dict[int, int] | None = None,
                       mask_threshold: float = 0.5) -> list[dict]:
    """A :class:`~resdense.inference.predictor.Predictor`'s detections of one image as COCO results
    (:func:`~resdense.coco.detection_results`): ``bbox``, ``score``, ``category_id`` (``category_ids[label]``,
    default the label) and, with ``rles`` or ``masks`` (thresholded at ``mask_threshold``), ``segmentation``."""
    labels = pred["labels"].tolist()
    if "rles" in pred:
        rles = pred["rles"]
    elif "masks" in pred:
        rles = encode_masks((pred["masks"][:, 0] > mask_threshold).numpy())
    else:
        rles = None
    return detection_results(image_id, [(category_ids or {}).get(k, k) for k in labels], pred["scores"].tolist(),
                             boxes=pred["boxes"].numpy(), segmentations=rles)


def _result_ids(images: Sequence[str | os.PathLike], class_names: Sequence[str],
                coco: str | os.PathLike | None) -> tuple[list[int], dict[int, int]]:
    """``image_id`` of each image and ``category_id`` of each label, as :func:`run_prediction` documents."""
    names = [Path(p).name for p in images]
    labels = {k: k for k in range(1, len(class_names) + 1)}
    if coco is None:
        stems = [Path(n).stem for n in names]
        numbered = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
        return ([int(s) for s in stems] if numbered else list(range(1, len(names) + 1))), labels
    try:
        data = read_json(coco)
        by_file = {Path(im["file_name"]).name: int(im["id"]) for im in data["images"]}
        by_name = {str(c["name"]): int(c["id"]) for c in data["categories"]}
    except CocoFileError as err:
        raise DataError(str(err)) from None
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{coco}: not a COCO file with images and categories ({type(err).__name__}: {err})") from None
    for field, wanted, known in (("file_name", names, by_file), ("category name", class_names, by_name)):
        missing = [n for n in wanted if n not in known]
        if missing:
            raise DataError(f"{coco}: no {field} {missing[0]!r} ({len(missing)} of {len(wanted)} missing)")
    return [by_file[n] for n in names], {k: by_name[n] for k, n in enumerate(class_names, start=1)}


def prediction_picture(predictor: Predictor, img: np.ndarray, pred: dict[str, Any] | None = None) -> np.ndarray:
    """One image's prediction drawn over it (the pictures of ``resdense predict``); ``pred``: the predictor's
    output on ``img`` when already computed."""
    pred = predictor(img) if pred is None else pred
    return predictor.task.picture(img, pred, predictor.class_names, score_threshold=predictor.score_threshold)
