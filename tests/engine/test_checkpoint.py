"""Checkpoints: atomic under SIGKILL, loadable with weights_only=True, RNG states round-trip. A full disk and an
unwritable target are produced for real in test_faults.py."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from resdense.engine import atomic_save, load_checkpoint, rng_state, set_rng_state
from resdense.errors import WeightsError

WRITER = """
import sys, torch
from resdense.engine import atomic_save
path = sys.argv[1]
i = 0
while True:
    # ~16 MB per save, so a kill lands inside a write most of the time
    atomic_save({"model": {"w": torch.full((4_000_000,), float(i))}, "iteration": i}, path)
    i += 1
"""


def test_sigkill_during_saves_never_leaves_a_torn_last_pt(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random()
    seen = set()
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        try:
            deadline = time.monotonic() + 120
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert path.exists(), "the writer never produced last.pt"
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ckpt = torch.load(path, weights_only=True)  # must never raise
        w = ckpt["model"]["w"]
        assert torch.equal(w, torch.full_like(w, float(ckpt["iteration"]))), f"trial {trial}: mixed contents"
        seen.add(ckpt["iteration"])
    assert load_checkpoint(path)["iteration"] in seen


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match=r"bad\.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="not a resdense training checkpoint"):
        load_checkpoint(plain)


def test_rng_states_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    atomic_save({"model": {}, "rng": state}, tmp_path / "c.pt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]
