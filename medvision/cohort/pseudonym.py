"""Keyed pseudonyms for patients, studies, series and images.

A plain hash of a patient ID can be reversed by hashing every plausible MRN, so pseudonyms are
HMAC-SHA256 under a secret key. The key lives outside every output folder (an environment
variable or a key file), so sharing a cohort never shares the means to re-identify it, while
rebuilding a cohort with the same key gives the same pseudonyms (joins across builds still work).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from medvision._atomic import atomic_write_text
from medvision.errors import InputError

__all__ = ["KEY_ENV", "Pseudonymizer", "default_key_file", "key_fingerprint", "resolve_key"]

log = logging.getLogger("medvision.cohort")

KEY_ENV = "MEDVISION_PSEUDONYM_KEY"
KEY_FILE_ENV = "MEDVISION_PSEUDONYM_KEY_FILE"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medvision" / "pseudonym.key"


def resolve_key(key_file: Path | None, out_dir: Path) -> tuple[bytes, str]:
    """The secret key and a description of where it came from (never the key itself).

    Order: $MEDVISION_PSEUDONYM_KEY (hex), an explicit key file, $MEDVISION_PSEUDONYM_KEY_FILE,
    then ~/.config/medvision/pseudonym.key, created with mode 0600 on first use.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError as e:
            raise InputError(f"${KEY_ENV} must be a hex string (e.g. from `openssl rand -hex 32`)") from e
        if len(key) < 16:
            raise InputError(f"${KEY_ENV} is too short: use at least 16 bytes (32 hex characters)")
        return key, f"${KEY_ENV}"
    path = key_file or (Path(os.environ[KEY_FILE_ENV]) if os.environ.get(KEY_FILE_ENV) else default_key_file())
    path = path.expanduser().resolve()
    out = out_dir.expanduser().resolve()
    if path == out or out in path.parents:
        raise InputError(
            f"pseudonym key file {path} lies inside the output folder {out}; keep it outside, or anyone "
            "holding the cohort could re-identify patients"
        )
    if not path.exists():
        try:  # whole, 0600 from the start, and never over a key another build created a moment ago
            atomic_write_text(path, secrets.token_hex(32) + "\n", private=True, replace=False)
        except FileExistsError:
            pass  # that build's key is the key
        else:
            log.warning(
                "created a new pseudonym key at %s: keep it (and a backup) safe; rebuilding a cohort without it "
                "changes every pseudonym and split",
                path,
            )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "pseudonym key file %s can be read by other users (mode %s): with it and the cohort, patients can be "
            "re-identified; run `chmod 600 %s`",
            path,
            oct(mode),
            path,
        )
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as e:
        raise ValueError(f"pseudonym key file {path} does not hold a hex key") from e
    return key, str(path)


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the key, recorded in the card so a rebuild can tell the key changed.

    A one-way hash of the (random, 256-bit) key under its own domain label: it identifies the key without
    revealing it or any pseudonym made with it.
    """
    return hashlib.sha256(b"medvision pseudonym key fingerprint\x00" + key).hexdigest()[:16]


class Pseudonymizer:
    """Maps identifiers to stable, unlinkable tokens: ``P-3f9a...`` for patients, ``I-...`` for images."""

    PREFIX = {"patient": "P", "study": "S", "series": "R", "image": "I", "site": "H", "case": "C"}

    def __init__(self, key: bytes, length: int = 16) -> None:
        self._key = key
        self._length = length

    def __call__(self, kind: str, value: str) -> str:
        prefix = self.PREFIX[kind]
        digest = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[: self._length]}"
