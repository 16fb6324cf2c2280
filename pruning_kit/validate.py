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
from collections.abc import Iterable
from typing import Any

import jax
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


def choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")
    return value


def bits(value: Any, *, name: str = "bits", minimum: int = 1, maximum: int = 16) -> int:
    """A bit width in ``[minimum, maximum]``."""
    return integer(name, value, minimum, maximum)
