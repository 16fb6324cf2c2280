"""Knowledge-distillation figures (Fashion-MNIST, 3 seeds) for notebook 02.

Run from the repository root::

    python -m benchmarks.distillation               # loads the cached students
    python -m benchmarks.distillation --retrain     # remakes every cached student first
    python -m benchmarks.distillation --speed-only  # section 2 only (size, latency)
    python -m benchmarks.distillation --teacher     # train (or load) the stronger teacher
    python -m benchmarks.distillation --recovery-views   # + section 5 (about 3 min more)

The students are cached models (:mod:`pruning_kit.zoo`, ``data/checkpoints/
student_cnn_*_seed<S>.npz`` and ``mlp_fashion_w2_*_seed<S>.npz``); a missing one is trained,
and the stronger teacher (``cnn_fashion_teacher_seed0.npz``, made on first use or by
``--teacher``, about 23 minutes) is the only other model trained here. The one command that
reproduces all the students is ``python -m benchmarks.distillation --retrain`` (about 30
minutes on 2 CPU cores: ten 5-epoch CNN students, six short 2-bit fine-tunings, the bank of
views (3.5 min) and fifteen function-matching students, 22 min); notebook 02 loads the same
files.

* **Data**: students train on the 55,000 training images; every choice is made on the
  fixed 5,000-image validation split (``ds.x_val``); the 10,000 test images are only
  reported.
* **Teacher**: each seed's cached SmallCNN baseline (``zoo.baseline("cnn_fashion",
  seed)``, 39,098 parameters), never retrained here.
* **Choosing (T, alpha)**: :func:`pruning_kit.zoo.kd_grid` scores the plain CNN student
  and the distilled one at each cell of ``students.KD_GRID`` on validation (seed 0, the full
  student budget); :func:`pruning_kit.zoo.kd_choice` takes the best cell.
* **Student vs control**: ``students.plain_student`` and ``students.kd_student`` -- the same
  student (``models.student_cnn``, 5,462 parameters) trained with cross-entropy and with
  logit KD (teacher logits precomputed on the un-augmented training images) under the
  *same* budget (``students.STUDENT_BUDGET``: epochs, batch, Adam with cosine decay, seed,
  no augmentation), at the ``(T, alpha)`` chosen on validation; the FitNets-hinted student
  (``students.hint_student``, seed 0) is printed.
* **Size and speed**: parameters, MACs, and the batch-256 latency of teacher and students
  timed interleaved (``measure.compare_latency``): median speed-up over the teacher with
  its IQR; an IQR that contains 1.0 is "no measurable difference".
* **KD as a recovery tool**: see :func:`run_recovery`.
* **Patient and consistent** (section 4, the headline ``kd_gain_pts``): the stronger
  teacher (``students.strong_teacher``: SmallCNN 32/64, trained once by ``--teacher``) and
  function matching on a bank of augmented views (``pruning_kit.function_matching``,
  ``students.FM``): the student and the teacher see the same flipped/shifted image; the
  plain control reads the same images in the same order. ``(T, alpha)`` is chosen on
  validation at ``FM["grid_epochs"]`` (seed 0); accuracy against the budget (epochs of
  distinct views) is shown for seed 0, and the longest budget is run on every seed. The
  figures of sections 1 and 3 (precomputed logits of the seed's 91.7 % SmallCNN, 5
  epochs, no augmentation) are kept beside it.
* **Recovery on views** (section 5, ``--recovery-views``): section 3's 2-bit recovery with
  the same recipe -- plain and KD fine-tuning read the same 16 views of the 3,000 images,
  the float MLP's logits on each; the fraction of the gap closed is reported against
  plain fine-tuning on the same views and against section 3's plain fine-tuning.

Prints the machine, tables, then the figures (metric, value, unit, target) as a table;
``--out results.jsonl`` appends them as JSON lines (``benchmarks._common``).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import data, function_matching, measure, models, qat, students, train, zoo

SEEDS = (0, 1, 2)
GRID_SEED = 0
STUDENTS = {"CNN 4/8": "cnn"}
TARGETS = {
    "teacher_acc": ">= 93.0 % test (the stronger teacher)",
    "kd_gain_pts": ">= +0.5, and > 2 x kd_gain_std (patient and consistent, 3 seeds)",
    "kd_gain_pts_5ep_precomputed": "extra: section 1's recipe (weaker teacher, 5 epochs)",
    "kd_gain_std": "reported beside kd_gain_pts (sample std over seeds, ddof=1)",
    "student_param_ratio": ">= 5",
    "student_latency_ratio": ">= 3",
    "kd_recovery_fraction": ">= 0.5",
    "student_mac_ratio": "extra: teacher MACs / student MACs per image",
    "student_latency_ratio_q25": "extra: 25th percentile of the per-round ratio",
    "student_latency_ratio_q75": "extra: 75th percentile of the per-round ratio",
    "student_latency_ratio_mlp": "extra: the MLP student 784-32-10 (untrained weights)",
}


def std(values) -> float:
    """Sample standard deviation (ddof=1) over seeds; 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- 1. students
def choose_t_alpha(ds: data.Dataset, retrain: bool) -> tuple[tuple[float, float], list]:
    """The (T, alpha) of ``students.KD_GRID`` with the best validation accuracy (seed 0)."""
    scores = students.kd_grid(GRID_SEED, dataset=ds, retrain=retrain, progress=False)
    rows = [{"T": "-" if c == "plain" else c[0], "alpha": "0 (plain)" if c == "plain"
             else c[1], "val_pct": 100 * v,
             "vs_plain_delta": None if c == "plain" else 100 * (v - scores["plain"])}
            for c, v in scores.items()]
    return students.kd_choice(scores), rows


def run_students(seed: int, ds: data.Dataset, t_alpha: tuple[float, float],
                 retrain: bool) -> list[dict]:
    """Plain and KD runs of the CNN student for one seed (cached, see module docstring)."""
    t, a = t_alpha
    rows = []
    for student, arch in STUDENTS.items():
        # the grid (re)made seed 0's plain CNN student and its chosen KD cell already
        again = retrain and not (arch == "cnn" and seed == GRID_SEED)
        accs = {}
        for how, model in (
                ("plain", students.plain_student(seed, arch=arch, retrain=again, dataset=ds,
                                                progress=False)),
                ("KD", students.kd_student(seed, temperature=t, alpha=a, arch=arch,
                                          retrain=again, dataset=ds, progress=False))):
            accs[how] = (100 * train.evaluate(model, ds.x_val, ds.y_val),
                         100 * train.evaluate(model, ds.x_test, ds.y_test))
            rows.append({"student": student, "seed": seed, "training": how,
                         "val_pct": accs[how][0], "test_pct": accs[how][1]})
        rows[-1]["gain_delta"] = accs["KD"][1] - accs["plain"][1]
    return rows


# --------------------------------------------------------------------------- 2. speed
def size_and_speed(teacher: nnx.Module, x: np.ndarray, rounds: int, runs: int,
                   old_teacher: nnx.Module | None = None
                   ) -> tuple[dict, measure.LatencyComparison]:
    """Parameters, MACs and the interleaved batch-256 latency of teacher and students.

    The latency does not depend on the weights, so fresh students stand in for the
    trained ones (no training needed for ``--speed-only``).
    """
    cands = {"teacher": teacher, "CNN 4/8": models.student_cnn(),
             "MLP 784-32-10": models.student_mlp()}
    if old_teacher is not None:
        cands["SmallCNN 16/32"] = old_teacher
    batch = x[:256]
    comp = measure.compare_latency(cands, batch, rounds=rounds, runs=runs)
    out = {name: {"params": measure.count_params(m),
                  "macs": measure.cost(m, x[:1])["macs_per_example"]}
           for name, m in cands.items()}
    # Where a tiny CNN's time goes on XLA:CPU: the 3x3 convolution of the 1-channel image
    # as nnx.Conv runs it, and as SmallCNN runs it at inference (shifted multiply-adds).
    convs = {}
    for c_out in (4, 16):
        kernel = np.ones((3, 3, 1, c_out), np.float32)
        convs[f"conv 1->{c_out}"] = lambda a, k=kernel: jax.lax.conv_general_dilated(
            a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        convs[f"shifted 1->{c_out}"] = lambda a, k=kernel: models.conv3x3_single_channel(a, k)
    out["first_layer"] = measure.compare_latency(convs, batch, rounds=max(rounds // 3, 4),
                                                 runs=runs)
    return out, comp


def report_speed(teacher: nnx.Module, x: np.ndarray, rounds: int, runs: int,
                 old_teacher: nnx.Module | None = None) -> dict:
    print(f"\n2. Size and speed (batch 256, {rounds} interleaved rounds of {runs} calls; "
          "teacher: the stronger SmallCNN 32/64)")
    speed, comp = size_and_speed(teacher, x, rounds, runs, old_teacher)
    print(measure.Table([{"model": k, **v} for k, v in speed.items() if isinstance(v, dict)],
                        ["model", "params", "macs"]))
    print(comp.table())
    print("the 3x3 convolution of the 1-channel image alone (batch 256), as nnx.Conv runs "
          "it and as SmallCNN runs it in eval mode:")
    print(speed["first_layer"].table())
    speed["latency"] = comp
    return speed


def emit_speed(speed: dict) -> None:
    comp = speed["latency"]
    emit("student_param_ratio", speed["teacher"]["params"] / speed["CNN 4/8"]["params"], "x")
    emit("student_latency_ratio", comp["CNN 4/8"].speedup, "x")
    emit("student_latency_ratio_q25", comp["CNN 4/8"].speedup_iqr[0], "x")
    emit("student_latency_ratio_q75", comp["CNN 4/8"].speedup_iqr[1], "x")
    emit("student_mac_ratio", speed["teacher"]["macs"] / speed["CNN 4/8"]["macs"], "x")
    emit("student_latency_ratio_mlp", comp["MLP 784-32-10"].speedup, "x")


# --------------------------------------------------------------------------- 3. recovery
def w2_accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Percent accuracy of the MLP as deployed with 2-bit MSE-clipped weights."""
    return 100.0 * qat.evaluate_deployed_mlp(model, x, y, weight_bits=2, act_bits=None,
                                             weight_method="mse")


def run_recovery(seed: int, ds: data.Dataset, t_alpha: tuple[float, float],
                 retrain: bool) -> list[dict]:
    """KD as a recovery tool: the float MLP teaches its own 2-bit QAT copy.

    The compressed model is the 2-bit-weight QAT setting of ``benchmarks.quantization``
    (``qat.qat_loss(2, None, weight_method="mse")`` from the seed's cached
    LeNet-300-100), fine-tuned by ``students.recovered_mlp`` (cached) on
    ``students.RECOVERY["images"]`` training images for ``students.RECOVERY["epochs"]``
    epochs, a setting where plain fine-tuning leaves a clear gap. Plain = QAT's cross-entropy; KD =
    the same fake-quantized forward with :func:`pruning_kit.distill.kd_wrap` against the
    float MLP's logits (same seed), at the ``(T, alpha)`` chosen for the students. Same
    epochs, batch, learning rate, data and seed for both; both measured as deployed
    (2-bit weights) on the test set.
    """
    t, a = t_alpha
    test = (ds.x_test, ds.y_test)
    dense = zoo.baseline("mlp_fashion", seed, progress=False)
    dense_acc, ptq_acc = 100 * train.evaluate(dense, *test), w2_accuracy(dense, *test)
    rows = []
    small = {"plain": students.recovered_mlp(seed, retrain=retrain, dataset=ds, progress=False),
             "KD": students.recovered_mlp(seed, temperature=t, alpha=a, retrain=retrain,
                                         dataset=ds, progress=False)}
    for setting, pair in ((f"{students.RECOVERY['images']:,} images", small),):
        accs = {how: w2_accuracy(m, *test) for how, m in pair.items()}
        for how, acc in accs.items():
            rows.append({"setting": setting, "seed": seed, "fine-tuning": how,
                         "test_pct": acc, "gap_delta": acc - dense_acc})
        gap = dense_acc - accs["plain"]
        rows[-1]["closed"] = (accs["KD"] - accs["plain"]) / gap if gap > 0 else float("nan")
        rows[-1]["gap_closed"] = f"{rows[-1]['closed']:.2f}"
        rows[-1]["dense_pct"], rows[-1]["ptq_pct"] = dense_acc, ptq_acc
    return rows


# --------------------------------------------------------------------------- 4. FM
def patient_and_consistent(ds: data.Dataset, teacher: nnx.Module, seeds, retrain: bool
                           ) -> dict:
    """Section 4: (T, alpha) on validation, the budget curve (seed 0), the gain (all seeds)."""
    fm = students.FM
    made: dict = {}

    def bank():
        if "bank" not in made:
            start = time.perf_counter()
            made["bank"] = function_matching.view_bank(teacher, ds.x_train, fm["views"])
            print(f"  (bank of {fm['views']} views x {len(ds.x_train):,} images with the "
                  f"teacher's logits: {time.perf_counter() - start:.0f} s)")
        return made["bank"]

    kw = dict(bank=bank, retrain=retrain, dataset=ds, progress=False)

    def val(m):
        return 100 * train.evaluate(m, ds.x_val, ds.y_val)

    def test(m):
        return 100 * train.evaluate(m, ds.x_test, ds.y_test)

    scores = students.fm_grid(GRID_SEED, **kw)
    t, a = students.kd_choice(scores)
    grid = [{"T": "-" if c == "plain" else c[0], "alpha": "0 (plain)" if c == "plain" else c[1],
             "val_pct": 100 * v} for c, v in scores.items()]

    curve = []
    for e in fm["epochs"]:
        plain = students.fm_student(GRID_SEED, epochs=e, **kw)
        kd = students.fm_student(GRID_SEED, epochs=e, temperature=t, alpha=a, **kw)
        curve.append({"epochs": e, "plain_val": val(plain), "kd_val": val(kd),
                      "plain_test": test(plain), "kd_test": test(kd)})
        curve[-1]["gain_test_delta"] = curve[-1]["kd_test"] - curve[-1]["plain_test"]
    longest = max(fm["epochs"])
    rows = []
    for seed in seeds:
        plain = students.fm_student(seed, epochs=longest, **kw)
        kd = students.fm_student(seed, epochs=longest, temperature=t, alpha=a, **kw)
        rows.append({"seed": seed, "plain_test": test(plain), "kd_test": test(kd)})
        rows[-1]["gain_delta"] = rows[-1]["kd_test"] - rows[-1]["plain_test"]
    return {"t_alpha": (t, a), "grid": grid, "curve": curve, "rows": rows,
            "epochs": longest}


def report_fm(result: dict, teacher_test: float) -> list[float]:
    t, a = result["t_alpha"]
    print(f"\n4. Patient and consistent: the stronger teacher ({teacher_test:.2f} % test), "
          f"function matching on a bank of {students.FM['views']} views")
    print(f"(T, alpha) on validation, seed {GRID_SEED}, {students.FM['grid_epochs']} epochs:")
    print(measure.Table(result["grid"], ["T", "alpha", "val_pct"]))
    print(f"chosen: T = {t:g}, alpha = {a:g}")
    print(f"accuracy against the budget (epochs of distinct views), seed {GRID_SEED}:")
    print(measure.Table(result["curve"], ["epochs", "plain_val", "kd_val", "plain_test",
                                          "kd_test", "gain_test_delta"]))
    print(f"{result['epochs']} epochs, every seed (test):")
    print(measure.Table(result["rows"], ["seed", "plain_test", "kd_test", "gain_delta"]))
    gains = [r["gain_delta"] for r in result["rows"]]
    print(f"gain {np.mean(gains):+.2f} +- {std(gains):.2f} pts (mean +- sample std)")
    return gains


# --------------------------------------------------------------------------- 5. views
#: KD recovery on consistent views: (T, alpha) cells scored on validation (seed 0), budget.
RECOVERY_VIEWS = dict(grid=((2.0, 0.5), (1.0, 1.0), (4.0, 1.0)), views=16)


def recovery_on_views(ds: data.Dataset, seeds) -> dict:
    """Section 5: the 2-bit QAT recovery of section 3 on a bank of views of its images.

    Each seed's 3,000 recovery images get ``RECOVERY_VIEWS["views"]`` augmented copies with
    the float MLP's logits on each (``function_matching.view_bank``); plain QAT fine-tuning
    and KD fine-tuning read the same views in the same order for the same budget (one view of
    every image per epoch). Not cached: about 3 minutes.
    """
    v = RECOVERY_VIEWS["views"]

    def tune(seed, y, t_logits, t_alpha, x):
        """One pass over the views (one view of every image per epoch) from the float MLP."""
        t, a = t_alpha if t_alpha is not None else (None, None)
        return students.recovery_finetune(
            zoo.baseline("mlp_fashion", seed, progress=False), x, y,
            teacher_logits=None if t_alpha is None else t_logits, temperature=t, alpha=a,
            epochs=1, seed=seed)

    rows, chosen = [], None
    for seed in sorted(seeds, key=lambda s: s != GRID_SEED):      # the grid's seed first
        dense = zoo.baseline("mlp_fashion", seed, progress=False)
        pick = students.recovery_images(seed, ds)
        bank = function_matching.view_bank(dense, ds.x_train[pick], v, seed=seed)
        x, y, t_logits = function_matching.budget(bank, ds.y_train[pick], v)
        plain = tune(seed, y, t_logits, None, x)
        if chosen is None:
            scores = {c: w2_accuracy(tune(seed, y, t_logits, c, x), ds.x_val, ds.y_val)
                      for c in RECOVERY_VIEWS["grid"]}
            chosen = max(scores, key=lambda c: round(scores[c], 2))
            print("  (T, alpha) on validation, seed", seed, ", deployed 2-bit accuracy: "
                  + ", ".join(f"{c}: {a:.2f}%" for c, a in scores.items()) + f" -> {chosen}")
        kd = tune(seed, y, t_logits, chosen, x)
        dense_acc = 100 * train.evaluate(dense, ds.x_test, ds.y_test)
        best_plain = w2_accuracy(students.recovered_mlp(seed, dataset=ds, progress=False),
                                 ds.x_test, ds.y_test)
        row = {"seed": seed, "dense_pct": dense_acc, "plain_views_pct": w2_accuracy(
            plain, ds.x_test, ds.y_test), "kd_views_pct": w2_accuracy(kd, ds.x_test, ds.y_test),
            "plain_no_views_pct": best_plain}
        row["closed"] = ((row["kd_views_pct"] - row["plain_views_pct"])
                         / (dense_acc - row["plain_views_pct"]))
        row["closed_vs_no_views"] = ((row["kd_views_pct"] - best_plain) / (dense_acc - best_plain))
        rows.append(row)
    return {"t_alpha": chosen, "rows": rows}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per round")
    parser.add_argument("--retrain", action="store_true",
                        help="remake every cached student (students.*_student, "
                             "students.recovered_mlp); the teachers are never retrained")
    parser.add_argument("--speed-only", action="store_true",
                        help="only section 2 (size and speed, about a minute): no training")
    parser.add_argument("--recovery-views", action="store_true",
                        help="also section 5: the 2-bit recovery on consistent views (about "
                             "3 minutes, not cached)")
    parser.add_argument("--teacher", action="store_true",
                        help="train the stronger teacher if it is not cached (about 40 "
                             "minutes on 2 CPU cores), print its accuracy, stop")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        start = time.perf_counter()

        print(measure.machine_summary())
        ds = data.load_fashion_mnist()
        strong = students.strong_teacher(0, dataset=ds, progress=True)
        teacher_val, teacher_test = (100 * train.evaluate(strong, x, y) for x, y in
                                     ((ds.x_val, ds.y_val), (ds.x_test, ds.y_test)))
        print(f"stronger teacher (SmallCNN 32/64, {measure.count_params(strong):,} parameters, "
              f"students.TEACHER): validation {teacher_val:.2f} %, test {teacher_test:.2f} %")
        if args.teacher:
            emit("teacher_acc", teacher_test, "%")
            return
        if args.speed_only:
            speed = report_speed(strong, ds.x_test, args.rounds, args.runs,
                                 zoo.baseline("cnn_fashion", args.seeds[0], progress=False))
            emit_speed(speed)
            return
        print(f"split: {ds.split.describe()}; students train on ds.x_train, every choice on "
              f"ds.x_val, the test set is only reported; seeds {tuple(args.seeds)}; budgets "
              f"{students.STUDENT_BUDGET} (Adam with cosine decay, no augmentation)\n")

        teachers = {}
        for seed in args.seeds:
            teachers[seed] = zoo.baseline("cnn_fashion", seed, progress=False)
            print(f"teacher seed {seed}: SmallCNN validation "
                  f"{100 * train.evaluate(teachers[seed], ds.x_val, ds.y_val):.2f}%, test "
                  f"{100 * train.evaluate(teachers[seed], ds.x_test, ds.y_test):.2f}%")

        print(f"\n1. Choosing (T, alpha) on validation (CNN student, seed {GRID_SEED})")
        t_alpha, grid = choose_t_alpha(ds, args.retrain)
        print(measure.Table(grid, ["T", "alpha", "val_pct", "vs_plain_delta"]))
        print(f"chosen: T = {t_alpha[0]:g}, alpha = {t_alpha[1]:g}\n")

        rows = []
        for seed in args.seeds:
            rows += run_students(seed, ds, t_alpha, args.retrain)
        print("Students, plain vs KD (same budget); gain = KD test - plain test")
        print(measure.Table(rows, ["student", "seed", "training", "val_pct", "test_pct",
                                   "gain_delta"]))
        gains = {s: [r["gain_delta"] for r in rows if r["student"] == s and "gain_delta" in r]
                 for s in STUDENTS}
        for s, g in gains.items():
            accs = {how: [r["test_pct"] for r in rows if r["student"] == s
                          and r["training"] == how] for how in ("plain", "KD")}
            print(f"{s}: plain {np.mean(accs['plain']):.2f} +- {std(accs['plain']):.2f}%, KD "
                  f"{np.mean(accs['KD']):.2f} +- {std(accs['KD']):.2f}%, gain "
                  f"{np.mean(g):+.2f} +- {std(g):.2f} pts (mean +- sample std; per seed "
                  + ", ".join(f"{v:+.2f}" for v in g) + ")")
        hint = students.hint_student(GRID_SEED, temperature=t_alpha[0], alpha=t_alpha[1],
                                    retrain=args.retrain, dataset=ds, progress=False)
        print(f"CNN 4/8 with logit KD + {students.HINT['layer']} hint (seed {GRID_SEED}): "
              f"validation {100 * train.evaluate(hint, ds.x_val, ds.y_val):.2f}%, test "
              f"{100 * train.evaluate(hint, ds.x_test, ds.y_test):.2f}%")

        speed = report_speed(strong, ds.x_test, args.rounds, args.runs, teachers[args.seeds[0]])

        print("\n3. KD as a recovery tool (2-bit QAT of LeNet-300-100, teacher = its float "
              f"model, T = {t_alpha[0]:g}, alpha = {t_alpha[1]:g}, "
              f"Adam {students.RECOVERY['learning_rate']:g})")
        rec = []
        for seed in args.seeds:
            rec += run_recovery(seed, ds, t_alpha, args.retrain)
        print(measure.Table(rec, ["setting", "seed", "fine-tuning", "test_pct", "gap_delta",
                                  "gap_closed"]))
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
                  f"{np.mean(fractions[setting]):.2f} +- {std(fractions[setting]):.2f}")
        fm = patient_and_consistent(ds, strong, args.seeds, args.retrain)
        fm_gains = report_fm(fm, teacher_test)
        if args.recovery_views:
            print(f"\n5. KD recovery of the 2-bit MLP on {RECOVERY_VIEWS['views']} consistent "
                  "views of its 3,000 images (plain and KD read the same views)")
            rv = recovery_on_views(ds, args.seeds)
            print(measure.Table(rv["rows"], ["seed", "dense_pct", "plain_no_views_pct",
                                             "plain_views_pct", "kd_views_pct", "closed",
                                             "closed_vs_no_views"]))
        print(f"\ntotal {time.perf_counter() - start:.0f} s\n")

        emit("teacher_acc", teacher_test, "%")
        emit("kd_gain_pts", np.mean(fm_gains), "points")
        emit("kd_gain_std", std(fm_gains), "points")
        emit("kd_gain_pts_5ep_precomputed", np.mean(gains["CNN 4/8"]), "points")
        emit_speed(speed)
        (headline,) = list(fractions)
        emit("kd_recovery_fraction", np.mean(fractions[headline]), "fraction")
        if args.recovery_views:
            emit("kd_recovery_fraction_views", np.mean([r["closed"] for r in rv["rows"]]),
                 "fraction", target="extra: KD vs plain on the same views",
                 std=std([r["closed"] for r in rv["rows"]]))
            emit("kd_recovery_fraction_views_vs_no_views",
                 np.mean([r["closed_vs_no_views"] for r in rv["rows"]]), "fraction",
                 target="extra: KD on views vs section 3's plain fine-tuning (no views)")


if __name__ == "__main__":
    main()
