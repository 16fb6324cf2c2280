"""The map of every result (issue 15): accuracy against stored bytes and latency, per method.

Run from the repository root::

    python -m benchmarks.pareto --record benchmarks/results/pareto_points.jsonl
                                  # measures every method (about 5 min on 2 CPU cores)
    python -m benchmarks.pareto --from benchmarks/results/pareto_points.jsonl --figure map.png
                                  # reads the recorded points: table, fronts, figure

``--record`` builds every method of the course from the cached models (``pruning_kit.zoo``,
``pruning_kit.students``, the QAT caches of ``benchmarks.quantization``; nothing is written
to ``data/checkpoints``: a method whose cached models are missing is left out and named)
and the few cheap recipes of the notebooks (2:4 with 2 epochs of fine-tuning, notebook 03;
rank-32 low rank with 3 epochs of KD, notebook 04; the Deep Compression chain of notebook 05,
``benchmarks.pipeline.mlp_chain``). For each method and seed the model is written to a file
(``codec.save`` ``.pkc``, ``prune.save_sparse`` ``.npz`` or an ONNX file), read back, and the
model read back is what is measured: test accuracy (mean and sample std over the seeds;
std ``null`` for a method of one seed), the file's bytes (mean over seeds). Latency: the
seed-0 models of one family (MLP or CNN) are timed interleaved in the same rounds
(``measure.compare_latency``), JAX and ONNX Runtime alike, at batch 1 and 256 (median
and IQR). The choices are the course's, made on the validation split: the int4/int8 weight
grid (min-max or MSE, ``benchmarks.quantization``), (T, alpha) of the distilled students
(``students.kd_grid``). One JSON line per method is written with
``pruning_kit.pareto.write_points``.

``--from`` reads those lines (``pareto.read_points``: never re-measures, never retypes),
prints the table with the Pareto fronts (accuracy against bytes, batch-1 and batch-256
latency) and draws ``pareto.pareto_map``. Both print the figures table (``pareto_points``);
``--out results.jsonl`` appends them (``benchmarks._common``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import _common
from benchmarks._common import emit
from benchmarks.deploy import THREADS, jax_forward
from benchmarks.pipeline import mlp_chain
from benchmarks.quantization import CALIB_SIZE, CNN_CALIB, Seed, best_of
from pruning_kit import (
    codec,
    data,
    deep_compression,
    distill,
    export,
    measure,
    pareto,
    prune,
    qat,
    students,
    train,
    w8a8,
    zoo,
)
from pruning_kit import weight_sharing as ws
from pruning_kit.low_rank import low_rank
from pruning_kit.quant_storage import dequantized_model, pack, quantize_tree

SEEDS = (0, 1, 2)
TARGETS = {"pareto_points": ">= 15 (points on the map, from recorded JSON)"}
#: Notebook 03's 2:4 recipe: masks of the baseline, then 2 epochs with the masks kept.
NM = dict(n=2, m=4, epochs=2, learning_rate=3e-4)
#: Notebook 04's low rank: layer 0 at rank 32, then 3 epochs of KD from the dense model.
LOW_RANK = dict(ranks={0: 32}, epochs=3, learning_rate=1e-3, temperature=2.0, alpha=0.5)


class Method(NamedTuple):
    """One point of the map: ``build(seed, path)`` writes the file and returns the model
    read back from it (what is measured and timed); ``caches``: the checkpoints it needs."""

    name: str
    family: str
    technique: str
    file: str
    build: Callable[[int, Path], Any]
    caches: tuple[str, ...] = ()
    runtime: str = "JAX (XLA:CPU)"


def codec_file(model, path: Path, qtree=None, **kw):
    """``codec.save`` then ``codec.load``: the model as stored (float kernels raw, or
    ``qtree``'s integer codes)."""
    return codec.load(codec.save(path.with_suffix(".pkc"), model, quantized=qtree, **kw))


def weight_only(model, bits: int, method: str, path: Path):
    qtree = quantize_tree(model, bits, method=method)             # per output channel
    return codec_file(dequantized_model(model, qtree), path, qtree)


def sparse_file(model, path: Path):
    """``prune.save_sparse`` (bitmap + kept values), read back into a copy of ``model``."""
    path = prune.save_sparse(path.with_suffix(".npz"), model)
    back = train.own_arrays(model)
    state = nnx.state(back, nnx.Any(nnx.Param, nnx.BatchStat))
    nnx.replace_by_pure_dict(state, prune.load_sparse(path))
    nnx.update(back, state)
    return back


def integer_file(qm: w8a8.IntegerModel, path: Path) -> w8a8.IntegerModel:
    """The integer model's own codes, packed at ``weight_bits``, and its scales in a codec
    file (activation ranges in the metadata); the file is read back and checked."""
    qtree = quantize_tree(qm.model, qm.weight_bits,   # the same per-channel grid, only
                          filter=lambda name, _: name in qm.codes)   # the integer kernels
    for name, codes in qm.codes.items():
        *parents, last = name.split("/")
        node = qtree
        for k in parents:
            node = node[int(k) if k.isdigit() and int(k) in node else k]
        qp, scale = node[last].qparams, qm.weight_scales[name]
        if not np.allclose(qp.scale, scale, rtol=1e-6, atol=0):   # same grid, up to rounding
            raise ValueError(f"{name}: quantize_tree's scales differ from the integer model's.")
        node[last] = node[last]._replace(data=pack(codes, qm.weight_bits, signed=True),
                                         qparams=qp._replace(scale=jnp.asarray(scale)))
    meta = {"act_scales": {str(k): v for k, v in qm.act_scales.items()},
            "act_zero_points": {str(k): v for k, v in qm.act_zero_points.items()}}
    back = dict(measure.named_params(codec_file(qm.model, path, qtree, metadata=meta)))
    for name, codes in qm.codes.items():
        if not np.allclose(back[name], codes * qm.weight_scales[name], rtol=1e-6, atol=0):
            raise ValueError(f"{path}: {name} read back differs from the integer model's codes.")
    return qm


def onnx_file(model, example, path: Path, calib_x=None):
    return export.load_onnx(export.to_onnx(model, example, path.with_suffix(".onnx"),
                                           calib_x=calib_x), threads=THREADS, spinning=False)


def methods(ds: data.Dataset, calib: np.ndarray, seeds: tuple[int, ...]) -> list[Method]:
    """Every method of the course, as :class:`Method` (the grids chosen on validation)."""
    val, test = (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)
    mlp = lambda s: zoo.baseline("mlp_fashion", s, progress=False)  # noqa: E731
    cnn = lambda s: zoo.baseline("cnn_fashion", s, progress=False)  # noqa: E731

    def grid(make, bits: int) -> str:          # min-max or MSE clipping, on validation
        return best_of({m: [Seed(make(s), val, test).weight_only(bits, True, m)
                            for s in seeds] for m in ("minmax", "mse")})

    m8, m4, c8 = grid(mlp, 8), grid(mlp, 4), grid(cnn, 8)
    grid_caches = ["student_cnn_plain"] + [f"student_cnn_kd_T{t:g}_a{a:g}"
                                           for t, a in students.KD_GRID]
    if not all(zoo.checkpoint_path(c, 0).exists() for c in grid_caches):
        raise FileNotFoundError(f"the cached students {grid_caches} (seed 0) choose (T, alpha) "
                                f"on validation; make them with {students.STUDENTS_COMMAND}.")
    t, a = students.kd_choice(students.kd_grid(0, dataset=ds, progress=False))
    # patient and consistent students (notebook 02, section 7): (T, alpha) on validation
    fm_e = students.FM["epochs"]            # the grid is scored at the reported budget
    mix = students.FM_MIXUP_CHOSEN          # the views, chosen on validation
    fm_grid = [students.fm_name(fm_e, mixup=mix)] + [students.fm_name(fm_e, ft, fa, mixup=mix)
                                                   for ft, fa in students.FM_GRID]
    ft, fa = (students.kd_choice(students.fm_grid(0, mixup=mix, dataset=ds, progress=False))
              if all(zoo.checkpoint_path(c, 0).exists() for c in fm_grid) else (None, None))
    fm_label = f"T={ft:g}, a={fa:g}" if ft else "not chosen: grid not cached"
    fm_w = "{}/{}".format(*students.FM["widths"])
    rfm = students.RECOVERY_FM

    def qat_w4a4(kind: str, s: int, path: Path):
        base, x = zoo.baseline(f"{kind}_fashion", s, progress=False), \
            calib if kind == "mlp" else calib[:CNN_CALIB]
        tuned = train.load_model(zoo.checkpoint_path(f"{kind}_fashion_qat_w4a4_mse", s))
        clips = qat.calibrate_inputs(base, x, 4, method="mse")   # as QAT trained with
        return integer_file(w8a8.quantize_model(tuned, x, weight_bits=4, act_bits=4,
                                                act_qparams=clips), path)

    def nm_model(s: int):
        model = mlp(s)
        params = nnx.state(model, nnx.Param)
        masks = prune.nm_masks(params, NM["n"], NM["m"])
        nnx.update(model, prune.apply_masks(params, masks))
        train.fit(model, ds.x_train, ds.y_train, epochs=NM["epochs"], batch_size=128,
                  tx=prune.keep_masked(optax.adam(NM["learning_rate"]), masks), seed=s,
                  progress=False)
        return model

    def low_rank_model(s: int):
        dense = mlp(s)
        low = low_rank(dense, LOW_RANK["ranks"])
        train.fit(low, ds.x_train, (ds.y_train, distill.teacher_logits(dense, ds.x_train)),
                  epochs=LOW_RANK["epochs"], batch_size=128,
                  learning_rate=LOW_RANK["learning_rate"], seed=s, progress=False,
                  loss_fn=distill.recovery_loss(temperature=LOW_RANK["temperature"],
                                                alpha=LOW_RANK["alpha"]))
        return low

    def chain_cnn(s: int, path: Path):
        folded = deep_compression.fold_cnn_model(zoo.half_mac_cnn(s, progress=False))
        qtree = quantize_tree(folded, 8)
        return codec_file(dequantized_model(folded, qtree), path, qtree)

    half = lambda s: zoo.half_mac_cnn(s, progress=False)  # noqa: E731
    pkc, raw, sparse, ort = "codec .pkc", "codec .pkc (raw float32)", \
        "prune.save_sparse .npz (bitmap)", "ONNX (export.to_onnx)"
    w2 = students.RECOVERY["weight_method"]
    kd = f"T{t:g}_a{a:g}"
    M = Method
    return [
        M("LeNet-300-100 float32", "mlp", "float", raw,
          lambda s, p: codec_file(mlp(s), p, coding="raw"), ("mlp_fashion",)),
        M(f"int8 weights ({m8})", "mlp", "quantization", pkc,
          lambda s, p: weight_only(mlp(s), 8, m8, p), ("mlp_fashion",)),
        M(f"int4 weights ({m4})", "mlp", "quantization", pkc,
          lambda s, p: weight_only(mlp(s), 4, m4, p), ("mlp_fashion",)),
        M("k-means 2-bit (4 values/kernel, untrained)", "mlp", "quantization", pkc,
          lambda s, p: codec_file(ws.shared_model(mlp(s), *ws.kmeans_codebooks(
              mlp(s), 2, keep_zeros=False, init="density", iters=20)), p), ("mlp_fashion",)),
        M("2-bit weights, QAT (3k images)", "mlp", "quantization", pkc,
          lambda s, p: weight_only(students.recovered_mlp(s, dataset=ds, progress=False), 2,
                                   w2, p), ("mlp_fashion_w2_plain",)),
        M(f"2-bit weights, QAT + KD (T={t:g}, a={a:g})", "mlp", "distillation", pkc,
          lambda s, p: weight_only(students.recovered_mlp(s, temperature=t, alpha=a,
                                                          dataset=ds, progress=False), 2, w2, p),
          (f"mlp_fashion_w2_kd_{kd}",)),
        M(f"2-bit weights, QAT + KD on {rfm['views']} mixup views", "mlp", "distillation", pkc,
          lambda s, p: weight_only(students.recovered_mlp(
              s, temperature=rfm["temperature"], alpha=rfm["alpha"],
              mixup_views=rfm["views"], dataset=ds, progress=False), 2, w2, p),
          ("mlp_fashion_w2_kd_T{:g}_a{:g}_mix{}".format(rfm["temperature"], rfm["alpha"],
                                                       rfm["views"]),)),
        M("W8A8 integer", "mlp", "quantization", pkc,
          lambda s, p: integer_file(w8a8.quantize_model(mlp(s), calib), p), ("mlp_fashion",)),
        M("W4A4 integer, QAT", "mlp", "quantization", pkc, lambda s, p: qat_w4a4("mlp", s, p),
          ("mlp_fashion", "mlp_fashion_qat_w4a4_mse")),
        M("gradual pruning 90%", "mlp", "pruning", sparse,
          lambda s, p: sparse_file(zoo.gmp_mlp(s, dataset=ds, progress=False), p),
          ("mlp_fashion_gmp",)),
        M("2:4 pruning + 2 epochs", "mlp", "pruning", sparse,
          lambda s, p: sparse_file(nm_model(s), p), ("mlp_fashion",)),
        M("small dense 784-32-11-10", "mlp", "structure", raw,
          lambda s, p: codec_file(zoo.small_dense_mlp(s, dataset=ds, progress=False), p),
          ("mlp_fashion_small_dense",)),
        M("low rank 32 (layer 0) + KD", "mlp", "structure", raw,
          lambda s, p: codec_file(low_rank_model(s), p), ("mlp_fashion",)),
        M("Deep Compression file", "mlp", "chain", "codec .pkc (shared values, context-coded)",
          lambda s, p: codec.load(mlp_chain(s, ds.x_train, ds.y_train, p.parent)[1]),
          ("mlp_fashion", "mlp_fashion_gmp")),
        M("W8A8 int8 ONNX", "mlp", "quantization", ort,
          lambda s, p: onnx_file(w8a8.quantize_model(mlp(s), calib), calib[:2], p),
          ("mlp_fashion",), "ONNX Runtime"),
        M("SmallCNN float32", "cnn", "float", raw,
          lambda s, p: codec_file(cnn(s), p, coding="raw"), ("cnn_fashion",)),
        M(f"int8 weights ({c8})", "cnn", "quantization", pkc,
          lambda s, p: weight_only(cnn(s), 8, c8, p), ("cnn_fashion",)),
        M("W8A8 integer", "cnn", "quantization", pkc,
          lambda s, p: integer_file(w8a8.quantize_model(cnn(s), calib[:CNN_CALIB]), p),
          ("cnn_fashion",)),
        M("W4A4 integer, QAT", "cnn", "quantization", pkc, lambda s, p: qat_w4a4("cnn", s, p),
          ("cnn_fashion", "cnn_fashion_qat_w4a4_mse")),
        M("channels removed (16/16)", "cnn", "structure", raw,
          lambda s, p: codec_file(half(s), p), ("cnn_fashion_half",)),
        M("CNN chain: removed + BN folded + int8", "cnn", "chain", pkc, chain_cnn,
          ("cnn_fashion_half",)),
        M("student 4/8, plain training", "cnn", "distillation", raw,
          lambda s, p: codec_file(students.plain_student(s, dataset=ds, progress=False), p),
          ("student_cnn_plain",)),
        M(f"student 4/8, KD (T={t:g}, a={a:g})", "cnn", "distillation", raw,
          lambda s, p: codec_file(students.kd_student(s, temperature=t, alpha=a, dataset=ds,
                                                      progress=False), p),
          (f"student_cnn_kd_{kd}",)),
        M("SmallCNN 32/64 (the stronger teacher)", "cnn", "float", raw,
          lambda s, p: codec_file(students.strong_teacher(s, dataset=ds, progress=False), p),
          ("cnn_fashion_teacher",)),
        M(f"student {fm_w}, plain, {fm_e} epochs of views", "cnn", "distillation", raw,
          lambda s, p: codec_file(students.fm_student(s, epochs=fm_e, mixup=mix, dataset=ds,
                                                      progress=False), p),
          (students.fm_name(fm_e, mixup=mix),)),
        M(f"student {fm_w}, patient + consistent KD ({fm_label})", "cnn", "distillation", raw,
          lambda s, p: codec_file(students.fm_student(s, epochs=fm_e, temperature=ft, alpha=fa,
                                                      mixup=mix, dataset=ds, progress=False), p),
          (students.fm_name(fm_e, ft, fa, mixup=mix) if ft else "student_cnn_fm_missing",)),
        M("W8A8 int8 ONNX", "cnn", "quantization", ort,
          lambda s, p: onnx_file(w8a8.quantize_model(cnn(s), calib[:CNN_CALIB]), calib[:2], p),
          ("cnn_fashion",), "ONNX Runtime"),
        M("channels removed, float ONNX", "cnn", "structure", ort,
          lambda s, p: onnx_file(half(s), calib[:2], p), ("cnn_fashion_half",), "ONNX Runtime"),
        M("channels removed, W8A8 int8 ONNX", "cnn", "chain", ort,
          lambda s, p: onnx_file(w8a8.quantize_model(half(s), calib[:CNN_CALIB]), calib[:2],
                                 p), ("cnn_fashion_half",), "ONNX Runtime"),
        M("W8A8 int8 ONNX, residual add quantized", "cnn", "quantization", ort,
          lambda s, p: onnx_file(w8a8.quantize_model(cnn(s), calib[:CNN_CALIB]), calib[:2], p,
                                 calib_x=calib[:CNN_CALIB]), ("cnn_fashion",), "ONNX Runtime"),
        M("channels removed, W8A8 int8 ONNX, residual add quantized", "cnn", "chain", ort,
          lambda s, p: onnx_file(w8a8.quantize_model(half(s), calib[:CNN_CALIB]), calib[:2], p,
                                 calib_x=calib[:CNN_CALIB]), ("cnn_fashion_half",),
          "ONNX Runtime"),
    ]


def accuracy(runner: Any, ds: data.Dataset) -> float:
    if hasattr(runner, "evaluate"):                 # IntegerModel, OnnxModel
        return runner.evaluate(ds.x_test, ds.y_test)
    return train.evaluate(runner, ds.x_test, ds.y_test)


def timed(runner: Any) -> Any:
    return jax_forward(runner) if isinstance(runner, nnx.Module) else runner


def record(args, ds: data.Dataset) -> list[dict]:
    start = time.perf_counter()
    calib = ds.x_train[np.random.default_rng(0).choice(len(ds.x_train), CALIB_SIZE,
                                                       replace=False)]
    seeds = tuple(args.seeds)
    info = measure.machine_info()
    machine = (f"{info['cpu']} [{info['isa']}], {info['cores']} cores, {info['backend']}, "
               f"jax {info['jax']}")
    folder = Path(tempfile.mkdtemp(prefix="pareto_"))
    points, runners, left_out = [], {"mlp": {}, "cnn": {}}, []
    for method in methods(ds, calib, seeds):
        have = [s for s in seeds if all(zoo.checkpoint_path(c, s).exists()
                                        for c in method.caches)]
        if not have:
            left_out.append(f"{method.family} {method.name}: no cached {method.caches}")
            continue
        t0 = time.perf_counter()
        accs, sizes = [], []
        for s in have:
            path = folder / f"{method.family}_{len(points)}_seed{s}" / "model"
            path.parent.mkdir()
            runner = method.build(s, path)
            (written,) = [f for f in path.parent.iterdir() if f.is_file()]
            accs.append(accuracy(runner, ds))
            sizes.append(written.stat().st_size)
            if s == have[0]:
                runners[method.family][f"{len(points)}"] = timed(runner)
        points.append({"method": method.name, "family": method.family,
                       "technique": method.technique, "runtime": method.runtime,
                       "acc_mean": float(np.mean(accs)),
                       # one seed measures no spread: null, not 0.0
                       "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                       "acc_per_seed": accs, "seeds": have,
                       "stored_bytes": int(round(np.mean(sizes))),
                       "stored_bytes_per_seed": sizes, "file": method.file,
                       "machine": machine, "date": info["date"]})
        print(f"{method.family} {method.name}: {100 * points[-1]['acc_mean']:.2f}% "
              f"(seeds {have}), {points[-1]['stored_bytes']:,} B, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    for cands in runners.values():
        for b in (1, 256):
            xb = np.asarray(ds.x_val[:b])
            batches = {k: xb if isinstance(r, export.OnnxModel) else jnp.asarray(xb)
                       for k, r in cands.items()}
            r = measure.compare_latency(cands, batches, rounds=args.rounds,
                                        runs=20 if b == 1 else 5, warmup=3, jit=False)
            for k in cands:
                points[int(k)][f"latency_b{b}_ms"] = r[k].median_ms
                points[int(k)][f"latency_b{b}_iqr"] = list(r[k].iqr_ms)
                points[int(k)]["latency_rounds"] = f"{r.rounds} interleaved rounds"
    for p in points:
        p.setdefault("latency_b1_ms", None)
        p.setdefault("latency_b1_iqr", None)
        p.setdefault("latency_b256_ms", None)
        p.setdefault("latency_b256_iqr", None)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    pareto.write_points(args.record, points)
    print(f"\n{len(points)} points -> {args.record} ({time.perf_counter() - start:.0f} s; "
          f"latency: {args.rounds} interleaved rounds of 20 calls at batch 1, 5 at 256)")
    for line in left_out:
        print(f"left out: {line}")
    emit("record_seconds", time.perf_counter() - start, "s", target=None)
    return points


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="points.jsonl",
                      help="measure every method, write one JSON line each (replaces the file)")
    mode.add_argument("--from", dest="source", type=Path, metavar="points.jsonl",
                      help="read recorded points: table, Pareto fronts, figure")
    parser.add_argument("--figure", type=Path, default=None, metavar="map.png",
                        help="draw pareto.pareto_map to this PNG")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        if args.record is not None:
            print(measure.machine_summary())
            record(args, data.load_fashion_mnist())
        path = args.record or args.source
        points = pareto.read_points(path)          # the map is drawn from the file only
        print()
        print(pareto.front_table(points))
        print(f"from {path}: {points[0]['machine']}, {points[0]['date']}")
        for key in pareto.COSTS:
            front = pareto.pareto_front(points, key)
            print(f"front, accuracy vs {key}: " + "; ".join(
                f"{p['family'].upper()} {p['method']}" for p in front))
            emit(f"pareto_front_{key}", len(front), "count", target=None)
        if args.figure is not None:
            fig = pareto.pareto_map(points, title=f"Fashion-MNIST test accuracy, "
                                    f"{points[0]['machine']}, {points[0]['date']}")
            fig.savefig(args.figure, dpi=110)
            print(f"figure -> {args.figure}")
        emit("pareto_points", len(points), "count", target=">= 15")


if __name__ == "__main__":
    main()
