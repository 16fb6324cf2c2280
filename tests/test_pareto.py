"""The map of every result (pruning_kit.pareto): fronts, reading recorded points, the figure."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pruning_kit import pareto  # noqa: E402


def point(method, acc, size, b1=0.2, b256=2.0, family="mlp", technique="float", **kw):
    return {"method": method, "family": family, "technique": technique, "acc_mean": acc,
            "acc_std": 0.001, "seeds": [0, 1, 2], "stored_bytes": size, "file": "codec .pkc",
            "latency_b1_ms": b1, "latency_b1_iqr": None if b1 is None else [b1 * .9, b1 * 1.1],
            "latency_b256_ms": b256,
            "latency_b256_iqr": None if b256 is None else [b256 * .9, b256 * 1.1],
            "machine": "test CPU [AVX2]", "date": "2026-12-01", **kw}


def names(front):
    return [p["method"] for p in front]


# --------------------------------------------------------------------------- the front
def test_front_drops_dominated_points_and_sorts_by_cost():
    pts = [point("big", 0.90, 1000), point("small", 0.89, 100), point("worse", 0.88, 200),
           point("tiny", 0.80, 10), point("bigger, no better", 0.90, 2000)]
    assert names(pareto.pareto_front(pts, "stored_bytes")) == ["tiny", "small", "big"]


def test_front_ties():
    # same accuracy, cheaper wins; same cost, more accurate wins; identical points both stay
    pts = [point("a", 0.9, 100), point("same acc, dearer", 0.9, 150),
           point("same cost, worse", 0.85, 100), point("a twin", 0.9, 100)]
    assert names(pareto.pareto_front(pts, "stored_bytes")) == ["a", "a twin"]


def test_front_of_one_point_and_of_untimed_points():
    assert names(pareto.pareto_front([point("only", 0.5, 7)], "stored_bytes")) == ["only"]
    pts = [point("untimed", 0.95, 10, b1=None), point("timed", 0.80, 10)]
    assert names(pareto.pareto_front(pts, "latency_b1_ms")) == ["timed"]
    assert names(pareto.pareto_front(pts, "stored_bytes")) == ["untimed"]
    with pytest.raises(ValueError, match="at least one point"):
        pareto.pareto_front([], "stored_bytes")


def test_every_point_off_the_front_is_dominated_by_one_on_it():
    rng = np.random.default_rng(0)
    pts = [point(f"p{i}", float(a), int(c)) for i, (a, c) in
           enumerate(zip(rng.uniform(0.8, 0.9, 40), rng.integers(1, 1000, 40), strict=True))]
    front = pareto.pareto_front(pts, "stored_bytes")
    accs = [p["acc_mean"] for p in front]
    assert accs == sorted(accs)            # cheapest first, and each step buys accuracy
    for p in pts:
        if p not in front:
            assert any(q["acc_mean"] >= p["acc_mean"] and q["stored_bytes"] <= p["stored_bytes"]
                       for q in front)


# --------------------------------------------------------------------------- reading
def test_write_then_read_skips_other_lines(tmp_path):
    path = pareto.write_points(tmp_path / "p.jsonl",
                               [point("f", np.float64(0.9), np.int64(1000)), point("q", 0.89, 250)])
    with open(path, "a") as f:
        f.write("\n" + json.dumps({"metric": "pareto_points", "value": 2, "unit": "count"}) + "\n")
    got = pareto.read_points(path)
    assert names(got) == ["f", "q"]
    assert got[0]["stored_bytes"] == 1000 and isinstance(got[0]["stored_bytes"], int)


def test_read_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="--record"):
        pareto.read_points(tmp_path / "missing.jsonl")
    only_figures = tmp_path / "figures.jsonl"
    only_figures.write_text(json.dumps({"metric": "pareto_points", "value": 3}) + "\n")
    with pytest.raises(ValueError, match="holds no pareto_point line"):
        pareto.read_points(only_figures)
    lacking = tmp_path / "lacking.jsonl"
    entry = {k: v for k, v in point("x", 0.9, 10).items() if k != "stored_bytes"}
    lacking.write_text(json.dumps({"kind": pareto.POINT_KIND, **entry}) + "\n")
    with pytest.raises(ValueError, match=r"lacking.jsonl:1: .*lacks \['stored_bytes'\]"):
        pareto.read_points(lacking)
    percent = tmp_path / "percent.jsonl"
    percent.write_text(json.dumps({"kind": pareto.POINT_KIND, **point("x", 89.6, 10)}) + "\n")
    with pytest.raises(ValueError, match="fraction"):
        pareto.read_points(percent)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"kind": "pareto_point", \n')
    with pytest.raises(ValueError, match="broken.jsonl:1 is not JSON"):
        pareto.read_points(broken)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(2 * (json.dumps({"kind": pareto.POINT_KIND, **point("x", 0.9, 10)}) + "\n"))
    with pytest.raises(ValueError, match="already recorded on line 1"):
        pareto.read_points(twice)
    with pytest.raises(ValueError, match="at least one point"):
        pareto.write_points(tmp_path / "none.jsonl", [])


def test_one_seed_has_no_std(tmp_path):
    # one seed measures no spread: read as None whatever the line says (an old file: 0.0)
    path = pareto.write_points(tmp_path / "p.jsonl", [
        point("three seeds", 0.9, 100), point("one seed", 0.91, 200, seeds=[0], acc_std=0.0),
        point("one seed, null", 0.92, 300, seeds=[0], acc_std=None)])
    got = {p["method"]: p["acc_std"] for p in pareto.read_points(path)}
    assert got == {"three seeds": 0.001, "one seed": None, "one seed, null": None}
    rows = {r["method"]: r["std_pct"] for r in pareto.front_table(pareto.read_points(path)).rows}
    assert rows["one seed"] is None and rows["three seeds"] == pytest.approx(0.1)
    several = tmp_path / "several.jsonl"
    several.write_text(json.dumps({"kind": pareto.POINT_KIND,
                                   **point("x", 0.9, 10, acc_std=None)}) + "\n")
    with pytest.raises(ValueError, match="acc_std must be a number >= 0 for 3 seeds"):
        pareto.read_points(several)


# --------------------------------------------------------------------------- table, figure
def test_front_table_marks_the_fronts():
    # "small" is on the bytes front only: at batch 256 (2.0 ms) "fast" is as good and faster
    pts = [point("fast", 0.85, 1000, b1=0.1, b256=1.0), point("small", 0.85, 100, b1=0.3),
           point("best", 0.90, 5000, b1=0.5, b256=3.0), point("dominated", 0.84, 6000)]
    rows = {r["method"]: r["front"] for r in pareto.front_table(pts).rows}
    assert rows == {"fast": "b1 b256", "small": "bytes", "best": "bytes b1 b256",
                    "dominated": "-"}


def test_map_has_three_log_panels_with_the_front_and_the_peer():
    pts = [point("float", 0.896, 1_066_640), point("chain", 0.892, 23_000, b256=2.1,
                                                    technique="chain"),
           point("cnn", 0.915, 160_000, b1=0.5, b256=19.0, family="cnn", runtime="ONNX Runtime"),
           point("dominated", 0.85, 2_000_000, b1=1.0, b256=30.0)]
    fig = pareto.pareto_map(pts)
    try:
        assert len(fig.axes) == 3
        assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 3
        for ax, key in zip(fig.axes, pareto.COSTS, strict=True):
            front = pareto.pareto_front(pts, key)
            step = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
            assert len(step) == 1
            assert list(step[0].get_xdata()) == [p[key] for p in front]
            assert list(step[0].get_ydata()) == pytest.approx([100 * p["acc_mean"] for p in front])
        labels = fig.axes[0].get_legend_handles_labels()[1]
        assert any("Deep Compression" in label for label in labels)
        peer = [ln for ln in fig.axes[0].get_lines() if "Deep Compression" in ln.get_label()]
        assert peer[0].get_xdata()[0] == pytest.approx(266_610 * 4 / 40)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="at least one point"):
        pareto.pareto_map([])


def test_map_draws_a_one_seed_point_as_a_star_without_a_bar():
    pts = [point("three seeds", 0.90, 1000), point("one seed", 0.92, 2000, acc_std=None,
                                                    seeds=[0])]
    fig = pareto.pareto_map(pts)
    try:
        ax = fig.axes[0]
        markers = {ln.get_marker() for ln in ax.get_lines() if ln.get_label() != "Pareto front"}
        assert pareto.ONE_SEED_MARKER in markers and "o" in markers
        # one vertical (accuracy) error bar: the three-seed point's; the star has none
        bars = [c for c in ax.collections if len(c.get_segments()) and
                all(np.isclose(seg[0][0], seg[1][0]) for seg in c.get_segments())]
        ys = [seg[:, 1] for c in bars for seg in c.get_segments()]
        assert all(not (lo < 92 < hi) for lo, hi in (sorted(y) for y in ys))
        assert any(lo < 90 < hi for lo, hi in (sorted(y) for y in ys))
        assert "1 seed (no std: no error bar)" in [t.get_text() for t in fig.legends[0].texts]
    finally:
        plt.close(fig)
    fig = pareto.pareto_map([point("three seeds", 0.90, 1000)])
    try:
        assert not any("1 seed" in t.get_text() for t in fig.legends[0].texts)
    finally:
        plt.close(fig)
