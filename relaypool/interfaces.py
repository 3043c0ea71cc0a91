"""
zope.interface definitions shared by relaypool's layers.

Each layer implements the interfaces here with C{@implementer} classes, and
depends on the interfaces of the layers below it, not on their classes, so a
user can plug in their own name service, request protocol or event store.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface

# zope Interface methods have no "self"; mypy-zope understands this.
# ruff: noqa: N805


class INameSubscription(Interface):
    """
    A handle on a name-service subscription.
    """

    def cancel() -> None:
        """
        Stop calling the subscription's callback. Idempotent.
        """


class INameService(Interface):
    """
    Resolves C{host:port} names into sets of addresses and tells subscribers
    when a name's address set changes.
    """

    def subscribe(name, callback):  # type: ignore[no-untyped-def]
        """
        Follow C{name}'s address set.

        @param name: C{"host:port"}; an IPv6 host is written C{"[::1]:7777"}.
        @type name: L{str}
        @param callback: called with a C{frozenset} of
            L{relaypool.transport.names.Address} at once (with the current set, maybe
            empty while the first lookup is in flight) and again each time the
            set changes, never twice in a row with the same set.
        @return: an L{INameSubscription}.
        @raise relaypool.errors.InvalidName: if C{name} is not C{host:port}.
        """


class IRequestProtocol(Interface):
    """
    A connected protocol that can carry request/reply exchanges; what a
    L{relaypool.transport.pool.Pool} needs from the protocols its multiplexer holds.

    The multiplexer also uses it to drain a connection whose address went
    away: it waits on L{whenIdle} for up to its drain timeout, then calls
    L{failPending} and closes the connection.
    """

    def request(payload):  # type: ignore[no-untyped-def]
        """
        Send C{payload} and return a Deferred that fires with the reply, or
        fails with L{relaypool.errors.ConnectionLost} if the connection closes
        first.
        """

    def inFlight():  # type: ignore[no-untyped-def]
        """
        @return: how many requests sent on this connection still wait for a
            reply (an L{int}).
        """

    def whenIdle():  # type: ignore[no-untyped-def]
        """
        @return: a Deferred firing with L{None} as soon as no request waits
            for a reply (at once if none does). Cancelling it only forgets
            that Deferred.
        """

    def failPending(reason):  # type: ignore[no-untyped-def]
        """
        Fail every request still waiting for a reply with C{reason} (an
        exception instance, e.g. L{relaypool.errors.ConnectionDrained}).
        """


class IEventStore(Interface):
    """
    Durable storage of Nostr events with NIP-01 query semantics.

    Every method returns a Deferred and never blocks the reactor.
    """

    def save(event):  # type: ignore[no-untyped-def]
        """
        Store a verified L{relaypool.nostr.Event} under NIP-01 (replaceable,
        addressable, ephemeral), NIP-09 (deletion) and NIP-40 (expiration)
        semantics.

        @return: Deferred firing with C{True} if the event was stored, C{False}
            if it was a duplicate, ephemeral, expired, deleted or superseded.
        """

    def saveMany(events):  # type: ignore[no-untyped-def]
        """
        Store each of C{events} as L{save} does, in order, in one call: what
        a caller with many events at once uses, for less work per event.

        @return: Deferred firing with a list of, for each event, what
            L{save} would have fired with; if the call fails, it fails as
            a whole.
        """

    def query(filters):  # type: ignore[no-untyped-def]
        """
        @param filters: a sequence of L{relaypool.nostr.Filter}, OR-ed.
        @return: Deferred firing with a list of matching events, newest first
            (ties by lowest id), each filter's C{limit} applied to its own
            matches.
        """

    def queryIds(filters):  # type: ignore[no-untyped-def]
        """
        The ids of what L{query} would return, in the same order, so that a
        large answer can be read in pages with L{fetch}.

        @return: Deferred firing with a list of event ids.
        """

    def syncRecords(filters, maxRecords):  # type: ignore[no-untyped-def]
        """
        The records a set reconciliation (NIP-77 negentropy) works on: the
        C{(created_at, id)} of the stored events matching C{filters}, each
        filter's C{limit} applying to its own matches, in no particular
        order.

        @param maxRecords: how many records the caller accepts; at most one
            more is returned, so that it can tell the matches exceed it.
        @return: Deferred firing with a list of C{(created_at, id)} pairs,
            ids in hex.
        """

    def fetch(eventIds):  # type: ignore[no-untyped-def]
        """
        @param eventIds: a sequence of event ids.
        @return: Deferred firing with the events among C{eventIds} that are
            still stored and not expired, in the order of C{eventIds}.
        """

    def count(filters):  # type: ignore[no-untyped-def]
        """
        @return: Deferred firing with the number of distinct stored events
            matching any of C{filters}.
        """

    def delete(eventIds):  # type: ignore[no-untyped-def]
        """
        Remove the events with these ids, whatever their kind (an operator's
        removal, not a NIP-09 deletion: they may be stored again later).

        @param eventIds: a sequence of event ids.
        @return: Deferred firing with how many were removed.
        """

    def writeProblem():  # type: ignore[no-untyped-def]
        """
        Whether the store can write now, cheaply enough to be asked every
        second (no query).

        @return: why it cannot (one line a person can act on), or L{None}
            if it can.
        """

    def close():  # type: ignore[no-untyped-def]
        """
        Finish pending writes and close the database.

        @return: a Deferred firing when closed.
        """


class IOutbox(Interface):
    """
    The durable record of events accepted for publication upstream and of
    each relay's answer, so that a restart resumes what a crash interrupted.
    """

    def enqueue(event, relayURLs):  # type: ignore[no-untyped-def]
        """
        Record C{event} as to be published to every URL in C{relayURLs}.

        @return: Deferred firing when the row is durable (committed).
        """

    def recordResult(eventId, relayURL, accepted, message, refused=False):  # type: ignore[no-untyped-def]
        """
        Record a relay's C{OK} (or a failure to deliver, with C{accepted}
        false). With C{refused}, the relay refused the event for good (a
        final refusal): it is settled and not retried. An event whose relays
        all accepted or refused it for good leaves the outbox.

        @return: Deferred firing when recorded.
        """

    def pending():  # type: ignore[no-untyped-def]
        """
        @return: Deferred firing with a list of L{relaypool.store.sqlite.OutboxEntry}
            not yet settled by every relay, oldest first.
        """

    def discard(eventId):  # type: ignore[no-untyped-def]
        """
        Remove an event from the outbox (it aged out or is no longer wanted).

        @return: Deferred firing when removed.
        """


__all__ = [
    "IClusterNode",
    "IEventStore",
    "INameService",
    "INameSubscription",
    "IOutbox",
    "IRequestProtocol",
    "IUpstreamSubscriptions",
]


class IRelayPool(Interface):
    """
    Many upstream Nostr relays behind one API: what the gateway needs of
    L{relaypool.upstream.relaypool.RelayPool}.
    """

    def subscribe(
        filters: Any, eoseTimeout: Any = None, closeOnEOSE: bool = False, relays: Any = None
    ) -> Any:
        """
        Subscribe to C{filters} on every read relay (or on C{relays}).

        @return: a L{relaypool.upstream.subscription.Subscription}, whose
            events are unique and verified and whose EOSE fires once.
        @raise relaypool.errors.PoolClosed: if the pool stopped.
        """

    def query(filters: Any, timeout: float | None = None) -> Any:
        """
        @return: a Deferred firing with the unique stored events of every
            relay matching C{filters}, newest first, limits applied.
        """

    def count(filters: Any, timeout: float | None = None, fetch: bool = True) -> Any:
        """
        @return: a Deferred firing with a
            L{relaypool.upstream.results.CountResult} from the relays that
            can count; with no such relay, from the fetched events if
            C{fetch}, else failing with L{relaypool.errors.CountUnavailable}.
        """

    def publish(
        event: Any,
        quorum: int = 1,
        timeout: float | None = None,
        relays: Any = None,
        onAnswer: Any = None,
    ) -> Any:
        """
        Send C{event} to every write relay (or C{relays}).

        @return: a Deferred firing with a
            L{relaypool.upstream.results.PublishResult} once C{quorum} relays
            accepted, or failing with L{relaypool.errors.PublishFailed}.
        """

    def publishTargets(event: Any) -> Any:
        """
        @return: a Deferred firing with the URLs of the relays a publish of
            C{event} to every relay goes to.
        """

    def relayURLs(role: str | None = None) -> Any:
        """
        @return: the URL of every relay in the pool, or of those with
            C{role} (C{"read"}, C{"write"}, C{"discovery"}, C{"outbox"}).
        """

    def addRelay(url: str, read: bool = True, write: bool = True, discovery: bool = False) -> None:
        """
        Add a relay with its roles and start connecting to it.

        @raise relaypool.errors.InvalidRelayURL: for a malformed URL.
        @raise relaypool.errors.RelayRefused: if the admit policy refuses it.
        @raise relaypool.errors.TooManyRelays: if the pool is full.
        """

    def removeRelay(url: str) -> Any:
        """
        Remove a relay and close its connections.

        @return: a Deferred firing with C{True} once they closed, C{False}
            if the URL is not in the pool.
        """

    def activeRelayURLs() -> Any:
        """
        @return: the URL of every relay with an open connection.
        """

    def stats() -> Any:
        """
        @return: per relay URL, its L{relaypool.upstream.results.RelayStats}.
        """

    def totals() -> Any:
        """
        @return: the pool-wide L{relaypool.upstream.results.PoolTotals}.
        """


class IUpstreamSubscriptions(Interface):
    """
    Where the gateway's shared subscriptions get their upstream
    subscriptions and the stored events a joining client needs: the
    L{IRelayPool}, or a cluster node (L{IClusterNode}).
    """

    def subscribe(filters: Any) -> Any:
        """
        @return: an upstream subscription of C{filters}: an object with
            C{onEvent(callback(event, source))}, C{onEOSE(callback())} and
            C{close()}, whose events are unique and verified and whose EOSE
            fires once.
        @raise relaypool.errors.PoolClosed: if the pool stopped.
        """

    def query(filters: Any) -> Any:
        """
        @return: a Deferred firing with the stored events matching
            C{filters}, newest first, limits applied.
        """


class IClusterNode(IUpstreamSubscriptions):
    """
    One node of several on a Redis server: what the gateway needs of
    L{relaypool.cluster.node.ClusterNode}.
    """

    def status() -> Any:
        """
        @return: a JSON-ready dict: this node, the nodes it sees, its
            leases and its traffic through Redis.
        """


class IPublisher(Interface):
    """
    Publishes accepted events upstream durably: what the gateway needs of
    L{relaypool.store.outbox.OutboxPublisher}.
    """

    def submit(event: Any) -> Any:
        """
        Record C{event} for every relay, then publish it.

        @return: a Deferred firing with the
            L{relaypool.upstream.results.PublishResult} (failing if the event
            could not be recorded).
        """

    def stats() -> Any:
        """
        @return: the publisher's L{relaypool.store.outbox.OutboxStats}.
        """
