"""pytest plugin for host apps' own tests (registered as the ``oa_recall`` entry point)."""

from __future__ import annotations
