"""Tiny recipes for tests: 64 px synthetic shapes, a few iterations, small decoders (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import yaml


def seg_recipe(shapes_root: Path, out: Path, **train) -> dict:
    return {
        "task": "segmentation",
        "model": {"arch": "unet", "backbone": "resnet18", "decoder_channels": [16, 16, 16, 16, 16]},
        "data": {
            "dataset": "shapes",
            "shapes": {"root": str(shapes_root), "n_train": 12, "n_val": 4, "size": 64, "seed": 0},
            "train_transforms": {"size": 64, "scale": [0.5, 1.0], "hflip": 0.5, "color_jitter": 0.2},
            "val_transforms": {"size": None},
        },
        "train": {"output_dir": str(out), "iterations": 6, "batch_size": 4, "lr": 0.003, "warmup_iters": 2,
                  "loss": "ce+dice", "log_every": 1, **train},
        "eval": {"every_iters": 3, "batch_size": 4},
    }


def det_recipe(shapes_root: Path, out: Path, **train) -> dict:
    return {
        "task": "detection",
        "model": {"arch": "faster_rcnn", "backbone": "resnet18", "min_size": 64, "max_size": 64,
                  "anchor_sizes": [[8], [16], [32], [64], [128]], "aspect_ratios": [1.0],
                  "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
                  "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 20,
                  "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16},
        "data": {
            "dataset": "shapes",
            "shapes": {"root": str(shapes_root), "n_train": 12, "n_val": 4, "size": 64, "seed": 0},
            "train_transforms": {"size": None, "hflip": 0.5, "color_jitter": 0.2},
            "val_transforms": {"size": None},
        },
        "train": {"output_dir": str(out), "iterations": 4, "batch_size": 2, "lr": 0.001, "warmup_iters": 2,
                  "log_every": 1, **train},
        "eval": {"every_iters": 2, "batch_size": 4},
    }


def write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tensorboard_scalars(run_dir: Path, skip: tuple[str, ...] = ("train/time_s",)) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard itself would show for ``run_dir/tb`` (purged steps removed), per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag not in skip}
