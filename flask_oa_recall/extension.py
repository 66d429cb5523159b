"""``OARecall``: the extension object."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Flask

from .blueprint import create_blueprint
from .config import DEFAULTS, validate_path
from .deciders import Decider, check_before_command
from .dispatch import receiver_name
from .errors import SetupError
from .state import EXTENSION_KEY, get_state

D = TypeVar("D", bound=Decider)

__all__ = ["OARecall"]


class OARecall:
    """Receive Tencent Cloud Chat callbacks at ``OA_RECALL_PATH`` and emit signals.

    ::

        app.config["OA_RECALL_SDKAPPID"] = 1400000000
        app.config["OA_RECALL_TOKENS"] = ["token-from-the-console"]
        OARecall(app)   # or: ext = OARecall(); ext.init_app(app)

    The extension keeps no reference to an app; its state lives in
    ``app.extensions["oa_recall"]``, so one instance can serve several apps.

    :param app: the app to set up now, or ``None`` to call :meth:`init_app` later.
    :param blueprint_name: the blueprint's name, the prefix of its endpoints.
    """

    def __init__(self, app: Flask | None = None, *, blueprint_name: str = "oa_recall") -> None:
        self.blueprint_name = blueprint_name
        self._deciders: dict[str, Decider] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config, open the store and mount the callback route on ``app``.

        :raises ~flask_oa_recall.SetupError: if the extension is already set up on
            ``app`` (a :class:`RuntimeError` too).
        :raises ~flask_oa_recall.MissingConfig: if ``OA_RECALL_SDKAPPID`` is missing (a
            :class:`RuntimeError` too).
        :raises ~flask_oa_recall.ConfigError: if a config value is malformed; the
            message names the key (a :class:`ValueError` too).
        :raises ~flask_oa_recall.MissingDependency: if the store needs an extra that is
            not installed.
        :raises ~flask_oa_recall.errors.StoreUnavailable: if ``OA_RECALL_STORE_REQUIRED`` is
            true and the store cannot be read and written.
        """
        if EXTENSION_KEY in app.extensions:
            raise SetupError(
                "OARecall is already registered on this app. Call OARecall(app) or"
                " init_app(app) once per app, and do not also register create_blueprint()."
            )
        path = validate_path(app.config.setdefault("OA_RECALL_PATH", DEFAULTS["OA_RECALL_PATH"]))
        app.register_blueprint(create_blueprint(self.blueprint_name), url_prefix=path)
        # The registry itself, not a copy: deciders registered after init_app count too.
        get_state(app).deciders = self._deciders

    def decider(self, command: str) -> Callable[[D], D]:
        """Register the function that answers the before-callback ``command``, for every app
        this instance is set up on (before or after :meth:`init_app`)::

            @oa.decider("OfficialAccount.CallbackBeforeSendMsg")
            def moderate(callback):
                if "forbidden" in json.dumps(callback.body.get("MsgBody")):
                    return Decision.deny("Blocked by moderation.")
                return None   # allow, unchanged

        The function gets the verified :class:`~flask_oa_recall.Callback` and returns a
        :class:`~flask_oa_recall.Decision` or ``None``; it may be ``async def``. It runs in a
        thread with an app and request context, within ``OA_RECALL_DECISION_SECONDS``.

        :param command: a before-command: ``Namespace.CallbackBefore...`` (the three Official
            Account ones, ``C2C.CallbackBeforeSendMsg``, ``Group.CallbackBeforeSendMsg``,
            ``Group.CallbackBeforeCreateGroup``...) or ``Sns.CallbackPrevFriendAdd`` /
            ``Sns.CallbackPrevFriendResponse``.
        :raises ValueError: if ``command`` is not a before-command, or already has a decider.
        """
        check_before_command(command)
        self._check_free(command)

        def register(function: D) -> D:
            if not callable(function):
                raise TypeError(f"a decider must be callable, got {type(function).__name__}.")
            self._check_free(command)
            self._deciders[command] = function
            return function

        return register

    def _check_free(self, command: str) -> None:
        if command in self._deciders:
            raise ValueError(
                f"{command} already has a decider ({receiver_name(self._deciders[command])});"
                " register one function per before-command."
            )
