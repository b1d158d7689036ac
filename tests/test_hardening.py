"""Failures a course and long GPU runs will hit: a killed run, a half-written checkpoint, a wrong checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from grto_lib.trainer import COMPLETE_MARKER, last_complete_checkpoint

ARGS = ["--method", "grto", "--steps", "4", "--save-steps", "2", "--prompts-per-step", "2", "--num-generations", "4",
        "--train-size", "16", "--eval-size", "8", "--curve-every", "0", "--logging-steps", "1"]


def _train(output_dir, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "grto_lib.train", *ARGS, "--output-dir", str(output_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    """``python -m grto_lib.train`` killed (SIGKILL) right after its step-2 checkpoint, then run again with the same
    command: it resumes from that checkpoint and ends with the test scores and the tool weights of a run never
    interrupted (4 GRTO steps, a checkpoint every 2)."""
    whole = _train(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]

    killed = _train(tmp_path / "killed")
    deadline = time.time() + 600
    while not (tmp_path / "killed" / "checkpoint-2" / COMPLETE_MARKER).is_file():
        if killed.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{killed.stderr.read()[-3000:]}")
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    # a kill that the scheduler delayed past step 4's checkpoint would resume with nothing left to train
    shutil.rmtree(tmp_path / "killed" / "checkpoint-4", ignore_errors=True)

    resumed = _train(tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["resumed_from"].endswith("checkpoint-2")
    assert b["test"] == pytest.approx(a["test"], abs=1e-9)
    tool = [load_file(tmp_path / run / "final" / "tool" / "tool.safetensors") for run in ("whole", "killed")]
    assert tool[0].keys() == tool[1].keys() and all(torch.equal(tool[0][k], tool[1][k]) for k in tool[0])


def test_a_half_written_checkpoint_is_never_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("ok\n")
    (tmp_path / "checkpoint-4").mkdir()  # killed while writing: no marker
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"\0" * 10)
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-2")
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None


def test_a_tool_checkpoint_of_another_architecture_is_refused(tmp_path):
    from grto_lib.tool import ToolConfig, load_tool, save_tool

    save_tool(load_tool(ToolConfig(prompt_embed_dim=16, decoder_num_heads=2)), tmp_path)
    with pytest.raises(ValueError, match="another architecture"):
        load_tool(ToolConfig(checkpoint=str(tmp_path)))
