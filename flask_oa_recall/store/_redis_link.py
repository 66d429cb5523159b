"""Connections the Redis store keeps itself, for the one script each callback step sends.

redis-py's client wraps every command in pool bookkeeping, a retry loop and observability
hooks, and its connection in checks and error translation meant for any command. The store
sends one script per step, never retries (a script whose answer was lost may have run), and
turns every error into :class:`~flask_oa_recall.StoreError` itself, so ``begin``, ``finish``
and ``resume`` run on these links instead. redis-py still builds, connects (TLS, ``AUTH``,
``SELECT``, client name: every URL option) and closes each connection.

- :class:`Link`: redis-py's connection methods (``can_read``, ``send_packed_command``,
  ``read_response``); used without hiredis.
- :class:`HiredisLink`: with hiredis (the ``hiredis`` extra), the command is packed by hiredis,
  written to the connection's socket and the reply parsed by a hiredis reader of the link's
  own, with the errors redis-py raises for the same failures.

Either way a link checks its connection before each command, as redis-py's pool checks a
connection before lending it: one the server closed, or with a reply nobody read, is replaced.
"""

from __future__ import annotations

import importlib
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

import redis

__all__ = ["Connection", "HiredisLink", "Link", "hiredis_available"]


class Connection(Protocol):
    """What a link uses of a redis-py connection (``redis.connection.AbstractConnection``,
    whose methods are not annotated)."""

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def can_read(self) -> bool: ...
    def pack_command(self, *args: object) -> list[bytes]: ...
    def send_packed_command(self, command: list[bytes]) -> None: ...
    def read_response(self) -> Any: ...


class Link:
    """One connection of the store's own, through redis-py's connection methods."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._connected = False

    def ready(self) -> None:
        """Connect, or replace a connection the server closed or that holds an unread reply."""
        conn = self.conn
        if not self._connected:
            conn.connect()
            self._connected = True
            return
        try:
            stale = conn.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            self.close()
            conn.connect()
            self._connected = True

    def call(self, command: tuple[object, ...]) -> Any:
        """Send ``command``, return its reply; an error reply is raised (``ResponseError``)."""
        conn = self.conn
        try:
            conn.send_packed_command(conn.pack_command(*command))
            return conn.read_response()
        except redis.ResponseError:
            raise  # the error was the whole reply: the connection is in step
        except BaseException:
            self.close()  # a reply may still be on its way: never reuse the connection
            raise

    def call_many(self, commands: list[tuple[object, ...]]) -> list[Any]:
        """Send ``commands`` at once (one round trip) and return their replies in order; an
        error reply is returned (a ``ResponseError``), not raised."""
        conn = self.conn
        replies: list[Any] = []
        try:
            packed: list[bytes] = []
            for command in commands:
                packed += conn.pack_command(*command)
            conn.send_packed_command(packed)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as err:
                    replies.append(err)  # the error was the whole reply: still in step
        except BaseException:
            self.close()  # a reply may still be on its way: never reuse the connection
            raise
        return replies

    def close(self) -> None:
        """Disconnect; :meth:`ready` connects again."""
        self._connected = False
        self.conn.disconnect()


_Pack = Callable[[tuple[object, ...]], bytes]


def _import_hiredis() -> Any:
    try:
        return importlib.import_module("hiredis")
    except ImportError:  # pragma: no cover - the hiredis extra is part of the test set-up
        return None


#: hiredis (``pack_command``, ``Reader``), or ``None`` without the extra.
_hiredis: Any = _import_hiredis()


def hiredis_available() -> bool:
    """Whether :class:`HiredisLink` can be used."""
    return _hiredis is not None


def _parse_error() -> Callable[[str], Exception]:
    """redis-py's mapping from an error reply to its exception class (``NOSCRIPT`` to
    ``NoScriptError``, ...), or plain ``ResponseError`` if this redis-py hides it."""
    try:
        parsers = importlib.import_module("redis._parsers")
        return cast(Callable[[str], Exception], parsers.BaseParser.parse_error)
    except (ImportError, AttributeError):  # pragma: no cover - redis-py moved it
        return redis.ResponseError


def _socket_of(conn: Connection) -> socket.socket | None:
    """The connected socket redis-py keeps (a private attribute), if it is where it was."""
    sock = getattr(conn, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


_NOT_ENOUGH_DATA = object()
_READ_SIZE = 65536


class HiredisLink(Link):
    """One connection of the store's own; commands and replies through hiredis, on the
    connection's socket."""

    def __init__(self, conn: Connection, encoding: str, errors: str) -> None:
        super().__init__(conn)
        self._encoding = encoding
        self._errors = errors
        self._sock: socket.socket | None = None
        self._poll: Any = None
        self._reader: Any = None
        self._pack: _Pack = _hiredis.pack_command
        #: The connection showed no socket: this link works as a :class:`Link`.
        self._fallback = False

    def _open(self) -> None:
        conn = self.conn
        conn.connect()
        sock = _socket_of(conn)
        if sock is None:  # a redis-py that keeps its socket elsewhere: its own methods then
            self._fallback = True
            self._connected = True
            return
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        self._reader = _hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse,
            replyError=_parse_error(),
            notEnoughData=_NOT_ENOUGH_DATA,
            encoding=self._encoding,
            errors=self._errors,
        )
        self._poll = poll
        self._sock = sock
        self._connected = True

    def ready(self) -> None:
        """Connect, or replace a connection the server closed or that holds an unread reply."""
        if self._fallback:
            super().ready()
        elif self._sock is None:
            self._open()
        elif self._poll.poll(0):  # readable while idle: closed by the server, or stray data
            self.close()
            self._open()

    def call(self, command: tuple[object, ...]) -> Any:
        """Send ``command``, return its reply; an error reply is raised (``ResponseError``)."""
        if self._fallback:
            return super().call(command)
        (reply,) = self._exchange(self._pack(command), 1)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def call_many(self, commands: list[tuple[object, ...]]) -> list[Any]:
        """Send ``commands`` at once (one round trip) and return their replies in order; an
        error reply is returned (a ``ResponseError``), not raised."""
        if self._fallback:
            return super().call_many(commands)
        return self._exchange(b"".join(map(self._pack, commands)), len(commands))

    def _exchange(self, packed: bytes, count: int) -> list[Any]:
        """Write ``packed`` and read ``count`` replies."""
        sock = self._sock
        reader = self._reader
        if sock is None:
            raise redis.ConnectionError("Connection closed by server.")
        replies: list[Any] = []
        try:
            sock.sendall(packed)
            while len(replies) < count:
                reply = reader.gets()
                while reply is _NOT_ENOUGH_DATA:
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        raise redis.ConnectionError("Connection closed by server.")
                    reader.feed(data)
                    reply = reader.gets()
                if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
                    # e.g. "max number of clients reached": a ConnectionError
                    raise reply
                replies.append(reply)
        except TimeoutError as err:
            self.close()
            raise redis.TimeoutError("Timeout reading from or writing to socket") from err
        except OSError as err:
            self.close()
            raise redis.ConnectionError(f"Error while talking to the server: {err}") from err
        except BaseException:
            self.close()
            raise
        return replies

    def close(self) -> None:
        """Disconnect; :meth:`ready` connects again."""
        self._sock = None
        self._poll = None
        self._reader = None
        super().close()
