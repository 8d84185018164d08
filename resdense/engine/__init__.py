"""The training engine: a resumable training loop, checkpoints, schedules, logs and the recipe runners.

>>> from resdense.engine import run_training                    # doctest: +SKIP
>>> result = run_training("configs/demo_shapes_unet_r18.yaml")  # doctest: +SKIP
>>> result["final"]["mIoU"]                                      # doctest: +SKIP
"""

from .build import check_config, config_from_dict, load_config
from .checkpoint import atomic_save, evaluated_weights, load_checkpoint, rng_state, set_rng_state
from .distributed import World, resolve_device
from .evaluate import evaluate
from .export import ExportError, ExportResult, export_model
from .loading import Run, build_run, load_model
from .logger import RunLogger, read_csv
from .package import Package, is_package, read_package
from .package_export import export_package
from .predictor import Predictor, as_rgb
from .quantize import quantize_checkpoint
from .runner import run_evaluation, run_prediction, run_training
from .sampler import ResumableSampler, SeededDataset, sample_seed
from .schedule import build_optimizer, build_scheduler, lr_factor
from .tasks import Batch, ClassificationTask, DetectionTask, SegmentationTask, Task
from .tiling import sliced_detection, sliding_window_logits
from .train_loop import HookBase
from .trainer import NonFiniteLossError, Trainer
from .tta import TTA

__all__ = [
    "Batch",
    "ClassificationTask",
    "DetectionTask",
    "ExportError",
    "ExportResult",
    "HookBase",
    "NonFiniteLossError",
    "Package",
    "Predictor",
    "ResumableSampler",
    "Run",
    "RunLogger",
    "SeededDataset",
    "SegmentationTask",
    "TTA",
    "Task",
    "Trainer",
    "World",
    "as_rgb",
    "atomic_save",
    "build_optimizer",
    "build_run",
    "build_scheduler",
    "check_config",
    "config_from_dict",
    "evaluate",
    "evaluated_weights",
    "export_model",
    "export_package",
    "is_package",
    "load_checkpoint",
    "load_config",
    "load_model",
    "quantize_checkpoint",
    "lr_factor",
    "read_csv",
    "read_package",
    "resolve_device",
    "rng_state",
    "run_evaluation",
    "run_prediction",
    "run_training",
    "sample_seed",
    "set_rng_state",
    "sliced_detection",
    "sliding_window_logits",
]
