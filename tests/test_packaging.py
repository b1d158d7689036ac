"""What grto_lib declares and where it writes: pyproject.toml's runtime dependencies are what the package imports
(in ranges) and its extras what the notebooks, the course, TensorBoard logging and the tests need; requirements.txt,
environment.yml and requirements.lock pin all of them exactly; relative paths follow one rule; and the built wheel,
installed into a fresh virtual environment of each Python it admits that this machine has, trains from any folder
and writes there."""
import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
COURSE_AND_TEST_TOOLS = {"jupyterlab", "playwright", "nbgrader", "papermill", "nbval", "hypothesis", "pytest"}
NEEDED_WITHOUT_AN_IMPORT = {
    "torchvision": "segment_anything imports it without declaring it",
    "accelerate": "`accelerate launch -m grto_lib.train` runs on several GPUs (trl needs it too)",
}
"""Runtime dependencies that no grto_lib module imports, and why they are runtime dependencies all the same."""
PYTHONS = ("3.11", "3.12", "3.13")
"""The Pythons pyproject.toml admits; the wheel test runs on each one this machine has (requirements.lock: 3.11's)."""
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}
"""For another Python's runs: the packages it links from this venv get no bytecode of that Python written there."""


def _requirements(lines) -> dict[str, Requirement]:
    """Requirement lines (comments, blanks and ``grto_lib[...]`` self-references skipped) by canonical name."""
    texts = (line.split("#")[0].strip().removeprefix("- ").strip() for line in lines)
    parsed = [Requirement(text) for text in texts if text]
    return {canonicalize_name(r.name): r for r in parsed if canonicalize_name(r.name) != "grto-lib"}


def _exact_pins(lines) -> dict[str, str]:
    """``{name: version}`` of ``==`` requirement lines; anything else is an error naming the line."""
    pins = {}
    for name, requirement in _requirements(lines).items():
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{requirement} is not an exact pin"
        pins[name] = specifiers[0].version
    return pins


def _runtime() -> dict[str, Requirement]:
    return _requirements(PROJECT["dependencies"])


def _extra(name: str) -> dict[str, Requirement]:
    return _requirements(PROJECT["optional-dependencies"][name])


def _requirements_txt() -> dict[str, str]:
    return _exact_pins((ROOT / "requirements.txt").read_text().splitlines())


def test_requirements_txt_pins_exactly_what_pyproject_names_within_its_ranges():
    declared = {**_runtime(), **{k: v for extra in PROJECT["optional-dependencies"] for k, v in _extra(extra).items()}}
    pins = _requirements_txt()
    assert set(pins) == set(declared), (
        f"only in requirements.txt: {sorted(set(pins) - set(declared))}; "
        f"only in pyproject.toml: {sorted(set(declared) - set(pins))}")
    outside = {name: (version, str(declared[name].specifier)) for name, version in pins.items()
               if version not in declared[name].specifier}
    assert not outside, f"requirements.txt pins outside pyproject.toml's ranges: {outside}"


def test_environment_yml_pins_what_requirements_txt_pins():
    env_text = (ROOT / "environment.yml").read_text()
    assert _exact_pins(env_text.split("- pip:")[1].splitlines()) == _requirements_txt()
    assert "python=3.11" in env_text


def test_torch_and_torchvision_have_an_upper_bound():
    for name in ("torch", "torchvision"):
        assert any(s.operator in ("<", "<=", "==") for s in _runtime()[name].specifier), (
            f"{name} needs an upper bound: an unbounded install pulls the newest multi-GB CUDA build")


def test_the_course_and_test_tools_are_extras_not_runtime_dependencies():
    assert not COURSE_AND_TEST_TOOLS & set(_runtime())
    assert {"jupyterlab", "papermill"} <= set(_extra("notebooks"))
    assert {"nbgrader", "playwright"} <= set(_extra("course"))
    assert {"pytest", "hypothesis", "nbval"} <= set(_extra("test"))
    assert "grto_lib[notebooks,course,tensorboard]" in PROJECT["optional-dependencies"]["test"]


def test_tensorboard_is_an_extra_for_the_runs_that_report_to_it():
    """``TrainConfig.report_to`` defaults to "none"; a run with report_to="tensorboard" names the package it misses
    (tests/test_config.py), which the ``tensorboard`` extra installs."""
    from grto_lib.config import REPORTERS, TrainConfig

    assert "tensorboard" not in _runtime() and set(_extra("tensorboard")) == {"tensorboard"}
    assert TrainConfig().report_to == "none" and REPORTERS["tensorboard"] == "tensorboard"


def test_lock_contains_the_direct_pins_and_only_exact_versions():
    lock_lines = [l for l in (ROOT / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    lock = _exact_pins(lock_lines)
    requirements = _requirements_txt()
    assert {k: lock.get(k) for k in requirements} == requirements


def test_installed_trl_is_the_release_whose_private_methods_the_trainer_overrides():
    import trl

    from grto_lib.trainer import TRL_VERSION, GRTOTrainer

    assert trl.__version__ == TRL_VERSION, (
        f"trl {trl.__version__} is installed, but GRTOTrainer overrides private methods of trl {TRL_VERSION} "
        f"(grto_lib/trainer.py, TRL_VERSION): install the pinned release (pip install -r requirements.lock), or "
        f"port the overrides to the new release and move TRL_VERSION and every pin together")
    assert str(_runtime()["trl"].specifier) == f"=={TRL_VERSION}", "pyproject.toml must pin trl exactly"
    overrides = ("_calculate_rewards", "_generate_and_score_completions", "_generate_single_turn", "_prepare_inputs",
                 "_compute_loss", "_save_checkpoint", "_load_from_checkpoint",
                 "_load_optimizer_and_scheduler")  # TRL_VERSION's list
    missing = [name for name in overrides
               if name not in vars(GRTOTrainer) or not any(name in vars(base) for base in GRTOTrainer.__mro__[1:])]
    assert not missing, f"GRTOTrainer's overrides no longer override anything upstream: {missing}"
    from trl.trainer import grpo_trainer
    assert callable(grpo_trainer.unwrap_model_for_generation)  # compiled generation swaps it for its own


def _imported_distributions(files) -> dict[str, set[str]]:
    """``{distribution: {file, ...}}`` of the third-party modules ``files`` import (at the top or in a function)."""
    module_to_distributions = packages_distributions()
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for top in {module.split(".")[0] for module in modules}:
                if top in sys.stdlib_module_names or top == "grto_lib":
                    continue
                assert top in module_to_distributions, f"{path.relative_to(ROOT)} imports {top}, which nothing installs"
                for distribution in module_to_distributions[top]:
                    found.setdefault(canonicalize_name(distribution), set()).add(str(path.relative_to(ROOT)))
    return found


def test_runtime_dependencies_are_what_grto_lib_imports():
    files = sorted((ROOT / "grto_lib").rglob("*.py"))
    study = [f for f in files if "study" in f.relative_to(ROOT / "grto_lib").parts]
    runtime_imports = _imported_distributions([f for f in files if f not in study])
    runtime = set(_runtime())
    assert not set(runtime_imports) - runtime, (
        "grto_lib imports packages that pyproject.toml's dependencies lack: "
        f"{ {name: sorted(where) for name, where in runtime_imports.items() if name not in runtime} }")
    unexplained = runtime - set(runtime_imports) - set(NEEDED_WITHOUT_AN_IMPORT)
    assert not unexplained, f"runtime dependencies that grto_lib never imports: {sorted(unexplained)}"
    study_imports = _imported_distributions(study)
    missing = set(study_imports) - runtime - set(_extra("notebooks"))
    assert not missing, f"grto_lib.study imports packages that neither the runtime nor `notebooks` declares: {missing}"


def test_relative_paths_resolve_against_the_checkout_or_else_the_working_directory(tmp_path, monkeypatch):
    from grto_lib import config

    assert config.is_source_checkout(ROOT) and config.IN_SOURCE_CHECKOUT and config.REPO_ROOT == ROOT
    assert not config.is_source_checkout(tmp_path)
    (tmp_path / "grto_lib").mkdir()
    (tmp_path / "grto_lib" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "another"\n')
    assert not config.is_source_checkout(tmp_path)

    monkeypatch.chdir(tmp_path)
    assert config.repo_path("outputs/run") == ROOT / "outputs" / "run"
    assert config.repo_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setattr(config, "IN_SOURCE_CHECKOUT", False)
    assert config.repo_path("outputs/run") == tmp_path / "outputs" / "run"


@pytest.mark.parametrize("in_checkout", [True, False])
def test_a_missing_stand_in_says_what_to_pass_instead(tmp_path, monkeypatch, in_checkout):
    from grto_lib import TrainConfig, policy, runs

    monkeypatch.setattr(policy, "IN_SOURCE_CHECKOUT", in_checkout)
    hint = "python -m grto_lib.tinyworld.standins --only" if in_checkout else "installed grto_lib comes without"
    folder = re.escape(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"No tiny policy in {folder}.*{hint}.*policy_path"):
        policy.load_policy(policy.PolicyConfig(model_name_or_path=str(tmp_path)))
    monkeypatch.setattr(runs, "TINY_TOOL", tmp_path / "tool")
    with pytest.raises(FileNotFoundError, match=f"No tiny tool in {folder}/tool.*{hint}.*tool_checkpoint"):
        runs.load_models(TrainConfig())


def _run(command, cwd=None, **env) -> subprocess.CompletedProcess:
    """Run ``command`` offline on one thread, with no PYTHONPATH that could lend the new venv a grto_lib; ``env``
    adds variables."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")} | env
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{output}"
    return result


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of everything under ``folder`` (links are listed, not followed)."""
    found = {}
    for directory, subfolders, files in os.walk(folder):
        for name in subfolders + files:
            stat = Path(directory, name).lstat()
            found[str(Path(directory, name).relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the package's sources (building in place would leave build/ in the checkout)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    shutil.copytree(ROOT / "grto_lib", source / "grto_lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("grto_lib-*.whl")
    return wheel


def _interpreter(version: str) -> str | None:
    """A Python ``version`` that can make virtual environments: the one running the tests, else ``python<version>``
    on PATH, else the newest pyenv install of it (pyenv's shims answer only for the versions pyenv has selected)."""
    if version == RUNNING:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installs = [p for p in pyenv.glob(f"{version}.*/bin/python{version}") if re.fullmatch(r"[\d.]+", p.parts[-3])]
    installs.sort(key=lambda p: [int(n) for n in p.parts[-3].split(".")], reverse=True)
    for candidate in filter(None, [shutil.which(f"python{version}"), *installs]):
        if subprocess.run([candidate, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


def _shareable_entries(version: str) -> list[Path]:
    """The top-level entries of this environment's site-packages that a venv of Python ``version`` can link instead
    of installing: those of the runtime dependencies (transitively, markers evaluated for ``version``) installed at
    the lock's version from a wheel whose files are the same on every Python (``py3-none``, or ``abi3`` that
    ``version`` loads) and that admits ``version``, unless a distribution not shared also owns the entry (``cuda/``:
    cuda-bindings). The CUDA libraries, 3.2 GB of a runtime venv's 6.4 GB, are among them."""
    site_packages = Path(sysconfig.get_path("purelib"))
    lock = _exact_pins((ROOT / "requirements.lock").read_text().splitlines())
    minor = int(version.split(".")[1])
    markers = {"python_version": version, "python_full_version": f"{version}.0"}

    def independent(distribution) -> bool:
        wheel_file = (distribution.read_text("WHEEL") or "").splitlines()
        tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_file if line.startswith("Tag:")]
        return bool(tags) and all((abi == "none" and interpreter in ("py3", "py2", "py2.py3")) or (
            abi == "abi3" and interpreter.startswith("cp3") and int(interpreter[3:]) <= minor)
            for interpreter, abi, _ in tags) and f"{version}.0" in SpecifierSet(
            distribution.metadata["Requires-Python"] or "")

    installed = {canonicalize_name(d.metadata["Name"]): d
                 for d in importlib.metadata.distributions(path=[str(site_packages)])}
    entries = {name: {f.parts[0] for f in d.files or () if f.parts[0] not in ("..", "__pycache__")}
               for name, d in installed.items()}
    owners, runtime = {}, {}
    for name in installed:
        for entry in entries[name]:
            owners.setdefault(entry, set()).add(name)
    pending, seen = list(_runtime().values()), set()
    while pending:
        requirement = pending.pop()
        name, extras = canonicalize_name(requirement.name), requirement.extras or {""}
        if (name, frozenset(extras)) in seen or name not in installed:
            continue  # a package installed for ``version`` only (setuptools for torch on 3.12+): pip installs it
        seen.add((name, frozenset(extras)))
        runtime[name] = installed[name]
        pending += [dependency for dependency in map(Requirement, runtime[name].requires or ())
                    if dependency.marker is None or any(dependency.marker.evaluate({**markers, "extra": extra})
                                                        for extra in extras)]
    shared = {name for name, distribution in runtime.items()
              if distribution.version == lock.get(name) and independent(distribution)}
    while unshareable := {name for name in shared if any(owners[entry] - shared for entry in entries[name])}:
        shared -= unshareable
    return sorted({site_packages / entry for name in shared for entry in entries[name]
                   if (site_packages / entry).exists()})


def _runtime_venv(python: str, version: str) -> Path:
    """site-packages of ``.venv-py<version>`` (git-ignored), a venv of ``python`` with grto_lib's runtime
    dependencies at the lock's versions (not the notebooks, course or test extras): made on first use (pip
    downloads from PyPI what it cannot link: _shareable_entries) and reused while the lock, pyproject.toml's
    dependencies and the interpreter stay the same and its links resolve."""
    folder = ROOT / f".venv-py{version}"
    site_packages, stamp = folder / "lib" / f"python{version}" / "site-packages", folder / ".installed"
    key = "\n".join([str(python), sys.version, (ROOT / "requirements.lock").read_text(), *PROJECT["dependencies"]])
    if stamp.is_file() and stamp.read_text() == key and all(p.exists() for p in site_packages.iterdir()):
        return site_packages
    shutil.rmtree(folder, ignore_errors=True)
    _run([python, "-m", "venv", str(folder)])
    for entry in _shareable_entries(version):
        (site_packages / entry.name).symlink_to(entry)
    _run([folder / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", ROOT / "requirements.lock",
          *PROJECT["dependencies"]])
    stamp.write_text(key)
    return site_packages


def _fresh_venv(folder: Path, python: str, packages: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new virtual environment of ``python`` that sees the packages of the
    site-packages folder ``packages``, grto_lib excepted: each top-level entry there is linked into the new one,
    except grto_lib's editable install (its metadata, its finder and any .pth naming the checkout), so nothing
    multi-GB is installed twice and only the wheel can provide grto_lib."""
    _run([python, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    for entry in packages.iterdir():
        editable = entry.name.startswith(("grto_lib", "__editable__")) or (
            entry.suffix == ".pth" and str(ROOT) in entry.read_text(errors="replace"))
        if not editable:
            (site_packages / entry.name).symlink_to(entry)
    return python, site_packages


def test_the_wheel_holds_grto_lib_and_requires_the_runtime_dependencies_and_pythons(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        header = archive.read(metadata).decode().split("\n\n", 1)[0]  # then the README
    fields = [line.split(": ", 1) for line in header.splitlines() if ": " in line]
    assert all(n.startswith(("grto_lib/", "grto_lib-")) for n in names), "the wheel holds files outside grto_lib/"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "grto_lib").rglob("*.py")}
    assert modules <= set(names), f"modules the wheel lacks (pyproject.toml's packages): {sorted(modules - set(names))}"
    requires = [Requirement(value) for key, value in fields if key == "Requires-Dist"]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert runtime == set(_runtime()) and not runtime & COURSE_AND_TEST_TOOLS, runtime
    admitted = SpecifierSet(dict(fields)["Requires-Python"])
    assert [v for v in ("3.10", *PYTHONS, "3.14") if v in admitted] == list(PYTHONS), admitted
    classifiers = [c.removeprefix("Programming Language :: Python :: ") for c in PROJECT["classifiers"]]
    assert classifiers == list(PYTHONS), "pyproject.toml's classifiers name the Pythons it admits"


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_the_wheel_installs_in_a_fresh_venv_and_trains_from_another_folder(tmp_path, version, wheel):
    """On each Python of PYTHONS that this machine has. On the one running the tests the fresh venv links this
    venv's packages; on another it links those of .venv-py<version> (_runtime_venv: on a fresh machine the first
    run downloads from PyPI what it cannot link from this venv, 0.9 GB of wheels a Python)."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} here that makes virtual environments (python{version} on PATH or pyenv's)")
    packages = Path(sysconfig.get_path("purelib")) if version == RUNNING else _runtime_venv(python, version)
    extra_env = {} if version == RUNNING else NO_BYTECODE
    python, site_packages = _fresh_venv(tmp_path / "venv", python, packages)
    _run([python, "-m", "pip", "install", "--quiet", "--no-index", wheel], **extra_env)  # resolved: those linked
    check = _run([python, "-m", "pip", "check"], **extra_env)
    assert "No broken requirements found" in check.stdout, check.stdout
    probe = ("import importlib, pkgutil, sys\nimport grto_lib\nprint(grto_lib.__file__)\n"
             "print(grto_lib.config.IN_SOURCE_CHECKOUT)\ntry:\n    grto_lib.load_policy(grto_lib.PolicyConfig())\n"
             "except FileNotFoundError as error:\n    print(error)\n"
             "for module in pkgutil.walk_packages(grto_lib.__path__, 'grto_lib.'):\n"
             "    if not module.name.startswith('grto_lib.study'):  # the study needs the notebooks extra\n"
             "        importlib.import_module(module.name)\nprint(sys.version_info[:2])")
    output = _run([python, "-c", probe], cwd=tmp_path, **extra_env).stdout
    installed, in_checkout, missing, running = output.strip().splitlines()
    assert running == str(tuple(map(int, version.split("."))))
    assert Path(installed).is_relative_to(site_packages) and not Path(installed).is_symlink(), installed
    assert in_checkout == "False"
    assert missing.startswith(f"No tiny policy in {tmp_path / 'data' / 'standins' / 'policy'}: an installed grto_lib"
                              ) and "Point policy_path" in missing, missing

    work = tmp_path / "work"
    work.mkdir()
    before = _files(site_packages)
    standins = ROOT / "data" / "standins"
    _run([python.parent / "grto-train", "--method", "grto", "--steps", "1", "--prompts-per-step", "2",
          "--num-generations", "2", "--train-size", "4", "--eval-size", "2", "--curve-every", "0", "--save-steps", "1",
          "--policy-path", standins / "policy", "--tool-checkpoint", standins / "tool", "--output-dir", "wheel_run"],
         cwd=work, **extra_env)
    after = _files(site_packages)
    written = sorted(path for path, stat in after.items() if before.get(path) != stat)
    assert (work / "wheel_run" / "metrics.json").is_file(), (
        f"no wheel_run/metrics.json in the working directory {work}; written under site-packages: {written[:5]}")
    assert not written, f"written under the venv's site-packages: {written[:10]}"
    assert not (ROOT / "wheel_run").exists(), "the installed grto_lib resolved a relative path against the checkout"
