"""The operator page for kept deliveries, a blueprint the host mounts behind its own
authorization check: :func:`create_admin_blueprint`."""

from __future__ import annotations

from .views import LIST_WINDOW, Authorize, create_admin_blueprint

__all__ = ["LIST_WINDOW", "Authorize", "create_admin_blueprint"]
