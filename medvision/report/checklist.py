"""Publication checklists (TRIPOD+AI, CLAIM 2024, a model card) filled from an evaluation's own records.

Why: most items a journal asks for (data sources, eligibility, patient-level splits, preprocessing, the model, its
training, metrics with CIs, subgroups, calibration, OOD behaviour, missing data) are already facts of the cohort
card, the classifier card, the training run's parameters and ``metrics.json``; copying them by hand is where errors
creep in. Each answer is built from *facts* (:mod:`medvision.report.checklist_facts`) and cites where they came
from; an item no fact answers stays a TODO for the authors, never a guess. The item lists are data
(``checklists/*.yaml`` beside this module), with the published item numbers and short paraphrases of their text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, ConfigDict

from medvision._atomic import write_all
from medvision._resources import templates_dir
from medvision.cohort.fingerprints import IdentifierFingerprints
from medvision.config import read_yaml
from medvision.errors import InputError
from medvision.report.checklist_facts import FACTS, RunRecords, records_of
from medvision.report.guard import check_fingerprints

__all__ = [
    "CHECKLISTS",
    "Checklist",
    "ItemAnswer",
    "RunRecords",
    "fill_checklist",
    "load_checklist_spec",
    "records_of",
    "write_checklist",
]

#: The checklists shipped (``checklists/<name>.yaml``).
CHECKLISTS = ("tripod-ai", "claim", "model-card")
_DIR = Path(__file__).resolve().parent / "checklists"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemAnswer(_Model):
    """One checklist item: answered from the records (with its sources) or a TODO for the authors."""

    id: str
    section: str
    text: str
    status: Literal["answered", "TODO"]
    answer: str | None = None
    sources: list[str] = []


class Checklist(_Model):
    name: str
    title: str
    reference: str
    evaluation: str
    items: list[ItemAnswer]

    @property
    def todo(self) -> list[ItemAnswer]:
        return [i for i in self.items if i.status == "TODO"]


class _ItemSpec(_Model):
    id: str
    section: str
    text: str
    facts: list[str] = []


class _ChecklistSpec(_Model):
    title: str
    reference: str
    items: list[_ItemSpec]


def load_checklist_spec(name: str) -> _ChecklistSpec:
    """The item list of checklist ``name``; an unknown fact name in it is a bug in the shipped YAML."""
    if name not in CHECKLISTS:
        raise InputError(f"--checklist {name!r} is not one of {', '.join(CHECKLISTS)}")
    path = _DIR / f"{name}.yaml"
    spec = _ChecklistSpec.model_validate(read_yaml(path.read_text(), str(path)))
    unknown = sorted({f for i in spec.items for f in i.facts} - set(FACTS))
    if unknown:
        raise ValueError(f"{path}: unknown fact(s) {unknown}; known: {sorted(FACTS)}")
    return spec


def fill_checklist(name: str, records: RunRecords, evaluation: str) -> Checklist:
    """Checklist ``name`` with every item the records answer filled in (with sources), the rest TODO."""
    spec = load_checklist_spec(name)
    items = []
    for item in spec.items:
        facts = [f for f in (FACTS[k](records) for k in item.facts) if f is not None]
        base = {"id": item.id, "section": item.section, "text": item.text}
        if facts:
            sources = list(dict.fromkeys(s for f in facts for s in f.sources))
            items.append(ItemAnswer(**base, status="answered", answer=" ".join(f.text for f in facts), sources=sources))
        else:
            items.append(ItemAnswer(**base, status="TODO"))
    return Checklist(name=name, title=spec.title, reference=spec.reference, evaluation=evaluation, items=items)


def to_markdown(checklist: Checklist) -> str:
    lines = [
        f"# {checklist.title} checklist",
        "",
        f"Filled by medvision from evaluation {checklist.evaluation}. Reference: {checklist.reference}.",
        f"{len(checklist.items) - len(checklist.todo)} of {len(checklist.items)} items answered from the run's "
        f"records; {len(checklist.todo)} TODO for the authors.",
        "",
        "| item | section | checklist item | answer | source |",
        "|---|---|---|---|---|",
    ]
    for i in checklist.items:
        answer = i.answer if i.status == "answered" else "**TODO** (authors)"
        cell = (answer or "").replace("|", "\\|")
        lines.append(f"| {i.id} | {i.section} | {i.text} | {cell} | {'; '.join(i.sources)} |")
    return "\n".join(lines) + "\n"


def to_html(checklist: Checklist) -> str:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
    )
    return env.get_template("checklist.html.j2").render(checklist=checklist)


def write_checklist(checklist: Checklist, out_dir: Path, cohort_dir: Path) -> list[Path]:
    """``<name>.md`` and ``<name>.html`` in ``out_dir``, after the report's identifier check (a checklist carries
    pseudonymous ids only).

    Raises:
        ForbiddenValueError: a text holds an identifier of the cohort's patients (recognised by its fingerprint).
    """
    fingerprints, _ = IdentifierFingerprints.for_cohort(cohort_dir)
    if fingerprints is not None:
        check_fingerprints(checklist, fingerprints)
    md, html = to_markdown(checklist), to_html(checklist)
    paths = [out_dir / f"{checklist.name}.md", out_dir / f"{checklist.name}.html"]
    write_all([(paths[0], len(md) * 4, _text(md)), (paths[1], len(html) * 4, _text(html))])
    return paths


def _text(content: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(content, encoding="utf-8")

    return write
