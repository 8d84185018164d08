"""MLflow as a run logger (``train.loggers: [csv, mlflow]``, ``pip install 'resdense[mlflow]'``).

One training run is one MLflow run, written through :class:`mlflow.MlflowClient` (no global active run is touched):

- params: the resolved recipe, flattened (``train.lr``, ``model.backbone``, ``data.shapes.size``), values as text;
- metrics: every row of ``log.csv`` and ``eval.csv``, named as the TensorBoard scalars (``train/loss``,
  ``train/lr``, ``eval/mIoU``, ``eval/bbox/AP``) with ``step`` = the iteration;
- tags: ``resdense.task``, ``resdense.version``, ``resdense.precision``, ``resdense.run_dir``;
- artifacts, once training ends: ``metrics.json``, ``curves.png`` and ``config.yaml``;
- status: ``FINISHED``, ``FAILED`` (an error) or ``KILLED`` (a signal or Ctrl-C, which the same command resumes).

Resume: the run's id is kept in ``<run_dir>/mlflow.json`` with its tracking URI, and a run resumed from a checkpoint
continues that MLflow run. MLflow cannot delete a metric's points, so the rows a resumed run produces again (those
logged between the checkpoint and the interruption) are not logged a second time: each metric keeps one point per
step, the first one logged. On a CPU those equal the re-done ones (resume is bit-exact there); elsewhere they are
the interrupted attempt's, while ``log.csv`` holds the re-done ones. A run that starts from iteration 0 (no
checkpoint, or ``train.resume: false``) is a new MLflow run. Params keep their first values: MLflow refuses to
change one, so a resumed recipe's changed values (a longer ``train.iterations``) are reported in the log.

The tracking URI: ``train.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own kind of local store (a
SQLite database) placed beside the runs: ``<run_dir>/../mlflow.db``, its artifacts in ``<run_dir>/../mlruns``. A
store that cannot be opened is a one-line :class:`~resdense.errors.ConfigError` before training starts; a logging
call that fails during training (a tracking server gone away) stops the MLflow logging with a warning and training
goes on, ``log.csv`` and ``eval.csv`` keeping every row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resdense.errors import ConfigError, ResdenseError
from resdense.files import write_json
from resdense.optional import require

__all__ = ["MlflowLogger", "RUN_FILE", "tracking_uri", "flatten_params", "metric_key"]

log = logging.getLogger(__name__)

RUN_FILE = "mlflow.json"  # in the run directory: {"tracking_uri", "experiment_id", "run_id"}
_PURPOSE = "train.loggers: mlflow"
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores (sqlite+pysqlite, ...)


def tracking_uri(setting: str | None, run_dir: str | os.PathLike) -> str:
    """The tracking URI of a run: ``setting`` (``train.mlflow_uri``), else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<run_dir>/../mlflow.db`` (absolute)."""
    if setting:
        return setting
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + (Path(run_dir).resolve().parent / "mlflow.db").as_posix()


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.003}}`` -> ``{"train.lr": "0.003"}``: nested mappings joined with dots, every other value
    (lists included) as ``str(value)``; an empty mapping is ``"{}"``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = "{}" if isinstance(value, Mapping) else str(value)
    return flat


def metric_key(group: str, name: str) -> str:
    """``group/name`` with what MLflow refuses in a key (anything but letters, digits, ``_ - . /`` and spaces, empty
    path parts) replaced by ``_``: ``IoU/traffic light`` stays, ``IoU/a+b`` becomes ``IoU/a_b``."""
    parts = [re.sub(r"[^\w.\- ]", "_", part).strip() or "_" for part in f"{group}/{name}".split("/")]
    return "/".join("_" if part in (".", "..") else part for part in parts)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class MlflowLogger:
    """A :class:`~resdense.engine.logger.Sink` of :class:`~resdense.engine.logger.RunLogger` that mirrors a run into
    MLflow (see the module's description for what is logged and how a resume continues).

    Args:
        run_dir: the run directory (``mlflow.json`` is written there; the default store lies beside it).
        uri: ``train.mlflow_uri`` (``None``: see :func:`tracking_uri`).
        experiment: the experiment's name (created when absent).
        params: the resolved recipe as plain types (flattened by :func:`flatten_params`).
        tags: run tags (``resdense.task``, ...).
        run_name: the MLflow run's name (default: the run directory's name).

    Raises:
        MissingDependency: ``mlflow`` (or, for a database URI, ``sqlalchemy`` / ``alembic``) is not installed:
            one line naming the ``resdense[mlflow]`` extra.
        ConfigError: from :meth:`resume_at`, when the store cannot be opened or the run not created.
    """

    def __init__(self, run_dir: str | os.PathLike, *, uri: str | None, experiment: str, params: Mapping[str, Any],
                 tags: Mapping[str, str], run_name: str | None = None) -> None:
        self.mlflow = require("mlflow", "mlflow", _PURPOSE)
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(uri, self.run_dir)
        self.explicit_uri = bool(uri)
        if self.uri.split(":", 1)[0].split("+", 1)[0] in _DATABASES:  # MLflow's SQL stores need both
            require("sqlalchemy", "mlflow", f"the MLflow store {self.uri}")
            require("alembic", "mlflow", f"the MLflow store {self.uri}")
        self.experiment = experiment
        self.params = flatten_params(params)
        self.tags = {k: str(v) for k, v in tags.items()}
        self.run_name = run_name or self.run_dir.name
        self.client = None
        self.run_id: str | None = None
        self.last_step: dict[str, int] = {}  # per metric: the last step already in the run (rows up to it are skipped)
        self.off = False  # set when a logging call failed during training

    # ---- opening -------------------------------------------------------------------------------------------------
    def resume_at(self, iteration: int) -> None:
        """Open the MLflow run: the one of ``mlflow.json`` when ``iteration`` > 0 (a resumed run) and it is still in
        this store, else a new one; then log the params and tags."""
        try:
            self.client = self.mlflow.MlflowClient(self.uri)
            run = self._stored_run() if iteration > 0 else None
            if run is None:
                run = self._new_run()
            else:
                self._continue(run)
            self._log_params(run)
        except ResdenseError:  # already one line (a deleted experiment, mlflow.json not written)
            raise
        except Exception as err:  # any failure of the store: the user's URI or experiment, named in one line
            where = f"train.mlflow_uri = {self.uri!r}" if self.explicit_uri else f"the MLflow store {self.uri}"
            raise ConfigError(f"{where}, experiment {self.experiment!r}: {_first_line(err)}") from None

    def _stored_run(self):
        path = self.run_dir / RUN_FILE
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: not read (%s); a new MLflow run is started", path, err)
            return None
        if stored.get("tracking_uri") != self.uri:
            log.info("MLflow: the run of %s is in %s, not in %s: a new MLflow run is started", path,
                     stored.get("tracking_uri"), self.uri)
            return None
        try:
            run = self.client.get_run(stored["run_id"])
        except self.mlflow.exceptions.MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            log.warning("MLflow: run %s of %s is no longer in %s: a new MLflow run is started", stored.get("run_id"),
                        path, self.uri)
            return None
        return run

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise ConfigError(f"MLflow experiment {self.experiment!r} of {self.uri} is deleted: restore it "
                                  f"(mlflow experiments restore) or set another train.mlflow_experiment")
            return found.experiment_id
        # The default store keeps its artifacts beside the database; any other store decides for itself.
        location = None if self.explicit_uri or os.environ.get("MLFLOW_TRACKING_URI") else \
            (self.run_dir.resolve().parent / "mlruns").as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except self.mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # else another run created it meanwhile
                raise
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _new_run(self):
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        write_json(self.run_dir / RUN_FILE, {"tracking_uri": self.uri, "experiment_id": experiment_id,
                                             "run_id": self.run_id}, "MLflow run id")
        log.info("MLflow: run %s (%s) in experiment %r of %s", self.run_name, self.run_id, self.experiment, self.uri)
        return run

    def _continue(self, run) -> None:
        self.run_id = run.info.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.log_batch(self.run_id, tags=[self.mlflow.entities.RunTag(k, v) for k, v in self.tags.items()])
        for key in run.data.metrics:
            steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
            self.last_step[key] = max(steps, default=-1)
        log.info("MLflow: continuing run %s (%s) of %s; the steps it holds (up to %d) are not logged again",
                 self.run_name, self.run_id, self.uri, max(self.last_step.values(), default=0))

    def _log_params(self, run) -> None:
        limit = self.mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
        logged = run.data.params
        changed = {k: (logged[k], v) for k, v in self.params.items() if k in logged and logged[k] != v[:limit]}
        if changed:
            log.info("MLflow keeps the first value of a param: %s", "; ".join(
                f"{k} = {old} (now {new})" for k, (old, new) in sorted(changed.items())))
        new = []
        for key, value in self.params.items():
            if key in logged:
                continue
            if len(value) > limit:
                log.warning("MLflow param %s: its %d characters cut to MLflow's limit of %d", key, len(value), limit)
            new.append(self.mlflow.entities.Param(key, value[:limit]))
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params in one batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])

    # ---- logging -------------------------------------------------------------------------------------------------
    def log(self, group: str, iteration: int, values: dict[str, float]) -> None:
        """One row: a metric per value (``group/name``, ``step=iteration``), each step at most once per metric."""
        if self.off or self.run_id is None:
            return
        now = int(time.time() * 1000)
        metrics = []
        for name, value in values.items():
            key = metric_key(group, name)
            if iteration > self.last_step.get(key, -1):
                metrics.append(self.mlflow.entities.Metric(key, float(value), now, iteration))
        if metrics:
            self._guard(f"iteration {iteration}", lambda: self.client.log_batch(self.run_id, metrics=metrics))
            for m in metrics:
                self.last_step[m.key] = iteration

    def log_files(self, paths: Sequence[Path]) -> None:
        """Copy the run's final files into the MLflow run's artifacts."""
        if self.off or self.run_id is None:
            return
        for path in paths:
            self._guard(f"artifact {path.name}", lambda p=path: self.client.log_artifact(self.run_id, str(p)))

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self.run_id is not None and not self.off:
            self._guard("the end of the run", lambda: self.client.set_terminated(self.run_id, status))

    def _guard(self, what: str, call) -> None:
        try:
            call()
        except Exception as err:  # the tracker mirrors the CSV files: its failure must not end the training
            self.off = True
            log.warning("MLflow logging stopped at %s (%s: %s); log.csv and eval.csv keep every row", what,
                        type(err).__name__, _first_line(err))
