"""Wall time of executing each notebook end to end (as nbval / `make course` would).

Run from the repository root::

    python -m benchmarks.notebooks                 # every notebook, cached baselines
    python -m benchmarks.notebooks 00 --cold       # notebook 00 with an empty checkpoint
                                                   # cache: every baseline it needs is trained

Executes copies (the committed notebooks are not modified) and prints one JSON line per
notebook: ``{"metric": "notebook_NN_seconds", "value": ..., "unit": "s", "target": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from pruning_kit import measure

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"00": {"warm": "<= 60 s", "cold": "<= 180 s"}, "03": {"warm": "<= 180 s"},
           "04": {"warm": "<= 180 s"}, "05": {"warm": "<= 240 s"}}


def run(path: Path, timeout: int = 3600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("numbers", nargs="*", help="notebook numbers, e.g. 00 03 (default all)")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty checkpoint cache (trains every baseline)")
    args = parser.parse_args(argv)
    print(measure.machine_summary())
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.numbers:
        paths = [p for p in paths if p.name[:2] in args.numbers]
    mode = "cold" if args.cold else "warm"
    with tempfile.TemporaryDirectory(prefix="pruning_kit_ckpt_") as empty:
        if args.cold:
            os.environ["PRUNING_KIT_CHECKPOINTS"] = empty
        for path in paths:
            seconds = run(path)
            print(f"{path.name}: {seconds:.1f} s ({mode} checkpoint cache)")
            print(json.dumps({"metric": f"notebook_{path.name[:2]}_seconds_{mode}",
                              "value": round(seconds, 1), "unit": "s",
                              "target": TARGETS.get(path.name[:2], {}).get(mode)}))


if __name__ == "__main__":
    main()
