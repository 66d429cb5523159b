"""``send``: post a signed callback to a running server over real HTTP, as Tencent would."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import current_app
from flask.cli import with_appcontext

from ..config import TENCENT_TIMEOUT_SECONDS
from ..deciders import is_before_command
from ..events import RECALL_COMMAND, SEND_MSG_COMMAND
from ..kinds import KINDS
from ..payloads import (
    DEFAULT_OFFICIAL_ACCOUNT,
    before_callback_body,
    callback_body,
    callback_path,
    recall_body,
    signed_query,
    typed_body,
)
from ..responses import OK_BODY

__all__ = ["send_command"]

#: Where ``send`` posts when no ``--url`` is given: gunicorn's default address, where the
#: documentation's Quick start and the example serve the app (``flask run`` users give
#: ``--url http://127.0.0.1:5000``).
DEFAULT_BASE_URL = "http://127.0.0.1:8000"

#: How long Tencent waits for an answer.
_BUDGET_SECONDS = TENCENT_TIMEOUT_SECONDS

_OK = json.loads(OK_BODY)


def _target(url: str | None, path: str) -> tuple[str, str, str]:
    """(scheme, host:port, path) of the callback URL; a URL without a path gets ``path``."""
    parts = urlsplit(url or DEFAULT_BASE_URL)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{url!r} is not an http:// or https:// URL.", param_hint="'--url'"
        )
    if parts.query or parts.fragment:
        raise click.BadParameter(
            "give the URL without a query string; send builds and signs it.", param_hint="'--url'"
        )
    return parts.scheme, parts.netloc, parts.path if parts.path not in ("", "/") else path


def _fresh_msg_key() -> str:
    """A MsgKey in Tencent's ``Seq_1_ServerTime`` form that this server has not seen yet."""
    return f"{secrets.randbelow(10**9)}_1_{int(time.time())}"


def _post(
    scheme: str, netloc: str, target: str, body: bytes, timeout: float
) -> tuple[int, str, bytes]:
    connection_type = (
        http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_type(netloc, timeout=timeout)
    try:
        connection.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.reason, response.read()
    finally:
        connection.close()


def _redacted(query: str) -> str:
    return "&".join(
        "Sign=<hidden>" if pair.lower().startswith("sign=") else pair for pair in query.split("&")
    )


@click.command("send")
@with_appcontext
@click.option(
    "--url",
    help=f"The server to post to. Default: {DEFAULT_BASE_URL} and this app's callback path;"
    " a URL without a path gets the callback path.",
)
@click.option(
    "--official-account",
    default=DEFAULT_OFFICIAL_ACCOUNT,
    show_default=True,
    help="Official_Account of the recall.",
)
@click.option(
    "--msg-key",
    "msg_keys",
    multiple=True,
    help="A recalled MsgKey; repeat for several (for OfficialAccount.CallbackAfterSendMsg: the"
    " sent message's one MsgKey). Default: a fresh one, so it is not a duplicate.",
)
@click.option(
    "--command",
    help=f"CallbackCommand. Default: {RECALL_COMMAND}, or the one in --body.",
)
@click.option("--sdkappid", type=int, help="SdkAppid. Default: the first in OA_RECALL_SDKAPPID.")
@click.option(
    "--token",
    envvar="OA_RECALL_SEND_TOKEN",
    help="Token to sign with (or $OA_RECALL_SEND_TOKEN). Default: the first configured for the"
    " SdkAppid. Never printed.",
)
@click.option(
    "--text",
    help="The message's text: of the message about to be sent (before-commands; the account's"
    " name for CallbackBeforeCreateOfficialAccount), or of the sent message"
    " (OfficialAccount.CallbackAfterSendMsg). Default: hello.",
)
@click.option(
    "--subscriber",
    "subscribers",
    multiple=True,
    help="OfficialAccount.CallbackBeforeAddSubscriber: a user about to subscribe; repeat for"
    " several. Default: user1.",
)
@click.option("--unsigned", is_flag=True, help="Send no Sign/RequestTime.")
@click.option(
    "--body",
    "body_file",
    type=click.File("rb"),
    help="Send this file's bytes as the body, as they are ('-' for stdin).",
)
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for an answer."
)
def send_command(
    url: str | None,
    official_account: str,
    msg_keys: tuple[str, ...],
    command: str | None,
    sdkappid: int | None,
    token: str | None,
    text: str | None,
    subscribers: tuple[str, ...],
    unsigned: bool,
    body_file: IO[bytes] | None,
    timeout: float,
) -> None:
    """Send a signed callback to a running server, as Tencent would.

    By default a recall of one fresh MsgKey, signed with this app's SdkAppid and first token,
    to this app's route on 127.0.0.1:8000 (gunicorn's default address). Prints the status
    and the answer; the exit status is 0 only for HTTP 200 with the OK envelope. For a
    before-command (``--command OfficialAccount.CallbackBeforeSendMsg --text ...``) it also
    prints the decision's fields, and any decision the server answered with ``ActionStatus``
    ``OK`` counts as success.
    """
    app = current_app
    scheme, netloc, path = _target(url, callback_path(app))
    if body_file is not None:
        if msg_keys or text is not None or subscribers:
            raise click.UsageError(
                "--msg-key, --text and --subscriber build a body; they cannot go with --body."
            )
        body = body_file.read()
        if command is None:
            command = _command_of(body)
        what = f"{len(body)} bytes from {body_file.name}"
    else:
        command = command or RECALL_COMMAND
        if subscribers and not is_before_command(command):
            raise click.UsageError("--subscriber goes with a before-command.")
        if text is not None and not (is_before_command(command) or command == SEND_MSG_COMMAND):
            raise click.UsageError(f"--text goes with a before-command or {SEND_MSG_COMMAND}.")
        payload: dict[str, Any]
        if command == RECALL_COMMAND:
            keys = msg_keys or (_fresh_msg_key(),)
            payload = recall_body(keys, official_account=official_account)
            what = f"recall of {', '.join(keys)} by {official_account}"
        elif command in KINDS:
            payload, what = _typed(command, official_account, msg_keys, text)
        elif msg_keys:
            raise click.UsageError(
                f"--msg-key only goes with {RECALL_COMMAND} and {SEND_MSG_COMMAND}."
            )
        elif is_before_command(command):
            payload = before_callback_body(
                command,
                text="hello" if text is None else text,
                official_account=official_account,
                subscribers=subscribers or ("user1",),
            )
            what = f"{command}, {_summary(payload)}"
        else:
            payload = callback_body(command, Official_Account=official_account)
            what = f"{command} for {official_account}"
        body = json.dumps(payload, ensure_ascii=False).encode()

    query = signed_query(app, command=command, sdk_app_id=sdkappid, token="" if unsigned else token)
    shown = urlunsplit((scheme, netloc, path, _redacted(query), ""))
    click.echo(f"POST {shown}")
    click.echo(f"  {what}")

    status, answer = _exchange(scheme, netloc, f"{path}?{query}", body, timeout)
    parsed = _json_or_none(answer)
    if is_before_command(command) and status == 200 and _is_decision(parsed):
        _echo_decision(parsed)
        return
    if status != 200 or parsed != _OK:
        raise click.ClickException("the server did not answer with the OK envelope.")


def _exchange(
    scheme: str, netloc: str, target: str, body: bytes, timeout: float
) -> tuple[int, bytes]:
    """Post ``body``; print the status, the time taken and the answer; return status and answer."""
    started = time.perf_counter()
    try:
        status, reason, answer = _post(scheme, netloc, target, body, timeout)
    except (OSError, http.client.HTTPException) as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise click.ClickException(
            f"no answer from {scheme}://{netloc}: {detail}. Is the server running there?"
        ) from None
    elapsed = time.perf_counter() - started
    click.echo(f"HTTP {status} {reason} in {elapsed * 1000:.0f} ms")
    click.echo(answer.decode("utf-8", "replace")[:4000] or "(empty body)")
    if elapsed > _BUDGET_SECONDS:
        click.echo(
            f"warning: the answer took more than Tencent's {_BUDGET_SECONDS:g} s budget;"
            " Tencent would have given up.",
            err=True,
        )
    return status, answer


#: The fields of a decision, in the order they are printed.
_DECISION_FIELDS = (
    "ErrorCode",
    "ErrorInfo",
    "MsgBody",
    "CloudCustomData",
    "RefusedSubscribers_Account",
)


def _is_decision(answer: Any) -> bool:
    code = answer.get("ErrorCode") if isinstance(answer, dict) else None
    return (
        isinstance(answer, dict)
        and answer.get("ActionStatus") == "OK"
        and isinstance(code, int)
        and not isinstance(code, bool)
    )


def _echo_decision(answer: dict[str, Any]) -> None:
    code = answer["ErrorCode"]
    kind = "allow" if code == 0 else "drop" if code == 2 else "deny"
    click.echo(f"decision: {kind}")
    for name in _DECISION_FIELDS:
        if name in answer:
            click.echo(f"  {name}: {json.dumps(answer[name], ensure_ascii=False)}")


def _summary(payload: dict[str, Any]) -> str:
    """What a before-callback body is about, in a few words, for the echo line."""
    if "SubscribeAccountList" in payload:
        users = ", ".join(s["Subscriber_Account"] for s in payload["SubscribeAccountList"])
        return f"subscribers {users} to {payload['Official_Account']}"
    if "MsgBody" in payload:
        texts = [e["MsgContent"].get("Text", "") for e in payload["MsgBody"]]
        return f"text {json.dumps(' '.join(texts), ensure_ascii=False)}"
    return f"name {json.dumps(payload.get('Name', ''), ensure_ascii=False)}"


def _typed(
    command: str, official_account: str, msg_keys: tuple[str, ...], text: str | None
) -> tuple[dict[str, Any], str]:
    """A realistic body for a typed Official Account command, and what it is in a few words."""
    if command != SEND_MSG_COMMAND and msg_keys:
        raise click.UsageError(f"--msg-key goes with {RECALL_COMMAND} and {SEND_MSG_COMMAND}.")
    if len(msg_keys) > 1:
        raise click.UsageError(f"{SEND_MSG_COMMAND} carries one MsgKey; give --msg-key once.")
    key = msg_keys[0] if msg_keys else _fresh_msg_key()
    payload = typed_body(
        command, official_account=official_account, msg_key=key, text=text or "hello"
    )
    if command == SEND_MSG_COMMAND:
        shown = payload["MsgBody"][0]["MsgContent"]["Text"]
        return payload, f"{command}: message {key} of {official_account}, text {shown!r}"
    return payload, f"{command} for {official_account}"


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _command_of(body: bytes) -> str:
    parsed = _json_or_none(body)
    command = parsed.get("CallbackCommand") if isinstance(parsed, dict) else None
    return command if isinstance(command, str) and command else RECALL_COMMAND
