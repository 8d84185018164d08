"""Checkpoints that survive a kill at any instant and load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading never executes
code from the file. It is written by :mod:`resdense.files`, atomically: a reader sees either the old file or the
new one, never a torn one.
"""

from __future__ import annotations

import logging
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

from . import distributed

__all__ = ["atomic_save", "load_checkpoint", "read_resume", "check_resumable", "evaluated_weights", "rng_state",
           "set_rng_state", "seed_everything", "seed_rank", "rng_entries", "restore_rng", "batch_words",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
log = logging.getLogger("resdense.engine.trainer")  # the training messages, under the trainer's logger name


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


def seed_rank(seed: int, rank: int, offset: int = 0) -> None:
    """:func:`seed_everything` for rank ``rank``'s own random draws (dropout, detector sampling) under torchrun."""
    seed_everything(seed + 1_000_003 * rank + offset)


def rng_entries(world: distributed.World) -> dict[str, Any]:
    """``rng``: :func:`rng_state`; on several processes also ``rng_ranks``, every rank's (a collective)."""
    return {"rng": rng_state(), **({"rng_ranks": distributed.all_gather_object(rng_state())} if world.size > 1 else {})}


def restore_rng(ckpt: dict[str, Any], world: distributed.World, seed: int, iteration: int) -> None:
    """Restore this rank's states from :func:`rng_entries`; from another number of processes, reseed (a warning)."""
    stored = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(stored) == world.size:
        set_rng_state(stored[world.rank])
    else:
        seed_rank(seed, world.rank, iteration)
        log.warning("resumed on %d processes from a run on %d: the data order continues exactly, the random "
                    "draws of the model (dropout, detector sampling) do not", world.size, len(stored))


def batch_words(size: int, batch_size: int, accumulate: int) -> str:
    """How a global batch is made, as messages name it."""
    return f"{size} processes x train.batch_size {batch_size} x train.accumulate {accumulate}"


def read_resume(path: str | os.PathLike | None, run_dir: Path, resume: bool,
                map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any] | None]:
    """``path`` (else ``run_dir/last.pt``) and its checkpoint: ``None`` when missing, or ``last.pt`` without
    ``resume``. Raises WeightsError when unreadable (for ``last.pt``: how to start afresh, or use ``best.pt``)."""
    last = run_dir / "last.pt"
    path = Path(path) if path else last
    if not path.exists() or (path == last and not resume):
        return path, None
    try:
        return path, load_checkpoint(path, map_location=map_location)
    except WeightsError as err:
        if path != last:
            raise
        best = run_dir / "best.pt"
        other = f", or resume from {best} with --resume {best}" if best.exists() else ""
        raise WeightsError(f"{err}; cannot resume: --set train.resume=false starts afresh{other}") from None


def check_resumable(ckpt: dict[str, Any], path: Path, config: dict[str, Any], global_batch: int,
                    words: str) -> None:
    """Refuse to continue a run whose model or data section differs from this recipe's (the optimizer state, the
    schedule and the data order would continue with another model or other data), or whose global batch differs
    from this launch's (its iterations and epochs would mean other samples)."""
    again = "; use another train.output_dir, or --set train.resume=false to start afresh"
    w = ckpt.get("world")
    if w is not None and w["size"] * w["batch_size"] * w["accumulate"] != global_batch:
        raise ConfigError(
            f"{path}: resuming refused: the checkpoint was trained with a global batch of "
            f"{w['size'] * w['batch_size'] * w['accumulate']} "
            f"({batch_words(w['size'], w['batch_size'], w['accumulate'])}), this launch has {global_batch} "
            f"({words}){again}")
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
