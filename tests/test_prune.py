"""Pruning: exact magnitude/random/N:M masks, pruning optimizers, sensitivity, sparse storage."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pruning_kit import masks as masks_lib
from pruning_kit import models, train
from pruning_kit import prune as pr
from pruning_kit import tree as tree_lib

FAST = settings(max_examples=25, deadline=None)
# few distinct magnitudes -> many ties; include signed zeros
TIED = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 2.0])
SPARSITY = st.floats(0.0, 1.0, exclude_max=True)
# a fixed set of shapes (each new shape compiles the ranking once); values vary freely
SHAPES = st.sampled_from([(1, 1), (1, 7), (3, 4), (5, 7), (2, 3, 4), (2, 2, 3, 3)])
VALUES = st.one_of(TIED, st.floats(-3, 3, width=32, allow_subnormal=False))  # XLA flushes
# subnormals to zero, so they would tie with 0.0


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def expected_zeros(s, n):
    """The documented count: round(s * n) in float32, ties to even."""
    return int(np.round(np.float32(s) * np.float32(n)))


def two_layers(seed=0):
    return {"a": {"kernel": normal(seed, (8, 6)), "bias": normal(seed + 1, (6,))},
            "b": {"kernel": normal(seed + 2, (6, 4)) * 10, "bias": normal(seed + 3, (4,))}}


def zero_where_pruned(params, masks):
    ok = jax.tree.map(lambda w, m: bool((np.asarray(w)[~np.asarray(m)] == 0).all()),
                      params, masks)
    return all(jax.tree.leaves(ok))


def assert_largest_kept(w, keep):
    """Every kept |w| >= every pruned |w|; at equal |w| pruned entries come first (flat)."""
    a, keep = np.abs(np.asarray(w)).reshape(-1), np.asarray(keep).reshape(-1)
    if keep.all() or not keep.any():
        return
    assert a[keep].min() >= a[~keep].max()
    t = a[keep].min()
    if a[~keep].max() == t:   # a tie at the threshold: stable order, lower index pruned
        assert np.flatnonzero(~keep & (a == t)).max() < np.flatnonzero(keep & (a == t)).min()


# --------------------------------------------------------------------------- exact masks
@FAST
@given(shape=SHAPES, s=SPARSITY, data=st.data())
def test_magnitude_masks_exact_count_and_largest_kept(shape, s, data):
    w = data.draw(hnp.arrays(np.float32, shape, elements=VALUES))
    m = pr.magnitude_masks({"kernel": w}, s)["kernel"]
    assert m.dtype == jnp.bool_ and m.shape == w.shape
    assert int((~m).sum()) == expected_zeros(s, w.size)
    assert_largest_kept(w, m)


@pytest.mark.parametrize("s, n, zeros", [(0.5, 10, 5), (0.25, 2, 0), (0.9, 100, 90),
                                          (0.0, 7, 0), (0.95, 10, 10)])
def test_count_is_round_of_s_times_n(s, n, zeros):
    assert int((~pr.magnitude_masks({"kernel": jnp.ones((n, 1))}, s)["kernel"]).sum()) == zeros


def test_all_equal_weights_prune_first_flat_indices():
    m = pr.magnitude_masks({"kernel": jnp.full((3, 4), 0.7)}, 0.5)["kernel"]
    assert np.asarray(m).reshape(-1).tolist() == [False] * 6 + [True] * 6


@FAST
@given(shapes=st.sampled_from([[(3, 4)], [(3, 4), (5, 7)], [(1, 7), (2, 3, 4), (3, 4)]]),
       s=SPARSITY, data=st.data())
def test_global_scope_exact_total_and_one_threshold(shapes, s, data):
    params = {f"l{i}": {"kernel": data.draw(hnp.arrays(np.float32, shape, elements=VALUES))}
              for i, shape in enumerate(shapes)}
    masks = pr.magnitude_masks(params, s, scope="global")
    n = sum(math.prod(shape) for shape in shapes)
    flat_w = np.concatenate([np.asarray(params[k]["kernel"]).reshape(-1) for k in params])
    flat_m = np.concatenate([np.asarray(masks[k]["kernel"]).reshape(-1) for k in params])
    assert int((~flat_m).sum()) == expected_zeros(s, n)
    assert_largest_kept(flat_w, flat_m)


def test_layer_vs_global_scope_and_unpruned_leaves():
    params = two_layers()        # layer b is 10x larger in magnitude
    layer = pr.magnitude_masks(params, 0.5)
    glob = pr.magnitude_masks(params, 0.5, scope="global")
    assert pr.layer_sparsity(layer) == {"a/kernel": 0.5, "b/kernel": 0.5}
    ls = pr.layer_sparsity(glob)
    assert ls["a/kernel"] > 0.6 and ls["b/kernel"] < 0.2
    assert 48 * ls["a/kernel"] + 24 * ls["b/kernel"] == pytest.approx(36)   # 50% of 72
    for m in (layer, glob):      # biases are not pruned: all-True masks of their shape
        assert m["a"]["bias"].dtype == jnp.bool_ and bool(m["a"]["bias"].all())


def test_per_layer_dict_and_leaf_names():
    params = two_layers()
    masks = pr.magnitude_masks(params, {"a/kernel": 0.25, "b/kernel": 0.75})
    assert pr.layer_sparsity(masks) == {"a/kernel": 0.25, "b/kernel": 0.75}
    only_a = pr.magnitude_masks(params, {"a/kernel": 0.5})      # unnamed layers: not pruned
    assert pr.layer_sparsity(only_a) == {"a/kernel": 0.5, "b/kernel": 0.0}
    with pytest.raises(ValueError, match=r"Unknown layer.*c/kernel.*a/kernel"):
        pr.magnitude_masks(params, {"c/kernel": 0.5})
    with pytest.raises(ValueError, match=r"Unknown layer.*'a\.kernel'.*joined by '/'"):
        pr.magnitude_masks(params, {"a.kernel": 0.5})             # one spelling: "/"
    with pytest.raises(ValueError, match="scope='layer'"):
        pr.magnitude_masks(params, {"a/kernel": 0.5}, scope="global")


@FAST
@given(shapes=st.sampled_from([((8, 6), (6, 4)), ((1, 7), (2, 2, 3, 3))]), s=SPARSITY,
       seed=st.integers(0, 2**31 - 1), scope=st.sampled_from(["layer", "global"]))
def test_random_masks_exact_counts(shapes, s, seed, scope):
    params = {f"l{i}": {"kernel": jnp.ones(shape)} for i, shape in enumerate(shapes)}
    masks = pr.random_masks(params, s, key=jax.random.key(seed), scope=scope)
    zeros = {k: int((~m["kernel"]).sum()) for k, m in masks.items()}
    sizes = {k: math.prod(shape) for k, shape in zip(params, shapes, strict=True)}
    if scope == "layer":
        assert zeros == {k: expected_zeros(s, n) for k, n in sizes.items()}
    else:
        assert sum(zeros.values()) == expected_zeros(s, sum(sizes.values()))


def test_random_masks_reproducible_by_key():
    params = two_layers()
    a = pr.random_masks(params, 0.6, key=jax.random.key(1))
    b = pr.random_masks(params, 0.6, key=jax.random.key(1))
    c = pr.random_masks(params, 0.6, key=jax.random.key(2))
    same = jax.tree.map(lambda x, y: bool((x == y).all()), a, b)
    assert all(jax.tree.leaves(same))
    assert not bool((a["a"]["kernel"] == c["a"]["kernel"]).all())
    g = pr.random_masks(params, 0.6, key=jax.random.key(1), scope="global")
    assert pr.sparsity(g, filter=pr.default_filter) == pytest.approx(expected_zeros(0.6, 72) / 72)


def test_traced_sparsity_one_trace_same_masks_as_eager():
    params = two_layers()
    traces = []

    @jax.jit
    def masks_at(p, s):
        traces.append(1)                 # Python side effect: runs once per trace
        return pr.magnitude_masks(p, s, scope="global")

    for s in (0.1, 0.37, 0.8, 0.95):
        jitted, eager = masks_at(params, s), pr.magnitude_masks(params, s, scope="global")
        assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()),
                                                jitted, eager)))
    assert len(traces) == 1
    before = masks_lib._rank_masks._cache_size()        # the eager path does not recompile either
    for s in (0.2, 0.4, 0.6):
        pr.magnitude_masks(params, s)
    assert masks_lib._rank_masks._cache_size() <= before + 1


def test_nnx_state_masks_mirror_and_apply_to_model():
    model = models.MLP(16, (8,), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    masks = pr.magnitude_masks(state, 0.75)
    assert jax.tree.structure(masks) == jax.tree.structure(state)   # Param wrappers kept
    assert isinstance(masks["layers"][0]["kernel"], nnx.Param)
    assert pr.layer_sparsity(pr.magnitude_masks(model, 0.75)) == pr.layer_sparsity(masks)
    pure = nnx.to_pure_dict(masks)                                    # dict masks work too
    nnx.update(model, pr.apply_masks(state, pure))
    assert pr.layer_sparsity(model) == {"layers/0/kernel": 0.75, "layers/1/kernel": 0.75}
    assert pr.sparsity(model) == pytest.approx((156 + 18) / 226)  # nnx.Linear biases start at 0
    assert pr.sparsity(pr.nonzero_masks(model), filter=pr.default_filter) == 0.75


def test_apply_masks_float_and_none_masks():
    p = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([4.0])}
    out = pr.apply_masks(p, {"w": jnp.array([1.0, 0.0, 1.0]), "b": None})
    assert out["w"].tolist() == [1.0, 0.0, 3.0] and out["b"].tolist() == [4.0]
    assert out["w"].dtype == jnp.float32


# --------------------------------------------------------------------------- schedule
def test_polynomial_schedule_end_points_and_shape():
    sched = pr.polynomial_schedule(0.8, 10, 110, initial_sparsity=0.1)
    assert float(sched(0)) == float(sched(10)) == np.float32(0.1)
    assert float(sched(110)) == float(sched(10_000)) == np.float32(0.8)
    values = [float(sched(t)) for t in range(10, 111, 10)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    t = 60   # Zhu & Gupta formula at the midpoint
    assert float(sched(t)) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - 50 / 100) ** 3, abs=1e-6)
    assert float(jax.jit(sched)(jnp.int32(110))) == np.float32(0.8)


# --------------------------------------------------------------------------- optimizers
def _pushing_grads(params):
    """Gradients that drive every weight away from zero (so momentum would regrow them)."""
    return jax.tree.map(lambda w: -jnp.sign(w) - 0.1, params)


@pytest.mark.parametrize("inner, scope", [(optax.adam(0.05), "layer"),
                                          (optax.sgd(0.05, momentum=0.9), "global")],
                         ids=["adam-layer", "sgd_momentum-global"])
def test_gradual_pruning_keeps_pruned_weights_zero(inner, scope):
    params = two_layers()
    tx = pr.gradual_pruning(inner, pr.polynomial_schedule(0.9, 0, 20), update_every=5,
                            scope=scope)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(30):
        updates, state = step(_pushing_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        masks = pr.masks_from_state(state)
        assert zero_where_pruned(params, masks), f"step {t}"
    assert int(state.count) == 30
    if scope == "layer":
        assert pr.layer_sparsity(params) == pytest.approx(
            {"a/kernel": expected_zeros(0.9, 48) / 48, "b/kernel": expected_zeros(0.9, 24) / 24})
    else:
        assert pr.sparsity(params, filter=pr.default_filter) == pytest.approx(
            expected_zeros(0.9, 72) / 72)
    assert not any(bool((p == 0).any()) for p in (params["a"]["bias"], params["b"]["bias"]))


def test_gradual_pruning_masks_only_change_on_update_steps():
    params = two_layers()
    tx = pr.gradual_pruning(optax.sgd(0.01), pr.polynomial_schedule(0.5, 0, 8), update_every=4)
    state, step = tx.init(params), jax.jit(tx.update)
    history = []
    for _ in range(9):
        updates, state = step(_pushing_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        history.append(pr.sparsity(pr.masks_from_state(state), filter=pr.default_filter))
    assert history[0] == 0.0 and history[1:4] == [0.0] * 3       # step 0: schedule(0) = 0
    assert history[4] == history[5] == history[6] == history[7] > 0.0
    assert history[8] == 0.5


def test_constant_schedule_and_chained_state():
    params = two_layers()
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     pr.gradual_pruning(optax.adam(1e-2), 0.7, update_every=1000))
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_pushing_grads(params), state, params)
    params = optax.apply_updates(params, updates)
    assert pr.layer_sparsity(pr.masks_from_state(state)) == pr.layer_sparsity(params)
    assert pr.layer_sparsity(params)["a/kernel"] == pytest.approx(expected_zeros(0.7, 48) / 48)


def test_masked_keeps_fixed_masks_through_momentum():
    params = two_layers()
    masks = pr.random_masks(params, 0.5, key=jax.random.key(0))
    tx = pr.keep_masked(optax.sgd(0.1, momentum=0.9), masks)
    state, step, start = tx.init(params), jax.jit(tx.update), params
    for _ in range(5):
        updates, state = step(_pushing_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        assert zero_where_pruned(params, masks)
    kept = masks["a"]["kernel"]
    assert bool((params["a"]["kernel"][kept] != start["a"]["kernel"][kept]).all())
    same = jax.tree.map(lambda a, b: bool((a == b).all()), pr.masks_from_state(state), masks)
    assert all(jax.tree.leaves(same))


def test_fit_with_gradual_pruning_on_digits(trained_mlp, digits):
    model = nnx.clone(trained_mlp)
    tx = pr.gradual_pruning(optax.adam(3e-3), pr.polynomial_schedule(0.8, 0, 100),
                            update_every=20)
    # 4 epochs of 31 steps: the last mask update (step 120) is at the final sparsity
    train.fit(model, digits.x_train, digits.y_train, epochs=4, batch_size=32, tx=tx,
              progress=False)
    assert pr.layer_sparsity(model) == pytest.approx(
        {"layers/0/kernel": expected_zeros(0.8, 2048) / 2048,
         "layers/1/kernel": expected_zeros(0.8, 320) / 320})
    masks = pr.nonzero_masks(model)
    assert pr.sparsity(masks, filter=pr.default_filter) == pytest.approx(0.8, abs=1e-3)
    assert train.evaluate(model, digits.x_test, digits.y_test) > 0.8


def test_nnx_optimizer_masks_from_state():
    model = models.MLP(16, (8,), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, pr.gradual_pruning(optax.adam(1e-2), 0.5, update_every=3),
                        wrt=nnx.Param)
    x, y = normal(0, (4, 16)), jnp.array([0, 1, 2, 3])

    @nnx.jit
    def step(model, opt):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()  # noqa
        opt.update(model, nnx.grad(loss)(model))

    for _ in range(4):
        step(model, opt)
    masks = pr.masks_from_state(opt)
    assert pr.layer_sparsity(masks) == pr.layer_sparsity(model) == {
        "layers/0/kernel": 0.5, "layers/1/kernel": 0.5}


# --------------------------------------------------------------------------- N:M
@FAST
@given(shape=st.sampled_from([(8, 3), (16, 2), (2, 3, 8, 2)]),      # Dense (in, out), Conv
       nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (2, 8)]), data=st.data())
def test_nm_pattern_holds(shape, nm, data):
    n, m = nm
    w = jnp.asarray(data.draw(hnp.arrays(np.float32, shape, elements=VALUES)))
    mask = pr.nm_masks({"kernel": w}, n, m)["kernel"]
    assert pr.check_nm({"kernel": mask}, n, m)
    assert pr.check_nm(pr.apply_masks({"kernel": w}, {"kernel": mask}), n, m)
    g = np.moveaxis(np.asarray(mask), -2, -1).reshape(-1, m)
    a = np.moveaxis(np.abs(np.asarray(w)), -2, -1).reshape(-1, m)
    assert (g.sum(-1) == n).all()                                   # exactly n kept
    if n < m:
        assert (np.where(g, a, np.inf).min(-1) >= np.where(g, -np.inf, a).max(-1)).all()


def test_nm_dense_axis_and_check_reports_group():
    w = jnp.array([[1.0, 9.0], [5.0, 1.0], [2.0, 8.0], [0.5, 7.0]])      # (in=4, out=2)
    m = pr.nm_masks({"kernel": w}, 2, 4, axis=0)["kernel"]
    assert m.astype(int).tolist() == [[0, 1], [1, 0], [1, 1], [0, 0]]
    broken = {"fc": {"kernel": w.at[3, 1].set(0.0)}}                   # column 0: 4 non-zeros
    with pytest.raises(ValueError, match=r"fc/kernel breaks 2:4.*\(0,\).*4 non-zeros"):
        pr.check_nm(broken, 2, 4)


def test_nm_bad_arguments():
    p = {"layer": {"kernel": jnp.ones((6, 4))}}
    with pytest.raises(ValueError, match="n <= m"):
        pr.nm_masks(p, 4, 2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        pr.nm_masks(p, 0, 4)
    with pytest.raises(ValueError, match=r"layer/kernel: axis -2 has length 6.*m=4"):
        pr.nm_masks(p, 2, 4)


# --------------------------------------------------------------------------- sensitivity
def test_layer_sensitivity_matches_manual_pruning(trained_mlp, digits):
    trained = trained_mlp                 # shared: layer_sensitivity must not change it
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(trained, nnx.Param)))
    sens = pr.layer_sensitivity(trained, digits.x_test, digits.y_test, (0.5, 0.9, 0.99))
    assert list(sens) == ["layers/0/kernel", "layers/1/kernel"]
    after = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), before, after)))
    state = nnx.state(trained, nnx.Param)
    graphdef, _, rest = nnx.split(trained, nnx.Param, ...)
    pruned = pr.apply_masks(state, pr.magnitude_masks(state, {"layers/1/kernel": 0.9}))
    manual = train.evaluate(nnx.merge(graphdef, pruned, rest), digits.x_test, digits.y_test)
    assert sens["layers/1/kernel"][1] == manual
    assert sens["layers/0/kernel"][2] < sens["layers/0/kernel"][0]


def test_sparsity_from_sensitivity_greedy():
    sens = {"big": [0.95, 0.94, 0.90], "mid": [0.95, 0.80, 0.30], "small": [0.5, 0.2, 0.1]}
    sizes = {"big": 800, "mid": 150, "small": 50}
    levels = (0.5, 0.8, 0.9)
    out = pr.sparsity_from_sensitivity(sens, levels, 0.7, sizes, baseline=0.96)
    overall = sum(sizes[n] * out[n] for n in sizes) / 1000
    assert out == {"big": 0.8, "mid": 0.5, "small": 0.0}       # big first, then mid
    assert overall == pytest.approx(0.715)
    with pytest.raises(ValueError, match="Cannot reach"):
        pr.sparsity_from_sensitivity(sens, levels, 0.85, sizes, baseline=0.96, max_drop=0.05)
    tree = {n: {"kernel": jnp.ones((s,))} for n, s in sizes.items()}      # sizes from a tree
    named = {f"{n}/kernel": v for n, v in sens.items()}
    assert pr.sparsity_from_sensitivity(named, levels, 0.7, tree, baseline=0.96) == \
        {f"{n}/kernel": v for n, v in out.items()}


# --------------------------------------------------------------------------- storage
def test_sparse_nbytes_formulas_and_break_even():
    w = np.zeros(10_000, np.float32)
    w[:5000] = 1.0
    assert pr.sparse_nbytes(w, "dense") == 40_000
    assert pr.sparse_nbytes(w, "bitmap") == 1250 + 20_000
    assert pr.sparse_nbytes(w, "coo") == 5000 * (2 + 4)
    big = np.zeros(100_000, np.float32)
    big[:50_000] = 1.0
    assert pr.sparse_nbytes(big, "coo") == pr.sparse_nbytes(big, "dense")   # int32: 50% even
    w3 = np.ones(1000, np.float32)
    w3[:40] = 0.0                                                          # 4% sparse
    assert pr.sparse_nbytes(w3, "bitmap") < pr.sparse_nbytes(w3, "dense")
    w3[:40] = 1.0
    w3[:20] = 0.0                                                          # 2% sparse
    assert pr.sparse_nbytes(w3, "bitmap") > pr.sparse_nbytes(w3, "dense")
    with pytest.raises(ValueError, match="format"):
        pr.sparse_nbytes(w, "csr")


@pytest.mark.parametrize("fmt", ["bitmap", "coo"])
def test_save_load_round_trip_and_size(tmp_path, fmt):
    params = {"layers": {0: {"kernel": normal(0, (256, 300)), "bias": normal(1, (300,))},
                         1: {"kernel": normal(2, (300, 10)), "bias": normal(3, (10,))}}}
    masks = pr.magnitude_masks(params, 0.9)
    path = pr.save_sparse(tmp_path / "sparse.npz", params, masks, format=fmt)
    loaded = pr.load_sparse(path)
    want = pr.apply_masks(params, masks)
    assert jax.tree.structure(loaded) == jax.tree.structure(want)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), loaded, want)))
    formula = sum(pr.sparse_nbytes(w, fmt if name.endswith("kernel") else "dense")
                  for name, w in tree_lib.named_leaves(want).items())
    size = path.stat().st_size             # + zip/npy headers of 7 arrays and the JSON header
    assert formula <= size <= formula + 3000
    assert size < 0.25 * 4 * sum(w.size for w in jax.tree.leaves(params))
    assert not list(tmp_path.glob(".*tmp"))              # no temporary file left


class ConvBN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 8, rngs=rngs)


def test_save_sparse_model_with_batchnorm_into_fresh_model(tmp_path):
    model = ConvBN(nnx.Rngs(0))
    nnx.update(model, jax.tree.map(lambda v: v + 0.5, nnx.state(model, nnx.BatchStat)))
    masks = pr.magnitude_masks(model, 0.6)                       # nnx.Param leaves only
    path = pr.save_sparse(tmp_path / "m.npz", model, masks)
    fresh = ConvBN(nnx.Rngs(5))
    state = nnx.state(fresh, nnx.Any(nnx.Param, nnx.BatchStat))
    nnx.replace_by_pure_dict(state, pr.load_sparse(path))
    nnx.update(fresh, state)
    nnx.update(model, pr.apply_masks(nnx.state(model, nnx.Param), masks))
    want, got = (nnx.to_pure_dict(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)))
                 for m in (model, fresh))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), want, got)))
    assert float(fresh.bn.mean[...][0]) == 0.5                    # BatchNorm stats saved too
    assert pr.layer_sparsity(fresh) == pytest.approx({"conv/kernel": 22 / 36,
                                                      "head/kernel": 19 / 32})
    with pytest.raises(ValueError, match="params lacks"):
        pr.save_sparse(tmp_path / "x.npz", model, {"other": {"kernel": jnp.ones(2)}})


def test_load_sparse_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_sparse"):
        pr.load_sparse(tmp_path / "missing.npz")
    path = pr.save_sparse(tmp_path / "p.npz", {"k": {"kernel": normal(0, (32, 32))}})
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated"):
        pr.load_sparse(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", __header__=np.frombuffer(b'{"kind": "x"}', np.uint8))
    with pytest.raises(ValueError, match="not a pruning_kit sparse params file"):
        pr.load_sparse(tmp_path / "other.npz")


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("s", [1.0, -0.1, math.nan, math.inf, 1.5, "0.5", None, [0.5]])
def test_bad_sparsity(s):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pr.magnitude_masks(two_layers(), s)


def test_bad_inputs():
    params = two_layers()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pr.random_masks(params, 1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="sparsity of a/kernel"):
        pr.magnitude_masks(params, {"a/kernel": math.nan})
    with pytest.raises(ValueError, match="filter selected no leaf"):
        pr.magnitude_masks({"w": jnp.ones((3, 3))}, 0.5)
    with pytest.raises(ValueError, match="filter selected no leaf"):
        pr.magnitude_masks(params, 0.5, filter=lambda name, w: False)
    with pytest.raises(ValueError, match="scope"):
        pr.magnitude_masks(params, 0.5, scope="model")
    with pytest.raises(ValueError, match=r"jax\.random\.key"):
        pr.random_masks(params, 0.5, key=0)
    with pytest.raises(ValueError, match="NaN/inf"):
        pr.magnitude_masks({"kernel": jnp.array([[1.0, jnp.nan]])}, 0.5)
    masks = pr.magnitude_masks(params, 0.5)
    with pytest.raises(ValueError, match=r"masks do not match.*missing \['b/bias'\]"):
        pr.apply_masks(params, {"a": masks["a"], "b": {"kernel": masks["b"]["kernel"]}})
    with pytest.raises(ValueError, match="shape mismatch"):
        pr.apply_masks(params, {**masks, "a": {**masks["a"], "kernel": jnp.ones((6, 8), bool)}})
    with pytest.raises(ValueError, match="not a model"):
        pr.apply_masks(models.MLP(4, (2,), rngs=nnx.Rngs(0)), masks)
    with pytest.raises(ValueError, match="masks do not match"):
        pr.keep_masked(optax.sgd(0.1), {"a": masks["a"]}).init(params)


def test_bad_optimizer_and_schedule_inputs():
    params = two_layers()
    for tx in (pr.gradual_pruning(optax.sgd(0.1), 0.5), pr.keep_masked(optax.sgd(0.1), params)):
        state = tx.init(params)
        with pytest.raises(ValueError, match="needs the current params"):
            tx.update(params, state)
    with pytest.raises(ValueError, match="update_every"):
        pr.gradual_pruning(optax.sgd(0.1), 0.5, update_every=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pr.gradual_pruning(optax.sgd(0.1), 1.0)
    with pytest.raises(ValueError, match="No PruningState"):
        pr.masks_from_state(optax.adam(0.1).init(params))
    with pytest.raises(ValueError, match="final_sparsity"):
        pr.polynomial_schedule(1.0, 0, 10)
    with pytest.raises(ValueError, match="end_step"):
        pr.polynomial_schedule(0.5, 10, 10)
    with pytest.raises(ValueError, match="must not decrease"):
        pr.polynomial_schedule(0.5, 0, 10, initial_sparsity=0.8)
    with pytest.raises(ValueError, match="power"):
        pr.polynomial_schedule(0.5, 0, 10, power=0)


def test_keep_masked_fit_keeps_zeros_and_leaves_the_callers_masks_usable(trained_mlp, digits):
    model = nnx.clone(trained_mlp)
    start = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    masks = pr.magnitude_masks(nnx.state(model, nnx.Param), 0.5)
    want = jax.tree.map(np.array, nnx.to_pure_dict(masks))             # a host copy
    for _ in range(2):     # the same masks twice: fit donates its optimizer state
        train.fit(model, digits.x_train, digits.y_train, epochs=1, batch_size=64,
                  tx=pr.keep_masked(optax.adam(1e-3), masks), progress=False)
    # the caller's masks are still readable (not donated) and unchanged
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                            nnx.to_pure_dict(masks), want)))
    # the model's weights are zero exactly where the masks say, and trained elsewhere
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for i in (0, 1):
        w, m = np.asarray(got["layers"][i]["kernel"]), want["layers"][i]["kernel"]
        assert np.array_equal(w != 0, m), f"layer {i}: zeros not where the masks prune"
        assert (w[m] != start["layers"][i]["kernel"][m]).mean() > 0.5   # kept ones trained
    assert pr.layer_sparsity(model) == {"layers/0/kernel": 0.5, "layers/1/kernel": 0.5}


# --------------------------------------------------------------------------- scores
def test_score_masks_any_sign_ties_in_flat_order():
    scores = jnp.array([[0.5, -1.0, -1.0], [2.0, 0.0, -0.0]])
    m = pr.score_masks({"kernel": jnp.ones((2, 3))}, {"kernel": scores}, 0.5)["kernel"]
    # the 3 lowest: -1.0 (index 1), -1.0 (index 2), then 0.0 / -0.0 tie: the earlier (4)
    assert np.asarray(m).reshape(-1).tolist() == [True, False, False, True, False, True]
    with pytest.raises(ValueError, match="scores has no leaf kernel"):
        pr.score_masks({"kernel": jnp.ones((2, 3))}, {"other": scores}, 0.5)
    with pytest.raises(ValueError, match="kernel score contains NaN"):
        pr.score_masks({"kernel": jnp.ones((1, 2))}, {"kernel": jnp.array([[1.0, jnp.nan]])},
                       0.5)


@FAST
@given(shape=SHAPES, s=SPARSITY, data=st.data())
def test_score_masks_match_a_stable_argsort(shape, s, data):
    scores = data.draw(hnp.arrays(np.float32, shape, elements=VALUES))
    m = np.asarray(pr.score_masks({"kernel": jnp.ones(shape)}, {"kernel": scores}, s)[
        "kernel"]).reshape(-1)
    flat = np.where(scores == 0, 0.0, scores).reshape(-1)         # -0.0 ties with 0.0
    want = np.ones(flat.size, bool)
    want[np.argsort(flat, kind="stable")[:expected_zeros(s, flat.size)]] = False
    assert np.array_equal(m, want)


def _one_pruning_step(score_fn, grads):
    params = two_layers()
    kwargs = {} if score_fn is None else {"score_fn": score_fn}
    tx = pr.gradual_pruning(optax.sgd(0.0), 0.5, update_every=1000, **kwargs)
    state = tx.init(params)
    _, state = jax.jit(tx.update)(grads, state, params)
    return params, pr.masks_from_state(state)


def test_gradual_pruning_score_fn_decides_which_weights_go():
    params = two_layers()
    grads = jax.tree.map(jnp.ones_like, params)
    _, by_magnitude = _one_pruning_step(None, grads)
    assert by_magnitude["a"]["kernel"].tolist() == pr.magnitude_masks(
        params, 0.5)["a"]["kernel"].tolist()
    _, by_smallest = _one_pruning_step(lambda w, g: -jnp.abs(w), grads)   # the opposite
    for k in ("a", "b"):
        a, b = np.asarray(by_magnitude[k]["kernel"]), np.asarray(by_smallest[k]["kernel"])
        assert np.array_equal(a, ~b), "keeping the smallest |w| prunes exactly the others"
    # first-order (Taylor) saliency |w * g|: weights with zero gradient go first
    still = jax.tree.map(lambda w: jnp.asarray(np.arange(w.size).reshape(w.shape) % 2,
                                               w.dtype), params)
    _, by_taylor = _one_pruning_step(lambda w, g: jnp.abs(w * g), still)
    for k in ("a", "b"):
        assert np.array_equal(np.asarray(by_taylor[k]["kernel"]),
                              np.asarray(still[k]["kernel"]) != 0)
    with pytest.raises(ValueError, match="score_fn must be a function"):
        pr.gradual_pruning(optax.sgd(0.1), 0.5, score_fn="magnitude")


def test_pruning_state_count_saturates_instead_of_wrapping():
    params = two_layers()
    tx = pr.keep_masked(optax.sgd(0.1), pr.magnitude_masks(params, 0.5))
    state = tx.init(params)._replace(count=jnp.int32(np.iinfo(np.int32).max))
    _, state = tx.update(_pushing_grads(params), state, params)
    assert int(state.count) == np.iinfo(np.int32).max


def test_default_filter_says_which_weight_matrices_it_leaves_dense():
    class Custom(nnx.Module):             # a user layer with a bare 2-D weight
        def __init__(self):
            self.fc = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
            self.w = nnx.Param(jnp.ones((3, 3)))

    params = nnx.state(Custom(), nnx.Param)
    with pytest.warns(UserWarning, match=r"left out \(prune\): \['w'\].*filter=lambda") as rec:
        masks = pr.magnitude_masks(params, 0.5)
    assert rec[0].filename == __file__                    # it points at the caller's line
    assert float(pr.sparsity(masks["fc"]["kernel"])) == 0.5   # the kernel is pruned
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # an explicit filter is not warned about
        pr.magnitude_masks(params, 0.5, filter=lambda name, w: w.ndim >= 2)
        pr.magnitude_masks(nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Param), 0.5)
