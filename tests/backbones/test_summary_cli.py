import subprocess
import sys

import torchvision

from resdense.backbones import layer_summary
from resdense.cli import main
from resdense.heads import create_classifier


def test_summary_rows_and_totals_match_the_model(capsys):
    rows = {r.name: r for r in layer_summary(create_classifier("resnet18"), (3, 224, 224), depth=2)}
    assert rows["backbone.layer4"].output_shape == (1, 512, 7, 7) and rows["fc"].output_shape == (1, 1000)
    assert rows["backbone.layer1"].params == sum(p.numel() for p in torchvision.models.resnet18().layer1.parameters())
    assert main(["summary", "resnet50", "--input", "3x128x160"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "1x2048x4x5" in out and "total params: 25,557,032" in out


def test_summary_bad_input_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "resdense", "summary", "resnet5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown backbone 'resnet5'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "resdense", "summary", "resnet18", "--input", "3x224"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--input '3x224': expected CxHxW" in proc.stderr
