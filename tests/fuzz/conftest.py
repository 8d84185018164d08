"""Fuzz tests: a scratch folder for the whole session, and the per-reader case counts for ``benchmarks/fuzz.py``."""

from __future__ import annotations

import json
import os

import pytest

from ._fuzz import CASES, FAILED, MODULE_OF


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def pytest_runtest_logreport(report):
    if report.failed:
        FAILED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("RESDENSE_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({"cases": dict(CASES), "module_of": MODULE_OF, "failed": FAILED}, f)
