"""Context-model range coding of positions and codebook indices (context_coding)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_kit import context_coding as cc

FAST = settings(max_examples=40, deadline=None)
SHAPES = st.sampled_from([(1,), (7,), (3, 1), (1, 5), (9, 4), (5, 3, 6), (2, 2, 3, 4)])


def structured(rows=300, cols=100, seed=0):
    """Rows (inputs) of very different density, runs along each column: like a pruned
    first layer, whose border pixels lose every weight."""
    rng = np.random.default_rng(seed)
    density = np.clip(np.sin(np.linspace(0, np.pi, rows)) ** 2 * 0.4, 0.0, 1.0)
    return rng.random((rows, cols)) < density[:, None]


@FAST
@given(shape=SHAPES, density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_bitmaps_round_trip_exactly(shape, density, seed):
    m = np.random.default_rng(seed).random(shape) < density   # all-zero and all-one included
    assert np.array_equal(cc.decode_bitmap(cc.encode_bitmap(m), shape), m)


@FAST
@given(shape=SHAPES, size=st.sampled_from([1, 2, 3, 16, 17, 256]),
       neighbour=st.booleans(), seed=st.integers(0, 2**16))
def test_indices_round_trip_exactly(shape, size, neighbour, seed):
    rng = np.random.default_rng(seed)
    idx = np.where(rng.random(shape) < 0.5, rng.integers(0, size, shape), -1)
    blob = cc.encode_indices(idx, size, neighbour=neighbour)
    assert np.array_equal(cc.decode_indices(blob, idx >= 0, size, neighbour=neighbour), idx)


def test_context_model_beats_the_order0_bounds_on_structured_positions():
    m = structured()
    bits = cc.bitmap_entropy_bits(m)
    coded = 8 * len(cc.encode_bitmap(m))
    # Huffman on the zero runs cannot go below bits["gaps"]; the coder does, and pays
    # only a little over the context model's own (known-statistics) bound
    assert coded < bits["gaps"] < bits["iid"]
    assert bits["context"] <= coded < 1.15 * bits["context"] + 64


def test_random_positions_cost_about_their_entropy():
    m = np.random.default_rng(3).random((400, 100)) < 0.1     # nothing to learn
    coded = 8 * len(cc.encode_bitmap(m))
    iid = cc.bitmap_entropy_bits(m)["iid"]
    assert iid * 0.98 < coded < iid * 1.03        # +1.5% here: learning 400 contexts


def test_neighbour_context_pays_when_neighbours_agree():
    rng = np.random.default_rng(0)
    col = rng.integers(0, 4, 30)
    idx = np.tile(col, (50, 1))                                 # each column one value
    idx[rng.random(idx.shape) < 0.2] = -1
    with_ctx = cc.encode_indices(idx, 4, neighbour=True)
    without = cc.encode_indices(idx, 4, neighbour=False)
    assert len(with_ctx) < 0.6 * len(without)


def test_cut_or_corrupt_streams_raise():
    m = structured()
    blob = cc.encode_bitmap(m)
    with pytest.raises(ValueError, match="ends before"):
        cc.decode_bitmap(blob[: len(blob) // 2], m.shape)
    idx = np.where(m, 3, -1)
    with pytest.raises(ValueError, match="outside a codebook of 3"):
        # 2 bits per index can name 3, which a 3-entry codebook does not have
        cc.decode_indices(cc.encode_indices(idx, 4, neighbour=False), m, 3, neighbour=False)
    with pytest.raises(ValueError, match="at least one axis"):
        cc.encode_bitmap(np.array(True))


def test_a_stream_one_byte_short_or_long_is_refused():
    m = structured()
    idx = np.where(m, np.arange(m.size).reshape(m.shape) % 4, -1)
    for blob, decode in ((cc.encode_bitmap(m), lambda b: cc.decode_bitmap(b, m.shape)),
                         (cc.encode_indices(idx, 4, neighbour=True),
                          lambda b: cc.decode_indices(b, m, 4, neighbour=True))):
        for cut in (1, 2, 3, 4):
            with pytest.raises(ValueError, match="ends before|outside a codebook"):
                decode(blob[:-cut])
        for extra in (b"\x00", b"\x7f" * 100):
            with pytest.raises(ValueError, match="more than it codes"):
                decode(blob + extra)


def test_indices_outside_the_codebook_are_refused_before_coding():
    with pytest.raises(ValueError, match="-1 \\(a zero\\) or in \\[0, 4\\)"):
        cc.encode_indices(np.array([[0, 5], [1, -1]]), 4, neighbour=False)
    with pytest.raises(ValueError, match="codebook_size must be in \\[1, 256\\]"):
        cc.encode_indices(np.zeros((2, 2), int), 300, neighbour=False)


def test_empty_arrays():
    for shape in ((0, 5), (5, 0), (0,)):
        m = np.zeros(shape, bool)
        assert cc.decode_bitmap(cc.encode_bitmap(m), shape).shape == shape
        assert cc.bitmap_entropy_bits(m)["context"] == 0.0
