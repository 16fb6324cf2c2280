"""Classroom edition (pruning_kit.classroom): student notebooks, nbgrader release, autograder.

The fixture ``tests/fixtures/classroom_mini.ipynb`` is a tiny teacher notebook in the
contract's format (two graded exercises on numpy, a self-check, a teacher-only cell, a later
cell using numpy); it runs in about two seconds. The last tests read the real notebooks
without executing them.
"""

import ast
import copy
import json
import re
from pathlib import Path

import nbformat
import pytest

from pruning_kit import checks, classroom

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "classroom_mini.ipynb"
NOTEBOOKS = sorted((ROOT / "notebooks").glob(classroom.PATTERN))
STUDENT = ROOT / "classroom" / "student"
MARKED = {classroom.SOLUTION, classroom.TESTS, classroom.SELF_CHECK, classroom.TEACHER_ONLY}


def teacher():
    return nbformat.read(FIXTURE, as_version=4)


def tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def with_region(nb, k, body):
    """A copy of teacher notebook ``nb`` with exercise ``k``'s solution region replaced."""
    nb = copy.deepcopy(nb)
    cell = nb.cells[classroom.graded_cells(nb)[k].solution]
    cell.source = classroom._replace_regions(cell.source, classroom.BEGIN, classroom.END, "t",
                                             lambda lines, b, e: body.split("\n"))
    return nb


# Structural checks, run on the fixture and on every real notebook.

def untouched_cells_differ(teacher_nb, student_nb):
    """Cells the student edition must copy verbatim but doesn't (ids of the offenders)."""
    kept = [c for c in teacher_nb.cells if classroom.TEACHER_ONLY not in c.metadata.get("tags", [])]
    assert [c.get("id") for c in kept] == [c.get("id") for c in student_nb.cells]
    return [t.get("id") for t, s in zip(kept, student_nb.cells, strict=True)
            if not MARKED & set(t.metadata.get("tags", [])) and t.source != s.source]


def later_uses(nb):
    """Code cells after a graded solution (other than its tests) naming its my_ function."""
    found = []
    for ex in classroom.graded_cells(nb):
        name = re.search(r"^def (my_\w+)\s*\(", nb.cells[ex.solution].source, re.MULTILINE)
        assert name, f"{ex.grade_id}: the solution cell defines no my_ function"
        found += [(name.group(1), i) for i, c in enumerate(nb.cells)
                  if i > ex.solution and i != ex.tests and c.cell_type == "code"
                  and re.search(rf"\b{name.group(1)}\b", c.source)]
    return found


def blank_self_checks(teacher_nb, student_nb):
    """Ids of self-check cells whose student copy is not the teacher's with each answer
    region replaced by ``name = None  # your answer`` lines."""
    student = {c.get("id"): c.source for c in student_nb.cells}
    blank = r"[ \t]*\w+ = None  # your answer"
    wrong = []
    for cell in tagged(teacher_nb, classroom.SELF_CHECK):
        parts, inside = [], False
        for line in classroom.seal_choices(cell.source).split("\n"):
            if line.strip() in (classroom.BEGIN, classroom.END):
                inside = line.strip() == classroom.BEGIN
                parts += [f"{blank}(?:\n{blank})*"] if inside else []
            elif not inside:
                parts.append(re.escape(line))
        has_region = any(part.startswith(blank) for part in parts)
        if not has_region or not re.fullmatch("\n".join(parts), student.get(cell.get("id"), "")):
            wrong.append(cell.get("id"))
    return wrong


# The student edition, on the fixture.

def test_student_edition_has_stubs_with_hints_and_nothing_of_the_teacher():
    nb = teacher()
    before = nbformat.writes(nb)
    student = classroom.student_notebook(nb, "99_mini")
    assert nbformat.writes(nb) == before  # the teacher notebook is left as it came
    solutions = tagged(student, classroom.SOLUTION)
    assert [c.source.split("\n")[-1] for c in solutions] == [
        '    raise NotImplementedError("Exercise 99_normalize is not implemented yet. Hint: '
        'np.abs(x).max() is the largest magnitude; guard against dividing by zero.")',
        '    raise NotImplementedError("Exercise 99_sparsity is not implemented yet. Hint: '
        '(w == 0) is a boolean array; its mean is the fraction.")']
    assert "# Hint: np.abs(x).max()" in solutions[0].source  # the hint comment stays
    text = nbformat.writes(student)
    for gone in ("BEGIN", "END SOLUTION", "HIDDEN", "default_rng(seed)", "peak = ",
                 "teacher edition", "3 * 4"):
        assert gone not in text, gone
    assert tagged(student, classroom.TEACHER_ONLY) == []
    assert tagged(student, classroom.SELF_CHECK)[0].source == (
        "my_count = None  # your answer\ncheck_count(my_count)")
    assert blank_self_checks(nb, student) == []
    assert len(tagged(student, classroom.TESTS)) == 2
    assert untouched_cells_differ(nb, student) == []
    assert later_uses(nb) == []


def test_outputs_and_widget_state_are_cleared_and_bytes_are_stable(tmp_path):
    nb = teacher()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", text="ran\n")]
            cell.execution_count = 7
            cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    (tmp_path / "src").mkdir()
    nbformat.write(nb, tmp_path / "src" / "99_mini.ipynb")
    first = classroom.generate(tmp_path / "src", tmp_path / "a", release=False)
    second = classroom.generate(tmp_path / "src", tmp_path / "b", release=False)
    assert [p.name for p in first] == ["99_mini.ipynb"]
    assert first[0].read_bytes() == second[0].read_bytes()
    student = nbformat.read(first[0], as_version=4)
    assert "widgets" not in student.metadata
    for cell in student.cells:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        assert "execution" not in cell.metadata
    (tmp_path / "a" / "student" / "00_gone.ipynb").write_text("{}")  # a renamed lesson
    classroom.generate(tmp_path / "src", tmp_path / "a", release=False)
    assert not (tmp_path / "a" / "student" / "00_gone.ipynb").exists()


def test_nbgrader_release_layout(tmp_path):
    pytest.importorskip("nbgrader", reason="release/ needs nbgrader: pip install -e '.[classroom]'")
    (tmp_path / "src").mkdir()
    nbformat.write(teacher(), tmp_path / "src" / "99_mini.ipynb")
    paths = classroom.generate(tmp_path / "src", tmp_path / "out")
    release = tmp_path / "out" / "release" / "99_mini" / "99_mini.ipynb"
    assert release in paths
    data = release.read_bytes()
    nb = nbformat.read(release, as_version=4)
    assert len(classroom.graded_cells(nb)) == 2
    solution = tagged(nb, classroom.SOLUTION)[0]
    assert "# YOUR CODE HERE" in solution.source and "checksum" in solution.metadata.nbgrader
    assert tagged(nb, classroom.TESTS)[0].metadata.nbgrader.locked
    assert "HIDDEN" not in data.decode() and "teacher edition" not in data.decode()
    assert tagged(nb, classroom.SELF_CHECK)[0].source.startswith("my_count = None")
    assert data == classroom.notebook_bytes(nb)  # written by the stable writer


@pytest.mark.parametrize("edit, message", [
    (lambda nb: nb.cells[1].__setitem__("source", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"),
     "not tagged"),
    (lambda nb: nb.cells.pop(3), "directly follow"),
    (lambda nb: nb.cells[9].__setitem__("source", "### BEGIN SOLUTION\nprint(1)\n"
                                                  "### END SOLUTION"), "simple assignments"),
    (lambda nb: nb.cells[3].__setitem__("source", "def my_f():\n    ### BEGIN SOLUTION\n"),
     "closed"),
])
def test_malformed_teacher_notebooks_are_refused(edit, message):
    nb = teacher()
    edit(nb)
    with pytest.raises(ValueError, match=message):
        classroom.student_notebook(nb)


def test_structural_checks_catch_violations():
    nb = teacher()
    nb.cells[10].source += "\nprint(my_sparsity(w))"
    assert later_uses(nb) == [("my_sparsity", 10)]
    student = classroom.student_notebook(teacher())
    student.cells[1].source += "\n# edited"
    assert untouched_cells_differ(teacher(), student) == ["setup"]
    student.cells[9].source = "my_count = 12\ncheck_count(my_count)"
    assert blank_self_checks(teacher(), student) == ["check-1"]


@pytest.mark.parametrize("source, refused", [
    ("import numpy as np\nfrom jax import numpy as jnp\nimport jax.numpy\nfrom math import e\n"
     "import collections.abc\nimport optax", []),
    ("import os", ["os"]),
    ("def f():\n    from pruning_kit import prune\n    return prune", ["pruning_kit"]),
    ("from . import x", ["."]),
    ("m = __import__('os')", ["__import__"]),
    ("!pip install cheat", ["get_ipython"]),
    ("def f(:\n", []),  # a syntax error fails on its own when run
])
def test_refused_imports(source, refused):
    assert classroom.refused_imports(source) == refused


# The autograder, on five synthetic submissions of the fixture.

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("classroom")
    (root / "teacher").mkdir()
    nbformat.write(teacher(), root / "teacher" / "99_mini.ipynb")
    hidden_cut = classroom.student_notebook(teacher(), "99_mini")
    submissions = {
        "all": teacher(),
        "none": hidden_cut,
        "wrong": with_region(teacher(), 1, "return 0.5"),
        "loop": with_region(teacher(), 0, "while True:\n    pass"),
        "cheat": with_region(teacher(), 1, "import os\nreturn float(np.mean(w == 0))"),
    }
    for student, nb in submissions.items():
        (root / "subs" / student).mkdir(parents=True)
        nbformat.write(nb, root / "subs" / student / "99_mini.ipynb")
    rows = classroom.grade(root / "subs", root / "teacher", timeout=3, out=root / "grades.csv")
    return rows, (root / "grades.csv").read_text()


def scores(rows, student):
    return {r["grade_id"]: (r["points"], r["status"]) for r in rows if r["student"] == student}


def test_autograder_full_zero_and_partial(graded):
    rows, _ = graded
    assert scores(rows, "all") == {"99_normalize": (2, "passed"), "99_sparsity": (3, "passed")}
    assert scores(rows, "none") == {"99_normalize": (0, "failed: NotImplementedError"),
                                    "99_sparsity": (0, "failed: NotImplementedError")}
    assert scores(rows, "wrong") == {"99_normalize": (2, "passed"),
                                     "99_sparsity": (0, "failed: AssertionError")}
    assert {r["max_points"] for r in rows if r["grade_id"] == "99_sparsity"} == {3}


def test_autograder_survives_a_loop_and_refuses_an_import(graded):
    rows, _ = graded
    assert scores(rows, "loop") == {"99_normalize": (0, "timeout"), "99_sparsity": (3, "passed")}
    assert scores(rows, "cheat") == {"99_normalize": (2, "passed"),
                                     "99_sparsity": (0, "disallowed import")}


def test_autograder_csv(graded):
    rows, text = graded
    lines = text.splitlines()
    assert lines[0] == "student,notebook,grade_id,points,max_points,status"
    assert len(lines) == 1 + len(rows) == 11
    assert "wrong,99_mini.ipynb,99_sparsity,0,3,failed: AssertionError" in lines


def test_notebook_time_limit_stops_a_notebook_not_the_class():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (
        "x = 1", "while True:\n    pass", "print(x)")])
    ran = classroom.execute(nb, FIXTURE.parent, timeout=60, notebook_timeout=3)
    assert ran == {0: "passed", 1: "timeout"}  # cell 2: not run


def test_grade_rejects_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="student"):
        classroom.grade(tmp_path / "nope")


# The real notebooks (no execution). They go green once the notebooks carry graded cells.

@pytest.fixture(scope="module")
def course():
    return {p.stem: nbformat.read(p, as_version=4) for p in NOTEBOOKS}


def test_committed_student_notebooks_are_current(course):
    if not STUDENT.exists():
        pytest.skip("classroom/student does not exist yet: run `make classroom` and commit it")
    committed = sorted(p.stem for p in STUDENT.glob(classroom.PATTERN))
    assert committed == sorted(course), "run `make classroom` (student notebooks out of date)"
    for name, nb in course.items():
        assert (STUDENT / f"{name}.ipynb").read_bytes() == classroom.notebook_bytes(
            classroom.student_notebook(nb, name)), f"{name}: run `make classroom`"


def test_every_notebook_has_graded_exercises(course):
    counts = {name: len(classroom.graded_cells(nb, name)) for name, nb in course.items()}
    assert len(counts) == 7 and all(n >= 2 for n in counts.values()), counts
    assert sum(counts.values()) >= 14, counts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_student_edition_of_each_notebook(path):
    nb = nbformat.read(path, as_version=4)
    student = classroom.student_notebook(nb, path.stem)
    assert untouched_cells_differ(nb, student) == []
    assert later_uses(nb) == [], "later cells must use the package, not the learner's my_*"
    assert blank_self_checks(nb, student) == []
    for cell in tagged(student, classroom.SOLUTION):
        assert "is not implemented yet. Hint: " in cell.source, cell.source


def choice_options(source):
    """The ``options`` value of each ``check_choice`` call in ``source``, evaluated (None
    where they are computed, e.g. f-strings: those cannot be sealed in advance)."""
    def value(node):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None
    return [value(kw.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "check_choice"
            for kw in node.keywords if kw.arg == "options"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_student_edition_seals_multiple_choice_feedback(path):
    nb = nbformat.read(path, as_version=4)
    student = {c.get("id"): c.source for c in classroom.student_notebook(nb, path.stem).cells}
    found = 0
    for cell in tagged(nb, classroom.SELF_CHECK):
        for teacher_opts, sealed in zip(choice_options(cell.source),
                                        choice_options(student[cell.get("id")]), strict=True):
            if teacher_opts is None:                  # computed options stay as written
                assert sealed is None
                continue
            found += 1
            assert isinstance(sealed, str) and sealed.startswith(checks.SEALED)
            assert checks._unseal(sealed) == teacher_opts
            for line in teacher_opts.values():        # no feedback line shows in clear
                assert line not in student[cell.get("id")]
    if path.name.startswith(("00", "01", "05", "06")):
        assert found, f"{path.name}: expected multiple-choice self-checks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_multiple_choice_questions_list_their_options_and_salt_their_keys(path):
    """The student edition seals the options, so the question itself must list them, as
    ``(a) ...`` or ``"name"``; and a key salted with its options differs between questions."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "check_choice(" not in cell.source:
            continue
        question = nb.cells[i - 1]
        assert question.cell_type == "markdown", f"{path.name} cell {i}: no question above"
        (opts,) = choice_options(cell.source)
        assert isinstance(opts, dict), \
            f"{path.name} cell {i}: write the options as a literal dict, so they can be sealed"
        for name in opts:
            shown = (f"({name})", f'"{name}"')
            assert any(s in question.source for s in shown), \
                f"{path.name} cell {i - 1}: the question does not list option {name!r}"
        answer = re.search(r'answer = "([^"]+)"', cell.source).group(1)
        key = re.search(r'key="([0-9a-f]{12})"', cell.source).group(1)
        assert key == checks.answer_key(answer, opts), \
            f"{path.name} cell {i}: build the key with checks.answer_key(letter, options)"


def test_sealed_options_check_like_the_open_ones(capsys):
    opts = {"a": "no: the codes are the same width.", "b": "yes: one MAC per weight — always."}
    cell = f"checks.check_choice(answer, key={checks.answer_key('b')!r}, options={opts!r})"
    sealed = classroom.seal_choices(cell)
    assert "MAC" not in sealed and classroom.seal_choices(sealed) == sealed
    for answer in ("b", "a", None):
        outcomes = []
        for source in (cell, sealed):
            try:
                exec(source, {"checks": checks, "answer": answer})
                outcomes.append(capsys.readouterr().out)
            except checks.CheckFailed as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], outcomes
    with pytest.raises(ValueError, match="damaged"):
        checks.check_choice("a", checks.SEALED + "not base64!", key=checks.answer_key("a"))


def test_guide_compute_times_are_the_recorded_ones():
    """The classroom guide's compute-time column is notebooks/timings.json, not a drifting copy."""
    root = Path(__file__).resolve().parents[1]
    recorded = json.loads((root / "notebooks" / "timings.json").read_text())["seconds"]
    guide = (root / "classroom" / "README.md").read_text()
    listed = {m.group(1): float(m.group(2))
              for m in re.finditer(r"^\| (0\d) [a-z ]+\|.*\| ([\d.]+) s \|$", guide, re.M)}
    want = {k[:2]: round(v, 1) for k, v in recorded.items()}
    assert listed == want, ("update classroom/README.md's compute-time column from "
                            "notebooks/timings.json", listed, want)
    total = re.search(r"\*\*course\*\*.*\*\*([\d.]+) s\*\*", guide)
    assert total and float(total.group(1)) == round(sum(recorded.values()), 1)
