"""Weight sharing (pruning_kit.weight_sharing) and the Deep Compression chain
(pruning_kit.deep_compression) on sklearn digits (fast)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pruning_kit import codec, deep_compression, distill, masks, models, train, tree
from pruning_kit import weight_sharing as ws
from pruning_kit.codebook import codebook_lookup, codebook_nbytes
from pruning_kit.quant_storage import dequantized_model, quantize_tree


@pytest.fixture(scope="module")
def pruned(trained_mlp):
    model = nnx.clone(trained_mlp)                 # the session's model stays as it is
    params = nnx.state(model, nnx.Param)
    nnx.update(model, masks.apply_masks(params, masks.magnitude_masks(params, 0.6)))
    return model


def _kernels(model):
    return [np.asarray(layer.kernel[...]) for layer in model.layers]


def _loss(model, x, y):
    return float(optax.softmax_cross_entropy_with_integer_labels(
        train.predict(model, x), y).mean())


# --------------------------------------------------------------------------- codebooks
def test_kmeans_codebooks_keep_zeros_and_counts(pruned):
    cbs, idx = ws.kmeans_codebooks(pruned, {"layers/0/kernel": 2, "layers/1/kernel": 3})
    shared = ws.shared_model(pruned, cbs, idx)
    for before, after, bits in zip(_kernels(pruned), _kernels(shared), (2, 3), strict=True):
        np.testing.assert_array_equal(before == 0, after == 0)
        assert len(np.unique(after[after != 0])) <= 2**bits
    assert int((np.asarray(idx["layers/0/kernel"]) == -1).sum()) == \
        int((_kernels(pruned)[0] == 0).sum())
    np.testing.assert_array_equal(shared.layers[0].bias[...], pruned.layers[0].bias[...])
    # every weight clustered: the zeros join a cluster (no -1), at most 4 values in all
    cbs_all, idx_all = ws.kmeans_codebooks(pruned, 2, keep_zeros=False, init="density")
    assert set(idx_all) == {"layers/0/kernel", "layers/1/kernel"}
    assert int(np.asarray(idx_all["layers/0/kernel"]).min()) >= 0
    k0 = _kernels(ws.shared_model(pruned, cbs_all, idx_all))[0]
    assert len(np.unique(k0)) <= 4
    assert codebook_nbytes(64 * 32, 2) == 64 * 32 // 4 + 16


def test_shared_gradients_sum_each_cluster():
    idx = jnp.array([[0, 1], [1, -1], [2, 0]])
    g = jnp.arange(1.0, 7.0).reshape(3, 2)
    tx = ws.shared_gradients({"w": idx})
    out, _ = tx.update({"w": g, "b": jnp.ones(2)}, tx.init({"w": g, "b": jnp.ones(2)}))
    np.testing.assert_array_equal(out["w"], [[7.0, 5.0], [5.0, 0.0], [5.0, 7.0]])
    np.testing.assert_array_equal(out["b"], [1.0, 1.0])         # not shared: unchanged
    # the same as the gradient of the centroids through codebook_lookup
    book = jnp.array([0.5, -1.0, 2.0])
    grad_book = jax.grad(lambda c: jnp.sum(codebook_lookup(c, idx) * g))(book)
    np.testing.assert_allclose(out["w"][idx >= 0], grad_book[idx[idx >= 0]])
    with pytest.raises(ValueError, match="name no parameter"):
        tx.init({"v": g})


def _reference_centroid_training(model, codebooks, indices, x, y, *, epochs, lr, batch_size,
                                 seed=0):
    """The centroid training the package did before it used train.fit: Adam on the
    codebooks themselves, gradients through codebook_lookup, the others frozen, fit's
    shuffling."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    steps = len(x) // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps * epochs))
    books = {n: jnp.asarray(c) for n, c in codebooks.items()}
    state = tx.init(books)

    def loss(books, xb, yb):
        kernels = {n: codebook_lookup(c, indices[n]) for n, c in books.items()}
        m = nnx.merge(graphdef, tree.replace_leaves(params, kernels), rest)
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    step = jax.jit(jax.value_and_grad(loss))
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for i in range(steps):
            b = order[i * batch_size:(i + 1) * batch_size]
            _, grads = step(books, jnp.asarray(x[b]), jnp.asarray(y[b]))
            updates, state = tx.update(grads, state, books)
            books = optax.apply_updates(books, updates)
    return books


def test_fit_with_shared_gradients_keeps_sharing_and_matches_centroid_training(
        trained_mlp, digits):
    x, y = digits.x_train, digits.y_train
    cbs, idx = ws.kmeans_codebooks(trained_mlp, 2, init="density", iters=20)
    shared = ws.shared_model(trained_mlp, cbs, idx)
    before = _loss(shared, x, y)
    steps = 3 * (len(x) // 64)
    tx = ws.centroid_optimizer(idx, 1e-3, steps, train_others=False)
    train.fit(shared, x, y, epochs=3, batch_size=64, tx=tx, progress=False)
    # every weight still sits exactly on its centroid; biases frozen; trained model untouched
    tuned = ws.codebooks_of(shared, cbs, idx)
    for name, layer in (("layers/0/kernel", shared.layers[0]),
                        ("layers/1/kernel", shared.layers[1])):
        np.testing.assert_array_equal(layer.kernel[...], codebook_lookup(tuned[name], idx[name]))
        assert not np.allclose(tuned[name], cbs[name])
    for i in range(2):
        np.testing.assert_array_equal(shared.layers[i].bias[...], trained_mlp.layers[i].bias[...])
    assert _loss(shared, x, y) < before
    # the same centroids as training the codebooks directly, up to float summation order
    ref = _reference_centroid_training(trained_mlp, cbs, idx, x, y, epochs=3, lr=1e-3,
                                       batch_size=64)
    for name in cbs:
        np.testing.assert_allclose(tuned[name], ref[name], rtol=1e-4, atol=1e-6)
    ref_model = ws.shared_model(trained_mlp, ref, idx)
    assert abs(_loss(ref_model, x, y) - _loss(shared, x, y)) < 1e-4
    # the wrapper does the same
    books, model = ws.finetune_shared(trained_mlp, cbs, idx, x, y, epochs=3, lr=1e-3,
                                      batch_size=64, train_others=False)
    for name in cbs:
        np.testing.assert_array_equal(books[name], tuned[name])
    # a broken sharing is refused when read back
    broken = nnx.clone(model)
    broken.layers[0].kernel[...] = broken.layers[0].kernel[...].at[0, 0].add(1.0)
    with pytest.raises(ValueError, match="sharing was broken"):
        ws.codebooks_of(broken, cbs, idx)


def test_finetune_keeps_zeros_and_values(pruned, digits):
    cbs, idx = ws.kmeans_codebooks(pruned, 2)
    y = (digits.y_train, distill.teacher_logits(pruned, digits.x_train))
    new_cbs, shared = ws.finetune_shared(pruned, cbs, idx, digits.x_train, y,
                                         loss_fn=distill.recovery_loss(), epochs=1,
                                         batch_size=32)
    assert not np.allclose(new_cbs["layers/0/kernel"], cbs["layers/0/kernel"])
    for before, after in zip(_kernels(pruned), _kernels(shared), strict=True):
        np.testing.assert_array_equal(before == 0, after == 0)
        assert len(np.unique(after[after != 0])) <= 4
    assert not np.array_equal(shared.layers[0].bias[...], pruned.layers[0].bias[...])


# --------------------------------------------------------------------------- the chain
def test_deep_compression_file_reloads_identically(pruned, digits, tmp_path):
    c = deep_compression.deep_compression(pruned, digits.x_train, digits.y_train, 3,
                                          epochs=1, batch_size=32)
    path = codec.save(tmp_path / "m.pkc", c.model, quantized=c.quantized)
    encodings = {r["leaf"]: r["encoding"] for r in codec.inspect(path)["streams"]}
    assert encodings["layers/0/kernel"] in ("sparse-codebook", "sparse-context")
    assert encodings["layers/0/bias"].startswith("int")
    back = codec.load(path)
    np.testing.assert_array_equal(train.predict(back, digits.x_test),
                                  train.predict(c.model, digits.x_test))


def test_errors(pruned):
    with pytest.raises(ValueError, match="not kernels"):
        ws.kmeans_codebooks(pruned, {"layers/0/bias": 2})
    empty = models.MLP(4, (3,), rngs=nnx.Rngs(0))
    empty.layers[0].kernel[...] = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="no non-zero"):
        ws.kmeans_codebooks(empty, 2)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 8\]"):
        ws.kmeans_codebooks(pruned, 9)
    cbs, idx = ws.kmeans_codebooks(pruned, 2)
    with pytest.raises(ValueError, match="same kernels"):
        ws.shared_model(pruned, cbs, {})
    with pytest.raises(ValueError, match="epochs"):
        ws.finetune_shared(pruned, cbs, idx, np.zeros((4, 64)), np.zeros(4, int), epochs=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        ws.finetune_shared(pruned, cbs, idx, np.zeros((4, 64)), np.zeros(4, int), lr=0.0)
    with pytest.raises(ValueError, match="x is empty"):
        ws.finetune_shared(pruned, cbs, idx, np.zeros((0, 64)), np.zeros(0, int))


def test_folded_cnn_int8_roundtrip(tmp_path):
    cnn = models.SmallCNN(widths=(4, 8), rngs=nnx.Rngs(0))
    cnn.eval()
    x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    folded = deep_compression.fold_cnn_model(cnn)
    np.testing.assert_allclose(folded(jnp.asarray(x)), cnn(jnp.asarray(x)), atol=1e-5)
    qtree = quantize_tree(folded, 8)
    compressed = dequantized_model(folded, qtree)
    path = codec.save(tmp_path / "c.pkc", compressed, quantized=qtree)
    back = codec.load(path)
    assert isinstance(back, deep_compression.FoldedCNN)
    np.testing.assert_array_equal(train.predict(back, x), train.predict(compressed, x))
    with pytest.raises(ValueError):
        deep_compression.fold_cnn_model(models.MLP(4, (3,), rngs=nnx.Rngs(0)))
