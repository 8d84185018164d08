"""Write a trained checkpoint as a package (see :mod:`resdense.engine.package`): ``model.safetensors``,
``config.yaml``, ``resdense.json`` and a ``README.md`` model card.

>>> from resdense.export import export_package                              # doctest: +SKIP
>>> from resdense.inference import Predictor                                 # doctest: +SKIP
>>> export_package("runs/membrane/best.pt", "membrane_unet")                 # doctest: +SKIP
>>> Predictor.from_pretrained("membrane_unet")("slide.png")["mask"]          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from resdense.config import Config, save_config
from resdense.engine.checkpoint import evaluated_weights, load_checkpoint
from resdense.engine.loading import load_model
from resdense.engine.package import (
    CARD_FILE,
    CONFIG_FILE,
    INFO_FILE,
    PACKAGE_FORMAT,
    PACKAGE_KIND,
    WEIGHTS_FILE,
    is_package,
)
from resdense.errors import WeightsError
from resdense.files import make_dir, write_bytes, write_json, write_text
from resdense.inference import Predictor
from resdense.version import VERSION

from .model import check_export_format

__all__ = ["export_package"]

_CONFIG_HEADER = """\
# The resolved recipe of this model (every default filled in), as it was trained: a valid recipe for
# `resdense train` too. Its paths (data folders, split files, train.output_dir) are those of the training
# machine, left as they were; relative ones are read from the working directory. `resdense eval DIR
# --set data.val.<key>=PATH` points the evaluation at data elsewhere; `resdense predict DIR` reads no data.
"""


def export_package(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                   config: Config | str | os.PathLike | None = None) -> list[Path]:
    """Write the checkpoint ``checkpoint`` as a package into the folder ``out`` (created; the package's files in
    it are replaced).

    The model is rebuilt first (:func:`~resdense.engine.loading.load_model`), so a checkpoint whose weights do not
    fit its recipe is refused before anything is written. ``model.safetensors`` holds the evaluated weights
    (:func:`~resdense.engine.checkpoint.evaluated_weights`: the EMA of a run that kept one), as the checkpoint
    stores them (dtype kept, made contiguous); ``resdense.json`` is written last, with their sha256.

    Args:
        checkpoint: a ``best.pt`` / ``last.pt`` written by ``resdense train``.
        out: the package folder.
        config: the recipe to rebuild the model from instead of the stored one (then also the one packaged).

    Returns:
        The files written: ``model.safetensors``, ``config.yaml``, ``README.md``, ``resdense.json``.

    Raises:
        WeightsError: an unreadable checkpoint, weights that do not fit the recipe, or a package given as
            ``checkpoint``.
        WriteError: a file that could not be written (one line naming it).
    """
    path = Path(checkpoint)
    if is_package(path):
        raise WeightsError(f"{path}: already a package folder; export the checkpoint it was made from")
    ckpt = load_checkpoint(path)
    model, run = load_model(path, config, device="cpu")
    check_export_format(run.config, "package")
    predictor = Predictor(model, run.task, class_names=run.class_names, config=run.config)
    data = save(_plain_tensors(evaluated_weights(ckpt)), metadata={"format": "pt"})
    info = _info(ckpt, run.config, run.class_names, model, predictor.preprocessing, data, path.parent / "metrics.json")
    out = make_dir(out, "package folder")
    files = [write_bytes(out / WEIGHTS_FILE, data, "package weights"),
             _write_config(run.config, out / CONFIG_FILE),
             write_text(out / CARD_FILE, model_card(info, run.config, out), "model card")]
    files.append(write_json(out / INFO_FILE, info, "package description"))  # last: it vouches for the weights
    return files


def _plain_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors, none sharing memory with another (safetensors stores neither views nor
    channels_last strides; loading copies values into the model, so the layout does not matter)."""
    out, seen = {}, set()
    for key, value in state.items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def _write_config(config: Config, path: Path) -> Path:
    save_config(config, path, _CONFIG_HEADER)
    return path


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN: a metric that could not be computed is null
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}


def _hardware(ckpt: dict[str, Any], run_metrics: Path) -> dict[str, Any]:
    """What the checkpoint records of where it trained; from the run's ``metrics.json`` beside it for checkpoints
    written before they recorded it."""
    if isinstance(ckpt.get("hardware"), dict):
        return dict(ckpt["hardware"])
    try:
        metrics = json.loads(run_metrics.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("device", "precision", "memory_format", "processes", "machine")
    return {k: metrics[k] for k in keys if k in metrics} if isinstance(metrics, dict) else {}


def _info(ckpt: dict[str, Any], config: Config, class_names: list[str], model: torch.nn.Module,
          preprocessing: dict[str, Any], data: bytes, run_metrics: Path) -> dict[str, Any]:
    state = evaluated_weights(ckpt)
    best = ckpt.get("best") or {}
    return {
        "format": PACKAGE_KIND,
        "format_version": PACKAGE_FORMAT,
        "resdense_version": VERSION,
        "torch_version": torch.__version__,
        "name": config.name,
        "task": config.task,
        "architecture": {"arch": config.model["arch"],
                         "backbone": config.model.get("backbone", config.model.get("encoder_name")),
                         "parameters": sum(p.numel() for p in model.parameters())},
        "class_names": list(class_names),
        "preprocessing": preprocessing,
        "metrics": _finite(dict(ckpt.get("metrics") or {})),
        "training": {"iteration": ckpt.get("iteration"), "metric": config.eval.metric or best.get("metric"),
                     "best": {k: v for k, v in best.items() if k in ("value", "iteration")},
                     "evaluated_weights": "ema" if ckpt.get("ema") is not None else "model",
                     "hardware": _hardware(ckpt, run_metrics)},
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                    "tensors": len(state), "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})},
    }


# ---- the model card -------------------------------------------------------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _data_lines(config: Config) -> list[str]:
    data = config.data
    lines = [f"- dataset `{data.get('dataset')}`"]
    for part in ("train", "val", "shapes"):
        section = data.get(part)
        if isinstance(section, dict) and section:
            args = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in section.items())
            lines.append(f"- `data.{part}`: {args}")
    return lines


def _data_paths(config: Config) -> list[str]:
    """The recipe's keys that name the validation data's files (its string values: folders, files, splits)."""
    parts = ("shapes",) if config.data.get("dataset") == "shapes" else ("val",)
    return [f"data.{p}.{k}" for p in parts for k, v in (config.data.get(p) or {}).items() if isinstance(v, str)]


def model_card(info: dict[str, Any], config: Config, folder: Path) -> str:
    """The ``README.md`` of a package: what the model is, the data its recipe names, the run's metrics and
    hardware, the input it expects and how to use it."""
    train = info["training"]
    metrics = info["metrics"]
    pre = info["preprocessing"]
    lines = [
        f"# {info['name']}", "",
        f"A {info['task']} model trained with resdense: `{WEIGHTS_FILE}` (the weights, safetensors: no pickle), "
        f"`{CONFIG_FILE}` (the recipe) and `{INFO_FILE}` (this description, machine-readable; format "
        f"{info['format']} version {info['format_version']}).", "",
        "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in _card_rows(info)], "",
        "## Data", "",
        "What the recipe names (paths of the training machine):", "", *_data_lines(config), "",
        "## Metrics", "",
        "The run's evaluation of these weights on its validation split (`data.val`), at iteration "
        f"{_value(train['iteration'])}:", "",
        *(["| metric | value |", "|---|---|", *[f"| {k} | {_value(v)} |" for k, v in metrics.items()]] if metrics
          else ["(no evaluation recorded)"]), "",
        "## Input", "",
        "RGB images of any size; the predictor applies: "
        + "; ".join(f"{k} {json.dumps(v)}" for k, v in pre.items()) + ".", "",
        *_card_use(info["task"], config, folder),
    ]
    return "\n".join(lines)


def _card_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The model card's summary table: ``(field, value)`` rows."""
    arch = info["architecture"]
    train = info["training"]
    hw = train["hardware"]
    names = info["class_names"]
    backbone = f", backbone {arch['backbone']}" if arch["backbone"] else ""
    weights = ("the exponential moving average of the weights (`train.ema_decay`)" if train["evaluated_weights"] == "ema"
               else "the trained weights")
    precision = hw.get("precision", {})
    memory = hw.get("memory_format", {})
    return [
        ("task", info["task"]),
        ("architecture", f"{arch['arch']}{backbone} ({arch['parameters']:,} parameters)"),
        ("classes", f"{len(names)}: {', '.join(names)}" if names else "-"),
        ("weights", f"{weights}, `{WEIGHTS_FILE}` ({', '.join(info['weights']['dtypes'])}, sha256 "
                    f"`{info['weights']['sha256']}`)"),
        ("trained", f"{train['iteration']} iterations; `{train['metric'] or '-'}` best "
                    f"{_value(train['best'].get('value'))} at iteration {_value(train['best'].get('iteration'))}"),
        ("precision", f"{precision['amp']} ({precision['reason']})" if precision else "not recorded"),
        ("memory format", ("channels_last" if memory["channels_last"] else "contiguous") + f" ({memory['reason']})"
         if memory else "not recorded"),
        ("device", f"{hw['device']}, {hw.get('processes', 1)} process(es)" if "device" in hw else "not recorded"),
        ("machine", hw.get("machine", "not recorded")),
        ("software", f"resdense {info['resdense_version']}, torch {info['torch_version']}"),
    ]


def _card_use(task: str, config: Config, folder: Path) -> list[str]:
    """The model card's "Use" section: loading the package in Python and with the command line."""
    return [
        "## Use", "",
        "```python",
        "from resdense.inference import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{folder.name}")',
        'prediction = predictor("image.png")  # ' + {"segmentation": '["mask"]: int64 [H, W]',
                                                    "detection": '["boxes"], ["labels"], ["scores"]',
                                                    "classification": '["top"]: (class, probability)'}[task],
        "```", "",
        "```bash",
        f"resdense predict {folder.name} image.png --out preds/   # PNG overlays",
        f"resdense eval {folder.name}                             # the validation split of {CONFIG_FILE}",
        f"resdense eval {folder.name} " + " ".join(f"--set {k}=..." for k in _data_paths(config))
        + "   # the data elsewhere",
        "```", "",
        f"`{CONFIG_FILE}` holds the training machine's paths as they were (data folders, split files, "
        "`train.output_dir`): `resdense predict` reads none of them; for `resdense eval`, point them elsewhere "
        "with `--set`.", "",
    ]
