"""Committed notebooks are what JupyterLab would save: opening one to read it leaves the git tree clean.

When a kernel starts, JupyterLab writes the kernel's ``kernelspec`` and ``language_info`` into the notebook's
metadata and marks it modified if they differ from the file's. The committed notebooks carry what the project's
venv reports, Python's version to its minor release: a patch release of Python (3.11.7 -> 3.11.8) changes only
``language_info.version``, a one-line change JupyterLab makes on opening, and does not fail this test
(tests/test_browser.py opens each notebook in JupyterLab itself). After a minor upgrade, or to write the patch
version too, rewrite them with ``.venv/bin/python tests/test_notebook_files.py --fix``.
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


def up_to_minor_release(metadata: dict) -> dict:
    """``metadata``'s kernelspec and language_info, with the Python version cut to ``major.minor``."""
    kept = {key: metadata.get(key) for key in ("kernelspec", "language_info")}
    if isinstance(kept["language_info"], dict) and isinstance(kept["language_info"].get("version"), str):
        version = kept["language_info"]["version"]
        kept["language_info"] = {**kept["language_info"], "version": ".".join(version.split(".")[:2])}
    return kept


def fix(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.update(expected_metadata())
    nbformat.write(notebook, path)


def test_there_are_notebooks_to_check():
    names = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]
    assert "notebooks/03_joint_training.ipynb" in names
    assert "course/source/a3_joint_training/a3_joint_training.ipynb" in names


def test_a_python_patch_release_is_the_one_difference_allowed():
    expected = expected_metadata()
    major, minor, *_ = expected["language_info"]["version"].split(".")
    patched = json.loads(json.dumps(expected))
    patched["language_info"]["version"] = f"{major}.{minor}.999"
    assert up_to_minor_release(patched) == up_to_minor_release(expected)
    for key, value in (("version", f"{major}.{int(minor) + 1}.0"), ("pygments_lexer", "ipython2")):
        changed = json.loads(json.dumps(expected))
        changed["language_info"][key] = value
        assert up_to_minor_release(changed) != up_to_minor_release(expected), key
    assert up_to_minor_release({"kernelspec": expected["kernelspec"]}) != up_to_minor_release(expected)


def test_committed_notebooks_carry_the_metadata_jupyterlab_writes():
    expected = up_to_minor_release(expected_metadata())
    stale = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS
             if up_to_minor_release(json.loads(p.read_text())["metadata"]) != expected]
    assert not stale, (f"{stale}: kernelspec/language_info differ from {expected} (Python to its minor release), so "
                       f"JupyterLab marks them modified on opening; run .venv/bin/python tests/test_notebook_files.py "
                       f"--fix")


if __name__ == "__main__" and sys.argv[1:] == ["--fix"]:
    for notebook_path in NOTEBOOKS:
        fix(notebook_path)
        print("rewrote", notebook_path.relative_to(ROOT))
