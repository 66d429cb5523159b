"""Reading the record file that ``tests.apps.host``'s receivers append to."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

__all__ = ["count", "read_record"]


def read_record(path: Path) -> list[tuple[str, str, int, str]]:
    """``(what, receiver, pid, key)`` per line, in the order the lines were written."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(w, r, int(p), k) for w, r, p, k in (line.split(" ", 3) for line in lines)]


def count(path: Path, what: str, receiver: str) -> Counter[str]:
    """How often ``receiver`` wrote ``what`` for each key."""
    return Counter(k for w, r, _, k in read_record(path) if (w, r) == (what, receiver))
