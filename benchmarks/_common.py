"""What every benchmark reports: its figures as a table on stdout, as JSON lines in a file.

A benchmark builds its parser with :func:`argument_parser` (which adds ``--out
results.jsonl``), runs inside ``with reporting(args.out, TARGETS):`` and calls :func:`emit`
once per figure. When the block ends, every figure is printed as one table (metric, value,
unit, target, spread, notes) after the benchmark's own tables, and, with ``--out``, appended
to that file as one JSON line ``{"metric", "value", "unit", "target", ...}`` each.

Examples:
    >>> with reporting(None, {"answer": "= 42"}):
    ...     emit("answer", 42, "count")
    ...     emit("ratio", 0.123456, "x", target="> 0", iqr=(0.1, 0.2))
    <BLANKLINE>
    figures
    metric   value  unit   target  spread   notes
    ------  ------  -----  ------  -------  -----
    answer      42  count  = 42
    ratio   0.1235  x      > 0     0.1-0.2
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pruning_kit.table import Table

#: Figures emitted in the current :func:`reporting` block, in order.
FIGURES: list[dict[str, Any]] = []
_TARGETS: dict[str, str] = {}
_NO_TARGET = object()


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


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring's first line as description, and ``--out``."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0]
                                     if doc else None)
    parser.add_argument("--out", type=Path, default=None, metavar="results.jsonl",
                        help="append one JSON line per figure (metric, value, unit, target, "
                             "...) to this file; stdout gets the tables only")
    return parser


def emit(metric: str, value: float, unit: str, *, target: Any = _NO_TARGET,
         iqr: Sequence[float] | None = None, min_max: Sequence[float] | None = None,
         **extra: Any) -> None:
    """Record one figure ``{"metric", "value", "unit", "target"}`` (see :func:`reporting`).

    ``value`` is rounded to 4 places, or to 4 significant digits below 0.01. ``target``
    defaults to the entry for ``metric`` in the targets given to :func:`reporting`.
    ``iqr`` and ``min_max`` (a measured figure's spread, e.g. the 25th-75th percentile
    and the range of a speed-up over interleaved rounds) and any ``extra`` fields are
    added to the line, numbers rounded the same way.
    """
    line: dict[str, Any] = {"metric": metric, "value": _round(value), "unit": unit,
                            "target": _TARGETS.get(metric) if target is _NO_TARGET else target}
    if iqr is not None:
        line["iqr"] = _rounded(iqr)
    if min_max is not None:
        line["min_max"] = _rounded(min_max)
    line.update({k: _rounded(v) for k, v in extra.items()})
    FIGURES.append(line)


def emit_speedup(metric: str, stats: Any, **extra: Any) -> None:
    """:func:`emit` a speed-up from :class:`pruning_kit.measure.LatencyStats` with its spread."""
    emit(metric, stats.speedup, "x", iqr=stats.speedup_iqr, min_max=stats.speedup_min_max,
         **extra)


def figures_table(lines: Sequence[Mapping[str, Any]]) -> Table:
    """The figures as a table: metric, value, unit, target, spread (IQR) and other fields."""
    rows = []
    for line in lines:
        notes = ", ".join(f"{k}={v}" for k, v in line.items()
                          if k not in ("metric", "value", "unit", "target", "iqr"))
        iqr = line.get("iqr")
        rows.append({"metric": line["metric"], "value": line["value"], "unit": line["unit"],
                     "target": line["target"] or "",
                     "spread": f"{iqr[0]:g}-{iqr[1]:g}" if iqr else "",
                     "notes": notes if len(notes) <= 80 else notes[:77] + "..."})
    return Table(rows, ["metric", "value", "unit", "target", "spread", "notes"],
                 title="figures")


@contextlib.contextmanager
def reporting(out: str | Path | None, targets: Mapping[str, str] | None = None
              ) -> Iterator[list[dict[str, Any]]]:
    """Collect the figures :func:`emit`-ted inside; at the end print them as one table and,
    when ``out`` is a path, append them to it as JSON lines (also if the benchmark fails
    part-way, so what was measured is kept)."""
    FIGURES.clear()
    _TARGETS.clear()
    _TARGETS.update(targets or {})
    try:
        yield FIGURES
    finally:
        if FIGURES:
            print()
            print(figures_table(FIGURES))
            if out is not None:
                with open(out, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(line) + "\n" for line in FIGURES)
