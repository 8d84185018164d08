"""Checkpoints that survive a kill at any instant and load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading never executes
code from the file. It is written by :mod:`resdense.files`, atomically: a reader sees either the old file or the
new one, never a torn one.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resdense.backbones.weights import load_untrusted, weight_average
from resdense.errors import CheckpointError, ConfigError, WeightsError, WriteError
from resdense.files import save_torch
from resdense.typecheck import NOT_SET, first_difference

__all__ = ["check_resumable", "atomic_save", "load_checkpoint", "evaluated_weights", "rng_state", "set_rng_state", "seed_everything",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` so that ``path`` is never left half-written (:func:`resdense.files.save_torch`).

    Raises:
        CheckpointError: the file could not be written (disk full, read-only file system, a path below a regular
            file): one line naming ``path`` and the OS error; ``path`` keeps its previous contents and no temporary
            file is left.
    """
    try:
        return save_torch(obj, path, "checkpoint")
    except WriteError as err:
        raise CheckpointError(str(err)) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by the trainer (``weights_only=True``: tensors and plain types only).

    Raises:
        WeightsError: missing, truncated or foreign file (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)")
    ckpt = load_untrusted(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path}: not a resdense training checkpoint (no 'model' entry); "
                           "for plain weights use the model's weights= argument")
    return ckpt


def evaluated_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict that the run evaluated: the weight average (``ckpt["ema"]``) when the run kept one
    (``train.ema_decay``), else the trained weights (``ckpt["model"]``). Both have the model's keys; ``model`` is
    what resuming continues from, this is what evaluation, ``best.pt`` selection and deployment use."""
    average = weight_average(ckpt)
    return average if average is not None else ckpt["model"]  # type: ignore[return-value]


# ---- random number generator states ------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random (model initialisation and anything else drawn before training)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global generator states, as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_resumable(ckpt: dict[str, Any], path: Path, config: dict[str, Any], global_batch: int,
                    batch_words: str) -> None:
    """Refuse to continue a run whose model or data section differs from this recipe's (the optimizer state, the
    schedule and the data order would continue with another model or other data), or whose global batch differs
    from this launch's (its iterations and epochs would mean other samples)."""
    again = "; use another train.output_dir, or --set train.resume=false to start afresh"
    w = ckpt.get("world")
    if w is not None and w["size"] * w["batch_size"] * w["accumulate"] != global_batch:
        raise ConfigError(
            f"{path}: resuming refused: the checkpoint was trained with a global batch of "
            f"{w['size'] * w['batch_size'] * w['accumulate']} ({w['size']} processes x train.batch_size "
            f"{w['batch_size']} x train.accumulate {w['accumulate']}), this launch has {global_batch} "
            f"({batch_words}){again}")
    stored = ckpt.get("config") or {}
    for section in ("model", "data"):
        if section not in stored or section not in config:
            continue
        found = first_difference(stored[section], config[section], section)
        if found is not None:
            key, *values = found
            old, new = (v if v == NOT_SET else repr(v) for v in values)
            raise ConfigError(f"{path}: resuming refused: the checkpoint was trained with {key} = {old}, "
                              f"this recipe has {new}{again}")
