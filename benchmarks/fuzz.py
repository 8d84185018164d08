"""Fuzz the readers of user files for a given time: the hypothesis tests of ``tests/fuzz``, run for minutes instead
of the CI budget.

The time is split evenly across the six test modules (COCO JSON and the evaluation's inputs, VOC XML, mask folders,
split files, recipes and ``--set`` overrides, checkpoints and weight files), and within a module across its tests,
which repeat runs of fresh random cases until their share is used (``RESDENSE_FUZZ_SECONDS``, see
``tests/fuzz/_fuzz.py``); one pytest process runs them all. Prints, per reader, how many cases ran and whether all of
them survived (a result, or one line of the library's errors); a failure prints pytest's report with hypothesis'
falsifying example, and the script exits with 1.

    .venv/bin/python benchmarks/fuzz.py [--minutes 3] [--files test_coco test_voc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hypothesis
import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = ["test_coco", "test_voc", "test_masks", "test_split_names", "test_config", "test_checkpoint"]
STARTUP_S = 15.0  # pytest's start: imports (torch, cv2, pycocotools...) and collection, not fuzzing


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, hypothesis {hypothesis.__version__}, "
            f"get_cpu_capability() {torch.backends.cpu.get_cpu_capability()}, "
            f"_is_mkldnn_bf16_supported() {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="total time, split evenly across the modules")
    parser.add_argument("--files", nargs="+", default=FILES, choices=FILES)
    args = parser.parse_args()
    share = max(1.0, (args.minutes * 60 - STARTUP_S) / len(args.files))
    print(f"fuzz: {args.minutes:g} min, {share:.0f} s for each of {len(args.files)} modules; {_machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = dict(os.environ, RESDENSE_FUZZ_SECONDS=f"{share:.1f}", RESDENSE_FUZZ_REPORT=str(report),
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", *(f"tests/fuzz/{f}.py" for f in args.files), "-q",
                               "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        result = json.loads(report.read_text()) if report.exists() else {"cases": {}, "module_of": {}, "failed": []}
    failed_modules = {nodeid.split("::")[0].removesuffix(".py").replace("/", ".") for nodeid in result["failed"]}
    bad = proc.returncode != 0
    if bad:
        print((proc.stdout + proc.stderr)[-8000:])
    print(f"cases per reader ({seconds:.0f} s in all):")
    for reader, n in sorted(result["cases"].items()):
        module = result["module_of"][reader]
        status = f"FAILED ({module.rsplit('.', 1)[-1]})" if module in failed_modules else "all survived"
        print(f"  {reader:<16} {n:7d}  {status}")
    if bad and not result["failed"]:
        print(f"pytest exited with {proc.returncode} (crashed?) before reporting its tests")
    print("all survived" if not bad else f"FAILED: {', '.join(sorted(result['failed'])) or 'see above'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
