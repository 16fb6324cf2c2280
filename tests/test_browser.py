"""The notebooks' interactive explorers in a real browser, and their static fallback picture.

The browser test starts JupyterLab on a temporary folder holding one notebook: a setup cell
(imports, Fashion-MNIST, the committed checkpoints -- nothing is trained) and, for each
explorer a course notebook uses (``EXPLORERS``), a cell with its call (on fewer test images
and stops than the course uses, so the whole file stays within about three minutes). It
opens that notebook in headless Chromium, runs the setup cell, then per explorer runs its
cell with Shift+Enter, waits for the widget to render (a slider and the figure, not
"Loading widget..." nor a text repr), moves the slider with the keyboard and checks that
the slider's value, the readout and the figure change. Screenshots of each explorer's cell,
before and after, go to its test's ``tmp_path``. One kernel serves all explorers: each
would otherwise pay for JupyterLab's page, a kernel and the imports again.

It needs ``playwright`` (the ``test`` extra) and a Chromium (``/usr/bin/chromium``: Debian's
``chromium`` package, installed by ``.ci/run``; another path can be given in
``$PRUNING_KIT_CHROMIUM``) and is skipped, with the reason, without them.

The unit tests at the top need no browser: the table matches the notebooks, and each
explorer's display bundle carries the live widget plus an ``image/png`` and ``text/plain``
fallback for readers of a saved notebook (GitHub, PDF).
"""

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from pruning_kit import models, widgets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM = os.environ.get("PRUNING_KIT_CHROMIUM") or shutil.which("chromium") or \
    "/usr/bin/chromium"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

SETUP = """\
import matplotlib.pyplot as plt
import numpy as np

from pruning_kit import data, distill, train, widgets, zoo

plt.rcParams["figure.dpi"] = 90
fashion = data.load_fashion_mnist()
x_test, y_test = fashion.x_test[:1000], fashion.y_test[:1000]


def cached(name):  # the committed checkpoint; never trains
    return train.load_model(zoo.checkpoint_path(name, 0))


"""

# notebook -> (explorer class, the explorer's code (last line shows it), key that moves the
# slider away from its initial stop)
EXPLORERS = {
    "00_compression_and_measurement": ("LatencyExplorer", """\
explorer = widgets.LatencyExplorer(
    {"LeNet-300-100": cached("mlp_fashion"), "SmallCNN": cached("cnn_fashion")}, x_test[:256],
    batch_sizes=(1, 16, 256), runs=3, progress=False)
explorer""", "ArrowLeft"),
    "01_quantization": ("BitWidthExplorer", """\
explorer = widgets.BitWidthExplorer(cached("mlp_fashion"), x_test, y_test,
                                    bits_options=(2, 4, 8), precompute=False)
explorer""", "ArrowLeft"),
    "02_distillation": ("TemperatureExplorer", """\
picks = np.concatenate([np.flatnonzero(y_test == c)[:1] for c in (6, 5, 0, 2, 9, 4)])
t_picks = distill.teacher_logits(cached("cnn_fashion"), x_test[picks])
explorer = widgets.TemperatureExplorer(t_picks, x_test[picks], y_test[picks], fashion.classes,
                                       temperatures=(1, 2, 4, 8, 16, 32))
explorer""", "ArrowRight"),
    "03_pruning": ("SparsityExplorer", """\
explorer = widgets.SparsityExplorer(cached("mlp_fashion"), x_test, y_test,
                                    sparsities=(0.0, 0.5, 0.9), precompute=False)
explorer""", "ArrowRight"),
    "04_structural_optimization": ("RankExplorer", """\
explorer = widgets.RankExplorer(cached("mlp_fashion"), fashion.x_val[:1000],
                                fashion.y_val[:1000], ranks=(16, 64), runs=3, progress=False)
explorer""", "ArrowLeft"),
}


# ------------------------------------------------------------------ no browser needed


def test_explorer_table_matches_the_notebooks():
    used = set()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        used |= {(path.stem, name) for name in re.findall(r"widgets\.(\w+Explorer)\(", code)}
    assert used == {(nb, cls) for nb, (cls, _, _) in EXPLORERS.items()}


def _tiny_explorers(digits):
    mlp = models.MLP(64, (16,), rngs=nnx.Rngs(0))
    x, y = digits.x_test[:64], digits.y_test[:64]
    return {
        "LatencyExplorer": lambda: widgets.LatencyExplorer({"m": mlp}, x, batch_sizes=(1, 8),
                                                           runs=2, progress=False),
        "BitWidthExplorer": lambda: widgets.BitWidthExplorer(mlp, x, y, bits_options=(2, 8),
                                                             precompute=False),
        "TemperatureExplorer": lambda: widgets.TemperatureExplorer(
            np.array([[4.0, 1.0, 0.0]]), np.zeros((1, 8, 8, 1)), np.array([0]), list("abc")),
        "SparsityExplorer": lambda: widgets.SparsityExplorer(mlp, x, y, sparsities=(0.0, 0.5),
                                                             precompute=False),
        "RankExplorer": lambda: widgets.RankExplorer(mlp, x, y, ranks=(2, 8), batch_size=8,
                                                     runs=2, progress=False),
    }


@pytest.mark.parametrize("name", sorted({cls for cls, _, _ in EXPLORERS.values()}))
def test_display_bundle_has_widget_and_static_png(name, digits, monkeypatch):
    import IPython.display

    explorer = _tiny_explorers(digits)[name]()
    bundle = explorer._repr_mimebundle_()
    assert bundle[WIDGET_MIME]["model_id"] == explorer.widget.model_id   # the live widget
    png = base64.b64decode(bundle["image/png"])                          # the fallback
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert explorer.readout in bundle["text/plain"] and name in bundle["text/plain"]
    assert not {"text/html", "text/markdown"} & set(bundle)   # they would beat the PNG
    shown = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, raw=False: shown.append((obj, raw)))
    explorer._ipython_display_()                 # what a cell ending in `explorer` does
    assert len(shown) == 1 and shown[0][1] and set(shown[0][0]) == set(bundle)
    # the picture follows the controls: after a move it shows the new state
    before = bundle["image/png"]
    slider = next(w for w in vars(explorer).values() if isinstance(w, widgets.W.SelectionSlider))
    slider.index = (slider.index + 1) % len(slider.options)
    assert explorer._repr_mimebundle_()["image/png"] != before


# ------------------------------------------------------------------ the browser test


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return (f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does, or "
                "set PRUNING_KIT_CHROMIUM)")
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install -e '.[notebooks]')"
    return None


BROWSER_MISSING = _browser_missing()
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=str(BROWSER_MISSING))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(cells: list[str]) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                        "language": "python"},
                         "language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {},
                       "execution_count": None, "outputs": [], "source": code}
                      for i, code in enumerate(cells)]}


class Lab:
    """A JupyterLab server on a temporary folder (started and stopped by the fixture)."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.token = folder, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_for_kernel(self, path: str, timeout: float = 60):
        """Until the notebook at ``path`` has an idle kernel that the page is connected to."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s["path"] == path and s["kernel"]["execution_state"] == "idle"
                   and s["kernel"]["connections"] > 0 for s in self.api("sessions")):
                return
            time.sleep(0.5)
        raise AssertionError(f"no idle kernel for {path} after {timeout} s")

    def shutdown_kernels(self):
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab")
    root = folder / "notebooks"
    root.mkdir()
    cells = [SETUP.rstrip() + "\nprint('ready')"]
    cells += [f"# {nb}.ipynb\n{code}" for nb, (_, code, _) in EXPLORERS.items()]
    (root / "explorers.ipynb").write_text(json.dumps(_notebook(cells)))
    settings = folder / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)               # no news or update pop-ups over the notebook
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server = Lab(root)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(folder / "config"),
           "JUPYTER_RUNTIME_DIR": str(folder / "runtime"), "JAX_PLATFORMS": "cpu",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={server.port}", "--ServerApp.port_retries=0",
           f"--ServerApp.token={server.token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={folder / 'settings'}",
           f"--LabApp.workspaces_dir={folder / 'workspaces'}"]
    if os.name == "posix" and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(folder / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.api("status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (
                        folder / "jupyterlab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def notebook_page(lab):
    """JupyterLab showing explorers.ipynb in headless Chromium, its setup cell run."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"{lab.url}/lab/workspaces/test/tree/explorers.ipynb?token={lab.token}")
            page.locator(".jp-NotebookPanel .jp-Cell .jp-InputArea-editor").first.wait_for(
                timeout=60_000)
            lab.wait_for_kernel("explorers.ipynb")
            setup = _run_cell(page, 0)
            expect(setup.locator(".jp-Cell-outputArea")).to_contain_text("ready",
                                                                         timeout=120_000)
            yield page
        finally:
            browser.close()
            lab.shutdown_kernels()


def _run_cell(page, index: int):
    """Select cell ``index`` and press Shift+Enter, as a reader would; the cell's locator."""
    from playwright.sync_api import expect

    cell = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(3):          # a key pressed while the page is still settling can be lost
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:                    # "[*]:" queued or running, "[n]:" done
            expect(prompt).to_contain_text(re.compile(r"\[[*0-9]"), timeout=5_000)
            return cell
        except AssertionError:
            continue
    raise AssertionError(f"cell {index} did not start running after three Shift+Enter")


@needs_browser
@pytest.mark.parametrize("notebook", list(EXPLORERS))
def test_explorer_in_jupyterlab(notebook, notebook_page, tmp_path):
    from playwright.sync_api import expect

    page = notebook_page
    name, _, key = EXPLORERS[notebook]
    start = time.monotonic()
    cell = _run_cell(page, 1 + list(EXPLORERS).index(notebook))
    out = cell.locator(".jp-Cell-outputArea")
    handle = out.locator(".widget-slider .noUi-handle").first
    try:
        handle.wait_for(timeout=120_000)
    except Exception as err:
        page.screenshot(path=tmp_path / f"{notebook}_failed.png")
        raise AssertionError(f"{name} did not render; the cell's output:\n"
                             f"{out.inner_text()[-3000:]}") from err
    label = out.locator(".widget-html-content").first
    figure = out.locator(".widget-output img").first
    value = out.locator(".widget-slider .widget-readout").first
    figure.wait_for(timeout=30_000)
    rendered = time.monotonic()
    expect(label).to_contain_text(re.compile(r"\S"))
    assert "Loading widget" not in out.inner_text()
    # one picture: the live figure; the static PNG in the same output is not shown as well
    assert out.locator("img").count() == 1
    cell.screenshot(path=tmp_path / f"{notebook}_initial.png")
    before_text, before_src, before_value = (label.inner_text(), figure.get_attribute("src"),
                                             value.inner_text())

    handle.focus()
    page.keyboard.press(key)                     # move the slider one stop
    expect(value).not_to_have_text(before_value)
    expect(label).not_to_have_text(before_text, timeout=60_000)
    expect(figure).not_to_have_attribute("src", before_src, timeout=30_000)
    assert out.locator("img").count() == 1
    cell.screenshot(path=tmp_path / f"{notebook}.png")
    print(f"\n{name}: {before_value} -> {value.inner_text()}: {before_text!r} -> "
          f"{label.inner_text()!r}; rendered in {rendered - start:.1f} s, answered the slider "
          f"in {time.monotonic() - rendered:.1f} s; screenshots in {tmp_path}")
