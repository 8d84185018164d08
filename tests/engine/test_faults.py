"""Faults produced where users meet them, not mocked a layer above: a full file system, a target below a regular file,
a real Ctrl-C to the process group, a truncated ``last.pt``, an image that disappears or rots while training runs.
Each ends in one line naming the file and what happened, and loses no work."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from resdense.cli import main
from resdense.config import save_config
from resdense.engine import atomic_save, config_from_dict, load_checkpoint, run_training
from resdense.engine.report import write_report
from resdense.errors import CheckpointError, DataError, WriteError
from resdense.visualize import save_image

from .recipes import AfterStep, seg_recipe, write

ENOSPC = "(ENOSPC: No space left on device)"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def _small_seg(shapes: Path, out: Path, **train) -> dict:
    """The test segmentation recipe on three stages (c1-c3): a checkpoint of about 8 MB."""
    recipe = seg_recipe(shapes, out, **train)
    recipe["model"]["decoder_channels"] = [16, 16, 16]
    return recipe


# ---- a full disk ------------------------------------------------------------------------------------------------
def _writers(tmp_path):
    cfg = config_from_dict(seg_recipe(tmp_path / "shapes", tmp_path / "run"))
    return {
        "last.pt": lambda p, i: atomic_save({"model": {"w": torch.full((50_000,), float(i))}}, p),
        "config.yaml": lambda p, i: save_config(cfg, p),
        "metrics.json": lambda p, i: write_report({"mIoU": 0.5 + i, "IoU": [0.1]}, ["a"], p.parent),
        "overlay.png": lambda p, i: save_image(np.full((64, 64, 3), 40 * i, np.uint8), p),
    }


@pytest.mark.parametrize("name", ["last.pt", "config.yaml", "metrics.json", "overlay.png"])
def test_every_writer_on_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, small_disk, name):
    disk = small_disk(4 << 20)
    write_file = _writers(tmp_path)[name]
    path = disk.folder / name
    write_file(path, 0)
    before = path.read_bytes()
    disk.fill()
    with pytest.raises(WriteError) as err:
        write_file(path, 1)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and ENOSPC in message and f"the previous {name} is intact" in message
    assert "\n" not in message
    assert path.read_bytes() == before
    assert _leftovers(disk.folder) == []


def test_a_checkpoint_on_a_full_disk_is_a_checkpoint_error(tmp_path, small_disk):
    disk = small_disk(1 << 20)
    with pytest.raises(CheckpointError, match=re.escape(f"{disk.folder / 'last.pt'}: checkpoint not written "
                                                        f"{ENOSPC}; there is no earlier last.pt")):
        atomic_save({"model": {"w": torch.zeros(1_000_000)}}, disk.folder / "last.pt")  # 4 MB on a 1 MB disk
    assert list(disk.folder.iterdir()) == []


def test_training_on_a_full_disk_exits_1_with_one_line_and_keeps_last_pt(tmp_path, small_disk, capsys):
    """The user's case: ``resdense train ... --set train.checkpoint_every=1`` with the run directory on a disk that
    holds one checkpoint and not two."""
    shapes = tmp_path / "shapes"
    probe = _small_seg(shapes, tmp_path / "probe", iterations=1)
    run_training(write(probe, tmp_path / "probe.yaml"))
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    disk = small_disk(int(size * 1.6))
    recipe = _small_seg(shapes, disk.folder / "run", iterations=6, checkpoint_every=1)
    code = main(["train", str(write(recipe, tmp_path / "full.yaml"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("resdense train: error: ") and ENOSPC in err[0]
    assert str(disk.folder / "run") in err[0]
    assert _leftovers(disk.folder) == []
    assert load_checkpoint(disk.folder / "run" / "last.pt")["iteration"] >= 1  # the one that fitted is whole


def test_a_run_directory_below_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    recipe = _small_seg(tmp_path / "shapes", tmp_path / "notes.txt" / "run")
    assert main(["train", str(write(recipe, tmp_path / "r.yaml"))]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"resdense train: error: {tmp_path / 'notes.txt' / 'run'}: run directory not created (ENOTDIR: " \
        "Not a directory)"
    with pytest.raises(CheckpointError, match=r"notes\.txt/best\.pt: checkpoint not written \(ENOTDIR: Not a "
                                              r"directory\); there is no earlier best\.pt$"):
        atomic_save({"model": {}}, tmp_path / "notes.txt" / "best.pt")


# ---- Ctrl-C -----------------------------------------------------------------------------------------------------
def _rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _train_cli(cfg: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread, as this process
    return subprocess.Popen([sys.executable, "-m", "resdense", "train", str(cfg)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_ctrl_c_writes_last_pt_says_one_line_and_resumes_exactly(tmp_path):
    """SIGINT to the whole foreground process group, as a terminal's Ctrl-C sends it (loader workers included)."""
    shapes = tmp_path / "shapes"
    common = {"iterations": 24, "num_workers": 1, "log_every": 1}
    ref = run_training(write(_small_seg(shapes, tmp_path / "ref", **common), tmp_path / "ref.yaml"))
    cfg = write(_small_seg(shapes, tmp_path / "run", **common), tmp_path / "run.yaml")
    proc = _train_cli(cfg, start_new_session=True)  # its own process group, as a shell's foreground job
    deadline = time.monotonic() + 300
    while _rows(tmp_path / "run" / "log.csv") < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = tmp_path / "run" / "last.pt"
    stopped = load_checkpoint(last)["iteration"]
    assert 3 <= stopped < 24
    assert lines[-1] == f"resdense train: error: SIGINT received: stopped after iteration {stopped} of 24, {last} " \
        "holds it; the same command resumes from there"
    resumed = _train_cli(cfg)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt")["model"], load_checkpoint(last)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())["final"] == ref["final"]


# ---- a truncated last.pt ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_last_pt_on_resume_is_one_line_saying_what_to_do(tmp_path, capsys, damage):
    recipe = _small_seg(tmp_path / "shapes", tmp_path / "run", iterations=6)
    cfg = write(recipe, tmp_path / "r.yaml")
    run_training(cfg)
    last = tmp_path / "run" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:100] + bytes(len(data) - 100))
    assert main(["train", str(cfg), "--set", "train.iterations=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"resdense train: error: {last}: not a readable checkpoint")
    best = tmp_path / "run" / "best.pt"
    assert err.endswith(f"cannot resume: --set train.resume=false starts afresh, or resume from {best} with "
                        f"--resume {best}")
    # both ways out work
    assert main(["train", str(cfg), "--set", "train.iterations=8", "--resume", str(best)]) == 0
    assert load_checkpoint(last)["iteration"] == 8
    last.write_bytes(b"PK\x03\x04 garbage")
    assert main(["train", str(cfg), "--set", "train.iterations=8", "--set", "train.resume=false"]) == 0
    assert load_checkpoint(last)["iteration"] == 8


# ---- images that disappear or rot during training ---------------------------------------------------------------
def _mask_recipe(tmp_path, bad_images: str) -> dict:
    from resdense.data import make_shapes

    shapes = make_shapes(tmp_path / "shapes", n_train=12, n_val=4, size=64, seed=0)
    folder = tmp_path / "folder"
    shutil.copytree(shapes.train.images, folder / "images")
    shutil.copytree(shapes.train.masks, folder / "masks")
    names = ["background", "red", "green", "blue"]
    recipe = _small_seg(tmp_path / "shapes", tmp_path / "run", iterations=9)
    recipe["data"] = {
        "dataset": "mask",
        "train": {"images_dir": str(folder / "images"), "masks_dir": str(folder / "masks"), "classes": names,
                  "bad_images": bad_images},
        "val": {"images_dir": str(shapes.val.images), "masks_dir": str(shapes.val.masks), "classes": names},
        "train_transforms": {"size": 64}, "val_transforms": {"size": None},
    }
    return recipe


def _rot_after(iteration: int, victims: list[Path]):
    def hook(trainer, it, losses):
        if it == iteration:
            victims[0].unlink()  # disappears
            victims[1].write_bytes(victims[1].read_bytes()[:40])  # truncated mid-file
    return hook


def test_an_image_lost_during_training_is_one_line_naming_it(tmp_path):
    recipe = _mask_recipe(tmp_path, "raise")
    victims = sorted((tmp_path / "folder" / "images").iterdir())[:2]
    with pytest.raises(DataError) as err:
        run_training(config_from_dict(recipe), hooks=[AfterStep(_rot_after(3, victims))])
    message = str(err.value)
    assert "\n" not in message and any(v.name in message for v in victims)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3  # the end-of-epoch checkpoint


def test_an_image_lost_during_training_is_skipped_and_counted_with_bad_images_skip(tmp_path):
    recipe = _mask_recipe(tmp_path, "skip")
    victims = sorted((tmp_path / "folder" / "images").iterdir())[:2]
    with pytest.warns(UserWarning, match=r"skipped unreadable sample") as caught:
        result = run_training(config_from_dict(recipe), hooks=[AfterStep(_rot_after(3, victims))])
    assert result["iterations"] == 9
    named = {v.name for v in victims if any(v.name in str(w.message) for w in caught)}
    assert named == {v.name for v in victims}  # each lost file is named, every epoch it is met
