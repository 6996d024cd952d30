"""A study cannot be silently wrong: every value it names exists, joins match, one spelling per meaning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cli._errors import run_guarded
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.named_values import facts_from_card
from medvision.cohort.spec import BUILTIN_COLUMNS, SpecError, spec_from_folder
from medvision.errors import InputError

LABELS = ["nev", "mel", "df", "akiec"]
SITES = ["vienna_dias", "rosario"]


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """40 real PNG photos of 20 patients, two sites, four conditions; a CSV keyed by the file stem."""
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")
    img = tmp_path / "derm" / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        patient = i // 2
        Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(img / f"isic_{i:04d}.png")
        rows.append(
            {
                "image": f"isic_{i:04d}",
                "dx": LABELS[patient % 4] if patient < 16 else "nev",
                "lesion": f"L{patient}",
                "site": SITES[patient % 2],
                "sex": ["male", "female", "unknown", ""][patient % 4],
                "view": ["dermoscopic", "clinical"][i % 2],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "derm" / "labels.csv", index=False)
    return img, tmp_path / "derm" / "labels.csv", table


def _spec(photos, **options):
    img, csv, _ = photos
    base = {"labels": csv, "label_column": "dx", "patient_column": "lesion", "site_column": "site", "size": 8}
    return spec_from_folder(img, **(base | options))


@pytest.mark.parametrize(
    ("options", "named", "suggested"),
    [
        ({"heldout_sites": ["Vienna_dias"]}, "'Vienna_dias'", "'vienna_dias'"),
        ({"heldout_conditions": ["vasc", "DF"]}, "'DF'", "'df'"),
        ({"outlier_conditions": ["AKIEC"]}, "'AKIEC'", "'akiec'"),
    ],
)
def test_a_misspelt_held_out_value_fails_naming_it_and_the_closest_match(photos, tmp_path, options, named, suggested):
    with pytest.raises(SpecError) as err:
        build_cohort(_spec(photos, **options), tmp_path / "out")
    message = str(err.value)
    assert named in message and f"did you mean {suggested}" in message and "Existing:" in message
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_correct_held_out_values_build_and_a_held_out_set_that_ends_up_empty_fails(photos, tmp_path):
    card = build_cohort(_spec(photos, heldout_sites=["rosario"], heldout_conditions=["df"]), tmp_path / "ok")
    assert card.counts["site_ood"].images > 0 and card.counts["condition_ood"].images > 0
    assert any("go to condition_ood, not site_ood" in r for r in card.rules)
    # every patient of site "rosario" is odd; make them all df: the site's set ends up empty
    img, csv, table = photos
    table.loc[table["site"] == "rosario", "dx"] = "df"
    table.to_csv(csv, index=False)
    with pytest.raises(SpecError, match="site_ood is empty"):
        build_cohort(_spec(photos, heldout_sites=["rosario"], heldout_conditions=["df"]), tmp_path / "empty")


def test_a_csv_keyed_by_file_name_fails_with_example_keys_and_the_join_that_matches(photos, tmp_path):
    img, csv, table = photos
    table.assign(image=table["image"] + ".png").to_csv(csv, index=False)
    with pytest.raises(SpecError) as err:
        build_cohort(_spec(photos), tmp_path / "out")
    message = str(err.value)
    assert "'isic_0000.png'" in message and "'isic_0000'" in message and "--join filename" in message
    result = CliRunner().invoke(
        app,
        ["cohort", "build", "--images", str(img), "--labels", str(csv), "--label-column", "dx",
         "--patient-column", "lesion", "--out", str(tmp_path / "cli")],
    )  # fmt: skip
    assert result.exit_code == 2 and "--join filename" in result.output
    card = build_cohort(_spec(photos, join="filename"), tmp_path / "joined")
    assert card.class_counts == table["dx"].value_counts().sort_index().to_dict()


def test_cli_flags_express_held_out_sites_conditions_and_abstention_classes(photos, tmp_path):
    img, csv, _ = photos
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["cohort", "build", "--images", str(img), "--labels", str(csv), "--label-column", "dx",
         "--patient-column", "lesion", "--site-column", "site", "--heldout-site", "rosario",
         "--heldout-condition", "df", "--outlier-condition", "akiec", "--size", "8", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((out / "cohort.json").read_text())
    assert card["heldout_sites"] == ["rosario"] and card["heldout_conditions"] == ["df"]
    assert card["outlier_conditions"] == ["akiec"] and card["classes"][-1] == "akiec"
    assert "abstention classes (akiec)" in result.output


def test_sex_has_one_spelling_per_meaning_whatever_its_source(photos, tmp_path):
    img, csv, table = photos
    table.iloc[:30].to_csv(csv, index=False)  # the last 10 images have no CSV row: no sex at all
    build_cohort(_spec(photos, sex_column="sex"), tmp_path / "out")
    m = open_cohort(tmp_path / "out").manifest
    assert set(m["sex"]) == {"M", "F", "unknown"}
    assert (m["sex"] == "unknown").sum() == 10 + 2 * sum(1 for p in range(15) if p % 4 in (2, 3))


@pytest.mark.parametrize(
    ("subgroup", "expected"),
    [({"view": "view"}, "built-in 'view'"), ({"pt": "lesion"}, "labels.patient_column"), ({"who": "MRN"}, "")],
)
def test_a_subgroup_that_shadows_a_builtin_or_copies_identifiers_is_refused(photos, tmp_path, subgroup, expected):
    img, csv, table = photos
    table.assign(MRN=[f"MRN{i:05d}" for i in range(len(table))]).to_csv(csv, index=False)
    with pytest.raises(SpecError, match=expected or "identifiers"):
        _spec(photos, subgroups=subgroup)
    card = build_cohort(_spec(photos, subgroups={"csv_view": "view"}), tmp_path / "ok")
    assert "csv_view" in card.subgroups
    m = open_cohort(tmp_path / "ok").manifest
    assert set(m["csv_view"]) == {"dermoscopic", "clinical"} and set(m["view"]) == {"unknown"}


def test_every_builtin_manifest_column_is_reserved(synth_cxr_cohort):
    m = open_cohort(synth_cxr_cohort).manifest
    own = [c for c in m.columns if not c.startswith("label__")]
    csv_groups = open_cohort(synth_cxr_cohort).card.spec["labels"]["subgroup_columns"]
    assert set(own) - set(csv_groups) <= BUILTIN_COLUMNS


def test_row_filters_and_a_label_map_are_applied_and_recorded(photos, tmp_path):
    img, csv, table = photos
    table.loc[:3, "dx"] = "todo"
    table.loc[4:7, "dx"] = "mel, nev"
    table.to_csv(csv, index=False)
    spec = _spec(photos).model_dump(mode="json")
    spec["labels"] |= {"exclude": {"dx": ["todo"]}, "map": {"mel, nev": "mel", "akiec": None}}
    card = build_cohort(type(_spec(photos)).model_validate(spec), tmp_path / "out")
    m = open_cohort(tmp_path / "out").manifest
    assert len(m) == 36 and "todo" not in set(m["label"].dropna())
    assert set(card.class_counts) == {"df", "mel", "nev"}
    assert card.class_counts["mel"] == int((table["dx"].isin(["mel", "mel, nev"])).sum())
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert (q["reason"].str.contains("excluded by labels.exclude")).sum() == 4
    rules = " ".join(card.rules)
    assert "4 row(s) dropped" in rules and "'mel, nev' -> 'mel' (4)" in rules and "(unlabelled)" in rules


def test_facts_from_a_built_cohort_name_its_sites_and_classes(photos, tmp_path):
    card = build_cohort(_spec(photos, heldout_conditions=["df"]), tmp_path / "out")
    facts = facts_from_card(card)
    assert facts.sites == frozenset(SITES) and facts.classes == ["akiec", "mel", "nev"]
    assert "site" in facts.attributes and "condition_ood" in facts.splits


def test_labels_that_all_map_away_fail_instead_of_building_a_cohort_without_classes(photos, tmp_path):
    spec = _spec(photos).model_dump(mode="json")
    spec["labels"]["map"] = {v: None for v in LABELS}
    with pytest.raises(SpecError, match="no image got a label"):
        build_cohort(type(_spec(photos)).model_validate(spec), tmp_path / "out")
    assert Path(tmp_path / "out").exists() is False or not (tmp_path / "out" / "manifest.parquet").exists()


def test_evaluation_refuses_unknown_subgroups_and_classes_before_predicting(synth_cxr_cohort, tmp_path):
    from medvision.evaluation.settings import EvaluationSettings
    from medvision.evaluation.stage import EvaluationRequest, evaluate_models

    request = EvaluationRequest(
        cohort_dir=synth_cxr_cohort, models=[{"run_id": "never-looked-up"}], subgroups=["agegroup", "skin"]
    )
    with pytest.raises(InputError, match=r"(?s)subgroup attribute 'agegroup'.*'age_band'.*Existing: age_band, sex"):
        evaluate_models(request, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    # the user's to fix: the command line ends with exit code 2 and the whole message, not "a bug in medvision"
    with pytest.raises(typer.Exit) as ended:
        run_guarded(lambda: evaluate_models(request, tmp_path / "eval"))
    assert ended.value.exit_code == 2
    with pytest.raises(InputError, match=r"label fraction 0.05 was not declared.*splits.label_fractions"):
        open_cohort(synth_cxr_cohort).rows("train", label_fraction=0.05)
    facts = facts_from_card(open_cohort(synth_cxr_cohort).card)
    with pytest.raises(ValueError, match=r"positive_class: class 'Pneumonia'"):
        EvaluationSettings(positive_class="Pneumonia").check_against(facts)
    EvaluationSettings(positive_class=facts.classes[0], subgroups=["sex*age_band"]).check_against(facts)
    with pytest.raises(ValueError, match="in-distribution reference"):
        EvaluationSettings(outlier_sets=["test"])
    with pytest.raises(ValueError, match="unknown set"):
        EvaluationSettings(sets=["site-ood"])


def test_duplicate_csv_keys_fail_after_the_row_filters_in_the_build_and_in_check(photos, tmp_path):
    """Issue 21: `--check` passed a cohort whose labels CSV has duplicate keys (the build then failed), and the
    duplicate-key check ran before the row filters, so a filter that removes the duplicates could not help."""
    img, csv, table = photos
    extra = table.iloc[[2, 5]].assign(dx="todo")  # second rows for two images, marked for removal
    pd.concat([table, extra], ignore_index=True).to_csv(csv, index=False)

    def pipeline(exclude: dict) -> Path:
        folder = {"images": str(img), "labels": str(csv), "label_column": "dx", "patient_column": "lesion",
                  "site_column": "site", "size": 8, "spec": {"labels": {"exclude": exclude}}}  # fmt: skip
        path = tmp_path / "study.yaml"
        data = {
            "name": "dups",
            "output_dir": str(tmp_path / "runs"),
            "stages": {"cohort": {"kind": "cohort", "folder": folder}},
        }
        path.write_text(json.dumps(data))
        return path

    checked = CliRunner().invoke(app, ["run", str(pipeline({})), "--check"])
    assert checked.exit_code == 2, checked.output
    said = " ".join(checked.output.split())
    assert "2 duplicate value(s) in key column 'image'" in said and "(first at CSV line 42)" in said
    assert "labels.exclude" in said  # and what to do
    with pytest.raises(SpecError, match=r"2 duplicate value\(s\) in key column 'image'"):
        build_cohort(_spec(photos), tmp_path / "refused")

    checked = CliRunner().invoke(app, ["run", str(pipeline({"dx": ["todo"]})), "--check"])
    assert checked.exit_code == 0, checked.output
    spec = _spec(photos).model_dump(mode="json")
    spec["labels"] |= {"exclude": {"dx": ["todo"]}}
    card = build_cohort(type(_spec(photos)).model_validate(spec), tmp_path / "out")  # the filter removes them
    m = open_cohort(tmp_path / "out").manifest
    assert len(m) == 40 and "todo" not in set(m["label"].dropna()) and card.images == 40
    assert m.set_index("relpath").loc["isic_0002.png", "label"] == table.loc[2, "dx"]


def test_the_transfer_recipe_audits_subgroups_and_a_heldout_site_from_its_parameters(photos, tmp_path):
    """Issue 21: transfer-effnet.yaml had no parameters for the sex, age and site columns or a held-out site, so the
    recommended recipe could not run the subgroup and site audit without editing its stages."""
    img, csv, _ = photos
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "transfer-effnet.yaml"
    common = [
        f"params.images={img}",
        f"params.labels={csv}",
        "params.key_column=image",
        "params.join=stem",
        "params.label_column=dx",
        "params.patient_column=lesion",
        "params.outlier_conditions=[akiec]",
        "params.heldout_conditions=[df]",
        "params.sex_column=sex",
        "params.site_column=site",
        "params.subgroups=[sex, site]",
    ]

    def check(*extra: str):
        args = [a for s in [*common, *extra] for a in ("--set", s)]
        return CliRunner().invoke(app, ["run", str(recipe), "--check", *args])

    ok = check("params.heldout_sites=[rosario]")
    assert ok.exit_code == 0, ok.output
    assert "cohort: cohort spec and named values checked against" in ok.output
    typo = check("params.heldout_sites=[rosaro]")
    assert typo.exit_code == 2 and "rosaro" in typo.output and "rosario" in typo.output, typo.output
    unknown = check("params.heldout_sites=[rosario]", "params.subgroups=[sex, hospital]")
    assert unknown.exit_code == 2 and "hospital" in unknown.output, unknown.output
