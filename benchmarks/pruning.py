"""Pruning and structural-optimization figures of issue 5 (Fashion-MNIST, mean of 3 seeds).

Run from the repository root::

    python -m benchmarks.pruning              # ~15 min on 2 CPU cores from an empty cache,
                                              # ~3 min with the committed checkpoints
    python -m benchmarks.pruning --seeds 0    # one seed

* **Gradual magnitude pruning** (GMP): each seed's cached LeNet-300-100 baseline, pruned
  while fine-tuning by ``zoo.gmp_mlp`` (``zoo.GMP_MLP``: global magnitude, cubic
  schedule to 90.5% of the kernels over the first ``ramp_fraction`` of 20 epochs, Adam
  1e-3 with cosine decay). The ramp was picked on a 5,000-image validation split; the test
  set is only measured.
* **One-shot**: the same baseline pruned to the same sparsity at once, no fine-tuning; and
  its control ``zoo.oneshot_mlp``: pruned at once, then fine-tuned with the mask fixed on
  GMP's budget (epochs, batch, learning rate), so only *when* weights go differs.
* **Large-sparse vs small-dense**: a dense 784-32-11-10 MLP (``zoo.small_dense_mlp``,
  about as many weights as the GMP model has non-zeros) trained from scratch for 40 epochs
  -- the baseline's 20 plus GMP's 20, the same budget.
* **Masked step**: seconds per epoch of ``fit`` with ``prune.gradual_pruning`` around Adam
  against plain Adam: one epoch of each in turn, alternating, for ``MASKED_ROUNDS`` rounds
  after a compiling epoch each (``measure.compare_latency(..., jit=False)``); the ratio
  masked / plain is taken per round.
* **Channel removal**: ``structure.search_widths`` times candidate widths with <= half the
  MACs; ``zoo.half_mac_cnn`` removes channels to the recipe's widths (BatchNorm-scale
  importance), fine-tunes with the dense CNN as online teacher; latency of the compiled
  forward pass at batch 256 and 1, dense and pruned timed interleaved
  (``measure.compare_latency``, ``LATENCY_ROUNDS`` rounds), speed-up per round.

Every ratio is printed as the median over rounds with its IQR and range; one whose IQR
contains 1.0 is printed as "no measurable difference". Timing batches are validation
images (their values do not change the time). Prints the machine (CPU, instruction set),
tables, then the figures as a table (ratios with their IQR); ``--out results.jsonl``
appends them as JSON lines (``benchmarks._common``; ratios with ``"iqr"`` and ``"min_max"``).
"""

from __future__ import annotations

import time

import numpy as np
import optax
from flax import nnx

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import data, measure, models, prune, structure, train, zoo
from pruning_kit.table import Table

SEEDS = (0, 1, 2)
TARGETS = {
    "gmp_sparsity": ">= 0.90 overall",
    "gmp_delta": ">= -1.0 pt (stretch >= -0.5)",
    "sparse_vs_small_dense_pts": ">= +0.5 pt",
    "oneshot90_acc": "shown collapsing, next to the gradual result",
    "channel_mac_ratio": ">= 2 (fewer MACs)",
    "channel_speedup_b256": ">= 1.5",
    "channel_delta": ">= -1.0 pt after fine-tuning",
    "masked_step_ratio": "<= 1.2",
    "channel_speedup_b1": "extra: batch 1",
}
LATENCY_ROUNDS = 30   #: interleaved rounds per channel-removal latency comparison
MASKED_ROUNDS = 7     #: alternating epochs of each optimizer for the masked-step ratio
CANDIDATES = [{"widths": list(w)} for w in
              ((16, 16, 16), (16, 16, 8), (8, 16, 16), (16, 24, 8), (12, 24, 12), (8, 24, 24),
               (12, 20, 20), (16, 20, 12))]


def emit_ratio(metric: str, comparison: measure.LatencyComparison, name: str) -> None:
    """The speed-up of ``name`` over the comparison's baseline, with IQR, range, verdict."""
    _common.emit_speedup(metric, comparison[name],
                         verdict=comparison.verdict(name))


def channel_latency(dense, pruned, x) -> measure.LatencyComparison:
    """Dense and pruned CNN timed interleaved on batch ``x``; speed-up = dense / pruned."""
    return measure.compare_latency({"dense": dense, "pruned": pruned}, x,
                                   rounds=LATENCY_ROUNDS, runs=20 if len(x) == 1 else 5)


def mlp_figures(ds: data.Dataset, seeds: tuple[int, ...]) -> None:
    rows = []
    for s in seeds:
        start = time.perf_counter()
        base = zoo.baseline("mlp_fashion", s, progress=False)
        gmp = zoo.gmp_mlp(s, dataset=ds, progress=False)
        oneshot = zoo.baseline("mlp_fashion", s, progress=False)   # a fresh copy
        params = nnx.state(oneshot, nnx.Param)
        masks = prune.magnitude_masks(params, zoo.GMP_MLP["final_sparsity"],
                                      scope="global")
        nnx.update(oneshot, prune.apply_masks(params, masks))
        oneshot_ft = zoo.oneshot_mlp(s, dataset=ds, progress=False)
        small = zoo.small_dense_mlp(s, dataset=ds, progress=False)
        rows.append({"seed": s, "dense": 100 * train.evaluate(base, ds.x_test, ds.y_test),
                     "gmp": 100 * train.evaluate(gmp, ds.x_test, ds.y_test),
                     "sparsity": prune.sparsity(gmp),   # a fraction; the Table shows %
                     "nonzeros": measure.count_nonzero(gmp),
                     "oneshot": 100 * train.evaluate(oneshot, ds.x_test, ds.y_test),
                     "oneshot_ft": 100 * train.evaluate(oneshot_ft, ds.x_test, ds.y_test),
                     "small_dense": 100 * train.evaluate(small, ds.x_test, ds.y_test),
                     "small_params": measure.count_params(small),
                     "seconds": time.perf_counter() - start})
    print(Table(rows, title="LeNet-300-100: gradual pruning vs one-shot vs small dense "
                            "(test accuracy %)"))
    gmp_delta = np.array([r["gmp"] - r["dense"] for r in rows])
    vs_small = np.array([r["gmp"] - r["small_dense"] for r in rows])
    vs_ft = np.array([r["gmp"] - r["oneshot_ft"] for r in rows])
    spread = gmp_delta.std(ddof=1) if len(rows) > 1 else 0.0
    ft_spread = vs_ft.std(ddof=1) if len(rows) > 1 else 0.0
    print(f"GMP change {gmp_delta.mean():+.2f} +- {spread:.2f} pt; large-sparse minus "
          f"small-dense {vs_small.mean():+.2f} pt; gradual minus one-shot + fine-tuning "
          f"{vs_ft.mean():+.2f} +- {ft_spread:.2f} pt")
    emit("gmp_sparsity", np.mean([r["sparsity"] for r in rows]), "fraction of all weights")
    emit("gmp_delta", gmp_delta.mean(), "pt")
    emit("sparse_vs_small_dense_pts", vs_small.mean(), "pt")
    emit("oneshot90_acc", np.mean([r["oneshot"] for r in rows]), "%")
    emit("gmp_vs_oneshot_finetuned_pts", vs_ft.mean(), "pt", std=ft_spread,
         per_seed=[round(float(v), 2) for v in vs_ft])


def one_epoch(ds: data.Dataset, tx: optax.GradientTransformation):
    """``run(x)``: one more epoch of a LeNet-300-100 with ``tx`` on ``(x, ds.y_train)``.

    The same ``tx`` object every call, so ``fit``'s compiled step is reused (the first
    call compiles: it is the untimed warm-up).
    """
    model = models.lenet_300_100(seed=0)
    return lambda x: train.fit(model, x, ds.y_train, epochs=1, batch_size=128, tx=tx,
                               progress=False)


def masked_step(ds: data.Dataset) -> None:
    steps = 2 * (len(ds.x_train) // 128)
    schedule = prune.polynomial_schedule(0.9, 0, steps)
    epochs = {"gradual_pruning": one_epoch(ds, prune.gradual_pruning(
                  optax.adam(1e-3), schedule, update_every=100)),
              "plain Adam": one_epoch(ds, optax.adam(1e-3))}
    # Baseline = the masked run, so the per-round "speedup" of plain Adam is masked / plain.
    r = measure.compare_latency(epochs, ds.x_train, rounds=MASKED_ROUNDS, runs=1, warmup=1,
                                jit=False)
    print(r.table(title=f"one epoch of LeNet-300-100, {r.rounds} alternating epochs each; "
                        "speedup of plain Adam = masked / plain seconds per round"))
    s = r["plain Adam"]
    print(f"masked step ratio {s.speedup:.2f}x (IQR {s.speedup_iqr[0]:.2f}-"
          f"{s.speedup_iqr[1]:.2f}x, range {s.speedup_min_max[0]:.2f}-"
          f"{s.speedup_min_max[1]:.2f}x): plain Adam {r.verdict('plain Adam')}")
    _common.emit_speedup("masked_step_ratio", s,
                         verdict=f"plain Adam vs gradual_pruning: {r.verdict('plain Adam')}")


def cnn_figures(ds: data.Dataset, seeds: tuple[int, ...]) -> None:
    x256 = ds.x_val[:256]  # for timing and MAC counts only: the values do not matter
    base0 = zoo.baseline("cnn_fashion", 0, progress=False)
    rows = structure.search_widths(base0, CANDIDATES, x256)
    print(Table([{"widths": r["config"]["widths"], "mac_ratio": r["mac_ratio"],
                  "latency_ms": r["latency_ms"], "speedup": r["speedup"]} for r in rows],
                title="candidate widths with <= half the MACs, batch 256, fastest first"))
    out = []
    for s in seeds:
        start = time.perf_counter()
        base = zoo.baseline("cnn_fashion", s, progress=False)
        small = zoo.half_mac_cnn(s, dataset=ds, progress=False)
        base.eval()
        out.append({"seed": s, "dense": 100 * train.evaluate(base, ds.x_test, ds.y_test),
                    "pruned": 100 * train.evaluate(small, ds.x_test, ds.y_test),
                    "widths": str(small.config["widths"]),
                    "params": models.num_params(small),
                    "mac_ratio": measure.cost(base, x256)["macs"]
                    / measure.cost(small, x256)["macs"],
                    "seconds": time.perf_counter() - start})
    small0 = zoo.half_mac_cnn(0, dataset=ds, progress=False)
    b256 = channel_latency(base0, small0, x256)
    b1 = channel_latency(base0, small0, x256[:1])
    print(Table(out, title="SmallCNN channel removal + fine-tuning (test accuracy %)"))
    for batch, r in ((256, b256), (1, b1)):
        print(r.table(title=f"seed 0 latency, batch {batch}: median of {r.rounds} interleaved "
                            f"rounds; speedup = dense / pruned per round"))
    delta = np.array([r["pruned"] - r["dense"] for r in out])
    print(f"channel removal change {delta.mean():+.2f} +- "
          f"{delta.std(ddof=1) if len(out) > 1 else 0:.2f} pt")
    emit("channel_mac_ratio", np.mean([r["mac_ratio"] for r in out]), "x")
    emit_ratio("channel_speedup_b256", b256, "pruned")
    emit("channel_delta", delta.mean(), "pt")
    emit_ratio("channel_speedup_b1", b1, "pruned")


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        seeds = tuple(args.seeds)
        print(measure.machine_summary())
        ds = data.load_fashion_mnist()
        start = time.perf_counter()
        mlp_figures(ds, seeds)
        masked_step(ds)
        cnn_figures(ds, seeds)
        print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
