"""Project hygiene: one source of dependencies, notebooks committed executed."""

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_only_wraps_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = (ROOT / "environment.yml").read_text()
    section = env.split("dependencies:", 1)[1]
    deps = [line.strip()[2:].strip() for line in section.splitlines()
            if line.strip().startswith("- ")]
    conda = [d for d in deps if not d.startswith("-e ") and d != "pip:"]
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"], (
        "environment.yml may only name python and pip; pin packages in pyproject.toml")
    py = next(d for d in conda if d.startswith("python"))
    minimum = re.search(r">=\s*([\d.]+)", pyproject["project"]["requires-python"]).group(1)
    assert py.split("=")[1].startswith(minimum)
    editable = [d for d in deps if d.startswith("-e ")]
    assert len(editable) == 1
    extras = re.search(r"\[(.*)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"])
    assert "notebooks" in extras


def test_pyproject_declares_what_the_brief_requires():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {re.split(r"[<>=\[ ]", d)[0].lower()
             for group in [pyproject["project"]["dependencies"],
                           *pyproject["project"]["optional-dependencies"].values()]
             for d in group}
    assert {"jax", "flax", "optax", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "tqdm",
            "scikit-learn", "pytest", "nbval", "hypothesis"} <= names


def test_notebooks_are_numbered_and_committed_executed():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        assert re.match(r"\d\d_[a-z0-9_]+\.ipynb$", path.name), path.name
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(c["execution_count"] is not None for c in code), (
            f"{path.name} must be committed executed (make notebooks)")
        text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        for section in ("Learning objectives", "Check your understanding", "Summary",
                        "Exercises"):
            assert section in text, f"{path.name} lacks a '{section}' section"


def _hashes():
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}


def test_course_target_leaves_the_committed_notebooks_alone(tmp_path):
    import subprocess
    import sys

    from pruning_kit import course
    before = _hashes()
    dry = subprocess.run(["make", "-n", "-B", "course", "OPEN=0"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout
    assert "pruning_kit.course prepare" in dry and "--inplace" not in dry
    assert "nbconvert" not in dry and "course execute" not in dry
    subprocess.run([sys.executable, "-m", "pruning_kit.course", "prepare", "--dest",
                    str(tmp_path)], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    (tmp_path / next(iter(before))).write_text("{}")      # a learner's edit
    assert course.prepare(tmp_path) == []                 # ... is never overwritten
    assert (tmp_path / next(iter(before))).read_text() == "{}"
    assert _hashes() == before


def test_explorers_are_visible_before_running():
    """Committed notebooks carry widget state, and each explorer says how to make it live."""
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        views = [o for c in nb["cells"] if c["cell_type"] == "code"
                 for o in c.get("outputs", [])
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        if not views:
            continue
        state = nb["metadata"].get("widgets", {}).get(
            "application/vnd.jupyter.widget-state+json", {}).get("state", {})
        for view in views:
            model_id = view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
            assert model_id in state, f"{path.name}: widget {model_id} has no saved state"
        text = "".join("".join(c["source"]) for c in nb["cells"]
                       if c["cell_type"] == "markdown")
        assert "run this cell to make it live" in text.lower(), path.name


def test_no_course_layout_is_written_outside_models():
    """Model structure is read from the model (traced graph), not from tables of the course
    classes' layer names: no function outside models.py names a course model's layers."""
    from benchmarks.structure_any import handwritten_layouts

    assert handwritten_layouts() == []


def _package_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| module | what it holds |")
    table = text[start:text.index("\n\n", start)]
    first = [line.split("|")[1] for line in table.splitlines()[2:]]
    return set(re.findall(r"`(?:pruning_kit\.)?([a-z_0-9]+)`", " ".join(first)))


def test_readme_package_table_names_every_module():
    modules = {p.stem for p in (ROOT / "pruning_kit").glob("*.py")} - {"__init__"}
    named = _package_table()
    assert modules - named == set(), f"README's package table misses {sorted(modules - named)}"
    assert named - modules == set(), f"README's package table names {sorted(named - modules)}"


def _imports(path: Path) -> set[str]:
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pruning_kit":
                found |= {a.name for a in node.names}
            elif node.module.startswith("pruning_kit."):
                found.add(node.module.split(".")[1])
                if any(a.name.startswith("_") for a in node.names):
                    found.add("<private>")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("pruning_kit.")}
    return found


def test_package_has_no_import_cycle_and_no_private_imports():
    # every import, top-level or inside a function, counts: a lazy import hides a cycle
    paths = {p.stem: p for p in (ROOT / "pruning_kit").glob("*.py") if p.stem != "__init__"}
    edges = {name: _imports(path) for name, path in paths.items()}
    private = sorted(name for name, deps in edges.items() if "<private>" in deps)
    assert private == [], f"modules importing another module's private names: {private}"
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(edges[name] & set(paths)):
            if dep == name:
                continue
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(stack + [name, dep])}"
            if dep not in state:
                visit(dep, stack + [name])
        state[name] = 2

    for name in sorted(paths):
        if name not in state:
            visit(name, [])


def test_no_module_over_600_lines():
    long = {p.name: n for p in (ROOT / "pruning_kit").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}, f"split these modules by idea: {long}"


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run_as_written(tmp_path):
    """Every Python example in README runs as printed, in a fresh interpreter started in an
    empty folder (the int8 file the second writes lands there), and prints what README
    says it prints: a table row for LeNet-300-100 and a test accuracy above 0.85. The
    cached checkpoints they load are the committed ones."""
    import os
    import subprocess
    import sys
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2, "README's Python examples were not found"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    outputs = []
    for k, code in enumerate(blocks, start=1):
        try:
            run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"README example {k} ran over 10 minutes:\n{code}") from None
        assert run.returncode == 0, f"README example {k} failed:\n{code}\n{run.stderr[-3000:]}"
        outputs.append(run.stdout)
    assert re.search(r"LeNet-300-100\s+(8[5-9]|9\d)\.\d\d%", outputs[0]), outputs[0]
    assert float(outputs[1].split()[-1]) > 0.85, outputs[1]
    assert (tmp_path / "cnn_int8.onnx").is_file()
