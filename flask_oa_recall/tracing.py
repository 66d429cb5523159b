"""OpenTelemetry spans (the ``tracing`` extra: ``opentelemetry-api`` only).

One span per callback, ``oa_recall.callback``, with children for verifying, keeping, each
receiver and a before-callback's decision. Spans are created only when the app configured a
tracer provider (an SDK); with the API's default provider, or ``OA_RECALL_TRACING = False``, the
request path does not call the API at all. Attributes never hold a token, a ``Sign`` or a body.
"""

from __future__ import annotations

import enum
import importlib.metadata
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace
except ImportError:  # pragma: no cover - depends on the environment
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.trace import Tracer


__all__ = [
    "LOOK_UP",
    "TRACER_NAME",
    "TRACING_INSTALLED",
    "LookUp",
    "active_tracer",
    "annotate_current",
    "attributes_of",
    "decision_attributes",
    "load_provider",
    "tracer_for",
    "use_tracer",
]

#: Whether the OpenTelemetry API is installed.
TRACING_INSTALLED = trace is not None

#: The instrumentation scope's name.
TRACER_NAME = "flask_oa_recall"

_cached: tuple[object, Tracer] | None = None
_PUBLIC = object()


def active_tracer() -> Tracer | None:
    """The package's tracer if a tracer provider is configured, else ``None``.

    Called for every callback, so the usual case (no provider) costs one attribute read: the
    API's global provider, which stays ``None`` until the app sets one. Where an API version
    lacks that attribute, the public lookup is used.
    """
    global _cached
    if trace is None:  # pragma: no cover - depends on the environment
        return None
    provider: Any = getattr(trace, "_TRACER_PROVIDER", _PUBLIC)
    if provider is None:
        return None
    if provider is _PUBLIC:  # pragma: no cover - depends on the API version
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer: Tracer = provider.get_tracer(TRACER_NAME, _version())
    _cached = (provider, tracer)
    return tracer


class LookUp(enum.Enum):
    """The type of :data:`LOOK_UP`."""

    TOKEN = 0


#: "Find the app's tracer": the default of functions that a view may hand its tracer to.
LOOK_UP = LookUp.TOKEN


def use_tracer(app: Flask, given: Tracer | LookUp | None) -> Tracer | None:
    """``given``, or ``app``'s tracer when it is :data:`LOOK_UP`."""
    return tracer_for(app) if given is LOOK_UP else given


def tracer_for(app: Flask) -> Tracer | None:
    """The tracer for ``app``'s callbacks: ``None`` unless its ``OA_RECALL_TRACING`` is on and a
    provider is configured."""
    state = app.extensions.get("oa_recall")
    return None if state is None else state.tracer()


def load_provider() -> None:
    """Let the API load a provider named by ``OTEL_PYTHON_TRACER_PROVIDER``, once, at start-up
    (it does so on the first public lookup)."""
    if trace is not None:
        trace.get_tracer_provider()


def annotate_current(**values: Any) -> None:
    """Set ``values`` (``oa_recall.``-prefixed) on the current span, if one is recording."""
    if trace is None:  # pragma: no cover - depends on the environment
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes_of(values))


def decision_attributes(command: str, kind: str, failure: Exception | None) -> dict[str, Any]:
    """A decision span's attributes: the command, the decision's kind, a fallback's reason."""
    attributes: dict[str, Any] = {
        "oa_recall.command": command,
        "oa_recall.decision": kind,
        "oa_recall.fallback": failure is not None,
    }
    if failure is not None:
        attributes["oa_recall.fallback_reason"] = type(failure).__name__
    return attributes


def _version() -> str:
    try:
        return importlib.metadata.version("flask-oa-recall")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return ""


def attributes_of(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as span attributes: ``oa_recall.``-prefixed, without ``None`` values."""
    return {f"oa_recall.{k}": v for k, v in values.items() if v is not None}
