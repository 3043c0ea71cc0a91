"""
relaypool: a Twisted-native Nostr relay pool.

The daemon is C{twistd relaypool}. This package is the library's public
face: an application imports what it needs from here,

    from relaypool import RelayPool, Event, Filter

and in-process test relays from L{relaypool.testing}. The layers, each
importing only those below it, are the subpackages: C{transport} (names,
multiplexer, request pool, health), C{nostr} (the protocol, no Twisted),
C{upstream} (relays and the RelayPool), C{store} (SQLite store and durable
outbox), C{gateway} (the relay facade for downstream clients) and C{daemon}
(settings and service wiring).
"""

from __future__ import annotations

from relaypool._version import __version__
from relaypool.errors import (
    CountUnavailable,
    InvalidEvent,
    InvalidFilter,
    InvalidKey,
    InvalidRelayURL,
    PoolClosed,
    PublishFailed,
    RelayPoolError,
    SubscriptionClosed,
    TooManyRelays,
    UnknownRelay,
)
from relaypool.nostr import Event, Filter, generatePrivateKey, publicKeyFor
from relaypool.upstream.relaypool import (
    NO_ANSWER,
    CountResult,
    PoolMessage,
    PoolTotals,
    PublishResult,
    RelayPool,
    RelayStats,
    Subscription,
    SyncResult,
    SyncSettings,
)

__all__ = [
    "NO_ANSWER",
    "CountResult",
    "CountUnavailable",
    "Event",
    "Filter",
    "InvalidEvent",
    "InvalidFilter",
    "InvalidKey",
    "InvalidRelayURL",
    "PoolClosed",
    "PoolMessage",
    "PoolTotals",
    "PublishFailed",
    "PublishResult",
    "RelayPool",
    "RelayPoolError",
    "RelayStats",
    "Subscription",
    "SubscriptionClosed",
    "SyncResult",
    "SyncSettings",
    "TooManyRelays",
    "UnknownRelay",
    "__version__",
    "generatePrivateKey",
    "publicKeyFor",
]
