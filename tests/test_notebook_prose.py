"""The lessons' prose holds no hand-typed measured figures.

A number that depends on a run (an accuracy, a delta, bytes, milliseconds, a ratio, a
count of seconds) must be rendered from the variable that holds it (``Markdown(f"...")`` in
a code cell), so the text cannot drift from the output beside it. This test scans every
markdown cell of every notebook for a number followed by a measurement unit; setup
constants (bits, image sizes, layer widths, literature figures) are typed with other
words or sit in the allow-list below, each with its reason.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: A number followed by a unit of a measured figure.
FIGURE = re.compile(
    r"(?<![\w.\-])[-+−±~≈]?\d[\d,]*(?:\.\d+)?\s?"
    r"(?:%|pts?\b|ms\b|µs\b|us\b|[kKM]i?B\b|[kKM]B/s\b|×|x\b|s\b|seconds?\b|min\b|minutes?\b)")

#: Figures that are not measured by the course, with the reason each may be typed.
ALLOWED = {
    "1x", "2x", "4x", "8x", "16x", "32x",  # ratios of bit widths (32 / 8 = 4x by definition)
    "3x3", "1x1", "2x2", "28x28", "8x8",  # kernel and image sizes
    "0%", "50%", "100%",  # definitions (a sparsity of 0 % is the dense model)
    "2:4",
}

#: Literature figures quoted with their source, per notebook (paper numbers, not ours).
LITERATURE = {
    "00": {"35x", "49x", "40x", "39x"},  # Han et al. 2016 (AlexNet, VGG-16, LeNet)
    "05": {"35x", "49x", "40x", "39x"},
}


def handtyped_figures(path: Path) -> list[tuple[int, str, str]]:
    """``(cell index, figure, context)`` for each measured-looking figure in markdown."""
    nb = json.loads(path.read_text())
    allowed = ALLOWED | LITERATURE.get(path.name[:2], set())
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        text = re.sub(r"\$[^$]*\$", " ", text)          # LaTeX: symbols, not measurements
        text = re.sub(r"`[^`]*`", " ", text)            # code: names and literals
        text = re.sub(r"\]\([^)]*\)", "]", text)        # link targets
        for m in FIGURE.finditer(text):
            fig = m.group(0).strip().lstrip("-+−±~≈").replace(" ", "")
            if fig in allowed:
                continue
            found.append((i, m.group(0).strip(), text[max(0, m.start() - 40):m.end() + 20]))
    return found


def test_scanner_finds_what_it_should(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": [
        "Accuracy fell by 0.47 pt to 89.4 % and the file is 25.3 kB; 3.2x faster in 12 ms. "
        "A 3x3 kernel, `x_test[:10]`, $2^8$ levels, 8x fewer bits than 32x."]}]}
    p = tmp_path / "99_demo.ipynb"
    p.write_text(json.dumps(nb))
    figures = [f for _, f, _ in handtyped_figures(p)]
    assert figures == ["0.47 pt", "89.4 %", "25.3 kB", "3.2x", "12 ms"]


def test_no_handtyped_measured_figures_in_lessons():
    problems = [f"{p.name} cell {i}: {fig!r} in ...{ctx!r}..."
                for p in NOTEBOOKS for i, fig, ctx in handtyped_figures(p)]
    assert not problems, (
        "Measured figures typed by hand in markdown (render them from their variable with "
        "Markdown(f'...') in a code cell, or add a setup constant to ALLOWED with its "
        "reason):\n" + "\n".join(problems))
