"""
The exceptions relaypool raises, one class per failure a caller may handle.

Pure Python: every layer, including the Twisted-free L{relaypool.nostr}
package, imports its errors from here.
"""

from __future__ import annotations

from typing import Any


class RelayPoolError(Exception):
    """
    Base class of every error relaypool raises on purpose.
    """


# --- input validation (nostr protocol, URLs, configuration) ---------------


class InvalidEvent(RelayPoolError, ValueError):
    """
    An event is malformed: a field has the wrong type or size, its id does
    not match its content, or its signature does not verify.

    @ivar eventId: the event's C{id} field when the event got far enough to
        have a string one (so a relay can answer C{OK <id> false}), else
        C{None}.
    """

    eventId: str | None = None


class InvalidFilter(RelayPoolError, ValueError):
    """
    A NIP-01 filter is malformed.
    """


class InvalidMessage(RelayPoolError, ValueError):
    """
    A client or relay message is not valid NIP-01 JSON.

    @ivar subscriptionId: the subscription id when the message got far
        enough to have one (so a relay can answer C{CLOSED}), else C{None}.
    @ivar negentropy: whether it is a NIP-77 message (C{NEG-OPEN},
        C{NEG-MSG}, C{NEG-CLOSE}), answered with C{NEG-ERR} rather than
        C{CLOSED}.
    """

    subscriptionId: str | None = None
    negentropy: bool = False


class InvalidRelayURL(RelayPoolError, ValueError):
    """
    A relay URL is not a C{ws://} or C{wss://} URL with a host.
    """


class InvalidName(RelayPoolError, ValueError):
    """
    A name given to a name service is not C{host:port}.
    """


class InvalidRelayInformation(RelayPoolError, ValueError):
    """
    A NIP-11 relay information document is malformed.
    """


class InvalidKey(RelayPoolError, ValueError):
    """
    A private or public key is not a valid secp256k1 key in the expected
    encoding (32 bytes, or 64 lowercase hex characters).
    """


class InvalidHTTPAuth(RelayPoolError, ValueError):
    """
    A NIP-98 C{Authorization} header is missing, malformed, or does not
    authorize the request; the message says which check failed.
    """


class ConfigError(RelayPoolError, ValueError):
    """
    A configuration value (config file or command line) is invalid.

    @ivar key: the name of the offending key, as the user wrote it.
    @ivar message: what is wrong with it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class StartupError(RelayPoolError, SystemExit):
    """
    The daemon cannot start: it cannot listen, or cannot open its store.
    The message is one line naming what failed and why.

    It is also a L{SystemExit} with code 1: twistd reports an L{Exception}
    raised while starting (here from C{privilegedStartService}) to the
    parent of a daemonized process, which then exits 1, and re-raises it;
    as a L{SystemExit}, it then ends C{twistd -n} with status 1 and no
    traceback (the line itself was logged).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1


# --- the connection layer (mux, pool) -------------------------------------


class NoConnectionAvailable(RelayPoolError):
    """
    No connection is open to any address of a name right now.
    """


class QueueFull(RelayPoolError):
    """
    A bounded queue is full; the call was refused instead of waiting.
    """


class AcquireTimeout(RelayPoolError):
    """
    No connection could be acquired from a pool within the timeout.
    """


class PoolClosed(RelayPoolError):
    """
    The pool (or multiplexer, or relay pool) was stopped while the call was
    waiting, or the call was made after it stopped.
    """


class ConnectionDrained(RelayPoolError):
    """
    The address a connection belonged to was removed by the name service,
    and the connection closed before the request it carried finished.
    """


class ConnectionLost(RelayPoolError):
    """
    The connection carrying a request closed before the reply arrived.
    """


# --- the relay pool ---------------------------------------------------------


class TooManyRelays(RelayPoolError):
    """
    Adding a relay would exceed the pool's C{maxRelays}.
    """


class RelayRefused(RelayPoolError, ValueError):
    """
    The pool's admit policy refuses a relay URL.
    """


class UnknownRelay(RelayPoolError, KeyError):
    """
    The relay URL is not in the pool.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class NotConnected(RelayPoolError):
    """
    The relay has no open connection right now.
    """


class SubscriptionClosed(RelayPoolError):
    """
    The subscription was closed while a caller was waiting on it.
    """


class PublishFailed(RelayPoolError):
    """
    A publish did not reach its quorum.

    @ivar result: the L{relaypool.upstream.relaypool.PublishResult} with every relay's
        outcome.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


# --- the store --------------------------------------------------------------


class CountUnavailable(RelayPoolError):
    """
    No relay answered a NIP-45 COUNT, and the caller asked the pool not to
    fetch the events to count them.
    """


class StoreError(RelayPoolError):
    """
    The event store failed, or was used after it closed.
    """


class SchemaVersionError(StoreError):
    """
    A database file has a schema version this relaypool cannot migrate.
    """


# --- the gateway --------------------------------------------------------------


class UnknownConnection(RelayPoolError, KeyError):
    """
    The connection id is not registered in the gateway's connection registry.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


# --- cluster ----------------------------------------------------------------


class RedisUnavailable(RelayPoolError):
    """
    A cluster node cannot reach its Redis server (not connected, or a
    command got no answer in time): the node serves its own clients as a
    single node until Redis is back.
    """


__all__ = [
    "AcquireTimeout",
    "ConfigError",
    "ConnectionDrained",
    "ConnectionLost",
    "CountUnavailable",
    "InvalidEvent",
    "InvalidFilter",
    "InvalidHTTPAuth",
    "InvalidKey",
    "InvalidMessage",
    "InvalidName",
    "InvalidRelayInformation",
    "InvalidRelayURL",
    "NoConnectionAvailable",
    "NotConnected",
    "PoolClosed",
    "PublishFailed",
    "QueueFull",
    "RedisUnavailable",
    "RelayPoolError",
    "SchemaVersionError",
    "StartupError",
    "StoreError",
    "SubscriptionClosed",
    "RelayRefused",
    "TooManyRelays",
    "UnknownConnection",
    "UnknownRelay",
]
