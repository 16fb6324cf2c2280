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
