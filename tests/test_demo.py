"""The demo end to end (`make demo`): both tasks on a 2-core CPU within 10 minutes, mIoU >= 0.90, box AP50 >= 0.90."""

from __future__ import annotations

import json

import pytest

from resdense.demo import TARGETS, run_demo


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    result = run_demo(tmp_path / "demo")
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result["metrics"]))
    seg = metrics["tasks"]["segmentation"]["final"]["mIoU"]
    det = metrics["tasks"]["detection"]["final"]["bbox/AP50"]
    minutes = metrics["total_s"] / 60
    summary = f"mIoU {seg:.4f}, AP50 {det:.4f}, {minutes:.1f} min"
    assert seg >= TARGETS["segmentation"][1], summary
    assert det >= TARGETS["detection"][1], summary
    assert minutes <= TARGETS["total_minutes"], summary
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "MISSED" not in report
    for task in ("segmentation", "detection"):
        for rel in metrics["tasks"][task]["pictures"]:
            assert (tmp_path / "demo" / rel).stat().st_size > 1000
