"""
One filter set's upstream subscription in a cluster: on one node (the lease
holder) a real subscription to the relays whose events also go to the
filter set's Redis stream; on every other node that wants the filter set, a
reader of that stream.

A L{ClusterSubscription} has the interface the gateway's shared
subscriptions use from a L{relaypool.upstream.subscription.Subscription}
(C{onEvent}, C{onEOSE}, C{close}) and is in one of these states:

    - I{deciding}: the lease was asked for, the answer has not come;
    - I{owner}: this node holds the lease: it subscribes upstream and adds
      each event to the stream;
    - I{follower}: another node holds it: this node reads the stream, first
      the events it holds (its stored answer, as the relays' stored events
      are a subscription's first part), then the new ones;
    - I{alone}: Redis is away: this node subscribes upstream for its own
      clients, as a single node does.

Nothing is lost when the state changes: a node that starts to subscribe
upstream after it followed the stream (it took the lease of a dead owner,
or lost Redis) asks the relays for what came since the newest event it
had, and syncs (NIP-77) its store with them from some time before, for the
events that came late with older timestamps; a node that starts to follow
reads the stream's stored events again.
Each event is delivered once: the subscription remembers the ids it
delivered lately (L{recentSize}).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter, limitEvents

if TYPE_CHECKING:
    from relaypool.cluster.node import ClusterNode

_log = Logger()

STATES = ("deciding", "owner", "follower", "alone", "closed")


class ClusterSubscription:
    """
    A filter set's subscription on one cluster node (see the module
    docstring).

    @ivar state: one of L{STATES}.
    @ivar eosed: whether the stored part was delivered.
    @ivar newest: the newest C{created_at} delivered, or L{None}.
    """

    def __init__(
        self, node: ClusterNode, name: str, filters: tuple[Filter, ...], recentSize: int
    ) -> None:
        self._node = node
        self.name = name
        self.filters = filters
        self.recentSize = recentSize
        self.state = "deciding"
        self.eosed = False
        self.newest: int | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._eventCallbacks: list[Callable[[Event, str], None]] = []
        self._eoseCallbacks: list[Callable[[], None]] = []
        self._upstream: Any = None
        # Bumped by every change of state: an answer from Redis for an
        # earlier state is dropped.
        self._generation = 0

    # --- what the gateway uses ------------------------------------------------

    def onEvent(self, callback: Callable[[Event, str], None]) -> None:
        """
        Call C{callback(event, source)} for each event, once per event:
        C{source} is a relay's URL, or C{cluster:<node id>} for an event
        read from the stream.
        """
        self._eventCallbacks.append(callback)

    def onEOSE(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback()} once the stored part was delivered (at once if
        it was).
        """
        if self.eosed:
            callback()
        else:
            self._eoseCallbacks.append(callback)

    def close(self) -> None:
        """
        Stop: close the upstream subscription, stop reading the stream, let
        go of the lease. Idempotent.
        """
        self._input("close")

    # --- changes of state, made by the node -------------------------------------

    def becomeOwner(self) -> None:
        """
        This node took the lease: subscribe upstream (unless already), from
        the newest event delivered if some were.
        """
        self._input("owned")

    def becomeFollower(self) -> None:
        """
        Another node holds the lease: read the stream's stored events, then
        follow it; an upstream subscription this node had closes once the
        stream is followed.
        """
        self._input("notOwned")

    def goAlone(self) -> None:
        """
        Redis is away: subscribe upstream for this node's clients.
        """
        self._input("redisLost")

    def _input(self, name: str) -> None:
        """
        Take one input: move to the state L{_TRANSITIONS} gives and run its
        outputs in order; an input the state already reflects changes
        nothing.
        """
        if self.state == "closed" or (self.state, name) in _UNCHANGED:
            return
        state, outputs = _TRANSITIONS[self.state, name]
        self.state = state
        self._generation += 1
        for output in outputs:
            output(self)

    # --- events -------------------------------------------------------------------

    def fromStream(self, event: Event, publisher: str) -> bool:
        """
        An event read from the stream, added by the node C{publisher}.

        @return: whether it was delivered (it was new, and this node
            follows the stream).
        """
        return self.state == "follower" and self._emit(event, "cluster:" + publisher)

    def _fromUpstream(self, event: Event, url: str) -> None:
        if self._emit(event, url) and self.state == "owner":
            self._node._publish(self.name, event)

    def _emit(self, event: Event, source: str) -> bool:
        """
        Deliver an event not delivered lately.

        @return: whether it was delivered.
        """
        if event.id in self._recent:
            return False
        self._recent[event.id] = None
        if len(self._recent) > self.recentSize:
            self._recent.popitem(last=False)
        if self.newest is None or event.createdAt > self.newest:
            self.newest = event.createdAt
        for callback in self._eventCallbacks:
            callback(event, source)
        return True

    def _eose(self) -> None:
        if self.eosed:
            return
        self.eosed = True
        callbacks, self._eoseCallbacks = self._eoseCallbacks, []
        for callback in callbacks:
            callback()

    # --- helpers --------------------------------------------------------------------

    def _readHistory(self) -> None:
        self._node._history(self.name).addCallbacks(
            self._historyRead, self._historyFailed, callbackArgs=(self._generation,)
        )

    def _unfollow(self) -> None:
        self._node._unfollow(self)

    def _forget(self) -> None:
        self._node._forget(self)

    def _historyRead(self, stored: tuple[list[Event], str], generation: int) -> None:
        if generation != self._generation:
            return
        events, lastId = stored
        if not self.eosed:
            events = limitEvents(self.filters, events)
        for event in reversed(events):
            self._emit(event, "cluster:history")
        self._eose()
        self._node._follow(self, lastId)
        self._closeUpstream()

    def _historyFailed(self, failure: Any) -> None:
        # Redis went away meanwhile: the node makes every subscription
        # alone when it learns it.
        _log.debug("reading a cluster stream failed: {f}", f=failure.getErrorMessage())

    def _openUpstream(self) -> None:
        if self._upstream is not None:
            return
        filters = self.filters
        if self.newest is not None:
            # Catch up on what came while this node did not subscribe, and
            # sync what came late, with older timestamps.
            since = self.newest
            filters = tuple(f.withSince(max(f.since or 0, since)) for f in filters)
            self._node._backfill(self.filters, since)
        upstream = self._node._subscribeUpstream(filters)
        self._upstream = upstream
        upstream.onEvent(self._fromUpstream)
        upstream.onEOSE(self._eose)

    def _closeUpstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close()


# Per (state, input): the next state and the outputs run in order. Inputs:
# "owned" (this node holds the lease), "notOwned" (another node does),
# "redisLost", "close". A closed subscription takes no input.
_TRANSITIONS: dict[tuple[str, str], tuple[str, tuple[Callable[[ClusterSubscription], None], ...]]] = {
    ("deciding", "owned"): ("owner", (ClusterSubscription._openUpstream,)),
    ("follower", "owned"): ("owner", (ClusterSubscription._unfollow, ClusterSubscription._openUpstream)),
    ("alone", "owned"): ("owner", ()),
    ("deciding", "notOwned"): ("follower", (ClusterSubscription._readHistory,)),
    ("owner", "notOwned"): ("follower", (ClusterSubscription._readHistory,)),
    ("alone", "notOwned"): ("follower", (ClusterSubscription._readHistory,)),
    ("deciding", "redisLost"): ("alone", (ClusterSubscription._openUpstream,)),
    ("follower", "redisLost"): ("alone", (ClusterSubscription._unfollow, ClusterSubscription._openUpstream)),
    ("owner", "redisLost"): ("alone", ()),
    **{
        (state, "close"): ("closed", (ClusterSubscription._closeUpstream, ClusterSubscription._forget))
        for state in ("deciding", "owner", "follower", "alone")
    },
}
_UNCHANGED = frozenset({("owner", "owned"), ("follower", "notOwned"), ("alone", "redisLost")})


__all__ = ["STATES", "ClusterSubscription"]
