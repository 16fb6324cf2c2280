"""Context-model arithmetic coding of a pruned kernel: where its non-zeros are, and which
codebook entry each one holds.

Huffman coding (:mod:`pruning_kit.huffman`) gives every symbol a whole number of bits and
sees each symbol alone, so it stops at the *order-0* entropy of the stream. A pruned
kernel has more structure than that: a hidden unit keeps the weights of neighbouring
inputs together, some inputs and units keep many weights and others almost none. An
**arithmetic (range) coder** spends :math:`-\\log_2 p` bits on a symbol of probability
:math:`p` -- fractions of a bit -- and lets :math:`p` depend on a **context** of what was
already coded. The decoder sees the same context, so it can follow.

The positions are coded as the kernel's non-zero bitmap, one binary decision per weight,
read as a matrix (all leading axes are the rows, the last axis, the output units, the
columns) row by row. The probability that weight :math:`(i, j)` is non-zero is learnt, by
counting, separately for each context

.. math:: c_{ij} = (m_{i-1,j},\\ m_{i-2,j},\\ \\text{column density so far},\\
          \\text{row density so far})

(the two previous inputs of the same unit; the densities in :data:`DENSITY_EDGES`
buckets). Codebook indices are coded bit by bit (a binary tree, one adaptive probability
per node), optionally in the context of the index held by weight :math:`(i-1, j)`. The
ideal cost of a context model is the **conditional entropy**
:math:`H(m \\mid c) = -\\sum_s \\log_2 p(m_s \\mid c_s)` with the empirical probabilities;
:func:`bitmap_entropy_bits` reports it next to the order-0 figures.

* :func:`encode_bitmap` / :func:`decode_bitmap` -- a boolean matrix <-> bytes.
* :func:`encode_indices` / :func:`decode_indices` -- a kernel's codebook indices <-> bytes.
* :func:`bitmap_entropy_bits` -- what the context model would cost with known statistics.

Every probability is an integer and every operation exact, so decoding gives back the
bitmap and the indices bit for bit on any machine. Used by :mod:`pruning_kit.codec`
(encoding ``"sparse-context"``) and ``notebooks/05_full_pipeline.ipynb``.

Examples:
    >>> rng = np.random.default_rng(0)
    >>> m = rng.random((300, 100)) < np.linspace(0.0, 0.4, 300)[:, None]  # rows differ
    >>> blob = encode_bitmap(m)
    >>> bool(np.array_equal(decode_bitmap(blob, m.shape), m))
    True
    >>> {k: round(v / 8) for k, v in bitmap_entropy_bits(m).items()}, len(blob)  # bytes
    ({'iid': 2684, 'gaps': 2568, 'context': 2436}, 2503)

    The coded bytes are below both order-0 bounds (``iid``: every position alike;
    ``gaps``: the zero runs, where Huffman coding stops).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

import numpy as np

__all__ = ["DENSITY_EDGES", "MAX_CODEBOOK", "bitmap_entropy_bits", "decode_bitmap",
           "decode_indices", "encode_bitmap", "encode_indices"]

#: Largest codebook whose indices are coded (one probability per tree node and context).
MAX_CODEBOOK = 256
#: Density buckets of the context (fraction of non-zeros seen so far in a row / column).
DENSITY_EDGES = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.22, 0.32, 0.45)
_PROB_BITS = 16                     # probabilities are integers in 1 .. 2**16 - 1
_ONE = 1 << _PROB_BITS
_TOP = 1 << 24                      # renormalise when the range falls below this
_MASK32 = 0xFFFFFFFF
_HALVE_AT = 2048                    # counts (in halves) are halved above this: adapts


# --------------------------------------------------------------------------- range coder
class _Encoder:
    """A carry-propagating binary range coder (the LZMA construction), 32-bit range."""

    def __init__(self) -> None:
        self.low, self.range, self.cache, self.pending = 0, _MASK32, 0, 1
        self.out = bytearray()

    def _shift(self) -> None:
        if self.low < 0xFF000000 or self.low > _MASK32:
            carry = self.low >> 32
            byte = self.cache
            while self.pending:
                self.out.append((byte + carry) & 0xFF)
                byte, self.pending = 0xFF, self.pending - 1
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low << 8) & _MASK32

    def bit(self, p1: int, bit: int) -> None:
        bound = (self.range >> _PROB_BITS) * p1
        if bit:
            self.range = bound
        else:
            self.low += bound
            self.range -= bound
        while self.range < _TOP:
            self.range <<= 8
            self._shift()

    def finish(self) -> bytes:
        for _ in range(5):
            self._shift()
        return bytes(self.out[1:])          # the first byte is always 0


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = b"\x00" + bytes(data), 1
        self.range, self.code = _MASK32, 0
        for _ in range(4):
            self.code = (self.code << 8) | self._byte()

    def _byte(self) -> int:
        b = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return b

    def bit(self, p1: int) -> int:
        bound = (self.range >> _PROB_BITS) * p1
        if self.code < bound:
            self.range, bit = bound, 1
        else:
            self.code -= bound
            self.range -= bound
            bit = 0
        while self.range < _TOP:
            self.range <<= 8
            self.code = ((self.code << 8) | self._byte()) & _MASK32
        return bit

    def overrun(self) -> bool:
        """True once decoding has read past the end of the stream."""
        return self.at > len(self.data)

    def check_end(self, what: str) -> None:
        """A complete stream is read to its last byte, no further and no shorter."""
        if self.at > len(self.data):
            raise ValueError(f"the {what} stream ends before it is complete (cut short?).")
        if self.at < len(self.data):
            raise ValueError(f"the {what} stream has {len(self.data) - self.at} bytes more "
                             "than it codes.")


class _Counts:
    """Adaptive probabilities, one per context: counts of 0s and 1s (in halves, starting at
    one half each: the Krichevsky-Trofimov estimate), halved when large."""

    def __init__(self, n: int) -> None:
        self.n0, self.n1 = [1] * n, [1] * n

    def p1(self, c: int) -> int:
        p = (self.n1[c] << _PROB_BITS) // (self.n0[c] + self.n1[c])
        return min(max(p, 1), _ONE - 1)

    def update(self, c: int, bit: int) -> None:
        if bit:
            self.n1[c] += 2
        else:
            self.n0[c] += 2
        if self.n0[c] + self.n1[c] > _HALVE_AT:
            self.n0[c] = (self.n0[c] >> 1) | 1
            self.n1[c] = (self.n1[c] >> 1) | 1


# --------------------------------------------------------------------------- positions
def _as_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        raise ValueError("context coding needs an array with at least one axis.")
    cols = int(shape[-1]) if len(shape) > 1 else 1
    return int(np.prod(shape)) // max(cols, 1), cols


_NB = len(DENSITY_EDGES) + 1


def _walk_bitmap(shape: tuple[int, int], code: Callable[[int, int], int],
                 after_row: Callable[[], None] | None = None) -> np.ndarray:
    """Visit every weight in row-major order with its context; ``code(context, index)``
    returns the bit (the encoder knows it, the decoder decodes it). One walk for both, so
    encoder and decoder cannot disagree about a context. ``after_row()`` runs after each
    row (the decoder stops there on a stream that has run out)."""
    rows, cols = shape
    m = np.zeros((rows, cols), bool)
    col_count = np.zeros(cols, np.int64)
    zero = np.zeros(cols, np.int64)
    row_prev = 0
    edges = DENSITY_EDGES
    for i in range(rows):
        u1 = m[i - 1].astype(np.int64) if i >= 1 else zero
        u2 = m[i - 2].astype(np.int64) if i >= 2 else zero
        col_bucket = np.searchsorted(edges, (col_count + 0.5) / (i + 1), side="right")
        base = ((u1 * 2 + u2) * _NB + col_bucket) * _NB
        base_list = base.tolist()
        so_far, prior = 0, row_prev * 0.5     # row density: this row so far + half the last
        row = m[i]
        for j in range(cols):
            d = (so_far + prior) / (j + 0.5 * cols)
            bit = code(base_list[j] + bisect_right(edges, d), i * cols + j)
            if bit:
                row[j] = True
                so_far += 1
        col_count += row
        row_prev = so_far
        if after_row is not None:
            after_row()
    return m


def encode_bitmap(mask: np.ndarray) -> bytes:
    """Range-code a boolean array (read as rows x last axis) with the context model.

    Args:
        mask: boolean array, e.g. ``kernel != 0``.

    Returns:
        The coded bytes; :func:`decode_bitmap` with the same shape gives ``mask`` back.
    """
    mask = np.asarray(mask, bool)
    shape = _as_matrix_shape(mask.shape)
    flat = mask.reshape(-1).tolist()
    enc, counts = _Encoder(), _Counts(4 * _NB * _NB)

    def code(c: int, k: int) -> int:
        bit = flat[k]
        enc.bit(counts.p1(c), bit)
        counts.update(c, bit)
        return bit

    _walk_bitmap(shape, code)
    return enc.finish()


def decode_bitmap(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean array of ``shape`` that :func:`encode_bitmap` coded into ``data``.

    Raises:
        ValueError: ``data`` is cut short, or longer than the bitmap it codes (corrupt).
    """
    dec, counts = _Decoder(data), _Counts(4 * _NB * _NB)

    def code(c: int, k: int) -> int:
        bit = dec.bit(counts.p1(c))
        counts.update(c, bit)
        return bit

    def after_row() -> None:
        if dec.at > len(dec.data) + 8:   # well past the end: stop now, not after every row
            dec.check_end("position")

    m = _walk_bitmap(_as_matrix_shape(tuple(shape)), code, after_row)
    dec.check_end("position")
    return m.reshape(shape)


def bitmap_entropy_bits(mask: np.ndarray) -> dict[str, float]:
    """Ideal costs of a bitmap, in bits: ``"iid"`` (every position alike: :math:`n H(p)`),
    ``"gaps"`` (order-0 entropy of the zero runs, what Huffman approaches) and
    ``"context"`` (conditional entropy under this module's contexts, statistics known in
    advance; the adaptive coder pays a little more to learn them). See the module's
    example.
    """
    mask = np.asarray(mask, bool)
    flat = mask.reshape(-1)
    n, k = flat.size, int(flat.sum())
    iid = n * _h2(k / n) if n else 0.0
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1
    _, counts = np.unique(gaps, return_counts=True)
    gap_bits = float(-(counts * np.log2(counts / max(len(gaps), 1))).sum())
    ctx: list[int] = []
    _walk_bitmap(_as_matrix_shape(mask.shape),
                 lambda c, i: (ctx.append(c), bool(flat[i]))[1])
    keys = np.asarray(ctx, np.int64) * 2 + flat
    table = np.bincount(keys, minlength=8 * _NB * _NB).reshape(-1, 2)
    tot = table.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(table > 0, table * np.log2(table / np.maximum(tot, 1)), 0.0)
    return {"iid": float(iid), "gaps": gap_bits, "context": float(-terms.sum())}


def _h2(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# --------------------------------------------------------------------------- indices
def _index_contexts(indices: np.ndarray, neighbour: bool) -> list[int]:
    """Context of each non-zero (row-major order): the index held by weight (i-1, j)
    plus one (0 for a zero there), or 0 for all when ``neighbour`` is False."""
    rows, cols = _as_matrix_shape(indices.shape)
    grid = indices.reshape(rows, cols)
    keep = grid >= 0
    if not neighbour:
        return [0] * int(keep.sum())
    up = np.zeros_like(grid)
    up[1:] = grid[:-1] + 1                   # -1 (zero) -> 0
    return up[keep].tolist()


def _index_bits(size: int) -> int:
    return max(1, math.ceil(math.log2(size))) if size > 1 else 1


def encode_indices(indices: np.ndarray, codebook_size: int, *, neighbour: bool) -> bytes:
    """Range-code the codebook index of every non-zero weight (``indices`` is the kernel's
    shape, ``-1`` where the weight is zero), bit by bit down a binary tree, each node's
    probability learnt per context (see :func:`_index_contexts`)."""
    indices = np.asarray(indices, np.int64)
    nbits = _index_bits(codebook_size)
    if not 1 <= codebook_size <= MAX_CODEBOOK:
        raise ValueError(f"codebook_size must be in [1, {MAX_CODEBOOK}], got {codebook_size}.")
    if indices.size and (indices.min() < -1 or indices.max() >= codebook_size):
        raise ValueError(f"indices must be -1 (a zero) or in [0, {codebook_size}); got "
                         f"values in [{indices.min()}, {indices.max()}].")
    ctx = _index_contexts(indices, neighbour)
    symbols = indices[indices >= 0].tolist()
    enc, counts = _Encoder(), _Counts((codebook_size + 1) << nbits)
    for c, s in zip(ctx, symbols, strict=True):
        node, base = 1, c << nbits
        for b in range(nbits - 1, -1, -1):
            bit = (s >> b) & 1
            enc.bit(counts.p1(base + node), bit)
            counts.update(base + node, bit)
            node = 2 * node + bit
    return enc.finish()


def decode_indices(data: bytes, mask: np.ndarray, codebook_size: int, *, neighbour: bool
                   ) -> np.ndarray:
    """The indices :func:`encode_indices` coded, as an int64 array of ``mask``'s shape
    (``-1`` where ``mask`` is False).

    Raises:
        ValueError: the stream is cut short or too long, or decodes to an index outside
            the codebook.
    """
    mask = np.asarray(mask, bool)
    if not 1 <= codebook_size <= MAX_CODEBOOK:
        raise ValueError(f"codebook_size must be in [1, {MAX_CODEBOOK}], got {codebook_size}.")
    rows, cols = _as_matrix_shape(mask.shape)
    grid = np.full((rows, cols), -1, np.int64)
    m2 = mask.reshape(rows, cols)
    nbits = _index_bits(codebook_size)
    dec, counts = _Decoder(data), _Counts((codebook_size + 1) << nbits)
    for i in range(rows):
        js = np.flatnonzero(m2[i]).tolist()
        up = (grid[i - 1] + 1).tolist() if (i >= 1 and neighbour) else None
        out = grid[i]
        for j in js:
            c = up[j] if up is not None else 0
            node, base = 1, c << nbits
            for _ in range(nbits):
                bit = dec.bit(counts.p1(base + node))
                counts.update(base + node, bit)
                node = 2 * node + bit
            s = node - (1 << nbits)
            if s >= codebook_size:
                if dec.overrun():
                    dec.check_end("index")
                raise ValueError(f"the index stream decodes to {s}, outside a codebook of "
                                 f"{codebook_size}; the stream is corrupt.")
            out[j] = s
        if dec.at > len(dec.data) + 8:
            dec.check_end("index")
    dec.check_end("index")
    return grid.reshape(mask.shape)
