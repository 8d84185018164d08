"""Tiny recipes for tests: 64 px synthetic shapes, a few iterations, small decoders (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import yaml

from resdense.engine import HookBase


class AfterStep(HookBase):
    """A probe: ``fn(trainer, iteration, losses)`` after every step."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def after_step(self) -> None:
        self.fn(self.trainer, self.trainer.iteration, self.trainer.losses)


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


def gn_unet_trainer(shapes_root: Path, run_dir: Path, **train):
    """A U-Net whose norm layers do not depend on the batch (GroupNorm backbone, no decoder norm), trained with
    mean-reduced cross-entropy in float32 on the shapes set: a global batch gives the same gradient however it is
    split into processes and micro-batches, up to float32 rounding (about 1e-5 of the largest gradient of a tensor,
    as far from a float64 reference either way). SGD keeps it at that: its step is linear in the gradient, where
    AdamW's ``g / sqrt(v)`` turns the rounding of a near-zero gradient into a sign flip."""
    import torch

    from resdense.backbones import create_backbone
    from resdense.config import TrainConfig
    from resdense.engine import SegmentationTask, Trainer, config_from_dict
    from resdense.engine.build import build_dataset
    from resdense.heads import UNet

    cfg = config_from_dict(seg_recipe(shapes_root, run_dir))
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", norm="gn", out_features=("c1", "c2", "c3"))  # 0.7 M parameters
    model = UNet(backbone, num_classes=4, decoder_channels=[16] * 3, decoder_norm="identity")
    settings = {"iterations": 3, "batch_size": 4, "optimizer": "sgd", "lr": 0.003, "amp": "none", "progress": False,
                "log_every": 1, **train}
    return Trainer(model, SegmentationTask(4, loss="ce"), build_dataset(cfg.data, "segmentation", "train"), None,
                   TrainConfig(**settings), run_dir=run_dir)


class OracleDetector:
    """A stand-in detector for evaluation tests: it recognises each image of ``dataset`` (by its pixels) and returns
    that image's ground-truth boxes shifted by ``index % 4`` pixels, every third one with another label, plus one
    false positive, with scores falling by index: COCO statistics well inside (0, 1), and different for every
    subset of the images."""

    def __init__(self, dataset) -> None:
        import torch

        self.by_pixels, self.images_seen = {}, 0
        for i in range(len(dataset)):
            image, target = dataset[i]
            boxes = target["boxes"].clone() + i % 4
            labels = target["labels"].clone()
            labels[::3] = labels[::3] % 3 + 1
            boxes = torch.cat([boxes, torch.tensor([[2.0, 2.0, 20.0, 20.0]])])
            labels = torch.cat([labels, torch.tensor([1])])
            scores = torch.linspace(0.9, 0.3, len(labels)) - 0.01 * i
            self.by_pixels[image.numpy().tobytes()] = {"boxes": boxes, "labels": labels, "scores": scores}

    def __call__(self, images):
        self.images_seen += len(images)
        return [self.by_pixels[image.numpy().tobytes()] for image in images]

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    training = False


def oracle_evaluation(recipe_path) -> tuple[dict[str, float], int]:
    """``resdense.engine.evaluate`` of :class:`OracleDetector` on the validation split of a detection recipe, in
    batches of 2 (sharded under torch.distributed): the statistics, and how many images this process scored."""
    import torch

    from resdense.config import EvalConfig
    from resdense.engine import load_config
    from resdense.engine.build import build_dataset, build_task, dataset_classes
    from resdense.engine.evaluate import evaluate

    cfg = load_config(recipe_path)
    val = build_dataset(cfg.data, "detection", "val")
    task = build_task("detection", dataset_classes(val, "detection"), cfg)
    oracle = OracleDetector(val)
    return evaluate(oracle, task, val, EvalConfig(batch_size=2), torch.device("cpu")), oracle.images_seen
