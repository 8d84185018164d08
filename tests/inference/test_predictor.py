"""The Predictor, sliding-window segmentation, sliced detection and test-time augmentation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resdense.backbones import create_backbone
from resdense.engine import SegmentationTask, run_training
from resdense.engine.tasks.segmentation import model_divisor
from resdense.errors import ConfigError, DataError
from resdense.heads import UNet
from resdense.inference import TTA, Predictor, run_prediction, sliding_window_logits
from resdense.inference.tiling import greedy_merge, merge_detections, sliced_detection, window_starts, windows
from resdense.inference.tta import tta_detections, tta_logits, weighted_box_fusion

from ..engine.recipes import det_recipe, seg_recipe, write


def small_unet() -> UNet:
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", out_features=("c1", "c2", "c3"))
    return UNet(backbone, num_classes=3, decoder_channels=[16, 16, 16]).eval()


def local_fcn(channels: int = 8) -> nn.Module:
    """A fully convolutional model whose output at a pixel depends on the 5 x 5 pixels around it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(channels, 2, 1)).eval()


# ---- windows ----------------------------------------------------------------------------------------------------
def test_windows_cover_the_image_with_the_stated_stride_and_the_last_one_on_the_edge():
    assert window_starts(100, 128, 0.25) == [0]
    assert window_starts(300, 128, 0.25) == [0, 86, 172]  # stride <= 128 - 32, evenly spread, the last ending at 300
    assert window_starts(128 + 96 * 4, 128, 0.25) == [0, 96, 192, 288, 384]
    boxes = windows(300, 200, 128, 0.25)
    covered = np.zeros((300, 200), bool)
    for y0, x0, y1, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (128, 128)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_tiled_equals_whole_image_exactly_when_the_tile_covers_it():
    model = small_unet()
    image = torch.randn(3, 100, 130)
    with torch.no_grad():
        whole = model(nn.functional.pad(image[None], (0, 30, 0, 28)))[0, :, :100, :130]  # padded to 32, cropped
    tiled = sliding_window_logits(model, image, 160, overlap=0.25, divisor=32)
    assert torch.equal(tiled, whole)
    assert torch.equal(sliding_window_logits(model, image, None, divisor=32), whole)


@pytest.mark.parametrize("blend, tolerance", [("gaussian", 5e-3), ("uniform", 0.5)])
def test_tiled_matches_whole_on_a_large_image_within_the_stated_tolerance(blend, tolerance):
    # A window's border pixels see zero padding where the whole image has neighbours; with a 16 px overlap every
    # pixel is far inside some window. Gaussian weights give a window's border pixels a share of about 1e-3:
    # stated tolerance 5e-3 of the logits' range (the uniform mean keeps a border pixel at half weight: 0.5).
    model = local_fcn()
    image = torch.rand(3, 230, 310)
    with torch.no_grad():
        whole = model(image[None])[0]
    tiled = sliding_window_logits(model, image, 64, overlap=0.25, blend=blend, tile_batch=3, divisor=1)
    scale = float(whole.abs().max())
    err = float((tiled - whole).abs().max()) / scale
    assert err < tolerance
    assert float((tiled - whole).abs().mean()) / scale < tolerance / 10


def test_windows_run_in_batches_no_larger_than_tile_batch():
    seen = []

    class Recording(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x[:, :2]

    sliding_window_logits(Recording(), torch.rand(3, 1000, 700), 128, overlap=0.25, tile_batch=3, divisor=32)
    assert seen and all(s[0] <= 3 and s[2] <= 128 and s[3] <= 128 for s in seen)
    assert sum(s[0] for s in seen) == len(windows(1000, 700, 128, 0.25))


_PEAK = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from resdense.inference import sliding_window_logits

    def status(key):  # kB, from the kernel's account of this process
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                          nn.Conv2d(32, 2, 1)).eval()
    image = torch.rand(3, 1536, 1536)
    sliding_window_logits(model, image[:, :64, :64], None, divisor=1)  # warm up the allocator and the kernels
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = status("VmRSS")
    tile = None if sys.argv[1] == "whole" else 256
    sliding_window_logits(model, image, tile, overlap=0.25, tile_batch=2, divisor=1)
    print(before / 1024, status("VmHWM") / 1024, (status("VmHWM") - before) / 1024)
""")


def test_tiled_peak_memory_is_bounded_by_the_tile_batch_not_the_image():
    def peak_mib(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _PEAK, mode], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        line = out.stdout.strip().splitlines()[-1]
        print(mode, "MiB resident before, peak, peak above before:", line)
        return float(line.split()[-1])

    whole, tiled = peak_mib("whole"), peak_mib("tiled")
    # whole image: 32-channel activations of 1536^2 pixels are 288 MiB each; tiles: 2 x 256^2 pixels = 16 MiB,
    # plus the image-sized output (2 x 9 MiB logits, 9 MiB weights)
    assert whole > 400, f"whole image: peak {whole:.0f} MiB above the warm process"
    assert tiled < whole / 4, f"tiled {tiled:.0f} MiB vs whole {whole:.0f} MiB"


# ---- test-time augmentation --------------------------------------------------------------------------------------
def test_tta_gives_back_the_identity_for_a_flip_equivariant_model():
    base = local_fcn()

    def equivariant(x):  # f(x) + flip(f(flip(x))) is equivariant under both flips by construction
        y = base(x[None])[0]
        for dims in ((-1,), (-2,), (-1, -2)):
            y = y + base(x.flip(dims)[None])[0].flip(dims)
        return y

    image = torch.rand(3, 40, 52)
    plain = equivariant(image)
    for flips in (("horizontal",), ("vertical",), ("horizontal", "vertical")):
        out = tta_logits(equivariant, image, TTA(flips=flips, scales=(1.0,)))
        torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    # and a model that is not equivariant is changed by it (the test above can fail)
    assert not torch.allclose(tta_logits(lambda x: base(x[None])[0], image, TTA(scales=(1.0,))), base(image[None])[0])


def bright_box_detector(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detects the box around the pixels brighter than 0.5: equivariant under flips and shifts by construction."""
    ys, xs = (image.mean(0) > 0.5).nonzero(as_tuple=True)
    if not len(ys):
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_detection_tta_maps_boxes_back_to_the_original_frame(merge):
    image = torch.zeros(3, 60, 80)
    image[:, 10:25, 50:70] = 1.0
    out = tta_detections(bright_box_detector, image, TTA(flips=("horizontal", "vertical"), scales=(1.0,), merge=merge))
    assert len(out["boxes"]) == 1
    torch.testing.assert_close(out["boxes"], torch.tensor([[50.0, 10.0, 70.0, 25.0]]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.9]))
    # scale 2: bilinear resizing of the bright block moves its edge by at most one pixel of the copy
    scaled = tta_detections(bright_box_detector, image, TTA(flips=(), scales=(2.0,), merge=merge))
    torch.testing.assert_close(scaled["boxes"], torch.tensor([[50.0, 10.0, 70.0, 25.0]]), atol=0.5, rtol=0)


def test_weighted_box_fusion_averages_overlapping_boxes_by_score():
    parts = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},
             {"boxes": torch.tensor([[2.0, 0, 12, 10], [50, 50, 60, 60]]), "scores": torch.tensor([0.4, 0.6]),
              "labels": torch.tensor([1, 1])}]
    out = weighted_box_fusion(parts, iou_threshold=0.5)
    # the first two (IoU 0.67) fuse: coordinates weighted 0.8 : 0.4, score their mean; the lone box is seen by one
    # of two copies: its score is halved
    torch.testing.assert_close(out["boxes"], torch.tensor([[2 / 3, 0, 10 + 2 / 3, 10], [50, 50, 60, 60]]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.6, 0.3]))


def test_sliced_detection_shifts_window_boxes_and_merges_duplicates():
    image = torch.zeros(3, 300, 400)
    image[:, 200:230, 300:340] = 1.0  # seen whole by several windows (overlap 0.5) and by the full image

    def detect(images):
        return [bright_box_detector(im) for im in images]

    for full in (True, False):
        out = sliced_detection(detect, image, 128, overlap=0.5, tile_batch=4, full_image=full)
        assert len(out["boxes"]) == 1
        torch.testing.assert_close(out["boxes"], torch.tensor([[300.0, 200.0, 340.0, 230.0]]))


def test_greedy_merge_joins_the_pieces_of_a_cut_object_class_by_class():
    parts = [{"boxes": torch.tensor([[0.0, 0, 40, 30], [0, 0, 20, 30], [0, 0, 20, 30]]),
              "scores": torch.tensor([0.5, 0.9, 0.8]), "labels": torch.tensor([1, 1, 2])}]
    out = greedy_merge(parts)
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0, 40, 30], [0, 0, 20, 30]]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.8]))


def test_merge_detections_is_class_wise():
    box = torch.tensor([[0.0, 0, 10, 10]])
    parts = [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
             {"boxes": box, "scores": torch.tensor([0.8]), "labels": torch.tensor([2])},
             {"boxes": box, "scores": torch.tensor([0.7]), "labels": torch.tensor([1])}]
    out = merge_detections(parts)
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.8])


# ---- the Predictor -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    run_training(write(seg_recipe(tmp / "shapes", tmp / "run", progress=False), tmp / "seg.yaml"))
    return tmp


def test_predictor_takes_paths_arrays_pil_and_tensors_alike(seg_run):
    predictor = Predictor.from_checkpoint(seg_run / "run" / "last.pt")
    path = sorted((seg_run / "shapes" / "val" / "images").glob("*.jpg"))[0]
    rgb = np.array(Image.open(path).convert("RGB"))
    outs = [predictor(path), predictor(str(path)), predictor(rgb), predictor(Image.open(path)),
            predictor(torch.from_numpy(rgb).permute(2, 0, 1)), predictor(torch.from_numpy(rgb).permute(2, 0, 1) / 255)]
    for out in outs[1:]:
        assert torch.equal(out["mask"], outs[0]["mask"])
    assert outs[0]["mask"].shape == rgb.shape[:2] and outs[0]["logits"].shape == (4, *rgb.shape[:2])


def test_predictor_agrees_with_the_evaluation_path_and_tiles_exactly(seg_run):
    from resdense.engine import load_model
    from resdense.engine.build import build_dataset

    model, run = load_model(seg_run / "run" / "last.pt")
    val = build_dataset(run.config.data, "segmentation", "val")
    image, _ = val[0]
    expected = run.task.predict(model, [image])[0]
    predictor = Predictor(model, run.task, config=run.config)
    assert torch.equal(predictor(val.image_paths[0])["mask"], expected)
    tiled = Predictor(model, run.task, config=run.config, tile=64)  # covers the 64 px image: the same numbers
    assert torch.equal(tiled(val.image_paths[0])["logits"], predictor(val.image_paths[0])["logits"])


def test_predictor_refuses_bad_input_in_one_line(seg_run, tmp_path):
    predictor = Predictor.from_checkpoint(seg_run / "run" / "last.pt")
    with pytest.raises(DataError, match="missing.png"):
        predictor(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match=r"shape \(2, 5, 5\)"):
        predictor(torch.rand(2, 5, 5))
    with pytest.raises(ConfigError, match="overlap = 1.0"):
        Predictor.from_checkpoint(seg_run / "run" / "last.pt", tile=32, overlap=1.0)
    with pytest.raises(ConfigError, match="tta flips"):
        TTA(flips=("diagonal",))
    with pytest.raises(ConfigError, match="needs the number of classes"):
        Predictor(small_unet(), "segmentation")


def test_run_prediction_tiled_with_tta_writes_an_overlay_per_image(seg_run, tmp_path):
    images = sorted((seg_run / "shapes" / "val" / "images").glob("*.jpg"))[:2]
    paths = run_prediction(None, seg_run / "run" / "last.pt", images, tmp_path / "out", tile=32, overlap=0.5,
                           tta=TTA(scales=(1.0, 1.5)))
    assert [p.name for p in paths] == [im.stem + ".png" for im in images]
    assert all(np.asarray(Image.open(p)).shape[1] >= 64 for p in paths)


def test_detection_predictor_returns_boxes_in_the_image_frame_tiled_or_not(tmp_path):
    run_training(write(det_recipe(tmp_path / "shapes", tmp_path / "run", progress=False), tmp_path / "det.yaml"))
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "last.pt", score_threshold=0.0)
    path = sorted((tmp_path / "shapes" / "val" / "images").glob("*.jpg"))[0]
    big = np.asarray(Image.open(path).convert("RGB").resize((160, 128)))
    for p in (predictor, Predictor.from_checkpoint(tmp_path / "run" / "last.pt", score_threshold=0.0, tile=64,
                                                   tta=TTA(scales=(1.0,)))):
        out = p(big)
        assert set(out) >= {"boxes", "labels", "scores"}
        assert len(out["boxes"]) <= 100
        if len(out["boxes"]):
            assert float(out["boxes"][:, 2].max()) <= 160 and float(out["boxes"][:, 3].max()) <= 128
            assert bool((out["scores"][:-1] >= out["scores"][1:]).all())


def test_classification_predictor_lists_top_k():
    torch.manual_seed(0)
    from resdense.engine import ClassificationTask

    model = create_backbone("resnet18", out_features=("c5",))
    from resdense.heads import Classifier

    clf = Classifier(model, num_classes=4).eval()
    predictor = Predictor(clf, ClassificationTask(["a", "b", "c", "d"]), top_k=3,
                          preprocess={"size": 64, "resize": 72})
    out = predictor(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8))
    assert len(out["top"]) == 3 and {n for n, _ in out["top"]} <= {"a", "b", "c", "d"}
    assert out["probs"].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out["top"][0][1] == pytest.approx(float(out["probs"].max()))


def test_segmentation_task_predict_pads_and_crops_like_the_model_on_a_padded_input():
    model = small_unet()
    task = SegmentationTask(3)
    image = torch.randn(3, 50, 70)
    assert model_divisor(model) == 8  # the U-Net on c1-c3: stride 8
    with torch.no_grad():
        expected = model(nn.functional.pad(image[None], (0, 2, 0, 6)))[0, :, :50, :70].argmax(0)
    assert torch.equal(task.predict(model, [image])[0], expected)
