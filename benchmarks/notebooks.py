"""Wall time of executing each notebook end to end (as nbval / `make course` would).

Run from the repository root::

    python -m benchmarks.notebooks                 # every notebook, cached baselines
    python -m benchmarks.notebooks 00 --cold       # notebook 00 with an empty checkpoint
                                                   # cache: every baseline it needs is trained

Executes copies (the committed notebooks are not modified) and reports one figure per
notebook (``notebook_NN_seconds_warm``/``_cold``, in s, with its target), then two totals
over the notebooks run: ``claims_asserted`` (claim assertions, ``checks.claim``, that
executed and held) and ``handtyped_figures`` (measured-looking figures typed by hand in
markdown, found by ``tests/test_notebook_prose.py``; must be 0).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import checks, course, measure

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"00": {"warm": "<= 60 s", "cold": "<= 180 s"}, "03": {"warm": "<= 180 s"},
           "04": {"warm": "<= 180 s"}, "05": {"warm": "<= 240 s"},
           "06": {"warm": "<= 180 s"}}


def run(path: Path, timeout: int = 3600, *, inplace: bool = False) -> tuple[float, int]:
    """Execute the notebook; ``(seconds, claims that held)``.

    With ``inplace`` the executed notebook (widget state included) replaces the committed
    one, as ``make notebooks-inplace`` does; otherwise nothing is written.
    """
    nb, seconds = course.run_notebook(path, timeout=timeout)
    if inplace:
        course.write_notebook(nb, path)
    claims = sum(line.startswith(checks.CLAIM_PREFIX)
                 for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []) if out.get("name") == "stdout"
                 for line in out.get("text", "").splitlines())
    return seconds, claims


def handtyped(paths: list[Path]) -> int:
    """Hand-typed measured figures in the markdown of ``paths`` (the prose test's scan)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "test_notebook_prose", ROOT / "tests" / "test_notebook_prose.py")
    scan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scan)
    return sum(len(scan.handtyped_figures(p)) for p in paths)


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("numbers", nargs="*", help="notebook numbers, e.g. 00 03 (default all)")
    parser.add_argument("--inplace", action="store_true",
                        help="write the executed notebooks back (maintainers) and record "
                             "their times in notebooks/timings.json")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty checkpoint cache (trains every baseline)")
    args = parser.parse_args(argv)
    with _common.reporting(args.out):
        print(measure.machine_summary())
        paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        if args.numbers:
            paths = [p for p in paths if p.name[:2] in args.numbers]
        mode = "cold" if args.cold else "warm"
        with tempfile.TemporaryDirectory(prefix="pruning_kit_ckpt_") as empty:
            if args.cold:
                os.environ["PRUNING_KIT_CHECKPOINTS"] = empty
            total_claims = 0
            times: dict[str, float] = {}
            for path in paths:
                seconds, claims = run(path, inplace=args.inplace)
                times[path.name] = seconds
                total_claims += claims
                print(f"{path.name}: {seconds:.1f} s ({mode} checkpoint cache), {claims} claims "
                      "asserted")
                emit(f"notebook_{path.name[:2]}_seconds_{mode}", round(seconds, 1), "s",
                     target=TARGETS.get(path.name[:2], {}).get(mode))
        if args.inplace:
            course.record_times(times)
        emit("claims_asserted", total_claims, "count",
             target=">= 1 per qualitative claim in every notebook")
        emit("handtyped_figures", handtyped(paths), "count", target="0")


if __name__ == "__main__":
    main()
