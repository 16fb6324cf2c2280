"""Knowledge-distillation figures of issue 4 (Fashion-MNIST, mean of 3 seeds) for notebook 02.

Run from the repository root::

    python -m benchmarks.distillation             # about 11 minutes on 2 CPU cores
    python -m benchmarks.distillation --seeds 0   # one seed, quicker
    python -m benchmarks.distillation --speed-only   # section 2 only (size, latency)

* **Teacher**: each seed's cached SmallCNN baseline (``train.baseline("cnn_fashion",
  seed)``, 39,098 parameters), never retrained here.
* **Student vs control**: ``models.student_cnn(seed=s)`` (5,462 parameters) trained with
  plain cross-entropy and with logit KD (``distill.distillation_loss``, the teacher's
  logits precomputed on the un-augmented training images) under the *same* budget: epochs,
  batch size, learning-rate schedule, no augmentation, seed. The MLP student
  (``models.student_mlp``) is an extra line with the same ``(T, alpha)``.
* **Choices on validation only**: students train on 55,000 training images; the other
  5,000 (``data.holdout`` seed 0) are the validation split on which ``(T, alpha)`` is
  picked (a grid on seed 0 with fewer epochs). The test set is only measured.
* **Size and speed**: parameters, and the median latency of the compiled forward pass at
  batch 256 (``measure.latency``) of teacher and student on this machine.
* **KD as a recovery tool**: see :func:`run_recovery`.

Prints the machine, tables, how long each training run took, then one JSON line per
figure: ``{"metric": NAME, "value": NUMBER, "unit": ..., "target": ...}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from benchmarks import _common
from pruning_kit import data, distill, measure, models, qat, train

SEEDS = (0, 1, 2)
VAL_SIZE = 5000
BATCH = 128
STUDENT_EPOCHS, STUDENT_LR = 5, 3e-3      # every student run, plain and KD alike
GRID_EPOCHS = 3                           # the (T, alpha) grid on seed 0
GRID = tuple((t, a) for t in (2.0, 4.0, 8.0) for a in (0.5, 0.9))
MLP_EPOCHS = 10                           # the extra MLP student (about 1 s per epoch)
RECOVERY_N, RECOVERY_EPOCHS = 3000, 10    # the recovery headline: a small fine-tuning set
FULL_EPOCHS = 1                           # the recovery extra line: all 55,000 images
RECOVERY_LR = 3e-4
TARGETS = {
    "kd_gain_pts": ">= +0.5 (stretch +1.0)",
    "kd_gain_std": "reported beside kd_gain_pts",
    "student_param_ratio": ">= 5",
    "student_latency_ratio": ">= 3",
    "kd_recovery_fraction": ">= 0.5",
    "kd_gain_pts_mlp_student": "extra: the MLP student (1.5x fewer parameters only)",
    "student_mac_ratio": "extra: teacher MACs / student MACs per image",
    "student_latency_ratio_mlp": "extra: the MLP student",
    "kd_recovery_fraction_full_data": "extra: fine-tuning on all 55,000 images, 1 epoch",
}


def emit(metric: str, value: float, unit: str) -> None:
    _common.emit(metric, value, unit, TARGETS)


def pct(model: nnx.Module, xy: tuple[np.ndarray, np.ndarray]) -> float:
    return 100.0 * train.evaluate(model, *xy)


def train_run(build: Callable[[], nnx.Module], x: np.ndarray, y, *, epochs: int,
              lr: float, seed: int, loss_fn: train.LossFn = train.cross_entropy_loss
              ) -> tuple[nnx.Module, float]:
    """A fresh model trained with ``fit``; returns it and the wall time in seconds."""
    model = build()
    start = time.perf_counter()
    train.fit(model, x, y, epochs=epochs, batch_size=BATCH, learning_rate=lr,
              loss_fn=loss_fn, seed=seed, progress=False)
    return model, time.perf_counter() - start


# --------------------------------------------------------------------------- 1. students
def choose_t_alpha(rest, val, t_logits, seed: int, log) -> tuple[tuple[float, float], list]:
    """The (T, alpha) of :data:`GRID` with the best validation accuracy on ``seed``."""
    rows = []
    plain, secs = train_run(lambda: models.student_cnn(seed=seed), *rest, epochs=GRID_EPOCHS,
                            lr=STUDENT_LR, seed=seed)
    rows.append({"T": "-", "alpha": "-", "val_pct": pct(plain, val), "train_time": f"{secs:.0f} s"})
    log(f"grid (seed {seed}, {GRID_EPOCHS} epochs): plain val {rows[-1]['val_pct']:.2f}% "
        f"({secs:.0f} s)")
    for t, a in GRID:
        model, secs = train_run(lambda: models.student_cnn(seed=seed), rest[0],
                                (rest[1], t_logits), epochs=GRID_EPOCHS, lr=STUDENT_LR,
                                seed=seed, loss_fn=distill.distillation_loss(temperature=t,
                                                                             alpha=a))
        rows.append({"T": t, "alpha": a, "val_pct": pct(model, val), "train_time": f"{secs:.0f} s"})
        log(f"grid: T={t:g} alpha={a:g} val {rows[-1]['val_pct']:.2f}% ({secs:.0f} s)")
    best = max(rows[1:], key=lambda r: r["val_pct"])
    return (best["T"], best["alpha"]), rows


def run_students(seed: int, rest, val, test, t_logits, t_alpha, log) -> list[dict]:
    """Plain and KD runs of the CNN student (and the extra MLP student) for one seed."""
    t, a = t_alpha
    kd = distill.distillation_loss(temperature=t, alpha=a)
    rows = []
    for student, build, epochs in (
            ("CNN 4/8", lambda: models.student_cnn(seed=seed), STUDENT_EPOCHS),
            ("MLP 784-32-10", lambda: models.student_mlp(seed=seed), MLP_EPOCHS)):
        accs = {}
        for how, y, loss_fn in (("plain", rest[1], train.cross_entropy_loss),
                                ("KD", (rest[1], t_logits), kd)):
            model, secs = train_run(build, rest[0], y, epochs=epochs, lr=STUDENT_LR,
                                    seed=seed, loss_fn=loss_fn)
            accs[how] = (pct(model, val), pct(model, test))
            log(f"seed {seed} student {student} {how}: val {accs[how][0]:.2f}%, test "
                f"{accs[how][1]:.2f}% ({epochs} epochs, {secs:.0f} s)")
            rows.append({"student": student, "seed": seed, "training": how,
                         "val_pct": accs[how][0], "test_pct": accs[how][1],
                         "train_time": f"{secs:.0f} s"})
        rows[-1]["gain_delta"] = accs["KD"][1] - accs["plain"][1]
    return rows


# --------------------------------------------------------------------------- 2. speed
def size_and_speed(teacher: nnx.Module, x: np.ndarray, runs: int, rounds: int = 3) -> dict:
    """Parameters, MACs and batch-256 latency of teacher and students.

    Teacher and student are timed in alternating rounds (``runs`` calls each per round),
    so load from other processes on a shared machine hits both alike; the ratio is the
    median of the per-round ratios.
    """
    students = {"CNN 4/8": models.student_cnn(), "MLP 784-32-10": models.student_mlp()}
    batch = x[:256]
    times: dict[str, list[float]] = {"teacher": [], **{k: [] for k in students}}
    for _ in range(rounds):
        times["teacher"].append(measure.latency(teacher, batch, runs=runs).median_ms)
        for name, model in students.items():
            times[name].append(measure.latency(model, batch, runs=runs).median_ms)
    out = {}
    for name, model in {"teacher": teacher, **students}.items():
        out[name] = {"params": measure.count_params(model),
                     "macs": measure.cost(model, x[:1])["macs_per_example"],
                     "latency_b256_ms": float(np.median(times[name]))}
        if name != "teacher":
            out[name]["latency_ratio"] = float(np.median(
                np.array(times["teacher"]) / np.array(times[name])))
    # Where a tiny CNN's time went on XLA:CPU: the 3x3 convolution of the 1-channel image
    # as nnx.Conv runs it, and as SmallCNN now runs it at inference.
    for c_out in (4, 16):
        kernel = np.ones((3, 3, 1, c_out), np.float32)

        def conv(a, kernel=kernel):
            return jax.lax.conv_general_dilated(a, kernel, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        out[f"conv1_1to{c_out}_ms"] = measure.latency(conv, batch, runs=runs).median_ms
        out[f"shifted_1to{c_out}_ms"] = measure.latency(
            lambda a, kernel=kernel: models.conv3x3_single_channel(a, kernel), batch,
            runs=runs).median_ms
    return out


# --------------------------------------------------------------------------- 3. recovery
def w2_accuracy(model: nnx.Module, xy) -> float:
    """Percent accuracy of the MLP as deployed with 2-bit MSE-clipped weights."""
    return 100.0 * qat.evaluate_deployed_mlp(model, *xy, weight_bits=2, act_bits=None,
                                             weight_method="mse")


def run_recovery(seed: int, rest, test, t_alpha, log) -> list[dict]:
    """KD as a recovery tool: the float MLP teaches its own 2-bit QAT copy.

    The compressed model is the 2-bit-weight QAT setting of ``benchmarks.quantization``
    (``qat.qat_mlp_loss(2, None, weight_method="mse")`` from the seed's cached
    LeNet-300-100). With its recipe there (3 epochs on 55,000 images) plain fine-tuning
    leaves only ~0.6 points, too little to measure a fraction of, so the headline setting
    fine-tunes on a small set, :data:`RECOVERY_N` training images (a random subset per
    seed), for :data:`RECOVERY_EPOCHS` epochs; the full-data setting (55,000 images, one
    epoch) is the extra line. Plain = QAT's cross-entropy; KD = the same fake-quantized
    forward with :func:`pruning_kit.distill.kd_wrap` against the float MLP's logits (same
    seed), at the ``(T, alpha)`` chosen for the students. Same epochs, batch, learning
    rate, data and seed for both. Both are measured as deployed (2-bit weights).
    """
    t, a = t_alpha
    dense = train.baseline("mlp_fashion", seed, progress=False)
    dense_acc, ptq_acc = pct(dense, test), w2_accuracy(dense, test)
    log(f"seed {seed} recovery: float MLP test {dense_acc:.2f}%, 2-bit PTQ {ptq_acc:.2f}%")
    qat_loss = qat.qat_mlp_loss(2, None, weight_method="mse")
    kd = distill.kd_wrap(qat_loss, temperature=t, alpha=a)
    pick = np.random.default_rng([seed, 4]).permutation(len(rest[0]))[:RECOVERY_N]
    rows = []
    for setting, (x, y), epochs in (
            (f"{RECOVERY_N:,} images", (rest[0][pick], rest[1][pick]), RECOVERY_EPOCHS),
            (f"{len(rest[0]):,} images", rest, FULL_EPOCHS)):
        t_logits = distill.teacher_logits(dense, x)
        accs = {}
        for how, yy, loss_fn in (("plain", y, qat_loss), ("KD", (y, t_logits), kd)):
            model, secs = train_run(lambda: train.baseline("mlp_fashion", seed,
                                                           progress=False),
                                    x, yy, epochs=epochs, lr=RECOVERY_LR, seed=seed,
                                    loss_fn=loss_fn)
            accs[how] = w2_accuracy(model, test)
            log(f"seed {seed} 2-bit QAT on {setting}, {how}: test {accs[how]:.2f}% "
                f"({epochs} epochs, {secs:.0f} s)")
            rows.append({"setting": setting, "seed": seed, "fine-tuning": how,
                         "test_pct": accs[how], "gap_delta": accs[how] - dense_acc,
                         "train_time": f"{secs:.0f} s"})
        gap = dense_acc - accs["plain"]
        rows[-1]["closed"] = (accs["KD"] - accs["plain"]) / gap if gap > 0 else float("nan")
        rows[-1]["gap_closed"] = f"{rows[-1]['closed']:.2f}"
        rows[-1]["dense_pct"], rows[-1]["ptq_pct"] = dense_acc, ptq_acc
    return rows


def report_speed(teacher: nnx.Module, x: np.ndarray, runs: int) -> dict:
    print(f"\n2. Size and speed (batch 256, median of 3 alternating rounds of {runs} calls)")
    speed = size_and_speed(teacher, x, runs)
    print(measure.Table([{"model": k, **v} for k, v in speed.items() if isinstance(v, dict)],
                        ["model", "params", "macs", "latency_b256_ms", "latency_ratio"]))
    print(f"the 3x3 convolution of the 1-channel image alone, batch 256, as nnx.Conv: 1->4 "
          f"channels {speed['conv1_1to4_ms']:.1f} ms, 1->16 {speed['conv1_1to16_ms']:.1f} ms; "
          f"as SmallCNN runs it in eval mode (shifted multiply-adds): 1->4 "
          f"{speed['shifted_1to4_ms']:.2f} ms, 1->16 {speed['shifted_1to16_ms']:.2f} ms")
    return speed


def emit_speed(speed: dict) -> None:
    emit("student_param_ratio", speed["teacher"]["params"] / speed["CNN 4/8"]["params"], "x")
    emit("student_latency_ratio", speed["CNN 4/8"]["latency_ratio"], "x")
    emit("student_mac_ratio", speed["teacher"]["macs"] / speed["CNN 4/8"]["macs"], "x")
    emit("student_latency_ratio_mlp", speed["MLP 784-32-10"]["latency_ratio"], "x")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--runs", type=int, default=50, help="timed calls per latency")
    parser.add_argument("--speed-only", action="store_true",
                        help="only section 2 (size and speed, about a minute): no training")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    print(measure.machine_summary())
    ds = data.load("fashion_mnist")
    if args.speed_only:
        speed = report_speed(train.baseline("cnn_fashion", args.seeds[0], progress=False),
                             ds.x_test, args.runs)
        emit_speed(speed)
        return
    rest, val = data.holdout(ds.x_train, ds.y_train, VAL_SIZE, seed=0)
    test = (ds.x_test, ds.y_test)
    print(f"validation split: {VAL_SIZE} training images (data.holdout seed 0); students "
          f"train on the other {len(rest[0])}; seeds {tuple(args.seeds)}; batch {BATCH}, "
          f"Adam {STUDENT_LR:g} with cosine decay, no augmentation\n")

    teachers, t_logits = {}, {}
    for seed in args.seeds:
        teachers[seed] = train.baseline("cnn_fashion", seed, progress=False)
        t0 = time.perf_counter()
        t_logits[seed] = distill.teacher_logits(teachers[seed], rest[0])
        agree = 100 * np.mean(t_logits[seed].argmax(-1) == rest[1])
        print(f"teacher seed {seed}: SmallCNN test {pct(teachers[seed], test):.2f}%, agrees "
              f"with the training labels on {agree:.2f}% (logits on {len(rest[0])} images "
              f"in {time.perf_counter() - t0:.0f} s)")

    print("\n1. Choosing (T, alpha) on validation")
    t_alpha, grid = choose_t_alpha(rest, val, t_logits[args.seeds[0]], args.seeds[0], print)
    print(measure.Table(grid, ["T", "alpha", "val_pct", "train_time"]))
    print(f"chosen: T = {t_alpha[0]:g}, alpha = {t_alpha[1]:g}\n")

    rows = []
    for seed in args.seeds:
        rows += run_students(seed, rest, val, test, t_logits[seed], t_alpha, print)
    print("\nStudents, plain vs KD (same budget); gain = KD test - plain test")
    print(measure.Table(rows, ["student", "seed", "training", "val_pct", "test_pct",
                               "gain_delta", "train_time"]))
    gains = {s: [r["gain_delta"] for r in rows if r["student"] == s and "gain_delta" in r]
             for s in ("CNN 4/8", "MLP 784-32-10")}
    for s, g in gains.items():
        accs = {how: [r["test_pct"] for r in rows if r["student"] == s
                      and r["training"] == how] for how in ("plain", "KD")}
        print(f"{s}: plain {np.mean(accs['plain']):.2f} +- {np.std(accs['plain']):.2f}%, KD "
              f"{np.mean(accs['KD']):.2f} +- {np.std(accs['KD']):.2f}%, gain "
              f"{np.mean(g):+.2f} +- {np.std(g):.2f} pts")

    speed = report_speed(teachers[args.seeds[0]], ds.x_test, args.runs)

    print("\n3. KD as a recovery tool (2-bit QAT of LeNet-300-100, teacher = its float "
          f"model, T = {t_alpha[0]:g}, alpha = {t_alpha[1]:g}, Adam {RECOVERY_LR:g})")
    rec = []
    for seed in args.seeds:
        rec += run_recovery(seed, rest, test, t_alpha, print)
    print(measure.Table(rec, ["setting", "seed", "fine-tuning", "test_pct", "gap_delta",
                              "gap_closed", "train_time"]))
    fractions = {}
    for setting in dict.fromkeys(r["setting"] for r in rec):
        done = [r for r in rec if r["setting"] == setting and "closed" in r]
        fractions[setting] = [r["closed"] for r in done]
        plain = [r["test_pct"] for r in rec if r["setting"] == setting
                 and r["fine-tuning"] == "plain"]
        kd = [r["test_pct"] for r in done]
        print(f"{setting}: float {np.mean([r['dense_pct'] for r in done]):.2f}%, PTQ "
              f"{np.mean([r['ptq_pct'] for r in done]):.2f}%, plain fine-tuning "
              f"{np.mean(plain):.2f}%, KD {np.mean(kd):.2f}%; fraction of the gap closed "
              f"{np.mean(fractions[setting]):.2f} +- {np.std(fractions[setting]):.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")

    emit("kd_gain_pts", np.mean(gains["CNN 4/8"]), "points")
    emit("kd_gain_std", np.std(gains["CNN 4/8"]), "points")
    emit("kd_gain_pts_mlp_student", np.mean(gains["MLP 784-32-10"]), "points")
    emit_speed(speed)
    headline, extra = list(fractions)
    emit("kd_recovery_fraction", np.mean(fractions[headline]), "fraction")
    emit("kd_recovery_fraction_full_data", np.mean(fractions[extra]), "fraction")


if __name__ == "__main__":
    main()
