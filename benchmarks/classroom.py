"""Classroom edition: graded exercises, what the student notebooks fail on, the autograder.

Run from the repository root::

    python -m benchmarks.classroom                          # every notebook (about 20 min)
    python -m benchmarks.classroom --notebooks 00 02        # only these notebooks
    python -m benchmarks.classroom --skip-teacher           # solutions_pass read from the
                                                            # committed outputs (nbval runs them)

Prints the figures (metric, value, unit, target) as a table; ``--out results.jsonl``
appends them as JSON lines (``benchmarks._common``):

* ``graded_exercises``: graded exercises in all notebooks (``per_notebook`` counts).
* ``student_fail_as_expected``: graded test cells that fail with their exercise's
  ``NotImplementedError`` hint when the student editions run (nbclient, errors allowed, cwd
  ``notebooks/``); ``other_errors`` lists any other cell that errors (must be none).
* ``solutions_pass``: 1 if every graded test cell of the teacher notebooks passes.
* ``autograde_scores_ok``: 1 if the three synthetic submissions (all solved = the teacher
  copy, none = the student copy, one wrong answer) get full, zero and the right partial
  scores, on ``tests/fixtures/classroom_mini.ipynb`` and on notebook 00 (when selected).
* ``self_checks_blank_in_student``: 1 if every self-check answer in every student notebook
  is ``name = None``.

Then, for the notes, one graded cell of a student notebook and the message its test fails
with, on stderr. Student notebooks are built in memory from the teacher notebooks (the same
bytes ``make classroom`` writes).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import tempfile
from pathlib import Path

import nbformat

from benchmarks import _common
from benchmarks._common import emit
from pruning_kit import classroom

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FIXTURE = ROOT / "tests" / "fixtures" / "classroom_mini.ipynb"
TARGETS = {"graded_exercises": ">= 14, >= 2 in every notebook",
           "student_fail_as_expected": "== graded exercises run, other_errors == []",
           "solutions_pass": "1", "autograde_scores_ok": "1",
           "self_checks_blank_in_student": "1"}


def _test_helpers():
    """tests/test_classroom.py's structural checks (one definition of each)."""
    spec = importlib.util.spec_from_file_location("test_classroom",
                                                  ROOT / "tests" / "test_classroom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def student_run(name: str, nb) -> tuple[int, int, list[str], tuple[str, str] | None]:
    """Run the student edition: (expected failures, exercises, other errors, example)."""
    student = classroom.student_notebook(nb, name)
    ran = classroom.execute(student, NOTEBOOKS, timeout=1800, notebook_timeout=7200)
    exercises = classroom.graded_cells(student, name)
    tests = {ex.tests: ex for ex in exercises}
    expected, other, example = 0, [], None
    for i, cell in enumerate(student.cells):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if i in tests:
            stub = f"Exercise {tests[i].grade_id} is not implemented yet."
            if errors and errors[0].ename == "NotImplementedError" and \
                    errors[0].evalue.startswith(stub):
                expected += 1
                example = example or (student.cells[tests[i].solution].source,
                                      f"NotImplementedError: {errors[0].evalue}")
                continue
        if errors or (cell.cell_type == "code" and cell.source.strip() and i not in ran):
            other.append(f"{name} cell {i}: " + (f"{errors[0].ename}: {errors[0].evalue}"[:200]
                                                 if errors else ran.get(i, "not run")))
    return expected, len(exercises), other, example


def solutions_pass(name: str, nb, skip: bool) -> list[str]:
    """Graded test cells of a teacher notebook that do not pass (run, or committed outputs)."""
    if not skip:
        nb = copy.deepcopy(nb)
        classroom.execute(nb, NOTEBOOKS, timeout=1800, notebook_timeout=7200)
    bad = []
    for ex in classroom.graded_cells(nb, name):
        outputs = nb.cells[ex.tests].get("outputs", [])
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        if any(o.output_type == "error" for o in outputs) or "passed" not in text:
            bad.append(f"{ex.grade_id}_tests" + ("" if outputs else " (no output)"))
    return bad


def autograde_ok(name: str, teacher_path: Path) -> tuple[bool, dict]:
    """Grade the three synthetic submissions of one teacher notebook; (as expected, scores)."""
    teacher = nbformat.read(teacher_path, as_version=4)
    exercises = classroom.graded_cells(teacher, name)
    wrong = _test_helpers().with_region(teacher, 0, "return None")
    submissions = {"all": teacher, "none": classroom.student_notebook(teacher, name),
                   "wrong": wrong}
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        for student, nb in submissions.items():
            (Path(tmp) / student).mkdir()
            nbformat.write(nb, Path(tmp) / student / teacher_path.name)
        rows = classroom.grade(tmp, teacher_path.parent, timeout=600)
    got = {s: [r["points"] for r in rows if r["student"] == s] for s in submissions}
    full = [ex.points for ex in exercises]
    want = {"all": full, "none": [0] * len(full), "wrong": [0] + full[1:]}
    return got == want, {"got": got, "want": want}


def main(argv: list[str] | None = None) -> None:
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--notebooks", nargs="*", default=[],
                        help="notebook numbers to execute, e.g. 00 02 (default all)")
    parser.add_argument("--skip-teacher", action="store_true",
                        help="check the teacher solutions on the committed outputs instead "
                             "of executing the teacher notebooks")
    args = parser.parse_args(argv)
    with _common.reporting(args.out, TARGETS):
        paths = sorted(NOTEBOOKS.glob(classroom.PATTERN))
        teacher = {p.stem: nbformat.read(p, as_version=4) for p in paths}
        chosen = [n for n in teacher if not args.notebooks or n[:2] in args.notebooks]
        helpers = _test_helpers()

        counts = {n: len(classroom.graded_cells(nb, n)) for n, nb in teacher.items()}
        emit("graded_exercises", sum(counts.values()), "count", per_notebook=counts,
             at_least_2_everywhere=all(c >= 2 for c in counts.values()))

        blank = {n: helpers.blank_self_checks(nb, classroom.student_notebook(nb, n))
                 for n, nb in teacher.items()}
        emit("self_checks_blank_in_student", int(not any(blank.values())), "bool",
             self_checks=sum(len(helpers.tagged(nb, classroom.SELF_CHECK))
                             for nb in teacher.values()),
             not_blank={n: ids for n, ids in blank.items() if ids})

        expected = total = 0
        other: list[str] = []
        example = None
        for name in chosen:
            e, t, o, ex = student_run(name, teacher[name])
            expected, total, other, example = expected + e, total + t, other + o, example or ex
            print(f"{name}: {e}/{t} graded tests fail with their hint, {len(o)} other errors",
                  file=sys.stderr)
        emit("student_fail_as_expected", expected, "count", graded_exercises_run=total,
             other_errors=other, notebooks=[n[:2] for n in chosen])

        bad = [b for name in chosen for b in solutions_pass(name, teacher[name], args.skip_teacher)]
        emit("solutions_pass", int(not bad), "bool", failing=bad,
             source="committed outputs" if args.skip_teacher else "executed")

        with tempfile.TemporaryDirectory(prefix="classroom-fixture-") as tmp:
            (Path(tmp) / "99_mini.ipynb").write_bytes(FIXTURE.read_bytes())
            results = {"fixture": autograde_ok("99_mini", Path(tmp) / "99_mini.ipynb")}
        if "00" in [n[:2] for n in chosen]:
            results["00"] = autograde_ok(paths[0].stem, paths[0])
        emit("autograde_scores_ok", int(all(ok for ok, _ in results.values())), "bool",
             **{f"scores_{k}": v for k, (_, v) in results.items()})

        if example:
            print(f"\nA graded cell of a student notebook:\n\n{example[0]}\n\nIts test cell "
                  f"fails with:\n\n{example[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
