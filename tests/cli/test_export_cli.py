"""``resdense export``: a tiny trained checkpoint to ONNX, verified (the max abs difference printed); bad sizes are
one line with exit code 2."""

from __future__ import annotations

import onnx

from resdense.cli import main
from tests.engine.recipes import seg_recipe, write


def test_export_a_checkpoint_to_onnx_prints_the_difference(tmp_path, capsys):
    cfg = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2), tmp_path / "seg.yaml")
    assert main(["train", str(cfg), "--set", "eval.every_iters=0"]) == 0
    capsys.readouterr()
    out = tmp_path / "model.onnx"
    assert main(["export", str(cfg), "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(out),
                 "--size", "64", "96", "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "1x64x96 logits: max abs diff" in printed and "3x128x64 logits: max abs diff" in printed
    assert out.exists() and onnx.load(str(out)).graph.input[0].name == "image"
    assert main(["export", str(cfg), "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out",
                 str(tmp_path / "again.onnx"), "--verify-image", "a.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resdense export: error: export: verify_images are for detectors") and "\n" not in err


def test_export_refuses_a_bad_size_in_one_line(tmp_path, capsys):
    assert main(["export", "x.yaml", "--checkpoint", "c.pt", "--out", str(tmp_path / "m.onnx"),
                 "--size", "8", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "resdense export: error: export: input_size=[8, 8] must be two ints >= 32 (height, width)"
