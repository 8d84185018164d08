"""The engine: recipes to objects, task adapters, a resumable training loop, checkpoints, schedules, logs,
evaluation, loading a trained model, and the train / eval runners. Prediction lives in :mod:`resdense.inference`,
export in :mod:`resdense.export`.

>>> from resdense.engine import run_training                    # doctest: +SKIP
>>> result = run_training("configs/demo_shapes_unet_r18.yaml")  # doctest: +SKIP
>>> result["final"]["mIoU"]                                      # doctest: +SKIP
"""

from .build import check_config, config_from_dict, load_config
from .checkpoint import atomic_save, evaluated_weights, load_checkpoint, rng_state, set_rng_state
from .distributed import World, resolve_device
from .evaluate import evaluate
from .loading import Run, build_run, load_model
from .logger import RunLogger, read_csv
from .package import Package, is_package, read_package
from .runner import run_evaluation, run_training
from .sampler import ResumableSampler, SeededDataset, sample_seed
from .schedule import build_optimizer, build_scheduler, lr_factor
from .tasks import Batch, ClassificationTask, DetectionTask, SegmentationTask, Task
from .train_loop import HookBase
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "Batch",
    "ClassificationTask",
    "DetectionTask",
    "HookBase",
    "NonFiniteLossError",
    "Package",
    "ResumableSampler",
    "Run",
    "RunLogger",
    "SeededDataset",
    "SegmentationTask",
    "Task",
    "Trainer",
    "World",
    "atomic_save",
    "build_optimizer",
    "build_run",
    "build_scheduler",
    "check_config",
    "config_from_dict",
    "evaluate",
    "evaluated_weights",
    "is_package",
    "load_checkpoint",
    "load_config",
    "load_model",
    "lr_factor",
    "read_csv",
    "read_package",
    "resolve_device",
    "rng_state",
    "run_evaluation",
    "run_training",
    "sample_seed",
    "set_rng_state",
]
