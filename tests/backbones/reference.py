"""Reference outputs from torchvision models, shared by the backbone tests."""

import torch
import torchvision

from resdense.backbones import ARCHS


def randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so a wrong key mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def torchvision_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_norm_stats(getattr(torchvision.models, name)(weights=None, **kwargs), seed)


def torchvision_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    x = model.relu(model.bn1(model.conv1(x)))
    out["c1"] = x
    x = model.maxpool(x)
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        out[f"c{i + 1}"] = x
    return out


ALL_ARCHS = sorted(ARCHS)
