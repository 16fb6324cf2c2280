"""What every benchmark prints for machines: one JSON line per figure."""

from __future__ import annotations

import json
from collections.abc import Mapping


def emit(metric: str, value: float, unit: str, targets: Mapping[str, str]) -> None:
    """Print ``{"metric", "value" (rounded to 4 places), "unit", "target"}`` as one line."""
    print(json.dumps({"metric": metric, "value": round(float(value), 4), "unit": unit,
                      "target": targets.get(metric)}))
