"""The recipes end to end on a small synthetic cohort (real Lightning, MLflow and scikit-learn): the linear probe is
an ordinary classifier run equal to scikit-learn's model, LP-FT starts from that probe with decayed per-layer rates,
the step schedule meets its budget, ``auto`` records why it chose, and config mistakes fail at load time."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from medvision.classifier import Classifier
from medvision.cohort.cohort import open_cohort
from medvision.config import ConfigError, parse_config
from medvision.engine.features import FeatureCache
from medvision.engine.hyperrule import hyperrule_steps
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.recipes import fit
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, FinetuneModule, finetune, linear_probe
from medvision.training.config import FinetuneOptimConfig
from medvision.training.probe import LogisticProbe
from medvision.training.recipe import DECISION_ARTIFACT, RecipeDecision, decision_of_run

GRID = [0.01, 0.1, 1.0]


def _raw(cohort: Path, tmp_path: Path, name: str, **sections) -> dict:
    raw = {
        "data": {"cohort_dir": str(cohort), "batch_size": 8, "label_fraction": 0.1},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "probe": {"c_grid": GRID, "folds": 3},
        "optim": {"name": "sgd", "lr": 0.05, "epochs": 2, "warmup_epochs": 0.5},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp_path / name),
        "resume": "never",
        "seed": 5,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-recipes"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _probe_on(cohort_dir: Path, seed: int, num_outputs: int) -> tuple[LogisticProbe, np.ndarray, object]:
    """The probe fitted by hand on the same rows and features the recipe sees (same seed = same backbone)."""
    cohort = open_cohort(cohort_dir)
    L.seed_everything(seed, verbose=False)
    backbone = create_backbone("resnet-tiny", "none", cohort.in_chans)
    rows = cohort.rows("train", 0.1)
    rows = rows[(rows["label_idx"] >= 0) & (rows["label_idx"] < num_outputs)]
    store = FeatureCache.for_cohort(cohort.cache, backbone)
    x = store.features(cohort.cache, rows["cache_key"].tolist())
    probe = LogisticProbe(GRID, folds=3, seed=seed).fit(x, rows["label_idx"], rows["patient_id"], num_outputs)
    val = cohort.rows("val")
    return probe, store.features(cohort.cache, val["cache_key"].tolist()), val


def test_linear_probe_is_an_ordinary_run_that_reproduces_sklearn(synth_cxr_cohort, tmp_path):
    cfg = parse_config(_raw(synth_cxr_cohort, tmp_path, "probe", recipe="linear-probe"), FinetuneConfig)
    result = finetune(cfg)
    run = _client(tmp_path).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["recipe"] == "linear-probe"
    assert {"probe/C", "val/auroc", "best/val/auroc"} <= set(run.data.metrics)
    assert result.best_score == run.data.metrics["val/auroc"] and result.best_checkpoint is None
    assert {"model", "backbone", "config.yaml"} <= {f.path for f in _client(tmp_path).list_artifacts(result.run_id)}

    classifier, card = load_run_classifier(result.run_id, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert classifier.freeze_backbone and card.input_shape == (1, 32, 32)
    assert card.preprocessing is not None  # export and serving read the cohort's recipe from the probe run too
    probe, x_val, _ = _probe_on(synth_cxr_cohort, cfg.seed, classifier.head.num_outputs)
    assert run.data.metrics["probe/C"] == probe.C_
    with torch.no_grad():  # the logged network, through its own backbone, on validation images
        cohort = open_cohort(synth_cxr_cohort)
        images = np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in cohort.rows("val")["cache_key"]])
        logits = classifier.eval().logits(torch.from_numpy(images)).double()
    np.testing.assert_allclose(logits.softmax(-1).numpy(), probe.predict_proba(x_val), atol=1e-6)


class _AtStart(Callback):
    """Keeps the head's weights and each parameter's peak rate (before the warm-up scales it) as training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weight = pl_module.classifier.head.fc.weight.detach().clone()
        self.bias = pl_module.classifier.head.fc.bias.detach().clone()
        named = {id(p): n for n, p in pl_module.named_parameters()}
        self.lrs = {named[id(p)]: g["initial_lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.state = {k: v.detach().clone() for k, v in pl_module.classifier.backbone.state_dict().items()}


def test_lp_ft_starts_from_the_probe_and_trains_every_layer_at_its_decayed_rate(synth_cxr_cohort, tmp_path):
    raw = _raw(synth_cxr_cohort, tmp_path, "lpft", recipe="lp-ft", head={"name": "hod"})
    cfg = parse_config(raw, FinetuneConfig)
    start = _AtStart()
    result = finetune(cfg, callbacks=[start])
    probe, _, _ = _probe_on(synth_cxr_cohort, cfg.seed, 4)  # HOD: 3 inlier classes + 1 outlier condition
    torch.testing.assert_close(start.weight, torch.as_tensor(probe.coef_, dtype=torch.float32), atol=1e-6, rtol=0)
    torch.testing.assert_close(start.bias, torch.as_tensor(probe.intercept_, dtype=torch.float32), atol=1e-6, rtol=0)
    # LP-FT's rate: optim.lr x lpft.lr_scale at the head, x 0.75 per timm layer below it (lpft.layer_decay)
    peak = 0.05 * 0.1
    assert start.lrs["classifier.head.fc.weight"] == pytest.approx(peak)
    scales = sorted({v / peak for k, v in start.lrs.items() if k.startswith("classifier.backbone.")})
    assert scales == pytest.approx([0.75**i for i in range(len(scales), 0, -1)])  # one rate per timm layer
    assert start.lrs["classifier.backbone.model.conv1.weight"] == pytest.approx(peak * scales[0])  # the stem: lowest
    # batch-norm statistics stay as pretrained (the probe read features made with them); the weights do train
    final = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    final = {
        k.removeprefix("classifier.backbone."): v for k, v in final.items() if k.startswith("classifier.backbone.")
    }
    stats = [k for k in start.state if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(final[k], start.state[k]) for k in stats)
    assert not torch.equal(final["model.conv1.weight"], start.state["model.conv1.weight"])
    run = _client(tmp_path).get_run(result.run_id)
    assert float(run.data.params["optim.effective_lr"]) == pytest.approx(peak)
    assert float(run.data.params["lpft.probe_C"]) == probe.C_


def test_layer_decay_without_lp_ft_gives_each_layer_its_rate():
    torch.manual_seed(0)
    backbone = create_backbone("resnet-tiny", "none", 1)
    clf = Classifier(backbone, create_head("linear", backbone.num_features, 3), ["a", "b", "c"])
    module = FinetuneModule(clf, FinetuneOptimConfig(lr=0.05, layer_decay=0.5, weight_decay=1e-4))
    named = {id(p): n for n, p in module.named_parameters()}
    lrs = {named[id(p)]: g["lr"] for g in module.param_groups() for p in g["params"]}
    assert set(lrs) == set(named.values())  # every parameter, once
    assert lrs["classifier.head.fc.weight"] == lrs["classifier.head.fc.bias"] == pytest.approx(0.05)
    scales = sorted({v / 0.05 for k, v in lrs.items() if k.startswith("classifier.backbone.")})
    assert scales == pytest.approx([0.5**i for i in range(len(scales), 0, -1)])  # one rate per timm layer, halving
    assert lrs["classifier.backbone.model.conv1.weight"] == pytest.approx(0.05 * scales[0])  # the stem: lowest
    plain = FinetuneModule(clf, FinetuneOptimConfig(lr=0.05)).param_groups()
    assert {g["lr"] for g in plain} == {0.05}  # without layer_decay: one rate


def test_step_schedule_under_a_budget_trains_fewer_epochs_than_the_rule(synth_cxr_cohort, tmp_path):
    # 3 CPU-seconds: the same epochs on a busy machine as on a quiet one
    raw = _raw(synth_cxr_cohort, tmp_path, "steps", schedule="steps", budget_minutes=0.05, budget_clock="cpu")
    result = finetune(parse_config(raw, FinetuneConfig))
    run = _client(tmp_path).get_run(result.run_id)
    rule = hyperrule_steps(28, 8, 32)  # 28 training images at 10%, batch 8: 3 steps an epoch
    assert int(run.data.params["optim.epochs"]) == rule.epochs == 167
    planned = run.data.metrics["budget/epochs"]
    assert 1 <= planned < rule.epochs
    history = _client(tmp_path).get_metric_history(result.run_id, "train/loss")
    assert len(history) <= planned


def test_auto_trains_the_fingerprints_candidates_and_records_why(synth_cxr_cohort, tmp_path, monkeypatch):
    raw = _raw(synth_cxr_cohort, tmp_path, "auto", recipe="auto", tracking={"run_name": "auto"})
    monkeypatch.setattr(linear_probe, "_FITTED", OrderedDict())  # nothing remembered from other tests
    fits = []
    real_fit = LogisticProbe.fit
    monkeypatch.setattr(LogisticProbe, "fit", lambda self, *a, **k: fits.append(self) or real_fit(self, *a, **k))
    result = fit(parse_config(raw, FinetuneConfig))
    # the linear-probe candidate's fit is LP-FT's first stage too: fitted once, in the run that records it
    assert len(fits) == 1
    lp_run, lpft_run = (_client(tmp_path).get_run(result.candidates[r].run_id) for r in ("linear-probe", "lp-ft"))
    assert float(lpft_run.data.params["lpft.probe_C"]) == lp_run.data.metrics["probe/C"] == fits[0].C_
    client = _client(tmp_path)
    decision = RecipeDecision.read(
        download_artifacts(
            run_id=result.run_id, artifact_path=DECISION_ARTIFACT, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
        )
    )
    assert decision == result.decision == decision_of_run(result.run_id, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert decision_of_run(decision.winner_run_id, f"sqlite:///{tmp_path / 'mlflow.db'}") is None  # a fixed recipe
    # 10% of the cohort: a handful of patients per class, so the rule leaves full fine-tuning out
    assert decision.fingerprint.min_patients_per_class <= 20 and "Woerner" in decision.candidates_rule
    assert [c.recipe for c in decision.candidates] == ["linear-probe", "lp-ft"]
    assert decision.winner in ("linear-probe", "lp-ft") and decision.val_patients > 0
    lpft = decision.candidates[1]
    assert lpft.versus == "linear-probe" and lpft.difference is not None
    assert lpft.adopted == (lpft.difference.low > 0) and (decision.winner == "lp-ft") == lpft.adopted
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medvision.recipe.winner"] == decision.winner
    assert run.data.params["recipe.winner"] == decision.winner
    assert run.data.params["fingerprint.labelled_images"] == str(decision.fingerprint.labelled_images)
    assert run.data.metrics["recipe/linear-probe/val_auroc"] == pytest.approx(decision.candidates[0].val_auroc.point)
    # the auto run holds the winner's network, so evaluation and export use it like any run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mine, my_card = load_run_classifier(result.run_id, uri)
    theirs, their_card = load_run_classifier(decision.winner_run_id, uri)
    assert my_card.preprocessing is not None and my_card.preprocessing == their_card.preprocessing
    for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert set(result.candidates) == {"linear-probe", "lp-ft"}
    assert (tmp_path / "auto" / "candidates" / "lp-ft" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["recipe=lp_ft"], "recipe"),
        (["optim.layer_decay=1.5"], "layer_decay"),
        (["recipe=lp-ft", "head.name=het"], "has none"),
        (["recipe=auto", "mode=linear"], "mode must stay 'full'"),
        (["probe.c_grid=[0, 1]"], "positive"),
        (["budget_minutes=0"], "budget_minutes"),
    ],
)
def test_recipe_mistakes_fail_at_load_time_naming_the_key(tmp_path, override, message):
    raw = {"data": {"cohort_dir": str(tmp_path)}, "backbone": {"name": "resnet-tiny"}}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, FinetuneConfig, override)


def test_auto_is_not_a_plain_finetune(tmp_path):
    cfg = parse_config(
        {"data": {"cohort_dir": str(tmp_path)}, "backbone": {"name": "resnet-tiny"}, "recipe": "auto"}, FinetuneConfig
    )
    with pytest.raises(ValueError, match="medvision.recipes.fit"):
        finetune(cfg)


def test_medvision_finetune_runs_auto_unless_the_config_names_a_recipe(tmp_path):
    import typer
    from typer.testing import CliRunner

    from medvision.cli.finetune import finetune_command

    app = typer.Typer()
    app.command()(finetune_command)
    path = tmp_path / "run.yaml"
    missing = tmp_path / "no-cohort"  # the run stops at the cohort; what matters is the recipe it set out with
    path.write_text(yaml.safe_dump({"data": {"cohort_dir": str(missing)}, "backbone": {"name": "resnet-tiny"}}))
    chosen = CliRunner().invoke(app, [str(path)])
    assert "recipe: auto" in chosen.output and chosen.exit_code != 0 and "no-cohort" in chosen.output
    for override in ("recipe=finetune", "mode=linear", "trainer.devices=2"):
        kept = CliRunner().invoke(app, [str(path), "--set", override])
        assert "recipe: auto" not in kept.output, override


@pytest.mark.slow
def test_a_pipeline_auto_stage_reuses_an_identical_fixed_recipe_run(tmp_path, monkeypatch):
    from medvision.pipeline import load_pipeline, run_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "probe": {"c_grid": GRID, "folds": 3},
        "data": {"batch_size": 16},
        "optim": {"name": "adamw", "lr": 0.003, "epochs": 1, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
    }
    spec = {
        "name": "recipes",
        "output_dir": "out",
        "tracking": {"experiment": "recipes"},
        "stages": {
            "cohort": {"kind": "cohort", "synth": {"kind": "derm", "patients": 30, "seed": 0, "size": 32}},
            "probe": {"kind": "finetune", "cohort": "cohort", "config": {**config, "recipe": "linear-probe"}},
            "auto": {"kind": "finetune", "cohort": "cohort", "config": {**config, "recipe": "auto"}},
        },
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    echoed: list[str] = []
    result = run_pipeline(load_pipeline(tmp_path / "p.yaml"), echo=echoed.append)
    probe_run, auto_run = result.outputs["probe"].run_ids[0], result.outputs["auto"].run_ids[0]
    decision = decision_of_run(auto_run, result.tracking_uri)
    assert decision is not None and decision.candidates[0].recipe == "linear-probe"
    assert decision.candidates[0].run_id == probe_run  # the probe stage's run, not a second probe
    assert any("candidate linear-probe: reusing finished run" in line for line in echoed)
    client = MlflowClient(result.tracking_uri)
    lpft = client.get_run(decision.candidates[1].run_id)
    assert lpft.data.tags["medvision.stage"] == "auto" and lpft.data.tags["mlflow.parentRunId"] == result.parent_run_id
    again = run_pipeline(load_pipeline(tmp_path / "p.yaml"), echo=lambda _: None)
    assert [r["status"] for r in again.rows] == ["reused"] * 3
