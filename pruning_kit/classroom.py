"""Classroom edition: student notebooks, an nbgrader release, and an autograder.

``notebooks/`` is the teacher edition: each ``graded-solution`` cell (a ``my_*`` function,
``# Hint:`` lines, its body between ``### BEGIN SOLUTION`` / ``### END SOLUTION``) is followed
by its ``graded-tests`` cell (points, ``### BEGIN HIDDEN TESTS``); ``self-check`` cells hold
an answer region; a ``teacher-only`` cell holds the written solutions.

``python -m pruning_kit.classroom generate`` (``make classroom``) writes
``classroom/student/NN_*.ipynb`` (made here: each solution region becomes ``raise
NotImplementedError("Exercise NN_name is not implemented yet. Hint: ...")`` with that
exercise's hint; hidden tests, teacher-only cells, outputs and widget state go; self-check
answers become ``name = None  # your answer`` and their multiple-choice feedback is
sealed (:func:`seal_choices`); same input, same bytes) and
``classroom/release/NN_name/NN_name.ipynb``, one assignment per notebook, made by nbgrader
0.9.6's own ``nbgrader generate_assignment`` (``pip install -e '.[classroom]'``; skipped with
a note without it) in a temporary course folder, on a copy without the teacher-only cells
and with the self-checks pre-blanked and unmarked: nbgrader rejects an ungraded markdown
solution cell ("Markdown solution cell is not marked as a grade cell"), and its one global
stub (``# YOUR CODE HERE`` / ``raise NotImplementedError()``) would stop a self-check and
has no per-exercise hint -- hence the separate student edition.

``python -m pruning_kit.classroom grade SUBMISSIONS [--teacher notebooks] [--out grades.csv]
[--timeout 300] [--notebook-timeout 3600]`` (``make grade SUBMISSIONS=dir``) marks
``SUBMISSIONS/<student>/NN_*.ipynb``: test cells are replaced by the teacher's (by grade_id,
hidden tests included), a solution importing outside :data:`ALLOWED_IMPORTS` scores 0, and
nbclient runs each notebook cell by cell in the teacher folder (``../data`` resolves), errors
allowed, under per-cell and per-notebook limits: a crash or loop costs only the exercises it
reaches. An exercise scores its points when its test cell ran without error. CSV columns:
student, notebook, grade_id, points, max_points, status (``passed``, ``failed: <error>``,
``not run``, ``disallowed import``, ``timeout``).
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import importlib.util
import io
import itertools
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from pruning_kit import checks
from pruning_kit.course import NOTEBOOKS, quiet_jupyter
from pruning_kit.data import PROJECT_ROOT, atomic_write

CLASSROOM = PROJECT_ROOT / "classroom"
PATTERN = "[0-9][0-9]_*.ipynb"
FIELDS = ["student", "notebook", "grade_id", "points", "max_points", "status"]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SOLUTION, TESTS, SELF_CHECK, TEACHER_ONLY = ("graded-solution", "graded-tests", "self-check",
                                             "teacher-only")
ALLOWED_IMPORTS = frozenset({"numpy", "jax", "jax.numpy", "math", "functools", "itertools",
                             "collections", "heapq", "optax"})
_FORBIDDEN_NAMES = frozenset({"__import__", "__builtins__", "importlib", "exec", "eval",
                              "compile", "get_ipython", "breakpoint"})  # imports by other roads
_TIMEOUT = "CellTimeoutError"
_LOG = logging.getLogger(__name__)  # for nbclient's timeout messages: the status says it
_LOG.setLevel(logging.CRITICAL)


class Exercise(NamedTuple):
    """A graded exercise of a teacher notebook: its id, points and two cell indices."""
    grade_id: str
    points: float
    solution: int
    tests: int


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _where(name: str, index: int, cell) -> str:
    return f"{name} cell {index} (id {cell.get('id', '?')!r})"


def _regions(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """``(begin line, end line)`` of each marked region; raises if the markers don't pair."""
    found, start = [], None
    for i, text in enumerate(line.strip() for line in lines):
        if text in (begin, end) and (start is None) != (text == begin):
            raise ValueError(f"{where}: unpaired {text!r}; each {begin!r} needs one {end!r}.")
        if text == begin:
            start = i
        elif text == end:
            found.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"{where}: {begin!r} is never closed by {end!r}.")
    return found


def _hint(lines: list[str], begin: int) -> str:
    """The ``# Hint: ...`` comment lines directly above line ``begin``, as one sentence."""
    above = [t.lstrip("#").strip() for t in itertools.takewhile(
        lambda t: t.startswith("#"), (line.strip() for line in reversed(lines[:begin])))][::-1]
    first = next((i for i, t in enumerate(above) if t.lower().startswith("hint:")), len(above))
    return " ".join(re.sub(r"(?i)^hint:\s*", "", t) for t in above[first:] if t).strip()


def _replace_regions(source: str, begin: str, end: str, where: str, make) -> str:
    """``source`` with each region (markers included) replaced by ``make(lines, b, e)``,
    indented as the begin marker was."""
    lines = source.split("\n")
    for b, e in reversed(_regions(lines, begin, end, where)):
        indent = lines[b][:len(lines[b]) - len(lines[b].lstrip())]
        lines[b:e + 1] = [indent + line for line in make(lines, b, e)]
    return "\n".join(lines)


def stub_message(grade_id: str, hint: str) -> str:
    """The message an unfinished exercise raises in the student edition."""
    message = f"Exercise {grade_id} is not implemented yet."
    return f"{message} Hint: {hint}" if hint else message


def _stub(source: str, grade_id: str, where: str) -> str:
    def make(lines, b, e):
        text = stub_message(grade_id, _hint(lines, b)).replace("\\", "\\\\").replace('"', '\\"')
        return [f'raise NotImplementedError("{text}")']
    return _replace_regions(source, BEGIN, END, where, make)


def answer_names(region: str, where: str = "self-check") -> list[str]:
    """Names assigned in a self-check answer region (simple assignments only)."""
    try:
        body = ast.parse(textwrap.dedent(region)).body
    except SyntaxError as exc:
        raise ValueError(f"{where}: the self-check answer is not valid Python ({exc}).") from exc
    names: list[str] = []
    for node in body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [None])
        names += [leaf for t in targets for leaf in (t.elts if isinstance(t, ast.Tuple) else [t])]
    if not all(isinstance(leaf, ast.Name) for leaf in names):
        raise ValueError(f"{where}: a self-check answer region holds only simple assignments "
                         f"to plain names (`answer = \"b\"`).")
    return list(dict.fromkeys(leaf.id for leaf in names))


def _blank(source: str, where: str) -> str:
    def make(lines, b, e):
        names = answer_names("\n".join(lines[b + 1:e]), where)
        return [f"{name} = None  # your answer" for name in names]
    return _replace_regions(source, BEGIN, END, where, make)


def _offset(lines: list[str], lineno: int, col: int) -> int:
    """Character offset in ``"\n".join(lines)`` of ast's (1-based line, UTF-8 byte column)."""
    line = lines[lineno - 1]
    return sum(len(x) + 1 for x in lines[:lineno - 1]) + len(
        line.encode("utf-8")[:col].decode("utf-8"))


def seal_choices(source: str, where: str = "self-check") -> str:
    """``source`` with the literal options of every ``check_choice`` call :func:`checks.seal`-ed.

    The feedback of a wrong option ("no: ...") would show the answer before the learner
    chooses; sealed, it shows only once an option is checked. Options that are not a literal
    dict of strings are left as they are.

    Examples:
        >>> cell = 'checks.check_choice(answer, key=k, options={"a": "no: ...", "b": "yes"})'
        >>> out = seal_choices(cell)
        >>> "no: ..." in out, out.startswith('checks.check_choice(answer, key=k, options=("sealed:')
        (False, True)
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{where}: not valid Python ({exc}).") from exc
    lines = source.split("\n")
    spans = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(
                node.func, "attr", getattr(node.func, "id", None)) == "check_choice"):
            continue
        values = [kw.value for kw in node.keywords if kw.arg == "options"] + node.args[1:2]
        for value in values:
            if not isinstance(value, ast.Dict):
                continue
            try:
                options = ast.literal_eval(value)
                sealed = checks.seal(options)
            except ValueError:
                continue
            chunks = [sealed[i:i + 72] for i in range(0, len(sealed), 72)]
            text = "(" + "\n    ".join(f'"{c}"' for c in chunks) + ")"
            spans.append((_offset(lines, value.lineno, value.col_offset),
                          _offset(lines, value.end_lineno, value.end_col_offset), text))
    for start, end, text in sorted(spans, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def graded_cells(nb, name: str = "notebook") -> list[Exercise]:
    """The graded exercises of a teacher notebook, checked against the contract.

    Raises ValueError for a solution cell not directly followed by its ``<grade_id>_tests``
    cell, a test cell without positive points, or a grade_id used twice.
    """
    exercises: list[Exercise] = []
    for i, cell in enumerate(nb.cells):
        tags, where = _tags(cell), _where(name, i, cell)
        if TESTS in tags and not (i and SOLUTION in _tags(nb.cells[i - 1])):
            raise ValueError(f"{where}: a graded-tests cell must directly follow its "
                             f"graded-solution cell.")
        if SOLUTION not in tags:
            continue
        gid = _grade_id(cell)
        test = nb.cells[i + 1] if i + 1 < len(nb.cells) else {}
        if not gid or _grade_id(test) != f"{gid}_tests" or TESTS not in _tags(test):
            raise ValueError(f"{where}: a graded-solution cell needs an nbgrader grade_id and, "
                             f"right after it, a graded-tests cell with grade_id {gid}_tests.")
        points = test["metadata"]["nbgrader"].get("points")
        if not isinstance(points, (int, float)) or points <= 0:
            raise ValueError(f"{_where(name, i + 1, test)}: needs positive nbgrader `points`.")
        if gid in {ex.grade_id for ex in exercises}:
            raise ValueError(f"{where}: grade_id {gid!r} is used twice.")
        exercises.append(Exercise(gid, points, i, i + 1))
    return exercises


def _clean(nb) -> None:
    """Clear outputs, execution counts, run timings and widget state, in place."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


def student_notebook(nb, name: str = "notebook", *, for_nbgrader: bool = False):
    """The student edition of teacher notebook ``nb`` (a new notebook; ``nb`` is unchanged).

    ``for_nbgrader``: the copy nbgrader starts from (solution and hidden-test regions left to
    nbgrader, self-checks blanked without nbgrader metadata). Raises ValueError for a
    malformed region or a marker in a cell not tagged for it (the answer would show).
    """
    graded_cells(nb, name)
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if TEACHER_ONLY not in _tags(c)]
    for i, cell in enumerate(out.cells):
        tags, where = _tags(cell), _where(name, i, cell)
        if SELF_CHECK in tags:
            cell.source = seal_choices(_blank(cell.source, where), where)
            if for_nbgrader:
                cell.metadata.pop("nbgrader", None)
        elif for_nbgrader:
            continue
        elif SOLUTION in tags:
            cell.source = _stub(cell.source, _grade_id(cell), where)
        elif TESTS in tags:
            cell.source = _replace_regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, where,
                                           lambda lines, b, e: [])
        left = {line.strip() for line in cell.source.split("\n")} & {
            BEGIN, END, BEGIN_HIDDEN, END_HIDDEN}
        if left:
            raise ValueError(f"{where}: {sorted(left)} in a cell not tagged for it "
                             f"({SOLUTION}, {TESTS}, {SELF_CHECK} or {TEACHER_ONLY}).")
    _clean(out)
    return out


def notebook_bytes(nb) -> bytes:
    """Stable serialization: nbformat's sorted-key JSON and one trailing newline."""
    nbformat.validate(nb)
    return (nbformat.writes(nb) + "\n").encode()


def _write(path: Path, nb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, notebook_bytes(nb)) or path


def _nbgrader_release(sources: dict[str, Any], out: Path) -> list[Path]:
    """``nbgrader generate_assignment`` on ``sources`` (name -> notebook), copied to ``out``."""
    with tempfile.TemporaryDirectory(prefix="nbgrader-course-") as tmp:
        root = Path(tmp)
        for name, nb in sources.items():
            (root / "source" / name).mkdir(parents=True)
            (root / "source" / name / f"{name}.ipynb").write_bytes(notebook_bytes(nb))
        result = subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", "*", "--no-db", "--force",
             f"--CourseDirectory.root={root}", "--log-level=ERROR"],
            cwd=root, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"nbgrader generate_assignment failed:\n{result.stderr[-3000:]}")
        return [_write(out / name / f"{name}.ipynb",
                       nbformat.read(root / "release" / name / f"{name}.ipynb", as_version=4))
                for name in sources]


def generate(src_dir: str | Path = NOTEBOOKS, out_dir: str | Path = CLASSROOM, *,
             release: bool | None = None) -> list[Path]:
    """Write ``out_dir/student/NN_*.ipynb`` and ``out_dir/release/NN_name/NN_name.ipynb``.

    ``NN_*`` files of notebooks no longer in ``src_dir`` are removed. ``release``: make the
    nbgrader release (``None``: if nbgrader is installed). Returns the paths written.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    teacher = {p.stem: nbformat.read(p, as_version=4) for p in sorted(src_dir.glob(PATTERN))}
    if not teacher:
        raise FileNotFoundError(f"No teacher notebooks {PATTERN} in {src_dir}.")
    students = out_dir / "student"
    written = [_write(students / f"{n}.ipynb", student_notebook(nb, n))
               for n, nb in teacher.items()]
    for stale in set(students.glob(PATTERN)) - set(written):
        stale.unlink()
    if release is None and importlib.util.find_spec("nbgrader") is None:
        print("release/ skipped: nbgrader is not installed (pip install -e '.[classroom]').",
              file=sys.stderr)
    elif release is not False:
        sources = {n: student_notebook(nb, n, for_nbgrader=True) for n, nb in teacher.items()}
        written += _nbgrader_release(sources, out_dir / "release")
        for stale in (out_dir / "release").glob("[0-9][0-9]_*"):
            if stale.name not in teacher:
                shutil.rmtree(stale)
    return written


def refused_imports(source: str) -> list[str]:
    """Modules (or import-like names) a solution uses outside :data:`ALLOWED_IMPORTS`."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:  # magics and shell escapes become get_ipython() calls first
        tree = ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return []  # it fails on its own when run
    refused = set()
    for node in ast.walk(tree):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   ["." * node.level + (node.module or "")] if isinstance(node, ast.ImportFrom)
                   else [])
        refused |= {m for m in modules if m.split(".")[0] not in ALLOWED_IMPORTS}
        name = getattr(node, "id", None) or getattr(node, "attr", None)
        refused |= {name} & _FORBIDDEN_NAMES
    return sorted(refused)


def execute(nb, cwd: str | Path, timeout: float = 300,
            notebook_timeout: float = 3600) -> dict[int, str]:
    """Run the code cells of ``nb`` in place, one by one, errors allowed, in ``cwd``.

    Returns ``{cell index: "passed" | "failed: <error name>" | "timeout"}`` for each code
    cell run; cells past ``notebook_timeout`` seconds (counted from the kernel's start, not
    including it) or after a dead kernel are absent.
    """
    quiet_jupyter()
    timed_out: set[int] = set()

    def note_timeout(cell, cell_index, execute_reply):
        if (execute_reply or {}).get("content", {}).get("ename") == _TIMEOUT:
            timed_out.add(cell_index)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, on_cell_executed=note_timeout,
                            error_on_timeout={"ename": _TIMEOUT, "evalue": "", "traceback": []},
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                            resources={"metadata": {"path": str(cwd)}}, log=_LOG)
    results: dict[int, str] = {}
    try:
        with client.setup_kernel():
            # the budget starts with a running kernel: a slow start (a loaded machine) must
            # not eat the notebook's time
            deadline = time.monotonic() + notebook_timeout
            for i, cell in ((i, c) for i, c in enumerate(nb.cells)
                            if c.cell_type == "code" and c.source.strip()):
                if (left := deadline - time.monotonic()) <= 0:
                    break
                client.timeout = math.ceil(min(timeout, left))
                try:
                    client.execute_cell(cell, i)
                except DeadKernelError:
                    results[i] = "failed: DeadKernelError"
                    break
                errors = [o.ename for o in cell.outputs if o.output_type == "error"]
                results[i] = ("timeout" if i in timed_out else
                              f"failed: {errors[0]}" if errors else "passed")
    except Exception as exc:  # a kernel that cannot start or stop must not stop the class
        print(f"kernel trouble ({exc!r}); the cells not reached count as not run",
              file=sys.stderr)
    return results


def _grade_notebook(path: Path, teacher, teacher_dir: Path, timeout: float,
                    notebook_timeout: float) -> dict[str, str]:
    """``{grade_id: status}`` for one submitted notebook."""
    exercises = {ex.grade_id: ex for ex in graded_cells(teacher, path.stem)}
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        print(f"{path}: unreadable ({exc}); its exercises count as not run", file=sys.stderr)
        return dict.fromkeys(exercises, "not run")
    tests, cells, placed = {f"{gid}_tests" for gid in exercises}, [], set()
    for cell in (c for c in nb.cells if _grade_id(c) not in tests):
        cells.append(cell)
        gid = _grade_id(cell)
        if gid in exercises and gid not in placed:  # the teacher's tests, hidden ones too
            cells.append(copy.deepcopy(teacher.cells[exercises[gid].tests]))
            placed.add(gid)
    cells += [copy.deepcopy(teacher.cells[ex.tests]) for gid, ex in exercises.items()
              if gid not in placed]  # solution deleted: its tests still run (and fail)
    nb.cells, status = cells, {}
    _clean(nb)
    index = {gid: i for i, gid in reversed(list(enumerate(map(_grade_id, cells))))}
    for cell in cells:
        refused = refused_imports(cell.source) if _grade_id(cell) in exercises else []
        if refused:
            status[_grade_id(cell)] = "disallowed import"
            cell.source = f"# refused by the autograder: {', '.join(refused)}"
            cells[index[f"{_grade_id(cell)}_tests"]].source = "# not run: disallowed import"
    ran = execute(nb, teacher_dir, timeout, notebook_timeout)
    for gid in exercises:
        solution = ran.get(index.get(gid, -1))
        status.setdefault(gid, ran.get(index[f"{gid}_tests"]) or
                          ("timeout" if solution == "timeout" else "not run"))
    return status


def grade(submissions: str | Path, teacher_dir: str | Path = NOTEBOOKS, timeout: float = 300,
          *, notebook_timeout: float = 3600, out: str | Path | None = None) -> list[dict]:
    """Grade ``submissions/<student>/NN_*.ipynb`` against the teacher notebooks.

    Args:
        submissions: one folder per student holding their notebooks.
        teacher_dir: the teacher notebooks; submitted notebooks run with it as cwd.
        timeout: seconds allowed per cell.
        notebook_timeout: seconds allowed per notebook; cells after it count as not run.
        out: also write the rows there, as CSV.

    Returns one dict per exercise: student, notebook, grade_id, points, max_points, status.
    """
    submissions, teacher_dir = Path(submissions), Path(teacher_dir)
    if not submissions.is_dir():
        raise FileNotFoundError(f"No folder {submissions} (of <student>/NN_name.ipynb).")
    rows = []
    for path in sorted(submissions.glob(f"*/{PATTERN}")):
        if not (teacher_dir / path.name).exists():
            print(f"{path}: no teacher notebook of that name; skipped", file=sys.stderr)
            continue
        teacher = nbformat.read(teacher_dir / path.name, as_version=4)
        status = _grade_notebook(path, teacher, teacher_dir, timeout, notebook_timeout)
        rows += [dict(zip(FIELDS, (path.parent.name, path.name, ex.grade_id,
                                   ex.points if status[ex.grade_id] == "passed" else 0,
                                   ex.points, status[ex.grade_id]), strict=True))
                 for ex in graded_cells(teacher, path.stem)]
    if out is not None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([FIELDS] + [[*r.values()] for r in rows])
        atomic_write(Path(out), buffer.getvalue().encode())
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write classroom/student and classroom/release")
    gen.add_argument("--src", default=NOTEBOOKS, type=Path, help="teacher notebooks")
    gen.add_argument("--out", default=CLASSROOM, type=Path, help="classroom folder")
    gra = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/NN_*.ipynb")
    gra.add_argument("submissions", type=Path)
    gra.add_argument("--teacher", default=NOTEBOOKS, type=Path)
    gra.add_argument("--out", default=Path("grades.csv"), type=Path)
    gra.add_argument("--timeout", default=300, type=float, help="seconds per cell")
    gra.add_argument("--notebook-timeout", default=3600, type=float, help="per notebook")
    args = parser.parse_args(argv)
    if args.command == "generate":
        print("\n".join(map(str, generate(args.src, args.out))))
        return
    rows = grade(args.submissions, args.teacher, args.timeout,
                 notebook_timeout=args.notebook_timeout, out=args.out)
    for student, notebook in dict.fromkeys((r["student"], r["notebook"]) for r in rows):
        mine = [r for r in rows if (r["student"], r["notebook"]) == (student, notebook)]
        print(f"{student:20s} {notebook:40s} {sum(r['points'] for r in mine):g}/"
              f"{sum(r['max_points'] for r in mine):g}")
    print(f"{len(rows)} exercises graded; rows in {args.out}")

if __name__ == "__main__":
    main()
