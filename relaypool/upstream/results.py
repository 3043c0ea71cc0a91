"""
The values a L{relaypool.upstream.relaypool.RelayPool} hands out: raw messages,
publish and count outcomes, per-relay and pool-wide figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relaypool.nostr.messages import RelayMessage, isFinalRefusal


@dataclass(frozen=True, slots=True)
class PoolMessage:
    """
    A message from one relay, as L{RelayPool.recv} hands it out.
    """

    relayURL: str
    message: RelayMessage


@dataclass(slots=True)
class SyncResult:
    """
    The outcome of L{RelayPool.sync} with one relay.

    @ivar relayURL: the relay.
    @ivar method: C{"negentropy"} (NIP-77), C{"req"} (the relay does not
        speak NIP-77: a REQ over the filters, see C{fallback}) or C{"none"}
        (nothing could be done: see C{errors}).
    @ivar fallback: why a REQ was used instead of NIP-77, or L{None}.
    @ivar have: events the pool's store has and the relay lacks.
    @ivar need: events the relay has and the pool's store lacks.
    @ivar fetched: of those, the events received and stored.
    @ivar sent: events sent to the relay that it accepted (with C{direction}
        C{"up"} or C{"both"}).
    @ivar errors: what went wrong, one line each (a filter matching too
        many events, a refused event, a relay that did not answer).
    """

    relayURL: str
    method: str = "none"
    fallback: str | None = None
    have: int = 0
    need: int = 0
    fetched: int = 0
    sent: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """
    The outcome of L{RelayPool.publish}, per relay, as it stood when the
    publish fired (at the quorum, or when it became impossible or timed
    out). Answers arriving later are not in it: pass an C{onAnswer} hook to
    L{RelayPool.publish} to hear every relay's answer.

    @ivar accepted: relay URL to the message of its C{OK true}, or of its
        C{duplicate:} answer (C{OK true} or C{OK false}: the relay has the
        event), for every relay that accepted by then.
    @ivar rejected: relay URL to the reason it did not accept (its C{OK false}
        message, or C{"error: relaypool: ..."} when the event could not be
        sent to it).
    @ivar timedOut: relays that had not answered when the result was made.
    """

    eventId: str
    quorum: int
    accepted: Mapping[str, str]
    rejected: Mapping[str, str]
    timedOut: frozenset[str]

    @property
    def succeeded(self) -> bool:
        """
        Whether at least C{quorum} relays accepted.
        """
        return len(self.accepted) >= self.quorum

    def retryable(self) -> frozenset[str]:
        """
        @return: the relays that did not accept and might on a retry: those
            that timed out or refused for a temporary reason, not those that
            refused for good (see L{isFinalRefusal}).
        """
        temporary = (url for url, reason in self.rejected.items() if not isFinalRefusal(reason))
        return self.timedOut.union(temporary)

    def reasons(self) -> str:
        """
        @return: one line naming each relay that did not accept and why.
        """
        parts = [f"{url}: {reason}" for url, reason in sorted(self.rejected.items())]
        parts += [f"{url}: timed out" for url in sorted(self.timedOut)]
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class CountResult:
    """
    The outcome of L{RelayPool.count}.

    @ivar count: the largest count any relay gave (the union of relays can
        only be larger, so C{approximate} is set when several relays answered),
        or the number of unique events fetched when no relay supports COUNT.
    """

    count: int
    approximate: bool
    perRelay: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RelayStats:
    """
    One relay's figures, as L{RelayPool.stats} reports them.

    @ivar connections: the relay's open connections.
    @ivar name: the name in the relay's NIP-11 document, if it gave one.
    @ivar roles: the names of its roles (L{relaypool.upstream.roles}):
        C{"read"}, C{"write"}, C{"discovery"}, C{"outbox"}.
    """

    url: str
    state: str
    connectedSince: float | None
    reconnects: int
    eventsReceived: int
    eventsUnique: int
    eventsInvalid: int
    okAccepted: int
    okRejected: int
    latency: float | None
    healthScore: float
    outboundQueued: int
    outboundDropped: int
    waitingSubscriptions: int
    connections: int = 0
    name: str | None = None
    roles: tuple[str, ...] = ("read", "write")


@dataclass(frozen=True, slots=True)
class PoolTotals:
    """
    Figures for the whole pool.
    """

    relays: int
    activeRelays: int
    subscriptions: int
    eventsReceived: int
    eventsUnique: int
    eventsInvalid: int
    okAccepted: int
    okRejected: int
    inboundQueued: int
    outboundQueued: int
    outboundDropped: int
    recvDropped: int
    cachedIds: int
    paused: bool


__all__ = [
    "SyncResult",
    "CountResult",
    "PoolMessage",
    "PoolTotals",
    "PublishResult",
    "RelayStats",
]
