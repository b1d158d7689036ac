"""The shell commands ``make demo`` runs, as ``make -n`` prints them: tests run them as a user would."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_commands(out: Path) -> list[str]:
    """The shell commands ``make demo OUT=out`` runs, one a line (continuation lines joined)."""
    printed = subprocess.run(["make", "-n", "--no-print-directory", "demo", f"OUT={out}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout  # under `make test` too
    return printed.replace("\\\n", " ").splitlines()
