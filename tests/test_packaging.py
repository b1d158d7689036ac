"""The pins in pyproject.toml, requirements.txt, requirements.lock and environment.yml agree."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.strip().lstrip("- ").strip()
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return pins


def test_every_direct_dependency_is_pinned_exactly_and_identically():
    project = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env_text = (ROOT / "environment.yml").read_text()
    conda_pip = _pins(env_text.split("- pip:")[1].splitlines())
    assert project == requirements == conda_pip
    assert "torch" in project and "torchvision" in project
    assert "python=3.11" in env_text


def test_lock_contains_the_direct_pins_and_only_exact_versions():
    lock_lines = [l for l in (ROOT / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    assert all("==" in l for l in lock_lines), [l for l in lock_lines if "==" not in l]
    lock = _pins(lock_lines)
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert {k: lock.get(k) for k in requirements} == requirements
