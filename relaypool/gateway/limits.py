"""
The gateway's per-connection limits and the token bucket that enforces its
rates.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from twisted.internet.interfaces import IReactorTime

from relaypool.errors import ConfigError
from relaypool.nostr.messages import MAX_SUBSCRIPTION_ID_LENGTH
from relaypool.nostr.negentropy import MIN_FRAME_SIZE_LIMIT


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """
    What one downstream connection may do, and the bounds of the gateway's
    buffers. Every value must be positive.

    @ivar maxSubscriptions: open subscriptions per connection; a C{REQ} for
        one more is answered C{CLOSED "blocked: ..."}.
    @ivar maxFilters: filters per C{REQ} or C{COUNT}; more are answered
        C{CLOSED "invalid: ..."}.
    @ivar maxLimit: the largest C{limit} of a filter: a larger one is
        lowered to it, and a filter without one gets it, so that no request
        loads more than this many stored events per filter.
    @ivar maxMessageSize: the largest message a client may send, in bytes; a
        larger one is answered with a C{NOTICE} and ignored. Autobahn is told
        to fail the connection (close code 1009) for messages over twice this
        size, before it buffers them.
    @ivar eventsPerSecond: the sustained rate of C{EVENT} messages per
        connection; one over the rate is answered C{OK false
        "rate-limited: ..."}.
    @ivar eventBurst: how many C{EVENT} messages a connection may send at
        once after being quiet.
    @ivar reqsPerSecond: the sustained rate of C{REQ} and C{COUNT} messages
        per connection; one over the rate is answered C{CLOSED
        "rate-limited: ..."}.
    @ivar reqBurst: how many C{REQ}/C{COUNT} a connection may send at once.
    @ivar maxConnectionsPerIP: open connections from one IP address; the
        WebSocket handshake of one more is refused with HTTP 429.
    @ivar maxSubscriptionIdLength: the longest subscription id, in
        characters; at most 64, NIP-01's bound.
    @ivar maxPendingBytes: bytes that may wait for a client whose transport
        buffer is full before it counts as behind the live stream (see
        L{relaypool.gateway.registry}).
    @ivar maxLag: seconds a client may stay behind (more than
        C{maxPendingBytes} waiting) before it is evicted.
    @ivar maxBacklogBytes: the memory guard per client: one with this many
        bytes waiting is evicted at once. At least C{maxPendingBytes}.
    @ivar pingInterval: seconds between two pings of every connection.
    @ivar maxIdle: seconds without a frame from a client after which it is
        closed.
    @ivar maxCatchUpEvents: new events held for one subscription while its
        stored events load and are sent (at the client's reading pace); one
        more closes the subscription with C{CLOSED "error: ..."}.
    @ivar storePageEvents: how many stored events a REQ's answer reads from
        the store at a time: a client holds at most one such page in memory
        while its answer is written at its reading pace.
    @ivar maxRequestLine: the longest HTTP request line (method, path and
        version), in bytes, of a plain request or a WebSocket handshake; a
        longer one is answered with HTTP 414 and the connection closed.
    @ivar maxHeaderBytes: the largest HTTP request head (request line and
        headers), in bytes; a larger one is answered with HTTP 431 and the
        connection closed.
    @ivar maxHeaders: the most HTTP request headers; one more is answered
        with HTTP 431 and the connection closed.
    @ivar maxBodyBytes: the largest HTTP request body (a NIP-86 call), in
        bytes, by its C{Content-Length}; a larger one is answered with HTTP
        413 and a body without a C{Content-Length} (chunked) with HTTP 411,
        before the body is read, and the connection closed.
    @ivar negMaxSyncs: NIP-77 syncs open at once per connection; one more
        C{NEG-OPEN} is answered C{NEG-ERR "blocked: ..."}.
    @ivar negMaxRecords: the most stored events one NIP-77 sync may cover; a
        C{NEG-OPEN} whose filter matches more is answered C{NEG-ERR
        "blocked: ..."} with this number as the 4th element.
    @ivar negFrameSize: the largest negentropy message the gateway sends, in
        bytes before hex encoding (at least 4096); a larger answer is cut
        and the client asks again for the rest.
    @ivar negIdleTimeout: seconds a NIP-77 sync may wait for the client's
        next C{NEG-MSG} before it is closed with C{NEG-ERR "closed: ..."}.
    """

    maxSubscriptions: int = 20
    maxFilters: int = 10
    maxLimit: int = 500
    maxMessageSize: int = 128 * 1024
    eventsPerSecond: float = 10.0
    eventBurst: int = 20
    reqsPerSecond: float = 20.0
    reqBurst: int = 40
    maxConnectionsPerIP: int = 50
    maxSubscriptionIdLength: int = 64
    maxPendingBytes: int = 1 << 20
    maxLag: float = 10.0
    maxBacklogBytes: int = 8 << 20
    pingInterval: float = 30.0
    maxIdle: float = 90.0
    maxCatchUpEvents: int = 1000
    storePageEvents: int = 64
    maxRequestLine: int = 8192
    maxHeaderBytes: int = 16384
    maxHeaders: int = 100
    maxBodyBytes: int = 65536
    negMaxSyncs: int = 4
    negMaxRecords: int = 250_000
    negFrameSize: int = 256 * 1024
    negIdleTimeout: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f.name, f"must be a positive number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ConfigError(f.name, f"must be a positive integer, got {value!r}")
        if self.maxSubscriptionIdLength > MAX_SUBSCRIPTION_ID_LENGTH:
            raise ConfigError(
                "maxSubscriptionIdLength",
                f"must be at most {MAX_SUBSCRIPTION_ID_LENGTH} (NIP-01), "
                f"got {self.maxSubscriptionIdLength}",
            )
        if self.negFrameSize < MIN_FRAME_SIZE_LIMIT:
            raise ConfigError(
                "negFrameSize",
                f"must be at least {MIN_FRAME_SIZE_LIMIT} (NIP-77), got {self.negFrameSize}",
            )
        if self.maxBacklogBytes < self.maxPendingBytes:
            raise ConfigError(
                "maxBacklogBytes",
                f"must be at least maxPendingBytes ({self.maxPendingBytes}), "
                f"got {self.maxBacklogBytes}",
            )


DEFAULT_LIMITS = GatewayLimits()
"""
The default L{GatewayLimits}.
"""


class TokenBucket:
    """
    A token bucket refilled lazily from a clock: no timer runs, the tokens
    earned since the last call are added when a token is taken.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        """
        @param rate: tokens earned per second.
        @param burst: the most tokens the bucket holds; it starts full.
        @param clock: an L{IReactorTime}.
        """
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last: float = clock.seconds()

    def reconfigure(self, rate: float, burst: float) -> None:
        """
        Change the rate and the burst from now on: the tokens earned so far
        at the old rate are kept, up to the new C{burst}.
        """
        self._refill()
        self._tokens = min(float(burst), self._tokens)
        self._rate = rate
        self._burst = float(burst)

    def take(self) -> bool:
        """
        Take one token.

        @return: C{False} if the bucket is empty (nothing is taken).
        """
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now


__all__ = ["DEFAULT_LIMITS", "GatewayLimits", "TokenBucket"]
