"""Started by test_distributed.py under torchrun (2 processes, gloo on the CPU); not a test module itself.

``ddp_worker.py fault RECIPE [--term-at N] [--kill-at N]``: ``resdense train RECIPE`` (the CLI) with a fault
injected by rank 1 after iteration N: SIGTERM to the whole job (torchrun, which forwards it to every worker), or
SIGKILL to itself.

``ddp_worker.py checks OUT SHAPES SEG_RECIPE DET_RECIPE``: the distributed side of the other tests: the two recipes
trained on 2 ranks (the segmentation run is the uninterrupted reference of the fault test) and their checkpoints
evaluated, the equivalence runs, SyncBatchNorm and a full disk; each rank writes what it saw to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from recipes import AfterStep, gn_unet_trainer, oracle_evaluation  # the script's folder is on sys.path


def fault(recipe: str, term_at: int | None, kill_at: int | None) -> int:
    import resdense.engine as engine
    from resdense.cli import main

    def after_step(trainer, it, losses):
        if int(os.environ["RANK"]) != 1:
            return
        if it == term_at:
            os.kill(os.getppid(), signal.SIGTERM)  # the job: torchrun sends every worker SIGTERM
            deadline = time.monotonic() + 60
            while trainer.stop_request.signum is None and time.monotonic() < deadline:
                time.sleep(0.01)  # until torchrun's SIGTERM reached this rank too: the next step is the last
        if it == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run_training = engine.run_training
    engine.run_training = lambda *a, **k: run_training(*a, hooks=[AfterStep(after_step)], **k)
    return main(["train", recipe])


def checks(out: Path, shapes: Path, seg_recipe: str, det_recipe: str) -> None:
    from resdense.cli import main
    from resdense.engine import distributed, load_config, run_evaluation, run_training

    seen: dict = {}
    seg_ckpt, det_ckpt = (load_config(r).output_dir / "last.pt" for r in (seg_recipe, det_recipe))
    run_training(seg_recipe)
    run_training(det_recipe)
    # 2 ranks x batch 2, and 2 ranks x batch 1 x 2 micro-batches: both the global batch 4 of one process
    gn_unet_trainer(shapes, out / "gn_b2", batch_size=2).fit()
    gn_unet_trainer(shapes, out / "gn_b1_acc2", batch_size=1, accumulate=2).fit()
    # evaluation of fixed checkpoints on 5 images (2 ranks: 3 + 2)
    seen["shard_of_5"] = list(distributed.shard(5))
    seen["seg"] = _scalars(run_evaluation(seg_recipe, seg_ckpt))
    seen["det"] = _scalars(run_evaluation(det_recipe, det_ckpt))
    seen["det_oracle"] = oracle_evaluation(det_recipe)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # `resdense eval --json` under torchrun: rank 0 prints
        seen["cli_eval_exit"] = main(["eval", seg_recipe, "--checkpoint", str(seg_ckpt), "--json"])
    seen["cli_eval_stdout"] = printed.getvalue()
    seen["sync_bn"] = _sync_bn(shapes, out)
    seen["disk_full"] = _disk_full(shapes, out)
    (out / f"rank{distributed.world().rank}.json").write_text(json.dumps(seen))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def _error(fn) -> list[str] | None:
    try:
        fn()
    except Exception as err:
        return [type(err).__name__, str(err)]
    return None


def _sync_bn(shapes: Path, out: Path) -> dict:
    # torch's own SyncBatchNorm in this 2-process gloo group on the CPU, then resdense's train.sync_bn
    torch_bn = torch.nn.SyncBatchNorm(3).train()
    return {"torch": _error(lambda: torch_bn(torch.randn(2, 3, 4, 4))),
            "resdense": _error(lambda: gn_unet_trainer(shapes, out / "sync_bn", sync_bn=True))}


def _disk_full(shapes: Path, out: Path) -> dict:
    """Rank 0 writes the checkpoints into ``out/disk_full``: a tmpfs that holds one of them and not two where the test
    could mount one (root), else the second ``torch.save`` fails as a full disk's write does."""
    trainer = gn_unet_trainer(shapes, out / "disk_full", batch_size=2, checkpoint_every=1)
    if os.path.ismount(out / "disk_full"):
        return {"error": _error(trainer.fit), "disk": "tmpfs"}
    real_save, saves = torch.save, []

    def disk_full(obj, f, *a, **k):  # the second checkpoint finds the disk full (rank 0 alone writes them)
        if isinstance(obj, dict) and "iteration" in obj:  # not torch.distributed's own use of torch.save
            saves.append(obj["iteration"])
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    torch.save = disk_full
    try:
        return {"error": _error(trainer.fit), "disk": "quota"}
    finally:
        torch.save = real_save


if __name__ == "__main__":
    if sys.argv[1] == "fault":
        args = sys.argv[3:]
        at = {flag: int(args[args.index(flag) + 1]) if flag in args else None for flag in ("--term-at", "--kill-at")}
        sys.exit(fault(sys.argv[2], at["--term-at"], at["--kill-at"]))
    checks(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5])
