"""Two layers SmallCNN writes by hand because XLA:CPU runs the library form slowly.

    python -m benchmarks.xla_cpu_layers

1. 2x2/stride-2 max-pooling, forward + backward on a (128, 28, 28, 16) batch (the CNN's
   first stage): ``nnx.max_pool`` (select-and-scatter gradient) against
   ``models.max_pool_2x2`` (reshape + max).
2. The first 3x3 convolution (1 input channel, 28x28, batch 256), forward: ``nnx.Conv``
   against ``models.conv3x3_single_channel`` (nine shifted multiply-adds), at 4 and 16
   output channels.

Each pair is checked to give the same values; one JSON line per speedup.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from benchmarks import _common
from pruning_kit import measure, models


def pooling() -> None:
    x = np.random.default_rng(0).random((128, 28, 28, 16), dtype=np.float32)
    variants = {"nnx.max_pool": lambda a: nnx.max_pool(a, (2, 2), (2, 2)),
                "max_pool_2x2": models.max_pool_2x2}
    same = np.array_equal(np.asarray(variants["nnx.max_pool"](x)),
                          np.asarray(variants["max_pool_2x2"](x)))
    times = {}
    for name, pool in variants.items():
        grad = jax.grad(lambda a, pool=pool: (pool(a) ** 2).sum())
        times[name] = measure.latency(grad, x, runs=30).median_ms
        print(f"{name:13s} forward + backward: {times[name]:.2f} ms (median of 30)")
    ratio = times["nnx.max_pool"] / times["max_pool_2x2"]
    print(f"identical values: {same}; max_pool_2x2 is {ratio:.1f}x faster")
    _common.emit("pool_fwd_bwd_speedup", ratio, "x", {"pool_fwd_bwd_speedup": "> 1"})


def first_conv() -> None:
    x = np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32)
    for width in (4, 16):
        conv = nnx.Conv(1, width, (3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
        kernel = conv.kernel[...]
        ref = np.asarray(conv(x))
        fast = np.asarray(models.conv3x3_single_channel(x, kernel))
        t_conv = measure.latency(conv, x, runs=30).median_ms
        t_fast = measure.latency(lambda a, k=kernel: models.conv3x3_single_channel(a, k), x,
                                 runs=30).median_ms
        print(f"1->{width:2d} conv: nnx.Conv {t_conv:.2f} ms, shifted multiply-adds "
              f"{t_fast:.2f} ms ({t_conv / t_fast:.1f}x), max |difference| "
              f"{np.abs(ref - fast).max():.1e}")
        metric = f"first_conv_{width}_speedup"
        _common.emit(metric, t_conv / t_fast, "x", {metric: "> 1"})


def main() -> None:
    print(measure.machine_summary())
    pooling()
    first_conv()


if __name__ == "__main__":
    main()
