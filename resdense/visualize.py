"""Pictures a person can read: class-coloured mask overlays with a legend, boxes with label and score, curves.

Overlays and boxes draw with PIL into RGB ``uint8`` arrays (no display needed). The plots use matplotlib's Agg
backend: :func:`plot_curves` reads a run's ``log.csv`` / ``eval.csv`` with :func:`read_csv` (the engine's logger
writes them); :func:`plot_confusion_matrix` and :func:`plot_pr_curves` draw the arrays of an evaluation report.
"""

from __future__ import annotations

import colorsys
import csv
import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from resdense.coco import encode_masks, rle_counts
from resdense.errors import EvaluationError
from resdense.files import write_with

__all__ = ["palette", "overlay_mask", "is_background", "BACKGROUND_NAMES", "draw_boxes", "plot_curves", "plot_confusion_matrix", "plot_pr_curves",
           "read_csv", "save_image", "side_by_side"]

#: Up to this many classes a confusion matrix shows its values and a PR plot has a legend entry per class.
FEW_CLASSES = 20


def palette(n: int, background: bool = True) -> np.ndarray:
    """``[n, 3] uint8`` distinct colours; with ``background`` the first is black (class 0 left undrawn)."""
    colours = []
    for i in range(n):
        # Golden-ratio hue steps keep neighbouring class indices far apart on the colour wheel.
        h = (i * 0.618033988749895 + 0.1) % 1.0
        s, v = (0.85, 0.95) if i % 2 == 0 else (0.65, 0.8)
        colours.append([int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    out = np.array(colours, dtype=np.uint8).reshape(-1, 3)
    if background and n:
        out[0] = 0
    return out


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")


def is_background(class_names: Sequence[str]) -> bool:
    """Whether class 0 is a declared background class: its name is one of :data:`BACKGROUND_NAMES` (the COCO /
    VOC / torchvision convention). Any other class 0 (CamVid's ``Sky``, the membrane's ``membrane``) is a class."""
    return bool(class_names) and str(class_names[0]).strip().lower() in BACKGROUND_NAMES


def overlay_mask(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
                 ignore_index: int | None = 255, legend: bool = True, background: bool | None = None) -> np.ndarray:
    """Blend a class map over an image and add a legend of the classes present.

    Args:
        image: ``uint8 [H, W, 3]``.
        mask: integer ``[H, W]`` class indices (``ignore_index`` pixels are drawn grey).
        class_names: names by index.
        alpha: opacity of the class colours.
        background: class 0 is background, left uncoloured and out of the legend. ``None``: when class 0 is named
            as one (:func:`is_background`); else class 0 is drawn and listed like any class.

    Returns:
        ``uint8 [H, W + legend width, 3]``.
    """
    if background is None:
        background = is_background(class_names)
    mask = np.asarray(mask)
    colours = palette(len(class_names), background=background)
    out = image.astype(np.float32).copy()
    for k in range(len(class_names)):
        if background and k == 0:
            continue
        sel = mask == k
        if sel.any():
            out[sel] = (1 - alpha) * out[sel] + alpha * colours[k]
    if ignore_index is not None:
        sel = mask == ignore_index
        out[sel] = 0.5 * out[sel] + 0.5 * 128
    out = out.clip(0, 255).astype(np.uint8)
    out = _outline(out, mask, colours, background)
    if not legend:
        return out
    present = [k for k in range(len(class_names)) if (mask == k).any() and not (background and k == 0)]
    return _with_legend(out, [(class_names[k], tuple(int(c) for c in colours[k])) for k in present])


def _outline(img: np.ndarray, mask: np.ndarray, colours: np.ndarray, background: bool) -> np.ndarray:
    """Draw each class region's border in its full colour so adjacent regions stay distinguishable."""
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    out = img.copy()
    valid = (mask >= 0) & (mask < len(colours))
    if background:
        valid &= mask != 0
    sel = edge & valid
    out[sel] = colours[mask[sel]]
    return out


def _with_legend(img: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    font = _font(11)
    h = img.shape[0]
    row = 16
    width = 14 + max([int(font.getlength(name)) for name, _ in entries] + [40]) + 10
    rows = max(len(entries), 1)
    canvas = Image.new("RGB", (img.shape[1] + width, max(h, rows * row + 8)), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = img.shape[1] + 6
    if not entries:
        draw.text((x0, 4), "(none)", fill=(90, 90, 90), font=font)
    for i, (name, colour) in enumerate(entries):
        y = 4 + i * row
        draw.rectangle([x0, y + 1, x0 + 10, y + 11], fill=colour, outline=(0, 0, 0))
        draw.text((x0 + 14, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def draw_boxes(image: np.ndarray, boxes, labels, scores=None, class_names: Sequence[str] | None = None,
               score_threshold: float = 0.0, width: int = 2, masks=None, mask_alpha: float = 0.45) -> np.ndarray:
    """Draw xyxy ``boxes [N, 4]`` with ``"name 0.97"`` captions; label ``k`` is ``class_names[k - 1]``.

    Args:
        image: ``uint8 [H, W, 3]``.
        boxes, labels, scores: detector outputs (tensors or arrays); ``scores=None`` for ground truth.
        class_names: the K names (labels 1..K, 0 is background).
        score_threshold: boxes scoring below are not drawn.
        masks: instance masks filled in their class colour under the boxes: ``[N, 1, H, W]`` or ``[N, H, W]``
            probabilities (a pixel is in where > 0.5) or N compressed COCO RLEs of the image (painted run by run:
            no image-sized array per instance). The best score is painted last, on top.
        mask_alpha: opacity of the masks.
    """
    boxes = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if scores is not None:
        scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float32)
    names = list(class_names or [])
    colours = palette(len(names) + 1)
    order = np.argsort(-scores) if scores is not None else np.arange(len(boxes))
    if scores is not None:
        order = order[scores[order] >= score_threshold]
    if masks is not None and len(order):
        instance_colours = np.array([colours[k] if 0 < k < len(colours) else (255, 255, 0) for k in labels.tolist()],
                                    dtype=np.uint8).reshape(-1, 3)
        image = _paint_instances(image, masks, order, instance_colours, mask_alpha)
    canvas = Image.fromarray(image).convert("RGB")
    # Small images get scaled up so that captions stay legible.
    scale = max(1, math.ceil(256 / max(canvas.size)))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for i in order[::-1]:
        k = int(labels[i])
        colour = tuple(int(c) for c in colours[k % len(colours)]) if 0 < k < len(colours) else (255, 255, 0)
        name = names[k - 1] if 0 < k <= len(names) else str(k)
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        x0, y0, x1, y1 = (boxes[i] * scale).tolist()
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        tw = font.getlength(text)
        ty = y0 - 13 if y0 >= 13 else y0 + 1
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 12], fill=colour)
        draw.text((x0 + 2, ty), text, fill=(0, 0, 0) if sum(colour) > 380 else (255, 255, 255), font=font)
    return np.asarray(canvas)


def _paint_instances(image: np.ndarray, masks, order: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend instance ``i``'s colour over its pixels, for ``i`` in ``order`` (best first, painted last)."""
    h, w = image.shape[:2]
    if not isinstance(masks, (list, tuple)):  # probabilities -> RLEs: one painting path
        dense = np.asarray(masks.detach().cpu() if hasattr(masks, "detach") else masks).reshape(-1, h, w)
        masks = encode_masks(dense[order] > 0.5)
        order_rle = dict(zip(order.tolist(), masks, strict=True))
    else:
        order_rle = {i: masks[i] for i in order.tolist()}
    owner = np.zeros(h * w, dtype=np.int32)  # column-major, as COCO's runs: 1 + the instance painted last
    for i in order[::-1].tolist():
        bounds = np.cumsum(rle_counts(order_rle[i]))
        for start, end in zip(bounds[0::2].tolist(), bounds[1::2].tolist(), strict=False):
            owner[start:end] = i + 1
    owner = owner.reshape(w, h).T
    painted = owner > 0
    out = image.copy()
    blend = (1 - alpha) * out[painted] + alpha * colours[owner[painted] - 1].astype(np.float32)
    out[painted] = blend.round().astype(np.uint8)
    return out


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, pad: int = 6) -> np.ndarray:
    """Place images in a row (tops aligned) with optional titles above them."""
    font = _font(12)
    top = 16 if titles else 0
    h = max(im.shape[0] for im in images) + top
    w = sum(im.shape[1] for im in images) + pad * (len(images) - 1)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, im in enumerate(images):
        canvas.paste(Image.fromarray(im), (x, top))
        if titles:
            draw.text((x + 2, 1), titles[i], fill=(0, 0, 0), font=font)
        x += im.shape[1] + pad
    return np.asarray(canvas)


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 ``[H, W, 3]`` (or ``[H, W]``) picture atomically, in the format its suffix names (PNG else)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    write_with(path, partial(Image.fromarray(image).save, format=fmt), "picture")
    return path


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a log CSV as dicts of floats (empty cells and text become NaN)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v)
            except (TypeError, ValueError):
                parsed[k] = math.nan
        out.append(parsed)
    return out


def plot_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Loss terms (``log.csv``) and evaluation metrics (``eval.csv``) of a run as one PNG.

    Returns:
        The PNG's path (default ``run_dir/curves.png``).
    """
    plt = _pyplot()
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    train, evals = read_csv(run_dir / "log.csv"), read_csv(run_dir / "eval.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    if train:
        its = [r["iteration"] for r in train]
        keys = [k for k in train[0] if k.startswith("loss")]
        for k in keys:
            ax.plot(its, [r.get(k, math.nan) for r in train], label=k, lw=1.6 if k == "loss" else 1.0)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("iteration")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax = axes[1]
    if evals:
        its = [r["iteration"] for r in evals]
        keys = [k for k in evals[0] if k != "iteration" and not k.startswith("IoU/") and "loss" not in k
                and not k.split("/")[-1].startswith(("AR", "APs", "APm", "APl"))]
        for k in keys:
            ax.plot(its, [r.get(k, math.nan) for r in evals], marker="o", ms=3, label=k)
        ax.legend(fontsize=7)
        ax.set_ylim(0, 1.0)
    ax.set_xlabel("iteration")
    ax.set_title("validation metrics")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _pyplot():
    import matplotlib  # deferred: heavy, and only the plots need it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | os.PathLike) -> Path:
    out = Path(out)
    fig.tight_layout()
    write_with(out, partial(fig.savefig, dpi=110, format=out.suffix.lstrip(".").lower() or "png"), "picture")
    _pyplot().close(fig)
    return out


def plot_confusion_matrix(matrix, class_names: Sequence[str], out: str | os.PathLike, *,
                          annotate: bool | None = None, title: str = "confusion matrix") -> Path:
    """A confusion matrix as a PNG, each row divided by its sum: row ``i`` shows where the pixels (or samples) of
    true class ``i`` went, so the diagonal is each class's recall. Rows without any are left blank.

    Args:
        matrix: counts ``[C, C]``, rows ground truth, columns prediction (tensor or array).
        class_names: the C names, on both axes.
        annotate: write each cell's value; default when C <= :data:`FEW_CLASSES`.

    Returns:
        The PNG's path.
    """
    cm = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    c = len(class_names)
    if cm.shape != (c, c):
        raise EvaluationError(f"plot_confusion_matrix: matrix of shape {list(cm.shape)} for {c} class names")
    totals = cm.sum(1, keepdims=True)
    norm = np.divide(cm, totals, out=np.full_like(cm, np.nan), where=totals > 0)
    plt = _pyplot()
    side = min(3.5 + 0.45 * c, 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(c), labels=list(class_names), rotation=45 if c > 3 else 0, ha="right" if c > 3 else "center")
    ax.set_yticks(range(c), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (rows normalised: recall per true class)", fontsize=10)
    if annotate if annotate is not None else c <= FEW_CLASSES:
        for i in range(c):
            for j in range(c):
                if not np.isnan(norm[i, j]):
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, out)


def plot_pr_curves(recall, curves: dict[str, np.ndarray], class_names: Sequence[str], out: str | os.PathLike, *,
                   title: str = "precision-recall") -> Path:
    """Precision-recall curves, one panel per entry of ``curves`` and one line per class.

    Args:
        recall: the recall points ``[R]`` (COCO's 101 thresholds 0:0.01:1).
        curves: panel title -> precision ``[K, R]`` (e.g. ``"IoU 0.50"``, ``"mean IoU 0.50:0.95"``); a row of -1
            (COCO: a class without ground truth) is not drawn and named in the legend as such.
        class_names: the K names. A class's legend entry carries the curve's mean precision, which is its AP.

    Returns:
        The PNG's path.
    """
    recall = np.asarray(recall, dtype=np.float64)
    for name, prec in curves.items():
        if np.shape(prec) != (len(class_names), len(recall)):
            raise EvaluationError(f"plot_pr_curves: {name!r} precision of shape {list(np.shape(prec))}, expected "
                                  f"[{len(class_names)} classes, {len(recall)} recall points]")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.4), squeeze=False)
    colours = palette(len(class_names) + 1)[1:] / 255.0
    for ax, (name, prec) in zip(axes[0], curves.items(), strict=True):
        prec = np.asarray(prec, dtype=np.float64)
        for k, label in enumerate(class_names):
            if (prec[k] < 0).all():
                ax.plot([], [], color="grey", label=f"{label} (no ground truth)")
                continue
            ax.plot(recall, prec[k], color=colours[k], lw=1.4, label=f"{label} (AP {prec[k].mean():.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.grid(alpha=0.3)
        if len(class_names) <= FEW_CLASSES:
            ax.legend(fontsize=7, loc="lower left")
    return _save(fig, out)
