"""
The pool's raw channel: client messages an application sends to every relay
as they are (L{PoolSender}), and the replies to them, queued for
L{RawChannel.recv}.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import orjson
from twisted.internet.defer import Deferred, fail, succeed

from relaypool.errors import PoolClosed
from relaypool.nostr.messages import ClientMessage
from relaypool.upstream.results import PoolMessage

__all__ = ["PoolSender", "RawChannel"]


class PoolSender:
    """
    A handle for sending raw client messages to every relay of a pool; any
    number of callers may hold one.
    """

    def __init__(self, broadcast: Callable[[bytes], int], channel: RawChannel) -> None:
        """
        @param broadcast: sends encoded bytes to every relay and says to how
            many.
        @param channel: the channel the replies come out of.
        """
        self._broadcast = broadcast
        self._channel = channel

    def broadcast(self, message: bytes | ClientMessage) -> int:
        """
        Queue C{message} to every relay (see
        L{relaypool.upstream.relay.Relay.send} for what happens when a relay
        is disconnected or its outbound queue is full).

        Replies to raw REQs and EVENTs sent this way come out of the pool's
        C{recv}.

        @return: how many relays took the message.
        """
        data = message if isinstance(message, bytes) else message.toJSON()
        self._channel.note(data)
        return self._broadcast(data)


def _remember(entries: OrderedDict[str, None], key: str, capacity: int) -> None:
    entries[key] = None
    entries.move_to_end(key)
    if len(entries) > capacity:
        entries.popitem(last=False)


class RawChannel:
    """
    The replies to raw messages, in a bounded queue.

    It remembers the subscription ids of raw C{REQ}s and C{COUNT}s and the
    ids of raw C{EVENT}s (at most C{capacity} of each, the oldest forgotten
    first), so that the pool routes their replies here. When the queue holds
    C{capacity} messages it asks the pool to pause reading from its relays
    (C{pressure(+1)}), and to resume (C{pressure(-1)}) once it drained to
    half; messages that may not pause the relays (NOTICEs) are dropped and
    counted instead.

    @ivar dropped: messages dropped because the queue was full.
    """

    def __init__(self, capacity: int, pressure: Callable[[int], None]) -> None:
        self.capacity = capacity
        self._pressure = pressure
        self._queue: deque[PoolMessage] = deque()
        self._waiters: deque[Deferred[PoolMessage]] = deque()
        self._subscriptions: OrderedDict[str, None] = OrderedDict()
        self._publishes: OrderedDict[str, None] = OrderedDict()
        self._full = False
        self._closed = False
        self.dropped = 0

    def note(self, data: bytes) -> None:
        """
        Remember what an outgoing raw message asks for, so its replies are
        routed here.
        """
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, list) or len(parsed) < 2:
            return
        verb, argument = parsed[0], parsed[1]
        if verb in ("REQ", "COUNT") and isinstance(argument, str):
            _remember(self._subscriptions, argument, self.capacity)
        elif verb == "CLOSE" and isinstance(argument, str):
            self._subscriptions.pop(argument, None)
        elif verb == "EVENT" and isinstance(argument, dict) and isinstance(argument.get("id"), str):
            _remember(self._publishes, argument["id"], self.capacity)

    def hasSubscription(self, subscriptionId: str) -> bool:
        """
        @return: whether C{subscriptionId} is a raw subscription's.
        """
        return subscriptionId in self._subscriptions

    def forgetSubscription(self, subscriptionId: str) -> None:
        """
        Stop routing C{subscriptionId}'s replies here (the relay closed it).
        """
        self._subscriptions.pop(subscriptionId, None)

    def hasPublish(self, eventId: str) -> bool:
        """
        @return: whether C{eventId} was published raw.
        """
        return eventId in self._publishes

    def push(self, message: PoolMessage, mayPause: bool) -> None:
        """
        Hand C{message} to a waiting L{recv}, or queue it.

        @param mayPause: whether a full queue may pause the relays for it;
            if not, it is dropped when the queue is full.
        """
        if self._waiters:
            self._waiters.popleft().callback(message)
            return
        if len(self._queue) >= self.capacity and not mayPause:
            self.dropped += 1
            return
        self._queue.append(message)
        if not self._full and len(self._queue) >= self.capacity:
            self._full = True
            self._pressure(+1)

    def recv(self) -> Deferred[PoolMessage]:
        """
        @return: a Deferred firing with the next message, failing with
            L{PoolClosed} once the channel is closed and empty.
        """
        if self._queue:
            return succeed(self._pop())
        if self._closed:
            return fail(PoolClosed("the relay pool stopped"))
        d: Deferred[PoolMessage] = Deferred()
        self._waiters.append(d)
        return d

    def tryRecv(self) -> PoolMessage | None:
        """
        @return: the next message, or L{None} if none is queued.
        """
        return self._pop() if self._queue else None

    def queued(self) -> int:
        """
        @return: how many messages wait in the queue.
        """
        return len(self._queue)

    def close(self) -> None:
        """
        Fail the waiting L{recv} calls with L{PoolClosed}; later ones fail
        too once the queue is empty.
        """
        self._closed = True
        while self._waiters:
            self._waiters.popleft().errback(PoolClosed("the relay pool stopped"))

    def _pop(self) -> PoolMessage:
        message = self._queue.popleft()
        if self._full and len(self._queue) <= self.capacity // 2:
            self._full = False
            self._pressure(-1)
        return message
