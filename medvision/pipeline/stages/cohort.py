"""The cohort stage: build a cohort from a spec file, a synthetic generator, a MedMNIST file or a folder + CSV.

Its identity is the cohort spec it builds (overrides merged) plus what its files are: a changed archive (names,
sizes, modification times) or corrected labels change the key and rebuild the cohort. At ``--check`` time it
assembles the spec it will build and validates it; when the labels CSV is readable it also checks the held-out
sites, held-out conditions and abstention classes against the CSV's values (:mod:`medvision.cohort.named_values`,
the same check the build makes). Synthetic and MedMNIST sources exist only once the stage runs: their overrides
are validated against a stand-in spec (keys and values), the named values at build time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from medvision._atomic import atomic_write_text
from medvision.cohort.build import build_cohort
from medvision.cohort.labels import check_label_keys
from medvision.cohort.named_values import CohortFacts, check_named_values, facts_from_card, facts_from_labels
from medvision.cohort.spec import CohortSpec, FolderOptions, SpecError, load_spec, spec_from_folder
from medvision.config import ConfigError, StrictModel, explain_validation_error
from medvision.pipeline.executors import record_output, reused_output
from medvision.pipeline.kinds import (
    Identity,
    Rows,
    StageContext,
    StageKind,
    StageOutput,
    StageSpec,
    is_plain_name,
    plain_name_error,
)
from medvision.pipeline.study import Study
from medvision.sources.medmnist import import_medmnist
from medvision.sources.synth import UNITS, synthesize

__all__ = ["CohortKind", "CohortStage", "FolderSource", "MedMNISTSource", "SynthSource", "merge_spec"]


class SynthSource(StrictModel):
    """A synthetic cohort written by :func:`medvision.sources.synth.synthesize` (the demo's data)."""

    kind: Literal["derm", "cxr", "ct-series"] = "derm"
    patients: int = Field(120, ge=10)
    seed: int = 0
    size: int = Field(64, ge=16)
    #: ``ct-series`` only: the typical number of slices per series (``None``: the generator's default, 40).
    slices: int | None = Field(None, ge=8, le=1000)


class MedMNISTSource(StrictModel):
    """A MedMNIST ``.npz`` imported with :func:`medvision.sources.medmnist.import_medmnist`."""

    npz: Path


class FolderSource(FolderOptions):
    """An image folder plus an optional labels CSV, with the defaults of ``medvision cohort build --images``."""

    images: Path
    #: Extra cohort-spec keys merged over the folder defaults (e.g. ``splits.heldout_conditions``).
    spec: dict[str, Any] = Field(default_factory=dict)


class CohortStage(StageSpec):
    """Build a cohort: from a cohort spec file, a synthetic generator, a MedMNIST file or a folder + CSV."""

    kind: Literal["cohort"]
    spec: Path | None = None
    synth: SynthSource | None = None
    medmnist: MedMNISTSource | None = None
    folder: FolderSource | None = None
    #: Cohort-spec keys merged over the source's spec (e.g. ``preprocess.size``, ``splits.label_fractions``).
    overrides: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, _: Any) -> None:
        names = {
            "folder.name": self.folder.name if self.folder is not None else None,
            "folder.spec.name": self.folder.spec.get("name") if self.folder is not None else None,
            "overrides.name": self.overrides.get("name"),
        }
        for key, name in names.items():
            if name is not None and not is_plain_name(name):
                raise ValueError(plain_name_error(key, name, "it names the cohort's folder"))
        given = [k for k in ("spec", "synth", "medmnist", "folder") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a cohort stage takes exactly one source of spec, synth, medmnist, folder "
                f"(got {', '.join(given) or 'none'})"
            )


def merge_spec(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the cohort-spec mapping ``base`` in place (nested keys merge, values replace)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_spec(base[k], v)
        else:
            base[k] = v


class CohortKind(StageKind[CohortStage]):
    """Build a cohort (:func:`medvision.cohort.build.build_cohort`); its output is the cohort folder."""

    name = "cohort"
    config = CohortStage
    exclusive = True  # one cohort folder for every key

    # -- identity and execution ---------------------------------------------------------------------------

    def identity(self, ctx: StageContext[CohortStage]) -> dict[str, Identity]:
        return {"-": self._prepare(ctx)[1]}

    def _prepare(self, ctx: StageContext[CohortStage]) -> tuple[CohortSpec, Identity]:
        """The spec this stage builds (a generated source is written first) and its identity."""
        try:
            spec = CohortSpec.model_validate(_source_spec(ctx))
        except ValidationError as err:
            where = f"stages.{ctx.stage_id} (cohort spec)"
            raise ConfigError(explain_validation_error(err, CohortSpec, where)) from None
        inputs = [_fingerprint(Path(spec.images))]
        if spec.labels is not None and Path(spec.labels.csv).exists():  # corrected labels rebuild the cohort
            st = Path(spec.labels.csv).stat()
            inputs.append(f"{spec.labels.csv}:{st.st_size}:{st.st_mtime_ns}")
        return spec, Identity(config=spec.model_dump(mode="json"), upstream=inputs, manifest_sha256=None)

    def execute(self, ctx: StageContext[CohortStage]) -> tuple[StageOutput, Rows]:
        spec, identity = self._prepare(ctx)
        key = identity.key(self.name, ctx.version)
        reused = reused_output(ctx, key)
        if reused is not None:
            manifest = (reused.manifest_sha256 or "unknown")[:12]
            return reused, [
                {"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": f"manifest {manifest}"}
            ]
        cohort_dir = ctx.folder / "cohort"
        run_id = ctx.tracker.start_child(ctx.stage_id, self.name, key, ctx.stage_id)
        ok = False
        try:
            card = build_cohort(spec, cohort_dir)
            client = ctx.tracker.client
            for name in ("images", "patients", "quarantined"):
                client.log_metric(run_id, f"cohort/{name}", float(getattr(card, name)))
            client.log_param(run_id, "cohort.name", spec.name)
            client.log_param(run_id, "cohort.manifest_sha256", card.manifest_sha256)
            client.log_artifact(run_id, str(cohort_dir / "cohort.json"), "cohort")
            output = StageOutput(
                kind=self.name, run_ids=[run_id], cohort_dir=cohort_dir, manifest_sha256=card.manifest_sha256
            )
            record_output(ctx, run_id, output)
            ok = True
        finally:
            ctx.tracker.end(run_id, ok)
        counts = f"{card.images} images, {card.patients} patients, {card.quarantined} quarantined"
        return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": counts}]

    # -- the whole-study check ------------------------------------------------------------------------------

    def check(self, stage_id: str, stage: CohortStage, study: Study) -> list[str]:
        """Validate the spec this stage will build; record its label fractions and (readable) facts for the
        stages that read it."""
        study.cohort_of[stage_id] = stage_id
        card = study.built.get(stage_id)
        if card is not None:  # built in this run: its card says what it holds
            study.facts[stage_id] = facts_from_card(card)
            study.fractions[stage_id] = list(card.label_fractions)
            study.units[stage_id] = card.unit
            return [f"{stage_id}: built ({card.images} images); named values checked against its card"]
        where = f"{study.source}: stages.{stage_id}"
        unit = _known_unit(stage)
        if unit is not None:
            study.units[stage_id] = unit
        try:
            data = declared_spec(stage_id, stage, study.source)
        except OSError as e:  # data not (yet) on this machine: the build will say so
            _check_generated_overrides(stage.overrides, where)
            return [f"{stage_id}: overrides checked; data not readable here ({e.strerror}): values checked at build"]
        if data is None:  # generated when the stage runs: the overrides are checked against a stand-in
            _check_generated_overrides(stage.overrides, where)
            declared = (stage.overrides.get("splits") or {}).get("label_fractions")
            if isinstance(declared, list):
                study.fractions[stage_id] = [float(f) for f in declared]
            made = "synthetic" if stage.synth is not None else "MedMNIST"
            return [f"{stage_id}: overrides checked (keys and values); named values when the {made} data is made"]
        try:
            cohort = CohortSpec.model_validate(data)
        except ValidationError as err:
            raise ConfigError(
                explain_validation_error(err, CohortSpec, f"{where} (cohort spec with overrides)")
            ) from None
        study.fractions[stage_id] = list(cohort.splits.label_fractions)
        study.units[stage_id] = cohort.unit  # the spec's unit, overrides merged
        study.facts[stage_id], notes = _check_values(stage_id, cohort, where)
        return notes


def _known_unit(stage: CohortStage) -> str | None:
    """What a case of this stage's cohort will be when known without reading its spec: the overrides' ``unit``,
    or the synthetic kind's (``ct-series`` writes a series-level spec)."""
    if "unit" in stage.overrides:
        return str(stage.overrides["unit"])
    return UNITS[stage.synth.kind] if stage.synth is not None else None


def declared_spec(stage_id: str, stage: CohortStage, source: str) -> dict[str, Any] | None:
    """The cohort-spec mapping of a spec-file or folder stage, overrides merged; ``None`` for generated sources."""
    try:
        if stage.spec is not None:
            data = load_spec(stage.spec).model_dump(mode="json")
        elif stage.folder is not None:
            data = _folder_spec(stage_id, stage.folder)
        else:
            return None
    except SpecError as e:
        raise ConfigError(f"{source}: stages.{stage_id}: {e}") from None
    merge_spec(data, stage.overrides)
    return data


def _folder_spec(stage_id: str, folder: FolderSource) -> dict[str, Any]:
    options = FolderOptions.model_validate(folder.model_dump(exclude={"images", "spec"}) | {"name": stage_id})
    data = spec_from_folder(folder.images, options).model_dump(mode="json")
    merge_spec(data, folder.spec)
    return data


def _check_values(stage_id: str, cohort: CohortSpec, where: str) -> tuple[CohortFacts | None, list[str]]:
    """The named values of a readable cohort against its labels CSV; what was found missing, said plainly."""
    missing = [f"images folder {cohort.images.resolve()}"] if not cohort.images.is_dir() and cohort.pacs is None else []
    try:
        facts = facts_from_labels(cohort)
        check_label_keys(cohort.labels)  # one row per image after the row filters, as the build requires
    except SpecError as e:  # a column the spec names is not in the (readable) CSV: a typo, reported now
        raise ConfigError(f"{where}: {e}") from None
    if facts is None and cohort.labels is not None:
        missing.append(f"labels CSV {cohort.labels.csv.resolve()}")
    notes = []
    if missing:  # said plainly: "valid" alone would promise a run that fails at its first stage
        notes.append(
            f"{stage_id}: NOT FOUND on this machine: {'; '.join(missing)}. The spec's keys are valid, but the "
            "cohort stage will fail until these exist"
        )
    if facts is None:
        return None, notes or [f"{stage_id}: cohort spec valid; values checked at build time (no readable labels CSV)"]
    try:
        check_named_values(cohort, facts)
    except SpecError as e:
        raise ConfigError(f"{where}: {e}") from None
    unchecked = " (sites not in a CSV column: checked at build time)" if facts.sites is None else ""
    return facts, [*notes, f"{stage_id}: cohort spec and named values checked against {facts.source}{unchecked}"]


def _check_generated_overrides(overrides: dict[str, Any], where: str) -> None:
    """The overrides of a source generated at run time, validated against a stand-in spec: unknown keys and bad
    values (splits that do not sum to 1, a negative size) fail now. The stand-in supplies the keys the generator
    writes (so "required" is never the overrides' fault); only problems at or below an overridden key are kept."""
    stand_in: dict[str, Any] = {"name": "check", "images": str(Path("."))}
    merge_spec(stand_in, overrides)
    try:
        CohortSpec.model_validate(stand_in)
    except ValidationError as err:
        unknown = [e for e in err.errors() if e["type"] == "extra_forbidden"]
        message = explain_validation_error(err, CohortSpec, f"{where}.overrides")
        if unknown:
            lines = [ln for ln in message.splitlines() if "unknown key" in ln]
            raise ConfigError(f"{where}.overrides: not cohort-spec keys:\n" + "\n".join(lines)) from None
        touched = _paths(overrides)
        ours = [e for e in err.errors() if e["type"] != "missing" and _overlaps(tuple(map(str, e["loc"])), touched)]
        if ours:
            raise ConfigError(message) from None


def _paths(mapping: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every dotted path an overrides mapping sets, as tuples."""
    out: list[tuple[str, ...]] = []
    for k, v in mapping.items():
        here = (*prefix, str(k))
        out += _paths(v, here) if isinstance(v, dict) and v else [here]
    return out


def _overlaps(loc: tuple[str, ...], touched: list[tuple[str, ...]]) -> bool:
    """An error at ``loc`` comes from the overrides when it lies at, above or below a path they set."""
    return any(loc[: len(t)] == t or t[: len(loc)] == loc for t in touched)


def _source_spec(ctx: StageContext[CohortStage]) -> dict[str, Any]:
    """The cohort spec as a mapping, with the stage's overrides merged in; a generated source is written first."""
    stage, source = ctx.stage, ctx.folder / "source"
    if stage.spec is not None:
        data = load_spec(stage.spec).model_dump(mode="json")
    elif stage.synth is not None:
        params = stage.synth.model_dump(exclude_none=True)  # derm/cxr stamps as before slices existed
        _write_once(source / "synth.json", params, lambda: synthesize(source, **params))
        data = load_spec(source / "cohort.yaml").model_dump(mode="json")
    elif stage.medmnist is not None:
        npz = Path(stage.medmnist.npz).expanduser().resolve()
        stamp = {"npz": str(npz), "size": npz.stat().st_size if npz.exists() else None}
        _write_once(source / "medmnist.json", stamp, lambda: import_medmnist(npz, source))
        data = load_spec(source / "cohort.yaml").model_dump(mode="json")
    elif stage.folder is not None:
        data = _folder_spec(ctx.stage_id, stage.folder)
    else:  # CohortStage's own validation demands one source, so only a hand-built stage lands here
        raise ConfigError(f"stages.{ctx.stage_id}: a cohort stage needs one of spec, synth, medmnist, folder")
    merge_spec(data, stage.overrides)
    return data


def _write_once(marker: Path, stamp: dict[str, Any], write: Callable[[], object]) -> None:
    """Write a generated source unless ``marker`` says the same one is already there (written last, whole)."""
    if not (marker.exists() and json.loads(marker.read_text()) == stamp):
        write()
        atomic_write_text(marker, json.dumps(stamp))


def _fingerprint(root: Path) -> str:
    """Names, sizes and modification times of every file under ``root``: a changed archive changes the key."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
