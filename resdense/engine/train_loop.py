"""The training loop: it runs steps, and hooks do the rest.

:class:`TrainLoop` calls each hook's ``before_train``, then ``before_step``, the step and ``after_step`` until
``total_iters`` or a stop request, then ``after_train`` and, whatever happened, ``close``. A checkpoint is the
loop's own entries (:meth:`TrainLoop.own_state`) and every hook's (:meth:`HookBase.state_dict`), so a resumed run
continues every hook where it was. :class:`~resdense.engine.trainer.Trainer` is the loop of resdense's tasks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resdense.errors import ConfigError, TrainingInterrupted

from . import distributed
from .checkpoint import atomic_save

__all__ = ["HookBase", "TrainLoop"]


class HookBase:
    """A training hook: subclass it and override what you need; name it in a recipe's ``train.hooks`` once
    registered (``resdense.register_hook("name", cls)``), or pass it in ``Trainer(hooks=[...])``.

    ``self.trainer`` is the :class:`~resdense.engine.trainer.Trainer` (set when the hook is registered with it):
    ``iteration`` (the steps done), ``total_iters``, ``losses`` (the last step's), ``model``, ``optimizer``,
    ``run_dir``, ``world``, ``save(name)`` and ``request_stop(reason)``: end training after this step (the run
    then evaluates, writes ``last.pt`` and reports ``stopped: {reason, iteration}`` in ``metrics.json``).
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Before the first step (of a resumed run: after the checkpoint is loaded)."""

    def before_step(self) -> None:
        """Before each step (``trainer.iteration`` steps are done)."""

    def after_step(self) -> None:
        """After each step (``trainer.iteration`` counts it)."""

    def after_train(self) -> None:
        """After the last step of a run that ends normally (at ``total_iters`` or on a stop request)."""

    def close(self, status: str) -> None:
        """Last, whatever happened: ``status`` is ``FINISHED``, ``KILLED`` (a stop signal) or ``FAILED``."""

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries this hook owns (tensors and plain values), merged into every checkpoint: use keys
        of your own, e.g. your hook's name."""
        return {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore from a whole checkpoint on resume (one written without this hook lacks its entries)."""


class TrainLoop:
    """Steps and hooks. A subclass sets ``total_iters``, ``run_dir`` and ``stop_request`` (a
    :class:`~resdense.engine.distributed.StopRequest`) and defines ``batches()`` (an iterator of the steps' inputs),
    ``run_step(batch)`` (which counts the step in ``iteration``), ``own_state()`` (the loop's own checkpoint
    entries: weights, optimizer, ``iteration``, ...), ``load_own_state(checkpoint)`` and ``finish()`` (the result)."""

    iteration = 0
    total_iters: int
    run_dir: Path
    stopped: dict[str, Any] | None = None  # why training stopped before total_iters: {"reason", "iteration", ...}

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append ``hooks``; they run in the order registered."""
        self.hooks: list[HookBase] = getattr(self, "hooks", [])
        for hook in hooks:
            hook.trainer = self
        self.hooks.extend(hooks)

    def request_stop(self, reason: str, **details: Any) -> None:
        """End training after the current step (before the first one, from ``before_train``); the first request
        wins, and one at ``total_iters`` changes nothing (the run is complete)."""
        if self.stopped is None and self.iteration < self.total_iters:
            self.stopped = {"reason": reason, "iteration": self.iteration, **details}

    def train(self) -> dict[str, Any]:
        """Run the hooks and the steps; returns :meth:`finish`'s result."""
        status = "FAILED"  # what the hooks are told unless the run completes or is stopped by a signal
        try:
            with self.stop_request:  # SIGTERM, Ctrl-C: every rank finishes its step (see hooks.StopOnSignal)
                self._call("before_train")
                with contextlib.closing(self.batches()) as batches:  # its loader workers end with the loop
                    while self.iteration < self.total_iters and self.stopped is None:
                        self._call("before_step")
                        self.run_step(next(batches))
                        self._call("after_step")
                self._call("after_train")
            result = self.finish()
            status = "FINISHED"
        except (TrainingInterrupted, KeyboardInterrupt):
            status = "KILLED"  # last.pt holds the run: the same command resumes it
            raise
        finally:
            for hook in self.hooks:
                hook.close(status)
        return result

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's entries and every hook's; a collective under torch.distributed (every rank calls it)."""
        state = self.own_state()
        for hook in self.hooks:
            for key, value in hook.state_dict().items():
                if key in state:
                    raise ConfigError(f"{type(hook).__name__}.state_dict(): the checkpoint entry {key!r} is taken")
                state[key] = value
        return state

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.load_own_state(checkpoint)
        for hook in self.hooks:
            hook.load_state_dict(checkpoint)

    def save(self, name: str = "last.pt") -> Path:
        """Write ``run_dir/name`` atomically from rank 0 (every rank calls it); returns once the file is complete,
        so no rank reads it half-written. A failed write stops every rank with the same one-line error."""
        state = self.state_dict()
        return distributed.on_main(lambda: atomic_save(state, self.run_dir / name))
