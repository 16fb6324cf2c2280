"""Every technique on models the course did not write: the traced channel graph at work.

Run from the repository root::

    python -m benchmarks.structure_any            # ~4 min on 2 CPU cores
    python -m benchmarks.structure_any --full     # SmallCNN fine-tuned with the full recipe

1. **The zoo** (:mod:`pruning_kit.user_models`): eight architectures written the way users write
   them -- VGG-style, ResNet with a projection shortcut, MLP with LayerNorm and Dropout,
   DenseNet-style concatenation, MobileNet-style depthwise-separable, grouped conv,
   ``nnx.Sequential``, a tiny transformer with hand-written multi-head attention. Each is
   trained on sklearn digits (``user_models.EPOCHS``), then, with nothing but the model and an
   example batch:

   * groups derived by :func:`pruning_kit.graph.trace`;
   * half of every removable group's channels removed by L1 norm
     (:func:`structure.remove_channels`) and compared with the masked model on the whole
     test split (``removal_diff``: max |logit difference|, exact means <= 1e-5). A group
     whose removal the built-in check rejects (the transformer's head size, which its
     code fixes with ``head_dim``) is kept whole and named;
   * BatchNorm folded (:func:`fold.fold_batchnorm_model`) and compared the same way;
   * W8A8 integer inference (:func:`w8a8.quantize_model`, calibrated on 500 training
     images): test accuracy within 0.5 pt of float;
   * the channel-removed model saved with :mod:`pruning_kit.codec` and reloaded into a
     fresh instance of the user's class (``like=``): identical logits, bit for bit.
2. **No layouts by hand**: ``handwritten_layouts`` counts functions in ``pruning_kit/``
   (other than ``models.py``, where the course's models are written, and ``user_models.py``)
   whose code names a course model's layers.
3. **SmallCNN, generic vs hand-written**: the seed-0 Fashion-MNIST baseline loses channels
   to the recipe's widths twice -- through the traced graph and through the hand-written
   group table the course used before (kept below as the reference) -- the two models'
   arrays are compared, each is fine-tuned the same way, and both are timed interleaved
   with the dense model at batch 256.

Prints the machine, tables, then the figures (metric, value, unit, target) as a table;
``--out results.jsonl`` appends them as JSON lines (``benchmarks._common``).
"""

from __future__ import annotations

import ast
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import (
    codec,
    data,
    distill,
    fold,
    graph,
    measure,
    models,
    structure,
    train,
    user_models,
    w8a8,
    zoo,
)
from pruning_kit.table import Table

TARGETS = {
    "zoo_archs": ">= 8",
    "zoo_removal_exact": "== zoo_archs (removal == masking, max |diff| <= 1e-5)",
    "zoo_fold_exact": "== zoo_archs",
    "zoo_w8a8_ok": "== zoo_archs (within 0.5 pt of float)",
    "zoo_reload_identical": "== zoo_archs",
    "handwritten_layouts": "0",
    "channel_speedup_b256": "generic == hand-written within the measured spread",
    "channel_delta": "generic within 0.1 pt of hand-written",
}
EXACT = 1e-5
LATENCY_ROUNDS = 20


def removable_keep(model, example, scores):
    """Half of each group by score; groups whose removal the check rejects stay whole."""
    keep = structure.select_channels(scores, 0.5)
    rejected = {}
    try:
        structure.remove_channels(model, keep, example=example)
        return keep, rejected
    except ValueError:
        pass
    ok = {}
    for name, idx in keep.items():
        try:
            structure.remove_channels(model, {name: idx}, example=example)
            ok[name] = idx
        except ValueError as err:
            rejected[name] = str(err).split(":")[0]
    return ok, rejected


def zoo_figures(seed: int = 0) -> None:
    ds = data.load_digits()
    rows = []
    example = ds.x_train[:2]
    for name, build in user_models.BUILDERS.items():
        start = time.perf_counter()
        model = build(nnx.Rngs(seed))
        train.fit(model, ds.x_train, ds.y_train, epochs=user_models.EPOCHS[name],
                  batch_size=user_models.BATCH_SIZE, learning_rate=user_models.LEARNING_RATE,
                  seed=seed,
                  progress=False)
        model.eval()
        g = graph.trace(model, example)
        scores = structure.channel_importance(model, "l1", example=example)
        keep, rejected = removable_keep(model, example, scores)
        small = structure.remove_channels(model, keep, example=example)
        masked = structure.mask_channels(model, keep, example=example)
        # logits: each model called as it is (eagerly), 256 test images at a time
        logits = {k: train.predict(m.__call__, ds.x_test, batch_size=256)
                  for k, m in (("small", small), ("masked", masked))}
        removal_diff = float(np.abs(logits["small"] - logits["masked"]).max())
        folded, pairs = fold.fold_batchnorm_model(model, example)
        float_logits = train.predict(model.__call__, ds.x_test, batch_size=256)
        fold_diff = float(np.abs(train.predict(folded.__call__, ds.x_test, batch_size=256)
                                 - float_logits).max())
        q = w8a8.quantize_model(model, ds.x_train[:500])
        acc_float = 100 * float((float_logits.argmax(-1) == ds.y_test).mean())
        acc_int = 100 * q.evaluate(ds.x_test, ds.y_test)
        path = codec.save(Path(tempfile.mkdtemp()) / f"{name}.pkc", small)
        back = codec.load(path, like=build(nnx.Rngs(seed + 1)))
        identical = bool(np.array_equal(train.predict(back.__call__, ds.x_test, batch_size=256),
                                        logits["small"]))
        rows.append({
            "model": name, "groups": len(g.groups), "removed_from": len(keep),
            "kept_whole": ", ".join(rejected) or "-",
            "params": models.num_params(model), "params_after": models.num_params(small),
            "removal_diff": removal_diff, "bn_folded": len(pairs), "fold_diff": fold_diff,
            "acc_float": acc_float, "acc_w8a8": acc_int, "w8a8_delta": acc_int - acc_float,
            "reload_identical": identical, "seconds": time.perf_counter() - start})
    print(Table(rows, title="the zoo on digits (test split, 540 images); diffs are max |logit "
                            "difference| over the test split"))
    emit("zoo_archs", len(rows), "architectures")
    emit("zoo_removal_exact", sum(r["removal_diff"] <= EXACT for r in rows), "architectures",
         max_diff=f'{max(r["removal_diff"] for r in rows):.2e}')
    emit("zoo_fold_exact", sum(r["fold_diff"] <= EXACT for r in rows), "architectures",
         max_diff=f'{max(r["fold_diff"] for r in rows):.2e}',
         with_batchnorm=sum(r["bn_folded"] > 0 for r in rows))
    emit("zoo_w8a8_ok", sum(abs(r["w8a8_delta"]) <= 0.5 for r in rows), "architectures",
         worst_delta=min(r["w8a8_delta"] for r in rows))
    emit("zoo_reload_identical", sum(r["reload_identical"] for r in rows), "architectures")


CNN_LAYERS = {"conv1", "bn1", "conv2", "bn2", "res_conv1", "res_bn1", "res_conv2", "res_bn2"}
COURSE_LAYERS = CNN_LAYERS | {"layers"}       # the SmallCNN's layers, the MLP's list


def handwritten_layouts(root: Path = Path("pruning_kit")) -> list[str]:
    """``module.function`` for each function (outside models.py and user_models.py) whose code --
    not its docstring -- names a course model's layer: an attribute (``model.conv1``,
    ``model.layers``), a SmallCNN layer name as a string (``"bn2"``), or a path through one
    (``"layers/0"``, ``"res_conv1/kernel"``). A dictionary key that happens to read
    "layers" is not a path and does not count."""
    found = []
    for path in sorted(root.glob("*.py")):
        if path.name in ("models.py", "user_models.py"):
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(fn, clean=False)
            hit = False
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and node.attr in COURSE_LAYERS:
                    hit = True
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and node.value != doc:
                    parts = node.value.replace("/", ".").split(".")
                    if node.value in CNN_LAYERS or (len(parts) > 1 and any(
                            part in COURSE_LAYERS for part in parts)):
                        hit = True
            if hit:
                found.append(f"{path.stem}.{fn.name}")
    return sorted(set(found))


# ---- the hand-written reference: the group table the course used before the trace ----
def _bn(name):
    return [(f"{name}/{v}", 0, None) for v in ("scale", "bias", "mean", "var")]


def handwritten_remove(model: models.SmallCNN, keep: dict) -> models.SmallCNN:
    c1, c2, *rest = model.config["widths"]
    c_res = rest[0] if rest else c2
    side = model.config["image_size"] // 4
    head_view = (side, side, c2, model.config["num_classes"])
    table = {
        "stage1": [("conv1/kernel", 3, None), *_bn("bn1"), ("conv2/kernel", 2, None)],
        "stage2": [("conv2/kernel", 3, None), *_bn("bn2"), ("res_conv2/kernel", 3, None),
                   *_bn("res_bn2"), ("res_conv1/kernel", 2, None), ("head/kernel", 2, head_view)],
        "res_inner": [("res_conv1/kernel", 3, None), *_bn("res_bn1"),
                      ("res_conv2/kernel", 2, None)],
    }
    sizes = {"stage1": c1, "stage2": c2, "res_inner": c_res}
    names, leaves, treedef = graph.leaf_paths(nnx.state(model))
    arrays = dict(zip(names, leaves, strict=True))
    for group, members in table.items():
        idx = np.asarray(keep.get(group, np.arange(sizes[group])))
        for leaf, axis, view in members:
            a = jnp.asarray(arrays[leaf])
            shape = a.shape
            a = a.reshape(view) if view else a
            a = jnp.take(a, jnp.asarray(idx), axis=axis)
            arrays[leaf] = a.reshape((-1, *shape[1:])) if view else a
    widths = [len(keep.get(g, range(sizes[g]))) for g in ("stage1", "stage2", "res_inner")]
    new = models.build("SmallCNN", dict(model.config, widths=widths))
    nnx.update(new, jax.tree_util.tree_unflatten(
        treedef, [jnp.array(arrays[n], copy=True) for n in names]))
    new.eval()
    return new


def smallcnn_generic_vs_handwritten(full: bool) -> None:
    ds = data.load_fashion_mnist()
    recipe = zoo.HALF_MAC_CNN
    base = zoo.baseline("cnn_fashion", 0, progress=False)
    base.eval()
    scores = structure.channel_importance(base, recipe["criterion"])
    keep = structure.select_channels(scores, recipe["keep"])
    generic = structure.remove_channels(base, keep)
    hand = handwritten_remove(base, keep)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(nnx.state(generic)), jax.tree.leaves(nnx.state(hand)), strict=True))
    print(f"SmallCNN widths {generic.config['widths']} both ways; arrays identical: {same}")
    n = len(ds.x_train) if full else 20000
    epochs = recipe["epochs"] if full else 1
    accs = {}
    for name, model in (("generic", generic), ("hand-written", hand)):
        start = time.perf_counter()
        train.fit(model, ds.x_train[:n], ds.y_train[:n], epochs=epochs,
                  batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                  loss_fn=distill.online_distillation_loss(base, temperature=recipe["temperature"],
                                                           alpha=recipe["alpha"]),
                  augment=train.shift_augment, seed=0, progress=False)
        model.eval()
        accs[name] = 100 * train.evaluate(model, ds.x_test, ds.y_test)
        print(f"{name}: {epochs} epoch(s) on {n:,} images, test {accs[name]:.2f}% "
              f"({time.perf_counter() - start:.0f} s)")
    dense = 100 * train.evaluate(base, ds.x_test, ds.y_test)
    r = measure.compare_latency({"dense": base, "generic": generic, "hand-written": hand},
                                ds.x_val[:256], rounds=LATENCY_ROUNDS, runs=5)
    print(r.table(title=f"batch 256, median of {r.rounds} interleaved rounds"))
    for name in ("generic", "hand-written"):
        _common.emit_speedup("channel_speedup_b256", r[name], path=name,
                             verdict=r.verdict(name))
        emit("channel_delta", accs[name] - dense, "pt", path=name,
             fine_tuning=f"{epochs} epoch(s) on {n} images")
    emit("generic_equals_handwritten", float(same), "bool",
         accuracy_gap_pt=accs["generic"] - accs["hand-written"])


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--full", action="store_true",
                        help="fine-tune the SmallCNNs with the full recipe (10 epochs)")
    parser.add_argument("--skip-cnn", action="store_true", help="only the zoo and the scan")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        print(measure.machine_summary())
        start = time.perf_counter()
        zoo_figures()
        found = handwritten_layouts()
        print("functions naming a course model's layers outside models.py: "
              + (", ".join(found) or "none"))
        emit("handwritten_layouts", len(found), "functions", where=found)
        if not args.skip_cnn:
            smallcnn_generic_vs_handwritten(args.full)
        print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
