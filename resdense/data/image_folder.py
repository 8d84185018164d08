"""torchvision's ``ImageFolder`` with the ``split=`` every resdense dataset takes (``data.dataset: imagefolder``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision import datasets
from torchvision.datasets.folder import default_loader

from .split_names import SplitArg, name_keys, select_split

__all__ = ["ImageFolder"]


class ImageFolder(datasets.ImageFolder):
    """``root/<class>/<image>`` -> ``(image, class index)``, exactly as :class:`torchvision.datasets.ImageFolder`.

    Args:
        root, transform, target_transform, loader, is_valid_file, allow_empty: torchvision's.
        split: serve only the images this split names: a text file (one name per line, ``#`` comments) or a list
            of names. A name is the path below ``root`` (``"cat/001.jpg"`` or ``"cat/001"``), or the file name or
            stem alone when no other class folder has it. The classes stay every class folder (so class indices
            do not depend on the split) and the order stays torchvision's. ``None``: every image.
    """

    def __init__(self, root, transform: Callable | None = None, target_transform: Callable | None = None,
                 loader: Callable[[str], Any] = default_loader, is_valid_file: Callable[[str], bool] | None = None,
                 allow_empty: bool = False, *, split: SplitArg | None = None) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform, loader=loader,
                         is_valid_file=is_valid_file, allow_empty=allow_empty)
        if split is not None:
            base = Path(self.root)
            keys = [name_keys(Path(path).relative_to(base).as_posix()) for path, _ in self.samples]
            self.samples = [self.samples[i] for i in select_split(keys, split, str(self.root))]
            self.imgs = self.samples
            self.targets = [target for _, target in self.samples]

    @property
    def image_paths(self) -> list[Path]:
        """The image files, in dataset order (as the other resdense datasets have)."""
        return [Path(path) for path, _ in self.samples]
