"""Baseline accuracy (mean of 3 seeds), the measurement table quoted in README.md, and a
check that no checkpoint was trained on the validation images.

Run from the repository root::

    python -m benchmarks.baselines              # evaluate the cached checkpoints
    python -m benchmarks.baselines --retrain    # retrain every seed from its recipe first
    python -m benchmarks.baselines --markdown   # also print the README table

* **Accuracy**: test accuracy (reported) and validation accuracy, each the mean of seeds
  0, 1, 2 of every baseline in ``zoo.BASELINES``.
* **Latency**: the seed-0 baselines timed interleaved (``measure.compare_latency``) at
  batch 1 and 256, median and IQR over the rounds. The models take different inputs, so
  no speed-up between them is quoted; interleaving keeps a slow moment of the machine
  from landing on one model only. Timing batches are validation images, tiled.
* **val_split_disjoint**: 1 when every checkpoint in the checkpoint folder records the
  train/validation split its data set has now (``data.Split.describe()``: sizes and a
  hash of the validation indices) and, for each data set, the training indices (the
  official training set minus the validation indices) and the validation indices are
  disjoint and together the whole official training set; else 0, naming the checkpoints
  that fail. A checkpoint without a recorded split fails: it may have seen the validation
  images.

Prints a readable table, then the figures (metric, value, unit, target) as a table;
``--out results.jsonl`` appends them as JSON lines (``benchmarks._common``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import data, measure, models, train, zoo

SEEDS = (0, 1, 2)
BATCH_SIZES = (1, 256)
TARGETS = {"mlp_fashion_acc": ">= 89.0 (stretch 89.5)",
           "cnn_fashion_acc": ">= 91.0 (stretch 92.0)",
           "cnn_params": "< 100000", "digits_mlp_acc": ">= 97.0",
           "val_split_disjoint": "1"}
METRIC = {"mlp_fashion": "mlp_fashion_acc", "cnn_fashion": "cnn_fashion_acc",
          "mlp_digits": "digits_mlp_acc"}
LABEL = {"mlp_fashion": "LeNet-300-100 (Fashion-MNIST)",
         "cnn_fashion": "SmallCNN 16/32 (Fashion-MNIST)",
         "mlp_digits": "MLP 64-128-64-10 (digits)"}


def tiled(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` examples of ``x``, repeated when ``x`` has fewer."""
    return x[np.arange(n) % len(x)]


# --------------------------------------------------------------------------- split check
def split_is_disjoint(ds: data.Dataset) -> tuple[bool, str]:
    """Whether ``ds``'s train and validation index sets partition its official training set."""
    split = ds.split
    val = np.asarray(split.val_indices)
    n = split.train + split.validation
    train_idx = np.setdiff1d(np.arange(n), val)     # the complement of the validation set
    problems = []
    if len(np.unique(val)) != len(val) or len(val) != split.validation:
        problems.append(f"{len(val)} validation indices, {len(np.unique(val))} distinct, "
                        f"split says {split.validation}")
    if val.size and (val.min() < 0 or val.max() >= n):
        problems.append(f"validation indices outside [0, {n})")
    if np.intersect1d(train_idx, val).size:
        problems.append("training and validation indices intersect")
    if len(train_idx) != split.train or len(ds.x_train) != split.train \
            or len(ds.x_val) != split.validation:
        problems.append(f"sizes: {len(train_idx)} training indices, x_train "
                        f"{len(ds.x_train)}, x_val {len(ds.x_val)}, split {split.describe()}")
    return not problems, "; ".join(problems)


def checkpoint_dataset(stem: str, metadata: dict[str, Any]) -> str | None:
    """The data set a checkpoint was trained on: recorded, or that of its baseline recipe."""
    if metadata.get("dataset"):
        return str(metadata["dataset"])
    source = str(metadata.get("from") or stem).split()[0]   # "cnn_fashion seed 0"
    for key in sorted(zoo.BASELINES, key=len, reverse=True):
        if source == key or source.startswith(key + "_"):
            return zoo.BASELINES[key]["dataset"]
    return None


def val_split_disjoint(datasets: dict[str, data.Dataset]) -> int:
    """1 when every checkpoint records its data set's current, disjoint split, else 0."""
    ok = True
    for name, ds in datasets.items():
        disjoint, why = split_is_disjoint(ds)
        if not disjoint:
            ok = False
            print(f"{name}: train/validation split is not a partition: {why}")
    folder = zoo.checkpoint_path("x").parent
    paths = sorted(Path(folder).glob("*.npz"))
    failures = []
    for path in paths:
        try:
            meta = train.read_checkpoint_header(path).get("metadata", {})
        except ValueError as err:
            failures.append(f"{path.name}: unreadable ({err})")
            continue
        name = checkpoint_dataset(path.stem, meta)
        recorded = meta.get("split")
        if name is None:
            failures.append(f"{path.name}: unknown data set")
            continue
        if name not in datasets:
            datasets[name] = data.load(name)
        if recorded is None:
            failures.append(f"{path.name}: no split recorded ({name})")
        elif recorded != datasets[name].split.describe():
            failures.append(f"{path.name}: split {recorded} is not {name}'s current "
                            f"{datasets[name].split.describe()}")
    print(f"checkpoints in {folder}: {len(paths) - len(failures)} of {len(paths)} record "
          f"their data set's current train/validation split")
    for line in failures:
        print(f"  FAILS {line}")
    return int(ok and not failures and bool(paths))


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--retrain", action="store_true",
                        help="retrain every baseline seed from its recipe before measuring")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    parser.add_argument("--rounds", type=int, default=30,
                        help="interleaved rounds per latency figure")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed calls per model per round (their median is the round's)")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):

        print(measure.machine_summary())
        datasets = {name: data.load(name) for name in ("fashion_mnist", "digits")}
        accs: dict[str, list[float]] = {}
        vals: dict[str, list[float]] = {}
        rows, seed0 = [], {}
        for name in zoo.BASELINES:
            ds = datasets[zoo.BASELINES[name]["dataset"]]
            accs[name], vals[name] = [], []
            for seed in SEEDS:
                model = zoo.baseline(name, seed, retrain=args.retrain, dataset=ds, progress=False)
                accs[name].append(100 * train.evaluate(model, ds.x_test, ds.y_test))
                vals[name].append(100 * train.evaluate(model, ds.x_val, ds.y_val))
                if seed == 0:
                    seed0[name] = model
                    rows.append(measure.measure(model, ds.x_test, ds.y_test, name=LABEL[name],
                                                batch_sizes=()))
            print(f"{LABEL[name]}: test accuracy {np.mean(accs[name]):.2f} +- "
                  f"{np.std(accs[name]):.2f}% (validation {np.mean(vals[name]):.2f} +- "
                  f"{np.std(vals[name]):.2f}%) over seeds {SEEDS}; per seed test "
                  + ", ".join(f"{a:.2f}" for a in accs[name]))

        for b in BATCH_SIZES:
            timing = measure.compare_latency(
                {LABEL[n]: m for n, m in seed0.items()},
                {LABEL[n]: tiled(datasets[zoo.BASELINES[n]["dataset"]].x_val, b) for n in seed0},
                rounds=args.rounds, runs=args.runs)
            for row in rows:
                s = timing[row["name"]]
                row[f"latency_b{b}_ms"] = s.median_ms
                row[f"latency_b{b}_iqr"] = (f"{s.iqr_ms[0]:#.3g}-{s.iqr_ms[1]:#.3g}"
                                            if s.iqr_ms[1] < 100 else
                                            f"{s.iqr_ms[0]:,.0f}-{s.iqr_ms[1]:,.0f}")

        for row, name in zip(rows, zoo.BASELINES, strict=True):
            # mean of the seeds, not seed 0 alone; a Table shows the fraction as a percent
            row["accuracy"] = float(np.mean(accs[name])) / 100
            row["val_accuracy_pct"] = float(np.mean(vals[name]))
        columns = ["name", "accuracy", "val_accuracy_pct", "params", "serialized_bytes", "macs"]
        columns += [f"latency_b{b}_{k}" for b in BATCH_SIZES for k in ("ms", "iqr")]
        table = measure.Table(rows, columns, title=(
            f"accuracy: test (reported) and validation, mean of seeds {SEEDS}; latency: seed 0, "
            f"median and IQR (ms) of {args.rounds} interleaved rounds of {args.runs} calls"))
        print()
        print(table)
        if args.markdown:
            print()
            print(table.to_markdown())
        print()
        disjoint = val_split_disjoint(dict(datasets))
        print()
        for name, metric in METRIC.items():
            emit(metric, np.mean(accs[name]), "percent")
        for name, metric in METRIC.items():
            emit(metric.replace("_acc", "_val_acc"), np.mean(vals[name]), "percent")
        emit("cnn_params", models.num_params(models.small_cnn()), "parameters")
        emit("val_split_disjoint", disjoint, "1 = every checkpoint's split is current and disjoint")


if __name__ == "__main__":
    main()
