"""PACS credentials from the environment or a file, so that no spec, log or MLflow run ever holds them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medvision.sources.pacs.errors import PacsAuthError

__all__ = ["PASSWORD_ENV", "TOKEN_ENV", "USER_ENV", "Credentials", "resolve_credentials"]

USER_ENV = "MEDVISION_PACS_USER"
PASSWORD_ENV = "MEDVISION_PACS_PASSWORD"
TOKEN_ENV = "MEDVISION_PACS_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """Basic (user + password) or bearer (token) credentials; ``repr`` never shows a secret."""

    kind: str  # "none" | "basic" | "bearer"
    user: str | None = None
    secret: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """The strings that must never appear in any output (for the log scrubber)."""
        return [s for s in (self.secret,) if s]


def resolve_credentials(kind: str, credentials_file: Path | None) -> Credentials:
    """Credentials for ``kind`` (none/basic/bearer): environment first, then ``credentials_file``.

    The file holds ``user:password`` (basic) or the token (bearer) on its first line; it must not be
    readable by others, as an SSH key must not.
    """
    if kind == "none":
        return Credentials("none")
    if kind == "basic":
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        if user and password:
            return Credentials("basic", user, password)
    elif os.environ.get(TOKEN_ENV):
        return Credentials("bearer", None, os.environ[TOKEN_ENV].strip())
    if credentials_file is None:
        need = f"${USER_ENV} and ${PASSWORD_ENV}" if kind == "basic" else f"${TOKEN_ENV}"
        raise PacsAuthError(f"pacs.auth is {kind} but no credentials were given: set {need}, or pacs.credentials_file")
    path = Path(credentials_file).expanduser()
    try:
        mode = path.stat().st_mode
        line = path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
    except FileNotFoundError:
        raise PacsAuthError(f"credentials file {path} (pacs.credentials_file) does not exist") from None
    if mode & 0o077:
        raise PacsAuthError(f"credentials file {path} is readable by other users; run `chmod 600 {path}`")
    if kind == "bearer":
        if not line:
            raise PacsAuthError(f"credentials file {path} is empty; put the bearer token on its first line")
        return Credentials("bearer", None, line)
    if ":" not in line:
        raise PacsAuthError(f"credentials file {path}: the first line must be USER:PASSWORD for basic auth")
    user, password = line.split(":", 1)
    return Credentials("basic", user, password)
