"""Dependencies as declared: every third-party module the package imports, at any depth, is a runtime dependency of
``pyproject.toml``, or is loaded through :func:`resdense.optional.require` naming an extra that declares it."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


RUNTIME = {_dist(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {name: {_dist(r) for r in reqs} for name, reqs in PYPROJECT["optional-dependencies"].items()}
DISTS = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in md.packages_distributions().items()}


def _imports() -> list[tuple[str, str, int]]:
    """(module's top-level name, file, line) of every import statement of the package, function-level ones too."""
    found = []
    for path in sorted((ROOT / "resdense").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "resdense":
                    found.append((top, str(path.relative_to(ROOT)), node.lineno))
    return found


def _required() -> list[tuple[str, str, str, int]]:
    """(module, extra, file, line) of every ``require("module", "extra", ...)`` call."""
    found = []
    for path in sorted((ROOT / "resdense").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                module, extra = (a.value for a in node.args[:2])
                found.append((module, extra, str(path.relative_to(ROOT)), node.lineno))
    return found


def test_every_import_is_a_declared_runtime_dependency():
    undeclared = [(m, f, line, sorted(DISTS.get(m, {"?"}))) for m, f, line in _imports()
                  if not DISTS.get(m, set()) & RUNTIME]
    assert undeclared == [], "imported but not in [project] dependencies (declare it, or use require(...) with " \
        f"an extra): {undeclared}"


def test_every_optional_module_is_declared_by_the_extra_it_names():
    calls = _required()
    assert {m for m, *_ in calls} >= {"onnx", "onnxruntime"}
    for module, extra, where, line in calls:
        assert extra in EXTRAS, f"{where}:{line}: require({module!r}) names extra {extra!r}, not in pyproject"
        assert DISTS.get(module, set()) & EXTRAS[extra], f"{where}:{line}: extra {extra!r} lacks {module!r}"
        assert not DISTS.get(module, set()) & RUNTIME, f"{module} is a runtime dependency: import it plainly"


def test_a_missing_optional_module_is_one_line_naming_the_extra(monkeypatch):
    from resdense.errors import MissingDependency
    from resdense.optional import require

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # how Python itself marks a module as not importable
    with pytest.raises(MissingDependency) as err:
        require("onnxruntime", "export", "verifying an ONNX export")
    assert str(err.value) == "verifying an ONNX export needs the package 'onnxruntime', which is not installed: " \
        "pip install 'resdense[export]'"
    assert isinstance(err.value, ImportError)


def test_export_without_verification_needs_no_onnxruntime(tmp_path, monkeypatch):
    import torch

    from resdense.errors import MissingDependency
    from resdense.export.model import export_model
    from resdense.heads import UNet

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = UNet("resnet18", num_classes=2, decoder_channels=[8, 8, 8], weights_backbone=None).eval()
    torch.manual_seed(0)
    result = export_model(model, tmp_path / "unet.onnx", input_size=(64, 64), verify=False)
    assert (tmp_path / "unet.onnx").stat().st_size > 0 and result.checks == []
    with pytest.raises(MissingDependency, match=r"pip install 'resdense\[export\]'"):
        export_model(model, tmp_path / "again.onnx", input_size=(64, 64), verify=True)
