"""Timing that a reader can trust, and where it was taken.

* :func:`latency` -- the median wall time of the ``jax.jit``-compiled forward of one model;
* :func:`compare_latency` -- several candidates timed in interleaved rounds (A, B, A, B,
  ...; the order reversed every other round), with the median and spread (IQR, min-max)
  of each and of the per-round speed-up over a baseline, and a verdict that says "no
  measurable difference" when the spread crosses 1.0: the figure to quote on a shared
  machine whose speed drifts;
* :func:`machine_info` / :func:`machine_summary` -- CPU model, instruction set (AVX2,
  AVX-512, VNNI, ...), cores, JAX backend and versions, printed beside every timing.

Re-exported by :mod:`pruning_kit.measure`, where the course meets them (notebook 00).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import train as train_lib
from pruning_kit import validate
from pruning_kit.table import Table

ModelOrFn = nnx.Module | Callable[[jax.Array], jax.Array]

__all__ = [
    "LatencyComparison", "LatencyResult", "LatencyStats", "ModelOrFn", "as_batch",
    "compare_latency", "compiled_forward", "isa", "latency", "machine_info", "machine_summary",
]


# --------------------------------------------------------------------------- compute
@functools.partial(jax.jit, static_argnums=(0,))
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def as_batch(x: Any, name: str = "x") -> jax.Array:
    """``x`` as a ``jax.Array`` whose first axis is a non-empty batch of examples.

    Raises:
        ValueError: a scalar or an empty batch (the message names ``name``).
    """
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (first axis = examples), got "
                         f"shape {x.shape}; use x[:1] for a single example.")
    return x


def compiled_forward(model_or_fn: ModelOrFn) -> tuple[Callable, Callable]:
    """``(call, lower)``: a jitted ``call(x)`` and ``lower(x)`` giving its lowering.

    What :func:`latency`, :func:`compare_latency` and :func:`pruning_kit.measure.cost` run.

    A model is split in eval mode (the graph definition keeps that mode), then its own
    train/eval flags are put back, so the caller's model leaves as it came. An object with
    a true ``runs_outside_jax`` attribute (an :class:`pruning_kit.export.OnnxModel`: an
    ONNX Runtime session) is called as it is; it cannot be lowered.
    """
    if getattr(model_or_fn, "runs_outside_jax", False):   # e.g. export.OnnxModel
        def no_lowering(x):
            raise ValueError(f"{type(model_or_fn).__name__} runs outside JAX, so it has no "
                             "XLA program to lower or count (MACs, bytes); it can be timed, "
                             "not costed. Cost the JAX model it was exported from instead "
                             "(measure.cost or measure.measure on that model).")
        return model_or_fn, no_lowering
    if isinstance(model_or_fn, nnx.Module):
        with train_lib.eval_mode(model_or_fn):
            graphdef, state = nnx.split(model_or_fn)
        return (lambda x: _apply(graphdef, state, x),
                lambda x: _apply.lower(graphdef, state, x))
    if callable(model_or_fn):
        fn = jax.jit(model_or_fn)
        return fn, fn.lower
    raise ValueError(f"Expected an NNX model or a callable fn(x), got "
                     f"{type(model_or_fn).__name__}.")


class LatencyResult(NamedTuple):
    """Wall time of one forward call on a batch, over ``runs`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch_size: int

    @property
    def per_example_us(self) -> float:
        """Median time per example in microseconds."""
        return 1000.0 * self.median_ms / self.batch_size


def latency(model_or_fn: ModelOrFn, x: Any, *, runs: int = 50, warmup: int = 5
            ) -> LatencyResult:
    """Median wall time of the ``jax.jit``-compiled forward pass on batch ``x``.

    A model is split in eval mode with ``nnx.split`` into a static graph and a state, and
    a pure jitted ``forward(state, x)`` is timed (the functional NNX pattern, no Python
    module overhead per call); the model itself keeps its train/eval mode. Each call is
    timed with ``time.perf_counter()`` around ``.block_until_ready()``, after ``warmup``
    untimed calls (the first compiles).

    Args:
        model_or_fn: an NNX model, any function ``fn(x)`` (it is jitted), or an
            :class:`pruning_kit.export.OnnxModel` (called as it is).
        x: the input batch; its first axis is the batch size.
        runs: timed calls, ``>= 1``; the median is robust to a few slow ones.
        warmup: untimed calls first, ``>= 0``.

    Returns:
        A :class:`LatencyResult` (``median_ms``, ``p10_ms``, ``p90_ms``, ``runs``,
        ``batch_size``).

    Raises:
        ValueError: ``runs < 1``, ``warmup < 0``, an empty ``x``, or not a model/callable.

    To compare models, use :func:`compare_latency`: it times them interleaved, so a
    machine that slows down mid-run slows every candidate alike.

    Examples:
        >>> r = latency(lambda x: x @ x.T, jnp.ones((8, 8)), runs=5)
        >>> r.batch_size, r.median_ms > 0
        (8, True)
    """
    runs = validate.integer("runs", runs, 1)
    warmup = validate.integer("warmup", warmup, 0)
    x = as_batch(x)
    if getattr(model_or_fn, "runs_outside_jax", False):   # an ONNX Runtime session
        x = np.asarray(x)
    call, _ = compiled_forward(model_or_fn)
    for _ in range(max(warmup, 1)):
        jax.block_until_ready(call(x))
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(call(x))
        times[i] = (time.perf_counter() - start) * 1000.0
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return LatencyResult(float(median), float(p10), float(p90), runs, int(x.shape[0]))


# --------------------------------------------------------------------------- comparing
class LatencyStats(NamedTuple):
    """One candidate of a :class:`LatencyComparison`, over its rounds.

    ``speedup`` and its spread are over the per-round ratios ``baseline_ms / this_ms``
    (above 1: faster than the baseline); the baseline's own are all 1.
    """

    median_ms: float
    iqr_ms: tuple[float, float]       # 25th and 75th percentile
    min_max_ms: tuple[float, float]
    speedup: float                    # median of the per-round ratios
    speedup_iqr: tuple[float, float]
    speedup_min_max: tuple[float, float]


def _ms(value: float) -> str:  # as the ``*_ms`` columns of a Table, without the unit
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:#.3g}"


def _quartiles(a: np.ndarray) -> tuple[float, float, float]:
    p25, p50, p75 = np.percentile(a, [25, 50, 75])
    return float(p25), float(p50), float(p75)


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """Per-round times of several candidates and what they say about each one's speed.

    Built by :func:`compare_latency`, or directly from known times (the statistics are a
    pure function of them). ``result[name]`` is a :class:`LatencyStats`.

    Args:
        times_ms: candidate name -> one time per round (each the median of ``runs``
            calls), all with the same number of rounds, at least 2.
        baseline: the name every ``speedup`` is relative to.
        runs: timed calls behind each per-round time (for the record).
        batch_sizes: candidate name -> batch size (for the record).

    Raises:
        ValueError: no candidates, fewer than 2 rounds, rounds of different lengths,
            times that are not positive and finite, or an unknown ``baseline``.

    Examples:
        >>> r = LatencyComparison({"dense": (2.0, 2.2, 2.1), "small": (1.0, 1.0, 1.2)},
        ...                       baseline="dense")
        >>> r["small"].speedup, r.verdict("small")
        (2.0, '2.00x faster (IQR 1.88-2.10x)')
    """

    times_ms: Mapping[str, tuple[float, ...]]
    baseline: str
    runs: int = 1
    batch_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.times_ms, Mapping) or not self.times_ms:
            raise ValueError("times_ms must map at least one candidate name to its "
                             "per-round times.")
        times = {str(k): tuple(float(t) for t in np.ravel(v)) for k, v in self.times_ms.items()}
        lengths = {len(v) for v in times.values()}
        if len(lengths) != 1 or min(lengths) < 2:
            raise ValueError(f"Every candidate needs the same number of rounds, at least 2; "
                             f"got {({k: len(v) for k, v in times.items()})}.")
        bad = [k for k, v in times.items() if not all(math.isfinite(t) and t > 0 for t in v)]
        if bad:
            raise ValueError(f"Times must be positive and finite; {bad} are not.")
        if self.baseline not in times:
            raise ValueError(f"Unknown baseline {self.baseline!r}; choose one of "
                             f"{list(times)}.")
        object.__setattr__(self, "times_ms", times)
        object.__setattr__(self, "batch_sizes", dict(self.batch_sizes))

    @property
    def names(self) -> tuple[str, ...]:
        """The candidates, in the order they were given."""
        return tuple(self.times_ms)

    @property
    def rounds(self) -> int:
        return len(next(iter(self.times_ms.values())))

    def _get(self, name: str) -> np.ndarray:
        if name not in self.times_ms:
            raise ValueError(f"No candidate {name!r}; the candidates are {list(self.names)}.")
        return np.asarray(self.times_ms[name])

    def ratios(self, name: str) -> np.ndarray:
        """``baseline_ms / name_ms`` for each round (paired: the same round, same moment)."""
        return self._get(self.baseline) / self._get(name)

    def __getitem__(self, name: str) -> LatencyStats:
        t, r = self._get(name), self.ratios(name)
        t25, t50, t75 = _quartiles(t)
        r25, r50, r75 = _quartiles(r)
        return LatencyStats(t50, (t25, t75), (float(t.min()), float(t.max())),
                            r50, (r25, r75), (float(r.min()), float(r.max())))

    def measurable(self, name: str) -> bool:
        """Whether the IQR of the speed-up over the baseline lies entirely on one side of 1.

        The baseline itself is never a measurable difference from itself.
        """
        lo, hi = self[name].speedup_iqr
        return name != self.baseline and not lo <= 1.0 <= hi

    def verdict(self, name: str) -> str:
        """The speed of ``name`` against the baseline in words, with its spread.

        ``"1.83x faster (IQR 1.71-1.95x)"``, ``"1.25x slower (IQR 1.18-1.33x)"`` (the
        slow-down ``name_ms / baseline_ms``), or, when the IQR of the per-round speed-up
        contains 1.0, ``"no measurable difference (IQR 0.93-1.08x crosses 1.0)"``.
        """
        s = self[name]
        if name == self.baseline:
            return "baseline"
        if not self.measurable(name):
            lo, hi = s.speedup_iqr
            return f"no measurable difference (IQR {lo:.2f}-{hi:.2f}x crosses 1.0)"
        if s.speedup > 1:
            lo, hi = s.speedup_iqr
            return f"{s.speedup:.2f}x faster (IQR {lo:.2f}-{hi:.2f}x)"
        slow25, slow50, slow75 = _quartiles(1.0 / self.ratios(name))
        return f"{slow50:.2f}x slower (IQR {slow25:.2f}-{slow75:.2f}x)"

    def table(self, title: str | None = None) -> Table:
        """One row per candidate: ``name``, ``median_ms``, ``iqr`` (ms), ``speedup``,
        ``spread`` (its IQR), ``range`` (its min-max) and ``verdict``."""
        rows = []
        for name in self.names:
            s = self[name]
            rows.append({"name": name, "median_ms": s.median_ms,
                         "iqr": f"{_ms(s.iqr_ms[0])}-{_ms(s.iqr_ms[1])} ms",
                         "speedup": s.speedup,
                         "spread": f"{s.speedup_iqr[0]:.2f}-{s.speedup_iqr[1]:.2f}x",
                         "range": f"{s.speedup_min_max[0]:.2f}-{s.speedup_min_max[1]:.2f}x",
                         "verdict": self.verdict(name)})
        if title is None:
            calls = f"{self.runs} call{'s' if self.runs != 1 else ''} each"
            title = (f"median of {self.rounds} interleaved rounds ({calls}); "
                     f"speedup = {self.baseline} time / candidate time, per round")
        return Table(rows, title=title)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: settings, and per candidate its stats, verdict and times."""
        out: dict[str, Any] = {"baseline": self.baseline, "rounds": self.rounds,
                               "runs": self.runs, "candidates": {}}
        for name in self.names:
            s = self[name]
            out["candidates"][name] = {
                "median_ms": s.median_ms, "iqr_ms": list(s.iqr_ms),
                "min_max_ms": list(s.min_max_ms), "speedup": s.speedup,
                "speedup_iqr": list(s.speedup_iqr), "speedup_min_max": list(s.speedup_min_max),
                "verdict": self.verdict(name), "batch_size": self.batch_sizes.get(name),
                "times_ms": list(self.times_ms[name])}
        return out

    def __str__(self) -> str:
        return str(self.table())


def compare_latency(candidates: Mapping[str, ModelOrFn], x: Any, *, rounds: int = 30,
                    runs: int = 5, warmup: int = 3, baseline: str | None = None,
                    jit: bool = True, _clock: Callable[[], float] = time.perf_counter
                    ) -> LatencyComparison:
    """Time several models (or functions) interleaved and compare them to a baseline.

    Timing one model after the other on a shared machine measures the machine as much as
    the models: another job starts, the CPU clocks down, and the second model looks slow.
    Here every candidate is compiled and warmed up first, then timed in ``rounds`` rounds;
    in each round every candidate in turn (A, B, C, then C, B, A: the order is reversed
    every other round, so a drift within a round favours no one) is timed as the median
    of ``runs`` calls, each ``perf_counter()`` around ``.block_until_ready()``. The
    speed-up of a candidate is taken per round (``baseline_ms / candidate_ms`` in the same
    round), so slow moments of the machine cancel; its median and spread over the rounds
    is the figure to quote. A speed-up whose IQR contains 1.0 is "no measurable
    difference" (:meth:`LatencyComparison.verdict`).

    Args:
        candidates: name -> an NNX model (timed in eval mode, like :func:`latency`; the
            model keeps its own train/eval mode), a function ``fn(x)`` (jitted), or an
            :class:`pruning_kit.export.OnnxModel` (called as it is, on a NumPy batch), so
            JAX and ONNX Runtime can be timed in the same rounds.
        x: the input batch for every candidate, or a dict name -> batch when their inputs
            differ.
        rounds: interleaved rounds, ``>= 2`` (their spread is the error bar).
        runs: timed calls per candidate per round, ``>= 1``.
        warmup: untimed calls per candidate before the first round, ``>= 0`` (with
            ``jit``, at least one: it compiles).
        baseline: the name the speed-ups are relative to; default the first candidate.
        jit: ``False`` calls each candidate as given, unjitted, on ``x`` as given (no copy
            to the device): e.g. a function that runs one training epoch on ``x``; models
            are then not switched to eval mode.

    Returns:
        A :class:`LatencyComparison`; ``result[name]`` has ``median_ms``, ``iqr_ms``,
        ``min_max_ms``, ``speedup`` and its ``speedup_iqr`` / ``speedup_min_max``;
        ``result.verdict(name)``, ``result.table()``, ``result.as_dict()``.

    Raises:
        ValueError: no candidates, ``rounds < 2``, ``runs < 1``, ``warmup < 0``, an unknown
            ``baseline``, a dict ``x`` whose names differ from the candidates', an empty
            batch, or a candidate that is not a model or callable.

    Examples:
        >>> x = jnp.ones((64, 64))
        >>> r = compare_latency({"matmul": lambda a: a @ a, "add": lambda a: a + a}, x,
        ...                     rounds=4, runs=2)
        >>> r.names, r.baseline, r.rounds
        (('matmul', 'add'), 'matmul', 4)
        >>> sorted(r.as_dict()["candidates"]["add"])[:3]
        ['batch_size', 'iqr_ms', 'median_ms']
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty dict name -> model or fn(x), e.g. "
                         "{'dense': model, 'pruned': small}.")
    names = [str(n) for n in candidates]
    rounds = validate.integer("rounds", rounds, 2)
    runs = validate.integer("runs", runs, 1)
    warmup = validate.integer("warmup", warmup, 0)
    baseline = names[0] if baseline is None else baseline
    if baseline not in names:
        raise ValueError(f"Unknown baseline {baseline!r}; choose one of {names}.")
    def check(v, label):  # unjitted candidates get their input as it is (no device copy)
        if not jit and np.ndim(v) > 0 and np.shape(v)[0] > 0:
            return v
        return as_batch(v, label)

    if isinstance(x, Mapping):
        if set(map(str, x)) != set(names):
            raise ValueError(f"x is a dict, so it needs one batch per candidate: candidates "
                             f"{names}, batches for {[str(k) for k in x]}.")
        batches = {str(k): check(v, f"x[{k!r}]") for k, v in x.items()}
    else:
        batches = dict.fromkeys(names, check(x, "x"))
    for name, cand in zip(names, candidates.values(), strict=True):
        if getattr(cand, "runs_outside_jax", False):   # its input stays on the host
            batches[name] = np.asarray(batches[name])
    calls = {}
    for name, cand in zip(names, candidates.values(), strict=True):
        if jit:
            calls[name] = compiled_forward(cand)[0]
        elif callable(cand):
            calls[name] = cand
        else:
            raise ValueError(f"Candidate {name!r} is a {type(cand).__name__}, not callable.")
    for _ in range(max(warmup, 1) if jit else warmup):
        for name in names:
            jax.block_until_ready(calls[name](batches[name]))
    times = {name: np.empty(rounds) for name in names}
    one = np.empty(runs)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            call, xb = calls[name], batches[name]
            for i in range(runs):
                start = _clock()
                jax.block_until_ready(call(xb))
                one[i] = (_clock() - start) * 1000.0
            times[name][r] = np.median(one)
    return LatencyComparison(times, baseline, runs,
                             {n: int(np.shape(b)[0]) for n, b in batches.items()})


# --------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: ``/proc/cpuinfo`` flags worth naming for matrix kernels, in the order they are shown.
_ISA_FLAGS = (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512F"),
              ("avx512_vnni", "AVX-512 VNNI"), ("avx512_bf16", "AVX-512 BF16"),
              ("avx_vnni", "AVX-VNNI"), ("amx_tile", "AMX"),
              ("asimd", "NEON"), ("asimddp", "NEON dot product"), ("sve", "SVE"),
              ("sve2", "SVE2"), ("i8mm", "Int8 matmul"))


def isa(cpuinfo: str | None = None) -> str:
    """The vector instruction sets the CPU reports, e.g. ``"AVX2, FMA"``.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; default read from this machine.

    Examples:
        >>> isa("flags : fpu sse4_2 avx2 fma")
        'AVX2, FMA'
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown"
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags = set(line.split(":", 1)[1].split())
            names = [name for flag, name in _ISA_FLAGS if flag in flags]
            if names:
                return ", ".join(names)
            return "SSE4.2 (no AVX2)" if "sse4_2" in flags else "none of AVX2/AVX-512/NEON"
    return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Where a measurement was taken: CPU, instruction set, cores, JAX device, versions, date.

    ``isa`` names the vector instruction sets that decide how fast XLA's CPU kernels can
    be (``"AVX2, FMA"``, ``"AVX2, FMA, AVX-512F, AVX-512 VNNI"``, ...): the same benchmark
    can rank two models differently on an AVX2 and an AVX-512 machine.
    """
    device = jax.devices()[0]
    return {
        "cpu": _cpu_model(), "isa": isa(), "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.system(), "backend": jax.default_backend(),
        "device": device.device_kind, "devices": jax.device_count(),
        "python": platform.python_version(), "jax": jax.__version__,
        "jaxlib": _version("jaxlib"), "flax": _version("flax"), "optax": _version("optax"),
        "numpy": np.__version__, "date": _dt.date.today().isoformat(),
    }


def machine_summary() -> str:
    """:func:`machine_info` in two lines, for the top of a benchmark's output."""
    i = machine_info()
    return (f"{i['cpu']} [{i['isa']}] ({i['cores']} cores, {i['os']} {i['machine']}), JAX backend "
            f"{i['backend']} [{i['device']} x{i['devices']}], {i['date']}\n"
            f"python {i['python']}, jax {i['jax']}, jaxlib {i['jaxlib']}, flax {i['flax']}, "
            f"optax {i['optax']}, numpy {i['numpy']}")
