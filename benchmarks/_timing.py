"""Shared timing helper for the benchmark scripts: interleaved rounds, median throughput."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def throughput(fns: dict[str, Callable[[], object]], items_per_call: int, rounds: int = 5, calls: int = 3,
               warmup: int = 2) -> dict[str, float]:
    """Items per second of each function, median over ``rounds``; rounds interleave the candidates so that drifting
    machine load hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append(items_per_call * calls / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in samples.items()}


def print_table(title: str, results: dict[str, float], reference: str, unit: str = "img/s") -> None:
    print(f"\n{title}")
    width = max(len(k) for k in results)
    for name, value in results.items():
        print(f"  {name:<{width}}  {value:8.2f} {unit}   {value / results[reference]:5.2f}x {reference}")
