"""Prediction: the task-agnostic :class:`Predictor` (a model or a checkpoint and images in, predictions in the
images' own pixels out), sliding-window segmentation and sliced detection for large images (:mod:`.tiling`),
test-time augmentation (:mod:`.tta`) and ``resdense predict``'s runner (:func:`run_prediction`).

>>> from resdense.inference import Predictor                                       # doctest: +SKIP
>>> Predictor.from_checkpoint("runs/membrane/best.pt", tile=512)("slide.png")["mask"]  # doctest: +SKIP
"""

from .predictor import Predictor, as_rgb
from .run import prediction_picture, prediction_results, run_prediction
from .tiling import sliced_detection, sliding_window_logits
from .tta import TTA

__all__ = ["TTA", "Predictor", "as_rgb", "prediction_picture", "prediction_results", "run_prediction",
           "sliced_detection", "sliding_window_logits"]
