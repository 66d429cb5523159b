"""Logging: the ``flask_oa_recall`` logger tree, its structured fields, and a JSON-lines formatter.

Every logger of the package is ``logging.getLogger(__name__)`` of its module, so configuring
``flask_oa_recall`` configures them all. Records carry structured fields in ``extra``
(``delivery_id``, ``command``, ``sdk_app_id``, ``reason``, ``receiver``, ``remote_addr``,
``client_ip``...), which :class:`JSONFormatter` writes out as keys. No record holds a token, a
``Sign`` or a body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from .errors import CallbackRejected

__all__ = ["LOGGER_NAME", "JSONFormatter", "log_rejection"]

#: The root of the package's logger tree.
LOGGER_NAME = "flask_oa_recall"

logger = logging.getLogger(__name__)

_STANDARD_ATTRIBUTES = frozenset(
    (*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName")
)

#: Query values are the sender's (or anybody's) text: logged short and on one line.
_MAX_VALUE = 64


class JSONFormatter(logging.Formatter):
    """Format each record as one JSON object on one line, for log shippers.

    The object holds ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
    ``message``, every field the record was given in ``extra``, and ``exc_info`` (the formatted
    traceback) when there is one::

        handler = logging.StreamHandler()
        handler.setFormatter(JSONFormatter())
        logging.getLogger("flask_oa_recall").addHandler(handler)
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as a JSON line (without the newline)."""
        created = datetime.fromtimestamp(record.created, tz=timezone.utc)
        payload: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def _clean(value: str) -> str:
    """``value`` on one printable line, at most ``_MAX_VALUE`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _query_fields(environ: Mapping[str, Any]) -> dict[str, str]:
    """ClientIP, SdkAppid and CallbackCommand from the query (any case), if given."""
    wanted = {"clientip": "client_ip", "sdkappid": "sdk_app_id", "callbackcommand": "command"}
    found: dict[str, str] = {}
    # WSGI gives the raw query's bytes as latin-1 text.
    raw = environ.get("QUERY_STRING", "").encode("latin-1", "replace")
    text = raw.decode("utf-8", "replace")
    for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        field = wanted.get(name.lower())
        if field is not None and field not in found and value:
            found[field] = _clean(value)
    return found


def log_rejection(err: CallbackRejected, environ: Mapping[str, Any]) -> None:
    """Log a refused request (its WSGI ``environ``) once, at WARNING: its reason, status and
    who sent it.

    The fields are the request's remote address and what the query says (``ClientIP``,
    ``SdkAppid``, ``CallbackCommand``); never ``Sign``, ``RequestTime`` or the body.
    """
    fields: dict[str, Any] = {
        "reason": err.reason,
        "status": err.rejection.status,
        "error_code": err.rejection.error_code,
        "remote_addr": environ.get("REMOTE_ADDR"),
        **_query_fields(environ),
    }
    source = str(fields["remote_addr"])
    if "client_ip" in fields:
        source += f" (ClientIP {fields['client_ip']})"
    logger.warning(
        "rejected a callback from %s: %s (HTTP %d): %s",
        source,
        err.reason,
        err.rejection.status,
        err.info,
        extra=fields,
    )
