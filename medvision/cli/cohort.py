"""``medvision cohort ...``: build, show, synthesise and import cohorts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medvision.cli._errors import run_guarded
from medvision.cohort.spec import FolderOptions
from medvision.errors import InputError

if TYPE_CHECKING:
    from medvision.cohort.spec import CohortSpec

_FOLDER = FolderOptions.model_fields  # the folder defaults, declared once in the cohort layer

app = typer.Typer(help="Build and inspect cohorts (DICOM or photo folders + a labels CSV).", no_args_is_help=True)


@app.command("build")
def build(
    ctx: typer.Context,
    spec: Path | None = typer.Argument(None, help="A cohort spec (cohorts/NAME.yaml)."),
    images: Path | None = typer.Option(None, help="Images folder (instead of a spec)."),
    labels: Path | None = typer.Option(None, help="Labels CSV (with --images)."),
    key_column: str | None = typer.Option(None, help="CSV column that identifies the image (default: first)."),
    join: str | None = typer.Option(
        None,
        help=f"What the key column holds: sop_instance_uid|relpath|filename|stem (default: {_FOLDER['join'].default}).",
    ),
    label_column: str | None = typer.Option(
        None, help=f"CSV column with the class label (default: {_FOLDER['label_column'].default})."
    ),
    patient_column: str | None = typer.Option(None, help="CSV column with the patient id."),
    subgroup: list[str] = typer.Option([], help="Subgroup from a CSV column, NAME=COLUMN (repeatable)."),
    sex_column: str | None = typer.Option(None, help="CSV column with the patient's sex."),
    age_column: str | None = typer.Option(None, help="CSV column with the age in years."),
    site_column: str | None = typer.Option(None, help="CSV column naming the acquisition site."),
    heldout_site: list[str] = typer.Option([], help="A site whose images form site_ood (repeatable)."),
    heldout_condition: list[str] = typer.Option(
        [], help="A label value never trained on: its images form condition_ood (repeatable)."
    ),
    outlier_condition: list[str] = typer.Option(
        [], help="A label value trained on as an abstention (outlier) class, for the HOD head (repeatable)."
    ),
    size: int | None = typer.Option(
        None, help=f"Side of the cached square images (default: {_FOLDER['size'].default})."
    ),
    channels: int | None = typer.Option(
        None, help=f"1 (grayscale) or 3 (RGB) channels in the cache (default: {_FOLDER['channels'].default})."
    ),
    record_paths: bool | None = typer.Option(
        None,
        "--record-paths/--no-record-paths",
        help="Record relative paths in the manifest (default: yes; the build "
        "refuses paths that spell a patient identifier).",
    ),
    name: str | None = typer.Option(None, help="Cohort name (default: the images folder's name)."),
    kinds: str | None = typer.Option(
        None, help="Image kinds to ingest, comma-separated: dicom, photo (default: all; `dicom` skips screenshots)."
    ),
    new_key: bool = typer.Option(
        False, "--new-key", help="Rebuild over a cohort made with another pseudonym key (every pseudonym changes)."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: cohorts/build/NAME)."),
    pull: bool = typer.Option(False, "--pull", help="First pull the spec's pacs: request into its store."),
) -> None:
    """Index, label, pseudonymise, split and cache a cohort. Writes manifest.parquet, quarantine.csv,
    cohort.json and cache/ into OUT."""
    run_guarded(lambda: _build(ctx.params))


#: ``cohort build`` flags that are FolderOptions keys under the same name.
_FOLDER_FLAGS = (
    "labels",
    "key_column",
    "join",
    "label_column",
    "patient_column",
    "sex_column",
    "age_column",
    "site_column",
    "size",
    "channels",
    "record_paths",
    "name",
)


def _build(flags: dict[str, Any]) -> None:
    """``cohort build`` with its flags by name: a spec file or a folder, then the build and its card."""
    from medvision.cohort.build import build_cohort
    from medvision.cohort.card import print_card
    from medvision.cohort.spec import load_spec

    spec, images = flags["spec"], flags["images"]
    kinds = [k.strip() for k in flags["kinds"].split(",") if k.strip()] if flags["kinds"] else None
    if (spec is None) == (images is None):
        raise InputError("give either a cohort spec file or --images DIR (not both)")
    if spec is not None:
        s = load_spec(spec)
        if flags["pull"]:
            from medvision.sources.pacs import pull_cohort

            pull_cohort(s)
        if kinds:
            s = s.model_copy(update={"kinds": kinds})
    else:
        if flags["pull"]:
            raise InputError("--pull needs a cohort spec with a pacs: section")
        s = _folder_spec(images, flags, kinds)
    target = flags["out"] or Path("cohorts") / "build" / s.name
    card = build_cohort(s, target, new_key=flags["new_key"])
    print_card(card)
    typer.echo(f"cohort written to {target}")


def _folder_spec(images: Path, flags: dict[str, Any], kinds: list[str] | None) -> CohortSpec:
    """The spec of ``--images DIR``: the folder defaults, with the flags that were given."""
    from medvision.cohort.spec import spec_from_folder

    given = {k: flags[k] for k in _FOLDER_FLAGS} | {
        "kinds": kinds,
        "subgroups": dict(_pair(x) for x in flags["subgroup"]) or None,
        "heldout_sites": flags["heldout_site"] or None,
        "heldout_conditions": flags["heldout_condition"] or None,
        "outlier_conditions": flags["outlier_condition"] or None,
    }
    return spec_from_folder(images, None, **{k: v for k, v in given.items() if v is not None})


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise InputError(f"--subgroup expects NAME=COLUMN, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


@app.command("pull")
def pull(
    spec: Path = typer.Argument(..., help="A cohort spec with a pacs: section (cohorts/NAME.yaml)."),
    progress: bool = typer.Option(True, help="Show a progress bar with counts (on stderr)."),
) -> None:
    """Pull the spec's PACS request (DICOMweb or DIMSE) into its local store; a re-run skips what is present.
    Credentials come from $MEDVISION_PACS_USER/$MEDVISION_PACS_PASSWORD, $MEDVISION_PACS_TOKEN or
    pacs.credentials_file. Then run `medvision cohort build SPEC`."""

    def body() -> None:
        from medvision.sources.pacs import pull_cohort

        s = pull_cohort(spec, progress=progress)
        typer.echo(
            f"{s.matched} instances matched: {s.retrieved} retrieved, {s.skipped} already present, "
            f"{s.quarantined} quarantined (see {s.store}/quarantine.jsonl)"
            + (f"; {s.unmatched_requests} request-list row(s) matched no study" if s.unmatched_requests else "")
            + f". Build it with: medvision cohort build {spec}"
        )

    run_guarded(body)


@app.command("show")
def show(out: Path = typer.Argument(..., help="A built cohort folder.")) -> None:
    """Print the cohort card: counts per split, label and subgroup; quarantine reasons."""

    def body() -> None:
        from medvision.cohort.card import print_card
        from medvision.cohort.cohort import open_cohort

        print_card(open_cohort(out).card)

    run_guarded(body)


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic source (images, labels.csv, cohort.yaml)."),
    kind: str = typer.Option(
        "derm",
        help="derm (VL photographic + photos), cxr (DX/CR grayscale) or ct-series (one CT series per patient, "
        "labelled per series: a nodule on 3-10% of its slices).",
    ),
    patients: int = typer.Option(200, help="Number of patients."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same files."),
    size: int = typer.Option(64, help="Image side in pixels."),
    slices: int = typer.Option(40, help="ct-series: typical slices per series (each draws +-15%)."),
) -> None:
    """Write a synthetic DICOM cohort with planted structure (sites, subgroups, rare conditions, fake PHI)."""

    def body() -> None:
        from medvision.sources.synth import CLASSES, synthesize

        if kind not in CLASSES:
            raise InputError(f"--kind must be one of {', '.join(sorted(CLASSES))}, got {kind!r}")
        spec_path = synthesize(out, kind=kind, patients=patients, seed=seed, size=size, slices=slices)  # type: ignore[arg-type]
        typer.echo(f"synthetic {kind} cohort written to {out}; build it with: medvision cohort build {spec_path}")

    run_guarded(body)


@app.command("import-medmnist")
def import_medmnist(
    npz: Path = typer.Argument(..., help="A MedMNIST .npz file."),
    out: Path = typer.Argument(..., help="Folder to write PNGs, labels.csv and cohort.yaml."),
) -> None:
    """Turn a MedMNIST .npz into a cohort source (official splits kept)."""

    def body() -> None:
        from medvision.sources.medmnist import import_medmnist as run

        spec_path = run(npz, out)
        typer.echo(f"MedMNIST cohort source written to {out}; build it with: medvision cohort build {spec_path}")

    run_guarded(body)
