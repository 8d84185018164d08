"""The scalar entries of a metrics dict: what a CSV column, a log line or a report headline can hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["scalar_metrics"]


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The int / float entries of ``metrics`` as floats, in their order; booleans, tables, tensors and arrays are
    left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
