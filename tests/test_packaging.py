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


def test_installed_trl_is_the_release_whose_private_methods_the_trainer_overrides():
    import trl

    from grto_lib.trainer import TRL_VERSION, GRTOTrainer

    assert trl.__version__ == TRL_VERSION, (
        f"trl {trl.__version__} is installed, but GRTOTrainer overrides private methods of trl {TRL_VERSION} "
        f"(grto_lib/trainer.py, TRL_VERSION): install the pinned release (pip install -r requirements.lock), or "
        f"port the overrides to the new release and move TRL_VERSION and every pin together")
    assert _pins((ROOT / "requirements.txt").read_text().splitlines())["trl"] == TRL_VERSION
    overrides = ("_generate_and_score_completions", "_compute_loss", "_save_checkpoint", "_load_from_checkpoint",
                 "_load_optimizer_and_scheduler")  # the private methods trainer.py's TRL_VERSION names
    missing = [name for name in overrides
               if name not in vars(GRTOTrainer) or not any(name in vars(base) for base in GRTOTrainer.__mro__[1:])]
    assert not missing, f"GRTOTrainer's overrides no longer override anything upstream: {missing}"
