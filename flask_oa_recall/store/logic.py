"""The claim rules shared by every backend, on plain values, so they are written once."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MessageState", "merge_receivers", "release", "try_claim"]


@dataclass
class MessageState:
    """The kept state of one recalled message."""

    done: bool = False
    owner: str | None = None
    lease_until: float = 0.0
    receivers_done: set[str] = field(default_factory=set)


def try_claim(state: MessageState, delivery_id: str, now: float, lease_seconds: float) -> str:
    """Claim ``state`` for ``delivery_id`` if free; return ``"owned"``, ``"done"`` or ``"busy"``."""
    if state.done:
        return "done"
    if state.owner not in (None, delivery_id) and state.lease_until > now:
        return "busy"
    state.owner = delivery_id
    state.lease_until = now + lease_seconds
    return "owned"


def release(state: MessageState, delivery_id: str, succeeded: frozenset[str], failed: bool) -> None:
    """Apply one attempt's result to a message that ``delivery_id`` owned."""
    state.receivers_done |= succeeded
    if not failed:
        state.done = True
    if state.owner == delivery_id:
        state.owner = None
        state.lease_until = 0.0


def merge_receivers(before: dict[str, str], now: dict[str, str]) -> dict[str, str]:
    """Receivers' outcomes over attempts: a success is never undone by a later failure."""
    merged = dict(before)
    for name, result in now.items():
        if merged.get(name) != "ok":
            merged[name] = result
    return merged
