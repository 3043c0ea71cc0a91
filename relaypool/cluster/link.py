"""
A cluster node's link to its Redis server: the address, two connections
(one for commands, one for blocking stream reads, so a read waiting for new
entries never holds a command back), reconnecting, and one log line each
time Redis is lost and back.

The client is txredisapi: its connections answer with Deferreds on the
node's reactor, so the cluster code is plain Twisted (see the design notes,
"Several nodes"). The link connects and reconnects itself (txredisapi's
own reconnecting service would log every attempt), and it fails a command
at once while Redis is away instead of queueing it: a node without Redis
serves its own clients and must not pile up work for later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool.errors import RedisUnavailable

_log = Logger()

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """
    Where a cluster's Redis server is: C{redis://[[user]:password@]host[:port][/db]}.
    """

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        # Without the password: this is what logs and /stats show.
        return f"redis://{self.host}:{self.port}/{self.db}"


def parseRedisURL(text: str) -> RedisAddress:
    """
    @return: the L{RedisAddress} of a C{redis://} URL.
    @raise ValueError: naming what is wrong with C{text}.
    """
    parts = urlsplit(text.strip())
    if parts.scheme != "redis":
        raise ValueError(f"{text!r} is not a redis:// URL (redis://HOST:PORT/DB)")
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host (redis://HOST:PORT/DB)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{text!r}: the database must be a number, got {path!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a redis:// URL here takes no query or fragment")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def connectOnce(
    address: RedisAddress, reactor: IReactorTCP, timeout: float
) -> tuple[Any, Deferred[Any]]:
    """
    Open one connection to C{address} (authenticated, its database
    selected), without reconnecting.

    @return: the txredisapi factory (its C{disconnect()} gives up the
        attempt or closes the connection) and a Deferred firing with the
        txredisapi connection, or failing with L{RedisUnavailable} naming
        the reason.
    """
    factory = txredisapi.RedisFactory(
        str(address),
        address.db,
        1,
        False,
        txredisapi.ConnectionHandler,
        "utf-8",
        address.password,
        None,
        True,
        address.username,
    )
    factory.reconnect = False
    factory.startConnecting(HostnameEndpoint(reactor, address.host, address.port, timeout=timeout))
    connected: Deferred[Any] = factory.deferred

    def ready(handler: object) -> Any:
        return factory.pool[0]

    def failed(failure: Failure) -> Failure:
        reason = failure.getErrorMessage().removeprefix("Redis error: ")
        return Failure(RedisUnavailable(f"cannot reach Redis at {address}: {reason}"))  # type: ignore[no-untyped-call]

    return factory, connected.addCallbacks(ready, failed)


class RedisLink:
    """
    A node's two connections to Redis, kept open while the link runs.

    @ivar up: whether the command connection is open.
    @ivar commandsSent: the commands sent on either connection.
    @ivar firstAttempt: fires when the command connection first opens, or
        fails with L{RedisUnavailable} (saying why) if the first attempt
        does; the link goes on trying either way.
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        commandTimeout: float = 2.0,
        retryDelay: float = 1.0,
        onState: Callable[[bool], object] | None = None,
    ) -> None:
        """
        @param reactor: an L{IReactorTCP} and L{IReactorTime}.
        @param commandTimeout: seconds a command may wait for its answer;
            past it the connection is dropped (a node cut off from Redis
            learns it this way) and reopened.
        @param retryDelay: seconds between two attempts to reconnect.
        @param onState: called with C{True} when the command connection
            opens and C{False} when it is lost.
        """
        self.address = address
        self._reactor = reactor
        self.commandTimeout = commandTimeout
        self.retryDelay = retryDelay
        self._onState = onState
        self._running = False
        self._commands: Any = None
        self._reads: Any = None
        self._readsWaiters: list[Deferred[None]] = []
        self._retries: dict[str, Any] = {}
        # The txredisapi factory of each connection, open or being opened.
        self._factories: dict[str, Any] = {}
        self.up = False
        self._everUp = False
        self.commandsSent = 0
        self.firstAttempt: Deferred[None] = Deferred()

    def start(self) -> None:
        """
        Open both connections, and reopen them whenever they are lost.
        """
        self._running = True
        self._connect("commands")
        self._connect("reads")

    def stop(self) -> Deferred[None]:
        """
        Close both connections and stop reconnecting.
        """
        self._running = False
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for factory in self._factories.values():
            factory.disconnect()
        self._factories.clear()
        waiters, self._readsWaiters = self._readsWaiters, []
        for waiter in waiters:
            waiter.errback(RedisUnavailable("the cluster node stopped"))
        return succeed(None)

    def command(self, *args: object) -> Deferred[Any]:
        """
        Run one command on the command connection.

        @return: a Deferred firing with its answer; failing with
            L{RedisUnavailable} at once while Redis is away, or when the
            answer does not come within C{commandTimeout}.
        """
        return self._run(self._commands, args, self.commandTimeout)

    def read(self, blockSeconds: float, *args: object) -> Deferred[Any]:
        """
        Run a blocking command (C{XREAD ... BLOCK}) on the read connection,
        allowing it C{blockSeconds} more than C{commandTimeout}.
        """
        return self._run(self._reads, args, blockSeconds + self.commandTimeout)

    def whenReadable(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the read connection is open.
        """
        if self._reads is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readsWaiters.append(d)
        return d

    def _run(self, connection: Any, args: tuple[object, ...], timeout: float) -> Deferred[Any]:
        if connection is None:
            return fail(RedisUnavailable(f"not connected to Redis at {self.address}"))
        self.commandsSent += 1
        d: Deferred[Any] = connection.execute_command(*args)

        def timedOut() -> None:
            if not d.called:
                # The reply queue is out of step now: start over.
                connection.transport.abortConnection()

        call = self._reactor.callLater(timeout, timedOut)

        def done(result: object) -> object:
            if call.active():
                call.cancel()
            if isinstance(result, Failure) and result.check(txredisapi.ConnectionError):  # type: ignore[no-untyped-call]
                return Failure(RedisUnavailable(f"lost Redis at {self.address}"))  # type: ignore[no-untyped-call]
            return result

        return d.addBoth(done)

    def _connect(self, which: str) -> None:
        self._retries.pop(which, None)
        if not self._running:
            return
        self._factories[which], d = connectOnce(self.address, self._reactor, self.commandTimeout)
        d.addCallbacks(self._opened, self._notOpened, callbackArgs=(which,), errbackArgs=(which,))

    def _opened(self, connection: Any, which: str) -> None:
        if not self._running:
            connection.transport.loseConnection()
            return
        connection.whenDisconnected().addCallback(lambda _: self._lost(which))
        if which == "commands":
            self._commands = connection
            self._setUp(True)
            if not self.firstAttempt.called:
                self.firstAttempt.callback(None)
        else:
            self._reads = connection
            waiters, self._readsWaiters = self._readsWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _notOpened(self, failure: Failure, which: str) -> None:
        if which == "commands" and not self.firstAttempt.called:
            self.firstAttempt.errback(failure)
        self._retry(which)

    def _lost(self, which: str) -> None:
        if which == "commands":
            self._commands = None
            self._setUp(False)
        else:
            self._reads = None
        self._retry(which)

    def _retry(self, which: str) -> None:
        if self._running and which not in self._retries:
            self._retries[which] = self._reactor.callLater(self.retryDelay, self._connect, which)

    def _setUp(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            _log.info(
                "relaypool: cluster: {rejoin} Redis at {address}",
                rejoin="back on" if self._everUp or self.firstAttempt.called else "joined the cluster on",
                address=str(self.address),
            )
            self._everUp = True
        elif self._running:
            _log.warn(
                "relaypool: cluster: lost Redis at {address}; serving this node's clients on"
                " its own until it is back",
                address=str(self.address),
            )
        if self._onState is not None:
            self._onState(up)


__all__ = ["RedisAddress", "RedisLink", "connectOnce", "parseRedisURL"]
