"""``make demo``: the whole product on an embedded default, on CPU, offline, in a few minutes.

It runs ``pipelines/demo.yaml``: a synthetic dermatology cohort of real DICOM files (fake PHI in the
headers) → MICLe pretraining → HOD fine-tuning at two label fractions → evaluation on the test set, the
held-out site and the held-out conditions → the clinical report. Every stage is an MLflow run in a SQLite
store in the working directory; the demo ends by printing the report's path and how to browse the runs.
"""

from __future__ import annotations

from pathlib import Path

from medvision._resources import pipelines_dir
from medvision.pipeline import PipelineResult, load_pipeline, print_summary, run_pipeline

__all__ = ["DEMO_PIPELINE", "run_demo"]

#: The demo pipeline (the checkout's pipelines/demo.yaml, or the wheel's copy).
DEMO_PIPELINE = pipelines_dir() / "demo.yaml"


def run_demo(out: str | Path = "demo-output", overrides: list[str] | None = None) -> PipelineResult:
    """Run the demo pipeline with its outputs under ``out``; returns the pipeline's result."""
    if not DEMO_PIPELINE.exists():
        raise FileNotFoundError(f"{DEMO_PIPELINE} not found: the medvision installation is incomplete; reinstall it")
    spec = load_pipeline(DEMO_PIPELINE, [f"output_dir={Path(out)}", *(overrides or [])])
    result = run_pipeline(spec)
    print_summary(result)
    return result
