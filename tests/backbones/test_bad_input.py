"""Bad input gets one clear error naming the value and what is accepted."""

import pickle
import re

import pytest
import torch
import torchvision

from resdense.backbones import create_backbone
from resdense.errors import ConfigError, WeightsError
from resdense.heads import create_classifier


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet05'; did you mean 'resnet50'\? Available: resnet101, "):
        create_backbone("resnet05")


@pytest.mark.parametrize("out_features,msg", [
    (("c2", "c6"), r"resnet18: unknown out_features \['c6'\]; choose from \['c1', 'c2', 'c3', 'c4', 'c5'\]"),
    (("c3", "c3"), r"resnet18: out_features lists \['c3'\] more than once"),
    ((), r"resnet18: out_features is empty"),
])
def test_bad_out_features(out_features, msg):
    with pytest.raises(ConfigError, match=msg):
        create_backbone("resnet18", out_features=out_features)


def test_output_stride_4_is_refused():
    with pytest.raises(ConfigError, match=r"resnet50: output_stride=4 is not supported; choose from \(8, 16, 32\)"):
        create_backbone("resnet50", output_stride=4)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(frozen_stages=5), r"frozen_stages=5 must be an int in -1..4"),
    (dict(norm="ln"), r"norm='ln' is not supported; choose from \['bn', 'frozen_bn', 'gn', 'sync_bn'\]"),
    (dict(in_channels=0), r"in_channels=0 must be a positive int"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        create_backbone("resnet18", **kwargs)


def test_bad_num_classes():
    with pytest.raises(ConfigError, match=r"num_classes=0 must be a positive int"):
        create_classifier("resnet18", num_classes=0)


def test_truncated_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r": not a readable PyTorch checkpoint, truncated or corrupt"):
        create_backbone("resnet18", weights=path)


class Evil:  # a custom class: unpickling it would run arbitrary code
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_custom_class_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "payload": Evil()}, path)
    with pytest.raises(WeightsError, match=r"evil.pth: refused: the file needs arbitrary unpickling .*save a plain state_dict"):
        create_backbone("resnet18", weights=path)
    with pytest.raises(WeightsError):  # a plain pickle file (not a torch zip) is refused too
        path.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
        create_backbone("resnet18", weights=path)


def test_file_for_another_architecture_names_first_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match=r"r18.pth: does not fit resnet50: 'layer1.0.conv1.weight' has shape "
                                           r"\[64, 64, 3, 3\] in the file but \[64, 64, 1, 1\] in the model"):
        create_backbone("resnet50", weights=path)


def test_same_shapes_but_missing_blocks_is_an_error(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not fit resnet101: missing .* keys \(layer3.6.conv1.weight"):
        create_backbone("resnet101", weights=path)


def test_missing_file_and_unknown_tag(tmp_path):
    with pytest.raises(WeightsError, match=r"nope.pth: weight file not found"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match=r"weights='IMAGENET1K_V9' is neither a file nor a tag of resnet50; tags: imagenet, IMAGENET1K_V1, IMAGENET1K_V2"):
        create_backbone("resnet50", weights="IMAGENET1K_V9")


def test_file_with_no_matching_key(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match=r"x.pt: no key matches resnet18 \(first key in the file: 'foo.weight'\)"):
        create_backbone("resnet18", weights=tmp_path / "x.pt")
