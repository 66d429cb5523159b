"""The ``OA_RECALL_*`` configuration keys: defaults, and validation into :class:`Settings`."""

from __future__ import annotations

import copy
import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ConfigTypeError, MissingConfig

__all__ = [
    "DECISION_FALLBACKS",
    "DEFAULTS",
    "DEFAULT_JOURNAL_NAME",
    "DESCRIPTIONS",
    "DISPATCH_MODES",
    "KEEP_ALL",
    "REQUIRED",
    "TENCENT_TIMEOUT_SECONDS",
    "Settings",
    "parse_settings",
    "validate_path",
]

#: How long Tencent waits for an answer before it gives up.
TENCENT_TIMEOUT_SECONDS = 2.0

#: In ``OA_RECALL_KEEP_COMMANDS``: keep every command, listened to or not.
KEEP_ALL = "*"

#: The command that is always kept (a copy of ``events.RECALL_COMMAND``; config imports nothing
#: from the package).
_RECALL = "OfficialAccount.CallbackAfterMsgWithDraw"

#: ``OA_RECALL_DISPATCH`` values.
DISPATCH_MODES = ("sync", "after_response")

#: ``OA_RECALL_DECISION_FALLBACK`` values.
DECISION_FALLBACKS = ("allow", "deny")

#: Defaults set with ``app.config.setdefault`` by ``init_app``.
DEFAULTS: Mapping[str, Any] = {
    "OA_RECALL_TOKENS": [],
    "OA_RECALL_PATH": "/tencent-im/callback",
    "OA_RECALL_MAX_SKEW_SECONDS": 60,
    "OA_RECALL_MAX_BODY_BYTES": 64 * 1024,
    "OA_RECALL_STORE": None,
    "OA_RECALL_DISPATCH": "sync",
    "OA_RECALL_SLOW_DISPATCH_SHARE": 0.5,
    "OA_RECALL_LEASE_SECONDS": 60,
    "OA_RECALL_DECISION_SECONDS": 1.5,
    "OA_RECALL_DECISION_FALLBACK": "allow",
    "OA_RECALL_DECISION_THREADS": 8,
    "OA_RECALL_KEEP_COMMANDS": [],
    "OA_RECALL_SKIP_COMMANDS": [],
    "OA_RECALL_JOURNAL": False,
    "OA_RECALL_STORE_REQUIRED": False,
    "OA_RECALL_METRICS": False,
    "OA_RECALL_TRACING": True,
    "OA_RECALL_DIRECT": True,
}

#: The journal's file in the instance folder when ``OA_RECALL_JOURNAL = True``.
DEFAULT_JOURNAL_NAME = "oa_recall_journal.sqlite3"


#: Keys without a default: ``init_app`` refuses to start without them.
REQUIRED = ("OA_RECALL_SDKAPPID",)

#: What each key means, in reStructuredText. The documentation's configuration reference is
#: generated from this and :data:`DEFAULTS`; a key added to either needs its text here (a test
#: checks that both name the same keys).
DESCRIPTIONS: Mapping[str, str] = {
    "OA_RECALL_SDKAPPID": (
        "Your SDKAppID from the Chat console: an int, or a list of ints if one backend serves"
        " several apps. A request for any other SdkAppid is refused with 403."
    ),
    "OA_RECALL_TOKENS": (
        "Callback tokens: a list (for every SdkAppid), or a dict from SdkAppid to a list. Every"
        " token in a list is accepted, so a token can be rotated without downtime. Empty turns"
        " authentication off (a warning is logged once, and ``check`` warns)."
    ),
    "OA_RECALL_PATH": (
        "Where :class:`~flask_oa_recall.OARecall` mounts the route. Read once, when the route"
        " is mounted."
    ),
    "OA_RECALL_MAX_SKEW_SECONDS": (
        "How far ``RequestTime`` may be from this server's clock, either way."
    ),
    "OA_RECALL_MAX_BODY_BYTES": (
        "The largest body read, with or without a ``Content-Length``; a larger one gets 413."
    ),
    "OA_RECALL_STORE": (
        "Where deliveries are kept: unset for SQLite in the instance folder,"
        " ``sqlite:///relative/path.db`` (relative to the instance folder) or"
        " ``sqlite:////absolute/path.db``, ``redis://host:port/db``, or ``memory://`` (tests)."
    ),
    "OA_RECALL_DISPATCH": (
        "``sync``: receivers run before the answer. ``after_response``: the answer goes out"
        " first, then the receivers run in the same worker."
    ),
    "OA_RECALL_SLOW_DISPATCH_SHARE": (
        "A dispatch that takes longer than this share of Tencent's 2 s timeout logs a warning."
    ),
    "OA_RECALL_LEASE_SECONDS": (
        "How long a worker's claim on a delivery and its messages lasts; after that, a killed"
        " worker's claim can be taken over by a replay. Keep it above gunicorn's ``timeout``."
    ),
    "OA_RECALL_DECISION_SECONDS": (
        "How long a decider may take to answer a before-callback (above 0, below Tencent's 2 s);"
        " a later one gets the fallback. See :doc:`deciders`."
    ),
    "OA_RECALL_DECISION_FALLBACK": (
        'What a decider that raised, ran late or could not start answers: ``"allow"``'
        ' (ErrorCode 0) or ``"deny"`` (ErrorCode 1).'
    ),
    "OA_RECALL_DECISION_THREADS": (
        "The most decider threads one process runs at once; when all are held by deciders that"
        " never return, the fallback is answered at once."
    ),
    "OA_RECALL_KEEP_COMMANDS": (
        'Commands kept even when nothing listens to them; ``["*"]`` keeps every command. See'
        " the keep policy in :doc:`events`."
    ),
    "OA_RECALL_SKIP_COMMANDS": (
        "Commands never kept, even when receivers listen (they run without dedup or replay). The"
        ' recall cannot be named here, nor ``"*"``.'
    ),
    "OA_RECALL_JOURNAL": (
        "``True`` (or a file path, relative to the instance folder) keeps each unfinished"
        " delivery in a SQLite journal on this host as well, so that ``replay`` brings back what"
        " a store that forgot has lost (see :doc:`failure-modes`)."
    ),
    "OA_RECALL_STORE_REQUIRED": (
        "An unreachable store at start-up stops the app instead of a warning (see"
        " :doc:`operations`)."
    ),
    "OA_RECALL_METRICS": (
        "Count callbacks in Prometheus metrics (needs the ``metrics`` extra; see"
        " :doc:`operations`)."
    ),
    "OA_RECALL_TRACING": (
        "Create OpenTelemetry spans when the ``tracing`` extra is installed and a tracer provider"
        " is configured; ``False`` never creates any."
    ),
    "OA_RECALL_DIRECT": (
        "Serve a plain callback (a ``POST`` with a ``Content-Length`` and an unescaped query)"
        " without Flask's request dispatch, in an app context, while the app has no request"
        " hooks or request signals that would apply to it; ``False`` sends every request"
        " through Flask. See :ref:`direct-route`."
    ),
}

_KEYS = (*REQUIRED, *DEFAULTS)


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Built from ``app.config`` by :func:`parse_settings`."""

    sdk_app_ids: frozenset[int]
    tokens: Mapping[int, tuple[str, ...]]
    path: str
    max_skew_seconds: float
    max_body_bytes: int
    store_url: str | None
    dispatch: str
    slow_dispatch_seconds: float
    lease_seconds: float
    decision_seconds: float
    decision_fallback: str
    decision_threads: int
    keep_commands: frozenset[str] = frozenset()
    skip_commands: frozenset[str] = frozenset()
    journal: str | None = None
    """The journal's path (relative to the instance folder unless absolute), or ``None``."""

    def keeps(self, command: str, listened: bool) -> bool:
        """The keep policy: is a callback of ``command`` written to the store?

        The recall always is; a command in ``OA_RECALL_SKIP_COMMANDS`` never is; one in
        ``OA_RECALL_KEEP_COMMANDS`` (or every command, with ``"*"`` there) always is; any other
        only when ``listened`` (a receiver of ``callback_received`` or of its typed signal is
        connected for the app).
        """
        if command in self.skip_commands:
            return False
        return (
            listened
            or command == _RECALL
            or command in self.keep_commands
            or KEEP_ALL in self.keep_commands
        )

    store_required: bool = False
    metrics: bool = False
    tracing: bool = True
    direct: bool = True

    @property
    def authenticates(self) -> bool:
        """Whether any token is configured, i.e. ``Sign`` is checked."""
        return any(self.tokens.values())


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigTypeError(
            key, f"{key} must be an integer SdkAppid, got {type(value).__name__}."
        )
    try:
        return int(value)
    except ValueError:
        raise ConfigError(key, f"{key} must be an integer SdkAppid, got {value!r}.") from None


def _number(key: str, value: Any, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(key, f"{key} must be a number of at least {minimum}, got {value!r}.")
    return float(value)


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, DEFAULTS[key])
    if not isinstance(value, bool):
        raise ConfigTypeError(key, f"{key} must be True or False, got {value!r}.")
    return value


def validate_path(value: Any) -> str:
    """``OA_RECALL_PATH``, or a :class:`~flask_oa_recall.errors.ConfigError` naming the key.

    ``init_app`` checks it before mounting the route: Werkzeug's own error would not say which
    setting is wrong.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError("OA_RECALL_PATH", f"OA_RECALL_PATH must start with '/', got {value!r}.")
    return value


def _token_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise ConfigTypeError(
            key, f"{key} must be a list of tokens, not a single string: wrap it in [...]."
        )
    tokens = tuple(value or ())
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ConfigError(key, f"{key} holds an empty or non-string token.")
    return tokens


def _tokens(value: Any, sdk_app_ids: frozenset[int]) -> dict[int, tuple[str, ...]]:
    key = "OA_RECALL_TOKENS"
    if isinstance(value, Mapping):
        tokens = {_int(key, k): _token_list(key, v) for k, v in value.items()}
        strangers = sorted(set(tokens) - sdk_app_ids)
        if strangers:
            raise ConfigError(
                key, f"{key} names SdkAppid {strangers[0]}, which OA_RECALL_SDKAPPID lacks."
            )
        return {app_id: tokens.get(app_id, ()) for app_id in sdk_app_ids}
    shared = _token_list(key, value)
    return dict.fromkeys(sdk_app_ids, shared)


def _commands(key: str, value: Any) -> frozenset[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise ConfigTypeError(
            key,
            f"{key} must be a list of CallbackCommand names, got {type(value).__name__}"
            + (": wrap it in [...]." if isinstance(value, str) else "."),
        )
    for command in value:
        if not isinstance(command, str) or not command.strip() or command != command.strip():
            raise ConfigError(key, f"{key} holds {command!r}, which is not a CallbackCommand name.")
    return frozenset(value)


def _keep_policy(config: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    keep = _commands("OA_RECALL_KEEP_COMMANDS", config.get("OA_RECALL_KEEP_COMMANDS") or [])
    skip = _commands("OA_RECALL_SKIP_COMMANDS", config.get("OA_RECALL_SKIP_COMMANDS") or [])
    if _RECALL in skip:
        raise ConfigError(
            "OA_RECALL_SKIP_COMMANDS",
            f"OA_RECALL_SKIP_COMMANDS names {_RECALL}: the recall is always kept (a lost recall"
            " leaves a recalled message visible); remove it.",
        )
    if KEEP_ALL in skip:
        raise ConfigError(
            "OA_RECALL_SKIP_COMMANDS",
            f"OA_RECALL_SKIP_COMMANDS cannot hold {KEEP_ALL!r}: name the commands not to keep.",
        )
    both = sorted(keep & skip)
    if both:
        raise ConfigError(
            "OA_RECALL_SKIP_COMMANDS",
            f"{both[0]} is in both OA_RECALL_KEEP_COMMANDS and OA_RECALL_SKIP_COMMANDS.",
        )
    return keep, skip


def _value(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, DEFAULTS[key])


def _sdk_app_ids(config: Mapping[str, Any]) -> frozenset[int]:
    raw_ids = config.get("OA_RECALL_SDKAPPID")
    if raw_ids is None or raw_ids == "" or (isinstance(raw_ids, Collection) and not raw_ids):
        raise MissingConfig(
            "OA_RECALL_SDKAPPID",
            "OA_RECALL_SDKAPPID is not set: set it to your app's SDKAppID from the Chat console"
            " (an int, or a list of ints).",
        )
    items = raw_ids if isinstance(raw_ids, list | tuple | set | frozenset) else [raw_ids]
    return frozenset(_int("OA_RECALL_SDKAPPID", i) for i in items)


def _path(config: Mapping[str, Any]) -> str:
    return validate_path(_value(config, "OA_RECALL_PATH"))


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = _value(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"{key} must be a positive int, got {value!r}.")
    return value


def _one_of(config: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _value(config, key)
    if value not in choices:
        raise ConfigError(key, f"{key} must be one of {choices}, got {value!r}.")
    return str(value)


def _store_url(config: Mapping[str, Any]) -> str | None:
    store = config.get("OA_RECALL_STORE")
    if store is not None and not isinstance(store, str):
        raise ConfigTypeError("OA_RECALL_STORE", "OA_RECALL_STORE must be a URL string or None.")
    return store


def _decision_seconds(config: Mapping[str, Any]) -> float:
    seconds = _value(config, "OA_RECALL_DECISION_SECONDS")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < TENCENT_TIMEOUT_SECONDS
    ):
        raise ConfigError(
            "OA_RECALL_DECISION_SECONDS",
            "OA_RECALL_DECISION_SECONDS must be a number of seconds above 0 and below Tencent's"
            f" {TENCENT_TIMEOUT_SECONDS:g} s timeout, got {seconds!r}.",
        )
    return float(seconds)


def _journal(config: Mapping[str, Any]) -> str | None:
    journal = _value(config, "OA_RECALL_JOURNAL")
    if journal is True:
        return DEFAULT_JOURNAL_NAME
    if journal is False or journal is None:
        return None
    if not isinstance(journal, str) or not journal:
        raise ConfigError(
            "OA_RECALL_JOURNAL",
            f"OA_RECALL_JOURNAL must be True, False or the journal file's path, got {journal!r}.",
        )
    return journal


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Validate the ``OA_RECALL_*`` keys of ``config``; errors name the key at fault.

    :raises ~flask_oa_recall.MissingConfig: if ``OA_RECALL_SDKAPPID`` is not set.
    :raises ~flask_oa_recall.ConfigError: if a value is malformed
        (:class:`~flask_oa_recall.ConfigTypeError` if it has the wrong type).
    """
    sdk_app_ids = _sdk_app_ids(config)
    path = _path(config)
    max_body_bytes = _positive_int(config, "OA_RECALL_MAX_BODY_BYTES")
    store_url = _store_url(config)
    dispatch = _one_of(config, "OA_RECALL_DISPATCH", DISPATCH_MODES)
    share = _number(
        "OA_RECALL_SLOW_DISPATCH_SHARE", _value(config, "OA_RECALL_SLOW_DISPATCH_SHARE"), minimum=0
    )
    decision_seconds = _decision_seconds(config)
    decision_fallback = _one_of(config, "OA_RECALL_DECISION_FALLBACK", DECISION_FALLBACKS)
    decision_threads = _positive_int(config, "OA_RECALL_DECISION_THREADS")
    keep_commands, skip_commands = _keep_policy(config)
    return Settings(
        sdk_app_ids=sdk_app_ids,
        tokens=_tokens(config.get("OA_RECALL_TOKENS"), sdk_app_ids),
        path=path,
        max_skew_seconds=_number(
            "OA_RECALL_MAX_SKEW_SECONDS", _value(config, "OA_RECALL_MAX_SKEW_SECONDS"), minimum=0
        ),
        max_body_bytes=max_body_bytes,
        store_url=store_url,
        dispatch=dispatch,
        slow_dispatch_seconds=share * TENCENT_TIMEOUT_SECONDS,
        lease_seconds=_number(
            "OA_RECALL_LEASE_SECONDS", _value(config, "OA_RECALL_LEASE_SECONDS"), minimum=0.001
        ),
        decision_seconds=decision_seconds,
        decision_fallback=decision_fallback,
        decision_threads=decision_threads,
        keep_commands=keep_commands,
        skip_commands=skip_commands,
        journal=_journal(config),
        store_required=_bool(config, "OA_RECALL_STORE_REQUIRED"),
        metrics=_bool(config, "OA_RECALL_METRICS"),
        tracing=_bool(config, "OA_RECALL_TRACING"),
        direct=_bool(config, "OA_RECALL_DIRECT"),
    )


_read_keys = operator.itemgetter(*_KEYS)


class SettingsCache:
    """Re-parses the settings only when one of the ``OA_RECALL_*`` values changed.

    Config is read at request time (tests may change it after ``init_app``), but parsing it on
    every request would be wasted work.
    """

    __slots__ = ("_raw", "_settings")

    def __init__(self) -> None:
        self._raw: tuple[Any, ...] | None = None
        self._settings: Settings | None = None

    def get(self, config: Mapping[str, Any]) -> Settings:
        """The settings for ``config``'s current values."""
        try:
            raw = _read_keys(config)  # one C call while every key is set (the usual case)
        except KeyError:
            raw = tuple(config.get(k) for k in _KEYS)
        if self._settings is None or raw != self._raw:
            self._settings = parse_settings(config)
            # A deep copy, so that later in-place edits (a token appended) are noticed.
            self._raw = copy.deepcopy(raw)
        return self._settings
