"""Quantization figures of issue 3 (Fashion-MNIST, mean of 3 seeds) quoted in notebook 01.

Run from the repository root::

    python -m benchmarks.quantization            # about 5 minutes on 2 CPU cores
    python -m benchmarks.quantization --seeds 0  # one seed, quicker

Every accuracy change is in points against the same seed's float model (negative = drop).
Choices -- the weight clipping (min-max or MSE), the activation calibration method, and
whether QAT or trained k-means is the better 2-bit method -- are made on a validation
split of 5,000 training images (``data.holdout``, seed 0), which also serves as the
calibration set; QAT and codebook fine-tuning train on the other 55,000. The test set is
only measured. (The cached baselines were trained on all 60,000 training images, so the
validation accuracies are optimistic; the deltas are what the choices use.)

Prints the machine, a table, then one JSON line per figure:
``{"metric": NAME, "value": NUMBER, "unit": ..., "target": ...}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from pruning_kit import data, measure, qat, train
from pruning_kit import mixed_precision as mp
from pruning_kit import quant_infer as qi
from pruning_kit.codebook import codebook_nbytes
from pruning_kit.quant_storage import QuantizedTensor, dequantized_model, quantize_tree

SEEDS = (0, 1, 2)
CALIB_SIZE = 5000
CNN_CALIB = 2000  # CNN activations of 5,000 images would take ~1 GB
ACT_METHODS = ("minmax", "percentile", "mse")
WEIGHT_METHODS = ("minmax", "mse")
QAT_EPOCHS, QAT_LR = 3, 1e-4
W2_QAT_EPOCHS, W2_QAT_LR = 3, 1e-4
KMEANS_EPOCHS, KMEANS_LR = 2, 1e-4
TARGETS = {
    "int8_pc_delta_mlp": "within +-0.3", "int8_pc_delta_cnn": "within +-0.3",
    "w8a8_int_delta": ">= -0.5", "w8a8_int_delta_cnn": ">= -0.5 (extra)",
    "int4_pc_delta": ">= -0.7", "int4_pt_delta": "measurably below int4_pc_delta",
    "ptq_w8a4_delta": "shown beside qat_w8a4_delta", "qat_w8a4_delta": ">= -1.0",
    "ptq_w2_delta": "collapse shown beside w2_best_delta", "w2_best_delta": ">= -3.0",
    "int4_pc_delta_minmax": ">= -0.7 (extra: min-max grid)",
    "int4_pt_delta_minmax": "measurably below int4_pc_delta_minmax (extra)",
    "ptq_w2_delta_minmax": "collapse (extra: min-max grid)",
    "stored_bytes_ratio_int8": "~ 8/32 = 0.25, equal to the arrays written",
    "stored_bytes_ratio_int4": "~ 4/32 = 0.125, equal to the arrays written",
    "stored_bytes_ratio_kmeans2": "~ 2/32 = 0.0625 (extra)",
    "mixed_3bit_budget_delta": "above uniform_3bit_delta (extra, seed 0)",
    "uniform_3bit_delta": "extra, seed 0",
    "int8_matmul_speedup": "none expected on XLA:CPU (size is the win)",
}


def emit(metric: str, value: float, unit: str) -> None:
    _common.emit(metric, value, unit, TARGETS)


def accuracy(logits_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
             y: np.ndarray) -> float:
    """Percent accuracy of ``logits_fn`` over ``x`` in batches of 1,000."""
    logits = np.concatenate([np.asarray(logits_fn(x[i:i + 1000]))
                             for i in range(0, len(x), 1000)])
    return 100.0 * float(np.mean(logits.argmax(-1) == y))


class Seed:
    """Float accuracies of one baseline, and a recorder of (val, test) deltas against it."""

    def __init__(self, model, val, test):
        self.model, self.val, self.test = model, val, test
        self.float_val = 100 * train.evaluate(model, *val)
        self.float_test = 100 * train.evaluate(model, *test)

    def weight_only(self, bits: int, per_channel: bool, method: str,
                    model=None) -> tuple[float, float]:
        model = self.model if model is None else model
        qtree = quantize_tree(model, bits, axis=-1 if per_channel else None, method=method)
        q = dequantized_model(model, qtree)
        return (100 * train.evaluate(q, *self.val) - self.float_val,
                100 * train.evaluate(q, *self.test) - self.float_test)

    def integer(self, qmodel) -> tuple[float, float]:
        fn = jax.jit(qi.int_forward)
        return (accuracy(lambda x: fn(qmodel, x), *self.val) - self.float_val,
                accuracy(lambda x: fn(qmodel, x), *self.test) - self.float_test)

    def floats(self, model) -> tuple[float, float]:
        return (100 * train.evaluate(model, *self.val) - self.float_val,
                100 * train.evaluate(model, *self.test) - self.float_test)


def best_of(results: dict[str, list[tuple[float, float]]]) -> str:
    """The option whose mean validation delta over seeds is highest."""
    return max(results, key=lambda k: np.mean([v for v, _ in results[k]]))


def run_mlp_ptq(seed: int, ds, val, log) -> dict[str, dict[str, tuple[float, float]]]:
    """Post-training figures of one MLP seed: {figure: {option: (val_delta, test_delta)}}."""
    model = train.baseline("mlp_fashion", seed, progress=False)
    s = Seed(model, val, (ds.x_test, ds.y_test))
    log(f"mlp seed {seed}: float val {s.float_val:.2f}%, test {s.float_test:.2f}%")
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, bits, pc in (("int8_pc", 8, True), ("int4_pc", 4, True), ("int4_pt", 4, False),
                           ("ptq_w2", 2, True)):
        out[name] = {m: s.weight_only(bits, pc, m) for m in WEIGHT_METHODS}
    for name, act_bits in (("w8a8_int", 8), ("ptq_w8a4", 4)):
        out[name] = {m: s.integer(qi.quantize_mlp(model, val[0], weight_bits=8,
                                                  act_bits=act_bits, method=m, output_bits=8))
                     for m in ACT_METHODS}
    out["ptq_w8a4_logits4"] = {m: s.integer(qi.quantize_mlp(model, val[0], weight_bits=8,
                                                            act_bits=4, method=m))
                               for m in ("minmax", "mse")}
    codebooks, indices = qat.kmeans_quantize_model(model, 2)
    out["kmeans2_ptq"] = {"density": s.floats(qat.shared_weights_model(model, codebooks,
                                                                       indices))}
    return out


def run_mlp_trained(seed: int, ds, val, rest, act_method: str,
                    log) -> dict[str, dict[str, tuple[float, float]]]:
    """QAT W8A4 (ranges calibrated with ``act_method``), QAT W2 and trained k-means 2-bit,
    each fine-tuned from the seed's float baseline on ``rest``."""
    model = train.baseline("mlp_fashion", seed, progress=False)
    s = Seed(model, val, (ds.x_test, ds.y_test))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    start = time.perf_counter()
    clips = qat.calibrate_mlp(model, val[0], 4, method=act_method)
    tuned = train.baseline("mlp_fashion", seed, progress=False)
    train.fit(tuned, *rest, epochs=QAT_EPOCHS, batch_size=128, learning_rate=QAT_LR,
              loss_fn=qat.qat_mlp_loss(8, 4, act_clips=clips), seed=seed, progress=False)
    qm = qi.quantize_mlp(tuned, val[0], weight_bits=8, act_bits=4, output_bits=8,
                         act_qparams=clips)
    out["qat_w8a4"] = {act_method: s.integer(qm)}
    log(f"mlp seed {seed}: QAT W8A4 ({act_method} ranges, {QAT_EPOCHS} epochs) "
        f"{time.perf_counter() - start:.0f} s", end="; ")
    start = time.perf_counter()
    w2 = train.baseline("mlp_fashion", seed, progress=False)
    train.fit(w2, *rest, epochs=W2_QAT_EPOCHS, batch_size=128, learning_rate=W2_QAT_LR,
              loss_fn=qat.qat_mlp_loss(2, None, weight_method="mse"), seed=seed,
              progress=False)
    out["w2_best"] = {"qat": s.weight_only(2, True, "mse", model=w2)}
    log(f"QAT W2 (MSE clipping, {W2_QAT_EPOCHS} epochs) {time.perf_counter() - start:.0f} s",
        end="; ")
    start = time.perf_counter()
    codebooks, indices = qat.kmeans_quantize_model(model, 2)
    tuned_cb = qat.finetune_codebooks(model, codebooks, indices, *rest, epochs=KMEANS_EPOCHS,
                                      lr=KMEANS_LR, seed=seed)
    out["w2_best"]["kmeans"] = s.floats(qat.shared_weights_model(model, tuned_cb, indices))
    log(f"trained k-means 2-bit ({KMEANS_EPOCHS} epochs) {time.perf_counter() - start:.0f} s")
    return out


def run_cnn(seed: int, ds, val, log) -> dict[str, dict[str, tuple[float, float]]]:
    model = train.baseline("cnn_fashion", seed, progress=False)
    s = Seed(model, val, (ds.x_test, ds.y_test))
    log(f"cnn seed {seed}: float val {s.float_val:.2f}%, test {s.float_test:.2f}%")
    out = {"int8_pc_cnn": {m: s.weight_only(8, True, m) for m in WEIGHT_METHODS}}
    out["w8a8_int_cnn"] = {m: s.integer(qi.quantize_cnn(model, val[0][:CNN_CALIB], method=m))
                           for m in ACT_METHODS}
    return out


def stored_bytes(model, bits: int) -> dict[str, float]:
    """Bytes counted by quant_storage for the kernels vs the arrays written to an .npz."""
    qtree = quantize_tree(model, bits)
    kernels = [v for v in jax.tree.leaves(qtree, is_leaf=lambda t: isinstance(
        t, QuantizedTensor)) if isinstance(v, QuantizedTensor)]
    counted = sum(t.nbytes for t in kernels)
    arrays = {}
    for i, t in enumerate(kernels):
        arrays[f"k{i}_codes"] = np.asarray(t.data)
        arrays[f"k{i}_scale"] = np.asarray(t.qparams.scale)
        if t.qparams.zero_point is not None:
            arrays[f"k{i}_zero_point"] = np.asarray(t.qparams.zero_point)
    with tempfile.TemporaryDirectory(prefix="pruning_kit_bench_") as tmp:
        path = Path(tmp) / f"int{bits}.npz"
        np.savez(path, **arrays)
        file_size = path.stat().st_size
        with np.load(path) as f:
            written = sum(f[k].nbytes for k in f.files)
    fp32 = sum(4 * int(np.prod(t.shape)) for t in kernels)
    return {"counted": counted, "written": written, "file": file_size, "fp32": fp32}


def mixed_precision(model, val, test) -> dict:
    """Bits per layer within the size of uniform 3-bit kernels, against uniform 3-bit."""
    s = Seed(model, val, test)
    shapes = mp.kernel_shapes(model)
    sens = mp.sensitivity_scan(model, *val, (2, 3, 4, 8), method="mse")
    budget = mp.stored_bytes(shapes, {name: 3 for name in shapes})
    bits = mp.allocate_bits(sens, shapes, budget)

    def deltas(b):
        return s.floats(dequantized_model(model, quantize_tree(model, b, method="mse")))

    return {"budget": budget, "bits": {k.removesuffix(".kernel"): v for k, v in bits.items()},
            "bytes": mp.stored_bytes(shapes, bits), "mixed": deltas(bits),
            "uniform": deltas(3)}


def honest_speed(runs: int, rounds: int = 5) -> dict[str, float]:
    """float32 vs int8 x int8 -> int32 matmul, timed in alternating rounds so that load from
    other processes on a shared machine hits both alike; medians over rounds."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 784)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(784, 300)), jnp.float32)
    x8 = jnp.asarray(rng.integers(-127, 128, size=(256, 784)), jnp.int8)
    w8 = jnp.asarray(rng.integers(-127, 128, size=(784, 300)), jnp.int8)
    dims = (((1,), (0,)), ((), ()))

    def int8_matmul(a):
        return jax.lax.dot_general(a, w8, dims, preferred_element_type=jnp.int32)

    per_round = max(1, runs // rounds)
    f32, i8 = [], []
    for _ in range(rounds):
        f32.append(measure.latency(lambda a: a @ w, x, runs=per_round).median_ms)
        i8.append(measure.latency(int8_matmul, x8, runs=per_round).median_ms)
    return {"f32_ms": float(np.median(f32)), "int8_ms": float(np.median(i8)),
            "speedup": float(np.median(np.array(f32) / np.array(i8)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--runs", type=int, default=50, help="timed calls per latency")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    print(measure.machine_summary())
    ds = data.load("fashion_mnist")
    rest, val = data.holdout(ds.x_train, ds.y_train, CALIB_SIZE, seed=0)
    print(f"validation/calibration split: {CALIB_SIZE} training images (data.holdout seed 0);"
          f" QAT trains on the other {len(rest[0])}; seeds {tuple(args.seeds)}\n")

    results: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def record(out: dict[str, dict[str, tuple[float, float]]]) -> None:
        for figure, options in out.items():
            for option, deltas in options.items():
                results.setdefault(figure, {}).setdefault(option, []).append(deltas)

    for seed in args.seeds:
        record(run_mlp_ptq(seed, ds, val, print))
        record(run_cnn(seed, ds, val, print))
    act_method = best_of(results["ptq_w8a4"])  # QAT trains with PTQ's best ranges
    for seed in args.seeds:
        record(run_mlp_trained(seed, ds, val, rest, act_method, print))

    rows, chosen = [], {}
    labels = {
        "int8_pc": "MLP int8 weights, per-channel", "int8_pc_cnn": "CNN int8 weights, "
        "per-channel", "w8a8_int": "MLP W8A8 integer pipeline", "w8a8_int_cnn":
        "CNN W8A8 integer pipeline (BN folded)", "int4_pc": "MLP int4 weights, per-channel",
        "int4_pt": "MLP int4 weights, per-tensor", "ptq_w8a4": "MLP W8A4 PTQ (integer)",
        "ptq_w8a4_logits4": "MLP W8A4 PTQ, logits at 4 bits too",
        "qat_w8a4": "MLP W8A4 QAT (integer)", "ptq_w2": "MLP 2-bit weights PTQ",
        "kmeans2_ptq": "MLP k-means 2-bit, before fine-tuning", "w2_best": "MLP 2-bit weights "
        "trained"}
    for figure, options in results.items():
        chosen[figure] = best_of(options)
        for option, deltas in options.items():
            vals, tests = zip(*deltas, strict=True)
            rows.append({"configuration": labels[figure], "option": option,
                         "chosen": "<-" if option == chosen[figure] and len(options) > 1
                         else "", "val_delta": float(np.mean(vals)),
                         "test_delta": float(np.mean(tests)),
                         "test per seed": " ".join(f"{t:+.2f}" for t in tests)})
    print()
    print("Accuracy change vs each seed's float model, points (mean over seeds); '<-' marks "
          "the option chosen on validation")
    print(measure.Table(rows, ["configuration", "option", "chosen", "val_delta", "test_delta",
                               "test per seed"]))

    print()
    model = train.baseline("mlp_fashion", args.seeds[0], progress=False)
    sizes = {b: stored_bytes(model, b) for b in (8, 4)}
    codebooks, _ = qat.kmeans_quantize_model(model, 2)
    kmeans_bytes = sum(codebook_nbytes(int(np.prod(s)), 2) for s in
                       (p.shape for name, p in measure.named_params(model) if p.ndim >= 2))
    for b, size in sizes.items():
        print(f"int{b} MLP kernels: quant_storage counts {size['counted']:,} B (packed codes + "
              f"scales) = {size['counted'] / size['fp32']:.4f} of fp32 {size['fp32']:,} B; "
              f"arrays in the .npz {size['written']:,} B, file {size['file']:,} B (zip/npy "
              f"headers {size['file'] - size['written']:,} B); counted == written: "
              f"{size['counted'] == size['written']}")
    print(f"k-means 2-bit MLP kernels: {kmeans_bytes:,} B = "
          f"{kmeans_bytes / sizes[8]['fp32']:.4f} of fp32 (packed indices + codebooks)")

    mixed = mixed_precision(model, val, (ds.x_test, ds.y_test))
    print(f"\nMixed precision (seed {args.seeds[0]}, MSE clipping, scan on validation): budget "
          f"= uniform 3-bit size {mixed['budget']:,} B -> bits {mixed['bits']} "
          f"({mixed['bytes']:,} B): val {mixed['mixed'][0]:+.2f}, test {mixed['mixed'][1]:+.2f} "
          f"pts; uniform 3-bit: val {mixed['uniform'][0]:+.2f}, test "
          f"{mixed['uniform'][1]:+.2f} pts")

    speed = honest_speed(args.runs)
    print(f"\nHonest speed, 256x784 @ 784x300 on this CPU ({args.runs} calls each, in 5 "
          f"alternating rounds): float32 {speed['f32_ms']:.3f} ms, int8 x int8 -> int32 "
          f"{speed['int8_ms']:.3f} ms, int8 speedup {speed['speedup']:.2f}x (median of the "
          "per-round ratios)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")

    def test_mean(figure: str) -> float:
        return float(np.mean([t for _, t in results[figure][chosen[figure]]]))

    for metric, figure in (("int8_pc_delta_mlp", "int8_pc"), ("int8_pc_delta_cnn", "int8_pc_cnn"),
                           ("w8a8_int_delta", "w8a8_int"), ("w8a8_int_delta_cnn",
                                                             "w8a8_int_cnn"),
                           ("int4_pc_delta", "int4_pc"), ("int4_pt_delta", "int4_pt"),
                           ("ptq_w8a4_delta", "ptq_w8a4"), ("qat_w8a4_delta", "qat_w8a4")):
        # every figure is the option chosen on validation (see the table)
        emit(metric, test_mean(figure), "points")
    emit("ptq_w2_delta", test_mean("ptq_w2"), "points")
    emit("w2_best_delta", test_mean("w2_best"), "points")
    for metric, figure in (("int4_pc_delta_minmax", "int4_pc"),
                           ("int4_pt_delta_minmax", "int4_pt"),
                           ("ptq_w2_delta_minmax", "ptq_w2")):   # the textbook grid, extra
        emit(metric, float(np.mean([t for _, t in results[figure]["minmax"]])), "points")
    for b in (8, 4):
        emit(f"stored_bytes_ratio_int{b}", sizes[b]["counted"] / sizes[b]["fp32"], "ratio")
    emit("stored_bytes_ratio_kmeans2", kmeans_bytes / sizes[8]["fp32"], "ratio")
    emit("mixed_3bit_budget_delta", mixed["mixed"][1], "points")
    emit("uniform_3bit_delta", mixed["uniform"][1], "points")
    emit("int8_matmul_speedup", speed["speedup"], "x")


if __name__ == "__main__":
    main()
