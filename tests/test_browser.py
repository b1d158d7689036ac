"""The notebooks as a student sees them: JupyterLab (this venv's) in headless Chromium, driven by playwright.

Uses Debian's ``chromium`` package (no browser download; ``.ci/run`` installs it), or the binary named by the
``CHROMIUM`` environment variable. Without playwright or Chromium these tests skip, naming what is missing.
"""
import contextlib
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from demo_commands import demo_commands
from test_notebook_files import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "grto-browser-test"
KERNEL_IDLE = """() => {
    const app = window.jupyterapp;  // undefined until the page (reloaded by ?reset) has started JupyterLab
    const panel = app && app.shell && app.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return kernel && kernel.status === "idle" && !panel.sessionContext.pendingInput;
}"""


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: pip install -r requirements.lock")
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium) or set CHROMIUM")
    return binary


@contextlib.contextmanager
def _lab_server(home: Path, cwd: Path, command: str = f"{shlex.quote(sys.executable)} -m jupyter lab --allow-root"):
    """A JupyterLab server started by the shell ``command`` in ``cwd``, told a free port and the test's token
    (``JUPYTER_PORT``, ``JUPYTER_TOKEN``), with its own settings and workspaces under ``home``; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_PORT=str(port), JUPYTER_TOKEN=TOKEN,
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    server = subprocess.Popen(f"exec {command} --no-browser --LabApp.expose_app_in_browser=True", shell=True,
                              cwd=cwd, env=env, stdout=open(home / "lab.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server serving a scratch folder; yields (chromium, url, root folder)."""
    chromium = _chromium()
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    root.mkdir()
    with _lab_server(home, root) as url:
        yield chromium, url, root


def _open(browser, url, name):
    """A page showing notebook ``name`` with its kernel idle, and the list its console errors go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/lab/tree/{name}?reset&token={TOKEN}")  # reset: a fresh workspace, only this notebook open
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    return page, errors


def _close(page) -> None:
    """Shut down every kernel of the server, then close the page."""
    page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll()")
    page.close()


def _copy_with_this_pythons_patch_release(path: Path, folder: Path) -> None:
    """``path`` copied into ``folder``, its ``language_info.version`` set to this interpreter's when only the patch
    release differs: the one difference tests/test_notebook_files.py allows (JupyterLab would write it)."""
    notebook = nbformat.read(path, as_version=4)
    info = notebook.metadata.get("language_info", {})
    if str(info.get("version", "")).split(".")[:2] == platform.python_version().split(".")[:2]:
        info["version"] = platform.python_version()
    nbformat.write(notebook, folder / path.name)


@pytest.mark.slow
def test_opening_a_committed_notebook_leaves_it_unmodified(lab):
    from playwright.sync_api import sync_playwright

    chromium, url, root = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for path in NOTEBOOKS:
            _copy_with_this_pythons_patch_release(path, root)
            page, errors = _open(browser, url, path.name)
            time.sleep(2)  # metadata from the kernel's info reply lands after the kernel reports idle
            dirty = page.evaluate("window.jupyterapp.shell.currentWidget.context.model.dirty")
            assert not dirty, f"{path.relative_to(ROOT)} is marked modified on opening (tests/test_notebook_files.py)"
            assert not errors, f"console errors opening {path.name}: {errors}"
            _close(page)
        browser.close()


def _no_broken_output(page) -> None:
    """Nothing a reader must learn to ignore: no widget drawn disconnected (ipywidgets' red broken-link icon), no
    stderr box, no widget error."""
    assert page.locator(".jupyter-widgets-disconnected").count() == 0
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    body = page.locator("body").inner_text()
    assert "Error displaying widget" not in body and "Error rendering" not in body


def test_a_demo_output_notebook_opens_trusted_and_its_rollout_explorer_opens_each_group(lab, evaluation_notebook):
    """04 run as ``make demo`` runs it (the shared fixture: its papermill command, with small parameters) and made
    trusted by its ``jupyter trust``: no "running over TCP" warning, a table of integer counts, and in JupyterLab the
    explorer's groups, saved as plain HTML (no widget to show disconnected): the first open, its figure at a size
    where its labels stay readable, the second closed until its query is clicked."""
    from playwright.sync_api import sync_playwright

    chromium, url, root = lab
    assert "without encryption" not in evaluation_notebook.stderr, evaluation_notebook.stderr
    table = next(o["data"]["text/html"] for c in nbformat.read(evaluation_notebook.path, as_version=4).cells
                 if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {}))
    assert ">16</td>" in table and "16.0" not in table and "nan" not in table.lower(), table
    trust = next(c for c in evaluation_notebook.commands if " trust " in c)
    subprocess.run(trust, shell=True, cwd=ROOT, check=True, capture_output=True)
    shutil.copy(evaluation_notebook.path, root / "04_demo_output.ipynb")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page, errors = _open(browser, url, "04_demo_output.ipynb")
        figure = page.locator(".jp-OutputArea-output details[open] img").first
        figure.wait_for(state="visible", timeout=60_000)
        figure.scroll_into_view_if_needed()
        natural, shown = figure.evaluate("image => [image.naturalWidth, image.clientWidth]")
        # the panels' labels are 9 pt at 100 dpi, 12.5 px in the PNG: shown at least 10 px high
        assert natural > 0 and 12.5 * shown / natural >= 10, (natural, shown)
        groups = page.locator(".jp-OutputArea-output details")
        assert groups.count() == 2
        assert [groups.nth(i).locator("img").is_visible() for i in range(2)] == [True, False]
        groups.nth(1).locator("summary").click()
        groups.nth(1).locator("img").wait_for(state="visible", timeout=10_000)
        _no_broken_output(page)
        assert not errors, f"console errors: {errors}"
        _close(page)
        browser.close()


def test_make_lab_opens_the_demo_outputs_and_formgrader_shows_the_course(tmp_path):
    """What ``make demo`` says to run at its end, ``make lab`` (its command, as ``make -n`` prints it, run in a copy of
    the repository): JupyterLab starts, as root too, from the repository root with its file browser on the demo's
    outputs, and Formgrader lists the four assignments."""
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    commands = demo_commands(tmp_path / "outputs" / "demo")
    assert commands[-1].endswith(f"make lab OUT={tmp_path / 'outputs' / 'demo'})\"")
    repository = tmp_path / "repository"
    shutil.copytree(ROOT / "course", repository / "course",
                    ignore=shutil.ignore_patterns("release", "submitted", "autograded", "feedback", "gradebook.db"))
    shutil.copy(ROOT / "nbgrader_config.py", repository)
    (repository / ".venv").symlink_to(ROOT / ".venv")
    (repository / "outputs" / "demo").mkdir(parents=True)
    (repository / "outputs" / "demo" / "04_evaluation.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    shutil.copy(ROOT / "Makefile", repository)
    printed = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.installed", "lab"], cwd=repository,
                             capture_output=True, text=True, check=True).stdout
    command = printed.replace("\\\n", " ").strip()
    assert "--LabApp.default_url=/lab/tree/outputs/demo" in command, command
    (tmp_path / "home").mkdir()
    with _lab_server(tmp_path / "home", repository, command) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{url}/?token={TOKEN}")
        page.locator(".jp-DirListing-item", has_text="04_evaluation.ipynb").wait_for(timeout=120_000)
        page.goto(f"{url}/formgrader?token={TOKEN}")
        listed = page.locator("#main-table")
        for assignment in sorted(p.name for p in (repository / "course" / "source").iterdir()):
            listed.get_by_text(assignment, exact=True).wait_for(timeout=60_000)
        assert "No data available" not in listed.inner_text()
        assert "exchange directory" not in page.locator("body").inner_text()
        browser.close()
