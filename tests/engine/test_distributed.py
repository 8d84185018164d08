"""Distributed data parallel on torchrun: 2 processes, gloo on the CPU, 64 px shapes, a few iterations.

* 2 ranks x batch b (and 2 ranks x b/2 x 2 micro-batches) train the weights of 1 process x batch 2b;
  ``train.accumulate: 2`` in one process equals the doubled batch too.
* ``resdense eval``'s numbers on 2 ranks (5 images: 3 + 2) are one process's, to the last digit.
* a job stopped by SIGTERM, then one whose rank 1 is SIGKILLed, each resumed: the final weights, logs and
  TensorBoard are bit-identical to an uninterrupted 2-rank run's.
* ``train.sync_bn`` on the CPU is refused with torch's reason; a checkpoint write that finds the disk full stops
  every rank with one line and leaves the previous ``last.pt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from resdense.engine import World, distributed, load_checkpoint, load_config, run_evaluation
from resdense.engine.build import build_dataset
from resdense.errors import ConfigError

from .recipes import det_recipe, gn_unet_trainer, oracle_evaluation, seg_recipe, tensorboard_scalars, write

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def torchrun(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` with this checkout's resdense, one thread per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _recipe(fn, shapes: Path, out: Path, **train) -> dict:
    recipe = fn(shapes, out, **train)
    recipe["data"]["shapes"]["n_val"] = 5  # 5 validation images: 2 ranks score 3 and 2
    # One image per evaluation batch: an image's float32 outputs then do not depend on which images share its batch
    # (oneDNN's kernels differ by batch size at the rounding level), so one process and 2 ranks compute them alike.
    recipe["eval"]["batch_size"] = 1
    return recipe


def _seg(shapes: Path, out: Path) -> dict:
    """The fault test's run: 12 images, 2 ranks x batch 2 (3 iterations per epoch), evaluation every 2 iterations,
    an EMA; a 3-stage U-Net (0.7 M parameters, so checkpoints are small)."""
    recipe = _recipe(seg_recipe, shapes, out, iterations=8, batch_size=2, ema_decay=0.9)
    recipe["model"]["decoder_channels"] = [16, 16, 16]
    recipe["eval"]["every_iters"] = 2
    return recipe


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    cfg = load_config(write(_recipe(seg_recipe, root, root.parent / "unused"), root.parent / "gen.yaml"))
    build_dataset(cfg.data, "segmentation", "val")  # generated once, before the ranks read it
    return root


def _disk_for_one_checkpoint(shapes: Path, tmp: Path, folder: Path) -> bool:
    """Mount a tmpfs at ``folder`` that holds one checkpoint of the full-disk check and not two (root only, as CI
    runs); ``False`` where it cannot, and the worker falls back to a failing ``torch.save``."""
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    probe = gn_unet_trainer(shapes, tmp / "probe", batch_size=2, iterations=1)
    probe.fit()
    size = int((tmp / "probe" / "last.pt").stat().st_size * 1.6)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def checks(shapes, tmp_path_factory):
    """ddp_worker.py's checks on 2 ranks: the reference segmentation run and a detection run (then both checkpoints
    evaluated), the equivalence runs, SyncBatchNorm and the full disk."""
    tmp = tmp_path_factory.mktemp("checks")
    seg = write(_seg(shapes, tmp / "ref"), tmp / "ref.yaml")
    det = _recipe(det_recipe, shapes, tmp / "det", iterations=3, batch_size=1)
    # three steps do not teach Faster R-CNN to localise: keep many low-scoring boxes, so that some match
    det["model"].update(rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=200, box_score_thresh=0.0)
    det = write(det, tmp / "det.yaml")
    out = tmp / "out"
    out.mkdir()
    mounted = _disk_for_one_checkpoint(shapes, tmp, out / "disk_full")
    try:
        proc = torchrun(str(HERE / "ddp_worker.py"), "checks", str(out), str(shapes), str(seg), str(det))
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        yield {"out": out, "ranks": ranks, "seg": seg, "det": det, "tmp": tmp}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out / "disk_full")], capture_output=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_training(a: dict, b: dict, start: dict, what: str) -> None:
    """Every tensor trained, all within 1e-6, and the difference a thousandth of what the steps moved the weights at
    most (L2 over all tensors): rounding, where other samples or another loss scale would differ by about the
    update itself."""
    assert a.keys() == b.keys() == start.keys()
    for k in a:
        assert not torch.equal(a[k], start[k]), f"{what} {k}: not trained"
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{what} {k}: {m}")
    diff = sum(float((a[k] - b[k]).double().square().sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - start[k]).double().square().sum()) for k in a) ** 0.5
    assert diff < 1e-3 * moved, f"{what}: the weights differ by {diff:.3g} (L2), the training moved them {moved:.3g}"


@pytest.mark.parametrize("run", ["gn_b2", "gn_b1_acc2"])
def test_two_ranks_train_the_weights_of_one_process_with_the_global_batch(checks, shapes, tmp_path, run):
    gn_unet_trainer(shapes, tmp_path / "one", batch_size=4).fit()  # 3 steps of batch 4
    start = gn_unet_trainer(shapes, tmp_path / "init").model.state_dict()
    _assert_same_training(_weights(checks["out"] / run / "last.pt"), _weights(tmp_path / "one" / "last.pt"),
                          start, run)
    ckpt = load_checkpoint(checks["out"] / run / "last.pt")
    assert ckpt["world"] == {"size": 2, "batch_size": 2, "accumulate": 1} if run == "gn_b2" else \
        {"size": 2, "batch_size": 1, "accumulate": 2}
    assert len(ckpt["rng_ranks"]) == 2


def test_accumulate_two_micro_batches_equals_the_doubled_batch(shapes, tmp_path):
    for name, batch, k in (("b4", 4, 1), ("b2x2", 2, 2)):
        gn_unet_trainer(shapes, tmp_path / name, batch_size=batch, accumulate=k).fit()
    start = gn_unet_trainer(shapes, tmp_path / "init").model.state_dict()
    _assert_same_training(_weights(tmp_path / "b2x2" / "last.pt"), _weights(tmp_path / "b4" / "last.pt"), start,
                          "accumulate 2")
    # the logged loss of a step is the mean over its micro-batches: the loss of the whole batch
    rows = [(tmp_path / d / "log.csv").read_text().splitlines() for d in ("b4", "b2x2")]
    col = rows[0][0].split(",").index("loss")
    for ra, rb in zip(rows[0][1:], rows[1][1:], strict=True):
        assert float(rb.split(",")[col]) == pytest.approx(float(ra.split(",")[col]), rel=1e-5)


def test_distributed_evaluation_equals_one_process_exactly(checks):
    ranks = checks["ranks"]
    assert [r["shard_of_5"] for r in ranks] == [[0, 2, 4], [1, 3]]  # every image once, no padding repeats
    seg = run_evaluation(checks["seg"], checks["tmp"] / "ref" / "last.pt")
    det = run_evaluation(checks["det"], checks["tmp"] / "det" / "last.pt")
    oracle, scored = oracle_evaluation(checks["det"])
    assert scored == 5 and [r["det_oracle"][1] for r in ranks] == [3, 2]  # each rank scored its share only
    for rank in ranks:  # every rank returns the whole split's numbers
        assert rank["det"] == {k: v for k, v in det.items() if isinstance(v, float)}
        assert rank["det_oracle"][0] == oracle
        assert rank["seg"]["mIoU"] == seg["mIoU"] and rank["seg"]["pixel_accuracy"] == seg["pixel_accuracy"]
        assert all(rank["seg"][f"IoU/{n}"] == seg[f"IoU/{n}"] for n in ("background", "square", "circle"))
        assert rank["seg"]["val_loss"] == pytest.approx(seg["val_loss"], rel=1e-12)  # float sums in another order
    # `resdense eval --json` under torchrun: the same numbers, printed once
    assert [r["cli_eval_exit"] for r in ranks] == [0, 0] and ranks[1]["cli_eval_stdout"] == ""
    assert json.loads(ranks[0]["cli_eval_stdout"])["mIoU"] == seg["mIoU"]
    # numbers worth comparing: a trained U-Net, and detections that match some boxes and miss others (the detector
    # trained for three steps finds nothing yet, so its statistics only show that the path runs)
    assert 0 < seg["mIoU"] < 1 and 0.1 < oracle["bbox/AP"] < 0.9 and 0.2 < oracle["bbox/AR100"] < 1


def test_sync_bn_on_the_cpu_is_refused_with_torchs_reason(checks):
    for rank in checks["ranks"]:
        kind, message = rank["sync_bn"]["torch"]
        assert kind == "ValueError" and "SyncBatchNorm expected input tensor to be on GPU" in message
        kind, message = rank["sync_bn"]["resdense"]
        assert kind == "ConfigError"
        assert message.startswith(f"train.sync_bn = true needs CUDA: torch {torch.__version__.split('+')[0]}'s "
                                  "SyncBatchNorm refuses CPU tensors")
        assert "\n" not in message


def test_disk_full_stops_every_rank_with_one_line_and_keeps_last_pt(checks):
    last = checks["out"] / "disk_full" / "last.pt"
    expected = f"{last}: checkpoint not written (ENOSPC: No space left on device); the previous last.pt is intact"
    assert [r["disk_full"]["error"] for r in checks["ranks"]] == [["CheckpointError", expected]] * 2
    assert checks["ranks"][0]["disk_full"]["disk"] == ("tmpfs" if os.geteuid() == 0 else "quota")
    assert load_checkpoint(last)["iteration"] == 1
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_sigterm_then_a_killed_rank_resume_bit_identical(checks, shapes, tmp_path):
    ref = checks["tmp"] / "ref"  # the same recipe, uninterrupted on 2 ranks
    run = str(write(_seg(shapes, tmp_path / "run"), tmp_path / "run.yaml"))
    # SIGTERM to the job after iteration 3: both ranks finish iteration 4 (an evaluation is due there), rank 0 writes
    # last.pt, and one line is printed (by rank 0)
    term = torchrun(str(HERE / "ddp_worker.py"), "fault", run, "--term-at", "3")
    assert term.returncode != 0
    last = tmp_path / "run" / "last.pt"
    said = f"resdense train: error: SIGTERM received: stopped after iteration 4 of 8, {last} holds it; the same " \
        "command resumes from there"
    assert term.stderr.count(said) == 1, term.stderr[-3000:]
    stopped = load_checkpoint(last)
    assert stopped["iteration"] == 4 and stopped["pending"]["row"]["loss"] > 0
    # resumed: iteration 4's evaluation and checkpoint first, then rank 1 is SIGKILLed after iteration 7
    kill = torchrun(str(HERE / "ddp_worker.py"), "fault", run, "--kill-at", "7")
    assert kill.returncode != 0 and "Signal 9 (SIGKILL) received by PID" in kill.stderr, kill.stderr[-3000:]
    assert load_checkpoint(last)["iteration"] == 6
    # and the plain command again finishes the run
    done = torchrun("-m", "resdense", "train", run)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(last)
    for part in ("model", "ema"):
        ta, tb = (c[part]["weights"] if part == "ema" else c[part] for c in (a, b))
        diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert b["iteration"] == 8 and "pending" not in b
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (last column is wall time)
    for name in ("log.csv", "eval.csv"):
        ref_rows = (ref / name).read_text().splitlines()
        assert strip((tmp_path / "run" / name).read_text().splitlines()) == strip(ref_rows), name
    assert [r.split(",")[0] for r in (ref / "eval.csv").read_text().splitlines()[1:]] == ["2", "4", "6", "8"]
    assert tensorboard_scalars(tmp_path / "run") == tensorboard_scalars(ref)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"] == \
        json.loads((ref / "metrics.json").read_text())["final"]


def _launch_env(monkeypatch, local_size: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(local_size),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.init_from_env() == World() and not dist.is_initialized()
    assert distributed.broadcast_object(3) == 3 and distributed.all_gather_object(3) == [3]
    assert distributed.sum_floats([1.5, 2]) == [1.5, 2] and distributed.on_main(lambda: 7) == 7
    assert list(distributed.shard(3)) == [0, 1, 2] and distributed.main_process()


def test_threads_default_to_the_cores_of_each_local_process(monkeypatch):
    _launch_env(monkeypatch, local_size=2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert distributed.init_from_env("auto", "cpu") == World(rank=0, size=1, local_rank=0, local_size=2)
        assert dist.get_backend() == "gloo"
        expected = max(1, len(os.sched_getaffinity(0)) // 2)
        assert torch.get_num_threads() == expected and os.environ["OMP_NUM_THREADS"] == str(expected)
    finally:
        dist.destroy_process_group()


def test_nccl_without_cuda_is_refused(monkeypatch):
    _launch_env(monkeypatch, local_size=1)
    with pytest.raises(ConfigError, match=r"^train.dist_backend = 'nccl' needs CUDA devices and this run is on the "
                                          r"CPU; use 'gloo' \(or 'auto'\)$"):
        distributed.init_from_env("nccl", "cpu")
    assert not dist.is_initialized()
