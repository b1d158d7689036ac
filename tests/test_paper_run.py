"""The researcher's command, whole, at toy size on the CPU: ``benchmarks/paper_run.py --size tiny`` writes a random
Qwen2.5-VL folder in Hugging Face's layout and runs ``python -m grto_lib.train --preset paper --method b-grto`` on it,
then resumes it, as the committed H100 result file was made."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_paper_presets_b_grto_command_runs_every_phase_on_the_chosen_device_and_resumes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_run.py"), "--size", "tiny",
                             "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["name"]: row for row in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    assert [name for name in rows if name.endswith(":error")] == [], rows
    assert (tmp_path / "work" / "policy" / "processor_config.json").is_file()  # the stock processor's files

    first, resumed = rows["run"], rows["resume"]
    on_cpu = {"policy": "cpu", "tool": "cpu"}  # the device train() chose on a machine without a GPU
    for run in (first, resumed):
        assert run["devices"] == {"bto": on_cpu, "rl": on_cpu, "evaluation": on_cpu}
        assert run["peak_gib"] == dict.fromkeys(("load", "bto", "rl", "evaluation"))  # no GPU memory to report
        assert run["test"]["n"] == 4 and run["test"]["format_valid"] == 1.0  # the folder's forced answer parses
        timing = run["timing"]
        assert all(timing[k] > 0 for k in ("load_seconds", "final_save_seconds", "evaluation_seconds"))
    assert first["resumed_from"] is None and first["bto"]["bto_trained_rollouts"] == 8
    assert first["timing"]["bto_buffer_seconds"] > 0 and first["timing"]["bto_tool_seconds"] > 0
    assert len(first["timing"]["rl_step_seconds"]) == 2 and len(first["timing"]["checkpoint_seconds"]) == 1
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert len(resumed["timing"]["rl_step_seconds"]) == 1  # only the new step
    assert [s["step"] for s in resumed["rl_steps"]] == [1, 2, 3]
    assert "bto_buffer_seconds" not in resumed["timing"]  # BTO was not run again
