"""What the callback route reads of a request, whichever way it came in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .errors import CallbackRejected

__all__ = ["Arrival", "plain_query_pairs", "read_body"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Arrival:
    """What the route reads of one request: from Flask's ``request`` in the view, from the WSGI
    environ on the direct route (:mod:`~flask_oa_recall.direct`)."""

    method: str
    environ: dict[str, Any]
    #: The ``Content-Length``, if any.
    declared: int | None
    #: The body's stream (Werkzeug's may refuse a body over ``MAX_CONTENT_LENGTH`` here).
    open_body: Callable[[], IO[bytes]]
    #: The query's name/value pairs, in order.
    pairs: list[tuple[str, str]]


def read_body(open_body: Callable[[], IO[bytes]], declared: int | None, limit: int) -> bytes:
    """Read at most ``limit`` bytes, with or without a Content-Length (``declared``).

    With a Content-Length, never more than it: a server's raw input stream (the direct route
    reads it) may wait for bytes the client will never send on a kept-alive connection.
    """
    if declared is not None and declared > limit:
        raise CallbackRejected("body_too_large")
    # Without a Content-Length, one byte over the limit tells a body that is too large.
    want = limit + 1 if declared is None else declared
    chunks: list[bytes] = []
    size = 0
    try:
        # Inside the try: with the host's MAX_CONTENT_LENGTH set, Werkzeug refuses here.
        stream = open_body()
        while size < want:
            chunk = stream.read(want - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except ClientDisconnected:
        raise CallbackRejected("incomplete_body") from None
    except RequestEntityTooLarge:
        raise CallbackRejected("body_too_large") from None
    except Exception as err:
        # The server's input stream failed: gunicorn raises its own errors (NoMoreData,
        # InvalidChunkSize...) for a chunked body that breaks off or is malformed.
        logger.info("could not read a request body: %s", type(err).__name__)
        raise CallbackRejected(
            "incomplete_body",
            "The body could not be read: it ended early or its chunks are malformed.",
        ) from None
    if size > limit:
        raise CallbackRejected("body_too_large")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def plain_query_pairs(query: str) -> list[tuple[str, str]] | None:
    """The pairs of a query with nothing to unquote (ASCII, no ``%`` or ``+``: Tencent's usual
    query), in order; ``None`` for any other query."""
    if not query.isascii() or "%" in query or "+" in query:
        return None
    # The pairs ``request.args`` would give, without building a MultiDict, at a fifth of the
    # cost.
    parts = [part.partition("=") for part in query.split("&") if part]
    return [(name, value) for name, _, value in parts]
