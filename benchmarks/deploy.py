"""Ship the compressed models: ONNX and StableHLO files, agreement, and speed where they run.

    python -m benchmarks.deploy            # about 2 minutes on 2 cores

Models: the cached LeNet-300-100 (``mlp_fashion``), SmallCNN (``cnn_fashion``) and its
channel-removed copy (``zoo.half_mac_cnn``), seed 0, and their W8A8 integer versions
(``w8a8.quantize_model``, calibrated on 2,000 validation images). Each is exported to ONNX
(``export.to_onnx``: float with BatchNorm folded, and int8 QDQ; the two CNNs also as int8
with their residual add quantized, ``calib_x`` = the same 2,000 images), reloaded in ONNX
Runtime and compared with JAX on the whole Fashion-MNIST test set. ONNX Runtime's own
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax on the same
2,000 validation images; its int32-bias weight adjustment off, as it fails on per-channel
Gemm weights in onnxruntime 1.32) quantizes the float export as a peer.

Latency: every candidate -- JAX/XLA:CPU and ONNX Runtime, float and int8 -- is timed in the
same interleaved rounds (``measure.compare_latency``), at batch 1 and 256, and each
speed-up is taken per round with its spread. A second session of the float CNN's file is
timed as one more candidate (``ort_aa_control_cnn_*``): two sessions of one file do the same
work, so their ratio shows how far apart the measurement itself puts identical candidates.
ONNX Runtime runs with 2 intra-op threads (this machine's cores), sequential execution;
XLA:CPU uses its own pool on the same cores.
StableHLO: the channel-removed int8 model is exported with ``export.to_stablehlo`` and run
in a fresh Python process that imports only JAX and NumPy; its logits must be identical.
Prints tables, then the figures (metric, value, unit, target) as a table;
``--out results.jsonl`` appends them as JSON lines (``benchmarks._common``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import data, export, graph, measure, w8a8, zoo
from pruning_kit.table import Table

TARGETS = {
    "onnx_float_maxdiff": "<= 1e-4",
    "onnx_int8_agree_pct": ">= 99.9",
    "onnx_int8_delta": ">= -0.5",
    "onnx_int8_vs_w8a8_pt": "<= 0.3 (absolute)",
    "ort_int8_speedup_mlp_b256": ">= 1.5",
    "ort_int8_speedup_cnn_b256": ">= 1.5",
    "ort_int8_adds_speedup_cnn_b256": ">= 1.5",
    "ort_vs_jax_cnn_b256": ">= 3",
    "ort_removal_speedup_b1": ">= 1.5",
    "ort_vs_ortquant_delta": ">= 0",
    "stablehlo_identical": "1",
}
THREADS = 2
CALIB = 2000


def jax_forward(model):
    """A jitted forward of ``model`` (an eval copy; the model keeps its mode)."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(graph.eval_copy(model))
        return jax.jit(lambda x: nnx.merge(graphdef, state)(x))
    return model


def logits_of(fn, x, batch=1000) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def ort_quantize_static(float_path: Path, out: Path, calib_x: np.ndarray, *,
                        reduce_range: bool = False) -> Path:
    """ONNX Runtime's own static quantization of our float export (the peer)."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib_x[i:i + 250]}
                                 for i in range(0, len(calib_x), 250)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_suffix(".pre.onnx")
    q.quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
    q.quantize_static(str(pre), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, reduce_range=reduce_range,
                      # its weight-scale adjustment for int32 biases fails on per-channel
                      # Gemm weights in onnxruntime 1.32 (ValueError); it is an optional
                      # refinement, so it is switched off
                      extra_options={"QDQDisableWeightAdjustForInt32Bias": True})
    return out


STABLEHLO_CHECK = """
import sys, numpy as np, jax
assert "pruning_kit" not in sys.modules
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
x = np.load(sys.argv[2])
out = np.concatenate([np.asarray(exported.call(x[i:i + 1000])) for i in range(0, len(x), 1000)])
np.save(sys.argv[3], out)
print("pruning_kit imported:", "pruning_kit" in sys.modules)
"""


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        t_start = time.time()
        print(measure.machine_summary())
        ds = data.load_fashion_mnist()
        xt, yt = ds.x_test, ds.y_test
        calib = ds.x_val[:CALIB]
        folder = Path(tempfile.mkdtemp(prefix="deploy_"))

        floats = {"mlp": zoo.baseline("mlp_fashion", 0, progress=False),
                  "cnn": zoo.baseline("cnn_fashion", 0, progress=False),
                  "cnn_removed": zoo.half_mac_cnn(0, progress=False)}
        ints = {k: w8a8.quantize_model(m, calib) for k, m in floats.items()}

        rows, ort, files, adds, w8a8_pred = [], {}, {}, {}, {}
        for name, model in floats.items():
            fpath = export.to_onnx(model, calib[:2], folder / f"{name}.onnx")
            ipath = export.to_onnx(ints[name], calib[:2], folder / f"{name}_int8.onnx")
            qpath = ort_quantize_static(fpath, folder / f"{name}_ortquant.onnx", calib)
            rpath = ort_quantize_static(fpath, folder / f"{name}_ortquant7.onnx", calib,
                                        reduce_range=True)
            files[name] = (fpath, ipath, qpath)
            if name != "mlp":        # the CNNs' residual add as QLinearAdd
                apath = export.to_onnx(ints[name], calib[:2], folder / f"{name}_int8_adds.onnx",
                                       calib_x=calib)
                ort[name + "_int8_adds"] = export.load_onnx(apath, threads=THREADS,
                                                            spinning=False)
                adds[name] = (apath, logits_of(ort[name + "_int8_adds"], xt))
            ort[name + "_ortquant7"] = export.load_onnx(rpath, threads=THREADS, spinning=False)
            ort[name] = export.load_onnx(fpath, threads=THREADS, spinning=False)
            ort[name + "_int8"] = export.load_onnx(ipath, threads=THREADS, spinning=False)
            if name == "cnn":   # an A/A control: a second session of the same float file
                ort["cnn_again"] = export.load_onnx(fpath, threads=THREADS, spinning=False)
            ort[name + "_ortquant"] = export.load_onnx(qpath, threads=THREADS, spinning=False)
            ref = logits_of(jax_forward(model), jnp.asarray(xt))
            got = logits_of(ort[name], xt)
            if name == "cnn":
                logits_of(ort["cnn_again"], xt)            # the same history as the first
            int_ref = logits_of(ints[name], jnp.asarray(xt))
            w8a8_pred[name] = int_ref.argmax(-1)
            int_got = logits_of(ort[name + "_int8"], xt)
            peer = logits_of(ort[name + "_ortquant"], xt)
            peer7 = logits_of(ort[name + "_ortquant7"], xt)
            acc = lambda z: 100 * float(np.mean(z.argmax(-1) == yt))  # noqa: E731
            rows.append({
                "model": name, "jax_float_acc": acc(ref), "onnx_float_acc": acc(got),
                "float_maxdiff": float(np.abs(ref - got).max()),
                "w8a8_jax_acc": acc(int_ref), "onnx_int8_acc": acc(int_got),
                "int8_agree_pct": 100 * float(np.mean(int_ref.argmax(-1) == int_got.argmax(-1))),
                "ortquant_acc": acc(peer), "ortquant_7bit_acc": acc(peer7),
                "onnx_float_bytes": fpath.stat().st_size, "onnx_int8_bytes": ipath.stat().st_size,
                "ortquant_bytes": qpath.stat().st_size})
        print(Table(rows, title="ONNX exports vs JAX, whole Fashion-MNIST test set (10,000)"))
        add_rows = []
        for name, (apath, z) in adds.items():
            r = next(r for r in rows if r["model"] == name)
            add_acc = 100 * float(np.mean(z.argmax(-1) == yt))
            add_rows.append({"model": name, "onnx_int8_adds_acc": add_acc,
                "delta_vs_float_pt": add_acc - r["onnx_float_acc"],
                "agree_w8a8_pct": 100 * float(np.mean(z.argmax(-1) == w8a8_pred[name])),
                "bytes": apath.stat().st_size,
                "ops": " ".join(f"{k} {v}" for k, v in export.describe_onnx(apath)["ops"].items())})
        print(Table(add_rows, title="int8 with the residual add quantized (calib_x): two more "
                                    "tensors rounded than in the W8A8 model"))
        for name, (fpath, ipath, _) in files.items():
            print(f"{name}: float ops {export.describe_onnx(fpath)['ops']}")
            print(f"{' ' * len(name)}  int8 ops  {export.describe_onnx(ipath)['ops']}")

        # ------------------------------------------------------------------ latency
        jax_c = {"jax mlp": jax_forward(floats["mlp"]), "jax mlp w8a8": ints["mlp"],
                 "jax cnn": jax_forward(floats["cnn"]),
                 "jax cnn removed": jax_forward(floats["cnn_removed"]),
                 "jax cnn w8a8": ints["cnn"], "jax cnn removed w8a8": ints["cnn_removed"]}
        ort_c = {"ort mlp": ort["mlp"], "ort mlp int8": ort["mlp_int8"],
                 "ort mlp ortquant": ort["mlp_ortquant"],
                 "ort cnn": ort["cnn"], "ort cnn int8": ort["cnn_int8"],
                 "ort cnn, same file again": ort["cnn_again"],
                 "ort cnn removed": ort["cnn_removed"],
                 "ort cnn removed int8": ort["cnn_removed_int8"],
                 "ort cnn int8 adds": ort["cnn_int8_adds"],
                 "ort cnn removed int8 adds": ort["cnn_removed_int8_adds"],
                 "ort cnn ortquant": ort["cnn_ortquant"],
                 "ort cnn ortquant 7-bit": ort["cnn_ortquant7"]}
        timings = {}
        for b in (256, 1):
            xb = np.asarray(ds.x_val[:b])
            cands = {**jax_c, **ort_c}
            batches = {k: (jnp.asarray(xb) if k.startswith("jax") else xb) for k in cands}
            r = measure.compare_latency(cands, batches, rounds=args.rounds,
                                        runs=5 if b > 1 else 20, warmup=3, jit=False,
                                        baseline="jax cnn")
            timings[b] = r
            print(r.table(title=f"batch {b}: median of {r.rounds} interleaved rounds "
                                f"({r.runs} calls each); speed-up vs JAX dense CNN, per round"))

        def ratio(b: int, slow: str, fast: str):
            r = timings[b]
            sub = measure.LatencyComparison({slow: r.times_ms[slow], fast: r.times_ms[fast]},
                                            slow, r.runs)
            return sub[fast]

        # ------------------------------------------------------------------ StableHLO
        spath = export.to_stablehlo(ints["cnn_removed"], calib[:2],
                                    folder / "cnn_removed.stablehlo")
        np.save(folder / "x.npy", xt)
        proc = subprocess.run([sys.executable, "-c", STABLEHLO_CHECK, str(spath),
                               str(folder / "x.npy"), str(folder / "out.npy")],
                              capture_output=True, text=True, check=True)
        shlo = np.load(folder / "out.npy")
        here = logits_of(export.load_stablehlo(spath), xt)
        identical = bool(np.array_equal(shlo, here))
        live = float(np.abs(shlo - logits_of(ints["cnn_removed"], jnp.asarray(xt))).max())
        print(f"StableHLO: {spath.stat().st_size:,} B, reloaded in a fresh process "
              f"({proc.stdout.strip()}); its logits on 10,000 test images identical to this "
              f"process's: {identical}; max |diff| vs the live IntegerModel: {live:.2g} (XLA "
              f"compiles embedded weights with different fusions, so float rounding differs)")

        # ------------------------------------------------------------------ figures
        best_cnn = min(("ort cnn", "ort cnn int8", "ort cnn removed", "ort cnn removed int8",
                        "ort cnn int8 adds", "ort cnn removed int8 adds"),
                       key=lambda k: timings[256][k].median_ms)
        emit("onnx_float_maxdiff", max(r["float_maxdiff"] for r in rows), "logit",
             per_model={r["model"]: r["float_maxdiff"] for r in rows})
        emit("onnx_int8_agree_pct", min(r["int8_agree_pct"] for r in rows), "%",
             per_model={r["model"]: r["int8_agree_pct"] for r in rows})
        emit("onnx_int8_delta", min(r["onnx_int8_acc"] - r["onnx_float_acc"] for r in rows), "pt",
             per_model={r["model"]: r["onnx_int8_acc"] - r["onnx_float_acc"] for r in rows})
        emit("onnx_int8_vs_w8a8_pt", max(abs(r["onnx_int8_acc"] - r["w8a8_jax_acc"])
                                         for r in rows), "pt")
        for key, model in (("mlp", "mlp"), ("cnn", "cnn")):
            s = ratio(256, f"ort {model}", f"ort {model} int8")
            emit(f"ort_int8_speedup_{key}_b256", s.speedup, "x", iqr=s.speedup_iqr,
                 min_max=s.speedup_min_max)
        for b in (256, 1):   # the A/A control: how far apart two sessions of one file time
            s = ratio(b, "ort cnn", "ort cnn, same file again")
            emit(f"ort_aa_control_cnn_b{b}", s.speedup, "x", iqr=s.speedup_iqr,
                 min_max=s.speedup_min_max)
        for b in (256, 1):
            s = ratio(b, "ort cnn", "ort cnn int8 adds")
            emit(f"ort_int8_adds_speedup_cnn_b{b}", s.speedup, "x", iqr=s.speedup_iqr,
                 min_max=s.speedup_min_max)
            s = ratio(b, "ort cnn removed", "ort cnn removed int8 adds")
            emit(f"ort_int8_adds_speedup_cnn_removed_b{b}", s.speedup, "x", iqr=s.speedup_iqr)
        emit("onnx_int8_adds_agree_pct", min(r["agree_w8a8_pct"] for r in add_rows), "%",
             per_model={r["model"]: r["agree_w8a8_pct"] for r in add_rows})
        emit("onnx_int8_adds_delta", min(r["delta_vs_float_pt"] for r in add_rows), "pt",
             per_model={r["model"]: r["delta_vs_float_pt"] for r in add_rows})
        s = ratio(256, "jax cnn", best_cnn)
        emit("ort_vs_jax_cnn_b256", s.speedup, "x", iqr=s.speedup_iqr, min_max=s.speedup_min_max,
             best=best_cnn)
        s = ratio(1, "ort cnn", "ort cnn removed")
        emit("ort_removal_speedup_b1", s.speedup, "x", iqr=s.speedup_iqr,
             min_max=s.speedup_min_max)
        for b in (1, 256):
            s = ratio(b, "ort mlp", "ort mlp ortquant")
            emit(f"ort_quantize_static_speedup_mlp_b{b}", s.speedup, "x", iqr=s.speedup_iqr)
            s = ratio(b, "ort cnn", "ort cnn ortquant")
            emit(f"ort_quantize_static_speedup_cnn_b{b}", s.speedup, "x", iqr=s.speedup_iqr)
            s = ratio(b, "jax cnn", "ort cnn")
            emit(f"ort_float_vs_jax_cnn_b{b}", s.speedup, "x", iqr=s.speedup_iqr)
            s = ratio(b, "jax mlp", "ort mlp")
            emit(f"ort_float_vs_jax_mlp_b{b}", s.speedup, "x", iqr=s.speedup_iqr)
        s = ratio(1, "ort mlp", "ort mlp int8")
        emit("ort_int8_speedup_mlp_b1", s.speedup, "x", iqr=s.speedup_iqr)
        emit("ort_vs_ortquant_delta", min(r["onnx_int8_acc"] - r["ortquant_acc"] for r in rows),
             "pt", per_model={r["model"]: r["onnx_int8_acc"] - r["ortquant_acc"] for r in rows})
        emit("stablehlo_identical", int(identical), "bool", maxdiff_vs_live_model=live)
        emit("ort_vs_ortquant7_delta", min(r["onnx_int8_acc"] - r["ortquant_7bit_acc"]
                                           for r in rows), "pt",
             per_model={r["model"]: r["onnx_int8_acc"] - r["ortquant_7bit_acc"] for r in rows})
        s = ratio(256, "ort cnn", "ort cnn ortquant 7-bit")
        emit("ort_quantize_static_7bit_speedup_cnn_b256", s.speedup, "x", iqr=s.speedup_iqr)
        emit("deploy_benchmark_seconds", time.time() - t_start, "s")


if __name__ == "__main__":
    main()
