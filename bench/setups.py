"""The servers the benchmark compares: the floor, the hand-written routes, the extension.

Adding a set-up is one entry in :data:`SETUPS` (and, for a new kind of server, one entry in
``bench.apps.FACTORIES``; for a new kind of body, one entry in ``bench.payloads.KINDS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .payloads import Traffic

FLOOR = "floor"


@dataclass(frozen=True)
class Setup:
    """One server configuration and the traffic it receives.

    :param slug: a short id, for ``--only`` and file names.
    :param title: the row's label in the results.
    :param store: ``memory``, ``sqlite`` (the default file), ``redis`` or ``postgres``; ``None``
        for the floor.
    :param traffic: what the load generator sends.
    :param target: the floor/extension CPU-per-request ratio this set-up must reach, if any.
    :param app: the kind of server, a name in ``bench.apps.FACTORIES``.
    :param handwritten: the slug of the hand-written set-up this one is compared with (the
        ``hand/ext`` column: its CPU per request over this one's, in the same round).
    :param hand_target: the hand-written/extension ratio this set-up must reach, if any.
    """

    slug: str
    title: str
    store: str | None
    traffic: Traffic = field(default_factory=Traffic)
    target: float | None = None
    app: str = "extension"
    handwritten: str | None = None
    hand_target: float | None = None

    @property
    def is_floor(self) -> bool:
        """Whether this is the bare Flask endpoint."""
        return self.app == FLOOR


FLOOR_SETUP = Setup(
    FLOOR, "floor: bare Flask route (read body, parse JSON, envelope)", None, app=FLOOR
)

_HAND = "hand-written route (Sign, schema, at most once, nothing kept)"

SETUPS = (
    Setup("hand-memory-1", f"{_HAND}, a set, 1 MsgKey", "memory", app="handwritten"),
    Setup("hand-sqlite-1", f"{_HAND}, SQLite, 1 MsgKey", "sqlite", app="handwritten"),
    Setup("hand-redis-1", f"{_HAND}, Redis, 1 MsgKey", "redis", app="handwritten"),
    Setup(
        "memory-signed-1",
        "memory store, signed, 1 MsgKey",
        "memory",
        Traffic(),
        0.85,
        handwritten="hand-memory-1",
    ),
    Setup("memory-unsigned-1", "memory store, unsigned, 1 MsgKey", "memory", Traffic(signed=False)),
    Setup("memory-signed-10", "memory store, signed, 10 MsgKeys", "memory", Traffic(keys=10)),
    Setup(
        "sqlite-signed-1",
        "SQLite (default), signed, 1 MsgKey",
        "sqlite",
        Traffic(),
        0.65,
        handwritten="hand-sqlite-1",
        hand_target=0.85,
    ),
    Setup("sqlite-unsigned-1", "SQLite, unsigned, 1 MsgKey", "sqlite", Traffic(signed=False)),
    Setup("sqlite-signed-10", "SQLite, signed, 10 MsgKeys", "sqlite", Traffic(keys=10)),
    Setup(
        "sqlite-signed-dup",
        "SQLite, signed, 1 MsgKey, always the same (duplicates)",
        "sqlite",
        Traffic(kind="duplicates"),
    ),
    Setup(
        "sqlite-signed-other",
        "SQLite, signed, non-recall command (C2C.CallbackAfterSendMsg)",
        "sqlite",
        Traffic(kind="other"),
    ),
    Setup(
        "sqlite-signed-unlistened",
        "SQLite, signed, typed command nobody listens to (OfficialAccount.CallbackAfterSendMsg)",
        "sqlite",
        Traffic(kind="oa-send"),
        0.85,
    ),
    Setup(
        "sqlite-signed-decider",
        "SQLite, signed, before-command with a decider (OfficialAccount.CallbackBeforeSendMsg)",
        "sqlite",
        Traffic(kind="before-send"),
        app="decider",
    ),
    Setup(
        "redis-signed-1",
        "Redis, signed, 1 MsgKey",
        "redis",
        Traffic(),
        0.55,
        handwritten="hand-redis-1",
    ),
    Setup("redis-signed-10", "Redis, signed, 10 MsgKeys", "redis", Traffic(keys=10)),
    Setup("postgres-signed-1", "PostgreSQL, signed, 1 MsgKey", "postgres", Traffic()),
    Setup("postgres-signed-10", "PostgreSQL, signed, 10 MsgKeys", "postgres", Traffic(keys=10)),
)

#: The set-up whose latency is measured at 8 concurrent connections, against the floor.
LATENCY_SETUP = "sqlite-signed-1"
LATENCY_CONNECTIONS = 8
LATENCY_TARGET_MS = 10.0
