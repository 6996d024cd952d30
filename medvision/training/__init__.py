"""Fine-tuning pretrained backbones on a cohort (BiT-style transfer, see the method spec §1).

* :func:`finetune` / :class:`FinetuneConfig` — the stage's API and its one config;
* :class:`Classifier`, :func:`save_classifier`, :func:`load_classifier` — the trained network;
* :class:`FinetuneModule` (the *what*) and :func:`build_trainer` (the *how*).
"""

from medvision.classifier import Classifier, load_classifier, save_classifier
from medvision.engine.trainer import build_trainer, resume_checkpoint
from medvision.training.config import FinetuneConfig
from medvision.training.finetune import FinetuneResult, build_classifier, finetune
from medvision.training.module import FinetuneModule

__all__ = [
    "Classifier",
    "FinetuneConfig",
    "FinetuneModule",
    "FinetuneResult",
    "build_classifier",
    "build_trainer",
    "finetune",
    "load_classifier",
    "resume_checkpoint",
    "save_classifier",
]
