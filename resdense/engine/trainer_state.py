"""The part of :class:`~resdense.engine.trainer.Trainer` that checkpoints hold: what a resumed run needs, written
atomically from rank 0 and read back on every rank.

A mixin rather than functions because it is the trainer's own state: it reads and sets the trainer's attributes
(``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``iteration``, ``best``, ``timings``,
``stale_evals``, ``pending``, ``world``, ``cfg``, ``config``, ``run_dir``, ``device``, ``precision``,
``memory_format``), which ``Trainer.__init__`` creates.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from resdense.errors import WeightsError
from resdense.hardware import machine_summary

from . import distributed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    check_resumable,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .ema import ema_state, load_ema_state

__all__ = ["TrainerState"]

log = logging.getLogger("resdense.engine.trainer")  # the trainer's messages, under the trainer's logger name


class TrainerState:
    """``state_dict`` / ``load_state``, ``save`` and ``maybe_resume`` of the :class:`Trainer`."""

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (model, optimizer, schedule, generators, counters); under torch.distributed
        a collective (it gathers every rank's generator states), so every rank calls it."""
        w = self.world
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.iteration // self.iters_per_epoch,
            "rng": rng_state(),
            **({"rng_ranks": distributed.all_gather_object(rng_state())} if w.size > 1 else {}),
            "world": {"size": w.size, "batch_size": self.cfg.batch_size, "accumulate": self.accumulate},
            "best": dict(self.best),
            "metrics": {k: v for k, v in self.task.summary(self.last_metrics).items()},
            "timings": dict(self.timings),
            "stale_evals": self.stale_evals,
            "config": self.config,
            "hardware": self.hardware(),
            **({"ema": ema_state(self.ema)} if self.ema is not None else {}),
            **({"pending": self.pending} if self.pending is not None else {}),
        }

    def hardware(self) -> dict[str, Any]:
        """Where and how the run trains: device, precision, memory format, processes and the machine's line
        (:func:`resdense.hardware.machine_summary`); a package's model card quotes it."""
        return {"device": str(self.device), "precision": self.precision.as_dict(),
                "memory_format": self.memory_format.as_dict(), "processes": self.world.size,
                "machine": machine_summary()}

    def save(self, name: str = "last.pt") -> Path:
        """Write ``run_dir/name`` atomically from rank 0 (every rank calls it); returns once the file is complete,
        so no rank reads it half-written. A failed write stops every rank with the same one-line error."""
        state = self.state_dict()
        return distributed.on_main(lambda: atomic_save(state, self.run_dir / name))

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best") or self.best)
        self.timings = dict(ckpt.get("timings") or self.timings)
        self.schedule_clock = self.timings["train_s"]
        self.stale_evals = int(ckpt.get("stale_evals", 0))
        self.last_metrics = dict(ckpt.get("metrics") or {})  # what metrics.json reports if no evaluation follows
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                load_ema_state(self.ema, ckpt["ema"])
            else:
                log.warning("the checkpoint holds no weight average; train.ema_decay starts one at iteration %d",
                            int(ckpt["iteration"]))
        self.pending = ckpt.get("pending")
        stored = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(stored) == self.world.size:
            set_rng_state(stored[self.world.rank])
        else:  # the data order continues exactly (same global batch); the model's random draws cannot
            seed_everything(self.cfg.seed + 1_000_003 * self.world.rank + self.iteration)
            log.warning("resumed on %d processes from a run on %d: the data order continues exactly, the random "
                        "draws of the model (dropout, detector sampling) do not", self.world.size, len(stored))

    def maybe_resume(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` or, when ``train.resume``, from ``run_dir/last.pt`` if present."""
        path = Path(path) if path else self.run_dir / "last.pt"
        if not path.exists() or (path == self.run_dir / "last.pt" and not self.cfg.resume):
            return False
        try:
            ckpt = load_checkpoint(path, map_location=self.device)
        except WeightsError as err:
            if path != self.run_dir / "last.pt":
                raise
            best = self.run_dir / "best.pt"
            other = f", or resume from {best} with --resume {best}" if best.exists() else ""
            raise WeightsError(f"{err}; cannot resume: --set train.resume=false starts afresh{other}") from None
        check_resumable(ckpt, path, self.config, self.global_batch, self._batch_words())
        self.load_state(ckpt)
        log.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total_iters)
        return True
