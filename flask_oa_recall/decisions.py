"""What a decider answers to a "before" callback: :class:`Decision`.

Tencent follows the ``ErrorCode`` of the answer to a before-callback (``PROTOCOL.md`` §6.3):
0 lets the action go ahead (optionally with a replaced ``MsgBody`` / ``CloudCustomData``, or with
some subscribers refused), 1 or a code in [120001, 130000] denies it, and 2 drops a message
silently. A :class:`Decision` is one such answer, checked when it is made so that a mistake
shows up in the decider that made it, not in Tencent's console.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALLOW",
    "CUSTOM_DENY_CODES",
    "DENY",
    "DROP",
    "Decision",
]

#: ``ErrorCode`` 0: the action goes ahead.
ALLOW = 0
#: ``ErrorCode`` 1: the action is refused; the caller gets Tencent's own error (20006 or 10016).
DENY = 1
#: ``ErrorCode`` 2: a message is discarded silently; its sender is told it was sent.
DROP = 2
#: Codes a deny may carry that Tencent passes on to the client together with ``ErrorInfo``.
CUSTOM_DENY_CODES = range(120001, 130001)


def _msg_body(value: Any) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, str | bytes | Mapping):
        raise TypeError(
            "msg_body must be a list of message elements"
            ' ({"MsgType": ..., "MsgContent": {...}}), not a single'
            f" {type(value).__name__}."
        )
    if not isinstance(value, Iterable):
        raise TypeError(f"msg_body must be a list of message elements, got {type(value).__name__}.")
    elements = tuple(value)
    if not elements:
        raise ValueError("msg_body must hold at least one message element.")
    for index, element in enumerate(elements):
        if not isinstance(element, Mapping):
            raise TypeError(
                f"msg_body[{index}] must be a message element (a dict), got"
                f" {type(element).__name__}."
            )
        if not isinstance(element.get("MsgType"), str) or not element["MsgType"]:
            raise ValueError(f'msg_body[{index}] needs a "MsgType" string such as "TIMTextElem".')
        if not isinstance(element.get("MsgContent"), Mapping):
            raise ValueError(f'msg_body[{index}] needs a "MsgContent" object.')
    try:
        # A copy through JSON: the answer cannot change after the decision is made, and
        # anything JSON cannot carry fails here, in the decider.
        copied: list[Mapping[str, Any]] = json.loads(
            json.dumps(elements, ensure_ascii=False, allow_nan=False)
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"msg_body cannot be sent as JSON: {err}") from None
    return tuple(copied)


def _subscribers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"refused_subscribers must be a list of account ids (str), got {type(value).__name__}."
        )
    accounts = tuple(value)
    for index, account in enumerate(accounts):
        if not isinstance(account, str) or not account:
            raise TypeError(
                f"refused_subscribers[{index}] must be a non-empty account id (str), got"
                f" {account!r}."
            )
    return accounts


@dataclass(frozen=True)
class Decision:
    """The answer to a before-callback. Make one with :meth:`allow`, :meth:`deny` or
    :meth:`drop`; a decider that returns ``None`` allows the action unchanged.

    :param error_code: the ``ErrorCode`` answered: 0, 1, 2 or a code in [120001, 130000].
    :param error_info: the ``ErrorInfo`` answered.
    :param msg_body: the replacement ``MsgBody`` (message elements), or ``None``.
    :param cloud_custom_data: the replacement ``CloudCustomData``, or ``None``.
    :param refused_subscribers: ``RefusedSubscribers_Account``, the users refused by
        ``OfficialAccount.CallbackBeforeAddSubscriber``, or ``None``.
    :raises ValueError: for a code Tencent does not define, or fields on a decision that is not
        an allow (Tencent applies them only with ``ErrorCode`` 0).
    :raises TypeError: for a field of the wrong type; the message names the field.
    """

    error_code: int = ALLOW
    error_info: str = ""
    msg_body: tuple[Mapping[str, Any], ...] | None = field(default=None, repr=False)
    cloud_custom_data: str | None = None
    refused_subscribers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        code = self.error_code
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"error_code must be an int, got {type(code).__name__}.")
        if code not in (ALLOW, DENY, DROP) and code not in CUSTOM_DENY_CODES:
            raise ValueError(
                f"error_code {code} is not one Tencent defines: 0 allows, 1 or a code in"
                " [120001, 130000] denies, 2 drops."
            )
        if not isinstance(self.error_info, str):
            raise TypeError(f"error_info must be a str, got {type(self.error_info).__name__}.")
        if self.msg_body is not None:
            object.__setattr__(self, "msg_body", _msg_body(self.msg_body))
        if self.cloud_custom_data is not None and not isinstance(self.cloud_custom_data, str):
            raise TypeError(
                "cloud_custom_data must be a str (Tencent's CloudCustomData is a string), got"
                f" {type(self.cloud_custom_data).__name__}."
            )
        if self.refused_subscribers is not None:
            object.__setattr__(self, "refused_subscribers", _subscribers(self.refused_subscribers))
        if code != ALLOW and self.fields():
            raise ValueError(
                "msg_body, cloud_custom_data and refused_subscribers go with an allow only:"
                " Tencent ignores them unless ErrorCode is 0."
            )

    @classmethod
    def allow(
        cls,
        *,
        msg_body: Iterable[Mapping[str, Any]] | None = None,
        cloud_custom_data: str | None = None,
        refused_subscribers: Iterable[str] | None = None,
    ) -> Decision:
        """Let the action go ahead (``ErrorCode`` 0).

        :param msg_body: replace the message's ``MsgBody`` with these elements
            (``[{"MsgType": "TIMTextElem", "MsgContent": {"Text": "..."}}]``); before-send only.
        :param cloud_custom_data: replace the message's ``CloudCustomData``; before-send only.
        :param refused_subscribers: refuse only these users (``RefusedSubscribers_Account``);
            ``OfficialAccount.CallbackBeforeAddSubscriber`` only.
        """
        return cls(
            ALLOW,
            "",
            msg_body,  # type: ignore[arg-type]  # normalised to a tuple by __post_init__
            cloud_custom_data,
            refused_subscribers,  # type: ignore[arg-type]
        )

    @classmethod
    def deny(cls, info: str = "", *, error_code: int = DENY) -> Decision:
        """Refuse the action.

        :param info: ``ErrorInfo``. Tencent passes it on to the client with a custom code.
        :param error_code: 1 (the caller gets Tencent's error 20006 or 10016), or a code in
            [120001, 130000] that Tencent passes on to the client.
        :raises ValueError: for any other code.
        """
        if isinstance(error_code, bool) or not isinstance(error_code, int):
            raise TypeError(f"error_code must be an int, got {type(error_code).__name__}.")
        if error_code != DENY and error_code not in CUSTOM_DENY_CODES:
            raise ValueError(
                f"a deny's error_code must be 1 or in [120001, 130000], got {error_code}"
                " (use Decision.drop() for 2)."
            )
        return cls(error_code, info)

    @classmethod
    def drop(cls) -> Decision:
        """Discard a message silently (``ErrorCode`` 2): its sender is told it was sent, nobody
        gets it. Tencent honours it for the before-send commands."""
        return cls(DROP)

    @property
    def kind(self) -> str:
        """``"allow"``, ``"deny"`` or ``"drop"``."""
        if self.error_code == ALLOW:
            return "allow"
        return "drop" if self.error_code == DROP else "deny"

    def fields(self) -> dict[str, Any]:
        """The fields answered besides the envelope, under Tencent's names."""
        extra: dict[str, Any] = {}
        if self.msg_body is not None:
            extra["MsgBody"] = [dict(element) for element in self.msg_body]
        if self.cloud_custom_data is not None:
            extra["CloudCustomData"] = self.cloud_custom_data
        if self.refused_subscribers is not None:
            extra["RefusedSubscribers_Account"] = list(self.refused_subscribers)
        return extra

    def answer(self) -> dict[str, Any]:
        """The whole JSON answer: ``ActionStatus`` ``"OK"``, ``ErrorCode``, ``ErrorInfo``, then
        the fields that are set."""
        return {
            "ActionStatus": "OK",
            "ErrorCode": self.error_code,
            "ErrorInfo": self.error_info,
            **self.fields(),
        }
