"""Run logs: ``log.csv`` (training rows), ``eval.csv`` (evaluation rows), TensorBoard when installed, and any
further :class:`Sink` (MLflow: :mod:`resdense.engine.mlflow_logger`).

Rows are appended and flushed as they come, so a killed run keeps its log; on resume, rows past the checkpoint's
iteration are dropped first, so the resumed log reads like an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

# The reader of the files written here lives one floor down, where plot_curves needs it; re-exported.
from resdense.evaluation import scalar_metrics
from resdense.files import append_text, write_json, write_text
from resdense.visualize import plot_curves, read_csv

__all__ = ["NullLogger", "RunLogger", "Sink", "read_csv", "write_results"]

log = logging.getLogger(__name__)


class _CsvFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def truncate_after(self, iteration: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if float(r.get("iteration", 0) or 0) <= iteration]
        if len(keep) != len(rows):
            write_text(self.path, _csv_text(self.fields or [], keep, header=True), "log")

    def write(self, row: dict[str, Any]) -> None:
        new_keys = [k for k in row if self.fields is None or k not in self.fields]
        if self.fields is None or new_keys:
            # A new column (e.g. a loss term that appears later): rewrite the file with the widened header.
            old = []
            if self.path.exists() and self.fields:
                with open(self.path, newline="") as f:
                    old = list(csv.DictReader(f))
            self.fields = (self.fields or []) + new_keys
            write_text(self.path, _csv_text(self.fields, old, header=True), "log")
        append_text(self.path, _csv_text(self.fields, [{k: _fmt(v) for k, v in row.items()}]), "log")


def _csv_text(fields: list[str], rows: list[dict[str, Any]], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _after_existing_event_files(tb_dir: Path) -> None:
    """TensorBoard reads a directory's event files in name order, and names start with the creation second: wait
    (at most a second) until a new file sorts after the ones already there, so its purge applies to them."""
    stamps = [int(part) for p in tb_dir.glob("events.out.tfevents.*")
              if len(parts := p.name.split(".")) > 3 and (part := parts[3]).isdigit()]
    if stamps and (delay := max(stamps) + 1 - time.time()) > 0:
        time.sleep(min(delay, 1.0))  # a file from a clock in the future: not worth waiting for


class Sink(Protocol):
    """A further destination of a run's rows (an experiment tracker), driven by :class:`RunLogger`."""

    def resume_at(self, iteration: int) -> None:
        """Called once before the first row: ``iteration`` is the checkpoint's (0: a new run)."""

    def log(self, group: str, iteration: int, values: dict[str, float]) -> None:
        """One row of ``group`` (``train`` or ``eval``): the scalars of ``log.csv`` / ``eval.csv``."""

    def log_files(self, paths: Sequence[Path]) -> None:
        """The run's final files (``metrics.json``, ``curves.png``, ...), once they are written."""

    def close(self, status: str) -> None:
        """``status``: ``FINISHED``, ``FAILED`` or ``KILLED`` (a signal or Ctrl-C: the run can resume)."""


class RunLogger:
    """Writes training and evaluation rows to ``run_dir`` (and TensorBoard when ``tensorboard`` is installed).

    Args:
        run_dir: the run directory.
        tensorboard: also write scalars under ``run_dir/tb`` (``pip install resdense[tensorboard]``); without the
            package the run logs CSV only.
        sinks: further destinations of every row (:class:`Sink`), e.g. an
            :class:`~resdense.engine.mlflow_logger.MlflowLogger`.

    After a resume, :meth:`resume_at` drops the rows logged past the checkpoint from the CSV files and has
    TensorBoard purge its events from that step on (``SummaryWriter(purge_step=...)``), so both read like an
    uninterrupted run. Call it before the first row is logged.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, sinks: Sequence[Sink] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.sinks = list(sinks)
        self.train = _CsvFile(self.run_dir / "log.csv")
        self.eval = _CsvFile(self.run_dir / "eval.csv")
        self.tb = None
        self._tensorboard = tensorboard
        self._purge_step: int | None = None

    def resume_at(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (they will be produced again)."""
        self.train.truncate_after(iteration)
        self.eval.truncate_after(iteration)
        self._purge_step = iteration + 1
        for sink in self.sinks:
            sink.resume_at(iteration)

    def _writer(self):
        if self.tb is None and self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: CSV only
                log.info("TensorBoard logging off: the tensorboard package is not installed "
                         "(pip install 'resdense[tensorboard]'); log.csv and eval.csv are written")
                self._tensorboard = False
                return None
            tb_dir = self.run_dir / "tb"
            if self._purge_step is not None:
                _after_existing_event_files(tb_dir)
            self.tb = SummaryWriter(str(tb_dir), purge_step=self._purge_step)
            self._purge_step = None  # purge once: a writer reopened after close() keeps what this one wrote
        return self.tb

    def log_train(self, iteration: int, values: dict[str, float]) -> None:
        self.train.write({"iteration": iteration, **values})
        self._scalars("train", iteration, values)

    def log_eval(self, iteration: int, metrics: dict[str, float]) -> None:
        scalars = scalar_metrics(metrics)
        self.eval.write({"iteration": iteration, **scalars})
        self._scalars("eval", iteration, scalars)

    def _scalars(self, group: str, iteration: int, values: dict[str, float]) -> None:
        if (tb := self._writer()) is not None:
            for k, v in values.items():
                tb.add_scalar(f"{group}/{k}", v, iteration)
            tb.flush()  # like the CSV rows: on disk before a kill can take them
        for sink in self.sinks:
            sink.log(group, iteration, values)

    def log_files(self, paths: Sequence[str | Path]) -> None:
        """Hand the run's final files (those that exist) to the sinks; they stay where they are."""
        present = [Path(p) for p in paths if Path(p).is_file()]
        for sink in self.sinks:
            sink.log_files(present)

    def close(self, status: str = "FINISHED") -> None:
        """Close TensorBoard and the sinks; ``status`` (``FINISHED``, ``FAILED``, ``KILLED``) is the sinks'."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        sinks, self.sinks = self.sinks, []  # once: a second close() has nothing left to end
        for sink in sinks:
            sink.close(status)


class NullLogger:
    """The run logger of ranks other than 0: they write nothing."""

    def resume_at(self, iteration: int) -> None:
        pass

    def log_train(self, iteration: int, values: dict[str, float]) -> None:
        pass

    def log_eval(self, iteration: int, metrics: dict[str, float]) -> None:
        pass

    def log_files(self, paths: Sequence[str | Path]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def write_results(run_dir: Path, result: dict[str, Any]) -> None:
    """A finished run's ``metrics.json`` (``result``) and ``curves.png`` (a failure to draw is a warning)."""
    write_json(run_dir / "metrics.json", result)
    try:
        plot_curves(run_dir, run_dir / "curves.png")
    except Exception as err:  # a plotting problem must never lose a finished run
        logging.getLogger("resdense.engine.trainer").warning("could not draw curves: %s", err)
