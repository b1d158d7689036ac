"""grto_lib: GRTO and B-GRTO (group relative tool optimization) for referring segmentation.

The public API, the names notebooks and your own code should use (see the README):
"""
from .bootstrap import bootstrap_tool, bto_buffer, build_bto_buffer, load_bto_buffer
from .config import TrainConfig, repo_path
from .data import load_dataset
from .evaluate import evaluate_oracle, evaluate_policy, markdown_table, rollout_groups
from .generation import generate_completions
from .losses import (clipped_policy_loss, group_advantages, grpo_token_loss, rollout_tool_losses, tool_loss,
                     tool_loss_weights)
from .metrics import cod_scores, segmentation_scores
from .policy import PolicyConfig, load_policy
from .prompts import build_messages, format_answer, to_trl_rows
from .rewards import Answer, RewardWeights, parse_answer
from .sample import Sample
from .scorer import RolloutScorer
from .tool import SegmentationTool, ToolConfig, load_tool, save_tool
from .runs import load_models, load_run, load_splits, run_folder
from .train import build_trainer, train
from .trainer import GRTOTrainer

__all__ = [
    "Answer", "GRTOTrainer", "PolicyConfig", "RewardWeights", "RolloutScorer", "Sample", "SegmentationTool",
    "ToolConfig", "TrainConfig", "bootstrap_tool", "bto_buffer", "build_bto_buffer", "build_messages", "build_trainer",
    "cod_scores", "evaluate_oracle", "evaluate_policy", "format_answer", "generate_completions",
    "group_advantages", "grpo_token_loss", "load_bto_buffer", "load_dataset", "load_policy", "load_tool",
    "parse_answer", "save_tool", "segmentation_scores", "to_trl_rows", "tool_loss", "tool_loss_weights", "train",
    "load_models", "load_run", "load_splits", "markdown_table", "repo_path", "rollout_groups", "run_folder",
    "clipped_policy_loss", "rollout_tool_losses",
]
