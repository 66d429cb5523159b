"""What the load generators send: the query (signed or not) and one body per request.

Recall bodies carry MsgKeys unique to each request (run id, connection, counter), so that
deduplication never short-circuits the work; the ``duplicates`` kind repeats one key instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlencode

from flask_oa_recall.security import sign

from .apps import BEFORE_SEND_COMMAND, PATH, SDK_APP_ID, TOKEN

RECALL_COMMAND = "OfficialAccount.CallbackAfterMsgWithDraw"
OTHER_COMMAND = "C2C.CallbackAfterSendMsg"
OA_SEND_COMMAND = "OfficialAccount.CallbackAfterSendMsg"
OFFICIAL_ACCOUNT = "@TOA#_bench"


@dataclass(frozen=True)
class Kind:
    """A kind of non-recall body: its command and a template.

    In ``template``, ``$ID`` becomes an id unique to each request and ``$TIME`` the event time
    in milliseconds (the same in Python and in the wrk script).
    """

    command: str
    template: str


#: Non-recall bodies by ``Traffic.kind``; ``recall`` and ``duplicates`` are built in. Add one here.
KINDS: dict[str, Kind] = {
    "other": Kind(
        OTHER_COMMAND,
        f'{{"CallbackCommand":"{OTHER_COMMAND}","From_Account":"alice","To_Account":"bob",'
        '"MsgKey":"$ID","MsgBody":[],"EventTime":$TIME}',
    ),
    # OfficialAccount.CallbackAfterSendMsg (PROTOCOL.md §4.1, 60804): a typed command; the bench
    # apps connect no receiver of message_sent or callback_received, so nothing listens to it.
    "oa-send": Kind(
        OA_SEND_COMMAND,
        f'{{"CallbackCommand":"{OA_SEND_COMMAND}","Official_Account":"{OFFICIAL_ACCOUNT}",'
        '"MsgKey":"$ID","MsgTime":1700000000,"OnlineOnlyFlag":0,"MsgBody":[{"MsgType":'
        '"TIMTextElem","MsgContent":{"Text":"hello $ID"}}],"CloudCustomData":"",'
        '"EventTime":$TIME}',
    ),
    # OfficialAccount.CallbackBeforeSendMsg (PROTOCOL.md §4.1, 60803): one text element.
    "before-send": Kind(
        BEFORE_SEND_COMMAND,
        f'{{"CallbackCommand":"{BEFORE_SEND_COMMAND}","Official_Account":"{OFFICIAL_ACCOUNT}",'
        '"OnlineOnlyFlag":0,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":'
        '"hello $ID"}}],"CloudCustomData":"","EventTime":$TIME}',
    ),
}


@dataclass(frozen=True)
class Traffic:
    """The shape of the callbacks a set-up receives.

    :param kind: ``recall`` (unique keys), ``duplicates`` (the same key every time) or
        a name in :data:`KINDS` (``other``: a non-recall command).
    :param keys: MsgKeys per recall callback.
    :param signed: whether the query carries ``Sign``/``RequestTime``.
    """

    kind: str = "recall"
    keys: int = 1
    signed: bool = True

    @property
    def command(self) -> str:
        """The ``CallbackCommand`` sent."""
        kind = KINDS.get(self.kind)
        return kind.command if kind else RECALL_COMMAND


def target(traffic: Traffic, now: float | None = None) -> str:
    """Path and query string; signed at ``now`` (valid for the 60 s window around it)."""
    params = {
        "SdkAppid": str(SDK_APP_ID),
        "CallbackCommand": traffic.command,
        "contenttype": "json",
        "ClientIP": "127.0.0.1",
        "OptPlatform": "RESTAPI",
    }
    if traffic.signed:
        when = str(int(time.time() if now is None else now))
        params["Sign"] = sign(TOKEN, when)
        params["RequestTime"] = when
    return f"{PATH}?{urlencode(params)}"


def body(traffic: Traffic, prefix: str, counter: int) -> bytes:
    """The body of request number ``counter`` of a connection whose keys start with ``prefix``."""
    event_time = int(time.time() * 1000)
    kind = KINDS.get(traffic.kind)
    if kind is not None:
        text = kind.template.replace("$ID", f"{prefix}_{counter}")
        return text.replace("$TIME", str(event_time)).encode()
    if traffic.kind == "duplicates":
        names = [f"dup_{i}" for i in range(traffic.keys)]
    else:
        names = [f"{prefix}_{counter}_{i}" for i in range(traffic.keys)]
    keys = ",".join(f'{{"MsgKey":"{name}"}}' for name in names)
    return (
        f'{{"CallbackCommand":"{RECALL_COMMAND}","Official_Account":"{OFFICIAL_ACCOUNT}",'
        f'"WithdrawMsgList":[{keys}],"EventTime":{event_time}}}'
    ).encode()


#: The wrk script; ``@NAME@`` placeholders are filled in by :func:`wrk_script`.
_WRK_SCRIPT = r"""
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
local prefix = ""
function init(args)
  prefix = "@RUN_ID@_" .. tid
end
local function make_body()
  local template = [==[@TEMPLATE@]==]
  if template ~= "" then
    local text = string.gsub(template, "%$ID", prefix .. "_" .. n)
    text = string.gsub(text, "%$TIME", "@EVENT_TIME@")
    return text
  end
  local keys = {}
  for i = 1, @KEYS@ do
    if "@KIND@" == "duplicates" then
      keys[i] = string.format('{"MsgKey":"dup_%d"}', i - 1)
    else
      keys[i] = string.format('{"MsgKey":"%s_%d_%d"}', prefix, n, i - 1)
    end
  end
  return string.format('{"CallbackCommand":"@RECALL@","Official_Account":"@OA@",'
    .. '"WithdrawMsgList":[%s],"EventTime":@EVENT_TIME@}', table.concat(keys, ","))
end
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, make_body())
end
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d,'
    .. ' "read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(traffic: Traffic, run_id: str) -> str:
    """A wrk Lua script that sends the same bodies as :func:`body` and prints a JSON summary."""
    values = {
        "RUN_ID": run_id,
        "KIND": traffic.kind,
        "KEYS": str(traffic.keys),
        "TEMPLATE": KINDS[traffic.kind].template if traffic.kind in KINDS else "",
        "RECALL": RECALL_COMMAND,
        "OA": OFFICIAL_ACCOUNT,
        "EVENT_TIME": str(int(time.time() * 1000)),
    }
    script = _WRK_SCRIPT
    for name, value in values.items():
        script = script.replace(f"@{name}@", value)
    return script
