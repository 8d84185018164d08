"""Fuzzing the readers of checkpoints and weight files: ``engine.load_checkpoint`` (training checkpoints),
``backbones.weights.read_state_dict`` and ``load_weights`` (``weights=PATH`` of every model).

Random bytes, damaged real checkpoints, zip files with other content, pickles of foreign classes, ``torch.save`` of
odd structures (no dict, int keys, tensors of other shapes and dtypes), the legacy format and safetensors files must
be read or refused in one line; an intact checkpoint loads its weights exactly.
"""

from __future__ import annotations

import collections
import datetime
import functools
import io
import os
import pathlib
import pickle
import tempfile
import zipfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from resdense.backbones import create_backbone
from resdense.backbones.weights import load_weights, read_state_dict
from resdense.engine import atomic_save, load_checkpoint
from resdense.errors import ResdenseError

from ._fuzz import case, fuzz, outcome, scratch
from .strategies import damage, values

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on odd storages and casts


def _model():
    return create_backbone("resnet18", out_features=("c1", "c2"))  # stem and layer1: a 0.6 MB state dict


@functools.cache
def _real() -> tuple[bytes, dict]:
    """A training checkpoint as the trainer writes it (weights, an EMA, the recipe, a counter), as bytes, and its
    weights. (Not a fixture: hypothesis would print its megabyte with every failing case.)"""
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in _model().state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "last.pt"
        atomic_save({"model": weights, "ema": {"weights": weights, "updates": 3}, "iteration": 7,
                     "config": {"task": "segmentation", "model": {"arch": "unet"}}}, path)
        return path.read_bytes(), weights


@pytest.fixture(scope="module")
def model():
    return _model()


class Foreign:
    """A class no weights-only reader may instantiate."""

    def __init__(self, x=1):
        self.x = x


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.complex64,
          torch.float64]
TENSORS = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 3), max_size=4).map(tuple), st.sampled_from(DTYPES))
KEYS = st.one_of(st.sampled_from(["conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                                  "fc.weight", "module.conv1.weight", "encoder.conv1.weight", "state_dict",
                                  "model", "ema", "weights", "state_dict_ema", "backbone.body.conv1.weight"]),
                 st.text(max_size=8), st.integers(-2, 2))
FOREIGN = st.sampled_from([Foreign(), os.system, pathlib.Path("/x"), datetime.date(2020, 1, 1), {1, 2}, 1j, b"x",
                           slice(1, 2), collections.Counter("ab"), Exception("x"), print, type])
STRUCTURES = st.recursive(st.one_of(TENSORS, values(max_leaves=2)),
                          lambda inner: st.one_of(st.dictionaries(KEYS, inner, max_size=4), st.lists(inner, max_size=3),
                                                  st.builds(collections.OrderedDict,
                                                            st.dictionaries(KEYS, inner, max_size=3))),
                          max_leaves=8)


@st.composite
def weight_files(draw, real_bytes: bytes, weights: dict) -> tuple[str, bytes]:
    """``(suffix, content)`` of a file that claims to hold weights."""
    kind = draw(st.sampled_from(["random", "damaged", "zip", "foreign", "structure", "structure", "legacy",
                                 "safetensors", "wrong shapes"]))
    suffix = draw(st.sampled_from([".pt", ".pth", ".bin", ".ckpt"]))
    if kind == "random":
        return draw(st.sampled_from([".pt", ".safetensors"])), draw(st.binary(max_size=200))
    if kind == "damaged":
        return suffix, damage(draw, real_bytes)
    if kind == "zip":  # a zip archive, but not torch's layout (or torch's with another data.pkl)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name in draw(st.lists(st.sampled_from(["archive/data.pkl", "archive/version", "archive/data/0",
                                                       "data.pkl", "x/y", "archive/byteorder"]), unique=True,
                                      max_size=4)):
                content = draw(st.one_of(st.binary(max_size=40), st.sampled_from(
                    [pickle.dumps({"model": {}}), pickle.dumps(Foreign()), b"3", b"little"])))
                z.writestr(name, content)
        return suffix, buf.getvalue()
    if kind == "foreign":
        obj = draw(st.sampled_from([{"model": draw(FOREIGN)}, {"state_dict": {"w": draw(FOREIGN)}}, draw(FOREIGN)]))
        return suffix, _torch_bytes(obj, legacy=draw(st.booleans()))
    if kind == "legacy":
        return suffix, _torch_bytes(dict(weights), legacy=True)
    if kind == "safetensors":
        tensors = draw(st.dictionaries(st.text(min_size=1, max_size=8), TENSORS.filter(lambda t: t.dtype != torch.complex64),
                                       max_size=3))
        content = safetensors_bytes(tensors or {"conv1.weight": torch.zeros(1)})
        return ".safetensors", damage(draw, content) if draw(st.booleans()) else content
    if kind == "wrong shapes":  # the real keys, some tensors replaced: any shape, the shape in another dtype, conv1
        sd = dict(weights)  # for other input channels (even none)
        for key in draw(st.lists(st.sampled_from(sorted(sd)), min_size=1, max_size=3)):
            sd[key] = draw(st.one_of(TENSORS, st.sampled_from(DTYPES).map(lambda d, k=key: torch.zeros_like(
                sd[k], dtype=d))))
        if draw(st.booleans()):
            sd["conv1.weight"] = torch.ones(64, draw(st.integers(0, 5)), 7, 7)
        return suffix, _torch_bytes(draw(st.sampled_from([sd, {"model": sd}, {"state_dict": sd}])))
    return suffix, _torch_bytes(draw(STRUCTURES))


def _write(root, suffix: str, content: bytes):
    path = root / f"weights{suffix}"
    path.write_bytes(content)
    return path


def test_an_intact_checkpoint_loads_exactly(fuzz_dir, model):
    content, weights = _real()
    with scratch(fuzz_dir) as root:
        path = _write(root, ".pt", content)
        ckpt = load_checkpoint(path)
        assert ckpt["iteration"] == 7 and all(torch.equal(ckpt["model"][k], v) for k, v in weights.items())
        assert all(torch.equal(read_state_dict(path)[k], v) for k, v in weights.items())
        report = load_weights(model, path)
        assert not report.missing and all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


@fuzz(600)
@given(data=st.data())
def test_checkpoint_files_are_read_or_refused(fuzz_dir, model, data):
    case("checkpoints")
    suffix, content = data.draw(weight_files(*_real()))
    with scratch(fuzz_dir) as root:
        path = _write(root, suffix, content)
        ckpt = outcome(load_checkpoint, path)
        if not isinstance(ckpt, ResdenseError):
            assert isinstance(ckpt, dict) and "model" in ckpt
        sd = outcome(read_state_dict, path)
        if not isinstance(sd, ResdenseError):
            assert sd and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
        report = outcome(load_weights, model, path, arch="resnet18")
        if not isinstance(report, ResdenseError):
            state = model.state_dict()
            adapted = {a.split()[0] for a in report.adapted}  # conv1 for other input channels
            assert report.loaded and all(state[k].shape == sd[k].shape for k in report.loaded
                                         if k in sd and k not in adapted)
