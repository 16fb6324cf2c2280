"""Knowledge-distillation figures (Fashion-MNIST, 3 seeds) for notebook 02.

Run from the repository root::

    python -m benchmarks.distillation               # loads the cached students
    python -m benchmarks.distillation --retrain     # remakes every cached student first
    python -m benchmarks.distillation --speed-only  # section 2 only (size, latency)
    python -m benchmarks.distillation --teacher     # train (or load) the stronger teacher

The students are cached models (:mod:`pruning_kit.zoo`, ``data/checkpoints/
student_cnn*_seed<S>.npz`` and ``mlp_fashion_w2_*_seed<S>.npz``); a missing one is trained,
and the stronger teacher (``cnn_fashion_teacher_seed0.npz``, made on first use or by
``--teacher``, about 23 minutes) is the only other model trained here. The one command that
reproduces all the students is ``python -m benchmarks.distillation --retrain`` (about
2 h 05 min on 2 CPU cores, estimated from the training times the checkpoints record, not
timed end to end: ten 5-epoch CNN students, nine short 2-bit fine-tunings, the bank of 32
views (about 16 min: the teacher answers twice per view), the bank of 16 mixup-blended
views (about 8 min) and twenty-four function-matching students, 3 min each at 16 epochs
and 5-7 min at 32); notebook 02 loads the same files. Section 5's recipe grid is not
cached (33 fine-tunings, about 7 min).

* **Data**: students train on the 55,000 training images; every choice is made on the
  fixed 5,000-image validation split (``ds.x_val``); the 10,000 test images are only
  reported.
* **Teacher**: each seed's cached SmallCNN baseline (``zoo.baseline("cnn_fashion",
  seed)``, 39,098 parameters), never retrained here.
* **Choosing (T, alpha)**: :func:`pruning_kit.students.kd_grid` scores the plain CNN student
  and the distilled one at each cell of ``students.KD_GRID`` on validation (seed 0, the full
  student budget); :func:`pruning_kit.students.kd_choice` takes the best cell.
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
  teacher (``students.strong_teacher``: SmallCNN 32/64, trained once by ``--teacher``;
  it answers with the mean of its logits on an image and its mirror when that wins on
  validation, ``students.TEACHER_MIRROR_AVERAGE``; ``teacher_acc`` is that answer's test
  accuracy, ``teacher_acc_single_pass`` one pass's) and function matching on a bank of
  augmented views (``pruning_kit.function_matching``, ``students.FM``) into a SmallCNN
  8/16 student: the student and the teacher see the same flipped/shifted image; the
  plain control reads the same images in the same order. The views (these, or the same
  views blended by mixup, ``students.FM_MIXUP``, whose plain control learns the mixed
  labels) and ``(T, alpha)`` are chosen on validation at the reported budget
  (``FM["epochs"]``, seed 0: ``students.FM_MIXUP_CHOSEN`` is checked against the best
  distilled and the best plain student); accuracy against the budget
  (``FM["curve"]``: epochs of distinct views, up to twice the reported one) and against the
  student's width (``students.FM_WIDTHS``, validation) is shown for seed 0, and the
  reported budget is run on every seed. The size
  and speed ratios are this student's against one pass of the teacher. The figures
  of sections 1 and 3 (precomputed logits of the seed's 91.7 % SmallCNN, 5 epochs, no
  augmentation, the 4/8 student) are kept beside it.
* **Patient and consistent recovery** (section 5, the headline ``kd_recovery_fraction``):
  section 3's 2-bit recovery, where the float MLP labels 40 mixup blends of each of the
  3,000 images (``students.RECOVERY_FM``). Every recipe of :data:`RECOVERY_FM_GRID` and
  section 3's is fine-tuned on this machine for every seed and scored on validation. The
  control is the plain recipe with the best mean validation accuracy; the recorded KD
  recipe stands unless another leads it there by more than one standard error over the
  seeds (then a warning says to update it). The fraction of the control's gap to the float
  model that KD closes is reported on the test set for every seed: with the cached models
  (the headline) and with the ones fine-tuned here (``kd_recovery_fraction_here``).
* **Channel-removed CNN** (section 6): ``zoo.half_mac_cnn`` (fine-tuned with its dense CNN
  as online teacher on the same augmented batch) against the same fine-tuning on the
  labels alone (``alpha = 0``), 3 seeds: ``kd_recovery_delta_cnn``.

Prints the machine, tables, then the figures (metric, value, unit, target) as a table;
``--out results.jsonl`` appends them as JSON lines (``benchmarks._common``).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import data, function_matching, measure, models, qat, students, train, zoo

SEEDS = (0, 1, 2)
GRID_SEED = 0
STUDENTS = {"CNN 4/8": "cnn"}
#: The student of section 4 (the headline ``kd_gain_pts`` and the size and speed ratios).
FM_STUDENT = "CNN {}/{}".format(*students.FM["widths"])
TARGETS = {
    "teacher_acc": ">= 93.0 % test (the stronger teacher)",
    "kd_gain_pts": ">= +0.5, and > 2 x kd_gain_std (patient and consistent, 3 seeds)",
    "kd_gain_pts_5ep_precomputed": "extra: section 1's recipe (weaker teacher, 5 epochs)",
    "kd_gain_std": "reported beside kd_gain_pts (sample std over seeds, ddof=1)",
    "kd_gain_val_pts_mixup": "extra: on mixup blends, best KD - plain on them (val, seed 0)",
    "student_param_ratio": ">= 5 (teacher / section 4's student)",
    "student_latency_ratio": ">= 3 (batch 256, one teacher pass / section 4's student)",
    "teacher_acc_single_pass": "extra: the teacher without the mirror average",
    "kd_recovery_fraction": ">= 0.5 (section 5: mixup views, vs the best plain recipe)",
    "kd_recovery_fraction_here": "extra: the same recipes, every model fine-tuned on this machine",
    "kd_recovery_fraction_precomputed": "extra: section 3's recipe (10 epochs of the images)",
    "kd_recovery_delta_cnn": "extra: channel-removed CNN, KD - plain fine-tuning (test)",
    "student_mac_ratio": "extra: teacher MACs / student MACs per image",
    "student_latency_ratio_q25": "extra: 25th percentile of the per-round ratio",
    "student_latency_ratio_q75": "extra: 75th percentile of the per-round ratio",
    "student_latency_ratio_cnn4x8": "extra: section 1's CNN 4/8 student",
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
    cands = {"teacher": teacher, FM_STUDENT: models.small_cnn(students.FM["widths"]),
             "CNN 4/8": models.student_cnn(), "MLP 784-32-10": models.student_mlp()}
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
    emit("student_param_ratio", speed["teacher"]["params"] / speed[FM_STUDENT]["params"], "x")
    emit("student_latency_ratio", comp[FM_STUDENT].speedup, "x")
    emit("student_latency_ratio_q25", comp[FM_STUDENT].speedup_iqr[0], "x")
    emit("student_latency_ratio_q75", comp[FM_STUDENT].speedup_iqr[1], "x")
    emit("student_mac_ratio", speed["teacher"]["macs"] / speed[FM_STUDENT]["macs"], "x")
    emit("student_latency_ratio_cnn4x8", comp["CNN 4/8"].speedup, "x")
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
            made["bank"] = students.fm_bank(teacher, ds.x_train)
            print(f"  (bank of {fm['views']} views x {len(ds.x_train):,} images with the "
                  f"teacher's logits: {time.perf_counter() - start:.0f} s)")
        return made["bank"]

    kw = dict(bank=bank, retrain=retrain, dataset=ds, progress=False)

    def val(m):
        return 100 * train.evaluate(m, ds.x_val, ds.y_val)

    def test(m):
        return 100 * train.evaluate(m, ds.x_test, ds.y_test)

    mixup = students.FM_MIXUP_CHOSEN

    def mixed_bank():                   # the grid's budget, or the curve's if it is chosen
        if "mixed" not in made:
            start = time.perf_counter()
            views = fm["views"] if mixup else fm["epochs"]
            made["mixed"] = students.fm_bank(teacher, ds.x_train, views, mixup=True)
            print(f"  (bank of {views} mixup-blended views: "
                  f"{time.perf_counter() - start:.0f} s)")
        return made["mixed"]

    by_views = {m: students.fm_grid(GRID_SEED, **{**kw, "bank": mixed_bank if m else bank},
                                    mixup=m) for m in (mixup, not mixup)}
    t, a = students.kd_choice(by_views[mixup])
    grid = [{"views": "mixup blends" if m else "flips/shifts",
             "T": "-" if c == "plain" else c[0], "alpha": "0 (plain)" if c == "plain" else c[1],
             "val_pct": 100 * v} for m in (False, True) for c, v in by_views[m].items()]
    best_kd = {m: max(v for c, v in by_views[m].items() if c != "plain") for m in by_views}
    choice = {"kd": best_kd[True] > best_kd[False],
              "plain": by_views[True]["plain"] > by_views[False]["plain"]}
    if choice["kd"] != mixup or choice["plain"] != mixup:
        print(f"  WARNING: on validation the distilled student is best on "
              f"{'mixup blends' if choice['kd'] else 'flips/shifts'} and the plain one on "
              f"{'mixup blends' if choice['plain'] else 'flips/shifts'}, but "
              f"students.FM_MIXUP_CHOSEN is {mixup}: update it.")
    kw.update(mixup=mixup, bank=mixed_bank if mixup else bank)

    curve = []
    for e in fm["curve"]:
        plain = students.fm_student(GRID_SEED, epochs=e, **kw)
        kd = students.fm_student(GRID_SEED, epochs=e, temperature=t, alpha=a, **kw)
        curve.append({"epochs": e, "plain_val": val(plain), "kd_val": val(kd),
                      "plain_test": test(plain), "kd_test": test(kd)})
        curve[-1]["gain_val_delta"] = curve[-1]["kd_val"] - curve[-1]["plain_val"]
        curve[-1]["gain_test_delta"] = curve[-1]["kd_test"] - curve[-1]["plain_test"]
    reported = fm["epochs"]
    rows = []
    for seed in seeds:
        plain = students.fm_student(seed, epochs=reported, **kw)
        kd = students.fm_student(seed, epochs=reported, temperature=t, alpha=a, **kw)
        rows.append({"seed": seed, "plain_test": test(plain), "kd_test": test(kd)})
        rows[-1]["gain_delta"] = rows[-1]["kd_test"] - rows[-1]["plain_test"]
    widths = []                         # the gain against the student's width (validation)
    for w in students.FM_WIDTHS:
        plain = students.fm_student(GRID_SEED, epochs=reported, widths=w, **kw)
        kd = students.fm_student(GRID_SEED, epochs=reported, temperature=t, alpha=a, widths=w,
                                 **kw)
        widths.append({"student": "CNN {}/{}".format(*w),
                       "params": measure.count_params(plain), "plain_val": val(plain),
                       "kd_val": val(kd)})
        widths[-1]["gain_val_delta"] = widths[-1]["kd_val"] - widths[-1]["plain_val"]
    return {"t_alpha": (t, a), "grid": grid, "curve": curve, "rows": rows,
            "epochs": reported, "widths": widths, "mixup": mixup,
            "mixup_gain_val": 100 * (best_kd[True] - by_views[True]["plain"]),
            "choice_agrees": choice["kd"] == choice["plain"] == mixup}


def report_fm(result: dict, teacher_test: float) -> list[float]:
    t, a = result["t_alpha"]
    print(f"\n4. Patient and consistent: the stronger teacher ({teacher_test:.2f} % test), "
          f"function matching on a bank of {students.FM['views']} views")
    print(f"views and (T, alpha) on validation, seed {GRID_SEED}, {students.FM['epochs']} "
          f"epochs (mixup: Beta({students.FM_MIXUP:g}, {students.FM_MIXUP:g}) blends of the "
          "flipped/shifted views; its plain control learns the mixed labels):")
    print(measure.Table(result["grid"], ["views", "T", "alpha", "val_pct"]))
    print(f"chosen: {'mixup blends' if result['mixup'] else 'flips/shifts'}, T = {t:g}, "
          f"alpha = {a:g} (the best distilled student; the best plain one is on the same "
          f"views: {result['choice_agrees']})")
    print(f"accuracy against the budget (epochs of distinct views), seed {GRID_SEED}:")
    print(measure.Table(result["curve"], ["epochs", "plain_val", "kd_val", "gain_val_delta",
                                          "plain_test", "kd_test", "gain_test_delta"]))
    print(f"the student's width, {result['epochs']} epochs, seed {GRID_SEED} (validation):")
    print(measure.Table(result["widths"], ["student", "params", "plain_val", "kd_val",
                                           "gain_val_delta"]))
    print(f"{result['epochs']} epochs, every seed (test):")
    print(measure.Table(result["rows"], ["seed", "plain_test", "kd_test", "gain_delta"]))
    gains = [r["gain_delta"] for r in result["rows"]]
    print(f"gain {np.mean(gains):+.2f} +- {std(gains):.2f} pts (mean +- sample std)")
    return gains


# --------------------------------------------------------------------------- 5. patient
#: Section 5's candidate recipes for the 2-bit recovery, each fine-tuned on the running
#: machine for every seed and scored on validation (deployed 2-bit accuracy):
#: ``(fine-tuning, data, epochs or views, (T, alpha), concentration)``. "images": the 3,000
#: recovery images for that many epochs; "mixup": one pass over that many mixup blends of
#: each (``students.mixup_recovery_set``; concentration ``None`` is
#: ``students.RECOVERY_FM``'s), labelled by the float model (KD) or by the mixed labels
#: (plain). Section 3's two recipes and ``students.RECOVERY_FM`` itself join them.
RECOVERY_FM_GRID = (("plain", "images", 40, None, None), ("plain", "mixup", 40, None, None),
                    ("KD", "images", 40, (1.0, 1.0), None),
                    ("KD", "mixup", 40, (1.0, 1.0), None), ("KD", "mixup", 40, (2.0, 1.0), None),
                    ("KD", "mixup", 40, (4.0, 1.0), None), ("KD", "mixup", 80, (1.0, 1.0), None),
                    ("KD", "mixup", 40, (1.0, 1.0), 0.2), ("KD", "mixup", 40, (1.0, 1.0), 1.0))


def recovery_cell(seed: int, ds: data.Dataset, cell: tuple) -> nnx.Module:
    """One cell of :data:`RECOVERY_FM_GRID` fine-tuned from the seed's float MLP (not cached)."""
    how, kind, amount, t_alpha, concentration = cell
    t, a = t_alpha if how == "KD" else (None, None)
    if kind == "mixup":
        c = students.RECOVERY_FM["concentration"] if concentration is None else concentration
        return students.recovery_recipe(seed, ds, temperature=t, alpha=a, mixup_views=amount,
                                        concentration=c)
    return students.recovery_recipe(seed, ds, temperature=t, alpha=a, epochs=amount)


def cell_name(cell: tuple) -> str:
    how, kind, amount, t_alpha, concentration = cell
    what = f"{amount} epochs of the images" if kind == "images" else f"{amount} mixup views"
    if concentration is not None:
        what += f" (Beta {concentration:g})"
    return how + (f" T={t_alpha[0]:g} a={t_alpha[1]:g}" if t_alpha else "") + ", " + what


def recovery_choice(val: dict, cells, seeds, incumbent: tuple
                    ) -> tuple[tuple, tuple, tuple | None, float, float]:
    """Section 5's rule: the control and the distilled recipe from validation accuracies.

    The control is the plain recipe with the best mean over the seeds. The distilled recipe
    is the recorded one (``incumbent``) unless its strongest rival -- the other KD recipe
    with the best mean -- leads it by more than one standard error of the mean per-seed
    lead (the per-seed leads' sample standard deviation over the square root of the number
    of seeds). With one seed there is no spread to judge a lead by, so the incumbent stays.
    Means are compared to 0.01 pt; on a tie the first recipe in ``cells`` wins.

    Args:
        val: ``(cell, seed) -> validation accuracy``; a cell's first entry is ``"plain"`` or
            ``"KD"``.
        cells, seeds: the recipes and the seeds scored.
        incumbent: the recorded KD recipe (``students.RECOVERY_FM``'s cell), one of ``cells``.

    Returns:
        ``(control, kd_cell, rival, lead, se)``: the control, the KD recipe to report, the
        rival (``None`` if the incumbent is the only KD recipe) and its mean lead over the
        incumbent with that lead's standard error (``nan`` for the standard error with one
        seed; ``lead`` and ``se`` are ``nan`` without a rival).

    Raises:
        ValueError: the incumbent is not a KD recipe of ``cells``, no plain recipe is there,
            or a score is missing.

    Examples:
        >>> cells = [("plain", 1), ("KD", 40), ("KD", 80)]
        >>> val = {(("plain", 1), s): 89.0 for s in (0, 1, 2)}
        >>> val.update({(("KD", 40), s): a for s, a in zip((0, 1, 2), (90.2, 90.4, 90.8))})
        >>> val.update({(("KD", 80), s): a for s, a in zip((0, 1, 2), (90.6, 90.2, 90.9))})
        >>> control, kd, rival, lead, se = recovery_choice(val, cells, (0, 1, 2), ("KD", 40))
        >>> kd, rival, round(lead, 2), round(se, 2)     # the rival leads by less than its noise
        (('KD', 40), ('KD', 80), 0.1, 0.17)
    """
    cells, seeds = list(cells), list(seeds)
    if incumbent not in cells or incumbent[0] != "KD":
        raise ValueError(f"the recorded recipe {incumbent} is not among the KD recipes scored; "
                         "add it to the cells (patient_recovery does).")
    if not any(c[0] == "plain" for c in cells):
        raise ValueError("no plain recipe among the cells: the control is the best of them.")
    missing = [(c, s) for c in cells for s in seeds if (c, s) not in val]
    if missing:
        raise ValueError(f"{len(missing)} scores missing, e.g. recipe {missing[0][0]} on seed "
                         f"{missing[0][1]}: score every recipe on every seed.")
    mean_val = {c: round(float(np.mean([val[c, s] for s in seeds])), 2) for c in cells}
    control = max((c for c in cells if c[0] == "plain"), key=mean_val.get)
    rivals = [c for c in cells if c[0] == "KD" and c != incumbent]
    if not rivals:
        return control, incumbent, None, float("nan"), float("nan")
    rival = max(rivals, key=mean_val.get)
    leads = np.array([val[rival, s] - val[incumbent, s] for s in seeds])
    lead = float(leads.mean())
    se = float(std(leads) / np.sqrt(len(leads))) if len(leads) > 1 else float("nan")
    return control, (rival if lead > se else incumbent), rival, lead, se


def patient_recovery(ds: data.Dataset, seeds, t_alpha: tuple[float, float],
                     retrain: bool, progress: bool = True) -> dict:
    """Section 5: the 2-bit recovery with the patient-and-consistent recipe.

    Every recipe of :data:`RECOVERY_FM_GRID`, section 3's two and ``students.RECOVERY_FM``
    are fine-tuned here, on this machine, for every seed, and scored on validation. None is
    loaded from the cache for this: a cached model may have been made on another CPU, and
    one seed's validation accuracy moves by tenths of a point between machines. The rule is
    :func:`recovery_choice`. For every seed, on the test set: the fraction of the gap
    between the control and the float model that the KD recipe closes, with the committed
    models when both recipes are the cached ones (``closed``, the headline) and with the
    models fine-tuned here (``closed_here``, the headline too when the rule overturned the
    recorded recipe, which has no cached models).
    """
    fm = students.RECOVERY_FM

    def normal(cell):                   # RECOVERY_FM's concentration is written None
        if cell[1] == "mixup" and cell[4] == fm["concentration"]:
            return (*cell[:4], None)
        return cell

    section3 = (("plain", "images", students.RECOVERY["epochs"], None, None),
                ("KD", "images", students.RECOVERY["epochs"], tuple(t_alpha), None))
    chosen_kd = ("KD", "mixup", fm["views"], (fm["temperature"], fm["alpha"]), None)
    cells = list(dict.fromkeys(normal(c) for c in (*section3, *RECOVERY_FM_GRID, chosen_kd)))

    def cached(seed, cell):
        if cell == section3[0]:
            return students.recovered_mlp(seed, retrain=retrain, dataset=ds, progress=False)
        if cell == chosen_kd:
            return students.recovered_mlp(seed, temperature=fm["temperature"],
                                          alpha=fm["alpha"], mixup_views=fm["views"],
                                          retrain=retrain, dataset=ds, progress=False)
        return None

    here, val = {}, {}                  # (cell, seed) -> the model made here, its accuracy (%)
    for cell, seed in tqdm([(c, s) for c in cells for s in seeds], desc="recovery recipes",
                           disable=not progress, leave=False):
        here[cell, seed] = recovery_cell(seed, ds, cell)
        val[cell, seed] = w2_accuracy(here[cell, seed], ds.x_val, ds.y_val)
    control, kd_cell, rival, lead, se = recovery_choice(val, cells, seeds, chosen_kd)
    test = {(c, s): w2_accuracy(here[c, s], ds.x_test, ds.y_test)   # only the two reported
            for c in (control, kd_cell) for s in seeds}
    if kd_cell != chosen_kd:
        print(f"  WARNING: on validation {cell_name(kd_cell)} leads students.RECOVERY_FM "
              f"({cell_name(chosen_kd)}) by {lead:.2f} pt over seeds {list(seeds)}, more than "
              f"one standard error ({se:.2f} pt); update RECOVERY_FM.")
    mean_val = {c: float(np.mean([val[c, s] for s in seeds])) for c in cells}
    grid = [{"recipe": cell_name(c), **{f"seed {s}": val[c, s] for s in seeds},
             "mean_val_pct": mean_val[c], "vs_chosen_delta": mean_val[c] - mean_val[chosen_kd]}
            for c in cells]
    committed = {s: cached(s, chosen_kd) for s in seeds}
    committed_val = {s: w2_accuracy(committed[s], ds.x_val, ds.y_val) for s in seeds}
    committed_mean = float(np.mean(list(committed_val.values())))
    grid.append({"recipe": cell_name(chosen_kd) + ", the committed model",
                 **{f"seed {s}": committed_val[s] for s in seeds},
                 "mean_val_pct": committed_mean,
                 "vs_chosen_delta": committed_mean - mean_val[chosen_kd]})
    use_cache = control == section3[0] and kd_cell == chosen_kd   # both have committed models
    rows = []
    for seed in seeds:
        dense = zoo.baseline("mlp_fashion", seed, progress=False)
        row = {"seed": seed, "dense_pct": 100 * train.evaluate(dense, ds.x_test, ds.y_test)}
        for key, cell in (("control", control), ("kd", kd_cell)):
            if use_cache:
                model = committed[seed] if cell == chosen_kd else cached(seed, cell)
                row[f"{key}_pct"] = w2_accuracy(model, ds.x_test, ds.y_test)
            else:
                row[f"{key}_pct"] = test[cell, seed]
        row["closed"] = ((row["kd_pct"] - row["control_pct"])
                         / (row["dense_pct"] - row["control_pct"]))
        row["closed_here"] = ((test[kd_cell, seed] - test[control, seed])
                              / (row["dense_pct"] - test[control, seed]))
        rows.append(row)
    return {"grid": grid, "control": cell_name(control), "kd": cell_name(kd_cell),
            "rival": cell_name(rival) if rival else None, "lead_pts": lead, "se_pts": se,
            "rows": rows, "seeds": list(seeds), "committed_models": use_cache}


# --------------------------------------------------------------------------- 6. channels
def channel_removed_recovery(ds: data.Dataset, seeds, retrain: bool) -> list[dict]:
    """Section 6: KD recovery of the channel-removed CNN (``zoo.half_mac_cnn``).

    Its fine-tuning is already patient and consistent in the online form: 10 epochs, the
    dense CNN run as teacher on the very flipped and shifted batch the pruned CNN sees
    (``zoo.HALF_MAC_CNN``). The control is the same fine-tuning with ``alpha = 0`` (the
    labels only; cached as ``cnn_fashion_half_alpha0.0``, about 4 minutes per seed).
    """
    rows = []
    for seed in seeds:
        dense = zoo.baseline("cnn_fashion", seed, progress=False)
        pair = {how: zoo.half_mac_cnn(seed, retrain=retrain, dataset=ds, progress=False, **kw)
                for how, kw in (("plain", {"alpha": 0.0}), ("KD", {}))}
        row = {"seed": seed, "dense_pct": 100 * train.evaluate(dense, ds.x_test, ds.y_test)}
        for how, m in pair.items():
            row[f"{how}_val_pct"] = 100 * train.evaluate(m, ds.x_val, ds.y_val)
            row[f"{how}_test_pct"] = 100 * train.evaluate(m, ds.x_test, ds.y_test)
        gap = row["dense_pct"] - row["plain_test_pct"]
        row["closed"] = (row["KD_test_pct"] - row["plain_test_pct"]) / gap if gap > 0 \
            else float("nan")
        rows.append(row)
    return rows


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
    parser.add_argument("--teacher", action="store_true",
                        help="train the stronger teacher if it is not cached (about 23 "
                             "minutes on 2 CPU cores), print its accuracy, stop")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        start = time.perf_counter()

        print(measure.machine_summary())
        ds = data.load_fashion_mnist()
        strong = students.strong_teacher(0, dataset=ds, progress=True)
        single = [100 * train.evaluate(strong, x, y) for x, y in
                  ((ds.x_val, ds.y_val), (ds.x_test, ds.y_test))]
        teacher_val, teacher_test = (
            100 * float(np.mean(function_matching.mirror_averaged_logits(strong, x).argmax(1)
                                == y)) for x, y in ((ds.x_val, ds.y_val), (ds.x_test, ds.y_test)))
        print(f"stronger teacher (SmallCNN 32/64, {measure.count_params(strong):,} parameters, "
              f"students.TEACHER): one pass validation {single[0]:.2f} %, test {single[1]:.2f} "
              f"%; mean over image and mirror (two passes) validation {teacher_val:.2f} %, test "
              f"{teacher_test:.2f} % -> the students learn from the "
              f"{'mirror average' if students.TEACHER_MIRROR_AVERAGE else 'single pass'}")
        if students.TEACHER_MIRROR_AVERAGE != (teacher_val > single[0]):
            print("  WARNING: students.TEACHER_MIRROR_AVERAGE is not the validation choice")
        if not students.TEACHER_MIRROR_AVERAGE:
            teacher_val, teacher_test = single
        if args.teacher:
            emit("teacher_acc", teacher_test, "%")
            emit("teacher_acc_single_pass", single[1], "%")
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
        print("\n5. Patient and consistent recovery: the float MLP labels mixup views of the "
              "3,000 images")
        pr = patient_recovery(ds, args.seeds, t_alpha, args.retrain)
        print("recipes fine-tuned on this machine, validation (deployed 2-bit accuracy):")
        print(measure.Table(pr["grid"]))
        print(f"control (best plain): {pr['control']}; strongest rival of students."
              f"RECOVERY_FM: {pr['rival']}, {pr['lead_pts']:+.2f} pt (one standard error over "
              f"seeds: {pr['se_pts']:.2f} pt); distilled: {pr['kd']}")
        print("test: " + ("the committed models (closed) and " if pr["committed_models"] else
                          "no committed models of these recipes; ")
              + "the models fine-tuned here (closed_here)")
        print(measure.Table(pr["rows"], ["seed", "dense_pct", "control_pct", "kd_pct", "closed",
                                         "closed_here"]))
        print("\n6. KD recovery of the channel-removed CNN (zoo.HALF_MAC_CNN: online teacher = "
              "the dense CNN on the same augmented batch) vs the same fine-tuning without it")
        cr = channel_removed_recovery(ds, args.seeds, args.retrain)
        print(measure.Table(cr, ["seed", "dense_pct", "plain_val_pct", "KD_val_pct",
                                 "plain_test_pct", "KD_test_pct", "closed"]))
        print(f"\ntotal {time.perf_counter() - start:.0f} s\n")

        emit("teacher_acc", teacher_test, "%")
        emit("teacher_acc_single_pass", single[1], "%")
        emit("kd_gain_pts", np.mean(fm_gains), "points")
        emit("kd_gain_std", std(fm_gains), "points")
        emit("kd_gain_val_pts_mixup", fm["mixup_gain_val"], "points")
        emit("kd_gain_pts_5ep_precomputed", np.mean(gains["CNN 4/8"]), "points")
        emit_speed(speed)
        (section3,) = list(fractions)
        closed = [r["closed"] for r in pr["rows"]]
        emit("kd_recovery_fraction", np.mean(closed), "fraction", std=std(closed))
        here = [r["closed_here"] for r in pr["rows"]]
        emit("kd_recovery_fraction_here", np.mean(here), "fraction", std=std(here))
        emit("kd_recovery_fraction_precomputed", np.mean(fractions[section3]), "fraction")
        gaps_cnn = [r["KD_test_pct"] - r["plain_test_pct"] for r in cr]
        emit("kd_recovery_delta_cnn", np.mean(gaps_cnn), "points", std=std(gaps_cnn))

if __name__ == "__main__":
    main()
