"""Saliency maps for the clinical report: Integrated Gradients and Grad-CAM, as captum computes them.

A report shows clinicians *where* the model looked for a few chosen cases (the most confident correct and wrong
predictions and the most out-of-distribution images). Two complementary attributions are offered:

* **Integrated Gradients** (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017, eq. 1):
  the path integral of input gradients from a black baseline to the image. Pixel-level and model-agnostic; it
  satisfies *completeness* (attributions sum to ``logit(x) - logit(baseline)``), which the tests check.
* **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017, eqs. 1-2): channel weights = spatially averaged gradients of the class logit at a
  spatial feature layer, map = ReLU of the weighted channel sum, upsampled to the image. Coarse but robust to the
  noisy gradients that make raw pixel maps hard to read.

The target of both is one column of the head's logits (``HeadOutput.logits[:, k]``; for HOD heads the logits include
the outlier classes, and ``k`` indexes that full column set). Attribution runs the model in eval mode and puts
every module's train/eval flag back afterwards; no parameter's ``requires_grad`` is touched, and gradients are taken
with respect to the input (or the chosen layer) only, so frozen backbones work too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, Protocol, TypeGuard, cast

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from torch import Tensor, nn

from medvision.classifier import Classifier
from medvision.models import Backbone

__all__ = ["integrated_gradients", "pick_cases", "saliency_maps"]

SaliencyMethod = Literal["integrated_gradients", "gradcam"]
_METHODS = ("integrated_gradients", "gradcam")
#: IG evaluates ``steps`` scaled copies of every image; this many copies per image go through one forward pass,
#: so memory stays bounded for large backbones at the cost of a few more passes.
_IG_STEPS_PER_PASS = 8


# -- the function captum differentiates ---------------------------------------------------------------------------


def _logit_function(classifier: Classifier) -> Callable[[Tensor], Tensor]:
    """What captum differentiates: :meth:`Classifier.logits`, which keeps the graph even for a frozen backbone."""
    return classifier.logits


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (batch-norm statistics, no dropout), then give every module its own flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _prepare(classifier: Classifier, images: Tensor, targets: Sequence[int]) -> tuple[Tensor, list[int]]:
    """Check images and targets; return the images on the model's device and the targets as ints.

    Runs one forward pass (to count the logit columns), so call it in eval mode: a training-mode pass would update
    batch-norm statistics.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W) in [0, 1], got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; pass at least one image")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}; divide uint8 images by 255")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be finite and in [0, 1] (normalisation happens inside the backbone)")
    targets = [int(t) for t in targets]
    if len(targets) != images.shape[0]:
        raise ValueError(f"targets has {len(targets)} entries for {images.shape[0]} images; give one logit index each")
    param = next(classifier.parameters(), None)
    device = param.device if param is not None else images.device
    images = images.detach().to(device=device, dtype=torch.float32)
    with torch.no_grad():
        num_logits = _logit_function(classifier)(images[:1]).shape[1]
    bad = [t for t in targets if not 0 <= t < num_logits]
    if bad:
        raise ValueError(f"targets {bad} are not logit columns of this head (it has {num_logits}: 0..{num_logits - 1})")
    return images, targets


#: Percentiles of a map's robust display range: one hot pixel must not dim the rest, and a map whose values all
#: lie high (a Grad-CAM spanning 0.805-1.0) must not show as a uniform wash.
_ROBUST_LOW, _ROBUST_HIGH = 0.01, 0.99


def _normalise(maps: Tensor, floor: bool = False) -> np.ndarray:
    """Per-image ``|map|`` scaled to ``[0, 1]`` by a robust range, as float32; an all-zero map stays zero.

    The top of the range is the 99th percentile (not the maximum), so Integrated Gradients, whose mass sits in
    few pixels, stays visible on grey images; with ``floor`` (Grad-CAM) the bottom is the 1st percentile, so a
    map that is high everywhere shows where it is *highest*.
    """
    mags = maps.detach().abs().float()
    flat = mags.flatten(1)
    high = torch.quantile(flat, _ROBUST_HIGH, dim=1).view(-1, 1, 1)
    low = torch.quantile(flat, _ROBUST_LOW, dim=1).view(-1, 1, 1) if floor else torch.zeros_like(high)
    span = high - low
    tiny = torch.finfo(torch.float32).tiny
    out = torch.where(span > tiny, (mags - low) / span.clamp_min(tiny), (mags > 0).float() * (high > 0).float())
    return out.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


# -- Integrated Gradients ------------------------------------------------------------------------------------------


def integrated_gradients(
    classifier: Classifier, images: Tensor, targets: Sequence[int], steps: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Signed, per-pixel Integrated Gradients of logit ``targets[i]`` for image ``i`` (Sundararajan et al. 2017).

    The baseline is the black image (all zeros in ``[0, 1]`` space, i.e. before the backbone's normalisation):
    "no signal" for X-ray-like images, so an attribution says how much each pixel's brightness added to the logit.
    The integral uses captum's Gauss-Legendre rule with ``steps`` points.

    Args:
        classifier: the trained network; its train/eval flags and ``requires_grad`` flags are left unchanged.
        images: ``(B, C, H, W)`` float in ``[0, 1]``.
        targets: one logit column per image.
        steps: number of integration points (more points, smaller completeness error).

    Returns:
        ``(attributions, delta)``: ``(B, C, H, W)`` float32 attributions whose sum over ``C, H, W`` approximates
        ``logit(x) - logit(0)`` (completeness, eq. 3 of the paper), and ``(B,)`` float32 convergence deltas
        (that sum minus the true logit difference): a large ``|delta|`` means ``steps`` is too small.

    Raises:
        ValueError: images not ``(B, C, H, W)`` in ``[0, 1]``, a target outside the logit columns, or ``steps < 1``.

    Example:
        >>> from medvision.classifier import Classifier
        >>> from medvision.heads import create_head
        >>> from medvision.models import create_backbone
        >>> bb = create_backbone("bit-tiny", in_chans=1)
        >>> clf = Classifier(bb, create_head("linear", bb.num_features, 2), ["normal", "pneumonia"]).eval()
        >>> attr, delta = integrated_gradients(clf, torch.rand(2, 1, 32, 32), targets=[0, 1])
        >>> attr.shape
        (2, 1, 32, 32)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    with _eval_mode(classifier):
        images, targets = _prepare(classifier, images, targets)
        ig = IntegratedGradients(_logit_function(classifier))
        attr, delta = ig.attribute(
            images,
            baselines=torch.zeros_like(images),
            target=targets,
            n_steps=steps,
            internal_batch_size=images.shape[0] * min(steps, _IG_STEPS_PER_PASS),
            return_convergence_delta=True,
        )
    return attr.detach().float().cpu().numpy(), delta.detach().float().cpu().numpy()


# -- Grad-CAM: which layer -----------------------------------------------------------------------------------------


class _PatchGrid(nn.Module):
    """Patch tokens ``(B, N, D)`` -> feature map ``(B, D, gh, gw)``, dropping the prefix (class/register) tokens."""

    def __init__(self, num_prefix: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.grid = grid

    def forward(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, self.num_prefix :]
        gh, gw = self.grid
        if patches.shape[1] != gh * gw:
            raise ValueError(
                f"ViT has {patches.shape[1]} patch tokens after {self.num_prefix} prefix tokens, which is not the "
                f"{gh}x{gw} patch grid; Grad-CAM needs images of the size the backbone was built for"
            )
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], gh, gw)


class _PatchEmbed(Protocol):
    grid_size: tuple[int, int]


class _TimmViT(Protocol):
    """The part of a timm ViT that Grad-CAM relies on; ``nn.Module`` declares none of it, so a type checker needs
    it spelled out (``blocks`` is a ``Sequential`` in ``VisionTransformer``, a ``ModuleList`` in e.g. Eva)."""

    blocks: nn.Sequential | nn.ModuleList
    patch_embed: _PatchEmbed
    num_prefix_tokens: int


def _is_vit(model: nn.Module) -> TypeGuard[_TimmViT]:
    if not all(hasattr(model, a) for a in ("blocks", "patch_embed", "num_prefix_tokens")):
        return False
    return len(cast(_TimmViT, model).blocks) > 0


def _vit_grid(model: _TimmViT, height: int, width: int) -> tuple[int, int]:
    embed = model.patch_embed
    if getattr(model, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
        gh, gw = embed.dynamic_feat_size((height, width))
    else:
        gh, gw = embed.grid_size
    return int(gh), int(gw)


@contextmanager
def _vit_layer(model: _TimmViT, grid: tuple[int, int]) -> Iterator[nn.Module]:
    """Route the tokens entering the last ViT block through a :class:`_PatchGrid`, the layer captum hooks.

    captum's LayerGradCam averages gradients over every dimension after the second, which is the spatial map of a
    CNN but the embedding of a ``(B, N, D)`` token tensor; reshaping the patch tokens to ``(B, D, gh, gw)`` makes
    the ViT look like a CNN to it. A forward pre-hook does the round trip (tokens -> grid -> tokens) without changing
    any value, and disappears on exit, so the model itself is never modified.

    Why the tokens *entering* the last block rather than leaving it: with class-token pooling (``vit-tiny``, most
    supervised ViTs) the patch tokens that leave the last block only pass through a per-token norm before being
    discarded, so the class logit has zero gradient with respect to them and the map would be empty. The last
    block's attention is the final place where patch tokens feed the class token; for average- or
    attention-pooled ViTs (SigLIP) the same layer is equally valid, so one rule serves all of them.
    """
    grid_layer = _PatchGrid(int(model.num_prefix_tokens), grid)

    def through_grid(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        tokens = args[0]
        spatial = grid_layer(tokens).flatten(2).transpose(1, 2)
        return (torch.cat([tokens[:, : grid_layer.num_prefix], spatial], dim=1), *args[1:])

    handle = model.blocks[-1].register_forward_pre_hook(through_grid)
    try:
        yield grid_layer
    finally:
        handle.remove()


def _cnn_layer(backbone: Backbone, probe: Tensor) -> nn.Module:
    """The module whose output is the CNN's final unpooled feature map (the last stage, or the norm after it).

    Found by running ``forward_features`` once and keeping the last module to finish whose output *is* the returned
    ``(B, D, h, w)`` map, so it works for ResNets, BiT (pre-activation: the final norm+ReLU) and other timm CNNs
    without a per-architecture table.
    """
    found: list[tuple[nn.Module, object]] = []
    hooks = []

    def record(module: nn.Module, _args: object, output: object) -> None:
        found.append((module, output))

    for module in backbone.model.modules():
        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            features = backbone.forward_features(probe)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(features, Tensor) or features.ndim != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(
            f"Grad-CAM needs a spatial feature map, but backbone {backbone.weights_record.name!r} gives "
            f"forward_features of shape {shape} and is not a timm ViT; use method='integrated_gradients'"
        )
    for module, output in reversed(found):
        if output is features:
            return module
    raise ValueError(
        f"could not find the module producing the final feature map of backbone {backbone.weights_record.name!r}; "
        "use method='integrated_gradients'"
    )


def _gradcam(classifier: Classifier, images: Tensor, targets: list[int]) -> Tensor:
    """Raw Grad-CAM maps ``(B, H, W)`` (ReLU'd, bilinearly upsampled to the image)."""
    backbone, model = classifier.backbone, classifier.backbone.model
    forward = _logit_function(classifier)
    size = (images.shape[2], images.shape[3])
    if _is_vit(model):
        with _vit_layer(model, _vit_grid(model, *size)) as layer:
            cam = LayerGradCam(forward, layer).attribute(images, target=targets, relu_attributions=True)
    else:
        layer = _cnn_layer(backbone, images[:1])
        cam = LayerGradCam(forward, layer).attribute(images, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")[:, 0]


# -- public entry points -------------------------------------------------------------------------------------------


def saliency_maps(
    classifier: Classifier,
    images: Tensor,
    targets: Sequence[int],
    method: SaliencyMethod,
    steps: int = 32,
) -> np.ndarray:
    """Per-image saliency maps in ``[0, 1]`` for the report's gallery.

    Args:
        classifier: the trained network (CNN or ViT backbone, any head); left with its train/eval and
            ``requires_grad`` flags as they were.
        images: ``(B, C, H, W)`` float in ``[0, 1]``.
        targets: the logit column to explain for each image (usually the predicted class).
        method: ``integrated_gradients`` (pixel-level, absolute value of the channel-summed attributions) or
            ``gradcam`` (at the last spatial CNN stage, or the patch grid of the last ViT block's input tokens;
            ReLU'd and bilinearly upsampled to ``H, W``).
        steps: integration points for Integrated Gradients (ignored by Grad-CAM).

    Returns:
        ``(B, H, W)`` float32, each map divided by its own maximum (so maps show *where*, not how strongly,
        and are not comparable across images); an all-zero attribution stays all zero.

    Raises:
        ValueError: unknown method, bad images or targets, or a backbone Grad-CAM cannot handle.

    Example:
        >>> from medvision.classifier import Classifier
        >>> from medvision.heads import create_head
        >>> from medvision.models import create_backbone
        >>> bb = create_backbone("bit-tiny", in_chans=1)
        >>> clf = Classifier(bb, create_head("linear", bb.num_features, 2), ["normal", "pneumonia"]).eval()
        >>> maps = saliency_maps(clf, torch.rand(2, 1, 64, 64), [0, 1], method="gradcam")
        >>> maps.shape, float(maps.max()) <= 1.0
        ((2, 64, 64), True)
    """
    if method not in _METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {list(_METHODS)}")
    if method == "integrated_gradients":
        attr, _ = integrated_gradients(classifier, images, targets, steps=steps)
        return _normalise(torch.from_numpy(attr).sum(dim=1))
    with _eval_mode(classifier):
        images, targets = _prepare(classifier, images, targets)
        cam = _gradcam(classifier, images, targets)
    return _normalise(cam, floor=True)


def pick_cases(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    ood_score: Sequence[float] | np.ndarray | None,
    n_per_category: int = 3,
    seed: int = 0,
) -> list[tuple[int, str]]:
    """Choose the images the report explains: ``n`` most confident correct, most confident wrong, most OOD.

    Categories are filled in that order and an image is used once (a confidently wrong image that is also the most
    OOD appears as "wrong"). Ties are broken by a seeded random order, so the same seed gives the same gallery.
    Images with a NaN confidence (or NaN OOD score, for "most-ood") are never picked.

    Args:
        y_true: true labels, ``(N,)``.
        y_pred: predicted labels, ``(N,)``.
        confidence: the model's confidence in ``y_pred``, ``(N,)``; higher = more confident.
        ood_score: ``(N,)``, higher = more likely out of distribution; ``None`` skips the "most-ood" category.
        n_per_category: at most this many per category (fewer when not enough images qualify).
        seed: seeds the tie-breaking order.

    Returns:
        ``[(index, category), ...]`` grouped by category in the order "correct", "wrong", "most-ood", each group
        sorted from the highest score down.

    Raises:
        ValueError: arrays of different lengths or not 1-D, or a negative ``n_per_category``.
    """
    if n_per_category < 0:
        raise ValueError(f"n_per_category must be >= 0, got {n_per_category}")
    arrays = {"y_true": np.asarray(y_true), "y_pred": np.asarray(y_pred), "confidence": np.asarray(confidence, float)}
    if ood_score is not None:
        arrays["ood_score"] = np.asarray(ood_score, dtype=float)
    n = len(arrays["y_true"])
    for name, arr in arrays.items():
        if arr.ndim != 1 or len(arr) != n:
            raise ValueError(f"{name} must be 1-D with {n} entries (one per image, like y_true), got {arr.shape}")
    conf = arrays["confidence"]
    correct = arrays["y_true"] == arrays["y_pred"]
    candidates = [("correct", conf, correct), ("wrong", conf, ~correct)]
    if ood_score is not None:
        candidates.append(("most-ood", arrays["ood_score"], np.ones(n, dtype=bool)))
    shuffled = np.random.default_rng(seed).permutation(n)  # ties: seeded random order, then a stable sort
    taken: set[int] = set()
    picks: list[tuple[int, str]] = []
    for category, score, eligible in candidates:
        order = shuffled[np.argsort(-score[shuffled], kind="stable")]
        chosen = [int(i) for i in order if eligible[i] and not np.isnan(score[i]) and int(i) not in taken]
        for i in chosen[:n_per_category]:
            taken.add(i)
            picks.append((i, category))
    return picks
