"""The package's layering (docs/design.md, "Layers"), read from the source with ``ast``.

Every import of a resdense module counts, function-level ones included: a function-level import that dodges a
cycle is still a cycle. The checks: no import cycle among modules; every module sits on a layer of ``LAYERS``;
an import of another unit points to a lower layer; resdense's own modules are imported at function level only
where that is a deliberate deferral (``DEFERRED``); private torch APIs are touched in one module only.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resdense"

# The layer table (keep it equal to docs/design.md's). A module belongs to the longest unit that prefixes its name; it
# may import its own unit and units of lower layers, never a unit of its own layer or above.
LAYERS = {
    "resdense.errors": 0,  # exception types
    "resdense.version": 0,  # __version__
    "resdense._torch_private": 0,  # the one module that calls private torch APIs
    "resdense.recipes": 1,  # finding recipe files (working directory, shipped resdense.configs) and reading YAML
    "resdense.hardware": 1,
    "resdense.files": 1,
    "resdense.registry": 1,  # name -> entry tables: architectures, datasets, training hooks
    "resdense.optional": 1,  # optional dependencies: require(module, extra) -> module or a one-line error  # the one writer of every file: atomic, OS failures as one-line WriteErrors
    "resdense.typecheck": 1,  # YAML values against type annotations; comparing recipes  # CPU/GPU probes and the precision chosen from them
    "resdense.config": 2,  # the recipe schema: dataclasses, type checks, --set
    "resdense.backbones": 3,  # ResNet feature extractors, weights, inference mode, export
    "resdense.coco": 3,  # the COCO format under data and evaluation: JSON, validation, RLE, bit-packing
    "resdense.heads": 4,  # FPN, detectors, U-Net, smp decoders, classifier
    "resdense.data": 4,  # datasets, transforms, loaders, synthetic shapes, checks
    "resdense.evaluation": 4,  # COCO mAP, detection evaluator, segmentation metrics
    "resdense.visualize": 4,  # overlays, boxes, curves
    "resdense.engine": 5,  # recipe -> objects (build, model/data checks), tasks, trainer, checkpoints, loading, runners
    "resdense.inference": 6,  # the Predictor, tiling, TTA, `resdense predict`'s runner
    "resdense.export": 7,  # whole-model ONNX / TorchScript / pt2, int8, writing packages
    "resdense.api": 8,  # train / evaluate / predict / classify / available over the engine
    "resdense.demo": 8,  # the one-command demo
    "resdense.cli": 9,  # argparse in, library call, print out
    "resdense.__main__": 10,  # `python -m resdense`
    "resdense": 10,  # the package facade: lazy re-exports of what a user types
}

# Units whose functions import resdense modules on purpose, and why.
DEFERRED = {
    "resdense.cli": "each subcommand imports the library when it runs: torch, torchvision and smp take seconds to "
                    "import, and `resdense --help` or an argument error should not wait for them",
}

TORCH_PRIVATE_MODULE = "resdense._torch_private"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def module_files() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = module_files()


def _function_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _resolve_from(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]  # a plain module's package is its parent
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(module: str) -> list[Edge]:
    """The resdense modules that ``module`` imports. ``from P import name`` is an edge to ``P.name`` when that is a
    module, else to ``P``; parent packages that Python initialises on the way are not counted (as in the hook)."""
    tree = ast.parse(MODULES[module].read_text())
    in_function = _function_nodes(tree)
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import resdense.x.y`: the deepest module named
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.append(Edge(module, target, node.lineno, id(node) in in_function))
    return edges


EDGES = sorted({e for m in MODULES for e in imports_of(m)}, key=lambda e: (e.source, e.line, e.target))


def unit_of(module: str) -> str:
    best = max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len, default=None)
    return best


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_the_package():
    # Guards the checks below against passing on an empty or mis-resolved graph.
    assert {"resdense.config", "resdense.engine.build", "resdense.backbones.resnet", "resdense.cli"} <= set(MODULES)
    assert any(e.source == "resdense.backbones.resnet" and e.target == "resdense.backbones.blocks" for e in EDGES)
    assert any(e.in_function for e in EDGES)  # function-level imports are read too (the CLI's)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        graph[e.source].add(e.target)
    cycles = strongly_connected(graph)
    detail = []
    for comp in cycles:
        inner = [f"{e.source}:{e.line} -> {e.target}{' (in a function)' if e.in_function else ''}"
                 for e in EDGES if e.source in comp and e.target in comp]
        detail.append(" <-> ".join(comp) + ": " + "; ".join(inner))
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(detail)


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if unit_of(m) in (None, "resdense") and m != "resdense"]
    assert not missing, f"modules in no layer of LAYERS (add them here and to docs/design.md): {missing}"


def test_design_page_shows_the_same_layers():
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## Layers"):]
    shown = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([^`]+)`", cells[1]):
                if name == "resdense" or name.startswith("resdense."):
                    shown[name] = int(cells[0])
    assert shown == LAYERS


def test_imports_point_down():
    wrong = []
    for e in EDGES:
        su, tu = unit_of(e.source), unit_of(e.target)
        if su != tu and LAYERS[tu] >= LAYERS[su]:
            wrong.append(f"{e.source}:{e.line} imports {e.target} ({tu}, layer {LAYERS[tu]}) from layer "
                         f"{LAYERS[su]} ({su}){' in a function' if e.in_function else ''}")
    assert not wrong, "imports pointing up or sideways:\n" + "\n".join(wrong)


def test_function_level_imports_of_resdense_only_where_deferred_on_purpose():
    def deferred(module: str) -> bool:
        return any(module == u or module.startswith(u + ".") for u in DEFERRED)

    wrong = [f"{e.source}:{e.line} imports {e.target} inside a function" for e in EDGES
             if e.in_function and not deferred(e.source)]
    assert not wrong, "\n".join(wrong)


_TORCH_NAMES = {"torch", "nn", "F"}
_PRIVATE_TENSOR_ATTRS = {"_version", "_is_view", "_base", "_cdata", "_typed_storage"}


def _private_torch_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: dict[int, str] = {}  # one report per line
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            private = [a for a in chain if a.startswith("_") and not a.startswith("__")]
            rooted = isinstance(inner, ast.Name) and inner.id in _TORCH_NAMES
            if (rooted and private) or node.attr in _PRIVATE_TENSOR_ATTRS:
                found.setdefault(node.lineno, f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_is_"):
            found.setdefault(node.lineno, f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")  # getattr probes
    return [found[k] for k in sorted(found)]


def test_private_torch_apis_live_in_one_module():
    found = [hit for m, p in MODULES.items() if m != TORCH_PRIVATE_MODULE for hit in _private_torch_uses(p)]
    assert not found, f"private torch APIs outside {TORCH_PRIVATE_MODULE}:\n" + "\n".join(found)


def _fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


HEAVY = ("torch", "torchvision", "segmentation_models_pytorch", "albumentations", "resdense.engine",
         "resdense.heads", "resdense.data", "resdense.backbones")


@pytest.mark.parametrize("statement", [
    "import resdense",
    "import resdense.cli; resdense.cli.build_parser()",  # `resdense --help`: the subcommands import the library late
    "from resdense.config import parse_recipe; parse_recipe('demo_shapes_frcnn_r18_fpn', ['train.lr=0.01'])",
])
def test_reading_recipes_and_importing_the_package_load_no_model_code(statement):
    loaded = _fresh_python(f"import sys; {statement}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded == "[]", f"{statement!r} imported {loaded}"


def test_no_private_names_imported_across_modules():
    # `from .coco import _helper` makes a private name part of two modules' contracts: make it public or move it.
    # Private modules (resdense._torch_private) may be imported; underscore names out of them may not.
    wrong = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("resdense")):
                base = _resolve_from(module, node)
                wrong += [f"{module}:{node.lineno}: from {base} import {a.name}" for a in node.names
                          if a.name.startswith("_") and f"{base}.{a.name}" not in MODULES]
    assert not wrong, "\n".join(wrong)
