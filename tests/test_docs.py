"""The documentation points at things that exist: every relative link of README.md, docs/*.md and
course/INSTRUCTORS.md reaches a file or folder (and its ``#anchor`` a heading there), every backticked repository
path names a file or folder of the repository, and every backticked ``grto_lib.<module>.<name>`` a module and a
name defined in it. Paths the documents name on purpose without their being here (a user's data, removed
scripts) are listed below with the reason. The README stays short and starts with its two commands."""
import functools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "course" / "INSTRUCTORS.md"]

# Paths the documents name that are not in the repository on purpose, each with the reason.
NOT_IN_THE_REPOSITORY = {
    "data/ReasonSeg": "a real release the user downloads (docs/real_models.md)",
    "data/COD": "a real release the user downloads (docs/real_models.md)",
    "data/RSReasonSeg": "a real release the user downloads (docs/real_models.md)",
    "course/grades.csv": "what `nbgrader export` writes (docs/course.md)",
}
# Scripts that measured superseded benchmarks and were removed; the history names the commit that holds them.
REMOVED = {f"benchmarks/{name}": "cffe6b0" for name in (
    "stronger_standin_tiny.sh", "policy_headroom_tiny.py", "query_order_probe.py", "long_runs_tiny.sh")}

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
MODULE_NAME = re.compile(r"grto_lib(?:\.\w+)+")
RESULT_FILE = re.compile(r"(?:cpu|h100|h200)[\w*{},]*\.jsonl?")  # benchmarks/results/ names them by machine


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation removed, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    found, seen = set(), {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def prose(path: Path) -> str:
    """The document without its fenced code blocks (their commands name paths a run creates)."""
    return FENCE.sub("", path.read_text())


def relative_links(path: Path) -> list[str]:
    targets = [a or b for a, b in LINK.findall(prose(path))]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # not https:, mailto:


@functools.cache
def _top_level() -> frozenset[str]:
    """The repository's top-level files and folders, less what git ignores (.venv/, outputs/...)."""
    names = [p.name for p in ROOT.iterdir() if p.name != ".git"]
    return frozenset(names) - _ignored(names)


def _ignored(paths: list[str]) -> set[str]:
    """The paths among ``paths`` that git ignores (what a command creates: outputs/, course/release/...)."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                            capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.split())


def repository_paths(path: Path) -> list[str]:
    """Backticked paths in ``path``'s prose whose first part is a top-level entry of the repository, and result
    files named alone (``h100_call1.jsonl``: in benchmarks/results/). Brace lists expand
    (``h100x2_tiny_grto_{1,2}gpu.json``); a path with a placeholder (``<assignment>``, ``$OUT``) is skipped."""
    top = _top_level()
    found = []
    for code in CODE.findall(prose(path)):
        for token in code.split():
            token = token.rstrip(".,;:)")
            if RESULT_FILE.fullmatch(token):  # a benchmark's result file named alone
                token = f"benchmarks/results/{token}"
            if token.split("/")[0] not in top or re.search(r"[<>$~…=()|]", token.split("::")[0]):
                continue
            found += _expand(token)
    return found


def _expand(token: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    return [e for part in match.group(1).split(",")
            for e in _expand(token[:match.start()] + part + token[match.end():])]


def _exists(path: str) -> bool:
    """A file or folder (a glob: at least one); ``tests/x.py::test_y``: the file and a test of that name in it."""
    path, _, test = path.partition("::")
    if test:
        return (ROOT / path).is_file() and _defines(ROOT / path, test.split("[")[0])
    return bool(list(ROOT.glob(path.rstrip("/")))) if "*" in path else (ROOT / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(doc):
    broken = []
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        if not resolved.exists():
            broken.append(f"{target}: no {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{doc.name}: broken links\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_backticked_repository_path_exists(doc):
    paths = repository_paths(doc)
    created = _ignored(paths)
    missing = [p for p in paths if not _exists(p) and p not in created
               and not any(p == k or p.startswith(k + "/") for k in [*NOT_IN_THE_REPOSITORY, *REMOVED])]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_removed_scripts_are_gone_and_in_the_commit_the_history_names():
    """Each removed script is absent, named in the history with its commit, and in that commit (checked where the
    clone holds the history: a shallow clone, as CI's may be, has not got it)."""
    history = (ROOT / "docs" / "benchmark_history.md").read_text()
    full_history = _git("rev-parse", "--is-shallow-repository").stdout.strip() == "false"
    for path, commit in REMOVED.items():
        assert not (ROOT / path).exists(), f"{path} exists: name it as a current script"
        assert commit in history and Path(path).name in history
        if full_history:
            assert _git("cat-file", "-e", f"{commit}:{path}").returncode == 0, f"{path} is not in commit {commit}"


def _defines(module: Path, name: str) -> bool:
    """``module``'s source defines or imports ``name`` at some level (a function, class, constant or field)."""
    return bool(re.search(rf"^\s*(?:async def|def|class) {name}\b|^\s*{name}\s*[:=]|import .*\b{name}\b",
                          module.read_text(), re.M))


def _module_file(parts: list[str]) -> tuple[Path, list[str]]:
    """The source file of the longest prefix of ``parts`` that is a module or package, and the parts after it."""
    for k in range(len(parts), 0, -1):
        path = ROOT / Path(*parts[:k])
        if path.is_dir():
            return path / "__init__.py", parts[k:]
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py"), parts[k:]
    raise AssertionError(f"{parts[0]} is not a package")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_backticked_grto_lib_name_is_a_module_or_defined_in_one(doc):
    """``grto_lib.a.b``: a module, or a module and a name it defines (``grto_lib.tool.ENCODER_BATCH``), or a name of
    grto_lib's public API (its ``__init__``); one attribute of that name may follow, unchecked."""
    wrong = []
    for code in CODE.findall(prose(doc)):
        for dotted in MODULE_NAME.findall(code):
            module, rest = _module_file(dotted.split("."))
            if not rest:
                continue
            public = module == ROOT / "grto_lib" / "__init__.py" and f'"{rest[0]}"' in module.read_text()
            if len(rest) > 2 or not (public or _defines(module, rest[0])):
                wrong.append(dotted)
    assert not wrong, f"{doc.name} names what grto_lib does not define: {wrong}"


def test_readme_is_short_and_starts_with_its_two_commands():
    """At most 160 lines, and the first commands a reader meets are ``make demo`` and ``make test``."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    first_block = re.search(r"^```\w*\n(.*?)^```", readme, re.S | re.M).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"], commands


def test_readme_links_the_guides_and_the_course_guide_the_instructor_notes():
    """The README's "where to go next": the guides, results/ and the four notebooks in order; the course guide sends
    instructors to the notes whose table tests/test_course.py checks."""
    readme_links = relative_links(ROOT / "README.md")
    for guide in ("docs/course.md", "docs/real_models.md", "docs/benchmarks.md", "docs/api.md", "results/"):
        assert guide in readme_links, f"the README does not link {guide}"
    notebooks = [link for link in readme_links if link.startswith("notebooks/")]
    assert notebooks == sorted(notebooks) and len(notebooks) == 4, notebooks
    course = (ROOT / "docs" / "course.md").read_text()
    assert "../course/INSTRUCTORS.md" in relative_links(ROOT / "docs" / "course.md") and "28/28" in course
