"""The four notebooks: clean in git, runnable by papermill from the root and from notebooks/, with the numbers
they write checked. (01 is also validated cell by cell by nbval: see test_derivation_outputs_reproduce.)"""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_four_notebooks_exist_with_a_parameters_cell():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"]
    for path in NOTEBOOKS:
        assert sum("parameters" in c.metadata.get("tags", []) for c in _code_cells(path)) == 1, path.name


def test_notebooks_are_stripped_and_define_nothing():
    for path in NOTEBOOKS:
        cells = _code_cells(path)
        if not path.name.startswith("01_"):  # 01 keeps its outputs for nbval
            assert not any(c.outputs for c in cells), f"{path.name} is committed with outputs"
        lines = [l for c in cells for l in c.source.splitlines()]
        assert not [l for l in lines if l.startswith(("def ", "class "))], f"{path.name} defines a function"
        assert max(len(c.source.splitlines()) for c in cells) <= 25, f"{path.name} has a long code cell"


def _run(notebook, out, cwd, check=True, **parameters):
    """``python -m papermill NOTEBOOK OUT -y PARAMETERS`` run from ``cwd``, as a user would."""
    command = [sys.executable, "-m", "papermill", "--no-progress-bar", "--execution-timeout", "300",
               str(notebook), str(out), "-y", json.dumps(parameters)]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_joint_training_from_root_and_from_notebooks_folder(tmp_path):
    small = dict(steps=2, prompts_per_step=2, num_generations=4, bto_steps=5)
    _run(ROOT / "notebooks" / "03_joint_training.ipynb", tmp_path / "a.ipynb", ROOT,
         method="grto", output_dir=str(tmp_path / "from_root"), **small)
    _run("03_joint_training.ipynb", tmp_path / "b.ipynb", ROOT / "notebooks",
         method="grpo", output_dir=str(tmp_path / "from_notebooks"), **small)
    executed = nbformat.read(tmp_path / "a.ipynb", as_version=4)
    training_cell = next(c for c in executed.cells if "LivePlot()" in c.source)
    figures = [o for o in training_cell.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1, "the training figure is drawn once, updated in place"
    for run in ("from_root", "from_notebooks"):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["test"]["n"] == 200 and 0 <= metrics["test"]["giou"] <= 1
        assert metrics["test"]["format_valid"] > 0.5
        assert (tmp_path / run / "training.png").is_file()
        # the step by hand: one update of each, on the group it was computed from, lowers both losses
        by_hand = json.loads((tmp_path / run / "step_by_hand.json").read_text())
        assert by_hand["policy_loss"][1] < by_hand["policy_loss"][0], by_hand
        assert by_hand["tool_loss"][1] < by_hand["tool_loss"][0] or by_hand["tool_loss"] == [0.0, 0.0], by_hand


@pytest.mark.parametrize("parameters,message", [
    ({"method": "ppo"}, "TrainConfig.method='ppo' is not allowed; choose one of grpo, grto, b-grto"),
    ({"steps": "ten"}, "TrainConfig.steps must be an integer, got 'ten'"),
    ({"dataset": "coco"}, "choose one of reasonseg, cod, earthreason"),
])
def test_invalid_parameter_stops_the_first_cell_naming_allowed_values(tmp_path, parameters, message):
    result = _run(ROOT / "notebooks" / "03_joint_training.ipynb", tmp_path / "bad.ipynb", ROOT, check=False,
                  **parameters)
    assert result.returncode != 0 and message in result.stderr
    executed = nbformat.read(tmp_path / "bad.ipynb", as_version=4)
    ran = [c for c in executed.cells if c.cell_type == "code" and c.get("execution_count")]
    assert len(ran) <= 3  # the injected parameters, the defaults, and the failing config cell


def test_bootstrap_notebook_improves_the_tool_on_the_buffer(tmp_path):
    _run(ROOT / "notebooks" / "02_bootstrap_pretraining.ipynb", tmp_path / "02.ipynb", ROOT,
         bto_prompts=16, bto_generations=4, bto_steps=40, eval_size=16, output_dir=str(tmp_path / "bto"))
    metrics = json.loads((tmp_path / "bto" / "metrics.json").read_text())
    assert metrics["final_loss"] < metrics["first_loss"]
    assert (tmp_path / "bto" / "tool" / "tool.safetensors").is_file()
    assert (tmp_path / "bto" / "bto_loss.png").is_file()


def test_evaluation_notebook_writes_the_table(tmp_path):
    _run(ROOT / "notebooks" / "04_evaluation.ipynb", tmp_path / "04.ipynb", ROOT, eval_size=16, explorer_samples=2,
         methods=[], output_dir=str(tmp_path / "eval"))
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(rows) == {"reference", "untrained_tool_true_boxes"}
    assert rows["untrained_tool_true_boxes"]["giou"] > rows["reference"]["giou"]  # true boxes beat the stand-in policy
    assert rows["reference"]["n"] == 16
    assert "| untrained_tool_true_boxes |" in (tmp_path / "eval" / "table.md").read_text()


def test_derivation_outputs_reproduce():
    """nbval re-runs 01 and compares the cells marked NBVAL_CHECK_OUTPUT with the committed outputs."""
    command = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
               str(ROOT / "notebooks" / "01_derivation.ipynb")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
