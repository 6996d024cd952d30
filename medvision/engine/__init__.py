"""The stage machinery every training stage shares: configs, the Lightning trainer, resume, seeding, schedules.

Fine-tuning (:mod:`medvision.training`) and self-supervised pretraining (:mod:`medvision.ssl`) are peers built on
this package; neither imports the other.
"""

from medvision.engine.budget import TimeBudget
from medvision.engine.config import (
    BackboneConfig,
    MonitorConfig,
    OptimConfig,
    StageConfig,
    TrackingConfig,
    TrainerConfig,
    resolve_tracking_uri,
)
from medvision.engine.hyperrule import StepSchedule, hyperrule_steps
from medvision.engine.schedule import WarmupCosine, decay_groups, layer_decay_groups, warmup_cosine
from medvision.engine.trainer import FitOutcome, build_trainer, fit_stage, resume_checkpoint

__all__ = [
    "BackboneConfig",
    "FitOutcome",
    "MonitorConfig",
    "OptimConfig",
    "StageConfig",
    "StepSchedule",
    "TimeBudget",
    "TrackingConfig",
    "TrainerConfig",
    "WarmupCosine",
    "build_trainer",
    "decay_groups",
    "fit_stage",
    "hyperrule_steps",
    "layer_decay_groups",
    "resolve_tracking_uri",
    "resume_checkpoint",
    "warmup_cosine",
]
