"""The whole study checked before anything runs: cohort specs, their overrides, and every value a stage names.

``load_pipeline`` validates each stage's own keys; this module checks what only the data can confirm. For every
cohort stage it assembles the cohort spec the stage will build (spec file or folder source, then the stage's
``overrides``) and validates it, so a typo in an override fails at ``--check`` and not as a pydantic dump at run
time. When the labels CSV is readable it compares the held-out sites, held-out conditions and abstention classes
with the CSV's values (:mod:`medvision.cohort.named_values`, the same check the build makes), and each evaluate
stage's ``positive_class``, ``risk`` and ``subgroups`` with the cohort's classes and attributes. Synthetic and
MedMNIST sources exist only once their stage runs: their overrides are checked for unknown keys, their values
at build time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medvision.cohort.named_values import CohortFacts, check_named_values, facts_from_labels
from medvision.cohort.spec import CohortSpec, FolderOptions, SpecError, load_spec, spec_from_folder
from medvision.config import ConfigError, explain_validation_error
from medvision.heads import get_head_class

__all__ = ["check_study", "merge_spec"]


def merge_spec(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the cohort-spec mapping ``base`` in place (nested keys merge, values replace)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_spec(base[k], v)
        else:
            base[k] = v


def declared_spec(stage_id: str, stage: Any, source: str) -> dict[str, Any] | None:
    """The cohort-spec mapping of a spec-file or folder stage, overrides merged; ``None`` for generated sources."""
    try:
        if stage.spec is not None:
            data = load_spec(stage.spec).model_dump(mode="json")
        elif stage.folder is not None:
            f = stage.folder
            options = FolderOptions.model_validate(f.model_dump(exclude={"images", "spec"}) | {"name": stage_id})
            data = spec_from_folder(f.images, options).model_dump(mode="json")
            merge_spec(data, f.spec)
        else:
            return None
    except SpecError as e:
        raise ConfigError(f"{source}: stages.{stage_id}: {e}") from None
    merge_spec(data, stage.overrides)
    return data


def check_study(spec: Any, source: str) -> list[str]:
    """Check every cohort stage's spec and every named value; return one note per stage saying what was checked.

    Raises:
        ConfigError: naming the stage, the key, the value, what exists and the closest spelling.
    """
    notes: list[str] = []
    facts: dict[str, CohortFacts | None] = {}
    fractions: dict[str, list[float]] = {}  # each cohort stage's declared label fractions, when readable now
    units: dict[str, str] = {}  # each cohort stage's unit (image, series, study, patient), when known now
    for stage_id, stage in spec.stages.items():
        if stage.kind == "cohort":
            facts[stage_id] = _check_cohort(stage_id, stage, source, notes, fractions)
            unit = _unit(stage_id, stage, source)
            if unit is not None:
                units[stage_id] = unit
        elif stage.kind == "finetune":
            if stage.cohort in fractions:
                _check_label_fractions(stage_id, stage, fractions[stage.cohort], source)
            if units.get(stage.cohort, "image") != "image":
                _check_bag_head(stage_id, stage, units[stage.cohort], source)
        elif stage.kind == "evaluate":
            cohorts = {spec.stages[m].cohort for m in stage.models if m in spec.stages}
            known = [facts.get(c) for c in cohorts]
            for f in known:
                if f is None:
                    continue
                try:
                    stage.check_against(f)
                except ValueError as e:
                    raise ConfigError(f"{source}: stages.{stage_id}: {e}") from None
            checked = all(f is not None for f in known) and known
            notes.append(
                f"{stage_id}: positive_class, risk and subgroups "
                + ("checked against the cohort" if checked else "checked when its cohort is built")
            )
    return notes


def _unit(stage_id: str, stage: Any, source: str) -> str | None:
    """What a case of the cohort stage's cohort will be: the overrides' ``unit``, the spec's, or the synthetic kind's
    (``ct-series`` writes a series-level spec); ``None`` when only the build can say."""
    if "unit" in stage.overrides:
        return str(stage.overrides["unit"])
    if stage.synth is not None:
        return "series" if stage.synth.kind == "ct-series" else "image"
    try:
        data = declared_spec(stage_id, stage, source)
    except (OSError, ConfigError):
        return None
    return None if data is None else str(data.get("unit", "image"))


def _check_bag_head(stage_id: str, stage: Any, unit: str, source: str) -> None:
    """A case cohort's labels belong to whole cases: its fine-tunes need a head that reads bags (``mil``)."""
    head = stage.config.get("head") if isinstance(stage.config.get("head"), dict) else {}
    names = [*stage.sweep.get("head.name", []), head.get("name", "linear")]
    for name in names:
        try:
            takes_bags = getattr(get_head_class(str(name)), "takes_bags", False)
        except ValueError:
            continue  # an unknown head: the stage config's own validation names it
        if not takes_bags:
            raise ConfigError(
                f"{source}: stages.{stage_id}: cohort {stage.cohort!r} is {unit}-level (unit: {unit}), but head "
                f"{name!r} reads one image at a time; use head: {{name: mil, options: {{pooling: gated_attention}}}}"
                " (or attention, mean, max, middle)"
            )


def _check_label_fractions(stage_id: str, stage: Any, declared: list[float], source: str) -> None:
    """A fine-tune may only ask for a label fraction its cohort declared: the nested subsets are drawn at build
    time, and a sweep that asks for another one would train its first members and then fail."""
    data = stage.config.get("data") if isinstance(stage.config.get("data"), dict) else {}
    asked = [*stage.sweep.get("data.label_fraction", []), data.get("label_fraction")]
    for value in asked:
        try:
            f = float(value)
        except (TypeError, ValueError):
            continue  # absent, or not a number: the stage config's own validation says so
        if f < 1.0 and not any(abs(f - d) < 1e-9 for d in declared):
            raise ConfigError(
                f"{source}: stages.{stage_id}: data.label_fraction {value} is not a label fraction of cohort "
                f"{stage.cohort!r} ({', '.join(map(str, declared))}); add it to that cohort's "
                "splits.label_fractions (the nested subsets are drawn when it is built) or use one of those"
            )


def _check_cohort(
    stage_id: str, stage: Any, source: str, notes: list[str], fractions: dict[str, list[float]]
) -> CohortFacts | None:
    where = f"{source}: stages.{stage_id}"
    try:
        data = declared_spec(stage_id, stage, source)
    except OSError as e:  # data not (yet) on this machine: the build will say so
        _check_override_keys(stage_id, stage.overrides, where)
        notes.append(f"{stage_id}: overrides checked; data not readable here ({e.strerror}): values checked at build")
        return None
    if data is None:  # generated when the stage runs: only the overrides' keys can be checked now
        _check_override_keys(stage_id, stage.overrides, where)
        declared = (stage.overrides.get("splits") or {}).get("label_fractions")
        if isinstance(declared, list):
            fractions[stage_id] = [float(f) for f in declared]
        notes.append(f"{stage_id}: overrides checked; values checked when the {_source_kind(stage)} data is made")
        return None
    try:
        cohort = CohortSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, CohortSpec, f"{where} (cohort spec with overrides)")) from None
    fractions[stage_id] = list(cohort.splits.label_fractions)
    missing = [f"images folder {cohort.images.resolve()}"] if not cohort.images.is_dir() and cohort.pacs is None else []
    try:
        facts = facts_from_labels(cohort)
    except SpecError as e:  # a column the spec names is not in the (readable) CSV: a typo, reported now
        raise ConfigError(f"{where}: {e}") from None
    if facts is None and cohort.labels is not None:
        missing.append(f"labels CSV {cohort.labels.csv.resolve()}")
    if missing:  # said plainly: "valid" alone would promise a run that fails at its first stage
        notes.append(
            f"{stage_id}: NOT FOUND on this machine: {'; '.join(missing)}. The spec's keys are valid, but the "
            "cohort stage will fail until these exist"
        )
    if facts is None:
        if not missing:
            notes.append(f"{stage_id}: cohort spec valid; values checked at build time (no readable labels CSV)")
        return None
    try:
        check_named_values(cohort, facts)
    except SpecError as e:
        raise ConfigError(f"{where}: {e}") from None
    unchecked = " (sites not in a CSV column: checked at build time)" if facts.sites is None else ""
    notes.append(f"{stage_id}: cohort spec and named values checked against {facts.source}{unchecked}")
    return facts


def _check_override_keys(stage_id: str, overrides: dict[str, Any], where: str) -> None:
    """Unknown keys in a generated source's overrides (a stand-in spec supplies the required keys)."""
    stand_in: dict[str, Any] = {"name": "check", "images": str(Path("."))}
    merge_spec(stand_in, overrides)
    try:
        CohortSpec.model_validate(stand_in)
    except ValidationError as err:
        unknown = [e for e in err.errors() if e["type"] == "extra_forbidden"]
        if unknown:
            message = explain_validation_error(err, CohortSpec, f"{where}.overrides")
            lines = [ln for ln in message.splitlines() if "unknown key" in ln]
            raise ConfigError(f"{where}.overrides: not cohort-spec keys:\n" + "\n".join(lines)) from None


def _source_kind(stage: Any) -> str:
    return "synthetic" if stage.synth is not None else "MedMNIST"
