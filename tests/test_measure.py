"""Tests for pruning_kit.measure: counts, sizes, FLOPs, latency, per-layer table, rows."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruning_kit import measure, models, timing, train

LENET_MACS = 784 * 300 + 300 * 100 + 100 * 10  # 266,200 multiply-accumulates per example


@pytest.fixture(scope="module")
def lenet():
    return models.lenet_300_100()


@pytest.fixture(scope="module")
def cnn():
    return models.small_cnn(image_size=8)


def small_mlp(seed: int = 0) -> models.MLP:
    return models.MLP(64, (32,), rngs=nnx.Rngs(seed))


class Unregistered(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


# --------------------------------------------------------------------------- counting
def test_count_params_lenet(lenet):
    assert measure.count_params(lenet) == 266610
    assert measure.dense_bytes(lenet) == 4 * 266610


def test_count_params_pytree_and_batchnorm_stats_excluded(cnn):
    assert measure.count_params({"w": jnp.ones((3, 4)), "b": np.zeros(4)}) == 16
    # A model counts nnx.Param only; its full state also holds BatchNorm mean/var.
    n_stats = sum(2 * c for c in (16, 32, 32, 32))
    assert measure.count_params(nnx.state(cnn)) == measure.count_params(cnn) + n_stats


def test_count_nonzero_drops_after_zeroing_a_kernel():
    model = small_mlp()
    before = measure.count_nonzero(model)
    model.layers[0].kernel[...] = 0.0
    assert measure.count_nonzero(model) == before - 64 * 32
    assert measure.count_params(model) == 64 * 32 + 32 + 32 * 10 + 10


def test_named_params_names(lenet):
    names = [n for n, _ in measure.named_params(lenet)]
    assert names[:2] == ["layers/0/bias", "layers/0/kernel"]
    assert len(names) == 6


@pytest.mark.parametrize("bad", [None, "model.npz", 3, {"w": "not an array"}, [1.0, 2.0]])
def test_not_a_model_nor_pytree_raises(bad):
    with pytest.raises(ValueError, match="NNX model or a pytree of arrays"):
        measure.count_params(bad)


# --------------------------------------------------------------------------- bytes
def test_serialized_bytes_close_to_dense(lenet):
    size = measure.serialized_bytes(lenet)
    assert 4 * 266610 <= size <= 4 * 266610 + 8_000


def test_serialized_bytes_of_a_path_is_the_file_size(tmp_path):
    path = train.save_model(small_mlp(), tmp_path / "m.npz")
    assert measure.serialized_bytes(path) == path.stat().st_size
    assert measure.serialized_bytes(str(path)) == measure.serialized_bytes(small_mlp())
    with pytest.raises(FileNotFoundError, match="No file"):
        measure.serialized_bytes(tmp_path / "missing.npz")


def test_serialized_bytes_of_unregistered_model_and_pytree():
    assert measure.serialized_bytes(Unregistered(nnx.Rngs(0))) >= 4 * (4 * 3 + 3)
    assert measure.serialized_bytes({"w": np.ones((100, 10), np.float32)}) >= 4000


# --------------------------------------------------------------------------- cost
def test_cost_lenet_macs_match_analytic_count(lenet):
    c = measure.cost(lenet, jnp.zeros((2, 28, 28, 1)))
    assert c["batch_size"] == 2
    assert c["macs"] == pytest.approx(2 * c["macs_per_example"])
    assert 1.0 <= c["macs_per_example"] / LENET_MACS <= 1.05


def test_cost_of_a_plain_function():
    c = measure.cost(lambda x: x @ jnp.ones((4, 3)), jnp.ones((2, 4)))
    assert c["macs_per_example"] == 12.0
    assert c["flops"] == 48.0


@pytest.mark.parametrize("reported, expected", [([{"flops": 8.0}], 8.0), ({}, float("nan")),
                                               (None, float("nan"))])
def test_cost_handles_list_dict_and_missing_key(monkeypatch, reported, expected):
    monkeypatch.setattr(jax.stages.Compiled, "cost_analysis", lambda self: reported)
    c = measure.cost(lambda x: x * 2, jnp.ones((2, 3)))
    np.testing.assert_equal(c["flops"], expected)
    np.testing.assert_equal(c["flops_per_example"], expected / 2)


# --------------------------------------------------------------------------- latency
def test_latency_model_and_function():
    r = measure.latency(small_mlp(), np.zeros((7, 8, 8, 1), np.float32), runs=4, warmup=1)
    assert isinstance(r, measure.LatencyResult)
    assert (r.runs, r.batch_size) == (4, 7)
    assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms
    r = measure.latency(jnp.tanh, jnp.ones((3, 5)), runs=2, warmup=0)
    assert r.batch_size == 3 and r.median_ms > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(runs=0), "runs must be an integer >= 1"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(x=np.zeros((0, 8, 8, 1))), "non-empty batch"),
    (dict(model_or_fn="lenet"), "NNX model or a callable"),
])
def test_latency_bad_input(kwargs, match):
    args = dict(model_or_fn=small_mlp(), x=np.zeros((2, 8, 8, 1), np.float32), runs=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        measure.latency(args.pop("model_or_fn"), args.pop("x"), **args)


# --------------------------------------------------------------------------- layers
def test_layer_table_lenet(lenet):
    rows = measure.layer_table(lenet)
    assert [r["name"] for r in rows] == ["layers/0", "layers/1", "layers/2"]
    assert [r["shape"] for r in rows] == [(784, 300), (300, 100), (100, 10)]
    assert {r["type"] for r in rows} == {"Linear"}
    assert sum(r["params"] for r in rows) == measure.count_params(lenet)


def test_layer_table_cnn_in_definition_order(cnn):
    rows = measure.layer_table(cnn)
    assert [r["name"] for r in rows] == ["conv1", "bn1", "conv2", "bn2", "res_conv1",
                                         "res_bn1", "res_conv2", "res_bn2", "head"]
    assert rows[0]["shape"] == (3, 3, 1, 16) and rows[0]["type"] == "Conv"
    assert rows[1]["type"] == "BatchNorm" and rows[1]["params"] == 32
    assert sum(r["params"] for r in rows) == measure.count_params(cnn)
    assert sum(r["dense_bytes"] for r in rows) == measure.dense_bytes(cnn)


def test_layer_table_shows_sparsity_of_a_zeroed_layer():
    model = small_mlp()
    model.layers[1].kernel[...] = 0.0
    row = measure.layer_table(model)[1]
    assert row["nonzeros"] == 0 and row["sparsity"] == 1.0
    assert measure.layer_table(model)[0]["sparsity"] == pytest.approx(32 / (64 * 32 + 32))
    with pytest.raises(ValueError, match="needs an NNX model"):
        measure.layer_table({"w": jnp.ones(3)})


# --------------------------------------------------------------------------- measure
MEASURE_KEYS = {"name", "accuracy", "params", "nonzeros", "sparsity", "dense_bytes",
                "serialized_bytes", "macs"}


def test_measure_row_has_every_key_and_tiles_small_test_sets(digits, trained_mlp):
    model = trained_mlp                    # only read: measure leaves a model as it came
    row = measure.measure(model, digits.x_test, digits.y_test, name="mlp",
                          batch_sizes=(1, 1000), runs=2, warmup=1)
    assert set(row) == MEASURE_KEYS | {"latency_b1_ms", "latency_b1000_ms"}
    assert row["name"] == "mlp" and row["params"] == measure.count_params(model)
    # accuracy and sparsity are fractions (a Table prints them in percent)
    assert row["accuracy"] == train.evaluate(model, digits.x_test, digits.y_test)
    assert 0.9 < row["accuracy"] <= 1.0 and 0.0 < row["sparsity"] < 0.01
    assert f"{100 * row['accuracy']:.2f}%" in str(measure.Table([row]))
    assert row["latency_b1_ms"] > 0 and row["latency_b1000_ms"] > 0
    assert row["macs"] == pytest.approx(64 * 32 + 32 * 10, rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_sizes=(0,)), "batch size must be an integer >= 1"),
    (dict(runs=0), "runs must be"),
    (dict(x_test=np.zeros((0, 8, 8, 1))), "x_test is empty"),
    (dict(model=lambda x: x), "needs an NNX model"),
])
def test_measure_bad_input(digits, kwargs, match):
    args = dict(model=small_mlp(), x_test=digits.x_test, y_test=digits.y_test, runs=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        measure.measure(args.pop("model"), args.pop("x_test"), args.pop("y_test"), **args)


# --------------------------------------------------------------------------- tables
ROWS = [
    {"name": "dense", "accuracy": 0.90, "serialized_bytes": 4000, "latency_b1_ms": 2.0},
    {"name": "pruned", "accuracy": 0.895, "serialized_bytes": 1000, "latency_b1_ms": 1.0},
]


def test_format_table_contains_names_and_units():
    text = measure.format_table(ROWS)
    assert "dense" in text and "pruned" in text
    assert "4.0 kB" in text and "89.50%" in text and "2.00 ms" in text
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1
    assert measure.format_table(ROWS, ["name"]).splitlines()[2] == "dense"
    with pytest.raises(ValueError, match="in no row"):
        measure.format_table(ROWS, ["name", "speed"])
    with pytest.raises(ValueError, match="must be dicts"):
        measure.Table([("dense", 0.9)])


def test_compare_adds_ratios_against_the_baseline():
    table = measure.compare(ROWS)
    base, pruned = table.rows
    assert base["compression"] == 1.0 and base["accuracy_delta"] == 0.0
    assert pruned["compression"] == 4.0 and pruned["speedup_b1"] == 2.0
    assert pruned["accuracy_delta"] == pytest.approx(-0.005)   # fractions; printed in points
    assert "4.00x" in str(table) and "-0.50 pts" in str(table)
    html = table._repr_html_()
    assert html.startswith("<table") and "pruned" in html
    assert table.to_markdown().count("\n") == 3
    assert measure.compare(ROWS, baseline_index=1)[0]["compression"] == 0.25
    with pytest.raises(ValueError, match="out of range"):
        measure.compare(ROWS, baseline_index=2)
    with pytest.raises(ValueError, match="at least one row"):
        measure.compare([])


def test_format_value_units():
    assert measure.format_value("dense_bytes", 1066440) == "1,066.4 kB"
    assert measure.format_value("latency_b256_ms", 12.345) == "12.3 ms"
    assert measure.format_value("sparsity", 0.9) == "90.00%"
    assert measure.format_value("accuracy_delta", 0.0125) == "+1.25 pts"
    assert measure.format_value("test_delta", -0.5) == "-0.50 pts"   # given in points
    assert measure.format_value("val_acc_pct", 97.5) == "97.50%"     # given in percent
    assert measure.format_value("params", 266610) == "266,610"
    assert measure.format_value("macs", float("nan")) == "-"


def test_machine_info():
    info = measure.machine_info()
    assert {"cpu", "isa", "cores", "backend", "device", "jax", "jaxlib", "flax", "optax",
            "python", "date"} <= set(info)
    assert info["jax"] == jax.__version__
    assert jax.__version__ in measure.machine_summary()
    assert f"[{info['isa']}]" in measure.machine_summary()


def test_layer_table_keeps_forward_order_after_a_save_load_round_trip(tmp_path):
    path = train.save_model(models.SmallCNN(widths=(2, 4), image_size=8,
                                            rngs=nnx.Rngs(0)), tmp_path / "c.npz")
    names = [r["name"] for r in measure.layer_table(train.load_model(path))]
    assert names == list(models.SmallCNN.LAYER_ORDER)


def test_table_title_prints_above_every_format():
    from pruning_kit.table import Table

    t = Table([{"name": "dense", "accuracy": 0.9}], title="My results")
    assert str(t).splitlines()[0] == "My results"
    assert t.to_markdown().startswith("**My results**")
    assert "<caption>My results</caption>" in t._repr_html_()


# --------------------------------------------------------------------------- compare_latency
class FakeMachine:
    """Candidates that record their call order and advance a fake clock by a set time."""

    def __init__(self, seconds: dict[str, float]):
        self.now, self.calls = 0.0, []
        self.fns = {name: self._fn(name, s) for name, s in seconds.items()}

    def _fn(self, name, seconds):
        def call(x):
            self.calls.append(name)
            self.now += seconds
            return x
        return call

    def clock(self) -> float:
        return self.now


def test_compare_latency_interleaves_and_alternates_the_order():
    fake = FakeMachine({"a": 0.004, "b": 0.002, "c": 0.001})
    r = measure.compare_latency(fake.fns, np.ones((3, 2)), rounds=4, runs=2, warmup=1,
                                jit=False, _clock=fake.clock)
    assert fake.calls[:3] == ["a", "b", "c"]  # warm-up, once each
    timed = fake.calls[3:]
    expected = []
    for order in ("abc", "cba", "abc", "cba"):
        expected += [n for n in order for _ in range(2)]
    assert timed == expected
    assert r.names == ("a", "b", "c") and r.baseline == "a" and r.rounds == 4
    assert r["a"].median_ms == pytest.approx(4.0)
    assert r["b"].speedup == pytest.approx(2.0) and r["c"].speedup == pytest.approx(4.0)
    assert r["a"].speedup == 1.0 and r.batch_sizes == {"a": 3, "b": 3, "c": 3}


def test_compare_latency_baseline_and_per_candidate_inputs():
    fake = FakeMachine({"a": 0.004, "b": 0.002})
    r = measure.compare_latency(fake.fns, {"a": np.ones((5, 2)), "b": np.ones((1, 2))},
                                rounds=2, runs=1, warmup=0, baseline="b", jit=False,
                                _clock=fake.clock)
    assert r["a"].speedup == pytest.approx(0.5)
    assert r.verdict("a").startswith("2.00x slower") and r.verdict("b") == "baseline"
    assert r.batch_sizes == {"a": 5, "b": 1}


def test_compare_latency_jitted_functions_and_models_keep_their_mode():
    model = models.small_cnn(image_size=8)
    model.train()
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    r = measure.compare_latency({"cnn": model, "double": lambda a: 2 * a}, x, rounds=2, runs=1,
                                warmup=0)
    assert set(r.as_dict()["candidates"]) == {"cnn", "double"}
    assert r["cnn"].median_ms > 0
    assert model.bn1.use_running_average is False  # still in training mode
    # ... while what was timed ran in eval mode (BatchNorm running averages).
    call, _ = timing.compiled_forward(model)
    assert model.bn1.use_running_average is False
    model.eval()
    np.testing.assert_allclose(np.asarray(call(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_latency_leaves_dropout_in_training_mode():
    class WithDropout(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.dense(x))

    model = WithDropout(nnx.Rngs(0))
    assert model.drop.deterministic is False
    measure.latency(model, np.ones((2, 4), np.float32), runs=1, warmup=0)
    assert model.drop.deterministic is False


@pytest.mark.parametrize("kwargs, match", [
    (dict(candidates={}), "non-empty dict"),
    (dict(candidates=[jnp.tanh]), "non-empty dict"),
    (dict(rounds=1), "rounds must be an integer >= 2"),
    (dict(runs=0), "runs must be an integer >= 1"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(baseline="c"), "Unknown baseline 'c'"),
    (dict(x={"a": np.ones((2, 3))}), "one batch per candidate"),
    (dict(x=np.ones((0, 3))), "non-empty batch"),
    (dict(candidates={"a": "model"}), "NNX model or a callable"),
    (dict(candidates={"a": 3}, jit=False), "not callable"),
])
def test_compare_latency_bad_input(kwargs, match):
    args = dict(candidates={"a": jnp.tanh, "b": jnp.sin}, x=np.ones((2, 3), np.float32),
                rounds=2, runs=1, warmup=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        measure.compare_latency(args.pop("candidates"), args.pop("x"), **args)


def test_latency_comparison_statistics_from_known_times():
    base = [10.0] * 8
    fast = [5.0, 5.0, 5.5, 6.0, 4.0, 5.0, 5.0, 5.0]                   # all rounds faster
    noisy = [9.0, 11.0, 9.5, 10.5, 10.0, 8.0, 12.0, 10.0]            # either side of 1
    slow = [20.0] * 8
    r = measure.LatencyComparison({"base": base, "fast": fast, "noisy": noisy, "slow": slow},
                                  baseline="base", runs=3)
    s = r["fast"]
    assert s.median_ms == 5.0 and s.min_max_ms == (4.0, 6.0)
    assert s.speedup == 2.0 and s.speedup_min_max == (10 / 6, 2.5)
    lo, hi = s.speedup_iqr
    assert 1 < lo <= 2.0 <= hi
    assert r.measurable("fast") and r.verdict("fast") == f"2.00x faster (IQR {lo:.2f}-{hi:.2f}x)"
    assert not r.measurable("noisy")
    lo, hi = r["noisy"].speedup_iqr
    assert lo < 1 < hi
    assert r.verdict("noisy") == f"no measurable difference (IQR {lo:.2f}-{hi:.2f}x crosses 1.0)"
    assert r.verdict("slow") == "2.00x slower (IQR 2.00-2.00x)"
    assert r.verdict("base") == "baseline" and not r.measurable("base")
    np.testing.assert_allclose(r.ratios("noisy"), np.array(base) / np.array(noisy))


def test_latency_comparison_table_and_dict():
    r = measure.LatencyComparison({"dense": (2.0, 2.2, 2.1), "small": (1.0, 1.0, 1.2)},
                                  baseline="dense", runs=5, batch_sizes={"dense": 8, "small": 8})
    table = r.table()
    assert [row["name"] for row in table] == ["dense", "small"]
    assert {"name", "median_ms", "iqr", "speedup", "spread", "range", "verdict"} <= set(
        table.columns)
    text = str(table)
    assert "2.00x faster" in text and "baseline" in text and "interleaved" in text
    d = r.as_dict()
    assert d["baseline"] == "dense" and d["rounds"] == 3 and d["runs"] == 5
    small = d["candidates"]["small"]
    assert small["speedup"] == 2.0 and small["times_ms"] == [1.0, 1.0, 1.2]
    assert small["batch_size"] == 8 and len(small["speedup_iqr"]) == 2
    json.dumps(d)  # JSON-ready


@pytest.mark.parametrize("times, baseline, match", [
    ({}, "a", "at least one candidate"),
    ({"a": [1.0]}, "a", "at least 2"),
    ({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}, "a", "same number of rounds"),
    ({"a": [1.0, 0.0]}, "a", "positive and finite"),
    ({"a": [1.0, float("nan")]}, "a", "positive and finite"),
    ({"a": [1.0, 2.0]}, "b", "Unknown baseline"),
])
def test_latency_comparison_bad_times(times, baseline, match):
    with pytest.raises(ValueError, match=match):
        measure.LatencyComparison(times, baseline=baseline)


def test_latency_comparison_unknown_name():
    r = measure.LatencyComparison({"a": [1.0, 2.0]}, baseline="a")
    with pytest.raises(ValueError, match="No candidate 'b'"):
        r["b"]


@pytest.mark.parametrize("cpuinfo, expected", [
    ("flags\t: fpu sse4_2 avx avx2 fma\n", "AVX2, FMA"),
    ("flags : avx2 fma avx512f avx512_vnni amx_tile\n", "AVX2, FMA, AVX-512F, AVX-512 VNNI, AMX"),
    ("flags : avx2 fma avx_vnni\n", "AVX2, FMA, AVX-VNNI"),
    ("flags : fpu sse4_2\n", "SSE4.2 (no AVX2)"),
    ("Features\t: fp asimd asimddp sve\n", "NEON, NEON dot product, SVE"),
    ("model name : something\n", "unknown"),
])
def test_isa_names_the_vector_instruction_sets(cpuinfo, expected):
    assert timing.isa(cpuinfo) == expected


def test_accuracy_standard_error_units_and_bad_input():
    m = measure
    assert m.accuracy_standard_error(90.0, 5000, percent=True) == pytest.approx(
        100 * m.accuracy_standard_error(0.9, 5000))
    assert m.accuracy_standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="percent=True"):
        m.accuracy_standard_error(90.0, 5000)
    with pytest.raises(ValueError, match="n"):
        m.accuracy_standard_error(0.9, 0)


def test_paired_standard_error_counts_only_the_images_the_models_disagree_on():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.9
    assert measure.paired_standard_error(a, a) == 0.0              # identical predictions
    b = a.copy()
    flip = rng.choice(2000, 20, replace=False)
    b[flip] = ~b[flip]
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    d = b.astype(float) - a.astype(float)                          # per-image differences
    assert measure.paired_standard_error(a, b) == pytest.approx(d.std() / np.sqrt(2000))
    assert measure.paired_standard_error(a, b) == pytest.approx(
        np.sqrt(n01 + n10 - (n01 - n10) ** 2 / 2000) / 2000)
    assert measure.paired_standard_error(a, b, percent=True) == pytest.approx(
        100 * measure.paired_standard_error(a, b))
    # far below one accuracy's standard error when the two models mostly agree
    assert measure.paired_standard_error(a, b) < 0.5 * measure.accuracy_standard_error(
        a.mean(), 2000)


@pytest.mark.parametrize("a, b, match", [
    (np.array([1, 0, 1]), np.array([True, False, True]), "boolean"),
    (np.ones((2, 2), bool), np.ones((2, 2), bool), "1-D"),
    (np.ones(3, bool), np.ones(4, bool), "same images"),
    (np.ones(0, bool), np.ones(0, bool), "non-empty"),
])
def test_paired_standard_error_refuses_what_it_cannot_pair(a, b, match):
    with pytest.raises(ValueError, match=match):
        measure.paired_standard_error(a, b)
