"""Result tables: rows of measurements (dicts) printed in human units.

:class:`Table` prints as fixed-width text, renders as HTML in Jupyter and as Markdown for
the README; :func:`compare` adds ratio columns against a baseline row. Units come from the
column names (``*bytes`` in kB = 1,000 bytes via :func:`format_bytes`, ``*_ms`` in
milliseconds, ``accuracy`` in percent, ...).

Inside the package an accuracy or a sparsity is a fraction in [0, 1]; the table is where it
becomes a percent (:data:`FRACTION_COLUMNS`).

Used by :mod:`pruning_kit.measure` (which re-exports these names) and by every notebook.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FRACTION_COLUMNS", "Table", "compare", "format_bytes", "format_table",
           "format_value"]

#: Columns holding a fraction in [0, 1], printed as a percent; ``<column>_delta`` holds a
#: difference of two such fractions, printed in percentage points. (Columns ending in
#: ``_pct`` or another ``_delta`` already hold percents or points and print as they are.)
FRACTION_COLUMNS = ("accuracy", "sparsity")
_FRACTION_DELTAS = tuple(f"{c}_delta" for c in FRACTION_COLUMNS)


def format_bytes(n: float, *, digits: int = 1) -> str:
    """A byte count in the course's one unit convention: kB = 1,000 bytes (SI).

    Below 1 kB bytes are shown as they are, above it in kB (no switch to MB, so sizes
    line up in a table). Every size in the
    notebooks, the README and the tables goes through this function, so one file never
    appears with two sizes.

    Examples:
        >>> format_bytes(1066440), format_bytes(25270), format_bytes(512)
        ('1,066.4 kB', '25.3 kB', '512 B')
    """
    n = float(n)
    if abs(n) < 1000:
        return f"{n:,.0f} B"
    return f"{n / 1000:,.{digits}f} kB"


def format_value(column: str, value: Any) -> str:
    """``value`` as a table cell, in the units its column name implies.

    Examples:
        >>> format_value("serialized_bytes", 1066440), format_value("latency_b1_ms", 0.01234)
        ('1,066.4 kB', '0.0123 ms')
        >>> format_value("accuracy", 0.975), format_value("accuracy_delta", -0.005)
        ('97.50%', '-0.50 pts')
        >>> format_value("val_acc_pct", 97.5), format_value("compression", 9.0)
        ('97.50%', '9.00x')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value) if value else "scalar"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if not isinstance(value, (int, float, np.number)):
        return str(value)
    if column.endswith("bytes"):
        return format_bytes(value)
    if column.endswith("_ms"):
        return f"{value:,.0f} ms" if abs(value) >= 100 else f"{value:#.3g} ms"
    if column in _FRACTION_DELTAS:
        return f"{100 * value:+.2f} pts"
    if column.endswith("_delta"):
        return f"{value:+.2f} pts"
    if column in FRACTION_COLUMNS:
        return f"{100 * value:.2f}%"
    if column.endswith("_pct"):
        return f"{value:.2f}%"
    if column.startswith(("compression", "speedup")):
        return f"{value:.2f}x"
    if isinstance(value, (int, np.integer)) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


class Table:
    """Rows of measurements (dicts) that print as a fixed-width table.

    ``str(table)`` is plain text for scripts and benchmarks, ``table.to_markdown()`` is for
    the README, and Jupyter shows ``_repr_html_``. Units follow the column names:
    ``*bytes`` in kB, ``*_ms`` in milliseconds, ``accuracy``/``sparsity`` (fractions) in
    percent, ``*_pct`` as given in percent, ``compression``/``speedup*`` as ratios,
    ``accuracy_delta`` (a difference of fractions) and other ``*_delta`` (given in points)
    in percentage points.

    Args:
        rows: a sequence of dicts (missing keys print as ``-``).
        columns: which keys to show, in order; default every key, in first-seen order.
        title: optional line printed above the table (a caption in HTML and Markdown).

    Raises:
        ValueError: a row is not a dict, or a requested column is in no row.

    Examples:
        >>> print(Table([{"name": "dense", "accuracy": 0.97123, "serialized_bytes": 1066440}]))
        name   accuracy  serialized_bytes
        -----  --------  ----------------
        dense    97.12%        1,066.4 kB
    """

    def __init__(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                 *, title: str | None = None):
        self.title = title
        rows = list(rows)
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise ValueError(f"Table rows must be dicts (e.g. from measure()); row {i} "
                                 f"is a {type(r).__name__}.")
        known = list(dict.fromkeys(k for r in rows for k in r))
        if columns is None:
            columns = known
        missing = [c for c in columns if c not in known]
        if missing:
            raise ValueError(f"Columns {missing} are in no row; available: {known}.")
        self.rows, self.columns = rows, list(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    def cells(self) -> list[list[str]]:
        """The formatted cells, one list per row."""
        return [[format_value(c, r.get(c)) for c in self.columns] for r in self.rows]

    def __str__(self) -> str:
        cells = self.cells()
        widths = [max([len(c)] + [len(row[j]) for row in cells])
                  for j, c in enumerate(self.columns)]
        numeric = [all(not isinstance(r.get(c), str) for r in self.rows) for c in self.columns]

        def line(items):
            return "  ".join(s.rjust(w) if num else s.ljust(w)
                             for s, w, num in zip(items, widths, numeric, strict=True)).rstrip()

        rule = "  ".join("-" * w for w in widths)
        title = [self.title] if self.title else []
        return "\n".join(title + [line(self.columns), rule] + [line(row) for row in cells])

    __repr__ = __str__

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table (for README results)."""
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        title = [f"**{self.title}**", ""] if self.title else []
        return "\n".join(title + [head, rule] + ["| " + " | ".join(r) + " |" for r in self.cells()])

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:right'>{esc(v)}</td>"
                                        for v in row) + "</tr>" for row in self.cells())
        caption = f"<caption>{esc(self.title)}</caption>" if self.title else ""
        return (f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                "</table>")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``str(Table(rows, columns))``: a fixed-width text table in human units."""
    return str(Table(rows, columns))


def compare(rows: Sequence[dict[str, Any]], baseline_index: int = 0,
            columns: Sequence[str] | None = None) -> Table:
    """Rows from :func:`measure` plus ratio columns against one baseline row.

    Adds ``compression`` (baseline ``serialized_bytes`` / this row's; 4.0x means a file
    four times smaller), ``speedup_b{B}`` (baseline latency / this row's, per batch size)
    and ``accuracy_delta`` (this row's accuracy minus the baseline's, a difference of
    fractions that the table prints in points; negative is a loss). A column is added only
    when the baseline row has the metric.

    Raises:
        ValueError: no rows, or ``baseline_index`` out of range.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("compare needs at least one row (e.g. [measure(baseline, ...)]).")
    if not -len(rows) <= baseline_index < len(rows):
        raise ValueError(f"baseline_index {baseline_index} is out of range for "
                         f"{len(rows)} rows.")
    base = rows[baseline_index]

    def ratio(num, den):
        return num / den if num is not None and den else math.nan

    out = []
    for r in rows:
        r = dict(r)
        if "serialized_bytes" in base:
            r["compression"] = ratio(base["serialized_bytes"], r.get("serialized_bytes"))
        for key in base:
            if key.startswith("latency_") and key.endswith("_ms"):
                r["speedup" + key[len("latency"):-len("_ms")]] = ratio(base[key], r.get(key))
        if "accuracy" in base and r.get("accuracy") is not None:
            r["accuracy_delta"] = r["accuracy"] - base["accuracy"]
        out.append(r)
    return Table(out, columns)
