"""Two layers SmallCNN writes by hand because XLA:CPU runs the library form slowly.

    python -m benchmarks.xla_cpu_layers

1. 2x2/stride-2 max-pooling, forward + backward on a (128, 28, 28, 16) batch (the CNN's
   first stage): ``nnx.max_pool`` (select-and-scatter gradient) against
   ``models.max_pool_2x2`` (reshape + max).
2. The first 3x3 convolution (1 input channel, 28x28, batch 256), forward: ``nnx.Conv``
   against ``models.conv3x3_single_channel`` (nine shifted multiply-adds), at 4 and 16
   output channels.

Each pair is checked to give the same values, then timed interleaved
(``measure.compare_latency``: ``ROUNDS`` rounds, the speed-up taken per round); each
speed-up is printed with its IQR and range, and called "no measurable difference" when
its IQR contains 1.0. One figure per speed-up, printed in a table at the end;
``--out results.jsonl`` appends them as JSON lines, with ``"iqr"`` and ``"min_max"``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from benchmarks import _common
from pruning_kit import measure, models

ROUNDS = 30  #: interleaved rounds per comparison


def report(metric: str, r: measure.LatencyComparison, name: str) -> None:
    print(r.table())
    _common.emit_speedup(metric, r[name], target="> 1", verdict=r.verdict(name))


def pooling() -> None:
    x = np.random.default_rng(0).random((128, 28, 28, 16), dtype=np.float32)
    variants = {"nnx.max_pool": lambda a: nnx.max_pool(a, (2, 2), (2, 2)),
                "max_pool_2x2": models.max_pool_2x2}
    same = np.array_equal(np.asarray(variants["nnx.max_pool"](x)),
                          np.asarray(variants["max_pool_2x2"](x)))
    grads = {name: jax.grad(lambda a, pool=pool: (pool(a) ** 2).sum())
             for name, pool in variants.items()}
    r = measure.compare_latency(grads, x, rounds=ROUNDS, runs=3)
    print(f"2x2 max-pooling, forward + backward, identical values: {same}; "
          f"max_pool_2x2: {r.verdict('max_pool_2x2')}")
    report("pool_fwd_bwd_speedup", r, "max_pool_2x2")


def first_conv() -> None:
    x = np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32)
    for width in (4, 16):
        conv = nnx.Conv(1, width, (3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
        kernel = conv.kernel[...]
        ref = np.asarray(conv(x))
        fast = np.asarray(models.conv3x3_single_channel(x, kernel))
        r = measure.compare_latency(
            {"nnx.Conv": conv,
             "shifted multiply-adds": lambda a, k=kernel: models.conv3x3_single_channel(a, k)},
            x, rounds=ROUNDS, runs=3)
        print(f"1->{width:2d} conv, max |difference| {np.abs(ref - fast).max():.1e}; shifted "
              f"multiply-adds: {r.verdict('shifted multiply-adds')}")
        report(f"first_conv_{width}_speedup", r, "shifted multiply-adds")


def main(argv: list[str] | None = None) -> None:
    args = _common.argument_parser(__doc__).parse_args(argv)
    with _common.reporting(args.out):
        print(measure.machine_summary())
        pooling()
        first_conv()


if __name__ == "__main__":
    main()
