"""Recipe runners: a :class:`~resdense.config.Config` in, a trained / evaluated / predicting model out.

These are the library functions behind ``resdense train``, ``eval`` and ``predict``; the CLI only parses
arguments and calls them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from resdense.coco import CocoFileError, detection_results, encode_masks, read_json
from resdense.config import Config, save_config
from resdense.data import read_image
from resdense.errors import ConfigError, DataError
from resdense.files import make_dir, write_json
from resdense.hardware import choose_memory_format, choose_precision
from resdense.visualize import draw_boxes, overlay_mask, save_image, side_by_side

from .build import build_task, dataset_classes
from .distributed import init_from_env, on_main, resolve_device
from .evaluate import evaluate
from .loading import Run, as_config, build_datasets_once, build_run, load_model
from .package import trained_model_path
from .predictor import Predictor
from .report import check_report_folder, write_report
from .train_loop import HookBase
from .trainer import Trainer
from .tta import TTA

__all__ = ["Run", "build_run", "run_training", "run_evaluation", "run_prediction", "prediction_picture",
           "prediction_results", "load_model", "as_config"]

log = logging.getLogger(__name__)


def run_training(config: Config | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                 hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """Train a recipe; returns the final metrics (also written to ``<output_dir>/metrics.json``).

    Args:
        config: a :class:`Config` or a recipe path / shipped recipe name.
        overrides: ``--set`` style ``key=value`` strings.
        output_dir: replaces ``train.output_dir``.
        resume: a checkpoint to resume from (default: ``<output_dir>/last.pt`` when present and ``train.resume``).
        hooks: :class:`~resdense.engine.train_loop.HookBase` instances, run after the recipe's ``train.hooks``.

    Under ``torchrun`` every process calls this: they train one DistributedDataParallel model (see
    :mod:`resdense.engine.distributed`), rank 0 writes the run directory, and every rank returns the result.
    """
    config = as_config(config, overrides)
    if output_dir is not None:
        config.train.output_dir = str(output_dir)
    run_dir = config.output_dir
    world = init_from_env(config.train.dist_backend, config.train.device)
    if world.main:
        make_dir(run_dir, "run directory")
    run = build_run(config)
    if world.main:
        save_config(config, run_dir / "config.yaml")
    plain = {**config.to_dict(), "class_names": run.class_names}
    trainer = Trainer(run.model, run.task, run.train_set, run.val_set, config.train, config.eval, run_dir,
                      config=plain, hooks=hooks, source=config.source)
    log.info("%s: %s on %s, %d iterations (%d per epoch), run directory %s", config.name, config.model["arch"],
             trainer.device, trainer.total_iters, trainer.iters_per_epoch, run_dir)
    return trainer.fit(resume=resume)


def run_evaluation(config: Config | str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                   overrides: Sequence[str] = (), *, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the recipe's validation split; returns the task's metrics.

    Args:
        config: a recipe (path, shipped name or :class:`Config`), or a package folder (:mod:`~resdense.engine.package`):
            its ``config.yaml`` names the data, ``overrides`` can point it elsewhere.
        checkpoint: the trained model: a checkpoint or a package folder (default: ``config``, when a package).
        out: also write a report into this folder (:func:`~resdense.engine.report.write_report`: ``metrics.json``,
            per-class tables, confusion matrix or precision-recall curves, ``report.md``); the files written are
            listed under ``"report_files"`` and the report's arrays (``confusion_matrix`` / ``coco``) are returned.

    Under ``torchrun`` each process scores its shard of the images (each image once) and every rank returns the
    metrics of the whole split, equal to one process's; rank 0 writes the report, from the gathered results.
    """
    checkpoint = trained_model_path(config, checkpoint)
    config = as_config(config, overrides)
    if out is not None:
        check_report_folder(out)
    init_from_env(config.train.dist_backend, config.train.device)
    model, run = load_model(checkpoint, config, device=config.train.device)
    val = build_datasets_once(config, ("val",))["val"]
    if not run.class_names:
        run.class_names = dataset_classes(val, config.task)
        run.task = build_task(config.task, run.class_names, config)
    # The loaded weights are already the evaluated ones (the average of an EMA run): no average to keep here.
    device = resolve_device(config.train.device)
    precision = choose_precision(config.train.amp, device)
    # The precision and memory format of training's own evaluations, so that a checkpoint scores what it scored there
    model = choose_memory_format(config.train.channels_last, device, precision, config.task).apply(model)
    dtype = precision.dtype
    metrics = evaluate(model, run.task, val, config.eval, device, dtype=dtype, num_workers=config.train.num_workers,
                       report=out is not None)
    if out is not None:
        n = len(val) if config.eval.max_images is None else min(len(val), config.eval.max_images)
        title = f"{config.name}: {Path(checkpoint).name} on the validation split ({n} images)"
        files = on_main(lambda: write_report(metrics, run.class_names, out, title=title))
        metrics["report_files"] = [str(f) for f in files]
    return metrics


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
    ``tile_batch`` / ``tta``: see :class:`~resdense.engine.predictor.Predictor`.

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
    """A :class:`~resdense.engine.predictor.Predictor`'s detections of one image as COCO results
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
    names = predictor.class_names
    if predictor.kind == "segmentation":
        mask = pred["mask"].numpy()
        return overlay_mask(img, mask, names or [str(i) for i in range(int(mask.max()) + 1)])
    if predictor.kind == "detection":
        return draw_boxes(img, pred["boxes"], pred["labels"], pred["scores"], names,
                          score_threshold=predictor.score_threshold, masks=pred.get("rles", pred.get("masks")))
    thumb = np.asarray(Image.fromarray(img).resize((224, max(1, round(224 * img.shape[0] / img.shape[1])))))
    panel = Image.new("RGB", (220, thumb.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (name, p) in enumerate(pred["top"]):
        draw.text((6, 6 + 16 * i), f"{name}: {p:.3f}", fill=(0, 0, 0))
    return side_by_side([thumb, np.asarray(panel)])
