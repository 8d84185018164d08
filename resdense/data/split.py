"""Deterministic, stratified train / val (/ test) split files for a dataset on disk (``resdense data split``).

The split is stratified by the labels each sample holds: the mask values present in a mask (raw values, so a void
value counts as a label too), or the categories of an image's boxes. The method is iterative stratification
(Sechidis et al., "On the stratification of multi-label data", ECML 2011) with one change: a label goes first to
every subset that still lacks it, so a label held by two samples lands in train and val, by three in all three
subsets. In detail, after shuffling the samples with ``seed``:

1. subset sizes are fixed first: ``round(val * n)`` and ``round(test * n)`` samples (at least one each), the
   rest train;
2. the label with the fewest unassigned samples is taken (ties: by name) and each of its unassigned samples goes
   to the subset that (a) still lacks that label, then (b) wants the most more of it (its fraction of the label's
   samples minus what it has), then (c) has the most room left, among the subsets not yet full;
   with ``block`` (video frames), the units are runs of consecutive samples instead, placed whole;
3. step 2 repeats until every labelled sample is placed; samples without labels (detection images without boxes)
   fill the remaining room.

The same data and seed give the same files; each file lists its names in the dataset's own order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resdense.errors import ConfigError, DataError
from resdense.files import make_dir, write_text

from .check import DataLayout, mask_layout, pick_layout
from .coco_parse import parse_coco, parse_coco_file, raise_first
from .image_io import read_mask
from .instance_masks import read_instance_folder
from .masks import pair_by_stem
from .voc import voc_to_coco

__all__ = ["Split", "make_split", "stratified_assignment"]

SUBSETS = ("train", "val", "test")


@dataclass
class Split:
    """Outcome of :func:`make_split`.

    Attributes:
        layout: what was split (kind and path).
        subsets: ``{"train": names, "val": names[, "test": names]}``, each in dataset order.
        label_counts: ``{label: {subset: samples holding it}}``.
        options: how it was made (``val``, ``test``, ``seed``), written into each file's header.
    """

    layout: DataLayout
    subsets: dict[str, list[str]]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    options: str = ""

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write ``train.txt``, ``val.txt`` (and ``test.txt``) into ``out``; returns their paths."""
        out = Path(out)
        make_dir(out)
        total = sum(len(v) for v in self.subsets.values())
        written = []
        for name, names in self.subsets.items():
            path = out / f"{name}.txt"
            header = (f"# {name}: {len(names)} of {total} samples of {self.layout.path} ({self.layout.kind}), "
                      f"written by `resdense data split` {self.options}\n")
            write_text(path, header + "".join(f"{n}\n" for n in names), "split file")
            written.append(path)
        return written


def _fractions(val: float, test: float) -> None:
    for key, v, low_ok in (("val", val, False), ("test", test, True)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 <= v < 1) or (v == 0 and not low_ok):
            raise ConfigError(f"{key} = {v!r} must lie in {'[0' if low_ok else '(0'}, 1)")
    if val + test >= 1:
        raise ConfigError(f"val + test = {val + test:g} leaves no training samples; it must be below 1")


def _sizes(n: int, fractions: dict[str, float], source) -> dict[str, int]:
    sizes = {s: max(1, int(f * n + 0.5)) for s, f in fractions.items() if s != "train" and f > 0}
    sizes = {"train": n - sum(sizes.values()), **sizes}
    if sizes["train"] < 1:
        raise DataError(f"{source}: {n} sample(s) are too few for a train / {' / '.join(list(sizes)[1:])} split")
    return sizes


def stratified_assignment(labels: Sequence[frozenset[str]], sizes: dict[str, int], seed: int = 0,
                          weights: Sequence[int] | None = None) -> list[str]:
    """The subset of each unit (a sample, or a block of samples) by the method of the module docstring.

    Args:
        labels: the labels each unit holds.
        sizes: ``{subset: number of samples}``, summing to the number of samples, in priority order (train first).
        seed: shuffles the units (ties between equally good units follow this order).
        weights: samples per unit (default: one each). A subset takes units while it has room, preferring those
            that fit, so with blocks the sizes are met to within one block.
    """
    n = len(labels)
    weights = [1] * n if weights is None else list(weights)
    if sum(sizes.values()) != sum(weights):
        raise ConfigError(f"subset sizes {sizes} do not add up to the {sum(weights)} samples")
    names = list(sizes)
    order = np.random.default_rng(seed).permutation(n).tolist()
    room = dict(sizes)
    holders: dict[str, list[int]] = {}
    for i in order:
        for label in sorted(labels[i]):
            holders.setdefault(label, []).append(i)
    share = {s: sizes[s] / sum(weights) for s in names}
    want = {lab: {s: share[s] * sum(weights[i] for i in ids) for s in names} for lab, ids in holders.items()}
    has: dict[str, set[str]] = {lab: set() for lab in holders}
    unplaced = {lab: len(ids) for lab, ids in holders.items()}
    subset: list[str | None] = [None] * n

    def place(i: int, s: str) -> None:
        subset[i] = s
        room[s] -= weights[i]
        for lab in labels[i]:
            want[lab][s] -= weights[i]
            has[lab].add(s)
            unplaced[lab] -= 1

    def open_subsets() -> list[str]:
        return [s for s in names if room[s] > 0] or names

    while any(unplaced.values()):
        label = min((c, lab) for lab, c in unplaced.items() if c)[1]
        for i in holders[label]:
            if subset[i] is None:
                place(i, max(open_subsets(), key=lambda s: (s not in has[label], room[s] >= weights[i],
                                                            want[label][s], room[s], -names.index(s))))
    for i in order:
        if subset[i] is None:
            place(i, max(open_subsets(), key=lambda s: (room[s], -names.index(s))))
    return subset


def _samples(layout: DataLayout) -> tuple[list[str], list[frozenset[str]], str]:
    """Names (as the datasets' ``split=`` takes them), labels per sample, and how labels are named."""
    if layout.kind == "masks":
        pairs, lonely, _ = pair_by_stem(layout.images, layout.path)
        if lonely:
            raise DataError(f"{lonely[0]}: no mask for this image in {layout.path} ({len(lonely)} image(s) "
                            "without mask)")
        return ([image.stem for image, _ in pairs],
                [frozenset(str(int(v)) for v in np.unique(read_mask(mask))) for _, mask in pairs], "mask value")
    if layout.kind == "voc":
        parsed = parse_coco(voc_to_coco(layout.images, layout.path), str(layout.path))
    elif layout.kind == "instances":
        parsed = parse_coco(read_instance_folder(layout.images, layout.path).data, str(layout.path))
    else:
        parsed = parse_coco_file(layout.path)
    raise_first(parsed)
    stem = layout.kind != "coco"  # VOC ids and folder samples are stems; COCO names are the file_name fields
    return ([Path(r.file_name).stem if stem else r.file_name for r in parsed.records],
            [frozenset(parsed.class_names[k - 1] for k in r.labels.tolist()) for r in parsed.records], "category")


def make_split(path: str | os.PathLike | None, val: float = 0.2, test: float = 0.0, seed: int = 0, *,
               block: int = 1, kind: str | None = None, instances: bool = False,
               images: str | os.PathLike | None = None, masks: str | os.PathLike | None = None) -> Split:
    """Split a dataset into train / val (/ test) name lists, stratified by the labels of each sample.

    Args:
        path: a mask folder root (``images/`` + ``masks/``), an instance-mask folder root, a COCO JSON file or a
            VOC folder (found as ``resdense data check`` finds them, see :func:`~resdense.data.check.find_layouts`).
            Instance-mask folders are stratified by instance presence (one class: the folder alone does not say
            which class an instance is).
        val, test: fractions of the samples (``test=0``: no test subset).
        seed: the shuffle; the same data and seed give the same split.
        block: keep runs of ``block`` consecutive samples (dataset order) in one subset, for video frames, whose
            neighbours are near copies of each other (a frame in val next to its twin in train is not held out).
        kind: ``"masks"``, ``"instances"``, ``"coco"`` or ``"voc"`` when ``path`` holds several datasets.
        instances: read ``images/`` + ``masks/`` as instance ids (see :func:`~resdense.data.check.find_layouts`).
        images, masks: a mask folder named otherwise (``path`` is then not looked into).

    Returns:
        a :class:`Split`; ``Split.write(out)`` writes the files that every dataset's ``split=`` reads.
    """
    _fractions(val, test)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"block = {block!r} must be a positive integer")
    layout = mask_layout(images, masks) if masks is not None or images is not None else \
        pick_layout(path, kind, instances)
    names, labels, label_kind = _samples(layout)
    sizes = _sizes(len(names), {"val": val, "test": test}, layout.path)
    starts = range(0, len(names), block)
    units = [frozenset().union(*labels[k:k + block]) for k in starts]
    per_unit = stratified_assignment(units, sizes, seed, [len(labels[k:k + block]) for k in starts])
    assigned = [per_unit[i // block] for i in range(len(names))]
    subsets = {s: [n for n, a in zip(names, assigned, strict=True) if a == s] for s in sizes}
    counts: dict[str, dict[str, int]] = {}
    for labs, a in zip(labels, assigned, strict=True):
        for lab in labs:
            counts.setdefault(lab, dict.fromkeys(sizes, 0))[a] += 1
    ordered = sorted(counts, key=lambda lab: (0, int(lab), "") if lab.isdigit() else (1, 0, lab))
    options = (f"--val {val:g}" + (f" --test {test:g}" if test else "") + (f" --block {block}" if block > 1 else "")
               + f" --seed {seed}")
    return Split(layout, subsets, {f"{label_kind} {lab}": counts[lab] for lab in ordered}, options)
