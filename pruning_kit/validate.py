"""Argument checks shared by the package: one message style, one place.

Each check returns the value in its usable form or raises ``ValueError`` saying what was
wrong and what is accepted.

Examples:
    >>> integer("epochs", 3, minimum=1)
    3
    >>> number("alpha", 0.5, 0.0, 1.0)
    0.5
    >>> integer("epochs", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got 0.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def integer(name: str, value: Any, minimum: int = 1, maximum: int | None = None,
            *, hint: str = "") -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (bools refused)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        tail = f" {hint}" if hint else ""
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}.{tail}")
    return int(value)


def number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
           low_open: bool = False, hint: str = "") -> Any:
    """``value`` as a finite ``float`` in its range; a traced value passes unchanged."""
    if isinstance(value, jax.core.Tracer):   # inside jit the value is unknown
        return value
    tail = f" {hint}" if hint else ""
    try:
        v = float(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}.{tail}") from err
    below = v <= low if low_open else v < low
    if not math.isfinite(v) or below or v > high:
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if high < math.inf else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.{tail}")
    return v


def choice(name: str, value: Any, options: Iterable[Any], *, hint: str = "") -> Any:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        tail = f" {hint}" if hint else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got "
                         f"{value!r}.{tail}")
    return value


def bits(value: Any, *, name: str = "bits", minimum: int = 1, maximum: int = 16) -> int:
    """A bit width in ``[minimum, maximum]``."""
    return integer(name, value, minimum, maximum)


def sparsity(value: Any, *, name: str = "sparsity") -> Any:
    """A fraction of weights to prune: a ``float`` in ``[0, 1)``.

    A traced value (inside ``jit``, e.g. a slider's) cannot be checked; it is returned as
    a float32 clipped into ``[0, 1]`` (NaN becomes 0).

    Examples:
        >>> sparsity(0.9)
        0.9
        >>> sparsity(1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sparsity must be a fraction in [0, 1), got 1.0: 0.9 prunes 90% of the ...
    """
    if isinstance(value, jax.core.Tracer):
        return jnp.clip(jnp.nan_to_num(jnp.asarray(value, jnp.float32)), 0.0, 1.0)
    try:
        v = math.nan if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v < 1.0:  # also catches NaN
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}: 0.9 prunes 90% "
                         "of the weights (1.0 would remove them all).")
    return v


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line: the first caller outside this
    package and outside installed libraries (JAX's tracing, the standard library), so the
    warning points there whichever public function raised it."""
    package = os.path.dirname(os.path.abspath(__file__))
    skip = (package, os.path.dirname(os.__file__))      # the package, the standard library
    frame, level, first_outside = sys._getframe(1), 2, None
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(package) and first_outside is None:
            first_outside = level
        if not name.startswith(skip) and "site-packages" not in name:
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category,
                  stacklevel=level if frame is not None else first_outside or 2)


def path_then_model(call: str, path: Any, model: Any, *, what: str = "the Flax NNX model",
                    accepts: tuple[type, ...] = ()) -> None:
    """Raise a ``ValueError`` naming the mistake when ``call(path, model)`` got its
    arguments swapped, or something other than a model (or one of ``accepts``)."""
    from flax import nnx

    models = (nnx.Module, nnx.State, dict)
    if isinstance(path, models):
        raise ValueError(f"{call} takes the file's path first and {what} second; got a "
                         f"{type(path).__name__} first. Swap the two arguments.")
    if not isinstance(model, (nnx.Module, *accepts)):
        raise ValueError(f"{call} takes the file's path first and {what} second; got "
                         f"{type(model).__name__} second. Pass the model itself (not "
                         "nnx.state(model) or a dict of arrays).")
