"""Data loading against the reference libraries, measured in one run: per-image throughput, and a
train2017-sized annotation file.

Throughput part: resdense ``CocoDetection`` + ``detection_transforms`` vs torchvision's ``CocoDetection`` +
``wrap_dataset_for_transforms_v2`` + v2 transforms, on the same files. Both pipelines do the same work per image:
decode a 512x512 JPEG, parse its COCO targets (and decode its instance masks when asked), random resized crop to
512x512 (scale 0.25-1), horizontal flip, colour jitter, drop boxes that the crop removed, return a float32
[3, 512, 512] image in [0, 1]. Single process, one thread each, best of 3 rounds that alternate the two pipelines.

Scale part: a train2017-sized instances file (``tests/data/synthetic_coco.py``: 118,287 images, ~670k annotations,
80 categories, ~290 MB), generated once into a cache folder outside the repository (``--scale`` shrinks it), read
by pycocotools ``COCO(path)`` and by ``CocoDetection(images, path, masks=True)``. Each call runs in a fresh process
that imports the same modules first (torch included), so that the peaks compare the work, not the imports; each is
measured ``--rounds`` times, alternating, keeping the best time (the machine may be shared). Times (wall and CPU)
are the call's; peak RSS is the process's high-water mark (``VmHWM``), printed with the RSS it had before the call.
The constructor checks that every image exists, so each ``file_name`` is a hard link to a black JPEG of its size.
``--samples N`` then iterates N samples (shuffled) with 2 ``DataLoader`` workers and reports how much private
memory the workers gained (``/proc/<pid>/smaps_rollup``), and how much of it are pages copied on write out of the
dataset's process (what they shared with it and no longer do): the cost of the dataset's storage in each worker.
``--profile`` runs the construction under cProfile and tracemalloc instead (on a ``--scale 0.1`` file, say).

    .venv/bin/python benchmarks/data_speed.py [--part all|throughput|scale] [--images 48] [--size 512]
        [--scale 1.0] [--rounds 2] [--samples 2000] [--cache DIR] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CocoDetection as TorchvisionCoco
from torchvision.datasets import wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # the repository, for tests/
from resdense.data import CocoDetection, detection_transforms, make_shapes  # noqa: E402
from resdense.files import write_text  # noqa: E402
from resdense.hardware import cpu_capability, native_bf16  # noqa: E402
from tests.data.synthetic_coco import placeholder_images, synthetic_instances  # noqa: E402

TRAIN2017_IMAGES = 118_287


def torchvision_pipeline(images, ann, size: int, masks: bool):
    tf = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(min_size=2),
    ])
    with contextlib.redirect_stdout(io.StringIO()):
        ds = TorchvisionCoco(str(images), str(ann), transforms=tf)
    keys = {"boxes", "labels", "image_id"} | ({"masks"} if masks else set())
    return wrap_dataset_for_transforms_v2(ds, target_keys=keys)


def resdense_pipeline(images, ann, size: int, masks: bool):
    return CocoDetection(images, ann, transforms=detection_transforms(train=True, size=size, seed=0), masks=masks)


def rates(datasets, repeats: int = 3) -> list[float]:
    """Best-of-``repeats`` img/s of each dataset, the pipelines timed in turn in every round so that a change in
    machine load (this CPU is shared) hits both alike."""
    for ds in datasets:
        for i in range(min(4, len(ds))):  # warm-up (imports, caches)
            ds[i]
    best = [float("inf")] * len(datasets)
    for _ in range(repeats):
        for k, ds in enumerate(datasets):
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            best[k] = min(best[k], time.perf_counter() - t0)
    return [len(ds) / t for ds, t in zip(datasets, best, strict=True)]


def throughput_part(n_images: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shapes = make_shapes(tmp, n_train=n_images, n_val=0, size=size, seed=0)
        split = shapes.train
        print(f"{n_images} COCO images of {size}x{size} (make_shapes), training transforms to "
              f"{size}x{size}; torch threads 1")
        print(f"{'pipeline':<12} {'torchvision img/s':>18} {'resdense img/s':>15} {'speed-up':>9}")
        for masks in (False, True):
            ref, ours = rates([torchvision_pipeline(split.images, split.instances, size, masks),
                               resdense_pipeline(split.images, split.instances, size, masks)])
            name = "masks on" if masks else "boxes only"
            print(f"{name:<12} {ref:>18.1f} {ours:>15.1f} {ours / ref:>8.2f}x")


# ---- scale part ------------------------------------------------------------------------------------------------
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _memory_mib() -> tuple[float, float]:
    """``(private, shared)`` memory of this process (``smaps_rollup``). A page that copy-on-write copies out of the
    parent moves from shared to private; what the process allocates for itself adds to private only."""
    with open("/proc/self/smaps_rollup") as f:
        kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split(":")[0].endswith(("_Clean", "_Dirty"))}
    return ((kib["Private_Clean"] + kib["Private_Dirty"]) / 1024, (kib["Shared_Clean"] + kib["Shared_Dirty"]) / 1024)


class _WorkerMemory(torch.utils.data.Dataset):
    """Loads the wrapped dataset's samples and returns only ``(worker pid, its (private, shared) MiB or None)``:
    the samples' tensors never travel, so what grows is the workers' own memory."""

    def __init__(self, dataset, every: int) -> None:
        self.dataset, self.every = dataset, every

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.dataset[index]
        self.count = getattr(self, "count", 0) + 1
        return os.getpid(), (_memory_mib() if self.count == 1 or self.count % self.every == 0 else None)


def _child(mode: str, path: str, images_dir: str, samples: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from pycocotools.coco import COCO

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # pycocotools vs numpy 2 noise
    out = {"rss_before_mib": _rss_mib()}
    t0, cpu0 = time.perf_counter(), time.process_time()
    if mode == "pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            obj = COCO(path)
        out.update(images=len(obj.imgs), annotations=len(obj.anns))
    else:
        obj = CocoDetection(images_dir, path, masks=True)
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
    out["rss_after_mib"], out["peak_mib"] = _rss_mib(), _status_mib("VmHWM")
    if mode == "iterate":
        loader = torch.utils.data.DataLoader(_WorkerMemory(obj, 250), batch_size=None, num_workers=2,
                                             sampler=np.random.default_rng(0).permutation(len(obj))[:samples].tolist())
        first: dict = {}
        last: dict = {}
        t0 = time.perf_counter()
        for pid, memory in loader:
            if memory is not None:
                first.setdefault(pid, memory)
                last[pid] = memory
        out["iterate_seconds"] = time.perf_counter() - t0
        out["worker_private_first_mib"] = sum(m[0] for m in first.values())
        out["worker_private_growth_mib"] = sum(last[p][0] - first[p][0] for p in first)
        out["worker_unshared_mib"] = sum(first[p][1] - last[p][1] for p in first)
    print(json.dumps(out))


def _measure(mode: str, path: Path, images_dir: Path, samples: int = 0) -> dict:
    """Run ``_child`` in a fresh interpreter and return what it measured. Its peak RSS is its own ``VmHWM``
    (measured before any loader worker starts): the child's ``ru_maxrss`` would not do, since Linux starts an
    exec'd process's ``ru_maxrss`` at its parent's high-water mark, and this parent may have decoded the file."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--path", str(path),
           "--images-dir", str(images_dir), "--samples", str(samples)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} child failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dataset_files(cache: Path, scale: float) -> tuple[Path, Path]:
    """The generated file and its image folder for ``scale``, made once (deterministic) and kept in ``cache``."""
    n = max(1, round(TRAIN2017_IMAGES * scale))
    folder = cache / f"synthetic_train2017_{n}"
    path = folder / "instances.json"
    if not path.exists():
        t0 = time.perf_counter()
        stats = synthetic_instances(path, n)
        print(f"generated {path} ({stats['images']} images, {stats['annotations']} annotations, {stats['crowd']} "
              f"crowd, {stats['bytes'] / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    if not (folder / "images" / ".complete").exists():
        placeholder_images(path, folder / "images")
        write_text(folder / "images" / ".complete", "")
    return path, folder / "images"


def _profile(path: Path, images_dir: Path) -> None:
    import cProfile
    import pstats
    import tracemalloc

    prof = cProfile.Profile()
    prof.runcall(CocoDetection, images_dir, path, masks=True)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    tracemalloc.start(8)
    ds = CocoDetection(images_dir, path, masks=True)
    peak = tracemalloc.get_traced_memory()[1]
    snap = tracemalloc.take_snapshot()
    print(f"tracemalloc: peak {peak / 2**20:.0f} MiB during construction; held by the dataset afterwards "
          f"({len(ds)} images), by line:")
    for stat in snap.statistics("lineno")[:15]:
        print(f"  {stat.size / 2**20:8.1f} MiB {stat.count:>10} blocks  {stat.traceback[0]}")


def scale_part(scale: float, samples: int, rounds: int, cache: Path, profile: bool) -> None:
    path, images_dir = _dataset_files(cache, scale)
    if profile:
        _profile(path, images_dir)
        return
    names = {"pycocotools": "pycocotools COCO(path)", "resdense": "CocoDetection(..., masks=True)"}
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(rounds):  # alternating, in turn first, so that the shared machine's load hits both alike
        for mode in (list(names) if r % 2 == 0 else list(names)[::-1]):
            runs[mode].append(_measure(mode, path, images_dir))
    best = {k: {"seconds": min(m["seconds"] for m in v), "cpu_seconds": min(m["cpu_seconds"] for m in v),
                "peak_mib": max(m["peak_mib"] for m in v), "rss_before_mib": max(m["rss_before_mib"] for m in v),
                "rss_after_mib": max(m["rss_after_mib"] for m in v)} for k, v in runs.items()}
    ref, ours = best["pycocotools"], best["resdense"]
    info = runs["pycocotools"][0]
    print(f"\n{path} ({path.stat().st_size / 1e6:.0f} MB, {info['images']} images, {info['annotations']} "
          f"annotations); each call in a fresh process after the same imports, best time (highest peak) of {rounds}")
    print(f"  {'':34s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MiB':>13s} {'RSS before':>11s}")
    for mode, m in best.items():
        print(f"  {names[mode]:34s} {m['seconds']:7.2f} {m['cpu_seconds']:7.2f} {m['peak_mib']:13.0f} "
              f"{m['rss_before_mib']:11.0f}")
    print(f"  ours / pycocotools: wall time {ours['seconds'] / ref['seconds']:.2f}x, CPU time "
          f"{ours['cpu_seconds'] / ref['cpu_seconds']:.2f}x, peak RSS "
          f"{ours['peak_mib'] / ref['peak_mib']:.2f}x, peak above the imports "
          f"{(ours['peak_mib'] - ours['rss_before_mib']) / (ref['peak_mib'] - ref['rss_before_mib']):.2f}x; "
          f"held after construction: ours {ours['rss_after_mib'] - ours['rss_before_mib']:.0f} MiB, pycocotools "
          f"{ref['rss_after_mib'] - ref['rss_before_mib']:.0f} MiB")
    if samples:
        it = _measure("iterate", path, images_dir, samples)
        print(f"  {samples} samples (masks decoded, no transforms) with 2 workers in {it['iterate_seconds']:.0f} s: "
              f"the workers' private memory {it['worker_private_first_mib']:.0f} MiB after their first sample, "
              f"{it['worker_private_growth_mib']:+.0f} MiB by the end, of which {it['worker_unshared_mib']:.0f} MiB "
              "copied on write from the dataset's process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "throughput", "scale"), default="all")
    parser.add_argument("--images", type=int, default=48, help="throughput part: images")
    parser.add_argument("--size", type=int, default=512, help="throughput part: image size")
    parser.add_argument("--scale", type=float, default=1.0, help="scale part: fraction of train2017's 118,287 images")
    parser.add_argument("--samples", type=int, default=2000, help="scale part: samples to iterate (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="scale part: measurements of each")
    parser.add_argument("--cache", type=Path, help="scale part: folder of the generated files (default: "
                        "$XDG_CACHE_HOME/resdense-bench or ~/.cache/resdense-bench)")
    parser.add_argument("--profile", action="store_true", help="scale part: cProfile and tracemalloc instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.path, args.images_dir, args.samples)
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # pycocotools vs numpy 2 noise
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU capability {cpu_capability()}, "
          f"native bf16 {native_bf16()} (oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}")
    if args.part in ("all", "throughput"):
        throughput_part(args.images, args.size)
    if args.part in ("all", "scale"):
        cache = args.cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resdense-bench"
        scale_part(args.scale, args.samples, args.rounds, cache, args.profile)


if __name__ == "__main__":
    main()
