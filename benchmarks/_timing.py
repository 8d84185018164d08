"""Shared timing helper for the benchmark scripts: interleaved rounds, paired ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def throughput(fns: dict[str, Callable[[], object]], items_per_call: int, rounds: int = 5, calls: int = 3,
               warmup: int = 2) -> dict[str, list[float]]:
    """Items per second of each function in each round. Rounds interleave the candidates, in an order rotated every
    round, so that drifting machine load hits them alike and ratios can be taken round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [0.0] * rounds for k in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            samples[name][r] = items_per_call * calls / (time.perf_counter() - t0)
    return samples


def ratio(samples: dict[str, list[float]], name: str, reference: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of the per-round ratio ``name / reference``."""
    per_round = [a / b for a, b in zip(samples[name], samples[reference], strict=True)]
    return statistics.median(per_round), min(per_round), max(per_round)


def print_table(title: str, samples: dict[str, list[float]], reference: str, unit: str = "img/s") -> None:
    """Median throughput per candidate and its per-round ratio to ``reference`` (median [min-max] over rounds)."""
    print(f"\n{title}  (median of {len(samples[reference])} interleaved rounds; ratio per round: median [min-max])")
    width = max(len(k) for k in samples)
    for name, values in samples.items():
        mid, lo, hi = ratio(samples, name, reference)
        print(f"  {name:<{width}}  {statistics.median(values):8.2f} {unit}   {mid:5.2f}x [{lo:.2f}-{hi:.2f}] {reference}")
