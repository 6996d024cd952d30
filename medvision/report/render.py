"""Render a :class:`ReportContext` to one self-contained, offline HTML file.

Each section becomes a short list of display blocks (paragraphs, tables of pre-formatted strings, figures as data URIs,
a saliency gallery, preformatted text; built in :mod:`medvision.report.sections`), handed to one Jinja2 template with
autoescaping on, so every value from the context is escaped. Sections always appear, in :data:`SECTIONS` order, each
inside its own ``<section id=...>``; a section without data shows a "not run in this pipeline" note saying how to get
it. No stylesheet, script, font or image is fetched from anywhere: CSS is inlined and images are data URIs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import jinja2

from medvision._atomic import atomic_path
from medvision._resources import templates_dir
from medvision.report.context import ReportContext, ReportError
from medvision.report.guard import check_forbidden
from medvision.report.sections import section_blocks

__all__ = ["NOT_RUN_NOTES", "SECTIONS", "SECTION_HEADINGS", "TEMPLATE_DIR", "render_report"]

# (id, heading) in report order; ids are the <section id> attributes.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("cohort", "Cohort"),
    ("training", "Training"),
    ("performance", "In- vs out-of-distribution performance"),
    ("calibration", "Calibration"),
    ("ood", "OOD screening"),
    ("subgroups", "Subgroups"),
    ("trust", "When to trust this model"),
    ("data-efficiency", "Data efficiency"),
    ("saliency", "Saliency"),
    ("reproducibility", "Reproducibility"),
)
SECTION_HEADINGS: tuple[str, ...] = tuple(h for _, h in SECTIONS)

NOT_RUN_NOTES: dict[str, str] = {
    "cohort": "Not run in this pipeline: no cohort card was given. To get it, build the cohort with "
    "'medvision cohort build' and pass its card (CohortSection.from_card).",
    "training": "Not run in this pipeline: no training stages were recorded. To get it, fine-tune with MLflow "
    "tracking on and pass the stages and per-epoch metrics.",
    "performance": "Not run in this pipeline. To get it, evaluate the model on the test split and on held-out "
    "sites (declare them with splits.heldout_sites in the cohort spec).",
    "calibration": "Not run in this pipeline. To get it, evaluate with calibration on: temperature scaling is "
    "fitted on validation, and NLL, Brier and ECE are measured on test and on every other scored set.",
    "ood": "Not run in this pipeline. To get it, train a HOD head or choose a post-hoc detector, and hold out "
    "conditions (splits.heldout_conditions in the cohort spec) so there are unseen outliers to test on.",
    "subgroups": "Not run in this pipeline. To get it, record subgroup attributes in the cohort (sex, age band, "
    "site, or labels.subgroup_columns) and evaluate with subgroup analysis on.",
    "trust": "Not run in this pipeline. To get it, evaluate a single-label model on a cohort with validation "
    "patients (the conformal sets and the referral rule are calibrated on them; evaluate settings conformal and "
    "abstain).",
    "data-efficiency": "Not run in this pipeline. To get it, declare nested label fractions in the cohort spec "
    "(splits.label_fractions, e.g. [0.01, 0.1]) and fine-tune once per fraction and start.",
    "saliency": "Not run in this pipeline. To get it, run the attribution step (Integrated Gradients and "
    "Grad-CAM) on selected test cases.",
}

TEMPLATE_DIR = templates_dir()
_TEMPLATE = "report.html.j2"


def _environment() -> jinja2.Environment:
    if not (TEMPLATE_DIR / _TEMPLATE).is_file():
        raise ReportError(
            f"report template {TEMPLATE_DIR / _TEMPLATE} not found; the templates ship in the wheel "
            "(medvision._templates) and in a checkout's reports/templates: reinstall medvision"
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(context: ReportContext, out_path: Path, *, forbidden: Iterable[str] = ()) -> Path:
    """Render ``context`` to one self-contained HTML file (see the method spec §1, §4, §5, §7, §10).

    Args:
        context: the report's data; absent sections get a "not run" note.
        out_path: the HTML file to write (parents are created; an existing file is replaced atomically).
        forbidden: identifiers that must not appear anywhere in the context (patient names, IDs, birth dates,
            planted canaries); checked before anything is drawn.

    Returns:
        ``out_path``.

    Raises:
        ForbiddenValueError: a text field holds a forbidden string; the message names the field.
        ReportError: ``out_path`` is a directory, or the template is missing.

    Example:
        >>> from pathlib import Path; import tempfile
        >>> p = render_report(ReportContext(title="Smoke"), Path(tempfile.mkdtemp()) / "report.html")
        >>> "Data efficiency" in p.read_text()
        True
    """
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ReportError(f"out_path {out_path} is a directory; pass a file path such as {out_path / 'report.html'}")
    check_forbidden(context, forbidden)
    env = _environment()
    sections = []
    for sid, heading in SECTIONS:
        blocks = section_blocks(sid, context)
        sections.append({"id": sid, "heading": heading, "blocks": blocks, "note": NOT_RUN_NOTES.get(sid, "")})
    html = env.get_template(_TEMPLATE).render(
        title=context.title,
        model_name=context.model_name,
        generated_at=context.generated_at,
        sections=sections,
        options=context.summary,
    )
    data = html.encode("utf-8")
    with atomic_path(out_path, need_bytes=len(data)) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)  # a report is meant to be shared, whatever the umask
    return out_path
