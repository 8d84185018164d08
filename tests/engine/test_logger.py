"""Run logs: TensorBoard gets every row as soon as the CSV does, and a resume hides what it replays, once."""

from __future__ import annotations

import time

from resdense.engine import RunLogger, read_csv
from resdense.engine.logger import _after_existing_event_files

from .recipes import tensorboard_scalars


def test_rows_reach_tensorboard_before_close(tmp_path):
    log = RunLogger(tmp_path)
    log.resume_at(0)
    log.log_train(1, {"loss": 2.0})
    # on disk while the writer is open (flushed per row): a run killed now keeps it, as it keeps the CSV row
    assert tensorboard_scalars(tmp_path) == {"train/loss": [(1, 2.0)]}
    log.log_eval(1, {"mIoU": 0.5, "per_class": [0.1, 0.9]})  # non-scalars stay out of the logs
    assert tensorboard_scalars(tmp_path) == {"train/loss": [(1, 2.0)], "eval/mIoU": [(1, 0.5)]}
    log.close()
    log.close()


def test_resume_hides_replayed_steps_once(tmp_path):
    first = RunLogger(tmp_path)
    first.resume_at(0)
    for it in (1, 2, 3):
        first.log_train(it, {"loss": float(it)})
    first.close()
    again = RunLogger(tmp_path)
    again.resume_at(1)  # the checkpoint was at iteration 1: steps 2 and 3 are trained again
    again.log_train(2, {"loss": 20.0})
    again.close()
    again.log_train(3, {"loss": 30.0})  # a writer reopened after close() keeps what this logger wrote
    again.close()
    assert tensorboard_scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 20.0), (3, 30.0)]
    assert [(r["iteration"], r["loss"]) for r in read_csv(tmp_path / "log.csv")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_a_new_event_file_sorts_after_the_existing_ones(tmp_path):
    tb = tmp_path / "tb"
    tb.mkdir()
    now = int(time.time())
    (tb / f"events.out.tfevents.{now}.some.host.1.0").touch()
    start = time.monotonic()
    _after_existing_event_files(tb)
    assert int(time.time()) > now and time.monotonic() - start < 1.5
    (tb / f"events.out.tfevents.{now + 3600}.clock.ahead.1.0").touch()  # never wait more than a second
    start = time.monotonic()
    _after_existing_event_files(tb)
    assert time.monotonic() - start < 1.5
