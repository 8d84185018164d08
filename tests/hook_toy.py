"""A user's training hook, as a recipe's ``train.hooks`` names it: registered when this module is imported.

``iterations_seen`` records the iteration of every step with a running count, both kept in the checkpoint, so a
resumed run goes on counting where the stopped one was.
"""

from __future__ import annotations

from typing import Any

from resdense.engine import HookBase
from resdense.registry import register_hook


@register_hook("iterations_seen")
class IterationsSeen(HookBase):
    """Records the steps it saw (``every``: each ``every``-th) and counts them; its state is the ``iterations_seen``
    entry of the checkpoints."""

    def __init__(self, every: int = 1) -> None:
        self.every, self.seen, self.count = every, [], 0

    def after_step(self) -> None:
        if self.trainer.iteration % self.every == 0:
            self.seen.append(self.trainer.iteration)
            self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"iterations_seen": {"seen": list(self.seen), "count": self.count}}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("iterations_seen") or {"seen": [], "count": 0}
        self.seen, self.count = list(state["seen"]), int(state["count"])
