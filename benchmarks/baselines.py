"""Baseline accuracy (mean of 3 seeds) and the measurement table quoted in README.md.

Run from the repository root::

    python -m benchmarks.baselines              # evaluate the cached checkpoints
    python -m benchmarks.baselines --retrain    # retrain every seed from its recipe first
    python -m benchmarks.baselines --markdown   # also print the README table

Prints a readable table, then one JSON line per figure:
``{"metric": NAME, "value": NUMBER, "unit": ..., "target": ...}``.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import _common
from pruning_kit import data, measure, models, train

SEEDS = (0, 1, 2)
TARGETS = {"mlp_fashion_acc": ">= 89.0 (stretch 89.5)",
           "cnn_fashion_acc": ">= 91.0 (stretch 92.0)",
           "cnn_params": "< 100000", "digits_mlp_acc": ">= 97.0"}
METRIC = {"mlp_fashion": "mlp_fashion_acc", "cnn_fashion": "cnn_fashion_acc",
          "mlp_digits": "digits_mlp_acc"}
LABEL = {"mlp_fashion": "LeNet-300-100 (Fashion-MNIST)",
         "cnn_fashion": "SmallCNN 16/32 (Fashion-MNIST)",
         "mlp_digits": "MLP 64-128-64-10 (digits)"}


def emit(metric: str, value: float, unit: str) -> None:
    _common.emit(metric, value, unit, TARGETS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true",
                        help="retrain every baseline seed from its recipe before measuring")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per latency figure")
    args = parser.parse_args(argv)

    print(measure.machine_summary())
    datasets = {name: data.load(name) for name in ("fashion_mnist", "digits")}
    accs: dict[str, list[float]] = {}
    rows = []
    for name in train.RECIPES:
        ds = datasets[train.RECIPES[name]["dataset"]]
        accs[name] = []
        for seed in SEEDS:
            model = train.baseline(name, seed, retrain=args.retrain, dataset=ds, progress=False)
            accs[name].append(100 * train.evaluate(model, ds.x_test, ds.y_test))
            if seed == 0:
                row = measure.measure(model, ds.x_test, ds.y_test, name=LABEL[name],
                                      runs=args.runs)
                rows.append(row)
        per_seed = ", ".join(f"{a:.2f}" for a in accs[name])
        print(f"{LABEL[name]}: test accuracy {np.mean(accs[name]):.2f} +- "
              f"{np.std(accs[name]):.2f}% over seeds {SEEDS} ({per_seed})")

    for row, name in zip(rows, train.RECIPES, strict=True):
        row["accuracy"] = float(np.mean(accs[name]))  # mean of the seeds, not seed 0 alone
    columns = ["name", "accuracy", "params", "serialized_bytes", "macs",
               "latency_b1_ms", "latency_b256_ms"]
    table = measure.Table(rows, columns)
    print()
    print(table)
    if args.markdown:
        print()
        print(table.to_markdown())
    print()
    for name, metric in METRIC.items():
        emit(metric, np.mean(accs[name]), "percent")
    emit("cnn_params", models.num_params(models.small_cnn()), "parameters")


if __name__ == "__main__":
    main()
