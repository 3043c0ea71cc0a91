"""
The cluster's shared, durable outbox: an L{IOutbox} on Redis Streams, for
the L{relaypool.store.outbox.OutboxPublisher} of every node.

Each relay has a stream (C{<prefix>:outbox:<name>}, the name from its URL)
with one consumer group, C{publishers}, whose consumers are the nodes. An
accepted event is added to the stream of each relay it goes to, and in the
same script read by the adding node's consumer: the entry is pending for
that node, which publishes it at once (the C{OK} to the client waits for
the relays as on a single node). A relay that accepts the event, or refuses
it for good, settles its entry: acknowledged and deleted. A relay that
does not keeps it pending; its node retries it with the publisher's backoff
and claims it again on each pass (C{XCLAIM}), so it stays the node's.

A node that dies leaves its entries pending. Each pass of every node claims
the entries idle longer than C{claimTime} (C{XAUTOCLAIM}) and publishes
them: nothing a dead node accepted is lost, and a live node's entries are
never taken (their idle time is reset every pass, far more often than
C{claimTime}).

While Redis is away, events go to the node's own outbox (its SQLite store,
as on a single node) and are published from there: the outbox a node
reads is both.

The invariant the adding script keeps: every entry of a stream is read by
a consumer in the script that added it, so the group has no undelivered
entry and each C{XREADGROUP ... >} there reads the entry just added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from relaypool.cluster.link import RedisLink
from relaypool.errors import InvalidEvent, QueueFull, RedisUnavailable
from relaypool.interfaces import IOutbox
from relaypool.nostr.event import Event
from relaypool.store.sqlite import OutboxEntry, RelayDelivery

GROUP = "publishers"
DEFAULT_CLAIM_TIME = 60.0
CLAIM_COUNT = 100

# KEYS: the relays' streams; ARGV: the group, the consumer (node id), the
# bound of each stream, the event's JSON. Answers the new entries' ids, or
# an error naming the full stream.
_ENQUEUE = """
for _, key in ipairs(KEYS) do
    if redis.call('XLEN', key) >= tonumber(ARGV[3]) then
        return redis.error_reply('FULL ' .. key)
    end
end
local ids = {}
for i, key in ipairs(KEYS) do
    pcall(redis.call, 'XGROUP', 'CREATE', key, ARGV[1], '$', 'MKSTREAM')
    ids[i] = redis.call('XADD', key, '*', 'e', ARGV[4])
    redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', key, '>')
end
return ids
"""


@dataclass(slots=True)
class _Held:
    """
    An event whose entries this node holds: per relay URL, its entry id in
    that relay's stream (L{None} once settled) and what the relay did.
    """

    event: Event
    enqueuedAt: float
    entries: dict[str, str | None] = field(default_factory=dict)
    deliveries: dict[str, RelayDelivery] = field(default_factory=dict)

    def entry(self) -> OutboxEntry:
        return OutboxEntry(self.event, self.enqueuedAt, dict(self.deliveries))


def _enqueuedAt(entryId: str) -> float:
    return int(entryId.split("-", 1)[0]) / 1000.0


@implementer(IOutbox)
class RedisOutbox:
    """
    The shared outbox (see the module docstring).
    """

    def __init__(
        self,
        link: RedisLink,
        nodeId: str,
        relayURLs: Callable[[], Iterable[str]],
        local: IOutbox,
        clock: IReactorTime,
        maxEvents: int = 10_000,
        claimTime: float = DEFAULT_CLAIM_TIME,
        prefix: str = "relaypool",
    ) -> None:
        """
        @param relayURLs: the URLs of the relays whose streams each pass
            claims stale entries from (the pool's relays).
        @param local: the node's own outbox, used while Redis is away.
        @param maxEvents: the most entries in one relay's stream; past it,
            L{enqueue} fails with L{QueueFull}.
        @param claimTime: seconds an entry is idle (its node died, or lost
            Redis) before another node's pass claims it; longer than the
            pool's publish timeout, so that no publish in flight is taken.
        """
        self._link = link
        self.nodeId = nodeId
        self._relayURLs = relayURLs
        self._local = local
        self._clock = clock
        self.maxEvents = maxEvents
        self.claimTime = claimTime
        self._prefix = prefix
        self._held: dict[str, _Held] = {}
        self._inLocal: set[str] = set()

    def streamKey(self, url: str) -> str:
        """
        @return: the Redis key of a relay's outbox stream.
        """
        return f"{self._prefix}:outbox:{hashlib.sha256(url.encode()).hexdigest()[:32]}"

    # --- IOutbox ---------------------------------------------------------------

    def enqueue(self, event: Event, relayURLs: Sequence[str]) -> Deferred[None]:
        """
        Add C{event} to the stream of each of C{relayURLs}, held by this
        node; while Redis is away, to the node's own outbox.

        @return: a Deferred firing once added, failing with L{QueueFull} if
            a relay's stream holds C{maxEvents} entries.
        """
        urls = list(dict.fromkeys(relayURLs))
        if not urls:
            return succeed(None)
        if not self._link.up:
            return self._enqueueLocally(event, urls)
        d = self._link.command(
            "EVAL",
            _ENQUEUE,
            len(urls),
            *[self.streamKey(url) for url in urls],
            GROUP,
            self.nodeId,
            self.maxEvents,
            event.toJSON(),
        )

        def added(ids: list[str]) -> None:
            held = self._held.setdefault(event.id, _Held(event, _enqueuedAt(ids[0])))
            for url, entryId in zip(urls, ids, strict=True):
                held.entries[url] = entryId
                held.deliveries[url] = RelayDelivery(False, 0, "", None)

        def failed(failure: Failure) -> Any:
            if isinstance(failure.value, RedisUnavailable):
                return self._enqueueLocally(event, urls)
            message = failure.getErrorMessage()
            if "FULL " in message:
                raise QueueFull(
                    f"the outbox holds {self.maxEvents} events for a relay already"
                ) from None
            return failure

        return d.addCallbacks(added, failed)

    def recordResult(
        self, eventId: str, relayURL: str, accepted: bool, message: str, refused: bool = False
    ) -> Deferred[None]:
        """
        Record a relay's answer: a relay that accepted the event or refused
        it for good settles its entry, which leaves the stream.
        """
        if eventId in self._inLocal:
            recorded: Deferred[None] = self._local.recordResult(  # type: ignore[no-untyped-call]
                eventId, relayURL, accepted, message, refused=refused
            )
            return recorded
        held = self._held.get(eventId)
        if held is None or relayURL not in held.deliveries:
            return succeed(None)
        before = held.deliveries[relayURL]
        held.deliveries[relayURL] = RelayDelivery(
            accepted, before.attempts + 1, message, self._clock.seconds(), refused
        )
        if not (accepted or refused):
            return succeed(None)
        entryId = held.entries[relayURL]
        held.entries[relayURL] = None
        if all(entry is None for entry in held.entries.values()):
            del self._held[eventId]
        if entryId is None:
            return succeed(None)
        return self._settle(relayURL, [entryId])

    def pending(self) -> Deferred[list[OutboxEntry]]:
        """
        The events this node holds: its own (claimed again, so no other
        node takes them), the entries of dead nodes it claims now, and those
        in its own outbox.
        """
        work: list[Deferred[Any]] = [self._local.pending()]  # type: ignore[no-untyped-call]
        if self._link.up:
            work.append(self._keepOwn())
            work += [self._claimStale(url) for url in sorted(set(self._relayURLs()))]

        def gathered(results: list[Any]) -> list[OutboxEntry]:
            local: list[OutboxEntry] = results[0]
            self._inLocal = {entry.event.id for entry in local}
            entries = local + [held.entry() for held in self._held.values()]
            return sorted(entries, key=lambda entry: entry.enqueuedAt)

        return gatherResults(work, consumeErrors=True).addCallback(gathered)

    def discard(self, eventId: str) -> Deferred[None]:
        """
        Remove an event: from the node's own outbox, or its entries from
        the streams.
        """
        if eventId in self._inLocal:
            self._inLocal.discard(eventId)
            discarded: Deferred[None] = self._local.discard(eventId)  # type: ignore[no-untyped-call]
            return discarded
        held = self._held.pop(eventId, None)
        if held is None:
            return succeed(None)
        work = [
            self._settle(url, [entryId]) for url, entryId in held.entries.items() if entryId
        ]
        return gatherResults(work, consumeErrors=True).addCallback(lambda _: None)

    # --- helpers ------------------------------------------------------------------

    def _enqueueLocally(self, event: Event, urls: list[str]) -> Deferred[None]:
        self._inLocal.add(event.id)
        enqueued: Deferred[None] = self._local.enqueue(event, urls)  # type: ignore[no-untyped-call]
        return enqueued

    def _settle(self, url: str, entryIds: list[str]) -> Deferred[None]:
        key = self.streamKey(url)
        # Both go out at once: one connection runs them in order. Without
        # Redis the entry stays pending: it is claimed and published again,
        # and the relay answers duplicate.
        acked = self._link.command("XACK", key, GROUP, *entryIds)
        deleted = self._link.command("XDEL", key, *entryIds)
        return DeferredList([acked, deleted], consumeErrors=True).addCallback(lambda _: None)

    def _keepOwn(self) -> Deferred[Any]:
        """
        Reset the idle time of the entries this node holds.
        """
        byRelay: dict[str, list[str]] = {}
        for held in self._held.values():
            for url, entryId in held.entries.items():
                if entryId is not None:
                    byRelay.setdefault(url, []).append(entryId)
        work = [
            self._link.command("XCLAIM", self.streamKey(url), GROUP, self.nodeId, 0, *ids, "JUSTID")
            for url, ids in sorted(byRelay.items())
        ]
        return gatherResults(work, consumeErrors=True).addErrback(lambda _: None)

    def _claimStale(self, url: str) -> Deferred[None]:
        """
        Take the entries of one relay's stream idle longer than
        C{claimTime}: their node died or lost Redis.
        """
        d = self._link.command(
            "XAUTOCLAIM",
            self.streamKey(url),
            GROUP,
            self.nodeId,
            int(self.claimTime * 1000),
            "0-0",
            "COUNT",
            CLAIM_COUNT,
        )

        def claimed(answer: list[Any]) -> None:
            for entryId, fields in answer[1] or []:
                self._adopt(url, entryId, fields)

        def failed(failure: Failure) -> None:
            # NOGROUP: nothing was ever added for this relay.
            unavailable = isinstance(failure.value, RedisUnavailable)
            if not unavailable and "NOGROUP" not in failure.getErrorMessage():
                failure.raiseException()

        return d.addCallbacks(claimed, failed)

    def _adopt(self, url: str, entryId: str, fields: list[Any]) -> None:
        raw = dict(zip(fields[::2], fields[1::2], strict=True)).get("e")
        try:
            if not isinstance(raw, str):
                raise InvalidEvent("invalid: no event in the entry")
            event = Event.fromJSON(raw)
        except InvalidEvent:
            # Not an event: drop it, or it would be claimed forever.
            self._settle(url, [entryId])
            return
        held = self._held.setdefault(event.id, _Held(event, _enqueuedAt(entryId)))
        held.entries[url] = entryId
        held.deliveries.setdefault(url, RelayDelivery(False, 0, "", None))


__all__ = ["DEFAULT_CLAIM_TIME", "GROUP", "RedisOutbox"]
