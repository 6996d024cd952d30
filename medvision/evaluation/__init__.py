"""Evaluation metrics: discrimination, calibration, patient-level bootstrap, OOD, subgroups, label shift, ensembles.

Pure computation over arrays and DataFrames (no dependence on the training engine), so reports and CLI commands can
call it on saved predictions.
"""

from medvision.evaluation.bootstrap import Bootstrap, BootstrapResult, register_batched_metric
from medvision.evaluation.calibration import (
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    nll,
    reliability_diagram,
)
from medvision.evaluation.ensemble import EnsembleSelection, greedy_ensemble, knn_rank_backbones
from medvision.evaluation.label_shift import EMPriorEstimator, adjust_to_prior, compare_adjustment
from medvision.evaluation.metrics import (
    OperatingPoint,
    accuracy,
    auroc,
    choose_operating_point,
    macro_ovr_auroc,
    per_label_auroc,
    sensitivity,
    specificity,
    top_k_accuracy,
)
from medvision.evaluation.ood import (
    DeferralCosts,
    KNNDetector,
    MahalanobisDetector,
    deferral_curve,
    energy_score,
    ensemble_probabilities,
    hod_score,
    max_logit_score,
    msp_score,
    ood_metrics,
)
from medvision.evaluation.subgroups import SubgroupFrame

__all__ = [
    "Bootstrap",
    "BootstrapResult",
    "register_batched_metric",
    "auroc",
    "macro_ovr_auroc",
    "per_label_auroc",
    "accuracy",
    "top_k_accuracy",
    "sensitivity",
    "specificity",
    "OperatingPoint",
    "choose_operating_point",
    "nll",
    "brier_score",
    "expected_calibration_error",
    "reliability_diagram",
    "TemperatureScaler",
    "msp_score",
    "max_logit_score",
    "energy_score",
    "hod_score",
    "ensemble_probabilities",
    "MahalanobisDetector",
    "KNNDetector",
    "ood_metrics",
    "DeferralCosts",
    "deferral_curve",
    "SubgroupFrame",
    "adjust_to_prior",
    "EMPriorEstimator",
    "compare_adjustment",
    "greedy_ensemble",
    "EnsembleSelection",
    "knn_rank_backbones",
]
