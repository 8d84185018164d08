"""A user's extension module, as a recipe's ``imports:`` names it: a tiny segmentation architecture, a dataset of
generated images and a training hook, each registered by one explicit call. tests/test_registry.py trains them from
a recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor, nn

import resdense
from resdense.data import MaskDataset
from resdense.engine import HookBase


class TinySegNet(nn.Module):
    """Three convolutions, full resolution: ``x [N, 3, H, W] -> logits [N, num_classes, H, W]``."""

    def __init__(self, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def tiny_segnet(num_classes: int = 2, width: int = 8) -> nn.Module:
    """The builder: the recipe's ``model`` keys (``arch`` aside) are its arguments."""
    return TinySegNet(num_classes, width)


class Squares(MaskDataset):
    """``n`` images of ``size`` px, one bright square on dark noise each, and their masks (0 background, 1 square),
    written under ``root`` when absent, then read as a :class:`MaskDataset`."""

    def __init__(self, root: str, n: int = 8, size: int = 32, seed: int = 0, transforms=None) -> None:
        root = Path(root)
        if not (root / "masks").is_dir():
            rng = np.random.default_rng(seed)
            (root / "images").mkdir(parents=True)
            (root / "masks").mkdir()
            for i in range(n):
                image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                mask = np.zeros((size, size), np.uint8)
                s = int(rng.integers(size // 4, size // 2))
                y, x = rng.integers(0, size - s, 2)
                image[y:y + s, x:x + s] = (220, 200, 40)
                mask[y:y + s, x:x + s] = 1
                Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
                Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
        super().__init__(root / "images", root / "masks", classes=["background", "square"], transforms=transforms)


resdense.register_architecture("toy_segnet", tiny_segnet, task="segmentation", metric="mDice", mode="max",
                               exports=("onnx", "package"))
resdense.register_dataset("toy_squares", Squares, task="segmentation")


class StepCounter(HookBase):
    """Counts the steps it saw; the count is the ``toy_steps`` entry of the checkpoints, so a resumed run goes on
    counting, and is written to ``steps.txt`` in the run directory when training ends."""

    def __init__(self) -> None:
        self.count = 0

    def after_step(self) -> None:
        self.count += 1

    def after_train(self) -> None:
        (Path(self.trainer.run_dir) / "steps.txt").write_text(str(self.count))

    def state_dict(self) -> dict:
        return {"toy_steps": self.count}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.count = int(checkpoint.get("toy_steps", 0))


resdense.register_hook("toy_steps", StepCounter)
