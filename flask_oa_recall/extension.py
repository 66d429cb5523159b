"""``OARecall``: the extension object."""

from __future__ import annotations

from flask import Flask

from .blueprint import create_blueprint
from .config import DEFAULTS
from .state import EXTENSION_KEY

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
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config, open the store and mount the callback route on ``app``.

        :raises RuntimeError: if the extension is already set up on ``app``, or
            ``OA_RECALL_SDKAPPID`` is missing.
        :raises ValueError: if a config value is malformed; the message names the key.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "OARecall is already registered on this app. Call OARecall(app) or"
                " init_app(app) once per app, and do not also register create_blueprint()."
            )
        path = app.config.setdefault("OA_RECALL_PATH", DEFAULTS["OA_RECALL_PATH"])
        app.register_blueprint(create_blueprint(self.blueprint_name), url_prefix=path)
