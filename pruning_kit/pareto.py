"""The map of every result: accuracy against stored bytes and latency, and the Pareto front.

Each method the course produces (float, quantized, pruned, distilled, structurally smaller,
chained, exported) ends as one *point*: its test accuracy (mean and standard deviation over
seeds; ``None`` when only one seed was run, since one seed measures no spread), the bytes
of the file it is stored in, and its latency at batch 1 and 256 (median and IQR of
interleaved rounds). ``python -m benchmarks.pareto --record FILE`` measures them and writes
one JSON line per method (``{"kind": "pareto_point", ...}``, :data:`REQUIRED`); the map is
drawn from that file, never re-measured or retyped:

* :func:`write_points` / :func:`read_points` -- the points to / from a JSON-lines file
  (checked; other lines, e.g. a benchmark's figures, are skipped);
* :func:`pareto_front` -- the points no other point beats: none has a higher-or-equal
  accuracy at a lower-or-equal cost and is strictly better in one of them (decided on the
  mean accuracies alone: a gap inside the error bars is not resolved);
* :func:`front_table` -- every point with its place on the three fronts, as a table;
* :func:`pareto_map` -- three panels (accuracy against stored bytes, latency at batch 1,
  latency at batch 256), error bars, the front as a step line, and :data:`PEERS`.

Introduced in ``notebooks/05_full_pipeline.ipynb`` (its closing section).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pruning_kit import data as data_lib
from pruning_kit.table import Table

__all__ = ["COSTS", "ONE_SEED_MARKER", "PEERS", "POINT_KIND", "RECORDED", "REQUIRED",
           "front_table", "pareto_front", "pareto_map", "read_points", "write_points"]

Point = Mapping[str, Any]

#: The points recorded for the course (``python -m benchmarks.pareto --record RECORDED``),
#: drawn by notebook 05 and README.
RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "pareto_points.jsonl"
#: The ``kind`` of a point's JSON line.
POINT_KIND = "pareto_point"
#: Keys every point line must have (``latency_*`` may be ``null``: not timed; ``acc_std`` is
#: ``null`` for a point of one seed).
REQUIRED = ("method", "family", "technique", "acc_mean", "acc_std", "seeds", "stored_bytes",
            "file", "latency_b1_ms", "latency_b1_iqr", "latency_b256_ms",
            "latency_b256_iqr", "machine", "date")
#: The three costs of the map: point key -> axis label.
COSTS = {"stored_bytes": "stored bytes (file on disk, kB = 1,000 B, log scale)",
         "latency_b1_ms": "latency, batch 1 (ms, log scale)",
         "latency_b256_ms": "latency, batch 256 (ms, log scale)"}
_IQR = {"latency_b1_ms": "latency_b1_iqr", "latency_b256_ms": "latency_b256_iqr"}

#: LeNet-300-100's float32 weights: 266,610 parameters x 4 bytes (a setup constant).
LENET_FP32_BYTES = 266_610 * 4
#: Published points of peers, drawn as references on the panel of their ``cost``.
#: Deep Compression: Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks
#: with Pruning, Trained Quantization and Huffman Coding", ICLR 2016, Table 1: LeNet-300-100
#: on MNIST, 1070 KB -> 27 KB (40x), top-1 error 1.64 % -> 1.58 %. Another data set (MNIST),
#: so only its ratio is comparable: drawn at the bytes 40x gives for our LeNet-300-100
#: (``ratio``: the published compression ratio itself).
PEERS: tuple[dict[str, Any], ...] = (
    {"label": "Deep Compression 40x, published (Han et al. 2016, LeNet-300-100 on MNIST; "
              "not measured here, ratio only)",
     "cost": "stored_bytes", "value": LENET_FP32_BYTES / 40, "ratio": 40},
)
_MARKERS = {"mlp": "o", "cnn": "s"}
#: The marker of a point measured on one seed only (no standard deviation to draw).
ONE_SEED_MARKER = "*"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(point: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in point]
    if missing:
        raise ValueError(f"{where}: a {POINT_KIND} line lacks {missing}; record it again "
                         "with python -m benchmarks.pareto --record FILE.")
    for key in ("acc_mean", "stored_bytes"):
        if not _number(point[key]):
            raise ValueError(f"{where}: {key} must be a finite number, got {point[key]!r}.")
    if not isinstance(point["seeds"], list) or not point["seeds"]:
        raise ValueError(f"{where}: seeds must be a non-empty list, got {point['seeds']!r}.")
    if len(point["seeds"]) < 2:
        point["acc_std"] = None            # one seed measures no spread: none, not 0.0
    elif not (_number(point["acc_std"]) and point["acc_std"] >= 0):
        raise ValueError(f"{where}: acc_std must be a number >= 0 for {len(point['seeds'])} "
                         f"seeds, got {point['acc_std']!r}.")
    if not 0 <= point["acc_mean"] <= 1:
        raise ValueError(f"{where}: acc_mean is a fraction in [0, 1], got {point['acc_mean']}.")
    for key in _IQR:
        if point[key] is not None and not (_number(point[key]) and point[key] > 0):
            raise ValueError(f"{where}: {key} must be a positive number or null, got "
                             f"{point[key]!r}.")
    return point


def write_points(path: str | os.PathLike, points: Sequence[Point]) -> Path:
    """Write ``points`` as JSON lines ``{"kind": "pareto_point", ...}`` (atomically).

    Each point needs the keys of :data:`REQUIRED`; NumPy scalars are written as numbers.
    The file is replaced, never appended to: one record run per file.

    Raises:
        ValueError: no points, or a point :func:`read_points` would refuse.
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    if not points:
        raise ValueError("write_points needs at least one point.")
    lines = []
    for i, p in enumerate(points):
        p = {**json.loads(json.dumps(dict(p), default=_plain)), "kind": POINT_KIND}
        lines.append(json.dumps(_check(p, f"point {i}")) + "\n")
    data_lib.atomic_write(Path(path), "".join(lines).encode("utf-8"))
    return Path(path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def read_points(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The points of a JSON-lines file, in file order.

    Lines whose ``kind`` is not :data:`POINT_KIND` (a benchmark's figures, blank lines) are
    skipped. A point of a single seed gets ``acc_std = None`` whatever the line says: one
    seed measures no spread (an older file may hold ``0.0`` there).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line that is not JSON, a point lacking a key of :data:`REQUIRED` or
            with a non-numeric accuracy or size, no seeds, a missing or negative ``acc_std``
            for several seeds, a method named twice in one family, or no point at all.

    Examples:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "points.jsonl"
        >>> point = {"method": "float", "family": "mlp", "technique": "float",
        ...          "acc_mean": 0.8965, "acc_std": 0.0005, "seeds": [0, 1, 2],
        ...          "stored_bytes": 1_066_640, "file": "codec .pkc", "latency_b1_ms": None,
        ...          "latency_b1_iqr": None, "latency_b256_ms": None, "latency_b256_iqr": None,
        ...          "machine": "CPU", "date": "2026-12-01"}
        >>> _ = write_points(f, [point])
        >>> with open(f, "a") as out:                  # a benchmark's figure line: skipped
        ...     _ = out.write(json.dumps({"metric": "pareto_points", "value": 1}) + "\\n")
        >>> [(p["method"], p["acc_mean"]) for p in read_points(f)]
        [('float', 0.8965)]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}; record the points with "
                                f"python -m benchmarks.pareto --record {path}.")
    points, seen = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not JSON ({err.msg}); the file is "
                             "damaged, record it again.") from err
        if not isinstance(entry, dict) or entry.get("kind") != POINT_KIND:
            continue
        point = _check(entry, f"{path}:{number}")
        key = (point["family"], point["method"])
        if key in seen:
            raise ValueError(f"{path}:{number}: {key} was already recorded on line "
                             f"{seen[key]}; keep one record run per file.")
        seen[key] = number
        points.append(point)
    if not points:
        raise ValueError(f"{path} holds no {POINT_KIND} line; record them with "
                         f"python -m benchmarks.pareto --record {path}.")
    return points


def pareto_front(points: Sequence[Point], cost_key: str, *,
                 accuracy_key: str = "acc_mean") -> list[Point]:
    """The points on the front of accuracy (higher is better) against ``cost_key`` (lower).

    A point is on the front when no other point has a higher-or-equal accuracy at a
    lower-or-equal cost and is strictly better in at least one; two identical points are
    both on it. Points whose cost is missing or ``None`` take no part. The front is decided
    on ``accuracy_key`` alone (the means): a point off it is dominated on the means, and a
    gap smaller than the accuracies' spread over seeds is not resolved by it.

    Returns:
        The front, cheapest first (ties: more accurate first).

    Raises:
        ValueError: ``points`` is empty.

    Examples:
        >>> pts = [{"method": m, "acc_mean": a, "ms": c} for m, a, c in
        ...        [("a", 0.9, 3.0), ("b", 0.8, 1.0), ("c", 0.8, 2.0), ("d", 0.9, 3.0)]]
        >>> [p["method"] for p in pareto_front(pts, "ms")]    # c: b is as good and cheaper
        ['b', 'a', 'd']
    """
    if not points:
        raise ValueError("pareto_front needs at least one point.")
    timed = [p for p in points if p.get(cost_key) is not None]

    def beaten(p: Point) -> bool:
        return any(q[accuracy_key] >= p[accuracy_key] and q[cost_key] <= p[cost_key]
                   and (q[accuracy_key] > p[accuracy_key] or q[cost_key] < p[cost_key])
                   for q in timed)

    return sorted((p for p in timed if not beaten(p)),
                  key=lambda p: (p[cost_key], -p[accuracy_key]))


def front_table(points: Sequence[Point]) -> Table:
    """Every point, numbered; ``front`` names the fronts it is on (bytes, b1, b256)."""
    fronts = {short: {id(p) for p in pareto_front(points, key)}
              for short, key in (("bytes", "stored_bytes"), ("b1", "latency_b1_ms"),
                                 ("b256", "latency_b256_ms"))}
    rows = [{"#": i, "family": p["family"], "method": p["method"],
             "technique": p["technique"], "accuracy": p["acc_mean"],
             "std_pct": None if p["acc_std"] is None else 100 * p["acc_std"],
             "seeds": len(p["seeds"]),
             "stored_bytes": p["stored_bytes"], "b1_ms": p["latency_b1_ms"],
             "b256_ms": p["latency_b256_ms"],
             "front": " ".join(k for k, ids in fronts.items() if id(p) in ids) or "-"}
            for i, p in enumerate(points, 1)]
    return Table(rows, title="every point (std over seeds in points, - for one seed; front: on "
                             "the Pareto front of the mean accuracy against bytes / batch-1 / "
                             "batch-256 latency)")


def _panel(ax: Any, points: Sequence[Point], cost: str, peers: Sequence[Mapping[str, Any]],
           colors: dict[str, Any]) -> None:
    for i, p in enumerate(points, 1):
        if p[cost] is None:
            continue
        iqr = p.get(_IQR.get(cost, ""))
        xerr = None if not iqr else [[p[cost] - iqr[0]], [iqr[1] - p[cost]]]
        hollow = "onnx" in str(p.get("runtime", "")).lower()
        one_seed = p.get("acc_std") is None            # no spread measured: no bar, a star
        ax.errorbar(p[cost], 100 * p["acc_mean"],
                    yerr=None if one_seed else 100 * p["acc_std"], xerr=xerr,
                    fmt=ONE_SEED_MARKER if one_seed else _MARKERS.get(p["family"], "^"),
                    color=colors[p["technique"]], ms=11 if one_seed else 6,
                    capsize=2, lw=0.8, mfc="white" if hollow else colors[p["technique"]])
        ax.annotate(str(i), (p[cost], 100 * p["acc_mean"]), textcoords="offset points",
                    xytext=(4, 3), fontsize=7)
    front = pareto_front(points, cost)
    ax.step([p[cost] for p in front], [100 * p["acc_mean"] for p in front], where="post",
            color="black", ls="--", lw=1, label="Pareto front", zorder=0)
    for peer in peers:
        if peer["cost"] == cost:
            ax.axvline(peer["value"], color="tab:gray", ls=":", lw=1.2, label=peer["label"])
    ax.set_xscale("log")
    unit = 1000 if cost == "stored_bytes" else 1           # bytes shown in kB
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v / unit:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(COSTS[cost])
    if cost == "stored_bytes":
        ax.set_ylabel("test accuracy (%, mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.25)


def pareto_map(points: Sequence[Point], *, peers: Sequence[Mapping[str, Any]] = PEERS,
               title: str | None = None) -> Figure:
    """Accuracy against stored bytes, batch-1 latency and batch-256 latency: three panels.

    Each point is drawn with its accuracy's standard deviation over seeds (and, for
    latencies, the IQR over rounds) as error bars and numbered as in :func:`front_table`;
    circles are MLPs, squares CNNs, a star a point of one seed (no standard deviation, no
    bar; legend "1 seed"), hollow markers files run by ONNX Runtime, colours the technique.
    The front of each panel is a dashed step line; ``peers`` are vertical dotted lines on
    the panel of their ``cost`` (:data:`PEERS`). The numbered key is written below the
    panels.

    Raises:
        ValueError: no points.

    Examples:
        >>> pts = [{"method": m, "family": f, "technique": t, "acc_mean": a, "acc_std": 0.002,
        ...         "seeds": [0, 1, 2], "stored_bytes": b, "file": "x.pkc",
        ...         "latency_b1_ms": 0.2, "latency_b1_iqr": [0.19, 0.21],
        ...         "latency_b256_ms": l, "latency_b256_iqr": [l * 0.9, l * 1.1]}
        ...        for m, f, t, a, b, l in [("float", "mlp", "float", 0.896, 1_066_640, 1.8),
        ...                                 ("chain", "mlp", "chain", 0.892, 23_000, 1.9)]]
        >>> fig = pareto_map(pts)
        >>> len(fig.axes), [ax.get_xscale() for ax in fig.axes]
        (3, ['log', 'log', 'log'])
        >>> plt.close(fig)
    """
    if not points:
        raise ValueError("pareto_map needs at least one point; read_points(path) gives them.")
    techniques = list(dict.fromkeys(p["technique"] for p in points))
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(techniques)}
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.5), sharey=True)
    for ax, cost in zip(axes, COSTS, strict=True):
        _panel(ax, points, cost, peers, colors)
    handles = [Line2D([], [], color=colors[t], marker="o", ls="", label=t) for t in techniques]
    handles += [Line2D([], [], color="gray", marker=m, ls="", label=f"{f.upper()}")
                for f, m in _MARKERS.items()]
    handles += [Line2D([], [], color="gray", marker="o", mfc="white", ls="",
                       label="ONNX Runtime file")]
    if any(p.get("acc_std") is None for p in points):
        handles += [Line2D([], [], color="gray", marker=ONE_SEED_MARKER, ms=9, ls="",
                           label="1 seed (no std: no error bar)")]
    handles += axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.965),
               ncol=min(len(handles), 6), fontsize=8, frameon=False)
    key = [f"{i} {p['family'].upper()} {p['method']}" for i, p in enumerate(points, 1)]
    rows = math.ceil(len(key) / 3)
    for c in range(3):
        fig.text(0.05 + 0.32 * c, 0.022 * rows + 0.01, "\n".join(key[c * rows:(c + 1) * rows]),
                 fontsize=7.5, va="top", family="monospace")
    fig.suptitle(title or "", y=0.995, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.84, wspace=0.06,
                        bottom=0.09 + 0.022 * rows)
    return fig
