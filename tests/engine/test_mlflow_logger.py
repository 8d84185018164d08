"""MLflow as a run logger, read back with MLflow's own client: the run holds the recipe as params, the rows of
log.csv and eval.csv as metrics and the run's final files as artifacts; a resumed or lengthened run continues the
same MLflow run, whose status follows the run's (KILLED, FAILED, FINISHED); a tracking store that fails during training stops the MLflow logging, not the training; a missing
package and an unknown logger name are one line each."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

import resdense
from resdense.engine import load_config, run_training
from resdense.engine.mlflow_logger import RUN_FILE, MlflowLogger
from resdense.errors import ConfigError, MissingDependency, TrainingInterrupted

from .recipes import AfterStep, seg_recipe, write

LOGGERS = ["csv", "mlflow"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One folder of runs for the module (``runs/``) and the MLflow client of the store they log to by default,
    ``runs/mlflow.db``: creating an MLflow database takes seconds, so the tests share it, each in its own
    experiment (the recipe's name)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, whatever the machine's environment
        uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
        yield {"root": root, "shapes": root / "shapes", "runs": root / "runs", "uri": uri,
               "client": MlflowClient(uri)}


def _recipe(store, name: str, **train) -> Path:
    return write(seg_recipe(store["shapes"], store["runs"] / name, loggers=LOGGERS, progress=False, **train),
                 store["root"] / f"{name}.yaml")


def _only_run(store, experiment: str):
    exp = store["client"].get_experiment_by_name(experiment)
    runs = store["client"].search_runs([exp.experiment_id], run_view_type=3)  # 3: active and deleted runs
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _as_logged(store, run_id: str, group: str, rows: list[dict[str, str]], skip=()) -> tuple[dict, dict]:
    """The MLflow histories of the columns of ``rows``, printed as the CSV prints them (``.6g``), and the CSV's."""
    columns = [c for c in rows[0] if c != "iteration" and c not in skip]
    client = store["client"]
    mlflow = {c: [(m.step, f"{m.value:.6g}") for m in sorted(client.get_metric_history(run_id, f"{group}/{c}"),
                                                               key=lambda m: m.step)] for c in columns}
    csv_ = {c: [(int(r["iteration"]), r[c]) for r in rows if r[c] != ""] for c in columns}
    return mlflow, csv_


def test_the_mlflow_run_holds_the_recipe_the_csv_rows_and_the_final_files(store, tmp_path):
    import mlflow

    run_dir = store["runs"] / "seg"
    result = run_training(_recipe(store, "seg"))
    run = _only_run(store, "seg")  # the experiment is the recipe's name
    run_id = run.info.run_id
    assert json.loads((run_dir / RUN_FILE).read_text()) == {
        "tracking_uri": store["uri"], "experiment_id": run.info.experiment_id, "run_id": run_id}
    assert (run.info.status, run.info.run_name) == ("FINISHED", "seg")
    assert not (run_dir / "tb").exists()  # train.loggers has no tensorboard

    # params: the resolved recipe, flattened
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
    params = run.data.params
    for section in ("model", "train", "eval"):
        assert {k: v for k, v in params.items() if k.startswith(f"{section}.")} == \
            {f"{section}.{k}": str(v) for k, v in recipe[section].items()}
    assert params["train.lr"] == "0.003" and params["model.backbone"] == "resnet18"
    assert params["data.shapes.size"] == "64" and params["train.loggers"] == "['csv', 'mlflow']"

    # metrics: every CSV row, step = iteration
    train_rows, eval_rows = _csv(run_dir / "log.csv"), _csv(run_dir / "eval.csv")
    assert [r["iteration"] for r in train_rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["iteration"] for r in eval_rows] == ["3", "6"] and "IoU/circle" in eval_rows[0]
    logged, written = _as_logged(store, run_id, "train", train_rows)
    assert logged == written
    logged, written = _as_logged(store, run_id, "eval", eval_rows)
    assert logged == written
    assert set(run.data.metrics) == {f"train/{c}" for c in train_rows[0] if c != "iteration"} | \
        {f"eval/{c}" for c in eval_rows[0] if c != "iteration"}

    # tags and artifacts
    tags = run.data.tags
    assert tags["resdense.task"] == "segmentation" and tags["resdense.version"] == resdense.__version__
    assert tags["resdense.precision"] == result["precision"]["amp"]
    assert tags["resdense.run_dir"] == str(run_dir.resolve())
    assert {a.path for a in store["client"].list_artifacts(run_id)} == {"metrics.json", "curves.png", "config.yaml"}
    for name in ("metrics.json", "curves.png"):
        copy = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(tmp_path),
                                                   tracking_uri=store["uri"])
        assert Path(copy).read_bytes() == (run_dir / name).read_bytes()
    # the default store keeps its artifacts beside the database
    assert (store["runs"] / "mlruns").is_dir() and str(store["runs"] / "mlruns") in run.info.artifact_uri


def test_a_stopped_lengthened_crashed_and_resumed_run_is_one_mlflow_run(store, caplog):
    run_dir = store["runs"] / "resumed"

    def sigterm(trainer, it, losses):
        if it == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the step ends, last.pt, TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        run_training(_recipe(store, "resumed", iterations=4), hooks=[AfterStep(sigterm)])
    first = _only_run(store, "resumed")
    assert first.info.status == "KILLED"
    run_training(_recipe(store, "resumed", iterations=4))  # the same command finishes it
    finished = _only_run(store, "resumed")
    assert finished.info.run_id == first.info.run_id and finished.info.status == "FINISHED"

    def crash(trainer, it, losses):
        if it == 5:
            raise RuntimeError("a crash after iteration 5")

    # longer: resumes from last.pt at 4, logs iteration 5, then crashes
    with pytest.raises(RuntimeError, match="a crash after iteration 5"):
        run_training(_recipe(store, "resumed", iterations=6), hooks=[AfterStep(crash)])
    crashed = _only_run(store, "resumed")
    assert crashed.info.run_id == first.info.run_id and crashed.info.status == "FAILED"
    steps = [m.step for m in store["client"].get_metric_history(first.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5]

    # the same command resumes from 4 again: iteration 5 is trained again, and not logged a second time
    with caplog.at_level(logging.INFO, logger="resdense.engine.mlflow_logger"):
        run_training(_recipe(store, "resumed", iterations=6))
    run = _only_run(store, "resumed")
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    # time_s: the training time of step 5 is the crashed attempt's in MLflow, the resumed one's in log.csv
    logged, written = _as_logged(store, run.info.run_id, "train", _csv(run_dir / "log.csv"), skip=("time_s",))
    assert logged == written and [s for s, _ in logged["loss"]] == [1, 2, 3, 4, 5, 6]
    logged, written = _as_logged(store, run.info.run_id, "eval", _csv(run_dir / "eval.csv"))
    assert logged == written and [s for s, _ in logged["mIoU"]] == [3, 4, 6]
    # MLflow keeps a param's first value, and the log says what changed
    assert run.data.params["train.iterations"] == "4"
    assert "train.iterations = 4 (now 6)" in caplog.text


def test_a_store_failing_during_training_stops_mlflow_logging_not_training(store, caplog):
    def delete_run(trainer, it, losses):
        if it == 2:  # the run deleted in the store (mlflow runs delete): later writes to it are refused
            run_id = json.loads((store["runs"] / "failing" / RUN_FILE).read_text())["run_id"]
            store["client"].delete_run(run_id)

    with caplog.at_level(logging.WARNING, logger="resdense.engine.mlflow_logger"):
        result = run_training(_recipe(store, "failing", iterations=4), hooks=[AfterStep(delete_run)])
    assert result["iterations"] == 4
    assert [r["iteration"] for r in _csv(store["runs"] / "failing" / "log.csv")] == ["1", "2", "3", "4"]
    run = _only_run(store, "failing")
    assert run.info.lifecycle_stage == "deleted"
    assert [m.step for m in store["client"].get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert caplog.text.count("MLflow logging stopped at iteration 3") == 1


def test_metric_names_mlflow_refuses_are_made_acceptable(store):
    logger = MlflowLogger(store["runs"] / "keys", uri=None, experiment="keys", params={"a": {"b": 1, "c": {}}},
                          tags={})
    logger.resume_at(0)
    logger.log("eval", 1, {"IoU/traffic light": 0.5, "IoU/a+b (far)": 0.25, "IoU/..": 0.125})
    logger.close()
    run = _only_run(store, "keys")
    assert run.data.metrics == {"eval/IoU/traffic light": 0.5, "eval/IoU/a_b _far_": 0.25, "eval/IoU/_": 0.125}
    assert run.data.params == {"a.b": "1", "a.c": "{}"}


def test_a_missing_mlflow_is_one_line_naming_the_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python itself marks a module as not importable
    with pytest.raises(MissingDependency) as err:
        run_training(_recipe(store, "missing"))
    assert str(err.value) == "train.loggers: mlflow needs the package 'mlflow', which is not installed: " \
        "pip install 'resdense[mlflow]'"
    assert not (store["runs"] / "missing" / "last.pt").exists()  # refused before training


@pytest.mark.parametrize("loggers, message", [
    (["csv", "wandb"], "train.loggers: 'wandb' is not one of 'csv', 'tensorboard', 'mlflow'"),
    (["mlflow"], "train.loggers = ['mlflow'] leaves out 'csv', which resume and curves.png read: list it too "
                 "(e.g. ['csv', 'mlflow'])"),
])
def test_an_unknown_logger_or_one_without_csv_is_one_line(tmp_path, loggers, message):
    path = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", loggers=loggers), tmp_path / "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"
