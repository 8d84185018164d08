"""One predictor for every task, like detectron2's ``DefaultPredictor``: a model (or a checkpoint) and images in,
predictions in the images' own pixels out.

>>> from resdense.inference import Predictor                                  # doctest: +SKIP
>>> predictor = Predictor.from_checkpoint("runs/membrane/best.pt", tile=512, overlap=0.25)  # doctest: +SKIP
>>> predictor("big_slide.png")["mask"].shape                               # doctest: +SKIP
(4096, 4096)
>>> predictor = Predictor.from_pretrained("membrane_unet/")  # a package: see resdense.engine.package  # doctest: +SKIP

Images may be file paths, PIL images, ``uint8 [H, W, 3]`` RGB arrays (``[H, W]`` grey is repeated),
``uint8 [3, H, W]`` tensors or float ``[3, H, W]`` tensors in ``[0, 1]`` (rounded to 8 bits, as an image file holds them). They are
preprocessed as the recipe's validation split is (``data.val_transforms``: resize, ImageNet normalisation), except
that a tiled segmentation keeps the image's own resolution: that is what tiling is for.

Outputs, one dict per image:

- segmentation: ``mask`` (``int64 [H, W]``) and ``logits`` (``float32 [K, H, W]``, in the original frame);
- detection: ``boxes`` (xyxy, original pixels), ``labels``, ``scores``; for Mask R-CNN ``masks`` (float
  ``[N, 1, H, W]`` probabilities) or, tiled, ``rles`` (N compressed RLEs of the image, ``counts`` as ``str``: a large image with
  hundreds of instances would need gigabytes as ``masks``);
- classification: ``probs`` (``[K]``) and ``top`` (the ``top_k`` best ``(class name, probability)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from resdense.config import Config
from resdense.data import read_image
from resdense.engine.build import build_task
from resdense.engine.loading import load_model
from resdense.engine.package import is_package
from resdense.engine.tasks import Task
from resdense.engine.tasks.segmentation import model_divisor
from resdense.errors import ConfigError, WeightsError
from resdense.heads import has_masks, roi_mask_outputs

from .tiling import check_tiling, select_detections, sliced_detection, sliding_window_logits
from .tta import TTA, as_tta, tta_detections, tta_logits

__all__ = ["Predictor", "as_rgb"]

ImageLike = str | os.PathLike | np.ndarray | Image.Image | Tensor


def as_rgb(image: ImageLike) -> np.ndarray:
    """Any accepted image (see the module's docstring) as a C-contiguous ``uint8 [H, W, 3]`` RGB array."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"image tensor of shape {tuple(image.shape)}: expected [3, H, W]")
        x = image.detach().cpu()
        if x.is_floating_point():
            x = (x.float().clamp(0, 1) * 255).round()
        return np.ascontiguousarray(x.to(torch.uint8).permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"image array of shape {image.shape} and dtype {image.dtype}: expected uint8 [H, W, 3]")
        return np.ascontiguousarray(image)
    raise ConfigError(f"image of type {type(image).__name__}: expected a path, PIL image, array or tensor")


class Predictor:
    """Predictions of one model on images of any size, optionally tiled and with test-time augmentation.

    Args:
        model: the model (put in eval mode here).
        task: its task adapter, or the task's name (``"segmentation"``, ``"detection"``, ``"classification"``).
        class_names: names of the classes (``top`` and pictures); default: the task's.
        config: the recipe, for the validation preprocessing (``data.val_transforms``) and ``eval.score_threshold``.
        device: where to run (default: where the model's parameters are).
        tile: window side in pixels for large images (``None``: the whole image at once). Segmentation blends the
            windows' logits (:func:`~resdense.inference.tiling.sliding_window_logits`); detection merges the windows'
            and the whole image's detections class by class (SAHI's sliced prediction,
            :func:`~resdense.inference.tiling.sliced_detection`), each window capped by the model's own
            ``detections_per_img``, the image not; a Mask R-CNN's masks are then RLEs (``rles``).
        overlap: fraction of a window shared with its neighbour.
        blend: ``"gaussian"`` or ``"uniform"`` weights of the segmentation windows.
        tile_batch: windows per forward pass (the activation memory is that of this many windows). ``None``: 1 on a
            CPU (fastest and leanest there: 2048 px U-Net R18, 512 px tiles, batch 1 / 2 / 4 took 7.4 / 8.9 / 9.7 s),
            4 on a GPU.
        tta: ``True`` (flips and scales of :class:`~resdense.inference.tta.TTA`), a ``TTA``, or ``False``. Not with a
            tiled Mask R-CNN (TTA maps masks back as image-sized arrays).
        score_threshold: detections below it are dropped (default: ``eval.score_threshold`` of the recipe, else 0).
        preprocess: keyword arguments of the validation transforms that replace the recipe's (e.g. ``mean`` /
            ``std`` of the weights, ``size``).
        top_k: how many classes a classification's ``top`` lists.
        mask_threshold: a pixel of a tiled Mask R-CNN's instance is in its RLE where its probability is above this.
    """

    def __init__(self, model: nn.Module, task: Task | str, *, class_names: Sequence[str] | None = None,
                 config: Config | None = None, device: str | torch.device | None = None, tile: int | None = None,
                 overlap: float = 0.25, blend: str = "gaussian", tile_batch: int | None = None, tta: TTA | bool | None = None,
                 score_threshold: float | None = None, preprocess: dict[str, Any] | None = None,
                 top_k: int = 5, mask_threshold: float = 0.5) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        tile_batch = tile_batch if tile_batch is not None else (1 if self.device.type == "cpu" else 4)
        check_tiling(tile, overlap, blend, tile_batch)
        names = list(class_names) if class_names else list(getattr(task, "class_names", None) or [])
        if isinstance(task, str):
            if config is None and task == "segmentation":
                raise ConfigError("Predictor(task='segmentation') needs the number of classes: pass a Task or config")
            task = build_task(task, names, config)
        self.task, self.class_names, self.config = task, names, config
        self.model = model.to(self.device).eval()
        self.tile, self.overlap, self.blend, self.tile_batch = tile, overlap, blend, tile_batch
        self.tta = as_tta(tta)
        self.rles = tile is not None and has_masks(model)  # tiled Mask R-CNN: masks as RLEs of the image
        if self.rles and self.tta is not None:
            raise ConfigError(f"tta with tile = {tile} for a Mask R-CNN: tiled instance masks are RLEs, which TTA "
                              "cannot map back; use one or the other")
        self.mask_threshold = float(mask_threshold)
        default_thr = config.eval.score_threshold if config is not None else 0.0
        self.score_threshold = default_thr if score_threshold is None else float(score_threshold)
        self.transforms = dict(config.data.get("val_transforms") or {}) if config is not None else {}
        self.transforms.update(preprocess or {})
        self.top_k = top_k

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, config: Config | str | os.PathLike | None = None, *,
                        device: str = "auto", **options: Any) -> Predictor:
        """A predictor of a checkpoint written by ``resdense train`` (its stored recipe, or ``config``)."""
        model, run = load_model(checkpoint, config, device=device)
        return cls(model, run.task, class_names=run.class_names, config=run.config, **options)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "auto", **options: Any) -> Predictor:
        """A predictor of a package folder (``resdense export CKPT --format package --out DIR``, see
        :mod:`resdense.engine.package`): the weights of its ``model.safetensors``, the recipe of its ``config.yaml``,
        the class names of its ``resdense.json``. No other file is read and nothing is unpickled. ``options``: those
        of the constructor (``tile``, ``tta``, ``score_threshold``, ...).

        Raises:
            WeightsError: ``path`` is not a folder, or a bad package (one line naming the file: see
                :func:`~resdense.engine.package.read_package`).
        """
        if not is_package(path):
            why = ("not a package folder; a checkpoint file loads with Predictor.from_checkpoint" if Path(path).exists()
                   else "package folder not found")
            raise WeightsError(f"{path}: {why}")
        return cls.from_checkpoint(path, device=device, **options)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What this predictor does to an RGB ``uint8`` image before the model, as plain values (a package's
        ``resdense.json`` records it for users outside resdense): read from the arguments the transforms get
        (``data.val_transforms`` and ``preprocess`` over the presets' defaults) and, for a detector, from the
        detector's own transform, which resizes and normalises inside the model."""
        return self.task.preprocessing(self.model, self.transforms, self.tile)

    @property
    def kind(self) -> str:
        return self.task.name

    @torch.no_grad()
    def __call__(self, image: ImageLike) -> dict[str, Any]:
        """The prediction of one image (see the module's docstring): the task preprocesses it and reads the model's
        outputs back in its frame (:meth:`~resdense.engine.tasks.Task.infer`), through :meth:`dense_logits` or
        :meth:`detections`."""
        rgb = as_rgb(image)
        x = self.task.preprocess(rgb, self.transforms, tiled=self.tile is not None).to(self.device)
        return self.task.infer(self, x, rgb)

    def predict(self, images: Sequence[ImageLike]) -> list[dict[str, Any]]:
        """Predictions of several images, in order."""
        return [self(im) for im in images]

    @torch.no_grad()
    def dense_logits(self, x: Tensor) -> Tensor:
        """Logits ``[K, H, W]`` of one preprocessed image ``[3, H, W]``: whole or in ``tile`` windows, with TTA."""
        divisor = model_divisor(self.model)

        def one(img: Tensor) -> Tensor:
            return sliding_window_logits(self.model, img, self.tile, overlap=self.overlap, blend=self.blend,
                                         tile_batch=self.tile_batch, divisor=divisor)

        return tta_logits(one, x, self.tta) if self.tta is not None else one(x)

    @torch.no_grad()
    def detections(self, image: Tensor) -> dict[str, Any]:
        """Detections of one image ``[3, H, W]`` in ``[0, 1]``: whole or sliced (``tile``), with TTA, those scoring at
        least ``score_threshold``, on the CPU."""
        if self.tta is not None:
            out = tta_detections(self._detect_one, image, self.tta, max_detections=_max_detections(self.model))
        else:
            out = self._detect_one(image)
        out = select_detections(out, out["scores"] >= self.score_threshold)
        return {k: v if isinstance(v, list) else v.cpu() for k, v in out.items()}

    def _detect_many(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        images = [im.to(self.device) for im in images]
        if self.rles:  # RoI masks, pasted as RLEs by sliced_detection
            return [{k: v.cpu() for k, v in o.items()} for o in roi_mask_outputs(self.model, images)]
        return self.task.predict(self.model, images)

    def _detect_one(self, image: Tensor) -> dict[str, Tensor]:
        if self.tile is None:
            return self._detect_many([image])[0]
        # each window gives at most the model's detections_per_img; the merged image keeps all it has (a large
        # image holds more objects than one window)
        return sliced_detection(self._detect_many, image, self.tile, overlap=self.overlap, tile_batch=self.tile_batch,
                                max_detections=None, mask_threshold=self.mask_threshold)


def _max_detections(model: nn.Module) -> int | None:
    return getattr(getattr(model, "roi_heads", None), "detections_per_img", None) or \
        getattr(model, "detections_per_img", None)

