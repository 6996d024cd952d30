"""Saliency maps: IG completeness, localisation of a planted signal, Grad-CAM on CNNs and ViTs, the gallery helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from torch import nn

from medvision.classifier import Classifier
from medvision.evaluation.overlay import COLORMAP, MAX_OPACITY, display_image, overlay
from medvision.evaluation.saliency import integrated_gradients, pick_cases, saliency_maps
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.models.backbone import Backbone
from medvision.models.record import WeightsRecord
from medvision.report.context import SALIENCY_CATEGORIES

SIZE = 64  # resnet-tiny and bit-tiny have stride 32: a 2x2 final map at 64 px


def _classifier(
    name: str, num_classes: int = 3, in_chans: int = 1, freeze: bool = False, head: str = "linear", **head_options
) -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone(name, weights="none", in_chans=in_chans)
    head_module = create_head(head, backbone.num_features, num_classes, **head_options)
    return Classifier(backbone, head_module, [f"c{i}" for i in range(num_classes)], freeze_backbone=freeze)


class _LocalCNN(nn.Module):
    """Three strided convs (receptive field 17 px, 4x4 map at 32 px) with the timm feature/head methods.

    The zoo's tiny ResNets see the whole image from every cell of their last stage, so where their evidence lands
    after a few training steps is arbitrary; a network whose cells see only their own neighbourhood has a right
    answer for "where", which is what the planted-signal test needs.
    """

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3))


PLANT = 32  # image size of the planted-signal test; the square lies inside the top-left 16x16 quadrant


def _square_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise in [0, 0.4]; class 1 adds a bright 8x8 square somewhere inside the top-left quadrant."""
    x = torch.rand(n, 1, PLANT, PLANT, generator=generator) * 0.4
    y = torch.randint(0, 2, (n,), generator=generator)
    for i in torch.nonzero(y).flatten().tolist():
        r, c = torch.randint(0, PLANT // 2 - 8 + 1, (2,), generator=generator).tolist()
        x[i, 0, r : r + 8, c : c + 8] = 1.0
    return x, y


@pytest.fixture(scope="module")
def planted() -> tuple[Classifier, torch.Tensor]:
    """A small CNN trained for 50 steps to detect the square; returns it (eval mode) and held-out class-1 images."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    record = WeightsRecord(
        name="local-cnn",
        source="none",
        sha256=None,
        input_size=(1, PLANT, PLANT),
        in_chans=1,
        mean=(0.0,),
        std=(1.0,),
        licence=None,
        num_classes_upstream=None,
    )
    backbone = Backbone(_LocalCNN(), record, {"name": "local-cnn", "model_kwargs": {}})
    clf = Classifier(backbone, create_head("linear", 16, 2), ["plain", "square"])
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(50):
        x, y = _square_images(32, gen)
        loss = torch.nn.functional.cross_entropy(clf(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    x, y = _square_images(64, gen)
    with torch.no_grad():
        acc = (clf(x).logits.argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"the planted-signal model did not learn the task (accuracy {acc:.2f}); the test needs it"
    return clf, x[y == 1][:6]


def _quadrant_density_ratio(maps: np.ndarray) -> np.ndarray:
    """Per image: mean map value inside the top-left quadrant / mean value over the other three quadrants."""
    h = maps.shape[1] // 2
    inside = maps[:, :h, :h].sum(axis=(1, 2))
    outside = maps.sum(axis=(1, 2)) - inside
    return (inside / (h * h)) / np.maximum(outside / (3 * h * h), 1e-12)


def test_integrated_gradients_are_complete() -> None:
    clf = _classifier("resnet-tiny").eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [2, 1]
    attr, delta = integrated_gradients(clf, x, targets, steps=32)
    assert attr.shape == (2, 1, 32, 32) and attr.dtype == np.float32
    with torch.no_grad():
        diff = (clf(x).logits - clf(torch.zeros_like(x)).logits)[torch.arange(2), targets].numpy()
    sums = attr.reshape(2, -1).sum(axis=1)
    assert np.abs(diff).min() > 1e-3  # otherwise "sums ~ 0" would pass trivially
    np.testing.assert_allclose(sums, diff, atol=0.02 * max(1.0, np.abs(diff).max()))
    np.testing.assert_allclose(delta, sums - diff, atol=1e-3)
    assert np.abs(delta).max() < 0.02


@pytest.mark.slow
def test_planted_square_is_where_the_maps_point(planted: tuple[Classifier, torch.Tensor]) -> None:
    clf, x = planted
    for method in ("integrated_gradients", "gradcam"):
        maps = saliency_maps(clf, x, [1] * len(x), method=method, steps=16)
        ratio = _quadrant_density_ratio(maps)
        assert (ratio > 1.0).all() and np.median(ratio) > 2.0, f"{method}: top-left / elsewhere density {ratio}"


@pytest.mark.parametrize(("name", "size"), [("resnet-tiny", SIZE), ("bit-tiny", SIZE), ("vit-tiny", 32)])
def test_gradcam_cnn_and_vit(name: str, size: int) -> None:
    clf = _classifier(name, in_chans=3).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        predicted = clf(x).logits.argmax(1).tolist()  # the report explains the predicted class
    maps = saliency_maps(clf, x, predicted, method="gradcam")
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        assert m.max() == pytest.approx(1.0) and m.std() > 1e-3  # normalised per image and not constant


def test_hod_target_indexes_logit_columns_and_bad_inputs_are_named() -> None:
    clf = _classifier("vit-tiny", num_classes=2, head="hod", num_outlier_classes=2).eval()
    x = torch.rand(1, 1, 32, 32)
    assert saliency_maps(clf, x, [3], method="gradcam").shape == (1, 32, 32)  # an outlier-class logit
    with pytest.raises(ValueError, match="targets"):
        saliency_maps(clf, x, [4], method="gradcam")
    with pytest.raises(ValueError, match="targets has 2 entries"):
        saliency_maps(clf, x, [0, 1], method="integrated_gradients")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saliency_maps(clf, x * 255, [0], method="integrated_gradients")
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency_maps(clf, x, [0], method="lime")  # type: ignore[arg-type]


@pytest.mark.parametrize("freeze", [True, False])
def test_flags_and_batchnorm_statistics_are_untouched(freeze: bool) -> None:
    clf = _classifier("resnet-tiny", freeze=freeze)
    clf.train()  # a frozen backbone stays in eval inside a training classifier: both kinds of flag are checked
    modes = {n: m.training for n, m in clf.named_modules()}
    grads = {n: p.requires_grad for n, p in clf.named_parameters()}
    stats = {n: b.clone() for n, b in clf.named_buffers()}
    assert any(not v for v in grads.values()) == freeze
    x = torch.rand(2, 1, SIZE, SIZE)
    for method in ("integrated_gradients", "gradcam"):
        maps = saliency_maps(clf, x, [1, 0], method=method, steps=8)
        assert maps.max() == pytest.approx(1.0)  # gradients reached the pixels even through a frozen backbone
    assert {n: m.training for n, m in clf.named_modules()} == modes
    assert {n: p.requires_grad for n, p in clf.named_parameters()} == grads
    for n, b in clf.named_buffers():  # attribution ran in eval mode: no batch-norm statistics were updated
        assert torch.equal(b, stats[n]), n
    assert all(p.grad is None for p in clf.parameters())
    clf.eval()
    saliency_maps(clf, x, [1, 0], method="gradcam")
    assert not any(m.training for m in clf.modules())


def test_overlay_leaves_the_image_where_the_map_is_zero_and_colours_it_by_magnitude() -> None:
    """The one blend of the report's gallery and the DICOM saliency images: magma at an opacity that follows the
    map's magnitude (0.65 at its maximum), so a zero map leaves the (grey) image exactly as it was."""
    rng = np.random.default_rng(0)
    gray = display_image(rng.random((1, 8, 10)))
    assert gray.shape == (8, 10, 3) and (gray[..., 0] == gray[..., 2]).all()
    heat = rng.random((8, 10))
    heat[:4] = 0.0
    out = overlay(gray, heat * 7.0)  # any scale: the magnitude is divided by its maximum
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:4], gray[:4])  # no attribution: the image, still grey
    top = np.unravel_index(np.argmax(heat), heat.shape)
    colour = np.asarray(colormaps[COLORMAP](1.0)[:3])
    expected = (1 - MAX_OPACITY) * gray[top] / 255.0 + MAX_OPACITY * colour
    np.testing.assert_allclose(out[top], np.round(expected * 255), atol=1)
    assert len(set(out[top].tolist())) > 1  # coloured, not grey
    np.testing.assert_array_equal(overlay(gray, np.zeros((8, 10))), gray)
    assert overlay(gray[..., 0], heat).shape == (8, 10, 3)  # a 2-D grey image
    assert overlay(gray, heat[::2, ::2]).shape == (8, 10, 3)  # a coarser map is resized to the image
    with pytest.raises(ValueError, match="heatmap must be 2-D"):
        overlay(gray, heat[None])
    with pytest.raises(ValueError, match="image must be uint8"):
        overlay(gray.astype(np.float32), heat)
    with pytest.raises(ValueError, match="image must be"):
        display_image(rng.random((2, 8, 10)))


def test_pick_cases_categories_order_and_no_duplicates() -> None:
    y_true = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    y_pred = np.array([0, 1, 0, 1, 1, 0, 0, 0])  # wrong: 2, 3, 6
    conf = np.array([0.6, 0.9, 0.95, 0.7, 0.8, 0.99, 0.5, np.nan])
    ood = np.array([0.1, 0.2, 9.0, 0.3, 5.0, 0.4, 0.5, 7.0])
    picks = pick_cases(y_true, y_pred, conf, ood, n_per_category=2)
    assert picks == [(5, "correct"), (1, "correct"), (2, "wrong"), (3, "wrong"), (7, "most-ood"), (4, "most-ood")]
    assert {c for _, c in picks} <= set(SALIENCY_CATEGORIES)
    assert all(type(i) is int for i, _ in picks)
    big = pick_cases(y_true, y_pred, conf, ood, n_per_category=10)
    assert len({i for i, _ in big}) == len(big) == 8  # each image once, NaN confidence (7) only as most-ood
    assert [c for _, c in big].count("wrong") == 3 and (7, "most-ood") in big
    assert pick_cases(y_true, y_pred, conf, None) == [
        (5, "correct"),
        (1, "correct"),
        (4, "correct"),
        (2, "wrong"),
        (3, "wrong"),
        (6, "wrong"),
    ]
    ties = np.ones(8)
    assert pick_cases(y_true, y_pred, ties, None, seed=3) == pick_cases(y_true, y_pred, ties, None, seed=3)
    with pytest.raises(ValueError, match="confidence must be 1-D with 8 entries"):
        pick_cases(y_true, y_pred, conf[:5], ood)


def test_maps_are_scaled_by_a_robust_range_not_their_maximum():
    from medvision.evaluation.saliency import _normalise

    # a Grad-CAM that is high everywhere (0.805..1.0) must show where it is highest, not a uniform wash
    cam = torch.linspace(0.805, 1.0, 64 * 64).view(1, 64, 64)
    shown = _normalise(cam, floor=True)
    assert shown.min() == 0.0 and shown.max() == 1.0 and shown.std() > 0.25
    # one hot pixel must not dim an Integrated Gradients map to black
    ig = torch.full((1, 64, 64), 0.01)
    ig[0, 0, 0] = 10.0
    assert np.median(_normalise(ig)) == 1.0
    assert _normalise(torch.zeros(1, 8, 8)).max() == 0.0
