"""What makes two training runs the same run: the one definition, used by resume and by pipeline stage keys.

A run is its validated stage config minus the settings that only say *where* it writes or *how* it shows progress
(:data:`NOT_IDENTITY`), the cohort it trains on (by the manifest's content hash, not the folder it was built in:
two people sharing a cohort share its runs) and the code version. ``resume: auto`` continues a checkpoint only
when the identity recorded beside it (``run-identity.json``) is this one, and a pipeline reuses a finished stage
run only when its key (:meth:`RunIdentity.key`) is this one's; both read this module, so the two can never
disagree about what "the same run" means.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from medvision._documents import Document
from medvision._version import code_version
from medvision.config import flatten

__all__ = ["NOT_IDENTITY", "RUN_IDENTITY_FILE", "RunIdentity"]

#: In a run's output folder, beside ``checkpoints/``.
RUN_IDENTITY_FILE = "run-identity.json"
#: Config keys (and their sub-keys) that may change between an interrupted run and its resumption, or between two
#: machines running the same stage, without making it another run.
NOT_IDENTITY = ("output_dir", "resume", "tracking", "trainer.progress_bar", "data.cohort_dir")


class RunIdentity(Document):
    """The identity of a training run (see the module docstring).

    Attributes:
        config_type: the stage config's class (``medvision.training.config.FinetuneConfig``, ...).
        config: the flat, dotted config without :data:`NOT_IDENTITY`.
        manifest_sha256: the content hash of the cohort manifest trained on.
        code_version: the stage-key version of the code (:func:`medvision._version.code_version`).
    """

    document: ClassVar[str] = "run identity (run-identity.json)"
    remedy: ClassVar[str] = "give this run a folder of its own, or start afresh in this one (resume: never)"

    schema_version: Literal[1] = 1
    config_type: str
    config: dict[str, Any]
    manifest_sha256: str | None = None
    code_version: str

    @classmethod
    def of(cls, config: BaseModel, manifest_sha256: str | None = None) -> RunIdentity:
        """The identity of a run of ``config`` (a validated stage config) on the cohort with ``manifest_sha256``."""
        flat = {
            k: v for k, v in flatten(config).items() if not any(k == n or k.startswith(n + ".") for n in NOT_IDENTITY)
        }
        kind = type(config)
        return cls(
            config_type=f"{kind.__module__}.{kind.__qualname__}",
            config=json.loads(json.dumps(flat, default=str)),  # as it reads back from the file
            manifest_sha256=manifest_sha256,
            code_version=code_version(),
        )

    def key(self) -> str:
        """A short content hash: equal keys mean the same run (the pipeline's stage key of a training member)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, other: RunIdentity) -> list[tuple[str, Any, Any]]:
        """``(name, value here, value in other)`` for every setting or fact that differs, sorted by name."""
        mine, theirs = self._flat(), other._flat()
        names = sorted(set(mine) | set(theirs))
        return [(k, mine.get(k), theirs.get(k)) for k in names if mine.get(k) != theirs.get(k)]

    def _flat(self) -> dict[str, Any]:
        return {
            **{f"config.{k}": v for k, v in self.config.items()},
            "config type": self.config_type,
            "manifest_sha256": self.manifest_sha256,
            "code_version": self.code_version,
        }
