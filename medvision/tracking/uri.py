"""Tracking URIs never carry credentials: a URI with a password is refused, and every URI we print is redacted.

Why refuse rather than redact: a tracking URI is not kept in one place. medvision prints it (the pipeline's
first line and its summary), stores it in every stage's resolved ``config.yaml``, logs it as the MLflow
parameter ``tracking.tracking_uri`` (visible to every user of a shared server) and hands it to MLflow, which
prints it again in its own "View run ... at" lines. A password in ``http://user:PASSWORD@host`` would reach all
of them, and redacting each copy leaves the next new copy unredacted. So a URI holding a password, or a secret
query parameter, is refused where it enters: the config key (:func:`check_no_credentials` from the config
models), ``$MLFLOW_TRACKING_URI`` (``medvision.engine.resolve_tracking_uri``) and :func:`open_client
<medvision.tracking.store.open_client>`. Credentials come from the environment instead:
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for an MLflow server, a ``~/.pgpass`` file (or
``PGPASSFILE``) for a database URI. :func:`redact_uri` is the one redaction used wherever a URI is shown, so a
message about a refused URI, or any URI printed by mistake, shows ``***`` for the secret.

Example:
    >>> redact_uri("http://admin:s3cret@127.0.0.1:5000")
    'http://admin:***@127.0.0.1:5000'
    >>> redact_uri("postgresql://db-host/mlflow?user=mlflow&password=s3cret")
    'postgresql://db-host/mlflow?user=mlflow&password=***'
    >>> check_no_credentials("http://127.0.0.1:5000", "tracking.tracking_uri")
    'http://127.0.0.1:5000'
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medvision.errors import InputError

__all__ = ["TrackingURIError", "check_no_credentials", "redact_uri", "uri_secrets"]

#: Query parameters that carry a secret in database and HTTP URIs (libpq's ``password``, tokens, keys).
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pwd", "pass", "token", "access_token", "auth_token", "secret", "api_key", "apikey"}
)

_HIDDEN = "***"


class TrackingURIError(InputError):
    """A tracking URI that holds a secret; the message says where it came from and where the secret goes."""


def uri_secrets(uri: str) -> list[str]:
    """What in ``uri`` is secret: ``"password"`` for ``user:PASSWORD@``, and each secret query parameter's name."""
    parts = urlsplit(uri)
    found = ["password"] if parts.password else []
    found += [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMETERS]
    return found


def redact_uri(uri: str) -> str:
    """``uri`` with its password and secret query values replaced by ``***`` (user name, host and path kept).

    The one redaction for every URI medvision shows: summaries, error messages, log lines.
    """
    parts = urlsplit(uri)
    if not uri_secrets(uri):
        return uri
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:{_HIDDEN}@{host}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_pair(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    return f"{key}={_HIDDEN}" if eq and key.lower() in SECRET_PARAMETERS else pair


def check_no_credentials(uri: str, where: str) -> str:
    """Return ``uri`` when it holds no secret; otherwise raise :class:`TrackingURIError` naming ``where`` (the
    config key or environment variable it came from) and where the credentials belong.

    Raises:
        TrackingURIError: ``uri`` holds a password or a secret query parameter (shown redacted).
    """
    secrets = uri_secrets(uri)
    if not secrets:
        return uri
    web = urlsplit(uri).scheme in ("http", "https")
    fix = (
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead"
        if web
        else "put the password in a ~/.pgpass file (or the file $PGPASSFILE names, mode 0600) instead"
    )
    raise TrackingURIError(
        f"{where} holds credentials ({', '.join(secrets)}: {redact_uri(uri)}); a tracking URI is printed, stored "
        f"in each run's config.yaml and logged as a run parameter, so it must not carry them: remove them from "
        f"the URI and {fix}"
    )
