"""radlens.train: the generic Accelerate training loop (exact resume, schedules, logs) and the retrieval
training task — dual encoder, fusion model with ITM negatives, metric-learning stage. See docs/training.md.

Importing this package registers the ``metric_projection`` model type with the checkpoint registry.
"""

from radlens.train.loop import StepSampler, TrainConfig, Trainer, TrainResult
from radlens.train.metric import MetricProjection, MetricProjectionConfig, MetricStageConfig
from radlens.train.negatives import STRATEGIES, NegativeSampler, positive_mask
from radlens.train.presets import PRESET_NAMES, PRESETS, preset_values
from radlens.train.retrieval import RetrievalRunConfig, RetrievalSummary, resolve_config, train_retrieval
from radlens.train.schedule import build_optimizer, build_scheduler, param_groups

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "STRATEGIES",
    "MetricProjection",
    "MetricProjectionConfig",
    "MetricStageConfig",
    "NegativeSampler",
    "RetrievalRunConfig",
    "RetrievalSummary",
    "StepSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
    "positive_mask",
    "preset_values",
    "resolve_config",
    "train_retrieval",
]
