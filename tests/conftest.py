"""Shared test set-up: offline, one torch thread (2-core machines), repository paths, and the fixtures several test
modules read (each built once per session)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from demo_commands import ROOT, demo_commands  # noqa: E402


@dataclass
class ExecutedNotebook:
    """A notebook executed by papermill, and what the run left."""

    path: Path
    """The executed notebook (outputs saved)."""
    output_dir: Path
    """The folder its results were written to."""
    stderr: str
    """papermill's stderr."""
    commands: list[str]
    """The commands of ``make demo`` for the same output folder (its ``jupyter trust`` among them)."""


@pytest.fixture(scope="session")
def evaluation_notebook(tmp_path_factory) -> ExecutedNotebook:
    """Notebook 04, executed once for every test that reads it (tests/test_notebooks.py, tests/test_browser.py):
    ``make demo``'s own papermill command, from the repository root, with small parameters: 16 test samples, 2
    groups in the rollout explorer, one torch thread and a ``runs_root`` holding no run, so the table has the two
    rows before RL."""
    out = tmp_path_factory.mktemp("demo")
    commands = demo_commands(out)
    papermill = next(c for c in commands if "notebooks/04_evaluation.ipynb" in c)
    small = f" -p eval_size 16 -p explorer_samples 2 -p threads 1 -p runs_root {out / 'no_runs'}"
    result = subprocess.run(papermill + small, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return ExecutedNotebook(out / "04_evaluation.ipynb", out / "eval_reasonseg", result.stderr, commands)


@pytest.fixture(scope="session")
def hugging_face_qwen_folder(tmp_path_factory):
    """A folder in the layout of a Qwen2.5-VL hub snapshot (``config.json``, safetensors weights, the stock
    ``Qwen2_5_VLProcessor``'s files), as a researcher passes it in ``policy_path``: a tiny random model with Qwen's
    vision input (3 channels, 14 px patches, windowed attention with one full-attention block) and the tiny
    tokenizer (Qwen's own tokenizer files are not available offline)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from grto_lib.tinyworld.tiny_qwen import CHAT_TEMPLATE, build_tokenizer, tiny_model_config

    folder = tmp_path_factory.mktemp("qwen2_5_vl")
    tokenizer = build_tokenizer(["the red circle", "the shape you could roll"])
    config = tiny_model_config(tokenizer)
    vision = config.vision_config
    vision.in_channels, vision.patch_size, vision.window_size, vision.fullatt_block_indexes = 3, 14, 112, [1]
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    return folder


SLOW_FIXTURES = {"graded": "nbgrader autogrades every kind of submission of the four assignments (test_course.py)"}
"""Fixtures that take more than about 20 s to build: every test that uses one is marked ``slow`` with it (a test that
is slow on its own carries ``@pytest.mark.slow``)."""


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES.keys() & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
