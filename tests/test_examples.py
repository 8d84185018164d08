"""Every example in README.md and docs/ runs: one test per fenced block, named ``file:line``.

``python`` blocks are executed in-process; ``bash`` / ``shell`` / ``sh`` blocks by bash (``set -euo pipefail``), and
``console`` blocks' ``$ `` lines likewise. In shell blocks ``resdense``, ``python`` and ``torchrun`` run with this
interpreter (``python -m resdense``, ``python -m torch.distributed.run``), so the examples test this tree.

The blocks of one file share a working folder (a fresh one per test run, beside a ``shared`` link to the repository's
``../shared/data``, so that the paths the examples use resolve) and a Python namespace, and run in the order of the
file: a block that needs an earlier one's result (a checkpoint, a variable) gets it, and running one block alone runs
the blocks above it first.

Markers, HTML comments on the lines right above a block (Markdown renders nothing for them):

- ``<!-- skip: REASON -->``: not run (a GPU, a download, several machines, a long run); reported as skipped with the
  reason.
- ``<!-- test-set: KEY=VALUE ... -->``: every ``resdense train`` of the block runs with these ``--set`` overrides
  added (``train.iterations=2``: the example shows the real command, the test trains two steps).
- ``<!-- file: NAME -->``: the block (of any language: a user's module, a recipe) is written to ``NAME`` in the
  working folder instead of being run, for the blocks below it that use the file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
SHELLS = ("bash", "shell", "sh", "console")
_FENCE = re.compile(r"^(?P<fence>`{3,})\s*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^<!--\s*(?P<kind>skip|test-set|file):\s*(?P<value>.*?)\s*-->$")


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None
    overrides: list[str] = field(default_factory=list)
    writes: str | None = None  # written to this file of the working folder, not run

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT).as_posix()}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file, with the markers above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(m["fence"])), len(lines))
        block = Block(path, i + 1, m["lang"].lower(), "\n".join(lines[i + 1:end]) + "\n")
        k = i - 1
        while k >= 0 and (marker := _MARKER.match(lines[k].strip())):
            if marker["kind"] == "skip":
                block.skip = marker["value"]
            elif marker["kind"] == "file":
                block.writes = marker["value"]
            else:
                block.overrides += marker["value"].split()
            k -= 1
        if block.writes or block.lang == "python" or block.lang in SHELLS:
            blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = [b for f in FILES for b in extract(f)]


class FileRun:
    """The shared folder and namespace of one file's blocks, and which of them have run."""

    def __init__(self, base: Path) -> None:
        self.work = base / "work"
        self.work.mkdir(parents=True)
        shared = ROOT.parent / "shared"
        if shared.is_dir():
            (base / "shared").symlink_to(shared, target_is_directory=True)
        self.bin = base / "bin"
        self.bin.mkdir()
        for name, target in (("resdense", "-m resdense"), ("python", ""), ("python3", ""),
                             ("torchrun", "-m torch.distributed.run")):
            script = self.bin / name
            extra = ' [ "${1:-}" = train ] && set -- "$@" $RESDENSE_EXAMPLE_SET\n' if name == "resdense" else ""
            script.write_text(f'#!/bin/sh\n{extra}exec "{sys.executable}" {target} "$@"\n')
            script.chmod(0o755)
        self.namespace: dict = {"__name__": "__example__"}
        self.done: set[int] = set()
        self.failed: str | None = None


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[Path, FileRun]:
    """``runs[file]``: that file's :class:`FileRun`, made on first use."""

    class Runs(dict):
        def __missing__(self, path: Path) -> FileRun:
            self[path] = FileRun(tmp_path_factory.mktemp(path.stem))
            return self[path]

    return Runs()


def run_python(block: Block, state: FileRun) -> None:
    exec(compile(block.code, block.id, "exec"), state.namespace)


def run_shell(block: Block, state: FileRun) -> None:
    code = block.code
    if block.lang == "console":
        code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ ")) + "\n"
    env = {**os.environ, "PATH": f"{state.bin}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RESDENSE_EXAMPLE_SET": " ".join(f"--set {shlex.quote(o)}" for o in block.overrides)}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=state.work, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, (f"{block.id} exited {out.returncode}:\n{code}\n--- stdout\n{out.stdout[-4000:]}\n"
                                 f"--- stderr\n{out.stderr[-4000:]}")


def execute(block: Block, state: FileRun, monkeypatch) -> None:
    if block.writes:
        (state.work / block.writes).write_text(block.code)
    else:
        with monkeypatch.context() as m:
            m.chdir(state.work)
            (run_python if block.lang == "python" else run_shell)(block, state)
    state.done.add(block.line)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example_runs(block: Block, runs, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    state = runs[block.file]
    for earlier in (b for b in BLOCKS if b.file == block.file and b.line < block.line and not b.skip):
        if state.failed:
            pytest.fail(f"an earlier example of this file failed ({state.failed}); this one needs its results")
        if earlier.line not in state.done:
            try:
                execute(earlier, state, monkeypatch)
            except BaseException:
                state.failed = earlier.id
                raise
    try:
        execute(block, state, monkeypatch)
    except BaseException:
        state.failed = block.id
        raise


def test_markers_are_known():
    """A misspelt marker would silently run (or not skip) a block: every ``<!-- x: ... -->`` right above a fence is
    one of the markers above."""
    bad = []
    for path in FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines[1:], 1):
            if _FENCE.match(line) and re.match(r"^<!--\s*[\w-]+:", lines[i - 1].strip()) \
                    and not _MARKER.match(lines[i - 1].strip()):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {lines[i - 1].strip()}")
    assert not bad, bad
