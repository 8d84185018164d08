"""A recipe's trained U-Net as an int8 CPU model, calibrated on the recipe's own training images.

>>> from resdense.export import quantize_checkpoint                              # doctest: +SKIP
>>> model, run = quantize_checkpoint("runs/demo_shapes_unet_r18/best.pt", n=32)  # doctest: +SKIP
>>> logits = model(images)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

from resdense.config import Config
from resdense.engine.build import build_dataset
from resdense.engine.distributed import main_first
from resdense.engine.loading import Run, load_model
from resdense.errors import ConfigError
from resdense.heads import QuantizedUNet, UNet, quantize_unet

__all__ = ["quantize_checkpoint"]

log = logging.getLogger(__name__)


def quantize_checkpoint(checkpoint: str | os.PathLike, config: Config | str | os.PathLike | None = None, *,
                        n: int = 32, batch_size: int = 8) -> tuple[QuantizedUNet, Run]:
    """Load ``checkpoint`` with :func:`~resdense.engine.load_model` (its stored recipe, or ``config``) and return
    its int8 copy calibrated on the first ``n`` images of the recipe's train split, read with the *validation*
    transforms (no augmentation: calibration should see what inference sees).

    Returns:
        ``(model, run)`` with ``run.model`` the int8 model; datasets are not kept. CPU only.

    Raises:
        ConfigError: the recipe is not a U-Net segmentation recipe (detectors and classifiers are not quantized
            yet), or ``n`` is not a positive int, or the train split is empty.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"quantize_checkpoint: n={n!r} must be a positive int (images to calibrate on)")
    model, run = load_model(checkpoint, config, device="cpu")
    cfg = run.config
    if not isinstance(model, UNet):
        raise ConfigError(f"quantize_checkpoint: {cfg.source} builds a {type(model).__name__} ({cfg.task}); int8 "
                          "quantization covers the U-Net (model.arch: unet) only")
    with main_first():  # dataset: shapes writes its files once
        train = build_dataset(cfg.data, cfg.task, "train", transforms_of="val")
    images = (train[i][0] for i in range(min(n, len(train))))
    qmodel = quantize_unet(model, images, n=n, batch_size=batch_size)
    log.info("%s: int8 U-Net calibrated on %d training images", cfg.name, min(n, len(train)))
    return qmodel, Run(cfg, qmodel, run.task, None, None, run.class_names)
