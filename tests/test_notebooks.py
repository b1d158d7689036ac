"""The four notebooks: clean in git, runnable by papermill from the root and from notebooks/, with the numbers
they write checked. (01 is also validated cell by cell by nbval: see test_derivation_outputs_reproduce.)"""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
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


def _stderr(notebook) -> list[str]:
    """The stderr streams of an executed notebook (JupyterLab shows them as pink boxes)."""
    return [o["text"] for c in notebook.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]


@pytest.mark.slow
def test_joint_training_from_root_and_from_notebooks_folder(tmp_path):
    small = dict(steps=2, prompts_per_step=2, num_generations=4, bto_steps=5)
    _run(ROOT / "notebooks" / "03_joint_training.ipynb", tmp_path / "a.ipynb", ROOT,
         method="grto", output_dir=str(tmp_path / "from_root"), **small)
    _run("03_joint_training.ipynb", tmp_path / "b.ipynb", ROOT / "notebooks",
         method="grpo", output_dir=str(tmp_path / "from_notebooks"), **small)
    executed = nbformat.read(tmp_path / "a.ipynb", as_version=4)
    training_cell = next(c for c in executed.cells if "LivePlot(" in c.source)
    figures = [o for o in training_cell.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1, "the training figure is drawn once, updated in place"
    assert not _stderr(executed), _stderr(executed)
    for run in ("from_root", "from_notebooks"):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["test"]["n"] == 200 and 0 <= metrics["test"]["giou"] <= 1
        assert metrics["test"]["format_valid"] > 0.5
        assert (tmp_path / run / "training.png").is_file()
        # a run shorter than the default logging interval still logs every step and draws its learning curve
        assert [e["step"] for e in metrics["log_history"] if "loss" in e] == [1, 2]
        assert [p["step"] for p in metrics["curve"]] == [0, 1, 2]
        # the step by hand: one update of each, on the group it was computed from, lowers both losses; the group
        # has a rollout on target, so the tool's loss is not 0 and a broken tool step (no update) shows
        by_hand = json.loads((tmp_path / run / "step_by_hand.json").read_text())
        assert by_hand["policy_loss"][1] < by_hand["policy_loss"][0], by_hand
        assert by_hand["tool_loss"][0] > 0 and by_hand["tool_loss"][1] < by_hand["tool_loss"][0], by_hand


def test_a_run_into_a_folder_of_another_configuration_stops_before_writing_there(tmp_path):
    """03 with the default output_dir of a method that already holds a run with other settings (a seed here): the
    config cell refuses the folder, before the step by hand writes step_by_hand.json into it."""
    from grto_lib.config import TrainConfig
    from grto_lib.trainer import COMPLETE_MARKER

    folder = tmp_path / "reasonseg_grto"
    (folder / "checkpoint-20").mkdir(parents=True)
    (folder / "checkpoint-20" / COMPLETE_MARKER).write_text("ok\n")
    TrainConfig(method="grto", seed=1, output_dir=str(folder)).to_json(folder / "config.json")
    result = _run(ROOT / "notebooks" / "03_joint_training.ipynb", tmp_path / "03.ipynb", ROOT, check=False,
                  method="grto", steps=2, output_dir=str(folder))
    assert result.returncode != 0 and "holds checkpoints of another configuration" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-20", "config.json"]


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
    executed = nbformat.read(tmp_path / "02.ipynb", as_version=4)
    assert not _stderr(executed), _stderr(executed)  # the progress bars are HTML, drawn in place
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    progress = [o for o in outputs if "<progress" in o.get("data", {}).get("text/html", "")]
    assert len(progress) == 2, progress  # the buffer's rollouts, the tool's updates
    printed = "".join(o.get("text", "") for o in outputs)
    assert "bbox: [" in printed and "points: [[" in printed  # the example record, whole
    assert (tmp_path / "bto" / "tool" / "tool.safetensors").is_file()
    assert (tmp_path / "bto" / "bto_loss.png").is_file()


def test_evaluation_notebook_writes_the_table(evaluation_notebook):
    """04 as ``make demo`` runs it, with no run to evaluate (the fixture, shared with tests/test_browser.py)."""
    out = evaluation_notebook.output_dir
    rows = json.loads((out / "metrics.json").read_text())
    assert set(rows) == {"reference", "untrained_tool_true_boxes"}
    assert rows["untrained_tool_true_boxes"]["giou"] > rows["reference"]["giou"]  # true boxes beat the stand-in policy
    assert rows["reference"]["n"] == 16
    assert "| untrained_tool_true_boxes |" in (out / "table.md").read_text()
    explorer = nbformat.read(evaluation_notebook.path, as_version=4).cells[-1].outputs
    assert [list(o["data"]) for o in explorer] == [["text/html", "text/plain"]]  # no widget: it renders saved
    assert explorer[0]["data"]["text/html"].count("<details") == 2


def test_what_rl_changed_picks_the_samples_its_rule_names():
    """Two fixed, then the broken one, then a third fixed to make four, shown in test order; an answer that does not
    parse is never on target; with nothing changed, the first samples."""
    from types import SimpleNamespace

    from grto_lib.study.plots import what_rl_changed

    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    samples = [SimpleNamespace(mask=mask)] * 8
    on, off = np.array([2.0, 2, 6, 6]), np.array([0.0, 0, 2, 2])
    record = lambda box, valid=True: {"box": box, "valid": valid}  # noqa: E731
    before = [record(off), record(on, valid=False), record(on), record(off), record(on), record(off), record(on),
              record(off)]
    after = [record(off), record(on), record(off), record(on), record(on), record(on), record(on), record(off)]
    changed = what_rl_changed(samples, before, after)
    assert changed == {"fixed": [1, 3, 5], "broken": [2], "shown": [1, 2, 3, 5]}
    assert what_rl_changed(samples, before, before)["shown"] == [0, 1, 2, 3]


def test_the_live_plot_says_why_grpo_has_no_tool_loss():
    import matplotlib.pyplot as plt

    from grto_lib.study.plots import LivePlot

    for frozen in (True, False):
        figure = LivePlot(live=False, frozen_tool=frozen).draw()
        assert ["the tool is frozen under GRPO" in t.get_text() for t in figure.axes[2].texts] == [True] * frozen
        plt.close(figure)


def test_derivation_outputs_reproduce():
    """nbval re-runs 01 and compares the cells marked NBVAL_CHECK_OUTPUT with the committed outputs."""
    command = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
               str(ROOT / "notebooks" / "01_derivation.ipynb")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
