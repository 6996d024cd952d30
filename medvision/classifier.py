"""The network a fine-tuning stage trains: backbone, optional adapter, head.

It is the one object that leaves training: the LightningModule wraps it, the MLflow model serves
it, evaluation and OOD code load it. It is saved as a folder that carries its own description, the
:class:`ClassifierCard` (architecture, classes, head, and the preprocessing recipe its training images went
through), next to the backbone folder written by :func:`medvision.models.save_backbone`, so loading needs no
config and no training code, and export and serving prepare images exactly as training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from medvision._atomic import atomic_path
from medvision._documents import Document
from medvision.cohort.recipe import PreprocessRecipe
from medvision.heads import Head, HeadOutput, create_head
from medvision.models import Backbone, load_backbone_dir, save_backbone

__all__ = ["Adapter", "BackboneCard", "Classifier", "ClassifierCard", "HeadCard", "load_classifier", "save_classifier"]

CARD_FILE = "classifier.json"
_WEIGHTS = "head.safetensors"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeadCard(_Part):
    """The head: its registered name, sizes and options (what :func:`medvision.heads.create_head` takes)."""

    name: str
    in_features: int
    num_classes: int
    options: dict[str, Any]


class BackboneCard(_Part):
    """The backbone's architecture and weights: the registry name, where the weights came from, their digest, and
    the normalisation applied inside the network (so the input stays ``[0, 1]``)."""

    name: str
    source: str
    sha256: str | None = None
    licence: str | None = None
    mean: list[float]
    std: list[float]


class ClassifierCard(Document):
    """``classifier.json``: what a saved classifier is and what its inputs must be.

    Written by :func:`save_classifier`, read by :func:`load_classifier`. ``preprocessing`` is the recipe of the
    cohort the classifier was trained on (``None`` when it was trained on a data module that is not a cohort, or
    saved by an older medvision): export and serving refuse to guess one.
    """

    document = "classifier card (classifier.json)"
    remedy = "save the classifier again with this medvision (re-run its fine-tune)"

    schema_version: Literal[2] = 2
    head: HeadCard
    classes: list[str]
    adapter_hidden: int = 0
    freeze_backbone: bool = False
    #: ``(C, H, W)`` of the training images.
    input_shape: tuple[int, int, int] | None = None
    backbone: BackboneCard | None = None
    preprocessing: PreprocessRecipe | None = None

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # Version 1 ("format": 1) had every field here but the backbone and the recipe; both are optional.
        if "schema_version" not in raw and raw.get("format") == 1:
            raw = {k: v for k, v in raw.items() if k != "format"} | {"schema_version": 2}
        return raw

    @classmethod
    def of(
        cls,
        classifier: Classifier,
        input_shape: tuple[int, ...] | None = None,
        preprocessing: PreprocessRecipe | None = None,
    ) -> ClassifierCard:
        """The card of ``classifier``; ``input_shape`` defaults to the recipe's.

        Raises:
            ValueError: ``input_shape`` differs from the recipe's, or the recipe's channels from the backbone's.
        """
        if preprocessing is not None:
            if input_shape is not None and tuple(input_shape) != preprocessing.input_shape:
                raise ValueError(
                    f"input shape {tuple(input_shape)} differs from the preprocessing recipe's "
                    f"{preprocessing.input_shape}; the recipe must describe the images the classifier was trained on"
                )
            input_shape = preprocessing.input_shape
        head = classifier.head
        return cls(
            head=HeadCard(
                name=head.name,
                in_features=head.in_features,
                num_classes=head.num_classes,
                options=head.options.model_dump(mode="json"),
            ),
            classes=list(classifier.classes),
            adapter_hidden=classifier.adapter_hidden,
            freeze_backbone=classifier.freeze_backbone,
            input_shape=None if input_shape is None else _shape(input_shape),
            backbone=_backbone_card(classifier.backbone),
            preprocessing=preprocessing,
        )


def _shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"input shape must be (C, H, W), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _backbone_card(backbone: nn.Module) -> BackboneCard | None:
    record = getattr(backbone, "weights_record", None)
    if record is None:  # a stand-in backbone (tests, custom modules): nothing to record
        return None
    return BackboneCard(
        name=record.name,
        source=record.source,
        sha256=record.sha256,
        licence=record.licence,
        mean=[float(v) for v in record.mean],
        std=[float(v) for v in record.std],
    )


class Adapter(nn.Module):
    """A residual bottleneck MLP on the frozen embedding: ``phi + W2 gelu(W1 phi)``.

    ``W2`` starts at zero, so locked tuning starts exactly at the linear probe and the adapter
    only adds what the head alone cannot express (LiT-style "locked" tuning, see the method spec §1).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class Classifier(nn.Module):
    """``head(adapter(backbone(x)))`` for images ``x`` in ``[0, 1]`` (normalisation is in the backbone).

    Args:
        backbone: a medvision :class:`~medvision.models.Backbone` (at run time anything with its ``forward(x) ->
            (B, D)``, ``num_features`` and ``aux_loss()`` trains; saving needs the real one).
        head: a :class:`medvision.heads.Head` reading ``D`` features.
        classes: names of the head's ``num_classes`` task classes, in logit order.
        adapter_hidden: width of the residual adapter; 0 for none.
        freeze_backbone: keep the backbone's weights and normalisation statistics fixed (linear
            probe and locked tuning); its forward then runs without building a graph.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: Head,
        classes: list[str],
        adapter_hidden: int = 0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        dim = int(backbone.num_features)
        if head.in_features != dim:
            raise ValueError(f"head reads {head.in_features} features but the backbone gives {dim}")
        if len(classes) != head.num_classes:
            raise ValueError(f"{len(classes)} class names given for a head with {head.num_classes} classes")
        self.backbone = backbone
        self.adapter = Adapter(dim, adapter_hidden) if adapter_hidden else None
        self.head = head
        self.classes = list(classes)
        self.adapter_hidden = adapter_hidden
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_backbone:  # batch-norm statistics of a frozen backbone stay as pretrained
            self.backbone.eval()
        return self

    def embed(self, x: Tensor, keep_graph: bool = False) -> Tensor:
        """The embedding the head reads: backbone features, through the adapter when there is one.

        A frozen backbone runs without a graph (cheap training) unless ``keep_graph``: attribution methods need the
        path from the logits back to the pixels even though no weight is updated.
        """
        if self.freeze_backbone and not keep_graph:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return feats if self.adapter is None else self.adapter(feats)

    def embed_bags(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, N, D)`` embeddings of bags of images ``(B, N, C, H, W)``; only the real instances (``mask``) run
        through the backbone, padded slots stay zero (a bag head never reads them)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        real = self.embed(x[mask])
        out = real.new_zeros((*x.shape[:2], real.shape[-1]))
        out[mask] = real
        return out

    def logits(self, x: Tensor) -> Tensor:
        """The head's logits with a graph back to ``x`` whatever the mode (what captum differentiates)."""
        return self.head(self.embed(x, keep_graph=True)).logits

    def forward(self, x: Tensor, mask: Tensor | None = None) -> HeadOutput:
        """Images ``(B, C, H, W)``, or bags of images ``(B, N, C, H, W)`` with a ``(B, N)`` mask for a bag head."""
        if x.ndim == 5:
            return self.head(self.embed_bags(x, mask), mask)
        return self.head(self.embed(x))

    def from_features(self, feats: Tensor, mask: Tensor | None = None) -> HeadOutput:
        """The head's output for precomputed backbone features (the frozen-feature fast path): ``(B, D)``, or bags
        ``(B, N, D)`` with their mask for a bag head."""
        emb = feats if self.adapter is None else self.adapter(feats)
        return self.head(emb) if mask is None else self.head(emb, mask)

    def aux_loss(self) -> Tensor | float:
        """The backbone's auxiliary loss of the last forward (MoE balance losses; 0 otherwise)."""
        if self.freeze_backbone:
            return 0.0
        return self.backbone.aux_loss()


def save_classifier(
    classifier: Classifier,
    directory: str | Path,
    input_shape: tuple[int, ...] | None = None,
    preprocessing: PreprocessRecipe | None = None,
) -> Path:
    """Write ``classifier`` to ``directory``: ``classifier.json`` (the :class:`ClassifierCard`),
    ``head.safetensors``, ``backbone/``.

    Args:
        classifier: the network to save (its weights are copied to CPU).
        directory: created if missing; existing files of the same names are replaced.
        input_shape: ``(C, H, W)`` of the images it was trained on (default: the recipe's).
        preprocessing: the recipe of the cohort it was trained on (export and serving prepare images with it).

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    card = ClassifierCard.of(classifier, input_shape, preprocessing)
    directory.mkdir(parents=True, exist_ok=True)
    save_backbone(classifier.backbone, directory / "backbone")
    tensors = {f"head.{k}": v for k, v in classifier.head.state_dict().items()}
    if classifier.adapter is not None:
        tensors.update({f"adapter.{k}": v for k, v in classifier.adapter.state_dict().items()})
    with atomic_path(directory / _WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    card.write(directory / CARD_FILE)  # last: a folder with a card is a complete classifier
    return directory


def load_classifier(directory: str | Path) -> tuple[Classifier, ClassifierCard]:
    """Rebuild a classifier saved by :func:`save_classifier` (on CPU, in eval mode).

    Returns:
        ``(classifier, card)``.

    Raises:
        FileNotFoundError: ``directory`` is not a saved classifier.
        DocumentError: its card is of another version or damaged.
    """
    directory = Path(directory)
    card_path = directory / CARD_FILE
    if not card_path.exists():
        raise FileNotFoundError(
            f"{directory} is not a saved classifier (no {CARD_FILE}); save one with save_classifier()"
        )
    card = ClassifierCard.read(card_path)
    spec = card.head
    head = create_head(spec.name, spec.in_features, spec.num_classes, **spec.options)
    backbone = load_backbone_dir(directory / "backbone")
    clf = Classifier(backbone, head, card.classes, card.adapter_hidden, card.freeze_backbone)
    tensors = load_file(str(directory / _WEIGHTS))
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    if clf.adapter is not None:
        clf.adapter.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
    return clf.eval(), card
