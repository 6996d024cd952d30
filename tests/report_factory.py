"""A synthetic but complete ``ReportContext`` for the report tests: every section filled with numbers whose
meaning the tests know (``full_context``'s arguments move the headline AUROCs, the ECE and the worst subgroup gap),
so a test can assert what the summary and the sections must say about them.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from medvision.report import (
    CalibrationSection,
    CohortSection,
    DataEfficiencySection,
    OODSection,
    PerformanceSection,
    ReportContext,
    Reproducibility,
    SaliencyCase,
    SaliencySection,
    SubgroupSection,
    TrainingSection,
    TrainingStage,
    TrustSection,
)


def _perf(rng: np.random.Generator, id_auroc: float, ood_auroc: float) -> pd.DataFrame:
    rows = []
    for s, base in (("test", id_auroc), ("site_ood", ood_auroc), ("val", id_auroc + 0.01)):
        for m in ("auroc", "accuracy", "sensitivity", "specificity"):
            v = base if m == "auroc" else float(rng.uniform(0.6, 0.9))
            rows.append({"eval_set": s, "metric": m, "value": v, "low": v - 0.03, "high": v + 0.03})
    return pd.DataFrame(rows)


def _subgroups(rng: np.random.Generator, worst_gap: float, gap_high: float) -> SubgroupSection:
    groups = [("sex", "F"), ("sex", "M"), ("age_band", "18-40"), ("age_band", "80+"), ("site", "B")]
    rows = []
    for i, (a, g) in enumerate(groups):
        gap = worst_gap if g == "80+" else float(rng.uniform(-0.01, 0.02))
        hi = gap_high if g == "80+" else gap + 0.04
        flagged = i == 4  # flagged groups carry NaN metrics, as the evaluation frames give them
        rows.append(
            {
                "attribute": a,
                "group": g,
                "n_patients": int(rng.integers(30, 90)),
                "n_images": int(rng.integers(100, 300)),
                "value": 0.9 + gap,
                "low": 0.86 + gap,
                "high": 0.94 + gap,
                "gap": gap,
                "gap_low": gap - 0.04,
                "gap_high": hi,
                "flag": "few_patients" if flagged else "",
            }
        )
        if flagged:
            rows[-1].update({k: np.nan for k in ("value", "low", "high", "gap", "gap_low", "gap_high")})
    return SubgroupSection(metric="auroc", overall=0.9, overall_low=0.87, overall_high=0.93, table=pd.DataFrame(rows))


def _saliency(rng: np.random.Generator) -> SaliencySection:
    cases = []
    for i, cat in enumerate(["correct", "correct", "wrong", "most-ood"]):
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        cases.append(
            SaliencyCase(
                case_id=f"img-{i:04d}a7",
                category=cat,
                true_label="nevus",
                predicted_label="melanoma" if i == 2 else "nevus",
                confidence=float(rng.uniform(0.5, 1)),
                ood_score=float(rng.uniform()),
                image=buf.getvalue() if i == 0 else img,
                integrated_gradients=rng.normal(size=(32, 32)),
                gradcam=rng.uniform(size=(7, 7)).astype(np.float32),
            )
        )
    return SaliencySection(cases=cases)


def _trust() -> TrustSection:
    """Coverage and referral on test (the promise holds) and at a held-out site (it does not carry over)."""
    coverage = pd.DataFrame(
        [
            {"method": "marginal", "set": s, "attribute": a, "group": g, "n_patients": n, "flag": "",
             "coverage": c, "coverage_low": c - 0.03, "coverage_high": min(c + 0.03, 1.0), "mean_set_size": 1.4,
             "singleton_rate": 0.6, "guarantee": v}
            for s, a, g, n, c, v in (
                ("test", "all", "all", 120, 0.91, "holds"),
                ("test", "sex", "F", 60, 0.92, "not_promised"),
                ("site_ood", "all", "all", 80, 0.74, "does_not_carry_over"),
            )
        ]
    )  # fmt: skip
    abstention = pd.DataFrame(
        [
            {"set": s, "attribute": "all", "group": "all", "n_patients": n, "flag": "", "referral_rate": r,
             "referral_rate_low": r - 0.05, "referral_rate_high": r + 0.05, "risk": k, "risk_low": max(k - 0.02, 0),
             "risk_high": k + 0.03, "guarantee": v}
            for s, n, r, k, v in (
                ("test", 120, 0.3, 0.04, "holds"), ("site_ood", 80, 0.45, 0.17, "does_not_carry_over")
            )
        ]
    )  # fmt: skip
    return TrustSection(
        reference="test",
        sentences=["At a 90% target, the sets covered 91% (88–94%) of test patients."],
        target=0.9,
        alpha=0.05,
        coverage=coverage,
        abstention=abstention,
    )


def full_context(
    seed: int = 0,
    id_auroc: float = 0.91,
    ood_auroc: float = 0.78,
    ece: float = 0.03,
    worst_gap: float = -0.08,
    gap_high: float = -0.02,
) -> ReportContext:
    rng = np.random.default_rng(seed)
    splits = ["train", "val", "test", "site_ood"]
    classes = ["melanoma", "nevus", "bcc"]
    counts = pd.DataFrame(
        [{"split": s, "label": c, "images": int(rng.integers(10, 200))} for s in splits for c in classes]
    )
    cohort = CohortSection(
        name="derm-synth",
        classes=classes,
        manifest_sha256="ab" * 32,
        splits=pd.DataFrame(
            {"split": splits, "patients": rng.integers(20, 100, 4), "images": rng.integers(200, 500, 4)}
        ),
        counts=counts,
        subgroups=pd.DataFrame(
            [
                {"attribute": "sex", "value": v, "split": s, "images": int(rng.integers(5, 100))}
                for s in splits
                for v in "FM"
            ]
        ),
        quarantined=3,
        quarantine_reasons={"unsupported transfer syntax": 2, "no pixel data": 1},
    )
    curves = pd.DataFrame(
        [
            {"stage": st, "epoch": e, "metric": m, "value": float(rng.uniform())}
            for st in ("simclr", "finetune")
            for e in range(5)
            for m in ("train_loss", "val_auroc")
        ]
    )
    training = TrainingSection(
        stages=[
            TrainingStage(
                name="simclr",
                backbone="bit-m-r50x1",
                weights_source="file:weights.safetensors",
                head="none",
                epochs=5,
                mlflow_run_id="0f3c9a",
            ),
            TrainingStage(
                name="finetune",
                backbone="bit-m-r50x1",
                weights_source="mlflow:0f3c9a",
                head="hod",
                label_fraction=0.1,
                epochs=5,
                best_val_metric="val_auroc",
                best_val_value=0.9,
                mlflow_run_id="77e1b2",
            ),
        ],
        curves=curves,
    )
    conf = np.linspace(0.05, 0.95, 15)
    reliability = pd.DataFrame(
        [
            {
                "method": m,
                "confidence": c,
                "accuracy": float(np.clip(c + rng.normal(0, s), 0, 1)),
                "count": int(rng.integers(1, 80)),
            }
            for m, s in (("uncalibrated", 0.1), ("temperature-scaled", 0.02))
            for c in conf
        ]
    )
    calibration = CalibrationSection(
        metrics=pd.DataFrame(
            {
                "method": ["uncalibrated", "temperature-scaled"],
                "nll": [0.61, 0.42],
                "brier": [0.21, 0.16],
                "ece": [0.12, ece],
            }
        ),
        reliability=reliability,
        temperature=1.7,
    )
    detectors = ["hod_p_out", "msp", "energy"]
    scores = pd.DataFrame(
        {
            "detector": np.repeat(detectors, 200),
            "score": rng.normal(size=600),
            "is_outlier": np.tile(np.arange(200) % 4 == 0, 3),
        }
    )
    scores.loc[scores["is_outlier"], "score"] += 1.5
    rates = np.linspace(0, 1, 11)
    deferral = pd.DataFrame(
        [
            {
                "detector": d,
                "referral_rate": r,
                "outliers_missed": max(0.0, 1 - 6.2 * r) if d == "hod_p_out" else 1 - r,
                "mean_cost": 1 - 0.5 * r,
            }
            for d in detectors
            for r in rates
        ]
    )
    ood = OODSection(
        detectors=pd.DataFrame(
            {
                "detector": detectors,
                "auroc": [0.88, 0.74, 0.79],
                "aupr_in": rng.uniform(size=3),
                "aupr_out": rng.uniform(size=3),
                "fpr_at_95_tpr": rng.uniform(size=3),
                "auroc_low": [0.84, 0.7, 0.75],
                "auroc_high": [0.92, 0.78, 0.83],
            }
        ),
        scores=scores,
        deferral=deferral,
        outlier_sets=["unseen conditions"],
    )
    curve = pd.DataFrame(
        [
            {"start": st, "label_fraction": f, "value": v, "low": v - 0.04, "high": v + 0.04}
            for st, off in (("self-supervised (REMEDIS)", 0.05), ("supervised (BiT-M)", 0.0))
            for f, v in ((0.01, 0.7 + off), (0.1, 0.82 + off), (1.0, 0.9 + off / 2))
        ]
    )
    return ReportContext(
        title="Melanoma triage model",
        model_name="bit-m-r50x1 + HOD",
        generated_at="2025-01-01T00:00:00Z",
        cohort=cohort,
        training=training,
        performance=PerformanceSection(table=_perf(rng, id_auroc, ood_auroc), operating_point="Youden on validation"),
        calibration=calibration,
        ood=ood,
        subgroups=_subgroups(rng, worst_gap, gap_high),
        trust=_trust(),
        data_efficiency=DataEfficiencySection(curve=curve),
        saliency=_saliency(rng),
        reproducibility=Reproducibility(
            config_yaml="seed: 0\nbackbone: bit-m-r50x1\n", code_version="3f2a1c9", seeds={"split": 0, "train": 1}
        ),
    )
