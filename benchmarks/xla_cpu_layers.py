"""Why ``models.max_pool_2x2`` replaces ``nnx.max_pool`` in SmallCNN (XLA:CPU).

    python -m benchmarks.pooling

Times forward + backward of 2x2/stride-2 max-pooling on a (128, 28, 28, 16) batch (the
CNN's first stage) both ways, checks they give the same values, and prints one JSON line.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from benchmarks import _common
from pruning_kit import measure, models


def main() -> None:
    print(measure.machine_summary())
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


if __name__ == "__main__":
    main()
