"""YAML recipes <-> constructor keyword arguments.

A recipe has four sections that map one-to-one onto keyword arguments (no defaults file, no
inheritance)::

    task: segmentation            # or detection / classification; the architecture's when absent
    model: {arch: unet, backbone: resnet18, num_classes: 4}     # -> resdense.heads.UNet(backbone=..., ...)
    data:  {dataset: mask, train: {...}, val: {...}, ...}       # -> dataset constructors and transform presets
    train: {lr: 0.001, iterations: 500, ...}                    # -> TrainConfig (below)
    eval:  {every_iters: 100, ...}                              # -> EvalConfig (below)

and, to use architectures and datasets the library does not ship, the modules that register them
(:func:`resdense.register_architecture`, :func:`resdense.register_dataset`), imported before ``model`` and ``data``
are checked (mmengine's ``custom_imports``)::

    imports: [my_pkg.models, my_models]   # module names; the recipe's folder comes first on sys.path meanwhile
    imports_from: null                    # that folder (the resolved recipe records it, absolute)

``train`` and ``eval`` are dataclasses, so their schema is their fields; unknown keys raise
:class:`~resdense.errors.ConfigError` naming the file and the key, and ``--set key=value`` overrides are parsed as YAML
and type-checked against the same schema.

This module is pure (YAML and dataclasses; it imports no model or data code, so reading a recipe is cheap): its
:func:`parse_recipe` / :func:`parse_config` check everything but the ``model`` and ``data`` sections, whose keys are
the arguments of the constructors they feed. The one public loader, :func:`resdense.load_config`
(= :func:`resdense.engine.load_config`), which the CLI and the runners use, checks those too, one floor up.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resdense.errors import ConfigError
from resdense.files import write_text
from resdense.recipes import (  # re-exported: this module's API
    apply_overrides,
    find_config,
    list_configs,
    read_yaml,
    splits_beside_recipe,
)
from resdense.registry import TASK_NAMES
from resdense.typecheck import (  # re-exported
    NOT_SET,
    check_type,
    first_difference,
    unknown_key_error,
    wrong_type_error,
)

__all__ = [
    "Config",
    "TrainConfig",
    "EvalConfig",
    "parse_recipe",
    "parse_config",
    "apply_overrides",
    "save_config",
    "find_config",
    "list_configs",
    "check_type",
    "read_yaml",
    "unknown_key_error",
    "wrong_type_error",
    "first_difference",
    "NOT_SET",
    "TASKS",
]

TASKS = TASK_NAMES  # what a registered architecture or dataset may serve
LOGGERS = ("csv", "tensorboard", "mlflow")  # train.loggers: what each writes, see TrainConfig
SEGMENTATION_LOSSES = ("ce", "dice", "ce+dice", "focal", "focal+dice", "lovasz", "ce+lovasz")
SECTIONS = ("task", "name", "imports", "imports_from", "model", "data", "train", "eval")
@dataclass
class TrainConfig:
    """Optimisation settings of one run (the ``train:`` section).

    Attributes:
        output_dir: run directory (resolved config, ``log.csv``, ``last.pt``, ``best.pt``, ``metrics.json``,
            ``curves.png``); ``{name}`` is replaced by the recipe's name.
        seed: every random draw of the run derives from it (data order, augmentation, initialisation).
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        epochs / iterations: length of training; exactly one may be set (``iterations`` wins when both are).
            An iteration is one optimizer step over the global batch (below); an epoch is as many steps as the
            training set holds whole global batches.
        batch_size, num_workers: the training loader's, per process: under ``torchrun`` each of the ``world``
            processes loads ``batch_size`` images per micro-batch.
        accumulate: micro-batches per optimizer step (gradient accumulation). Each micro-batch's loss is divided by
            ``accumulate``, so for mean-reduced losses ``accumulate`` micro-batches of ``batch_size`` give the
            gradient of one batch of ``accumulate * batch_size``; under DDP the gradients are all-reduced only in
            the last micro-batch's backward pass (``no_sync`` before it). The global batch of a step is
            ``world * batch_size * accumulate`` images (logged when training starts).
        dist_backend: the torch.distributed backend of a ``torchrun`` launch: ``auto`` (NCCL on CUDA, gloo on CPU),
            ``nccl`` or ``gloo``. Ignored in one process.
        sync_bn: under ``torchrun``, convert the BatchNorm layers to :class:`torch.nn.SyncBatchNorm`, whose
            statistics are those of the global micro-batch. CUDA only: torch's SyncBatchNorm refuses CPU tensors
            (and has no CPU kernels), so a multi-process CPU run with ``sync_bn: true`` is refused; in one process
            it has no effect (BatchNorm already sees the whole batch).
        optimizer: ``adamw`` or ``sgd``; ``lr``, ``weight_decay``, ``momentum`` (SGD), ``betas`` (AdamW).
        norm_weight_decay: weight decay of norm layers and biases (0 keeps them out of the decay, as timm does).
        schedule: ``cosine`` (to ``min_lr_ratio * lr``), ``step`` (x ``gamma`` at each of ``milestones``, given as
            iterations, or as fractions of the run when < 1) or ``constant``; after ``warmup_iters`` of linear
            warm-up from ``warmup_factor * lr``.
        grad_clip: clip the gradient's global L2 norm to this value (``None``: no clipping).
        amp: ``auto`` (the default: fp16 on CUDA, bf16 on a CPU with native bf16 - AVX512-BF16 or AMX as oneDNN
            reports it - and fp32 on every other CPU; see :mod:`resdense.hardware`), ``fp16`` (CUDA), ``bf16`` (CUDA,
            or a CPU: without native bf16 it is emulated, several times slower, and warns) or ``none`` (fp32).
        channels_last: train the model in the NHWC memory format: ``auto`` (the default: on for segmentation and
            classification under fp16/bf16 autocast, off in fp32 and for detectors; see
            :func:`resdense.hardware.choose_memory_format`), ``true`` or ``false``. Logged and recorded like ``amp``.
        loss: segmentation loss: ``ce``, ``dice``, ``ce+dice``, ``focal``, ``focal+dice``, ``lovasz`` or
            ``ce+lovasz`` (smp's ``DiceLoss``, ``FocalLoss`` and ``LovaszLoss``, the Lovasz-softmax surrogate of the
            IoU, Berman et al. 2018, per image; all of them leave out the pixels whose target is the dataset's ``ignore_index``, and average
            over the remaining ones). smp's multiclass focal loss is the sigmoid focal loss of Lin et al. (2017) of
            each class against the rest, summed over the classes. Ignored by detection, whose models compute their
            own losses.
        class_weights: per-class weights ``[K]`` of the segmentation cross-entropy term (``ce``, ``ce+dice``; the
            weighted mean of torch's ``cross_entropy``); ``None``: uniform. Refused with a loss that has no
            cross-entropy term (smp's Dice and focal losses take no class weights).
        focal_gamma: the focusing exponent of the focal loss (2: Lin et al.).
        ema_decay: keep an exponential moving average of the weights with this decay (timm's ``ModelEmaV3`` rule, see
            :mod:`resdense.engine.ema`: floating-point buffers such as BatchNorm statistics are averaged too, integer
            ones copied); ``None``: off. When on, every evaluation, the choice of ``best.pt``, ``resdense eval`` and
            ``predict`` use the averaged weights; checkpoints hold both (``model``: the trained weights, which
            resume needs; ``ema``: the average, which :func:`~resdense.engine.load_model` loads).
        ema_warmup_iters: ramp the EMA decay up as ``ema_decay * (1 - exp(-t / ema_warmup_iters))`` at update ``t``
            (YOLOv5's ramp; 0: the constant ``ema_decay`` from the first update, which copies the weights).
        freeze_backbone_iters: the backbone (see :func:`resdense.heads.backbone_of`: a U-Net's or classifier's
            ``backbone``, a detector's ``backbone.body``, an smp model's ``encoder``) gets no updates and keeps its
            BatchNorm layers in eval mode for the first N iterations, then trains; stages the model froze itself
            (``frozen_stages``, ``trainable_stages``) stay frozen (see :class:`~resdense.engine.schedule.BackboneFreeze`).
            0: off.
        max_minutes: a wall-clock budget in minutes on the training time (``timings.train_s``: data loading and
            optimisation steps; evaluations and checkpoint writes do not count). Training stops after the step
            during which the budget is exceeded, then evaluates, writes ``last.pt`` and records
            ``stopped: {reason: max_minutes, iteration, train_s}`` in ``metrics.json``. The learning-rate schedule
            stays the one defined over ``iterations``, so a cosine decay is cut short: set ``iterations`` to what
            fits the budget and keep this as a guard. The budget counts the whole run: a resumed run continues
            from the stored ``train_s``, so a run stopped by its budget stops again at once unless ``max_minutes``
            is raised. ``None``: no budget.
        schedule_by: ``"iterations"`` (the schedule runs over ``iterations``) or ``"time"`` (it runs over the
            ``max_minutes`` budget: the cosine reaches its end when the budget does, whatever this machine's speed,
            so a fast CPU trains more iterations at the same schedule; ``iterations`` is then only an upper bound).
            The warm-up stays in iterations. A resumed run continues from the stored training time.
        checkpoint_every: also write ``last.pt`` every N iterations (0: only at evaluations and epoch ends).
        log_every: write a ``log.csv`` row every N iterations.
        loggers: where the rows of ``log.csv`` and ``eval.csv`` go: ``csv`` (always: resume and ``curves.png`` read
            the CSV files, so a list without it is refused), ``tensorboard`` (scalars under ``output_dir/tb`` when
            the package is installed, else CSV only) and ``mlflow`` (an MLflow run: params, metrics, tags and the
            final files; ``pip install 'resdense[mlflow]'``; see :mod:`resdense.engine.mlflow_logger`).
        mlflow_uri: the MLflow tracking URI (a server ``http://host:5000``, ``databricks``, a database
            ``sqlite:///path/mlflow.db``). ``None``: the ``MLFLOW_TRACKING_URI`` environment variable when set, else
            the SQLite store ``mlflow.db`` in the folder above ``output_dir`` (``runs/mlflow.db`` for
            ``runs/{name}``), with the artifacts in ``mlruns/`` beside it, so that every run under ``runs/`` is
            one store: ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``. Used when ``loggers`` lists
            ``mlflow``.
        mlflow_experiment: the MLflow experiment of the run (created when absent); ``None``: the recipe's name.
        progress: show a tqdm bar (only when stderr is a terminal).
        resume: continue from ``output_dir/last.pt`` when it exists (refused when the checkpoint's model or data
            section differs from this recipe's, or when its global batch differs from this launch's).
        max_nonfinite: how many non-finite losses are tolerated (0: the first one stops training).
        hooks: training hooks (``resdense.engine.HookBase`` subclasses) by their registered names
            (``resdense.register_hook``), each a name or a ``{name: {option: value}}`` mapping whose options are the
            hook's constructor arguments; they run after every step's logging, before its evaluation and checkpoint,
            and each stores its own state in the checkpoints.
    """

    output_dir: str = "runs/{name}"
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 8
    num_workers: int = 0
    accumulate: int = 1
    dist_backend: str = "auto"
    sync_bn: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    norm_weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    grad_clip: float | None = None
    amp: str = "auto"
    channels_last: bool | str = "auto"
    loss: str = "ce"
    class_weights: list[float] | None = None
    focal_gamma: float = 2.0
    ema_decay: float | None = None
    ema_warmup_iters: int = 0
    freeze_backbone_iters: int = 0
    max_minutes: float | None = None
    schedule_by: str = "iterations"
    checkpoint_every: int = 0
    log_every: int = 10
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None
    progress: bool = True
    resume: bool = True
    max_nonfinite: int = 0
    hooks: list[str | dict[str, dict[str, Any] | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("train.optimizer", self.optimizer, ("adamw", "sgd"))
        _choice("train.schedule", self.schedule, ("cosine", "step", "constant"))
        _choice("train.amp", self.amp, ("auto", "fp16", "bf16", "none"))
        if isinstance(self.channels_last, str):
            _choice("train.channels_last", self.channels_last, ("auto",))
        _choice("train.loss", self.loss, SEGMENTATION_LOSSES)
        _choice("train.dist_backend", self.dist_backend, ("auto", "nccl", "gloo"))
        if self.epochs is None and self.iterations is None:
            raise ConfigError("train: set either 'epochs' or 'iterations'")
        for name in ("epochs", "iterations", "batch_size", "accumulate"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"train.{name} = {v!r} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr = {self.lr!r} must be positive")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip = {self.grad_clip!r} must be positive (or null for no clipping)")
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"train.warmup_factor = {self.warmup_factor!r} must lie in (0, 1]")
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            raise ConfigError(f"train.focal_gamma = {self.focal_gamma!r} must be a non-negative number")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay = {self.ema_decay!r} must lie in (0, 1) (or null for no EMA)")
        for name in ("ema_warmup_iters", "freeze_backbone_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} = {getattr(self, name)!r} must be at least 0")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ConfigError(f"train.max_minutes = {self.max_minutes!r} must be positive (or null for no budget)")
        _choice("train.schedule_by", self.schedule_by, ("iterations", "time"))
        if self.schedule_by == "time" and self.max_minutes is None:
            raise ConfigError("train.schedule_by = 'time' runs the schedule over train.max_minutes, which is not set")
        self.betas = tuple(self.betas)
        for name in self.loggers:
            if name not in LOGGERS:
                raise ConfigError(f"train.loggers: {name!r} is not one of {', '.join(map(repr, LOGGERS))}")
        for entry in self.hooks:
            if isinstance(entry, dict) and len(entry) != 1:
                raise ConfigError(f"train.hooks: {entry!r} must be a name or one {{name: {{option: value}}}} mapping")
        if "csv" not in self.loggers:
            raise ConfigError(f"train.loggers = {list(self.loggers)!r} leaves out 'csv', which resume and curves.png "
                              f"read: list it too (e.g. {['csv', *self.loggers]!r})")


@dataclass
class EvalConfig:
    """Evaluation settings (the ``eval:`` section).

    Attributes:
        every_iters: evaluate every N iterations (0: use ``every_epochs``).
        every_epochs: evaluate every N epochs (0: only at the end).
        metric: the metric that selects ``best.pt`` (default: ``mIoU`` for segmentation, ``bbox/AP`` for detection,
            ``top1`` for classification); any key of the task's metrics dict.
        mode: ``max`` or ``min``: whether a higher or a lower ``metric`` is better (``None``: from its name: a
            loss or an error, e.g. ``val_loss``, is minimised, any other metric maximised). ``best.pt``,
            ``patience`` and the logs follow it (mmengine's ``rule``, detectron2's ``BestCheckpointer(mode=)``).
        batch_size: evaluation batch size.
        score_threshold: detections below this score are not drawn by ``predict`` (evaluation uses all of them).
        backend: COCO evaluation backend, ``faster`` (faster-coco-eval) or ``pycocotools``.
        max_dets: COCO's detection limits per image (pycocotools' ``params.maxDets``): AP and the area-range
            statistics count the top ``max(max_dets)`` detections of each image and category, and each value ``m``
            gives an ``AR<m>`` key. COCO's ``[1, 10, 100]`` caps the recall of an image with more than 100 objects;
            raise the last value (and the model's ``box_detections_per_img``) for crowded images, as LVIS does (300).
        max_images: evaluate on the first N validation images only (``None``: all).
        patience: early stopping: stop training after N evaluations in a row without an improvement of ``metric``
            over the best so far (Keras' ``EarlyStopping`` with ``min_delta=0``); ``best.pt`` keeps the best
            weights, ``last.pt`` the last ones, and ``metrics.json`` records ``stopped: {reason: patience,
            iteration}``. ``None``: off. It counts periodic evaluations (``every_iters`` / ``every_epochs``), and a
            resumed run continues the count from the checkpoint.
    """

    every_iters: int = 0
    every_epochs: int = 1
    metric: str | None = None
    mode: str | None = None
    batch_size: int = 8
    score_threshold: float = 0.5
    backend: str = "faster"
    max_dets: list[int] = field(default_factory=lambda: [1, 10, 100])
    max_images: int | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        _choice("eval.backend", self.backend, ("faster", "pycocotools"))
        if self.mode is not None:
            _choice("eval.mode", self.mode, ("max", "min"))
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"eval.patience = {self.patience!r} must be at least 1 (or null for no early stopping)")
        if not self.max_dets or min(self.max_dets) < 1 or len(set(self.max_dets)) != len(self.max_dets):
            raise ConfigError(f"eval.max_dets = {self.max_dets!r} must be distinct positive ints, e.g. [1, 10, 100]")
        self.max_dets = sorted(self.max_dets)


@dataclass
class Config:
    """A loaded recipe. ``model`` and ``data`` are plain dicts of constructor keyword arguments.

    ``task`` is ``None`` only in a recipe parsed here that leaves it out: the engine's loader fills it in from
    ``model.arch``'s registration (:data:`resdense.registry.ARCHITECTURES`), which this layer does not read.

    ``imports``: modules the engine's loader imports before it checks ``model`` and ``data``, with ``imports_from``
    first on ``sys.path`` meanwhile (``None``: the working directory). Read from a file, ``imports_from`` defaults to
    the recipe's folder and a relative one is relative to it; :meth:`to_dict` writes both (when ``imports`` is not
    empty) with the folder absolute, so the run's ``config.yaml`` and checkpoints import them again from anywhere.
    """

    task: str | None
    model: dict[str, Any]
    data: dict[str, Any]
    train: TrainConfig
    eval: EvalConfig
    name: str = "run"
    source: str = "<dict>"
    # What the engine's loader checked (this recipe's to_dict() then), so that a checked recipe handed on unchanged
    # is not checked again; None: not checked (parsed here only, or built by hand).
    checked: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    imports: list[str] = field(default_factory=list)
    imports_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML- and ``torch.load(weights_only=True)``-safe)."""
        extensions = {"imports": list(self.imports), "imports_from": self.imports_from} if self.imports else {}
        return {
            "task": self.task,
            "name": self.name,
            **extensions,
            "model": _plain(self.model),
            "data": _plain(self.data),
            "train": _plain(dataclasses.asdict(self.train)),
            "eval": _plain(dataclasses.asdict(self.eval)),
        }

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir.replace("{name}", self.name))


def _choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, allowed))}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        # int keys stay ints (a mask dataset's value_map {0: 0, 255: 1}); YAML and checkpoints keep them
        return {(k if isinstance(k, int) and not isinstance(k, bool) else str(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _dataclass_section(cls: type, raw: Any, section: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in raw.items():
        if key not in names:
            raise unknown_key_error(source, f"{section}.{key}", names)
        if not check_type(value, hints[key]):
            raise wrong_type_error(source, f"{section}.{key}", value, hints[key])
    try:
        return cls(**raw)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


# ---- loading -----------------------------------------------------------------------------------------------------
def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a recipe dict and build a :class:`Config`: sections, task, ``train`` and ``eval``. The keys of
    ``model`` and ``data`` are checked against their constructors by :func:`resdense.engine.config_from_dict`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a recipe must be a mapping with sections {', '.join(SECTIONS)}")
    for key in raw:
        if key not in SECTIONS:
            raise unknown_key_error(source, str(key), SECTIONS)
    model = raw.get("model")
    if not isinstance(model, Mapping) or "arch" not in model:
        raise ConfigError(f"{source}: section 'model' must be a mapping with an 'arch' key (e.g. arch: unet)")
    data = raw.get("data") or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: section 'data' must be a mapping, got {type(data).__name__}")
    task = raw.get("task") or None
    if task is not None and task not in TASKS:
        raise ConfigError(f"{source}: task = {task!r} is not one of {', '.join(TASKS)}")
    name = raw.get("name") or (Path(source).stem if source != "<dict>" else "run")
    imports, imports_from = raw.get("imports") or [], raw.get("imports_from")
    if not (isinstance(imports, list) and all(isinstance(m, str) and _is_module_name(m) for m in imports)):
        raise ConfigError(f"{source}: imports = {imports!r} must be a list of module names (e.g. [my_pkg.models])")
    if imports_from is not None and not isinstance(imports_from, str):
        raise wrong_type_error(source, "imports_from", imports_from, str | None)
    return Config(
        task=task, model=copy.deepcopy(dict(model)), data=copy.deepcopy(dict(data)),
        train=_dataclass_section(TrainConfig, raw.get("train"), "train", source),
        eval=_dataclass_section(EvalConfig, raw.get("eval"), "eval", source),
        name=str(name), source=source, imports=list(imports), imports_from=imports_from,
    )


def _is_module_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _imports_beside_recipe(raw: Any, folder: Path, base: Path) -> Any:
    """``raw`` with an absolute ``imports_from``: the recipe's ``folder`` when ``imports`` is given without it, a
    relative one taken from ``base``."""
    if not isinstance(raw, Mapping) or not raw.get("imports"):
        return raw
    where = raw.get("imports_from")
    if where is None or (isinstance(where, str) and not Path(where).is_absolute()):
        raw = {**raw, "imports_from": os.path.abspath(folder if where is None else base / where)}
    return raw


def parse_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read a recipe (a path, or the name of a shipped recipe such as ``demo_shapes_unet_r18``) and validate it,
    all but the keys of ``model`` / ``data`` (which :func:`resdense.load_config` checks as well).

    Args:
        path: YAML file, or a name found by :func:`find_config`.
        overrides: ``["train.lr=0.01", "model.num_classes=5"]``; values are YAML (``null``, ``[1, 2]``, ``true``).

    Raises:
        ConfigError: missing file, bad YAML, unknown section / ``train`` / ``eval`` key (naming file and key), wrong
            type or value, ``imports`` that is not a list of module names.

    A relative ``data.<part>.split`` file in the recipe is read relative to the recipe's folder, as the recipe's
    own part (``split: splits/membrane/train.txt`` beside ``configs/unet_r18_membrane_cpu.yaml``, installed with it),
    and so is ``imports_from`` (default: that folder), while data folders stay relative to the working directory,
    and so does a ``--set`` value typed on the command line.
    """
    path = find_config(path)
    raw = splits_beside_recipe(written := read_yaml(path), Path(path).parent)
    raw = _imports_beside_recipe(raw, Path(path).parent, Path(path).parent)
    source = str(path)
    if overrides:
        raw = _imports_beside_recipe(apply_overrides(raw, overrides, source), Path(path).parent, Path.cwd())
        source = f"{source} (with --set {' '.join(o if o.isprintable() else repr(o) for o in overrides)})"
    config = parse_config(raw, source)
    if not (written or {}).get("name"):
        config.name = Path(path).stem
    return config


def save_config(config: Config, path: str | os.PathLike, header: str = "") -> None:
    """Write the resolved recipe (every default filled in) as YAML, after ``header`` (``#`` comment lines)."""
    write_text(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None), "recipe")
