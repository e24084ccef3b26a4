"""Credential-looking query parameters are scrubbed from uvicorn's access log.

Keys belong in ``Authorization`` or ``X-API-Key`` (a key in the query string is refused
with 401), but the access log would still record ``?api_key=...`` verbatim. The filter
replaces the value of every query parameter whose name looks like a credential with
``***``; the app installs it on the ``uvicorn.access`` logger when it is created.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "***"
# names of credentials in query strings: api_key, apikey, key, token, access_token, auth, password, ...
_CREDENTIAL = re.compile(
    r"(^|[_-])(api[_-]?key|apikey|x[_-]api[_-]key|key|token|access[_-]?token|id[_-]?token|refresh[_-]?token"
    r"|auth|authorization|bearer|jwt|password|passwd|pwd|secret|client[_-]?secret|session|sessionid|sig|signature"
    r"|credential|credentials)$",
    re.IGNORECASE,
)
_QUERY_PART = re.compile(r"([^&;=]*)(=?)([^&;]*)")


def is_credential_name(name: str) -> bool:
    """Whether a query parameter name (percent-decoded) looks like it carries a credential."""
    decoded = unquote_plus(name).strip()
    return bool(_CREDENTIAL.search(decoded)) or any(
        w in decoded.lower() for w in ("token", "secret", "password", "apikey", "api_key", "api-key")
    )


def scrub_url(path: str) -> str:
    """``path?query`` with the values of credential-looking parameters replaced by ``***``."""
    base, sep, query = path.partition("?")
    if not sep:
        return path

    def one(m: re.Match[str]) -> str:
        name, eq, value = m.group(1), m.group(2), m.group(3)
        if eq and value and is_credential_name(name):
            return f"{name}={REDACTED}"
        return m.group(0)

    return f"{base}?{_QUERY_PART.sub(one, query)}"


class ScrubCredentials(logging.Filter):
    """Rewrites uvicorn access records (``client - "METHOD path HTTP/x" status``) with a scrubbed path."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], scrub_url(args[2]), *args[3:])
        return True


def install_access_log_filter(logger_name: str = ACCESS_LOGGER) -> None:
    """Add :class:`ScrubCredentials` to the access logger (once)."""
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, ScrubCredentials) for f in log.filters):
        log.addFilter(ScrubCredentials())


__all__ = ["REDACTED", "ScrubCredentials", "install_access_log_filter", "is_credential_name", "scrub_url"]
