"""resdense.export.quantize_checkpoint: a trained recipe's U-Net as int8, calibrated on its train split."""

import pytest
import torch

from resdense.engine import load_model, run_training
from resdense.engine.build import build_dataset
from resdense.errors import ConfigError
from resdense.export import quantize_checkpoint
from resdense.heads import QuantizedUNet, quantize_unet

from ..engine.recipes import seg_recipe, write


def test_quantize_checkpoint_calibrates_on_the_recipe_and_agrees_with_float32(tmp_path):
    recipe = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2, progress=False),
                   tmp_path / "seg.yaml")
    run_training(recipe)
    ckpt = tmp_path / "run" / "last.pt"
    q, run = quantize_checkpoint(ckpt, n=4)
    assert isinstance(q, QuantizedUNet) and run.model is q and run.class_names[0] == "background"
    # the same as quantizing the loaded model by hand on the first 4 train images under the val transforms
    fp32, _ = load_model(ckpt, device="cpu")
    train = build_dataset(run.config.data, "segmentation", "train", transforms_of="val")
    by_hand = quantize_unet(fp32, [train[i] for i in range(4)], n=4)
    val = build_dataset(run.config.data, "segmentation", "val")
    x = torch.stack([val[i][0] for i in range(len(val))])
    assert torch.equal(q(x), by_hand(x))
    other = quantize_unet(fp32, [train[i] for i in range(4, 8)], n=4)  # other calibration images: other scales
    assert not torch.equal(q(x), other(x))


def test_quantize_checkpoint_refuses_zero_images_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        quantize_checkpoint(tmp_path / "missing.pt", n=0)
    assert str(err.value) == "quantize_checkpoint: n=0 must be a positive int (images to calibrate on)"
