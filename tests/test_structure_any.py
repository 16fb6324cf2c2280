"""Every technique on models the course did not write (pruning_kit.zoo: eight
architectures written the way users write them): traced groups, removal == masking,
BatchNorm folding, W8A8 integer inference, save -> load into the user's own class."""

import numpy as np
import pytest
from flax import nnx

from pruning_kit import codec, fold, graph, structure, user_models, w8a8

X = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
EXAMPLE = X[:2]


def _randomize_norms(model: nnx.Module) -> nnx.Module:
    """Give every BatchNorm non-trivial statistics, so folding has something to fold."""
    rng = np.random.default_rng(1)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            c = node.num_features
            node.mean[...] = rng.normal(0, 0.3, c).astype(np.float32)
            node.var[...] = rng.uniform(0.5, 2.0, c).astype(np.float32)
            node.scale[...] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            node.bias[...] = rng.normal(0, 0.2, c).astype(np.float32)
    return model


@pytest.fixture(scope="module", params=sorted(user_models.BUILDERS))
def arch(request):
    model = _randomize_norms(user_models.BUILDERS[request.param](nnx.Rngs(0)))
    return request.param, model


def test_groups_are_traced_and_removal_equals_masking(arch):
    name, model = arch
    before = np.asarray(graph.eval_copy(model)(X))
    groups = structure.channel_groups(model, EXAMPLE)
    assert groups, f"{name}: no channel group found"
    for g in groups.values():
        assert g.producers and g.size > 1
    scores = structure.channel_importance(model, "l1", example=EXAMPLE)
    keep = structure.select_channels(scores, 0.5)
    if name == "transformer":        # its code fixes head_dim: only heads and MLP units go
        keep = {k: v for k, v in keep.items() if k in ("q#0", "mlp_in")}
        with pytest.raises(ValueError, match="fails on the example input|does not compute"):
            structure.remove_channels(model, structure.select_channels(scores, 0.5),
                                      example=EXAMPLE)
    small = structure.remove_channels(model, keep, example=EXAMPLE)
    masked = structure.mask_channels(model, keep, example=EXAMPLE)
    assert structure.models_lib.num_params(small) < structure.models_lib.num_params(model)
    np.testing.assert_allclose(np.asarray(small(X)), np.asarray(masked(X)), atol=1e-5)
    # the caller's model is untouched: same outputs, same widths
    np.testing.assert_array_equal(np.asarray(graph.eval_copy(model)(X)), before)


def test_fold_is_exact(arch):
    name, model = arch
    folded, pairs = fold.fold_batchnorm_model(model, EXAMPLE)
    has_bn = any(isinstance(n, nnx.BatchNorm) for _, n in nnx.iter_graph(model))
    assert bool(pairs) == has_bn
    want = np.asarray(graph.eval_copy(model)(X))
    np.testing.assert_allclose(np.asarray(folded(X)), want, atol=1e-5)
    modules = {"/".join(map(str, p)): n for p, n in nnx.iter_graph(folded)}
    for bn in pairs:                 # each folded norm is left as a pure bias add
        assert float(np.abs(np.asarray(modules[bn].mean[...])).max()) == 0.0


def test_w8a8_tracks_float(arch):
    _, model = arch
    q = w8a8.quantize_model(model, X)
    assert all(c.dtype == np.int8 for c in q.codes.values())
    want = np.asarray(graph.eval_copy(model)(X))
    err = np.abs(np.asarray(q(X)) - want).max()
    assert err <= 0.05 * np.abs(want).max() + 1e-3, err


def test_shrunk_model_saves_and_reloads_into_your_class(arch, tmp_path):
    name, model = arch
    keep = {g: np.arange(max(1, s.size // 2))
            for g, s in structure.channel_groups(model, EXAMPLE).items()}
    if name == "transformer":
        keep = {"q#0": np.arange(2), "mlp_in": np.arange(32)}
    small = structure.remove_channels(model, keep, example=EXAMPLE)
    path = codec.save(tmp_path / f"{name}.pkc", small)
    back = codec.load(path, like=user_models.BUILDERS[name](nnx.Rngs(7)))
    np.testing.assert_array_equal(np.asarray(back(X)), np.asarray(small(X)))
    with pytest.raises(ValueError, match="like="):
        codec.load(path)


def test_hand_declared_groups_are_checked():
    model = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    traced = structure.channel_groups(model, EXAMPLE)["conv1"]
    ok = {"mine": structure.ChannelGroup("mine", traced.size, traced.members)}
    keep = {"mine": np.arange(4)}
    small = structure.remove_channels(model, keep, groups=ok, example=EXAMPLE)
    assert small.conv1.out_features == 4
    incomplete = {"mine": structure.ChannelGroup("mine", traced.size, traced.members[:-1])}
    with pytest.raises(ValueError, match="misses arrays"):
        structure.remove_channels(model, keep, groups=incomplete, example=EXAMPLE)
    wrong_size = {"mine": structure.ChannelGroup("mine", traced.size + 1, traced.members)}
    with pytest.raises(ValueError, match="says size"):
        structure.remove_channels(model, keep, groups=wrong_size, example=EXAMPLE)
    wrong_axis = {"mine": structure.ChannelGroup(
        "mine", traced.size, (structure.Member("conv1/kernel", 2, "in"),))}
    with pytest.raises(ValueError, match="no removable channel group|axis"):
        structure.remove_channels(model, keep, groups=wrong_axis, example=EXAMPLE)


def test_unfollowed_op_is_reported_not_guessed():
    class Sorter(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.out = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            import jax.numpy as jnp
            return self.out(jnp.sort(self.fc(x), axis=-1))   # sorting mixes the channels

    g = graph.trace(Sorter(nnx.Rngs(0)), np.zeros((2, 4), np.float32))
    assert "fc" in g.fixed and not g.groups
    assert any("sort" in why for name, whys in g.fixed.items() if name.startswith("fc")
               for why in whys)
    assert any(u.startswith("sort") for u in g.unfollowed)
    assert any(u.startswith("sort") for u in g.unfollowed)


def test_a_kernel_read_through_an_unfollowed_op_leaves_its_layer_whole():
    class SortedKernel(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.out = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            import jax.numpy as jnp
            w = jnp.sort(self.fc.kernel[...], axis=0)      # the kernel is read through a sort
            return self.out(nnx.relu(x @ w + self.fc.bias[...]))

    g = graph.trace(SortedKernel(nnx.Rngs(0)), np.zeros((2, 4), np.float32))
    assert not g.groups         # fc's bias and out's input meet the sort's output: kept whole
    assert any("sort" in why for name, whys in g.fixed.items() if name.startswith("fc")
               for why in whys)
    assert any(u.startswith("sort") for u in g.unfollowed)


def test_an_embedding_lookup_links_the_table_to_what_reads_it():
    class TiedEmbed(nnx.Module):        # the embedding is also the output head
        def __init__(self, rngs):
            self.embed = nnx.Embed(17, 24, rngs=rngs)
            self.proj = nnx.Linear(24, 24, rngs=rngs)

        def __call__(self, ids):
            h = self.embed(ids).mean(axis=1)
            return self.embed.attend(nnx.relu(self.proj(h)))

    model = TiedEmbed(nnx.Rngs(0))
    ids = (np.arange(4 * 8).reshape(4, 8) % 17).astype(np.int32)
    g = graph.trace(model, ids)
    (group,) = g.groups.values()
    assert {(m.leaf, m.axis) for m in group.members} == {
        ("embed/embedding", 1), ("proj/kernel", 0), ("proj/kernel", 1), ("proj/bias", 0)}
    keep = {group.name: np.arange(12)}
    small = structure.remove_channels(model, keep, example=ids)
    masked = structure.mask_channels(model, keep, example=ids)
    assert small.embed.embedding.shape == (17, 12)     # the vocabulary (rows) stays whole
    np.testing.assert_allclose(np.asarray(small(ids)), np.asarray(masked(ids)), atol=1e-5)


def test_search_widths_takes_group_counts_for_any_model():
    model = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    model.train()
    rows = structure.search_widths(model, [{"conv2": 8, "conv3": 8}, {"conv1": 4, "conv2": 4}],
                                   X, max_mac_ratio=0.9, runs=2, repeats=1)
    assert {tuple(sorted(r["config"].items())) for r in rows} <= {
        (("conv2", 8), ("conv3", 8)), (("conv1", 4), ("conv2", 4))}
    assert all(r["mac_ratio"] <= 0.9 for r in rows) and rows
    assert model.bn1.use_running_average is False          # the caller's mode is kept
    with pytest.raises(ValueError, match="neither config keys nor channel groups"):
        structure.search_widths(model, [{"nope": 3}], X)


def test_low_rank_factorizes_any_linear_and_pointwise_conv():
    model = user_models.BUILDERS["resnet"](nnx.Rngs(0))   # projection shortcut: a 1x1 conv
    layers = structure.dense_layers(model)
    assert "blocks/1/shortcut_conv" in layers and "fc" in layers
    full = structure.low_rank(model, {"blocks/1/shortcut_conv": 8, "fc": 10})
    want = np.asarray(graph.eval_copy(model)(X))
    np.testing.assert_allclose(np.asarray(full(X)), want, atol=1e-4)   # full rank: exact
    small = structure.low_rank(model, {"blocks/1/shortcut_conv": 2})
    assert structure.models_lib.num_params(small) < structure.models_lib.num_params(model)
    assert np.asarray(small(X)).shape == (len(X), 10)


def test_low_rank_reaches_layers_in_lists_and_plain_dicts():
    class Heads(nnx.Module):
        def __init__(self, rngs):
            self.body = nnx.List([nnx.Linear(64, 32, rngs=rngs)])
            self.heads = nnx.data({"digits": nnx.Linear(32, 10, rngs=rngs),
                                   "0": nnx.Linear(32, 10, rngs=rngs)})
            self.more = nnx.Dict({"0": nnx.Linear(32, 10, rngs=rngs)})   # Flax's own dict

        def __call__(self, x):
            h = nnx.relu(self.body[0](x.reshape(x.shape[0], -1)))
            return self.heads["digits"](h) + self.heads["0"](h) + self.more["0"](h)

    model = Heads(nnx.Rngs(0))
    assert set(structure.dense_layers(model)) == {"body/0", "heads/digits", "heads/0",
                                                  "more/0"}
    want = np.asarray(model(X))
    full = structure.low_rank(model, {"body/0": 32, "heads/digits": 10, "heads/0": 10,
                                      "more/0": 10})
    np.testing.assert_allclose(np.asarray(full(X)), want, atol=1e-4)   # full rank: exact
    assert isinstance(full.heads["digits"], structure.models_lib.LowRankLinear)
    assert isinstance(model.heads["digits"], nnx.Linear)               # the caller's is kept
    np.testing.assert_array_equal(np.asarray(model(X)), want)


def test_flax_einsum_layers_lose_channels():
    class EinsumNet(nnx.Module):
        def __init__(self, rngs):
            self.e1 = nnx.Einsum("bi,io->bo", (64, 32), (32,), rngs=rngs)
            self.e2 = nnx.Einsum("bi,io->bo", (32, 10), (10,), rngs=rngs)

        def __call__(self, x):
            return self.e2(nnx.relu(self.e1(x.reshape(x.shape[0], -1))))

    model = EinsumNet(nnx.Rngs(0))
    (name,) = structure.channel_groups(model, EXAMPLE)
    small = structure.remove_channels(model, {name: np.arange(16)}, example=EXAMPLE)
    masked = structure.mask_channels(model, {name: np.arange(16)}, example=EXAMPLE)
    assert small.e1.kernel_shape == (64, 16) and small.e1.bias_shape == (16,)
    np.testing.assert_allclose(np.asarray(small(X)), np.asarray(masked(X)), atol=1e-5)


def test_flax_multi_head_attention_loses_whole_heads():
    class Encoder(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Linear(8, 32, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32,
                                               decode=False, rngs=rngs)
            self.head = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            x = self.embed(x.reshape(x.shape[0], 8, 8))
            return self.head((x + self.attn(x)).mean(1))

    model = Encoder(nnx.Rngs(0))
    groups = structure.channel_groups(model, EXAMPLE)
    heads = next(g for g in groups.values() if g.size == 4)
    assert {m.leaf for m in heads.members} >= {"attn/query/kernel", "attn/key/kernel",
                                               "attn/value/kernel", "attn/out/kernel"}
    small = structure.remove_channels(model, {heads.name: np.array([0, 3])}, example=EXAMPLE)
    masked = structure.mask_channels(model, {heads.name: np.array([0, 3])}, example=EXAMPLE)
    assert small.attn.num_heads == 2 and small.attn.head_dim == 8
    np.testing.assert_allclose(np.asarray(small(X)), np.asarray(masked(X)), atol=1e-5)


def test_rank_explorer_takes_a_user_model_and_keeps_its_mode():
    from pruning_kit import widgets

    model = user_models.BUILDERS["layernorm_mlp"](nnx.Rngs(0))       # Dropout, other layer names
    model.train()
    y = np.arange(len(X)) % 10
    explorer = widgets.RankExplorer(model, X, y, layer="fc1", ranks=(2, 8), batch_size=4,
                                    runs=2, progress=False)
    explorer.rank_slider.value = 2
    assert explorer.results[2]["params"] < explorer.results[None]["params"]
    assert model.drop.deterministic is False                # the caller's mode is kept


class _GroupNormNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.gn = nnx.GroupNorm(16, num_groups=4, rngs=rngs)
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.gn(self.conv(x))).mean((1, 2)))


def test_group_norm_channels_leave_in_whole_groups():
    model = _GroupNormNet(nnx.Rngs(0))
    (name, group), = structure.channel_groups(model, EXAMPLE).items()
    assert group.size == 4                                 # the norm's groups are the unit
    keep = {name: np.array([0, 2])}
    small = structure.remove_channels(model, keep, example=EXAMPLE)
    assert (small.gn.num_groups, small.gn.group_size, small.conv.kernel.shape[-1]) == (2, 4, 8)
    np.testing.assert_allclose(np.asarray(small(X)),
                               np.asarray(structure.mask_channels(model, keep, example=EXAMPLE)(X)),
                               atol=1e-5)
    assert model.gn.num_groups == 4                        # the caller's model keeps its width
