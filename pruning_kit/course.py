"""Open and re-run the course without touching the committed notebooks.

The notebooks in ``notebooks/`` are committed executed (outputs, widget state), so a
learner can read them at once. Two commands work on them:

* ``python -m pruning_kit.course prepare`` (``make course``) copies each notebook into
  ``work/`` (ignored by git) unless a copy is already there -- a learner's edits are never
  overwritten -- and the learner opens ``work/`` in JupyterLab. The tracked files are only
  read, so ``git status`` stays clean whatever is run or saved in the browser.
* ``python -m pruning_kit.course execute`` (``make notebooks``) re-executes notebooks with
  one progress bar: the notebook running, its elapsed and expected time, and the total.
  Expected times come from the last recorded run (``notebooks/timings.json``). By default
  the executed copies go to ``work/``; ``--inplace`` (maintainers, ``make
  notebooks-inplace``) rewrites the committed notebooks, with widget state saved so
  JupyterLab and GitHub show the explorers before any cell runs, and records the times.

Examples:
    >>> import tempfile
    >>> dest = Path(tempfile.mkdtemp())
    >>> copied = prepare(dest)
    >>> sorted(p.name for p in copied)[0]
    '00_compression_and_measurement.ipynb'
    >>> prepare(dest)          # already there: nothing is overwritten
    []
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pruning_kit.data import PROJECT_ROOT, atomic_write

NOTEBOOKS = PROJECT_ROOT / "notebooks"
WORK = PROJECT_ROOT / "work"
TIMINGS = NOTEBOOKS / "timings.json"


def notebooks(numbers: Sequence[str] = ()) -> list[Path]:
    """The course notebooks (``NN_*.ipynb``), optionally only those numbered ``numbers``."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if numbers:
        unknown = set(numbers) - {p.name[:2] for p in paths}
        if unknown:
            raise ValueError(f"No notebook numbered {sorted(unknown)}; the course has "
                             f"{[p.name[:2] for p in paths]}.")
        paths = [p for p in paths if p.name[:2] in numbers]
    return paths


def prepare(dest: str | Path = WORK) -> list[Path]:
    """Copy the committed notebooks into ``dest``, skipping any already there.

    Returns:
        The paths copied (empty when every notebook already has a working copy).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in notebooks():
        target = dest / src.name
        if not target.exists():
            shutil.copyfile(src, target)
            copied.append(target)
    return copied


def expected_seconds() -> dict[str, float]:
    """Seconds each notebook took in the last recorded run (empty if none recorded)."""
    try:
        return json.loads(TIMINGS.read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        return {}


def quiet_jupyter() -> None:
    """Silence the Jupyter stack's pass-through warnings (not the notebooks' own output)."""
    warnings.filterwarnings("ignore", message=".*running over TCP without encryption.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("traitlets", "nbclient", "jupyter_client"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_notebook(path: Path, *, timeout: int = 1800):
    """Execute the notebook at ``path`` in memory; ``(executed notebook, seconds)``.

    Widget state is stored in the result, so a written copy shows its explorers before
    any cell runs. Nothing is written here.
    """
    import nbformat
    from nbclient import NotebookClient

    quiet_jupyter()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            store_widget_state=True,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()
    return nb, round(time.perf_counter() - start, 1)


def write_notebook(nb, target: Path) -> None:
    """Write an executed notebook atomically (nothing half-written if interrupted)."""
    import nbformat

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, (nbformat.writes(nb) + "\n").encode())


def record_times(seconds: dict[str, float]) -> None:
    """Merge ``seconds`` into ``notebooks/timings.json`` (the next run's estimates)."""
    recorded = dict(sorted({**expected_seconds(), **seconds}.items()))
    atomic_write(TIMINGS, (json.dumps({"seconds": recorded}, indent=1) + "\n").encode())


def execute(paths: Sequence[Path], *, out_dir: str | Path | None = WORK,
            timeout: int = 1800, record: bool = False) -> dict[str, float]:
    """Execute ``paths`` one by one with a progress bar; returns seconds per notebook.

    Args:
        paths: notebooks to run (see :func:`notebooks`).
        out_dir: where executed copies are written; ``None`` rewrites each notebook in
            place (with its widget state).
        timeout: seconds allowed per cell.
        record: store the times in ``notebooks/timings.json`` (the next run's estimates).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed; the message names it. The
            notebook being run is left as it was (nothing half-written).
    """
    from tqdm.auto import tqdm

    expected = expected_seconds()
    total = sum(expected.get(p.name, 60.0) for p in paths)
    seconds: dict[str, float] = {}
    bar = tqdm(total=round(total), unit="s", desc="notebooks",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s expected "
                          "[{elapsed} elapsed]")
    for i, path in enumerate(paths, 1):
        guess = expected.get(path.name, 60.0)
        bar.set_description(f"[{i}/{len(paths)}] {path.name} (about {guess:.0f} s)")
        nb, seconds[path.name] = run_notebook(path, timeout=timeout)
        target = path if out_dir is None else Path(out_dir) / path.name
        write_notebook(nb, target)
        bar.update(round(guess))
        bar.write(f"{path.name}: {seconds[path.name]:.0f} s (expected {guess:.0f} s) -> "
                  f"{target}")
    bar.close()
    print(f"All {len(paths)} notebooks ran in {sum(seconds.values()):.0f} s.")
    if record:
        record_times(seconds)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pruning_kit.course",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="copy the notebooks into work/ (never overwrites)")
    p.add_argument("--dest", default=str(WORK))
    e = sub.add_parser("execute", help="re-execute notebooks with progress")
    e.add_argument("numbers", nargs="*", help="notebook numbers, e.g. 00 03 (default all)")
    e.add_argument("--inplace", action="store_true",
                   help="rewrite the committed notebooks (maintainers) and record times")
    e.add_argument("--out", default=str(WORK), help="folder for executed copies")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        copied = prepare(args.dest)
        print(f"{len(copied)} notebook(s) copied to {args.dest}; existing copies kept."
              if copied else f"Working copies already in {args.dest}; kept as they are.")
    else:
        execute(notebooks(args.numbers), out_dir=None if args.inplace else args.out,
                record=args.inplace)


if __name__ == "__main__":
    main()
