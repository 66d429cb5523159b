"""HTTP/1.1 over a raw socket, so tests can send what no well-behaved client would.

Requests are built byte by byte (a lying Content-Length, a broken chunk, a body cut off) and
responses read back with their status, headers and body. Standard library only; every socket
operation has a timeout.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RawConnection", "RawResponse", "chunked", "request_bytes"]

ENVELOPE_KEYS = {"ActionStatus", "ErrorCode", "ErrorInfo"}


def request_bytes(
    target: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    content_length: int | str | None = "auto",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One request. ``content_length`` is the header's value: ``"auto"`` for ``len(body)``,
    ``None`` for no header at all (e.g. with ``Transfer-Encoding: chunked``), or any int."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if content_length == "auto":
        lines.append(f"Content-Length: {len(body)}")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(parts: Iterable[bytes], *, last: bool = True) -> bytes:
    """``parts`` in chunked transfer coding, with the final zero-size chunk if ``last``."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + (b"0\r\n\r\n" if last else b"")


@dataclass
class RawResponse:
    """A response as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def envelope(self) -> dict[str, Any]:
        """The JSON body, checked to be exactly the ``ActionStatus``/``ErrorCode``/``ErrorInfo``
        envelope served as ``application/json``."""
        assert self.headers.get("content-type", "").startswith("application/json"), (
            self.status,
            self.headers,
            self.body[:200],
        )
        data = json.loads(self.body)
        assert isinstance(data, dict)
        assert set(data) == ENVELOPE_KEYS, data
        return data

    @property
    def closes(self) -> bool:
        """Whether the server said it closes the connection after this response."""
        return self.headers.get("connection", "").lower() == "close"


class RawConnection:
    """One TCP connection to ``127.0.0.1:port``."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._reader = self.sock.makefile("rb")

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def half_close(self) -> None:
        """Tell the server no more bytes will come (FIN), but keep reading."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()
        self.sock.close()

    def read_response(self) -> RawResponse:
        """Read one response (``Content-Length`` framed, or up to EOF)."""
        status_line = self._reader.readline(65536)
        if not status_line:
            raise ConnectionError("the server closed the connection without answering")
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        assert version.startswith("HTTP/1."), status_line
        headers: dict[str, str] = {}
        while True:
            line = self._reader.readline(65536).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self._reader.read(int(headers["content-length"]))
        else:
            body = self._reader.read()
        return RawResponse(int(status), headers, body)

    def exchange(self, data: bytes) -> RawResponse:
        """Send ``data`` and read one response."""
        self.send(data)
        return self.read_response()

    def at_eof(self) -> bool:
        """Whether the server has closed its side (reads nothing more within the timeout)."""
        return self._reader.read(1) == b""
