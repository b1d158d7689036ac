"""Shared test set-up: offline, one torch thread (2-core machines), repository paths."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


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
