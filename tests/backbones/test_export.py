import numpy as np
import pytest
import torch
from torch.testing import assert_close

from resdense.backbones import create_backbone, export_onnx
from tests.backbones.reference import randomize_norm_stats


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("resnet50", {"output_stride": 16, "in_channels": 1})])
def test_onnx_export_matches_eager_at_another_size(name, kwargs, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a dev extra")
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone(name, out_features=("c1", "c3", "c5"), **kwargs))
    names = export_onnx(net, tmp_path / "m.onnx", input_size=(net.in_channels, 64, 64))
    assert names == ["c1", "c3", "c5"]
    x = torch.randn(2, net.in_channels, 96, 72)  # not the export size: dynamic axes work
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for n, g in zip(names, got, strict=True):
        assert_close(torch.from_numpy(np.asarray(g)), want[n], atol=1e-4, rtol=1e-4)
