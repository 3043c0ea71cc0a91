"""
NIP-77 toward downstream clients: answer C{NEG-OPEN}, C{NEG-MSG} and
C{NEG-CLOSE} from the event store, as the responder of a negentropy sync.

Each sync holds the sealed records of its filter (at most C{negMaxRecords})
and a L{NegentropyResponder}; a connection holds at most C{negMaxSyncs} of
them, each closed after C{negIdleTimeout} seconds without a C{NEG-MSG}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool.gateway.limits import GatewayLimits
from relaypool.gateway.session import Replies, Session
from relaypool.interfaces import IEventStore
from relaypool.nostr.messages import ClientNegOpen, NegMessage, RelayNegErr
from relaypool.nostr.negentropy import NegentropyError, NegentropyResponder, NegentropyStorage

_log = Logger()


@dataclass(eq=False, slots=True)
class NegentropySync:
    """
    One client's sync: waiting for its records while C{responder} is
    L{None}, then answering its messages.
    """

    subscriptionId: str
    responder: NegentropyResponder | None = None
    timeout: IDelayedCall | None = field(default=None, repr=False)


class NegentropyServer:
    """
    The responder side of NIP-77 for every downstream connection.

    @ivar syncsOpened: C{NEG-OPEN}s answered with a C{NEG-MSG}.
    @ivar syncsRefused: syncs ended with a C{NEG-ERR}.
    """

    def __init__(
        self,
        replies: Replies,
        store: IEventStore | None,
        limits: GatewayLimits,
        reactor: IReactorTime,
    ) -> None:
        self._replies = replies
        self._store = store
        self.limits = limits
        self._reactor = reactor
        self.syncsOpened = 0
        self.syncsRefused = 0

    def refuse(
        self, session: Session, subscriptionId: str, reason: str, maxRecords: int | None = None
    ) -> None:
        """
        End the sync C{subscriptionId} (if open) with C{NEG-ERR}.
        """
        self._forget(session, subscriptionId)
        self.syncsRefused += 1
        self._replies.send(session, RelayNegErr(subscriptionId, reason, maxRecords).toJSON())

    def open(self, session: Session, message: ClientNegOpen) -> None:
        """
        Start a sync: read the records matching its filter from the store,
        then answer its initial message. A sync already open with the same
        id is closed first.
        """
        subscriptionId = message.subscriptionId
        self._forget(session, subscriptionId)
        limits = self.limits
        store = self._store
        if store is None:
            self.refuse(session, subscriptionId, "blocked: this relay keeps no events to sync with")
            return
        if len(session.syncs) >= limits.negMaxSyncs:
            self.refuse(
                session,
                subscriptionId,
                f"blocked: at most {limits.negMaxSyncs} negentropy syncs open per connection",
            )
            return
        sync = NegentropySync(subscriptionId)
        session.syncs[subscriptionId] = sync
        maxRecords = limits.negMaxRecords

        def loaded(records: list[tuple[int, str]]) -> None:
            if session.syncs.get(subscriptionId) is not sync:
                return
            if len(records) > maxRecords:
                self.refuse(
                    session,
                    subscriptionId,
                    f"blocked: this query matches more than {maxRecords} events; narrow the filter",
                    maxRecords,
                )
                return
            storage = NegentropyStorage(
                (createdAt, bytes.fromhex(eventId)) for createdAt, eventId in records
            )
            storage.seal()
            sync.responder = NegentropyResponder(storage, limits.negFrameSize)
            self.syncsOpened += 1
            self._answer(session, sync, message.message)

        def failed(failure: Failure) -> None:
            _log.failure("reading the records of a negentropy sync failed", failure)
            if session.syncs.get(subscriptionId) is sync:
                self.refuse(session, subscriptionId, "error: could not read the stored events")

        maybeDeferred(store.syncRecords, [message.filter], maxRecords).addCallback(
            loaded
        ).addErrback(failed)

    def message(self, session: Session, message: NegMessage) -> None:
        """
        Answer a client's next message of an open sync.
        """
        sync = session.syncs.get(message.subscriptionId)
        if sync is None:
            self.refuse(
                session, message.subscriptionId, "closed: no negentropy sync is open with this id"
            )
        elif sync.responder is None:
            self.refuse(
                session,
                message.subscriptionId,
                "invalid: NEG-MSG sent before the answer to NEG-OPEN",
            )
        else:
            self._answer(session, sync, message.message)

    def close(self, session: Session, subscriptionId: str) -> None:
        """
        The client ended a sync (C{NEG-CLOSE}): forget it, silently.
        """
        self._forget(session, subscriptionId)

    def closeAll(self, session: Session) -> None:
        """
        Forget every sync of a connection that closed.
        """
        for subscriptionId in tuple(session.syncs):
            self._forget(session, subscriptionId)

    def _answer(self, session: Session, sync: NegentropySync, message: bytes) -> None:
        assert sync.responder is not None, "answered once the records are loaded"
        try:
            reply = sync.responder.reconcile(message)
        except NegentropyError as e:
            self.refuse(session, sync.subscriptionId, str(e))
            return
        self._replies.send(session, NegMessage(sync.subscriptionId, reply).toJSON())
        if sync.timeout is not None and sync.timeout.active():
            sync.timeout.reset(self.limits.negIdleTimeout)
        else:
            sync.timeout = self._reactor.callLater(
                self.limits.negIdleTimeout, self._expired, session, sync
            )

    def _expired(self, session: Session, sync: NegentropySync) -> None:
        sync.timeout = None
        if session.syncs.get(sync.subscriptionId) is sync:
            self.refuse(
                session,
                sync.subscriptionId,
                f"closed: no NEG-MSG for {self.limits.negIdleTimeout:g} seconds",
            )

    def _forget(self, session: Session, subscriptionId: str) -> None:
        sync = session.syncs.pop(subscriptionId, None)
        if sync is not None and sync.timeout is not None and sync.timeout.active():
            sync.timeout.cancel()


__all__ = ["NegentropyServer", "NegentropySync"]
