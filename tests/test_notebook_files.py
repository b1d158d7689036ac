"""Committed notebooks are what JupyterLab would save: opening one to read it leaves the git tree clean.

When a kernel starts, JupyterLab writes the kernel's ``kernelspec`` and ``language_info`` into the notebook's
metadata and marks it modified if they differ from the file's. The committed notebooks carry exactly what the
project's venv reports, so they open unmodified (tests/test_browser.py checks that in JupyterLab itself).
After a Python upgrade, rewrite them with ``.venv/bin/python tests/test_notebook_files.py --fix``.
"""
import json
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("course/source/*/*.ipynb")])


def expected_metadata() -> dict:
    """The kernelspec and language_info that JupyterLab writes for this venv's ``python3`` kernel."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
            "language_info": dict(IPythonKernel.language_info)}


def fix(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.update(expected_metadata())
    nbformat.write(notebook, path)


def test_there_are_notebooks_to_check():
    names = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]
    assert "notebooks/03_joint_training.ipynb" in names
    assert "course/source/a3_joint_training/a3_joint_training.ipynb" in names


def test_committed_notebooks_carry_the_metadata_jupyterlab_writes():
    expected = expected_metadata()
    stale = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS
             if {k: json.loads(p.read_text())["metadata"].get(k) for k in expected} != expected]
    assert not stale, (f"{stale}: kernelspec/language_info differ from {expected}, so JupyterLab marks them "
                       f"modified on opening; run .venv/bin/python tests/test_notebook_files.py --fix")


if __name__ == "__main__" and sys.argv[1:] == ["--fix"]:
    for notebook_path in NOTEBOOKS:
        fix(notebook_path)
        print("rewrote", notebook_path.relative_to(ROOT))
