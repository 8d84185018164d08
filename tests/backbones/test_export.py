import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.testing import assert_close

from resdense.backbones import create_backbone, export_onnx, optimize_for_inference
from tests.backbones.reference import randomize_norm_stats


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("resnet50", {"output_stride": 16, "in_channels": 1})])
def test_onnx_export_matches_eager_at_another_size(name, kwargs, tmp_path):
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


def test_inference_mode_exports_with_portable_ops(tmp_path):
    """The fused oneDNN kernels are a runtime choice: under the exporter's tracer the folded model exports as plain
    Conv / Add / Relu and gives the eager outputs."""
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone("resnet18", out_features=("c2", "c5")))
    fast = optimize_for_inference(net)
    names = export_onnx(fast, tmp_path / "fast.onnx", input_size=(3, 64, 64))
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "fast.onnx")).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops
    x = torch.randn(1, 3, 80, 64)
    got = ort.InferenceSession(str(tmp_path / "fast.onnx")).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for n, g in zip(names, got, strict=True):
        assert_close(torch.from_numpy(np.asarray(g)), want[n], atol=1e-4, rtol=1e-4)
