"""Whole-model export: a U-Net / smp decoder / classifier or a torchvision detector to ONNX, TorchScript or
``torch.export`` (pt2), checked against the eager model right after.

Routes (torch 2.14, torchvision 0.29):

- ``onnx``: the TorchScript-based exporter (``dynamo=False``), as torchvision's own ONNX tests use it.
  Dense models (U-Net, smp decoders, classifiers) take ``image [N, C, H, W]`` with dynamic batch, height and width.
  Detectors take **one** image ``[3, H, W]`` (dynamic H and W) and return ``boxes [K, 4]``, ``labels [K]``,
  ``scores [K]`` (and ``masks [K, 1, H, W]`` for Mask R-CNN) in the eager order, with a dynamic ``K`` that may be 0
  (verified on a blank image). A batch is refused: torchvision's detectors take a Python list of images, which the
  trace turns into one graph input per image, so the graph would take exactly that many images (no batch axis).
- ``torchscript``: dense models are traced; detectors are scripted (torchvision's route) around a traced backbone,
  take a list of any number of ``[3, H, W]`` images and, as every scripted torchvision detector, return
  ``(losses, detections)``.
- ``pt2``: ``torch.export`` of a dense model with a dynamic batch and sides that are multiples of the model's
  divisor (32 for a full U-Net). Detectors are refused (their data-dependent post-processing does not export with
  dynamic sizes).

The U-Net pads its input to its divisor and crops the logits back (see :class:`~resdense.heads.UNet`); ONNX and
TorchScript exports keep that (the graph is traced at a size that needs padding), so they take any size. smp's own
models refuse sides that are not multiples of their divisor, in eager and in the exported graph alike.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from resdense import _torch_private as tp
from resdense.backbones import trace_to_onnx
from resdense.config import Config
from resdense.data import read_image, to_image_tensor
from resdense.engine.architectures import architecture
from resdense.engine.loading import load_model
from resdense.engine.tasks.segmentation import model_divisor
from resdense.errors import ConfigError, ResdenseError
from resdense.files import make_dir, write_with
from resdense.optional import require

__all__ = ["FORMATS", "TOLERANCES", "ExportError", "ExportResult", "Check", "export_model", "is_detector",
           "check_export_format"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "pt2")
# Verification tolerances, absolute unless noted. Observed on random-init ResNet-18 models in float32:
# dense logits ~3e-6 relative, boxes ~3e-5 px, scores ~4e-7, mask probabilities ~1e-5.
TOLERANCES = {
    "dense": 1e-4,  # times max(1, max |eager output|): logits of any scale
    "boxes": 1e-2,  # pixels, after matching detections one to one
    "scores": 1e-3,
    "masks": 1e-3,  # mask probabilities in [0, 1]
    "labels": 0.0,  # matched detections carry the same class
}
_DETECTORS = (GeneralizedRCNN, RetinaNet, FCOS)


class ExportError(ResdenseError):
    """The exported model does not compute what the eager one does (or could not be run)."""


@dataclass(frozen=True)
class Check:
    """One output compared at one input size: ``max_abs_diff`` against ``tolerance``."""

    size: tuple[int, ...]
    output: str
    max_abs_diff: float
    tolerance: float
    image: str = "random"  # the input: "random", "blank" (a constant grey image) or a file's name
    detections: int | None = None  # detectors: how many the eager model gave (and the export had to match)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        shape = "x".join(map(str, self.size))
        what = shape if self.image == "random" else f"{shape} {self.image}"
        if self.detections is not None:
            what += f" ({self.detections} detections)"
        return f"{what} {self.output}: max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how it compared with the eager model (empty ``checks`` without verify)."""

    path: Path
    format: str
    detector: bool
    input_size: tuple[int, int]
    checks: list[Check] = field(default_factory=list)


def is_detector(model: nn.Module) -> bool:
    """True for torchvision's Faster/Mask R-CNN, RetinaNet and FCOS (what ``build_detector`` returns)."""
    return isinstance(model, _DETECTORS)


def export_model(model_or_checkpoint: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                 format: str = "onnx", input_size: Sequence[int] | None = None, verify: bool = True,
                 opset: int = 17, config=None, batch: int = 1,
                 verify_images: Sequence[str | os.PathLike | Tensor] = ()) -> ExportResult:
    """Export a whole model to ``path`` and, with ``verify``, compare it with the eager model at two input sizes.

    Args:
        model_or_checkpoint: a model, or a checkpoint written by ``resdense train`` (rebuilt with
            :func:`~resdense.engine.load_model` from its stored recipe, or from ``config`` when given).
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"`` (see the module docstring for what each takes).
        input_size: ``(H, W)`` of the example input the graph is made from (default 256 x 320). Verification runs
            there (batch 1) and at ``(W + d, H)`` (batch ``max(2, batch)`` for dense models; d is the model's size
            divisor), so the dynamic axes are exercised; a detector also on a blank image at ``(H, W)``, where a
            trained detector finds nothing (zero detections: empty outputs of the right shapes).
        verify: run the export (onnxruntime for ONNX) and the eager model on the same inputs and compare every
            output within :data:`TOLERANCES`; detections are matched one to one first.
        opset: the ONNX opset.
        config: with a checkpoint, the recipe to rebuild the model from instead of the stored one.
        batch: how many images the exported model takes at once. Dense models and TorchScript detectors take any
            number (a TorchScript detector is also verified on a list of ``batch`` images); an ONNX detector takes
            one (see the module docstring), so ``batch > 1`` is refused.
        verify_images: detectors: image files (or ``[3, H, W]`` tensors in [0, 1]) to verify on as well, each at
            its own size: a trained detector finds little on random noise, and an image with objects checks the
            boxes, scores and masks of real detections.

    Returns:
        An :class:`ExportResult` with one :class:`Check` per size and output. The export runs on the CPU in float32.

    Raises:
        ConfigError: an unknown format, a bad ``input_size`` or ``batch``, a detector asked for ``pt2`` or for an
            ONNX batch, ``verify_images`` for a dense model.
        ExportError: an output outside its tolerance (one line: size, output, difference, tolerance).
    """
    if format not in FORMATS:
        raise ConfigError(f"export: format={format!r} is not one of {', '.join(FORMATS)}")
    size = _check_size(input_size)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"export: batch={batch!r} must be a positive int")
    model = _eager_model(model_or_checkpoint, config, format)
    detector = is_detector(model)
    _check_detector_arguments(detector, format, batch, verify_images)
    images = [_verify_image(im) for im in verify_images]
    path = Path(path)
    make_dir(path.parent)
    writer = _DETECTOR_WRITERS[format] if detector else _DENSE_WRITERS[format]
    run = writer(model, path, size, opset)
    result = ExportResult(path, format, detector, size)
    if verify:
        _verify(result, model, run, batch, images)
    return result


def _eager_model(model_or_checkpoint: nn.Module | str | os.PathLike, config, format: str) -> nn.Module:
    """The model to export, on the CPU in float32 and in eval mode: a copy of a model, or a checkpoint's rebuilt."""
    if isinstance(model_or_checkpoint, nn.Module):
        return copy.deepcopy(model_or_checkpoint).cpu().float().eval()
    model, run = load_model(model_or_checkpoint, config, device="cpu")
    check_export_format(run.config, format)
    return model.float()


def _check_detector_arguments(detector: bool, format: str, batch: int, verify_images: Sequence) -> None:
    """Refuse what a detector cannot be exported with (``pt2``, an ONNX batch) and ``verify_images`` for a dense
    model."""
    if detector and format == "pt2":
        raise ConfigError("export: format='pt2' is not available for detectors (torchvision's post-processing does "
                          "not torch.export with dynamic sizes); use onnx or torchscript")
    if detector and format == "onnx" and batch > 1:
        raise ConfigError(f"export: batch={batch}: a detector's ONNX graph takes one image (torchvision's detectors "
                          "take a Python list, which the trace turns into one input per image: a fixed count, no "
                          "batch axis); run it once per image, or use format='torchscript' (a list of any length)")
    if verify_images and not detector:
        raise ConfigError("export: verify_images are for detectors (images in [0, 1]); a dense model's input is "
                          "normalised by the recipe, so it is verified on random tensors")


def _verify(result: ExportResult, model: nn.Module, run, batch: int, images: list) -> None:
    """Compare the export (``run``) with the eager model, filling ``result.checks``; raise on the first check
    outside its tolerance."""
    path, format, size = result.path, result.format, result.input_size
    if result.detector:
        result.checks = _verify_detector(model, run, size, batch if format == "torchscript" else 1, images)
        if not any(c.detections for c in result.checks):
            log.warning("export %s: the model detected nothing on any verification image, so no detection was "
                        "compared; pass verify_images (--verify-image) with objects in them", path.name)
    else:
        result.checks = _verify_dense(model, run, size, batch)
    for check in result.checks:
        log.info("export %s: %s", path.name, check)
    bad = [c for c in result.checks if not c.ok]
    if bad:
        raise ExportError(f"{path}: the {format} export differs from the eager model: {bad[0]}")


def check_export_format(config: Config, format: str) -> None:
    """Refuse a format that the recipe's architecture does not list in its registration's ``exports``."""
    entry = architecture(config.model["arch"], config.source)
    if format not in entry.exports:
        raise ConfigError(f"export: format={format!r} is not available for model.arch = {entry.name!r} of "
                          f"{config.source}; it exports to {', '.join(entry.exports) or 'no format'}")


def _check_size(input_size: Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        return 256, 320
    values = tuple(input_size)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in values):
        raise ConfigError(f"export: input_size={list(values)!r} must be two ints >= 32 (height, width)")
    return values


def _second_size(model: nn.Module, size: tuple[int, int], detector: bool) -> tuple[int, int]:
    d = 32 if detector else model_divisor(model)
    return size[1] + d, size[0]


# ---- dense models: [N, C, H, W] -> one tensor -----------------------------------------------------------------------
def _dense_example(model: nn.Module, size: tuple[int, int], batch: int = 1, seed: int = 0) -> Tensor:
    channels = getattr(model, "in_channels", 3)
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def _trace_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """A U-Net pads to its divisor only when it has to, so a trace at a multiple would drop the pad-and-crop: trace
    one pixel taller then. Models without their own padding (smp's) are traced at the size given."""
    d = getattr(model, "size_divisibility", None)
    if isinstance(d, int) and d > 1 and size[0] % d == 0 and size[1] % d == 0:
        return size[0] + 1, size[1]
    return size


def _dense_onnx(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> Callable[[Tensor], Tensor]:
    x = _dense_example(model, _trace_size(model, size))
    with torch.no_grad():
        spatial = model(x).ndim == 4
    out_axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
    with _quiet():
        trace_to_onnx(model, (x,), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": out_axes}, opset=opset)
    session = functools.cache(lambda: _ort_session(path))  # opened when verified, never without verify
    return lambda t: torch.from_numpy(session().run(None, {"image": t.numpy()})[0])


def _dense_torchscript(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> Callable:
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(model, _dense_example(model, _trace_size(model, size)), check_trace=False)
    write_with(path, partial(torch.jit.save, traced), "TorchScript model")
    loaded = torch.jit.load(str(path))
    return lambda t: loaded(t)


def _dense_pt2(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> Callable:
    d = model_divisor(model)
    if size[0] % d or size[1] % d:
        raise ConfigError(f"export: format='pt2' takes sides that are multiples of {d}; input_size={list(size)}")
    dims = {0: torch.export.Dim("batch", min=1, max=4096),
            2: d * torch.export.Dim("height_blocks", min=1, max=4096 // d),
            3: d * torch.export.Dim("width_blocks", min=1, max=4096 // d)}
    with torch.no_grad(), _quiet():
        program = torch.export.export(model, (_dense_example(model, size, batch=2),), dynamic_shapes=(dims,))
    write_with(path, partial(torch.export.save, program), "pt2 program")
    loaded = torch.export.load(str(path)).module()
    return lambda t: loaded(t)


def _verify_dense(model: nn.Module, run: Callable[[Tensor], Tensor], size: tuple[int, int],
                  batch: int = 1) -> list[Check]:
    checks = []
    for seed, (n, hw) in enumerate(((1, size), (max(2, batch), _second_size(model, size, detector=False))), start=1):
        x = _dense_example(model, hw, n, seed=seed)
        with torch.no_grad():
            want = model(x)
            got = _run_exported(run, x, (n, *hw))
        scale = max(1.0, float(want.abs().max()))
        diff = float((got.float() - want).abs().max()) if got.shape == want.shape else float("inf")
        checks.append(Check((n, *hw), "logits", diff, TOLERANCES["dense"] * scale))
    return checks


_DENSE_WRITERS = {"onnx": _dense_onnx, "torchscript": _dense_torchscript, "pt2": _dense_pt2}


# ---- detectors: one [3, H, W] image in [0, 1] -> boxes, labels, scores (, masks) -------------------------------------
def _detector_example(size: tuple[int, int], seed: int = 0) -> Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def _detector_onnx(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> Callable:
    x = _detector_example(size)
    with torch.no_grad():
        names = list(model([x])[0])  # the eager dict's order: boxes, labels, scores (R-CNN) / boxes, scores, labels
    axes = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
    if "masks" in names:
        axes["masks"] = {0: "detections", 2: "height", 3: "width"}
    with _quiet():  # torchvision's tracer and shape-inference warnings
        trace_to_onnx(model, ([x],), path, input_names=["image"], output_names=names, dynamic_axes=axes,
                      opset=opset)
    session = functools.cache(lambda: _ort_session(path))  # opened when verified, never without verify

    def run(images: list[Tensor]) -> list[dict[str, Tensor]]:
        outs = [session().run(None, {"image": image.numpy()}) for image in images]
        return [{n: torch.from_numpy(np.asarray(o)) for n, o in zip(names, out, strict=True)} for out in outs]

    return run


def _detector_torchscript(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> Callable:
    # torchvision's detectors script; resdense's backbone (typed dataclass metadata) does not, so it is traced and
    # the detector around it scripted. The target check and the float32 casts of the box deltas are Python hooks
    # TorchScript cannot compile: dropped here (the casts do nothing outside autocast, and the export runs float32).
    scripted = copy.deepcopy(model)
    tp.clear_forward_pre_hooks(scripted)
    tp.clear_forward_hooks(scripted)
    with torch.no_grad(), _quiet():
        scripted.backbone = torch.jit.trace(scripted.backbone, _detector_example(size)[None], strict=False,
                                            check_trace=False)
        scripted = torch.jit.script(scripted)
    write_with(path, partial(torch.jit.save, scripted), "TorchScript model")
    loaded = torch.jit.load(str(path))
    return lambda images: loaded(images)[1]


def _verify_detector(model: nn.Module, run: Callable[[list[Tensor]], list[dict]], size: tuple[int, int],
                     batch: int = 1, images: Sequence[tuple[str, Tensor]] = ()) -> list[Check]:
    """One image at a time: random at the export size and at a second size, a blank image (no detections for a
    trained detector) and ``images``; then, for ``batch > 1``, ``batch`` images of both sizes in one call."""
    second = _second_size(model, size, detector=True)
    cases = [("random", _detector_example(size, 0)), ("random", _detector_example(second, 1)),
             ("blank", torch.full((3, *size), 0.5)), *images]
    checks = []
    for label, image in cases:
        checks += _compare_detections(model, run, [image], [label])
    if batch > 1:
        many = [_detector_example(size if i % 2 == 0 else second, 10 + i) for i in range(batch)]
        checks += _compare_detections(model, run, many, [f"image {i + 1} of {batch}" for i in range(batch)])
    return checks


def _compare_detections(model: nn.Module, run: Callable[[list[Tensor]], list[dict]], images: list[Tensor],
                        labels: list[str]) -> list[Check]:
    with torch.no_grad():
        wants = model(images)
        gots = _run_exported(run, images, (len(images), *images[0].shape))
    checks = []
    for image, label, want, got in zip(images, labels, wants, gots, strict=True):
        for name, diff in match_detections(want, got).items():
            checks.append(Check(tuple(image.shape), name, diff, TOLERANCES[name], label, len(want["boxes"])))
    return checks


def _verify_image(image: str | os.PathLike | Tensor) -> tuple[str, Tensor]:
    """A verification image: a file (read as the Predictor reads it) or a ``[3, H, W]`` tensor in [0, 1]."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ConfigError(f"export: a verify image tensor of shape {list(image.shape)} and dtype {image.dtype}: "
                              "expected float [3, H, W] in [0, 1]")
        return "given image", image.detach().cpu().float()
    return Path(image).name, to_image_tensor(read_image(image))


def match_detections(want: dict[str, Tensor], got: dict[str, Tensor]) -> dict[str, float]:
    """Max abs differences of ``boxes``, ``scores``, ``masks`` (and label mismatches) between two detection lists,
    after pairing them one to one by box distance, score and label (Hungarian matching). Near-equal scores may come
    out in another order, so index ``i`` of one list need not be index ``i`` of the other. Different counts are an
    infinite ``boxes`` difference; a missing output, or one of another shape (``masks [0, 1, H, W]`` for zero
    detections included), an infinite difference of that output."""
    n = len(want["boxes"])
    if len(got["boxes"]) != n:
        return {"boxes": float("inf")}
    wrong = [k for k in want if k in TOLERANCES and (k not in got or tuple(got[k].shape) != tuple(want[k].shape))]
    if wrong:
        return {k: float("inf") for k in wrong}
    if n == 0:
        return {k: 0.0 for k in want if k in TOLERANCES}
    wb, gb = want["boxes"].double(), got["boxes"].double()
    cost = (wb[:, None] - gb[None]).abs().amax(-1) + (want["scores"].double()[:, None] - got["scores"].double()[None]).abs()
    cost = cost + 1e6 * (want["labels"][:, None] != got["labels"][None])
    rows, cols = linear_sum_assignment(cost.numpy())
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    out = {"boxes": float((wb[rows] - gb[cols]).abs().max()),
           "scores": float((want["scores"][rows] - got["scores"][cols]).abs().max()),
           "labels": float((want["labels"][rows] != got["labels"][cols]).sum())}
    if "masks" in want:
        out["masks"] = float((want["masks"][rows] - got["masks"][cols].float()).abs().max())
    return out


_DETECTOR_WRITERS = {"onnx": _detector_onnx, "torchscript": _detector_torchscript}


# ---- shared ---------------------------------------------------------------------------------------------------------
def _ort_session(path: Path):
    ort = require("onnxruntime", "export", "verifying an ONNX export (verify=False skips it)")

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about initializers in the graph inputs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_exported(run: Callable, x: Tensor, shape: tuple[int, ...]):
    try:
        return run(x)
    except ResdenseError:  # already one line (e.g. onnxruntime not installed)
        raise
    except Exception as err:  # onnxruntime / TorchScript errors: one line, with the input that failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the exported model failed on an input of shape {list(shape)}: {first[:300]}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the tracer / deprecation warnings of torch.jit and torch.export: they describe the trace, and the
    verification is what checks it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
