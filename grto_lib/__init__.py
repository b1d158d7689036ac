"""grto_lib: GRTO and B-GRTO (group relative tool optimization) for referring segmentation.

The public API, the names notebooks and your own code should use (listed in docs/api.md), each from its module.
They are imported on first use, so ``import grto_lib`` is quick and ``python -m grto_lib.train`` does not import
``grto_lib.train`` twice.
"""
import importlib

_MODULE_OF = {
    "bootstrap": ("bootstrap_tool", "bto_buffer", "build_bto_buffer", "load_bto_buffer"),
    "config": ("TrainConfig", "repo_path"),
    "data": ("load_dataset",),
    "evaluate": ("evaluate_policy", "evaluate_true_boxes", "markdown_table", "rollout_groups"),
    "generation": ("generate_completions",),
    "losses": ("clipped_policy_loss", "group_advantages", "rollout_tool_losses", "tool_loss", "tool_loss_weights"),
    "metrics": ("cod_scores", "segmentation_scores"),
    "policy": ("PolicyConfig", "load_policy"),
    "prompts": ("build_messages", "format_answer", "to_trl_rows"),
    "rewards": ("Answer", "RewardWeights", "parse_answer"),
    "sample": ("Sample",),
    "scorer": ("RolloutScorer",),
    "tool": ("SegmentationTool", "ToolConfig", "load_tool", "save_tool"),
    "runs": ("load_models", "load_run", "load_splits", "run_folder"),
    "train": ("build_trainer", "train"),
    "trainer": ("GRTOTrainer",),
}
_EXPORTS = {name: module for module, names in _MODULE_OF.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:  # a module, as in ``grto_lib.config.REPO_ROOT``
        try:
            return importlib.import_module(f"grto_lib.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'grto_lib' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"grto_lib.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
