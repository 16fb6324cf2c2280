"""What every benchmark prints for machines: one JSON line per figure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def _round(value: float) -> float:
    """4 decimal places, or 4 significant digits for a figure below 0.01 (a 2e-5 max
    difference must not print as 0)."""
    value = float(value)
    return float(f"{value:.4g}") if 0 < abs(value) < 0.01 else round(value, 4)


def _rounded(value: Any) -> Any:
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_rounded(v) for v in value]
    return _round(value)


def emit(metric: str, value: float, unit: str, targets: Mapping[str, str], *,
         iqr: Sequence[float] | None = None, min_max: Sequence[float] | None = None,
         **extra: Any) -> None:
    """Print ``{"metric", "value", "unit", "target"}`` as one line.

    ``value`` is rounded to 4 places, or to 4 significant digits below 0.01.

    ``iqr`` and ``min_max`` (a measured figure's spread, e.g. the 25th-75th percentile
    and the range of a speed-up over interleaved rounds) and any ``extra`` fields are
    added to the line, numbers rounded the same way.
    """
    line: dict[str, Any] = {"metric": metric, "value": _round(value), "unit": unit,
                            "target": targets.get(metric)}
    if iqr is not None:
        line["iqr"] = _rounded(iqr)
    if min_max is not None:
        line["min_max"] = _rounded(min_max)
    line.update({k: _rounded(v) for k, v in extra.items()})
    print(json.dumps(line))


def emit_speedup(metric: str, stats: Any, targets: Mapping[str, str], **extra: Any) -> None:
    """:func:`emit` a speed-up from :class:`pruning_kit.measure.LatencyStats` with its spread."""
    emit(metric, stats.speedup, "x", targets, iqr=stats.speedup_iqr,
         min_max=stats.speedup_min_max, **extra)
