"""``redis://``: deliveries kept in Redis, shared by every worker on every host.

Keys (``P`` is the prefix, ``oa-recall`` unless the URL says ``?prefix=...``); the braces are a
Redis Cluster hash tag, so every key of one store lives in one slot:

- ``{P}:d:<id>``: a hash per delivery, with a ``members`` map from MsgKey to message member;
- ``{P}:m:<member>``: a hash per recalled message (done, owner, lease_until, receivers_done,
  updated_at); the member is ``[sdkappid,"official_account","msgkey"]`` as JSON, unambiguous
  whatever the Official_Account or MsgKey hold;
- ``{P}:all`` and ``{P}:s:<status>``: sorted sets of delivery ids by ``received_at``;
- ``{P}:mdone``: finished messages by ``updated_at``, for ``prune``;
- ``{P}:ping``: written by ``ping``;
- ``{P}:marker``: written once, at the store's first use (an id, the time, the server's run
  id); if it is gone, the store forgot what it held (see :mod:`flask_oa_recall.durability`).

``begin``, ``finish`` and ``resume`` are Lua scripts, so each is one atomic step on the server,
and leases are judged by the Redis server's clock (``TIME``), the one clock every host shares.
The scripts reach keys that are not passed in ``KEYS``: ``begin`` and ``finish`` name the
sorted sets (and ``finish`` the message keys) from the delivery key's hash tag, which keeps each
command short, and ``finish``, ``resume`` and ``prune`` find message and delivery keys through
``members``; they share the hash tag, so they are in the script's slot.
Needs Redis 5.0 or later (scripts that write after ``TIME``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode
from weakref import WeakSet

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..durability import Marker, Persistence, redis_persistence
from ..errors import ConfigError, StoreError, UnknownDelivery
from ._redis_link import Connection, HiredisLink, Link, hiredis_available
from .base import Claim, Delivery, DeliveryBusy, DeliveryStatus, NewDelivery, Outcome, newer_layout
from .grouped import PendingOutcomes, report_once
from .url import redact_url

__all__ = ["DEFAULT_PREFIX", "RedisStore"]

#: The key prefix used when the URL has no ``prefix`` query parameter.
DEFAULT_PREFIX = "oa-recall"

#: How long connecting may take: a dead Redis must not eat Tencent's 2 s budget.
CONNECT_TIMEOUT_SECONDS = 1.0
#: How long one command may wait for its answer.
READ_TIMEOUT_SECONDS = 2.0

_PRUNE_BATCH = 500

_STATUS_KEYS = (
    DeliveryStatus.PENDING,
    DeliveryStatus.DONE,
    DeliveryStatus.FAILED,
    DeliveryStatus.DUPLICATE,
)

# Helpers shared by the scripts. Times are strings with microseconds ("%.6f"), never Lua
# numbers, because a Lua number returned to the client is truncated to an integer.
_LUA_COMMON = """
local function now_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

local function status_index(status)
  if status == 'pending' then return 1 end
  if status == 'done' then return 2 end
  if status == 'failed' then return 3 end
  if status == 'duplicate' then return 4 end
  return nil
end

-- Claim every key of `keys` for delivery `id` (logic.try_claim).
-- Returns {verdict, receivers_done JSON, ...} in key order.
local function claim(keys, id, now, lease)
  local out = {}
  for _, key in ipairs(keys) do
    local s = redis.call('HMGET', key, 'done', 'owner', 'lease_until', 'receivers_done')
    if s[1] == '1' then
      out[#out + 1] = 'done'
      out[#out + 1] = ''
    elseif s[2] and s[2] ~= id and (tonumber(s[3]) or 0) > now then
      out[#out + 1] = 'busy'
      out[#out + 1] = ''
    else
      local rd = s[4] or '[]'
      redis.call('HSET', key, 'done', '0', 'owner', id, 'lease_until', fmt(now + lease),
        'receivers_done', rd, 'updated_at', fmt(now))
      out[#out + 1] = 'owned'
      out[#out + 1] = rd
    end
  end
  return out
end

-- The hash tag "{P}" of a delivery key "{P}:d:<id>": the other keys are named from it rather
-- than passed in KEYS, which keeps the commands short (they share the tag, so the slot).
local function tag_of(delivery, id)
  return string.sub(delivery, 1, #delivery - #id - 3)
end

-- The Redis keys of the delivery's messages, in msg_keys order, from the kept fields.
local function message_keys(delivery, prefix)
  local d = redis.call('HMGET', delivery, 'msg_keys', 'members')
  local members = cjson.decode(d[2])
  local keys = {}
  for i, msg_key in ipairs(cjson.decode(d[1])) do
    keys[i] = prefix .. members[msg_key]
  end
  return keys
end
"""

# KEYS: delivery, message keys...
# ARGV: id, lease seconds, received_at, sdk_app_id, command, query, body, msg_keys, members,
#       official_account (absent when the callback has none)
_BEGIN = (
    _LUA_COMMON
    + """
local id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('delivery ' .. id .. ' is already kept')
end
local now = now_time()
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempts', '1', 'receivers', '{}',
  'updated_at', fmt(now), 'lease_until', fmt(now + lease), 'id', id, 'received_at', ARGV[3],
  'sdk_app_id', ARGV[4], 'command', ARGV[5], 'query', ARGV[6], 'body', ARGV[7],
  'msg_keys', ARGV[8], 'members', ARGV[9])
if ARGV[10] then
  redis.call('HSET', KEYS[1], 'official_account', ARGV[10])
end
local tag = tag_of(KEYS[1], id)
redis.call('ZADD', tag .. ':all', ARGV[3], id)
redis.call('ZADD', tag .. ':s:pending', ARGV[3], id)
local keys = {}
for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
return claim(keys, id, now, lease)
"""
)

# KEYS: delivery, pending, done, failed, duplicate
# ARGV: id, lease seconds, message key prefix
# Returns {'missing'}, {'busy'} or {'ok', claim, delivery hash as a flat list}.
_RESUME = (
    _LUA_COMMON
    + """
local id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local now = now_time()
local lease = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'received_at')
if s[1] == 'pending' and (tonumber(s[2]) or 0) > now then
  return {'busy'}
end
local old = status_index(s[1])
if old then
  redis.call('ZREM', KEYS[1 + old], id)
end
redis.call('ZADD', KEYS[2], s[3], id)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'pending', 'updated_at', fmt(now),
  'lease_until', fmt(now + lease))
local out = claim(message_keys(KEYS[1], ARGV[3]), id, now, lease)
return {'ok', out, redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: delivery
# ARGV: id, status, receivers JSON, has error ('0'/'1'), error,
#       then per owned MsgKey: the MsgKey, succeeded JSON list, failed ('0'/'1')
_FINISH = (
    _LUA_COMMON
    + """
local id = ARGV[1]
local new = status_index(ARGV[2])
if not new then
  return redis.error_reply('unknown delivery status ' .. ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('delivery ' .. id .. ' vanished from the store')
end
local members = cjson.decode(redis.call('HGET', KEYS[1], 'members'))
for j = 6, #ARGV, 3 do
  if not members[ARGV[j]] then
    return redis.error_reply('MsgKey ' .. ARGV[j] .. ' is not in delivery ' .. id)
  end
end
local now = now_time()
local tag = tag_of(KEYS[1], id)
local message_prefix = tag .. ':m:'
local mdone = tag .. ':mdone'

local function encode_set(set)
  local list = {}
  for name in pairs(set) do list[#list + 1] = name end
  if #list == 0 then return '[]' end
  table.sort(list)
  return cjson.encode(list)
end

for j = 6, #ARGV, 3 do
  local member = members[ARGV[j]]
  local key = message_prefix .. member
  local s = redis.call('HMGET', key, 'done', 'owner', 'lease_until', 'receivers_done')
  local names = {}
  for _, name in ipairs(cjson.decode(s[4] or '[]')) do names[name] = true end
  for _, name in ipairs(cjson.decode(ARGV[j + 1])) do names[name] = true end
  local done = s[1] == '1' or ARGV[j + 2] == '0'
  local lease_until = s[3] or '0'
  if s[2] == id then
    redis.call('HDEL', key, 'owner')
    lease_until = '0'
  end
  redis.call('HSET', key, 'done', done and '1' or '0', 'lease_until', lease_until,
    'receivers_done', encode_set(names), 'updated_at', fmt(now))
  if done then
    redis.call('ZADD', mdone, fmt(now), member)
  end
end

local d = redis.call('HMGET', KEYS[1], 'status', 'received_at', 'receivers')
if status_index(d[1]) then
  redis.call('ZREM', tag .. ':s:' .. d[1], id)
end
redis.call('ZADD', tag .. ':s:' .. ARGV[2], d[2], id)
local merged = cjson.decode(d[3] or '{}')
for name, result in pairs(cjson.decode(ARGV[3])) do
  if merged[name] ~= 'ok' then merged[name] = result end
end
local receivers = '{}'
if next(merged) ~= nil then receivers = cjson.encode(merged) end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'receivers', receivers,
  'updated_at', fmt(now), 'lease_until', '0')
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'last_error')
end
return 'OK'
"""
)

# KEYS: all, mdone, the status sets to prune...
# ARGV: before (exclusive score), batch size, delivery key prefix, message key prefix
# Returns {deliveries removed, messages removed}; the caller repeats until both are 0.
_PRUNE = """
local max = '(' .. ARGV[1]
local batch = tonumber(ARGV[2])
local deliveries = 0
for i = 3, #KEYS do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', max, 'LIMIT', 0, batch)
  for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[3] .. id)
    redis.call('ZREM', KEYS[i], id)
    redis.call('ZREM', KEYS[1], id)
    deliveries = deliveries + 1
  end
end
local messages = 0
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', max, 'LIMIT', 0, batch)
for _, member in ipairs(members) do
  redis.call('DEL', ARGV[4] .. member)
  redis.call('ZREM', KEYS[2], member)
  messages = messages + 1
end
return {deliveries, messages}
"""


# KEYS: marker; ARGV: id, created_at, server run id. Written once, at the store's first use.
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'created_at', ARGV[2], 'run_id', ARGV[3])
end
return redis.call('HGETALL', KEYS[1])
"""


def _score(value: float) -> str:
    """A float as Redis reads a score."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(float(value))


#: The config key whose value these errors are about.
_KEY = "OA_RECALL_STORE"


def _split_url(url: str) -> tuple[str, str]:
    """Take ``prefix`` out of the URL's query: redis-py would pass it on as a connection option."""
    # Split by hand: urlunsplit would turn unix:///path into unix:/path.
    base, _, query = url.partition("?")
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True)
    prefixes = [value for name, value in pairs if name == "prefix"]
    rest = [(name, value) for name, value in pairs if name != "prefix"]
    if len(prefixes) > 1:
        raise ConfigError(
            _KEY, f"Redis store URL gives 'prefix' {len(prefixes)} times; give it once."
        )
    prefix = prefixes[0] if prefixes else DEFAULT_PREFIX
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(
            _KEY,
            f"Redis store prefix {prefix!r} must be non-empty and hold no '{{' or '}}'"
            " (the store wraps it in braces as a Redis Cluster hash tag).",
        )
    return (f"{base}?{urlencode(rest)}" if rest else base), prefix


_masked = redact_url


def _to_delivery(fields: Mapping[str, str]) -> Delivery:
    return Delivery(
        id=fields["id"],
        received_at=float(fields["received_at"]),
        sdk_app_id=int(fields["sdk_app_id"]),
        command=fields["command"],
        query=json.loads(fields["query"]),
        body=fields["body"],
        official_account=fields.get("official_account"),
        msg_keys=tuple(json.loads(fields["msg_keys"])),
        status=fields["status"],
        attempts=int(fields["attempts"]),
        receivers=json.loads(fields["receivers"]),
        last_error=fields.get("last_error"),
        updated_at=float(fields["updated_at"]),
        lease_until=float(fields["lease_until"]),
    )


#: A string as JSON (ASCII, quoted): what ``json.dumps`` writes for a ``str``, without building
#: an encoder. Message members are ``[sdkappid,"official_account","msgkey"]`` in this form.
_json_str = encode_basestring_ascii


_NO_NAMES: frozenset[str] = frozenset()


def _json_list(items: Iterable[str]) -> str:
    """Strings as a JSON list, exactly as ``json.dumps`` writes it."""
    return "[" + ", ".join(map(_json_str, items)) + "]"


def _json_object(pairs: Mapping[str, str]) -> str:
    """A map of strings as a JSON object, exactly as ``json.dumps`` writes it."""
    return "{" + ", ".join([f"{_json_str(k)}: {_json_str(v)}" for k, v in pairs.items()]) + "}"


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _receivers_ok(receivers: Mapping[str, str]) -> frozenset[str]:
    return frozenset(name for name, result in receivers.items() if result == "ok")


#: Every store of this process, so that a forked child drops the parent's connections.
_STORES: WeakSet[RedisStore] = WeakSet()


def _forget_connections_after_fork() -> None:
    for store in list(_STORES):
        store._forked()


# Rather than comparing os.getpid() (a system call) on every command.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Finish:
    """One outcome waiting to be recorded (see :meth:`RedisStore.finish_soon`): the
    ``finish`` script's keys and arguments."""

    delivery_id: str
    keys: list[str]
    args: list[str]
    on_failure: Callable[[StoreError], None] | None = None
    reported: bool = False


class RedisStore:
    """Deliveries in Redis, for apps that run on several hosts behind a load balancer.

    :param url: ``redis://[[user]:password@]host[:port][/db][?prefix=name&...]``,
        ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock[?db=n&prefix=name]``. Query
        parameters other than ``prefix`` are redis-py connection options, e.g.
        ``socket_timeout=0.5``; they override this store's defaults (connect 1 s, read 2 s).

    Commands are not retried: a script whose answer was lost may have run, and running
    ``begin`` twice is not the same as running it once. A connection the server closed is
    noticed before it is used and replaced, and connections are safe across ``fork`` (each
    gunicorn worker gets connections of its own). ``begin``, ``finish`` and ``resume`` run on
    connections the store keeps itself, one per concurrent caller, built from the same URL
    options as the client's pool; everything else goes through the client.

    :param group_outcomes: a live callback's outcome (:meth:`finish_soon`) is sent with the
        next delivery this process keeps, in the same round trip (its script runs first), or
        by a thread after :data:`~flask_oa_recall.store.grouped.GROUP_SECONDS` without one;
        ``False`` sends each at once.
    """

    layout_version = 1

    def __init__(self, url: str, *, group_outcomes: bool = True) -> None:
        client_url, self.prefix = _split_url(url)
        self.url = _masked(url)
        self._client: redis.Redis = redis.Redis.from_url(
            client_url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=READ_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        pool = self._client.connection_pool
        kwargs = pool.connection_kwargs
        self._password: str | None = kwargs.get("password")
        if "path" in kwargs:
            self._where = f"{kwargs['path']} db {kwargs.get('db', 0)}"
        else:
            where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
            self._where = f"{where} db {kwargs.get('db', 0)}"
        try:
            # Building (not connecting) a connection checks the URL's options now, at start-up,
            # rather than inside the first request.
            pool.connection_class(**kwargs)
        except TypeError as err:
            raise ConfigError(
                _KEY, f"Redis store URL {self.url!r} has an unknown option: {err}"
            ) from err
        tag = "{" + self.prefix + "}"
        self._delivery_prefix = f"{tag}:d:"
        self._message_prefix = f"{tag}:m:"
        self._all = f"{tag}:all"
        self._mdone = f"{tag}:mdone"
        self._ping = f"{tag}:ping"
        self._layout = f"{tag}:layout"
        self._layout_checked_in: int | None = None
        # begin, finish and resume run on connections of the store's own (see _run).
        self._ready = False
        self._idle: list[Link] = []
        self._links: WeakSet[Link] = WeakSet()
        # The scripts decode the JSON they keep as UTF-8 (cjson), and compare MsgKeys sent as
        # arguments with it: another encoding would keep MsgKeys that can never match.
        encoding = str(kwargs.get("encoding", "utf-8"))
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise ConfigError(
                _KEY,
                f"Redis store URL {self.url!r} sets encoding={encoding}: the store's scripts"
                " read and write UTF-8; leave encoding out (UTF-8 is the default).",
            )
        self._hiredis: tuple[str, str] | None = None
        if hiredis_available():
            self._hiredis = (encoding, str(kwargs.get("encoding_errors", "strict")))
        self._status = {status: f"{tag}:s:{status}" for status in _STATUS_KEYS}
        self._begin = self._client.register_script(_BEGIN)
        self._resume = self._client.register_script(_RESUME)
        self._finish = self._client.register_script(_FINISH)
        self._prune = self._client.register_script(_PRUNE)
        self._marker_key = f"{tag}:marker"
        self._mark = self._client.register_script(_MARK)
        self._outcomes: PendingOutcomes[_Finish] | None = (
            PendingOutcomes(self._record_batch, report_once) if group_outcomes else None
        )
        _STORES.add(self)

    def __repr__(self) -> str:
        return f"<RedisStore {self._where} prefix={self.prefix!r}>"

    def _error(self, what: str, err: redis.RedisError) -> StoreError:
        """``err`` as a :class:`StoreError` naming the server, not secrets."""
        detail = f"{type(err).__name__}: {err}"
        if self._password:
            detail = detail.replace(self._password, "***")
        return StoreError(f"Redis store at {self._where} could not {what}: {detail}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn every redis-py error into a :class:`StoreError` naming the server, not secrets."""
        try:
            yield
        except redis.RedisError as err:
            raise self._error(what, err) from err

    def stored_layout_version(self) -> int | None:
        """The layout version recorded under the prefix (``{P}:layout``); 1 when deliveries
        are kept without a record (0.1.0), ``None`` when nothing is kept."""
        with self._errors("read its layout version"):
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self._layout)
            pipe.exists(self._all, self._mdone)
            found, exists = pipe.execute()
        if found is not None:
            return int(found)
        return 1 if exists else None

    def _check_layout(self) -> None:
        """Once per process: refuse a layout newer than this code's, record it when absent.

        0.1.0 wrote the same keys without a record, so a store without one is layout 1.
        """
        pid = os.getpid()
        if self._layout_checked_in == pid:
            return
        found = self.stored_layout_version()
        if found is not None and found > self.layout_version:
            raise newer_layout(
                f"Redis store at {self._where} prefix {self.prefix!r}", found, self.layout_version
            )
        with self._errors("record its layout version"):
            self._client.set(self._layout, str(self.layout_version), nx=True)
        self._layout_checked_in = pid

    def _link(self) -> Link:
        """An idle link of this process's own, checked, or a new one."""
        if not self._ready:
            self._prepare()
        try:
            link = self._idle.pop()
        except IndexError:
            pool = self._client.connection_pool
            conn = cast(Connection, pool.connection_class(**pool.connection_kwargs))
            link = HiredisLink(conn, *self._hiredis) if self._hiredis else Link(conn)
            self._links.add(link)
        link.ready()
        return link

    def _prepare(self) -> None:
        """First use in this process: check the layout."""
        self._check_layout()
        self._ready = True

    def _forked(self) -> None:
        """In a forked child: leave the parent's connections to the parent."""
        self._idle = []
        self._links = WeakSet()
        self._ready = False

    def _run(self, script: Script, keys: list[str], args: list[str], what: str) -> Any:
        """Run ``script`` in one round trip (see :meth:`_run_many`); an error reply is raised
        as a :class:`StoreError`."""
        (reply,) = self._run_many([(script, keys, args)], what)
        if isinstance(reply, StoreError):
            raise reply
        return reply

    def _run_many(self, calls: list[tuple[Script, list[str], list[str]]], what: str) -> list[Any]:
        """Run scripts in one round trip (``EVALSHA`` each, ``EVAL`` for one the server lacks,
        e.g. after a restart), on a connection of the store's own; their replies in order, an
        error reply as a :class:`StoreError`.

        One round trip per callback step, so this skips what the client does around each
        command (pool bookkeeping, retry wrapper, observability hooks); connections are checked,
        never retried, and errors become :class:`StoreError` as everywhere else.
        """
        try:
            link = self._link()
        except redis.RedisError as err:
            raise self._error(what, err) from err
        commands: list[tuple[object, ...]] = [
            (b"EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls
        ]
        try:
            replies = link.call_many(commands)
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    script = calls[i][0]
                    try:
                        replies[i] = link.call((b"EVAL", script.script, *commands[i][2:]))
                    except redis.ResponseError as err:
                        replies[i] = err
        except redis.RedisError as err:
            raise self._error(what, err) from err  # the link closed its connection
        self._idle.append(link)  # an error reply is the whole reply: the link is in step
        return [
            self._error_from(what, reply) if isinstance(reply, redis.ResponseError) else reply
            for reply in replies
        ]

    def _error_from(self, what: str, err: redis.ResponseError) -> StoreError:
        error = self._error(what, err)
        error.__cause__ = err
        return error

    def _delivery_key(self, delivery_id: str) -> str:
        return self._delivery_prefix + delivery_id

    @staticmethod
    def _claim(msg_keys: Sequence[str], flat: Sequence[str], receivers_ok: frozenset[str]) -> Claim:
        owned: dict[str, frozenset[str]] = {}
        done: list[str] = []
        busy: list[str] = []
        for key, verdict, receivers_done in zip(msg_keys, flat[::2], flat[1::2], strict=True):
            if verdict == "owned":
                owned[key] = (
                    frozenset(json.loads(receivers_done)) if receivers_done != "[]" else frozenset()
                )
            else:
                (done if verdict == "done" else busy).append(key)
        return Claim(owned=owned, done=tuple(done), busy=tuple(busy), receivers_ok=receivers_ok)

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Keep ``delivery`` and claim its messages in one script (one round trip)."""
        # finish and resume find the message keys through the members map, inside their scripts.
        # Each MsgKey is quoted once, for its member, the MsgKey list and the map's keys.
        quoted = list(map(_json_str, delivery.msg_keys))
        head = f"[{delivery.sdk_app_id},{_json_str(delivery.official_account or '')},"
        members = [f"{head}{key}]" for key in quoted]
        prefix = self._message_prefix
        keys = [self._delivery_prefix + delivery.id, *[prefix + member for member in members]]
        pairs = [f"{key}: {_json_str(member)}" for key, member in zip(quoted, members, strict=True)]
        args = [
            delivery.id,
            repr(float(lease_seconds)),
            _score(delivery.received_at),
            str(delivery.sdk_app_id),
            delivery.command,
            _json_object(delivery.query),
            delivery.body,
            "[" + ", ".join(quoted) + "]",
            "{" + ", ".join(pairs) + "}",
        ]
        if delivery.official_account is not None:
            args.append(delivery.official_account)
        what = f"keep delivery {delivery.id}"
        pending = self._outcomes.take() if self._outcomes is not None else []
        if not pending:
            flat = self._run(self._begin, keys, args, what)
            return self._claim(delivery.msg_keys, flat, frozenset())
        calls = [(self._finish, held.keys, held.args) for held in pending]
        try:
            *recorded, flat = self._run_many([*calls, (self._begin, keys, args)], what)
        except StoreError:
            self._outcomes.give_back(pending)  # type: ignore[union-attr]
            raise
        self._log_unrecorded(pending, recorded)
        if isinstance(flat, StoreError):
            raise flat
        return self._claim(delivery.msg_keys, flat, frozenset())

    @staticmethod
    def _log_unrecorded(pending: list[_Finish], replies: list[Any]) -> None:
        for held, reply in zip(pending, replies, strict=True):
            if isinstance(reply, StoreError):  # the delivery was pruned meanwhile, say
                logger.warning("outcome of delivery %s not recorded: %s", held.delivery_id, reply)

    def _record_batch(self, pending: list[_Finish]) -> None:
        """Send held-back outcomes in one round trip of their own."""
        calls = [(self._finish, held.keys, held.args) for held in pending]
        self._log_unrecorded(pending, self._run_many(calls, "record outcomes"))

    def _flush(self) -> None:
        """Send what :meth:`finish_soon` held back, so that this process reads its own
        writes."""
        if self._outcomes is not None:
            self._outcomes.flush()

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """Lease ``delivery_id`` again for a replay, in one script."""
        self._flush()
        keys = [self._delivery_key(delivery_id), *(self._status[s] for s in _STATUS_KEYS)]
        args = [delivery_id, repr(float(lease_seconds)), self._message_prefix]
        answer = self._run(self._resume, keys, args, f"resume delivery {delivery_id}")
        if answer[0] == "missing":
            raise UnknownDelivery(delivery_id)
        if answer[0] == "busy":
            raise DeliveryBusy(delivery_id)
        kept = _to_delivery(_pairs(answer[2]))
        return kept, self._claim(kept.msg_keys, answer[1], _receivers_ok(kept.receivers))

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` and release the claims in one script (one round trip)."""
        keys, args = self._finish_call(delivery_id, claim, outcome)
        self._run(self._finish, keys, args, f"finish delivery {delivery_id}")

    def finish_soon(
        self,
        delivery_id: str,
        claim: Claim,
        outcome: Outcome,
        on_failure: Callable[[StoreError], None] | None = None,
    ) -> None:
        """:meth:`finish`, sent with the next delivery this process keeps (in the same round
        trip, before it), or by a thread of the process soon after (see
        :mod:`~flask_oa_recall.store.grouped`); at once without ``group_outcomes``.

        Used for live callbacks, after their answer is decided. If the outcome cannot be
        recorded, ``on_failure`` is called once (from that thread) and it is tried again (the
        script merges, so running it twice records the same).
        """
        if self._outcomes is None:
            self.finish(delivery_id, claim, outcome)
            return
        keys, args = self._finish_call(delivery_id, claim, outcome)
        self._outcomes.add(_Finish(delivery_id, keys, args, on_failure))

    def _finish_call(
        self, delivery_id: str, claim: Claim, outcome: Outcome
    ) -> tuple[list[str], list[str]]:
        """The ``finish`` script's keys and arguments."""
        keys = [self._delivery_prefix + delivery_id]
        args = [
            delivery_id,
            outcome.status,
            _json_object(outcome.receivers),
            "0" if outcome.error is None else "1",
            outcome.error or "",
        ]
        succeeded = outcome.succeeded
        failed = outcome.failed
        # Keys handled by the same receivers share one set (dispatch groups them): encode it once.
        encoded: dict[int, str] = {}
        for key in claim.owned:
            names = succeeded.get(key, _NO_NAMES)
            text = encoded.get(id(names))
            if text is None:
                text = encoded[id(names)] = _json_list(sorted(names))
            args += (key, text, "1" if key in failed else "0")
        return keys, args

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""
        self._flush()
        with self._errors(f"read delivery {delivery_id}"):
            fields = cast(dict[str, str], self._client.hgetall(self._delivery_key(delivery_id)))
        return _to_delivery(fields) if fields else None

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Kept deliveries, newest first, optionally only those with one of ``statuses``."""
        if limit <= 0:
            return []
        self._flush()
        if statuses:
            sets = sorted({self._status[s] for s in statuses if s in self._status})
            if not sets:
                return []
        else:
            sets = [self._all]
        with self._errors("list deliveries"):
            pipe = self._client.pipeline(transaction=False)
            for name in sets:
                pipe.zrevrange(name, 0, limit - 1, withscores=True)
            ranges: list[list[tuple[str, float]]] = pipe.execute()
            newest = sorted(
                (entry for found in ranges for entry in found),
                key=lambda entry: (entry[1], entry[0]),
                reverse=True,
            )[:limit]
            pipe = self._client.pipeline(transaction=False)
            for delivery_id, _ in newest:
                pipe.hgetall(self._delivery_key(delivery_id))
            rows: list[dict[str, str]] = pipe.execute()
        # A delivery pruned between the two reads is left out.
        return [_to_delivery(row) for row in rows if row]

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """Drop finished deliveries received before ``before``, and finished message states
        last updated before it; return how many deliveries went."""
        statuses = [DeliveryStatus.DONE, DeliveryStatus.DUPLICATE]
        if include_failed:
            statuses.append(DeliveryStatus.FAILED)
        keys = [self._all, self._mdone, *(self._status[s] for s in statuses)]
        args = [_score(before), str(_PRUNE_BATCH), self._delivery_prefix, self._message_prefix]
        total = 0
        self._flush()
        self._check_layout()
        with self._errors("prune"):
            while True:
                deliveries, messages = self._prune(keys=keys, args=args)
                total += int(deliveries)
                if not deliveries and not messages:
                    return total

    def ping(self) -> None:
        """Write a key and read it back, in one transaction."""
        token = secrets.token_hex(8)
        with self._errors("be written and read"):
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._ping, token, px=60_000)
            pipe.get(self._ping)
            _, found = pipe.execute()
        if found != token:
            raise StoreError(f"Redis store at {self._where} did not read back what it wrote.")

    def persistence(self) -> Persistence:
        """What this Redis keeps across a restart, read with ``CONFIG GET``.

        ``keeps`` is ``None`` when the server refuses ``CONFIG`` (managed services often do).
        """
        try:
            with self._errors("read its persistence settings"):
                pipe = self._client.pipeline(transaction=False)
                for name in ("appendonly", "save", "maxmemory", "maxmemory-policy"):
                    pipe.config_get(name)
                found: dict[str, str] = {}
                for answer in pipe.execute():
                    found.update(answer)
        except StoreError as err:
            return Persistence(None, f"unknown: the server does not say ({err})")
        return redis_persistence(found)

    def marker(self) -> Marker:
        """The marker written at this store's first use; written now if missing."""
        with self._errors("read its marker"):
            try:
                run_id = str(self._client.info("server").get("run_id", ""))
            except redis.ResponseError:  # INFO renamed or not allowed: no run id, still a marker
                run_id = ""
            flat = self._mark(
                keys=[self._marker_key],
                args=[secrets.token_hex(8), repr(time.time()), run_id],
            )
        fields = _pairs(flat)
        return Marker(
            id=fields["id"],
            created_at=float(fields["created_at"]),
            run_id=fields.get("run_id", ""),
            server_run_id=run_id,
        )

    def close(self) -> None:
        """Send held-back outcomes, then disconnect this process's connections; the store
        reconnects if used again."""
        try:
            self._flush()
        except StoreError as err:
            logger.error("outcomes not recorded before closing; they stay pending: %s", err)
        with self._errors("close"):
            self._client.close()
            for link in list(self._links):
                link.close()
            self._idle = []
