"""
NIP-77 sync of the pool's store with one relay: what L{RelayPool.sync}
runs for each relay.

For each filter the store's records are reconciled with the relay's by
negentropy on one of its connections; the events the store lacks are then
fetched with C{REQ}s by id (they reach the store, and every live
subscription they match, through the pool's normal inbound path), and the
events the relay lacks are sent to it with C{EVENT} when the direction says
so. A relay that does not speak NIP-77 (by its NIP-11 document, a
C{NOTICE} or C{NEG-ERR} answering the C{NEG-OPEN}, or no answer) gets
C{REQ}s over the filter instead, paged by C{until}, and the result says
so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from relaypool.errors import PublishFailed, RelayPoolError
from relaypool.interfaces import IEventStore
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter
from relaypool.nostr.negentropy import (
    MIN_FRAME_SIZE_LIMIT,
    NegentropyError,
    NegentropyInitiator,
    NegentropyStorage,
)
from relaypool.upstream.relay import Relay
from relaypool.upstream.results import SyncResult

if TYPE_CHECKING:
    from relaypool.upstream.relaypool import RelayPool

__all__ = ["DIRECTIONS", "RelaySync", "SyncSettings"]

DIRECTIONS = ("down", "up", "both")
"""C{down}: fetch what the store lacks; C{up}: send what the relay lacks;
C{both}."""

_MESSAGE_OVERHEAD = 200
"""Room for the framing around a hex message or a list of ids."""

_ID_JSON_SIZE = 67
"""An id in a JSON list: 64 hex digits, two quotes and a comma."""


_REFUSALS = (
    "blocked:",
    "closed:",
    "auth-required:",
    "rate-limited:",
    "restricted:",
    "error: relaypool:",
)
"""The reasons that end one sync of a relay that does speak NIP-77."""


class _Refused(RelayPoolError):
    """The relay ended (or never answered) a negentropy sync."""


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """
    The bounds of a pool's syncs.

    @ivar maxRecords: the most stored events one filter's sync may cover;
        a filter matching more is skipped, with an error in the result.
    @ivar frameSize: the largest negentropy message sent, in bytes before
        hex (lowered to fit the relay's NIP-11 C{max_message_length}).
    @ivar batchSize: ids per C{REQ} when fetching, events per round when
        sending.
    """

    maxRecords: int = 250_000
    frameSize: int = 60_000
    batchSize: int = 250

    def __post_init__(self) -> None:
        for name, value in (("maxRecords", self.maxRecords), ("batchSize", self.batchSize)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"sync {name} must be a positive integer, got {value!r}")
        if not isinstance(self.frameSize, int) or self.frameSize < MIN_FRAME_SIZE_LIMIT:
            raise ValueError(
                f"sync frameSize must be an integer of at least {MIN_FRAME_SIZE_LIMIT}, "
                f"got {self.frameSize!r}"
            )


class RelaySync:
    """
    One relay's sync over a list of filters, a L{NegentropyPeer} of its
    relay.

    @param subscriptionId: the C{NEG-OPEN} id (unique in the pool).
    @param timeout: seconds to wait for each answer of the relay.
    """

    def __init__(
        self,
        pool: RelayPool,
        relay: Relay,
        store: IEventStore,
        subscriptionId: str,
        direction: str,
        timeout: float,
        settings: SyncSettings,
        reactor: IReactorTime,
    ) -> None:
        self._pool = pool
        self._relay = relay
        self._store = store
        self._subscriptionId = subscriptionId
        self._direction = direction
        self._timeout = timeout
        self._settings = settings
        self._reactor = reactor
        self._answer: Deferred[bytes] | None = None
        self._expiry: IDelayedCall | None = None
        self.result = SyncResult(relay.url)

    # --- NegentropyPeer ----------------------------------------------------

    def negentropyMessage(self, message: bytes) -> None:
        self._settle().callback(message)

    def negentropyError(self, reason: str) -> None:
        self._settle().errback(_Refused(reason))

    def _settle(self) -> Deferred[bytes]:
        answer, self._answer = self._answer, None
        assert answer is not None, "the relay layer only reports syncs that wait"
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        return answer

    def _expect(self) -> Deferred[bytes]:
        self._answer = Deferred()
        self._expiry = self._reactor.callLater(self._timeout, self._expired)
        return self._answer

    def _expired(self) -> None:
        self._relay.closeNegentropy(self._subscriptionId)
        self._settle().errback(_Refused(f"timeout: no answer in {self._timeout:g} seconds"))

    # --- the sync -----------------------------------------------------------

    async def run(self, filters: Sequence[Filter]) -> SyncResult:
        """
        Sync every filter in turn; never fails (problems are in the
        result's C{errors}).
        """
        result = self.result
        if not self._relay.isConnected():
            result.errors.append("the relay is not connected")
            return result
        for filter in filters:
            # A filter's limit is for REQs, not for a reconciliation.
            filter = replace(filter, limit=None)
            try:
                await self._syncFilter(filter)
            except Exception as e:  # every failure goes in the result
                result.errors.append(f"{_describe(filter)}: {e}")
        return result

    async def _syncFilter(self, filter: Filter) -> None:
        maxRecords = self._settings.maxRecords
        records = await self._store.syncRecords([filter], maxRecords)  # type: ignore[no-untyped-call]
        if len(records) > maxRecords:
            self.result.errors.append(
                f"{_describe(filter)}: the store holds more than {maxRecords} matching events; "
                "narrow the filter or raise the sync's maxRecords"
            )
            return
        local = {eventId: createdAt for createdAt, eventId in records}
        if self._relay.supportsNegentropy() is not False:
            try:
                have, need = await self._reconcile(filter, local)
            except _Refused as e:
                if not self._unsupported(str(e)):
                    raise
                self._relay.negentropyRefused = str(e)
            else:
                self.result.method = "negentropy"
                await self._transfer(have, need)
                return
        self.result.method = "req"
        self.result.fallback = (
            f"the relay does not speak NIP-77 ({self._relay.negentropyRefused or 'NIP-11'})"
        )
        received = await self._fetchAll(filter)
        need = [eventId for eventId in received if eventId not in local]
        have = [eventId for eventId in local if eventId not in received]
        self.result.need += len(need)
        self.result.have += len(have)
        if self._direction != "up":
            await self._save(received[eventId] for eventId in need)
            self.result.fetched += len(need)
        if self._direction != "down":
            await self._send(have)

    @staticmethod
    def _unsupported(reason: str) -> bool:
        """
        Whether an ended sync says the relay does not speak NIP-77 at all
        (a C{NOTICE}, no answer, or a C{NEG-ERR} such as C{"error:
        negentropy disabled"}), rather than refusing this one sync by its
        rules or ending it.
        """
        return not reason.startswith(_REFUSALS)

    async def _reconcile(
        self, filter: Filter, local: dict[str, int]
    ) -> tuple[list[str], list[str]]:
        storage = NegentropyStorage((createdAt, bytes.fromhex(i)) for i, createdAt in local.items())
        storage.seal()
        initiator = NegentropyInitiator(storage, self._frameSize())
        have: list[str] = []
        need: list[str] = []
        relay = self._relay
        if not relay.openNegentropy(self._subscriptionId, filter, initiator.initiate(), self):
            raise _Refused("error: relaypool: the relay is not connected")
        try:
            while True:
                reply = await self._expect()
                try:
                    message, haveIds, needIds = initiator.reconcile(reply)
                except NegentropyError as e:
                    raise _Refused(f"error: relaypool: the relay's negentropy message: {e}") from e
                have += (i.hex() for i in haveIds)
                need += (i.hex() for i in needIds)
                if message is None:
                    return have, need
                relay.sendNegentropy(self._subscriptionId, message)
        finally:
            relay.closeNegentropy(self._subscriptionId)

    def _frameSize(self) -> int:
        frameSize = self._settings.frameSize
        limit = self._relay.limitation.maxMessageLength
        if isinstance(limit, int) and limit > 0:
            frameSize = min(frameSize, (limit - _MESSAGE_OVERHEAD) // 2)
        return max(frameSize, MIN_FRAME_SIZE_LIMIT)

    def _idsPerRequest(self) -> int:
        """
        How many ids one fetching C{REQ} asks for: C{batchSize}, fewer when
        the relay's NIP-11 C{max_message_length} needs it.
        """
        batch = self._settings.batchSize
        limit = self._relay.limitation.maxMessageLength
        if isinstance(limit, int) and limit > 0:
            batch = min(batch, (limit - _MESSAGE_OVERHEAD) // _ID_JSON_SIZE)
        return max(batch, 1)

    async def _transfer(self, have: list[str], need: list[str]) -> None:
        result = self.result
        result.need += len(need)
        result.have += len(have)
        if self._direction != "up" and need:
            batch = self._idsPerRequest()
            for start in range(0, len(need), batch):
                ids = need[start : start + batch]
                received = await self._fetch([Filter(ids=frozenset(ids))])
                await self._save(received.values())
                result.fetched += len(received)
        if self._direction != "down":
            await self._send(have)

    async def _fetchAll(self, filter: Filter) -> dict[str, Event]:
        """
        REQ everything matching C{filter} from the relay, page after page:
        relays cap what one REQ returns (newest first), so each next page
        asks C{until} the oldest C{created_at} seen, until a page brings no
        new event or C{maxRecords} are received.
        """
        received: dict[str, Event] = {}
        page = filter
        while len(received) <= self._settings.maxRecords:
            events = await self._fetch([page])
            new = {eventId: e for eventId, e in events.items() if eventId not in received}
            if not new:
                break
            received.update(new)
            page = replace(filter, until=min(e.createdAt for e in events.values()))
        return received

    async def _fetch(self, filters: list[Filter]) -> dict[str, Event]:
        """
        REQ C{filters} from the relay until EOSE.
        """
        subscription = self._pool.subscribe(
            filters, eoseTimeout=self._timeout, closeOnEOSE=True, relays=[self._relay.url]
        )
        received: dict[str, Event] = {}

        def collect(event: Event, url: str) -> None:
            received.setdefault(event.id, event)

        subscription.onEvent(collect)
        await subscription.whenEOSE()
        return received

    async def _save(self, events: Iterable[Event]) -> None:
        """
        Store fetched events (the pool stores new ones too, but this sync
        reports them stored only once they are).
        """
        store = self._store
        await gatherResults([store.save(e) for e in events])  # type: ignore[no-untyped-call]

    async def _send(self, eventIds: list[str]) -> None:
        batch = self._settings.batchSize
        refused: list[str] = []
        for start in range(0, len(eventIds), batch):
            events = await self._store.fetch(eventIds[start : start + batch])  # type: ignore[no-untyped-call]
            outcomes = await gatherResults(
                [
                    self._pool.publish(
                        event, relays=[self._relay.url], timeout=self._timeout
                    ).addCallbacks(lambda _: None, _refusal)
                    for event in events
                ]
            )
            refused += (reason for reason in outcomes if reason is not None)
            self.result.sent += sum(1 for reason in outcomes if reason is None)
        if refused:
            self.result.errors.append(f"{len(refused)} events were not accepted, e.g. {refused[0]}")


def _refusal(failure: Failure) -> str:
    failure.trap(PublishFailed)  # type: ignore[no-untyped-call]
    assert isinstance(failure.value, PublishFailed)
    result = failure.value.result
    reasons = list(result.rejected.values()) or ["no answer in time"]
    return str(reasons[0])


def _describe(filter: Filter) -> str:
    return f"filter {filter.toDict()}"
