"""Signals the extension sends. Connect with ``signal.connect_via(app)`` to hear one app only.

All are sent with the real Flask app (not the proxy) as sender.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "callback_received",
    "callback_rejected",
    "decision_failed",
    "messages_recalled",
    "receiver_failed",
    "store_failed",
]

_signals = Namespace()

messages_recalled = _signals.signal("oa-recall.messages-recalled")
"""Official Account messages were recalled. Sent once per recalled message, however often Tencent
delivers it.

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.RecallEvent` with the messages this receiver has not
    handled yet.
"""

callback_received = _signals.signal("oa-recall.callback-received")
"""A callback of any command passed verification. Sent for every accepted request, redeliveries
included, before :data:`messages_recalled`.

:param sender: the Flask app.
:param callback: a :class:`~flask_oa_recall.Callback`.
"""

callback_rejected = _signals.signal("oa-recall.callback-rejected")
"""A request was refused.

:param sender: the Flask app.
:param reason: the stable reason code, e.g. ``"bad_signature"``.
:param error_code: the ``ErrorCode`` that was answered.
:param status: the HTTP status that was answered.
"""

receiver_failed = _signals.signal("oa-recall.receiver-failed")
"""A receiver of :data:`messages_recalled` or :data:`callback_received` raised. The failure is kept
and ``flask oa-recall replay`` runs that receiver again.

:param sender: the Flask app.
:param receiver: the receiver's dotted name.
:param signal_name: ``"messages_recalled"`` or ``"callback_received"``.
:param exception: what it raised.
:param delivery_id: the kept delivery's id.
"""

store_failed = _signals.signal("oa-recall.store-failed")
"""The delivery store could not be written; the callback was dispatched without dedup.

:param sender: the Flask app.
:param exception: the store's error.
:param delivery_id: the id the delivery would have been kept under.
"""

decision_failed = _signals.signal("oa-recall.decision-failed")
"""A decider raised, returned something other than a :class:`~flask_oa_recall.Decision` or
``None``, had not returned within ``OA_RECALL_DECISION_SECONDS``, or found no free thread; the
``OA_RECALL_DECISION_FALLBACK`` answer was sent. Sent after that answer went out, so a slow
receiver here never delays it.

:param sender: the Flask app.
:param command: the before-command, e.g. ``"OfficialAccount.CallbackBeforeSendMsg"``.
:param exception: what the decider raised; a :class:`~flask_oa_recall.DecisionTimeout` when it
    ran out of time, a :class:`~flask_oa_recall.DecidersBusy` when no thread was free.
:param delivery_id: the callback's delivery id.
"""
