"""What a run is made of and what it leaves behind: the models and data a ``TrainConfig`` names (``load_models``,
``load_splits``), a run's default folder (``run_folder``) and a finished run's models (``load_run``)."""
from __future__ import annotations

from grto_lib.config import REPO_ROOT, TrainConfig, model_location, repo_path
from grto_lib.data import load_dataset
from grto_lib.policy import PolicyConfig, load_policy, missing_standin
from grto_lib.tool import ToolConfig, load_tool, load_tool_config

TINY_TOOL = REPO_ROOT / "data" / "standins" / "tool"
"""The tiny world's tool stand-in (``python -m grto_lib.tinyworld.standins`` builds it)."""


def load_models(config: TrainConfig, device=None):
    """(policy, processor, tool, policy_image_size) of the config's preset, both models moved to ``device`` (None:
    left on the CPU, where they load; ``train`` passes its accelerator's device, so every phase runs there).

    The policy comes from ``policy_path`` (a model folder or hub id, checked by ``config.model_location``) or the preset's
    default; the tool from ``tool_checkpoint`` (a ``save_tool`` folder, or a SAM checkpoint file for the paper
    preset's ViT-H) or the tiny stand-in; ``random_tool`` builds the paper preset's ViT-H with random weights. The
    LoRA adapter has the config's ``lora_rank``, ``lora_alpha`` and ``lora_dropout``; the tool's ``tool_train`` parts
    are trainable, whatever its folder's ``tool_config.json`` says.
    """
    config.check_paths()
    policy_config = PolicyConfig(preset=config.preset, lora=config.lora or config.preset == "paper",
                                 lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                                 lora_dropout=config.lora_dropout)
    if config.policy_path is not None:
        policy_config.model_name_or_path = model_location(config.policy_path, "TrainConfig.policy_path")
    elif config.preset == "paper":
        model_location(policy_config.model_name_or_path, "the paper preset's default policy")
    policy, processor = load_policy(policy_config)
    if config.policy_train == "decoder" and not policy_config.lora:
        for name, parameter in policy.named_parameters():
            parameter.requires_grad_(".language_model.layers." in name)
    checkpoint = None if config.tool_checkpoint is None else repo_path(config.tool_checkpoint)
    if checkpoint is not None and checkpoint.is_dir():
        tool = load_tool(load_tool_config(checkpoint))
    elif config.preset == "tiny":
        if checkpoint is None and not TINY_TOOL.is_dir():
            raise missing_standin("tool", TINY_TOOL, "tool_checkpoint (--tool-checkpoint)")
        tool = load_tool(load_tool_config(checkpoint or TINY_TOOL))
    else:
        tool = load_tool(ToolConfig(preset="vit_h", checkpoint=None if checkpoint is None else str(checkpoint)))
    tool.set_trainable(config.tool_train)
    if device is not None:
        policy.to(device)
        tool.to(device)
    return policy, processor, tool, policy_config.policy_image_size


def load_splits(config: TrainConfig):
    """(train, test) datasets of ``config``: synthetic unless ``data_root`` is set."""
    config.check_paths()
    if config.data_root is None:
        sizes = {"image_size": config.image_size}
        return (load_dataset(config.dataset, "train", size=config.train_size, seed=config.seed, **sizes),
                load_dataset(config.dataset, "test", size=config.eval_size, **sizes))
    return (load_dataset(config.dataset, "train", repo_path(config.data_root)),
            load_dataset(config.dataset, "test", repo_path(config.test_data_root or config.data_root)))


def run_folder(dataset: str, method: str) -> str:
    """The default output folder of a run, relative to the repository root: ``outputs/<dataset>_<method>``."""
    return f"outputs/{dataset}_{method}"


def load_run(output_dir):
    """(config, policy, processor, tool, policy_image_size) of a finished run's ``final/`` folder."""
    out = repo_path(output_dir)
    if not (out / "final" / "policy").is_dir():
        raise FileNotFoundError(f"{out / 'final'} does not exist: {out} is not a finished run (train it first)")
    config = TrainConfig.from_json(out / "config.json")
    final_policy = out / "final" / "policy"
    if (final_policy / "adapter_config.json").is_file():  # a LoRA run saved only its adapter
        from peft import PeftModel
        policy_config = PolicyConfig(preset=config.preset, model_name_or_path=config.policy_path, lora=False)
        policy, processor = load_policy(policy_config)
        policy = PeftModel.from_pretrained(policy, str(final_policy))
    else:
        policy_config = PolicyConfig(preset=config.preset, model_name_or_path=str(final_policy), lora=False)
        policy, processor = load_policy(policy_config)
    tool = load_tool(load_tool_config(out / "final" / "tool"))
    return config, policy, processor, tool, policy_config.policy_image_size
