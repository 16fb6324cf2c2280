"""Canonical Huffman coding of integer symbol streams (the last stage of Deep Compression).

After pruning and weight sharing, a layer is two streams of small integers: the codebook
index of each non-zero weight and the run of zeros before it. Neither is uniform, so a
fixed-width code wastes bits. Huffman coding gives frequent symbols short codes; its
average length is within one bit per symbol of the **entropy bound**

.. math:: H = -\\sum_s c_s \\log_2 (c_s / n) \\quad \\text{bits for } n \\text{ symbols},

and usually far closer. A *canonical* code is fixed by the code lengths alone (codes are
handed out in order of (length, symbol)), so the stored table is just the distinct
symbols and their lengths.

* :func:`huffman_code` -- the code (symbols, lengths, codes) for a stream.
* :func:`encode` / :func:`decode` -- numpy array <-> :class:`EncodedStream`, whose
  :meth:`~EncodedStream.to_bytes` is what :mod:`pruning_kit.codec` stores.
* :func:`entropy_bits` and :func:`overhead_pct` -- how close the code gets to the bound.

Used by :mod:`pruning_kit.codec` and the full-pipeline (Deep Compression) notebook.

Examples:
    >>> s = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    >>> code = huffman_code(s)
    >>> code.lengths.tolist(), [format(int(c), f"0{n}b") for c, n in zip(code.codes, code.lengths)]
    ([1, 2, 3, 3], ['0', '10', '110', '111'])
    >>> stream = encode(s)                    # 0000 10 10 110 111, then a 6+1+1-byte table
    >>> stream.payload.hex(), stream.nbytes, decode(stream).tolist() == s.tolist()
    ('0adc', 10, True)
    >>> entropy_bits(s), overhead_pct(s)       # 14 bits: this code meets the bound exactly
    (14.0, 0.0)
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

__all__ = ["MAX_CODE_LENGTH", "EncodedStream", "HuffmanCode", "decode", "encode",
           "entropy_bits", "huffman_code", "overhead_pct"]

#: Longest code :func:`huffman_code` produces (longer ones are shortened, see there).
MAX_CODE_LENGTH = 32
_CHUNK_BITS = 1 << 20  # decode this many bit positions at a time (bounds memory)


class HuffmanCode(NamedTuple):
    """A canonical prefix code: ``symbols[i]`` is written as the ``lengths[i]`` low bits
    of ``codes[i]``, most significant first. ``symbols`` are sorted ascending."""

    symbols: np.ndarray  # int64 (k,)
    lengths: np.ndarray  # uint8 (k,), 1..MAX_CODE_LENGTH
    codes: np.ndarray  # uint64 (k,)


def _as_symbols(symbols) -> np.ndarray:
    arr = np.asarray(symbols)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"Huffman coding takes integer symbols, got dtype {arr.dtype}; "
                         "map values to integer indices first (e.g. a codebook index).")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("Symbols must fit int64.")
    return arr.reshape(-1).astype(np.int64)


def _huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal code lengths for ``counts`` (k >= 2), ties broken by index: deterministic."""
    k = len(counts)
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * k - 1)
    node = k
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    depth = [0] * (2 * k - 1)  # a parent is created after its children: walk down from root
    for i in range(2 * k - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    return np.array(depth[:k], np.int64)


def _limit_lengths(lengths: np.ndarray, counts: np.ndarray, max_length: int) -> np.ndarray:
    """Re-deal the lengths so none exceeds ``max_length`` (JPEG, Annex K.3), keeping the
    code complete; the most frequent symbols get the shortest codes."""
    per_len = np.bincount(lengths, minlength=max(int(lengths.max()), max_length) + 1).tolist()
    i = len(per_len) - 1
    while i > max_length:
        while per_len[i] > 0:  # move two leaves of length i up: a leaf at j splits in two
            j = i - 2
            while per_len[j] == 0:
                j -= 1
            per_len[i] -= 2
            per_len[i - 1] += 1
            per_len[j + 1] += 2
            per_len[j] -= 1
        i -= 1
    dealt = np.repeat(np.arange(len(per_len)), per_len)  # ascending lengths
    order = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first
    out = np.empty_like(lengths)
    out[order] = dealt
    return out


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for ``lengths`` given in ascending-symbol order."""
    order = np.lexsort((np.arange(len(lengths)), lengths))  # by (length, symbol)
    sorted_len = lengths[order].astype(np.int64)
    codes_sorted = np.zeros(len(lengths), np.uint64)
    code, prev = 0, int(sorted_len[0]) if len(lengths) else 0
    for i, n in enumerate(sorted_len.tolist()):  # k iterations: the distinct symbols
        code <<= n - prev
        codes_sorted[i] = code
        code, prev = code + 1, n
    codes = np.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return codes


def huffman_code(symbols, *, max_length: int = MAX_CODE_LENGTH) -> HuffmanCode:
    """The canonical Huffman code for a stream of integer symbols.

    A stream with one distinct symbol gets a 1-bit code (``0``); an empty stream an empty
    code. Lengths above ``max_length`` (only for very skewed streams of many millions of
    symbols) are shortened as in JPEG, at a tiny cost in size.

    Args:
        symbols: integer array-like, any shape (flattened).
        max_length: longest allowed code, 1..:data:`MAX_CODE_LENGTH`; needs
            ``2**max_length >= `` the number of distinct symbols.

    Raises:
        ValueError: non-integer symbols, or ``max_length`` out of range / too small.

    Examples:
        >>> huffman_code([7, 7, 7]).lengths.tolist()
        [1]
        >>> huffman_code([5, 1, 1, 2]).symbols.tolist(), huffman_code([5, 1, 1, 2]).lengths.tolist()
        ([1, 2, 5], [1, 2, 2])
    """
    arr = _as_symbols(symbols)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or \
            not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be an int in 1..{MAX_CODE_LENGTH}, got "
                         f"{max_length!r}.")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) > 2**max_length:
        raise ValueError(f"{len(uniq)} distinct symbols do not fit codes of at most "
                         f"{max_length} bits; raise max_length.")
    if len(uniq) <= 1:
        lengths = np.ones(len(uniq), np.int64)
    else:
        lengths = _huffman_lengths(counts)
        lengths = _limit_lengths(lengths, counts, max_length) if lengths.max() > max_length \
            else lengths
    return HuffmanCode(uniq, lengths.astype(np.uint8), _canonical_codes(lengths))


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("Huffman table is truncated (a number runs past the end).")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
        if shift > 70:
            raise ValueError("Huffman table is corrupt (a number is too long).")


class EncodedStream(NamedTuple):
    """A Huffman-coded stream: the bit payload plus what is needed to read it.

    Attributes:
        payload: the codes, concatenated most significant bit first, zero-padded to bytes.
        symbols: the distinct symbols (int64, ascending).
        lengths: their code lengths (uint8); the canonical codes follow from these.
        count: number of symbols in the stream.
    """

    payload: bytes
    symbols: np.ndarray
    lengths: np.ndarray
    count: int

    def table_bytes(self) -> bytes:
        """The stored table: count, number of distinct symbols, the symbols (first one
        zig-zag coded, then gaps minus one) as varints, then the lengths packed at
        ``w`` bits each, with ``w`` in one byte."""
        syms = [int(s) for s in self.symbols]
        head = [self.count, len(syms)]
        if syms:
            first = syms[0]
            head.append(2 * first if first >= 0 else -2 * first - 1)  # zig-zag
            head += [b - a - 1 for a, b in zip(syms[:-1], syms[1:], strict=True)]
        width = int(self.lengths.max()).bit_length() if len(syms) else 0
        bits = ((self.lengths.astype(np.int64)[:, None] >> np.arange(width - 1, -1, -1)) & 1)
        return _varints(head) + bytes([width]) + np.packbits(bits.reshape(-1)).tobytes()

    @property
    def nbytes(self) -> int:
        """Stored size: payload plus table (what :meth:`to_bytes` writes)."""
        return len(self.payload) + len(self.table_bytes())

    def to_bytes(self) -> bytes:
        """Table followed by payload: :meth:`from_bytes` reads it back."""
        return self.table_bytes() + self.payload

    @staticmethod
    def from_bytes(data: bytes) -> EncodedStream:
        """Parse :meth:`to_bytes`' output, checking that the table is a valid code.

        Raises:
            ValueError: truncated or corrupt table.
        """
        data = bytes(data)
        count, pos = _read_varint(data, 0)
        k, pos = _read_varint(data, pos)
        if (k == 0) != (count == 0) or k > count:
            raise ValueError(f"Huffman table is corrupt: {k} distinct symbols for a stream "
                             f"of {count}.")
        syms = []
        for i in range(k):
            v, pos = _read_varint(data, pos)
            syms.append((v >> 1) ^ -(v & 1) if i == 0 else syms[-1] + v + 1)
        if pos >= len(data):
            raise ValueError("Huffman table is truncated (code lengths missing).")
        width, pos = data[pos], pos + 1
        nlen = (k * width + 7) // 8
        if pos + nlen > len(data):
            raise ValueError("Huffman table is truncated (code lengths missing).")
        bits = np.unpackbits(np.frombuffer(data[pos:pos + nlen], np.uint8))[:k * width]
        lengths = (bits.reshape(k, width).astype(np.int64) << np.arange(width - 1, -1, -1)
                   ).sum(axis=1) if k else np.zeros(0, np.int64)
        if k and (lengths.min() < 1 or lengths.max() > MAX_CODE_LENGTH):
            raise ValueError("Huffman table is corrupt: code lengths must be in "
                             f"1..{MAX_CODE_LENGTH}.")
        kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - lengths)))  # 2^32 * sum 2^-n
        if (k > 1 and kraft != 1 << MAX_CODE_LENGTH) or (k == 1 and lengths[0] != 1):
            raise ValueError("Huffman table is corrupt: its lengths do not form a complete "
                             "prefix code.")
        return EncodedStream(data[pos + nlen:], np.array(syms, np.int64),
                             lengths.astype(np.uint8), count)


def encode(symbols, *, max_length: int = MAX_CODE_LENGTH) -> EncodedStream:
    """Huffman-code an integer stream (vectorised numpy; no per-symbol Python loop).

    Examples:
        >>> s = encode(np.array([3, 3, 3, 9]))
        >>> s.payload, s.lengths.tolist(), decode(s).tolist()      # 0 0 0 1 -> 0b0001_0000
        (b'\\x10', [1, 1], [3, 3, 3, 9])
    """
    arr = _as_symbols(symbols)
    code = huffman_code(arr, max_length=max_length)
    if arr.size == 0:
        return EncodedStream(b"", code.symbols, code.lengths, 0)
    which = np.searchsorted(code.symbols, arr)
    lens = code.lengths.astype(np.int64)[which]
    codes = code.codes[which]
    ends = np.cumsum(lens)
    sym_of_bit = np.repeat(np.arange(arr.size), lens)
    # bit b of the stream is bit (end - 1 - b) of its symbol's code, counted from the LSB
    shift = (ends[sym_of_bit] - 1 - np.arange(int(ends[-1]))).astype(np.uint64)
    bits = ((codes[sym_of_bit] >> shift) & np.uint64(1)).astype(np.uint8)
    return EncodedStream(np.packbits(bits).tobytes(), code.symbols, code.lengths, arr.size)


def decode(stream: EncodedStream | bytes) -> np.ndarray:
    """The int64 symbols of an :class:`EncodedStream` (or of its :meth:`~EncodedStream.to_bytes`).

    Windows of ``max(lengths)`` bits at every bit position are decoded at once with
    numpy (a canonical code's length is found by comparing the window with one limit per
    length); a short Python loop then hops from code to code.

    Raises:
        ValueError: the payload is truncated, has trailing bytes, or holds an invalid code.
    """
    if not isinstance(stream, EncodedStream):
        stream = EncodedStream.from_bytes(stream)
    n = stream.count
    if n == 0:
        if stream.payload:
            raise ValueError("Huffman payload has bytes but the stream is empty.")
        return np.zeros(0, np.int64)
    lengths = stream.lengths.astype(np.int64)
    top = int(lengths.max())
    order = np.lexsort((np.arange(len(lengths)), lengths))  # canonical order
    per_len = np.bincount(lengths, minlength=top + 1)
    first = np.zeros(top + 2, np.int64)  # first code of each length
    for n_bits in range(1, top + 1):
        first[n_bits + 1] = (first[n_bits] + per_len[n_bits]) << 1
    limit = ((first[1:top + 1] + per_len[1:]) << (top - np.arange(1, top + 1)))
    offset = np.concatenate([[0], np.cumsum(per_len[1:])])  # canonical index of first code
    bits = np.unpackbits(np.frombuffer(stream.payload, np.uint8))
    nbits = bits.size
    padded = np.concatenate([bits, np.zeros(top, np.uint8)]).astype(np.int64)
    visited, done, pos = [], 0, 0
    for start in range(0, nbits, _CHUNK_BITS):
        stop = min(start + _CHUNK_BITS, nbits)
        window = np.zeros(stop - start, np.int64)
        for j in range(top):
            window = (window << 1) | padded[start + j:stop + j]
        ln = np.searchsorted(limit, window, side="right") + 1  # top + 1: not a code
        hop = ln.tolist()
        here, p, want = [], pos - start, n - done
        while len(here) < want and p < stop - start:  # the only per-symbol Python loop
            here.append(p)
            p += hop[p]
        pos = p + start
        if here:
            at = np.array(here)
            ln_at = ln[at]
            if ln_at.max() > top:
                raise ValueError("Huffman payload holds a bit pattern that is no code; the "
                                 "data is corrupt.")
            visited.append(offset[ln_at - 1] + (window[at] >> (top - ln_at)) - first[ln_at])
            done += len(here)
        if done == n:
            break
    if done < n or pos > nbits:
        raise ValueError(f"Huffman payload is truncated: {len(stream.payload)} bytes hold "
                         f"fewer than the {n} symbols the table announces.")
    if (pos + 7) // 8 != len(stream.payload):
        raise ValueError(f"Huffman payload has {len(stream.payload) - (pos + 7) // 8} "
                         "trailing byte(s) after its last symbol; the data is corrupt.")
    return stream.symbols[order[np.concatenate(visited)]]


def entropy_bits(symbols) -> float:
    """Empirical Shannon bound: the fewest bits any symbol-by-symbol code of this stream
    (with its own symbol frequencies) can take, ``-sum c log2(c / n)``.

    Examples:
        >>> entropy_bits([0, 1, 2, 3]), entropy_bits([5, 5, 5]), entropy_bits([])
        (8.0, 0.0, 0.0)
    """
    arr = _as_symbols(symbols)
    if arr.size == 0:
        return 0.0
    counts = np.unique(arr, return_counts=True)[1].astype(np.float64)
    return float(max(0.0, -(counts * np.log2(counts / arr.size)).sum()))


def overhead_pct(symbols) -> float:
    """How far (in %) the Huffman payload of ``symbols`` lies above :func:`entropy_bits`.

    Counts the exact payload bits (no byte padding, no table). ``0.0`` for an empty stream;
    ``inf`` for one distinct symbol (entropy 0, but Huffman spends 1 bit per symbol).

    Examples:
        >>> round(overhead_pct([0] * 90 + [1] * 10), 1)     # 100 bits vs 46.9: skewed pairs
        113.2
    """
    arr = _as_symbols(symbols)
    if arr.size == 0:
        return 0.0
    code = huffman_code(arr)
    counts = np.unique(arr, return_counts=True)[1]
    payload = float((counts * code.lengths.astype(np.int64)).sum())
    bound = entropy_bits(arr)
    return float("inf") if bound == 0 else 100.0 * (payload - bound) / bound
