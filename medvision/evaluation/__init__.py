"""Evaluation metrics: discrimination, calibration, patient-level bootstrap, OOD, subgroups, label shift, ensembles,
and when to trust the model (conformal prediction sets, abstention with risk control).

Pure computation over arrays and DataFrames (no dependence on the training engine), so reports and CLI commands can
call it on saved predictions.
"""

from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use (PEP 562): importing one submodule, e.g. the settings the CLI reads at start-up,
# should not pull in scikit-learn, scipy and fairlearn (about 2 s on this machine).
_WHERE = {
    "Bootstrap": "medvision.evaluation.bootstrap",
    "BootstrapResult": "medvision.evaluation.bootstrap",
    "register_batched_metric": "medvision.evaluation.bootstrap",
    "SubgroupCalibration": "medvision.evaluation.calibration",
    "TemperatureScaler": "medvision.evaluation.calibration",
    "calibration_by_group": "medvision.evaluation.calibration",
    "fit_site_temperature": "medvision.evaluation.calibration",
    "ConformalClassifier": "medvision.evaluation.conformal",
    "conformal_table": "medvision.evaluation.conformal",
    "coverage_table": "medvision.evaluation.conformal",
    "fit_conformal": "medvision.evaluation.conformal",
    "brier_score": "medvision.evaluation.calibration",
    "expected_calibration_error": "medvision.evaluation.calibration",
    "nll": "medvision.evaluation.calibration",
    "reliability_diagram": "medvision.evaluation.calibration",
    "EnsembleSelection": "medvision.evaluation.ensemble",
    "greedy_ensemble": "medvision.evaluation.ensemble",
    "knn_rank_backbones": "medvision.evaluation.ensemble",
    "EMPriorEstimator": "medvision.evaluation.label_shift",
    "adjust_to_prior": "medvision.evaluation.label_shift",
    "compare_adjustment": "medvision.evaluation.label_shift",
    "OperatingPoint": "medvision.evaluation.metrics",
    "accuracy": "medvision.evaluation.metrics",
    "auroc": "medvision.evaluation.metrics",
    "choose_operating_point": "medvision.evaluation.metrics",
    "macro_ovr_auroc": "medvision.evaluation.metrics",
    "per_label_auroc": "medvision.evaluation.metrics",
    "sensitivity": "medvision.evaluation.metrics",
    "specificity": "medvision.evaluation.metrics",
    "top_k_accuracy": "medvision.evaluation.metrics",
    "DeferralCosts": "medvision.evaluation.ood",
    "KNNDetector": "medvision.evaluation.ood",
    "MahalanobisDetector": "medvision.evaluation.ood",
    "deferral_curve": "medvision.evaluation.ood",
    "energy_score": "medvision.evaluation.ood",
    "ensemble_probabilities": "medvision.evaluation.ood",
    "hod_score": "medvision.evaluation.ood",
    "max_logit_score": "medvision.evaluation.ood",
    "msp_score": "medvision.evaluation.ood",
    "ood_metrics": "medvision.evaluation.ood",
    "RiskControlledAbstention": "medvision.evaluation.risk_control",
    "abstention_table": "medvision.evaluation.risk_control",
    "SubgroupFrame": "medvision.evaluation.subgroups",
    "abstention_sentence": "medvision.evaluation.trust_text",
    "coverage_sentence": "medvision.evaluation.trust_text",
}


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
    "calibration_by_group",
    "SubgroupCalibration",
    "fit_site_temperature",
    "ConformalClassifier",
    "fit_conformal",
    "coverage_table",
    "conformal_table",
    "RiskControlledAbstention",
    "abstention_table",
    "coverage_sentence",
    "abstention_sentence",
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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
