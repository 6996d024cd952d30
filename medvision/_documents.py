"""Typed, versioned documents: the files one layer writes and another reads.

Why: the cohort card, ``metrics.json``, the classifier card and the run identity used to cross layers as
string-keyed dicts, so every reader dug keys out of them and a renamed key failed far from its writer (or, worse,
read as ``None``). Each is now a pydantic model with a ``schema_version``, one writer (:meth:`Document.write`,
through :mod:`medvision._atomic`: whole or absent) and one reader (:meth:`Document.read`), which names the file,
the field and what to do when the file is not what this medvision reads.

A subclass declares ``schema_version: Literal[N] = N``; a document written by an older layout is either lifted
to the current one by :meth:`Document.upgrade` (when nothing is lost) or refused with the subclass's ``remedy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from medvision._atomic import atomic_write_text
from medvision.errors import InputError

__all__ = ["Document", "DocumentError"]


class DocumentError(InputError):
    """A document file that is missing, unreadable, of another schema version, or not of its schema; the message
    names the file, the field and the fix."""


class Document(BaseModel):
    """Base of every versioned document (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    #: What the document is, for messages ("cohort card (cohort.json)").
    document: ClassVar[str] = "document"
    #: What to do with a file this medvision cannot read (another version, hand-edited, truncated).
    remedy: ClassVar[str] = "write it again with this medvision"

    schema_version: int

    @classmethod
    def current_version(cls) -> int:
        return int(cls.model_fields["schema_version"].default)

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Lift an older layout to the current one; the default knows none. Override only when nothing is lost."""
        return raw

    @model_validator(mode="before")
    @classmethod
    def _version(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = cls.upgrade(dict(raw))
        found, current = raw.get("schema_version", cls.current_version()), cls.current_version()
        if found != current:
            raise ValueError(
                f"schema_version is {found!r}, this medvision reads version {current} of the {cls.document}"
            )
        return raw

    def to_json(self) -> str:
        """The file's text: indented JSON, NaN and infinities as ``null``."""
        return self.model_dump_json(indent=1) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the document to ``path`` atomically (whole or not at all)."""
        return atomic_write_text(path, self.to_json())

    def staged(self, path: str | Path) -> tuple[Path, int, Callable[[Path], None]]:
        """The document as one entry of :func:`medvision._atomic.write_all` (several files switched together)."""
        text = self.to_json()

        def write(tmp: Path) -> None:
            tmp.write_text(text, encoding="utf-8")

        return Path(path), len(text.encode()), write

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Read and validate the document at ``path``.

        Raises:
            DocumentError: the file is missing, not JSON, of another version or not of this schema.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DocumentError(f"{path} does not exist (expected a {cls.document}); {cls.remedy}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DocumentError(f"{path} is not a readable {cls.document} ({e}); {cls.remedy}") from None
        return cls.parse(raw, where=str(path))

    @classmethod
    def parse(cls, raw: Any, where: str = "") -> Self:
        """Validate an already-loaded document (``where`` names its origin in the message)."""
        origin = f"{where}: " if where else ""
        if isinstance(raw, dict) and "schema_version" not in cls.upgrade(dict(raw)):
            raise DocumentError(
                f"{origin}a {cls.document} without schema_version (written by an older medvision, or not one); "
                f"{cls.remedy}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()[:5]
            )
            more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
            raise DocumentError(f"{origin}not a valid {cls.document}: {problems}{more}; {cls.remedy}") from None
