"""Precision chosen from the hardware (``train.amp: auto``), the emulated-bf16 warnings, offline weight errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import warnings

import pytest
import torch

from resdense import hardware
from resdense.backbones import create_backbone, optimize_for_inference
from resdense.backbones.weights import cache_path
from resdense.cli import main
from resdense.errors import ConfigError, WeightsError
from tests.engine.recipes import seg_recipe, write


@pytest.fixture(autouse=True)
def _fresh_warnings():
    hardware._WARNED.clear()
    yield
    hardware._WARNED.clear()


def _cpu_with_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(hardware, "_onednn_bf16", lambda: True)
    monkeypatch.setattr(hardware, "_bf16_instructions", lambda: native)


# ---- the auto rule -----------------------------------------------------------------------------------------------
def test_auto_is_fp16_on_cuda(monkeypatch):
    _cpu_with_native_bf16(monkeypatch, True)  # the CPU's abilities do not matter for a CUDA device
    p = hardware.choose_precision("auto", torch.device("cuda:0"))
    assert (p.dtype, p.name) == (torch.float16, "fp16") and "CUDA" in p.reason


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    _cpu_with_native_bf16(monkeypatch, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = hardware.choose_precision("auto", torch.device("cpu"))
    assert (p.dtype, p.name) == (torch.bfloat16, "bf16") and "native bf16" in p.reason


@pytest.mark.parametrize("onednn, instructions", [(True, False), (False, True), (False, False)])
def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, onednn, instructions):
    # AVX-512 without the BF16 extension (oneDNN says yes, emulated), oneDNN capped (ONEDNN_MAX_CPU_ISA), AVX2-only.
    monkeypatch.setattr(hardware, "_onednn_bf16", lambda: onednn)
    monkeypatch.setattr(hardware, "_bf16_instructions", lambda: instructions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = hardware.choose_precision("auto", torch.device("cpu"))
    assert (p.dtype, p.name) == (None, "fp32")
    assert "no native bf16" in p.reason and hardware.cpu_capability() in p.reason


def test_explicit_choices(monkeypatch):
    _cpu_with_native_bf16(monkeypatch, True)
    assert hardware.choose_precision("none", torch.device("cuda")).dtype is None
    assert hardware.choose_precision("fp16", torch.device("cuda")).dtype is torch.float16
    assert hardware.choose_precision("bf16", torch.device("cpu")).dtype is torch.bfloat16
    with pytest.raises(ConfigError, match="train.amp = 'fp16' needs CUDA"):
        hardware.choose_precision("fp16", torch.device("cpu"))


def test_forced_avx2_turns_native_bf16_off():
    # What the issue asks to check on a bf16 machine: oneDNN's report follows ONEDNN_MAX_CPU_ISA, and auto follows it.
    code = ("import torch; from resdense import hardware as h; p = h.choose_precision('auto', torch.device('cpu')); "
            "print(torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported(), "
            "h.native_bf16(), p.name)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "False", "False", "fp32"]


# ---- the warnings ------------------------------------------------------------------------------------------------
def test_bf16_without_native_bf16_warns_once(monkeypatch):
    _cpu_with_native_bf16(monkeypatch, False)
    with pytest.warns(UserWarning) as record:
        p = hardware.choose_precision("bf16", torch.device("cpu"))
        hardware.choose_precision("bf16", torch.device("cpu"))
    assert p.dtype is torch.bfloat16  # still honoured
    assert len(record) == 1
    text = str(record[0].message)
    assert f"CPU capability {hardware.cpu_capability()}" in text and "several times slower than fp32" in text


def test_bf16_with_native_bf16_does_not_warn(monkeypatch):
    _cpu_with_native_bf16(monkeypatch, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.choose_precision("bf16", torch.device("cpu"))
        hardware.choose_precision("bf16", torch.device("cuda"))


def test_inference_mode_bf16_warns_without_native_bf16(monkeypatch):
    import resdense.backbones.inference as inference

    net = create_backbone("resnet18", out_features=("c5",))
    monkeypatch.setattr(inference, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"optimize_for_inference\(dtype=torch.bfloat16\).*several times slower"):
        fast = optimize_for_inference(net, dtype=torch.bfloat16)
    assert fast(torch.randn(1, 3, 64, 64))["c5"].dtype == torch.bfloat16  # it still runs
    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    hardware._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimize_for_inference(net, dtype=torch.float32)


def test_training_logs_and_records_the_precision(tmp_path, caplog):
    cfg = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2), tmp_path / "seg.yaml")
    with caplog.at_level("INFO", logger="resdense.engine.trainer"):
        assert main(["train", str(cfg), "--set", "eval.every_iters=0"]) == 0
    expected = hardware.choose_precision("auto", torch.device("cpu"))
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"]
    assert recorded == {"amp": expected.name, "reason": expected.reason}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert lines == [f"precision {expected.name} ({expected.reason})"]


def test_channels_last_auto_follows_the_precision_and_the_task():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fp32 = hardware.Precision(None, "fp32", "")
    bf16 = hardware.Precision(torch.bfloat16, "bf16", "")
    fp16 = hardware.Precision(torch.float16, "fp16", "")
    choose = hardware.choose_memory_format
    assert choose("auto", cpu, bf16, "segmentation").channels_last
    assert choose("auto", cpu, bf16, "classification").channels_last
    assert choose("auto", cuda, fp16, "segmentation").channels_last
    assert not choose("auto", cpu, fp32, "segmentation").channels_last
    assert not choose("auto", cuda, fp16, "detection").channels_last
    assert choose(True, cpu, fp32, "detection").channels_last and not choose(False, cpu, bf16, "segmentation").channels_last
    with pytest.raises(ConfigError, match="train.channels_last = 'yes'"):
        choose("yes", cpu, fp32, "segmentation")


def test_channels_last_changes_the_layout_not_the_training(tmp_path, caplog):
    """Three fp32 SGD steps in NHWC end with the weights of three in NCHW (to rounding; SGD, since Adam's first steps
    turn the rounding of near-zero gradients into steps of +-lr), and the run logs and records the memory format."""
    weights = {}
    for flag in (False, True):
        raw = seg_recipe(tmp_path / "shapes", tmp_path / f"run_{flag}", iterations=3)
        raw["train"].update(channels_last=flag, amp="none", optimizer="sgd", lr=0.01)
        with caplog.at_level("INFO", logger="resdense.engine.trainer"):
            assert main(["train", str(write(raw, tmp_path / f"seg_{flag}.yaml")), "--set", "eval.every_iters=0"]) == 0
        recorded = json.loads((tmp_path / f"run_{flag}" / "metrics.json").read_text())["memory_format"]
        assert recorded == {"channels_last": flag, "reason": f"train.channels_last = {str(flag).lower()}"}
        weights[flag] = torch.load(tmp_path / f"run_{flag}" / "last.pt", weights_only=True)["model"]
    conv = next(k for k, v in weights[True].items() if v.ndim == 4)
    assert weights[True][conv].is_contiguous(memory_format=torch.channels_last)
    assert not weights[False][conv].is_contiguous(memory_format=torch.channels_last)
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-3, atol=1e-4, msg=k)  # weights ~0.1-1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory format ")]
    assert lines == ["memory format contiguous (train.channels_last = false)",
                     "memory format channels_last (train.channels_last = true)"]


# ---- downloads that cannot happen --------------------------------------------------------------------------------
_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.mark.parametrize("failure, shown", [
    (urllib.error.URLError("[Errno -3] Temporary failure in name resolution"), "URLError: [Errno -3]"),
    (urllib.error.HTTPError(_URL, 403, "Forbidden", {}, None), "HTTPError: HTTP Error 403: Forbidden"),
    (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError"),
    (RuntimeError('invalid hash value (expected "f37072fd", got "00000000")'), "invalid hash value"),
])
def test_failed_download_is_one_line_naming_weights_url_cache_and_path(monkeypatch, failure, shown):
    def refuse(url, **kwargs):
        assert url == _URL
        raise failure

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet18", weights="imagenet")
    msg = str(info.value)
    assert "\n" not in msg and shown in msg
    assert "resnet18 IMAGENET1K_V1" in msg and _URL in msg and "weights=PATH" in msg
    assert str(cache_path(_URL)) in msg and str(cache_path(_URL)).endswith("hub/checkpoints/resnet18-f37072fd.pth")


def test_failed_detector_download_names_the_detector(monkeypatch):
    from resdense.heads import build_detector

    def refuse(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(WeightsError, match=r"fasterrcnn_resnet50_fpn COCO_V1 weights from https://\S+ .*weights=PATH"):
        build_detector("faster_rcnn", backbone="resnet50", num_classes=91, weights="coco")


def test_cli_offline_weights_exit_2_with_one_line(monkeypatch, tmp_path, capsys):
    def refuse(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    cfg = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2), tmp_path / "seg.yaml")
    assert main(["train", str(cfg), "--set", "model.weights_backbone=imagenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("resdense train: error: could not download the resnet18 IMAGENET1K_V1 weights from ")
    assert "weights=PATH" in err and "hub/checkpoints/resnet18-f37072fd.pth" in err
