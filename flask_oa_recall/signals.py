"""Signals the extension sends. Connect with ``signal.connect_via(app)`` to hear one app only.

All are sent with the real Flask app (not the proxy) as sender.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "callback_received",
    "callback_rejected",
    "decision_failed",
    "message_sent",
    "messages_recalled",
    "official_account_changed",
    "official_account_created",
    "official_account_destroyed",
    "receiver_failed",
    "store_failed",
    "store_forgot",
    "subscriber_limit_reached",
    "subscribers_added",
    "subscribers_deleted",
]

_signals = Namespace()

messages_recalled = _signals.signal("oa-recall.messages-recalled")
"""Official Account messages were recalled. Sent once per recalled message, however often Tencent
delivers it.

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.RecallEvent` with the messages this receiver has not
    handled yet.
"""

# The typed Official Account events. Names are in the past tense, subject first, like
# ``messages_recalled`` and Flask's own ``message_flashed``; ``official_account_`` only where the
# account itself is the subject. Each is sent once per event and receiver however often Tencent
# delivers it (see docs/events.rst for each event's identity), after ``callback_received``, with
# the same kept-delivery, failure and replay rules as ``messages_recalled``.

message_sent = _signals.signal("oa-recall.message-sent")
"""An Official Account message was delivered to its subscribers
(``OfficialAccount.CallbackAfterSendMsg``): what a mirror inserts, and a later
:data:`messages_recalled` names by the same MsgKey.

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.MessageSentEvent`.
"""

official_account_created = _signals.signal("oa-recall.official-account-created")
"""An Official Account was created through REST
(``OfficialAccount.CallbackAfterCreateOfficialAccount``).

:param sender: the Flask app.
:param event: an :class:`~flask_oa_recall.OfficialAccountCreatedEvent`.
"""

official_account_changed = _signals.signal("oa-recall.official-account-changed")
"""An Official Account's profile was changed through REST
(``OfficialAccount.CallbackAfterOfficialAccountInfoChanged``).

:param sender: the Flask app.
:param event: an :class:`~flask_oa_recall.OfficialAccountChangedEvent` with the changed fields.
"""

official_account_destroyed = _signals.signal("oa-recall.official-account-destroyed")
"""An Official Account was destroyed through REST
(``OfficialAccount.CallbackAfterOfficialAccountDestroyed``).

:param sender: the Flask app.
:param event: an :class:`~flask_oa_recall.OfficialAccountDestroyedEvent`.
"""

subscribers_added = _signals.signal("oa-recall.subscribers-added")
"""Users subscribed to an Official Account, from a client or added by an admin
(``OfficialAccount.CallbackAfterAddSubscriber``).

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.SubscribersAddedEvent`.
"""

subscribers_deleted = _signals.signal("oa-recall.subscribers-deleted")
"""Users unsubscribed from an Official Account, or an admin deleted them
(``OfficialAccount.CallbackAfterDeleteSubscriber``).

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.SubscribersDeletedEvent`.
"""

subscriber_limit_reached = _signals.signal("oa-recall.subscriber-limit-reached")
"""An Official Account reached its subscriber limit
(``OfficialAccount.CallbackAfterOfficialAccountFull``).

:param sender: the Flask app.
:param event: a :class:`~flask_oa_recall.SubscriberLimitReachedEvent`.
"""

callback_received = _signals.signal("oa-recall.callback-received")
"""A callback of any command passed verification. Sent for every accepted request, redeliveries
included, before :data:`messages_recalled` and the typed events' signals.

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
"""A receiver of :data:`callback_received`, :data:`messages_recalled` or a typed event's signal
(:data:`message_sent`...) raised. The failure is kept and ``flask oa-recall replay`` runs that
receiver again.

:param sender: the Flask app.
:param receiver: the receiver's dotted name.
:param signal_name: the signal's name as exported, e.g. ``"messages_recalled"``,
    ``"message_sent"`` or ``"callback_received"``.
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

store_forgot = _signals.signal("oa-recall.store-forgot")
"""The delivery store forgot what it held (for instance Redis restarted without persistence):
failed and interrupted deliveries kept there are gone, unless ``OA_RECALL_JOURNAL`` kept them
on this host too. Sent once per process when it notices; alert on it.

:param sender: the Flask app.
:param store_url: the store's URL, without password.
:param detail: what was found, in a sentence.
:param journalled: how many unfinished deliveries this host's journal holds (``replay``
    brings back those the store lost), or ``None`` without a journal.
"""
