"""The per-app state kept in ``app.extensions["oa_recall"]``."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask

from .config import DEFAULTS, Settings, SettingsCache
from .deciders import Decider, DeciderPool
from .durability import ForgetReport, ForgetWatch, Marked, warn_if_forgetful
from .errors import MissingDependency, NotSetUp, StoreError, StoreUnavailable
from .guarded import GuardedStore
from .journal import Journal
from .signals import store_forgot
from .store import Store, open_store
from .store.url import redact_url
from .tracing import TRACING_INSTALLED, active_tracer, load_provider

__all__ = ["EXTENSION_KEY", "OARecallState", "get_state", "probe_store", "setup_app"]

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from .metrics import Metrics

EXTENSION_KEY = "oa_recall"

logger = logging.getLogger(__name__)


class OARecallState:
    """Settings (re-read from config when it changes), the open store and the callback
    endpoints of one app."""

    def __init__(self, app: Flask) -> None:
        self.instance_path = app.instance_path
        self.callback_endpoints: set[str] = set()
        """The endpoints of the callback view, one per registration of the blueprint."""
        self._app = weakref.ref(app)
        self._settings = SettingsCache()
        self._stores: dict[str | None, Store] = {}
        self._lock = threading.Lock()
        self._warned_open = False
        self._checked: Settings | None = None  # the settings last checked for missing tokens
        #: The deciders by command: the registry of the :class:`~flask_oa_recall.OARecall`
        #: instance set up on this app (shared, so later registrations count), else empty.
        self.deciders: Mapping[str, Decider] = {}
        self._pool: DeciderPool | None = None
        #: The process's :class:`~flask_oa_recall.metrics.Metrics` when ``OA_RECALL_METRICS``
        #: is on, else ``None``.
        self.metrics: Metrics | None = None
        #: Whether spans may be created (``OA_RECALL_TRACING`` and the API installed).
        self.tracing = False

    def settings(self, config: Any) -> Settings:
        """The validated ``OA_RECALL_*`` settings for ``config`` as it is now."""
        settings = self._settings.get(config)
        if not self._warned_open and settings is not self._checked:
            self._checked = settings
            unsigned = sorted(app_id for app_id, tokens in settings.tokens.items() if not tokens)
            if unsigned:
                self._warned_open = True
                _warn_unauthenticated(unsigned, every=not settings.authenticates)
        return settings

    def store(self, settings: Settings) -> Store:
        """The store ``OA_RECALL_STORE`` names, opened once per URL."""
        store = self._stores.get(settings.store_url)
        if store is None:
            with self._lock:
                store = self._stores.get(settings.store_url)
                if store is None:
                    store = self._guard(
                        open_store(settings.store_url, self.instance_path), settings
                    )
                    self._stores[settings.store_url] = store
        return store

    def decider_pool(self, size: int) -> DeciderPool:
        """This process's decider threads, made on first use: a pool made before a fork (in
        gunicorn's master, with ``--preload``) has no threads in the worker, so each process
        gets its own."""
        pool = self._pool
        if pool is None or pool.pid != os.getpid() or pool.size != size:
            with self._lock:
                pool = self._pool
                if pool is None or pool.pid != os.getpid() or pool.size != size:
                    if pool is not None and pool.pid == os.getpid():
                        pool.shutdown()
                    pool = self._pool = DeciderPool(size)
        return pool

    def _guard(self, store: Store, settings: Settings) -> Store:
        """Watch a store that can forget; back it with the journal if configured."""
        journal = None
        if settings.journal is not None:
            journal = Journal(os.path.join(self.instance_path, settings.journal), store.url)
        watch = None
        if isinstance(store, Marked):
            remembered = None
            if journal is not None:
                try:
                    remembered = journal.marker()
                except StoreError as err:
                    logger.error("%s", err)
            watch = ForgetWatch(
                store,
                lambda report: self._forgot(report, journal),
                remembered=remembered,
                remember=journal.remember if journal is not None else None,
            )
        if watch is None and journal is None:
            return store
        return GuardedStore(store, watch=watch, journal=journal)

    def _forgot(self, report: ForgetReport, journal: Journal | None) -> None:
        journalled = None
        if journal is not None:
            try:
                journalled = len(journal.entries())
            except StoreError as err:
                logger.error("%s", err)
        if journalled is None:
            advice = (
                "What it held is LOST. Turn on persistence (Redis: appendonly yes), or set"
                " OA_RECALL_JOURNAL = True so that each host keeps its unfinished deliveries too."
            )
        else:
            advice = (
                f"This host's journal holds {journalled} unfinished deliveries: run"
                " 'flask oa-recall replay --failed --pending' on every host to bring back and"
                " dispatch the ones the store lost."
            )
        logger.error("The delivery store forgot: %s. %s", report.describe(), advice)
        app = self._app()
        if app is None:  # pragma: no cover - the app is gone, nobody to tell
            return
        try:
            store_forgot.send(
                app,
                _async_wrapper=app.ensure_sync,
                store_url=report.store_url,
                detail=report.describe(),
                journalled=journalled,
            )
        except Exception:
            logger.exception("a receiver of store_forgot raised; ignored")

    def check_store(self, settings: Settings) -> None:
        """At start-up: warn if the store may forget, and read (or write) its marker."""
        store = self.store(settings)
        if not isinstance(store, GuardedStore) or store.watch is None:
            return
        try:
            warn_if_forgetful(store.watch.store, journal=store.journal is not None)
        except StoreError as err:  # the request path reports an unreachable store
            logger.debug("cannot read the store's persistence at start-up: %s", err)
        store.watch.check()

    def tracer(self) -> Tracer | None:
        """The tracer to create spans with, or ``None`` (tracing off or not configured)."""
        return active_tracer() if self.tracing else None

    def open_stores(self) -> list[Store]:
        """The stores opened so far."""
        with self._lock:
            return list(self._stores.values())

    def close(self) -> None:
        """Close every store this state opened."""
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


def _warn_unauthenticated(app_ids: list[int], *, every: bool) -> None:
    if every:
        logger.warning(
            "OA_RECALL_TOKENS is empty: webhook authentication is off and anyone who can"
            " reach the callback URL can make this app hide messages. Enable authentication"
            " in the Chat console and set OA_RECALL_TOKENS."
        )
    else:
        logger.warning(
            "OA_RECALL_TOKENS has no token for SdkAppid %s: requests for it are not"
            " authenticated. Add its token to OA_RECALL_TOKENS.",
            ", ".join(map(str, app_ids)),
        )


def probe_store(store: Store, *, required: bool) -> None:
    """Ping ``store`` once at start-up: a loud warning if it fails, or, if ``required``,
    :class:`~flask_oa_recall.errors.StoreUnavailable`."""
    try:
        store.ping()
    except StoreError as err:
        where = redact_url(store.url)
        if required:
            raise StoreUnavailable(
                f"OA_RECALL_STORE_REQUIRED is True and the delivery store {where} cannot be read"
                f" and written: {err}"
            ) from err
        logger.warning(
            "THE DELIVERY STORE IS UNREACHABLE: %s cannot be read and written (%s). Until it"
            " answers, callbacks are still verified, dispatched and answered, but NOT KEPT:"
            " a redelivered recall is dispatched again (no dedup), and a callback whose"
            " receiver fails is answered 503 (delivery_not_kept) so that Tencent may send it"
            " again, since nothing is left to replay. Every callback tries the store again."
            " Set OA_RECALL_STORE_REQUIRED = True to refuse to start instead; run"
            " 'flask oa-recall check' to test the store.",
            where,
            err,
            extra={"store": where},
        )


def _install_metrics(app: Flask, state: OARecallState) -> None:
    try:
        from . import metrics
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            "metrics", "OA_RECALL_METRICS is True, which needs prometheus_client"
        ) from err
    metrics.install(app, state)
    state.metrics = metrics.get_metrics()


def setup_app(app: Flask) -> OARecallState:
    """Set the config defaults, validate the config and create the state; once per app.

    :raises ~flask_oa_recall.ConfigError: if a config value is malformed or missing.
    :raises ~flask_oa_recall.MissingDependency: if the store, or ``OA_RECALL_METRICS``, needs
        an extra.
    :raises ~flask_oa_recall.StoreUnavailable: if ``OA_RECALL_STORE_REQUIRED`` is true and the
        store cannot be read and written.
    """
    state = app.extensions.get(EXTENSION_KEY)
    if isinstance(state, OARecallState):
        return state
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    state = OARecallState(app)
    settings = state.settings(app.config)
    state.store(settings)  # an unknown OA_RECALL_STORE fails here, at start-up
    state.check_store(settings)
    probe_store(state.store(settings), required=settings.store_required)
    if settings.metrics:
        _install_metrics(app, state)
    state.tracing = settings.tracing and TRACING_INSTALLED
    if state.tracing:
        load_provider()
    app.extensions[EXTENSION_KEY] = state
    return state


def get_state(app: Flask) -> OARecallState:
    """The state of ``app``.

    :raises ~flask_oa_recall.NotSetUp: if the extension is not set up on ``app`` (a
        :class:`RuntimeError` too).
    """
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, OARecallState):
        raise NotSetUp(
            "flask_oa_recall is not set up on this app: call OARecall(app) or"
            " register create_blueprint()."
        )
    return state
