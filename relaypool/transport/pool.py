"""
The factory-based connection pool over a L{UniformMultiplexer}: request/reply
through a bounded queue, exclusive acquire/release under a permit limit,
per-connection metrics and eviction of idle or unhealthy connections.

Request/reply needs protocols providing L{IRequestProtocol}; acquire and
release work with any protocol. Connections made elsewhere join the pool
with L{Pool.insert} (seed 003's address-keyed use).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaypool._reactor import defaultReactor
from relaypool.errors import AcquireTimeout, NoConnectionAvailable, PoolClosed, QueueFull
from relaypool.transport.health import ConnectionMetrics, HealthPolicy
from relaypool.transport.mux import OPEN, SlotStatus, UniformMultiplexer
from relaypool.transport.names import Address

__all__ = ["CleanupHandle", "Pool", "PoolStats"]

_DEFAULT_POLICY = HealthPolicy()


@dataclass(frozen=True, slots=True)
class PoolStats:
    """
    A snapshot of a L{Pool}.

    @ivar total: open connections.
    @ivar active: open connections acquired or carrying requests.
    @ivar idle: open connections neither acquired nor carrying requests.
    @ivar healthy: open connections not unhealthy under the pool's policy.
    @ivar waiting: L{Pool.acquire} calls waiting for a connection.
    @ivar queued: requests waiting in the queue.
    @ivar utilization: C{active / total}, 0.0 without connections.
    """

    total: int
    active: int
    idle: int
    healthy: int
    waiting: int
    queued: int
    utilization: float

    def summary(self) -> str:
        """
        @return: the stats on one line.
        """
        return (
            f"total={self.total} active={self.active} idle={self.idle} "
            f"healthy={self.healthy} waiting={self.waiting} queued={self.queued} "
            f"utilization={self.utilization:.1%}"
        )


class CleanupHandle:
    """
    A running cleanup loop of a L{Pool}.
    """

    def __init__(self, loop: LoopingCall, onStop: Callable[[CleanupHandle], None]) -> None:
        self._loop = loop
        self._onStop = onStop

    def stop(self) -> None:
        """
        Stop the loop. Idempotent.
        """
        if self._loop.running:
            self._loop.stop()
        self._onStop(self)


def _excluding(excluded: set[Any], predicate: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """
    @return: C{predicate} made false for the members of C{excluded}.
    """

    def accepts(connection: Any) -> bool:
        return connection not in excluded and predicate(connection)

    return accepts


class _Acquirer:
    __slots__ = ("deferred", "timer", "address")

    def __init__(
        self, deferred: Deferred[Any], timer: IDelayedCall, address: Address | None
    ) -> None:
        self.deferred = deferred
        self.timer = timer
        self.address = address


class _Queued:
    __slots__ = ("payload", "deferred")

    def __init__(self, payload: Any, deferred: Deferred[Any]) -> None:
        self.payload = payload
        self.deferred = deferred


class Pool(service.Service):
    """
    Requests and exclusive connections over a L{UniformMultiplexer}.

    L{request} sends to an open connection round-robin, skipping acquired
    connections and those with C{maxInFlight} requests in flight; when none
    can take it the request waits in a queue of at most C{queueSize}, and a
    request that finds the queue full fails at once with L{QueueFull}.

    L{acquire} hands out an open connection exclusively (L{request} and
    other acquirers leave it alone) until L{release}; at most
    C{maxConnections} are held at once. C{acquire(address=...)} takes a
    connection to that address only.

    Besides the multiplexer's connections the pool uses connections made
    elsewhere and handed to it with L{insert} (until L{remove} hands them
    back, they close, or they are evicted); the pool holds at most
    C{maxTotalConnections} connections in all, counting the multiplexer's
    open ones, and refuses L{insert} at that cap.

    Metrics are kept per connection (while it is open) and per address (an
    aggregate of that address's connections, while the address is
    current); both are fed by every request through L{request} and by
    L{recordSuccess}/L{recordError}.

    The pool owns its multiplexer's lifecycle: starting and stopping the
    pool starts and stops it.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime | None,
        multiplexer: UniformMultiplexer,
        queueSize: int = 1000,
        maxConnections: int = 10,
        acquireTimeout: float = 30.0,
        healthPolicy: HealthPolicy = _DEFAULT_POLICY,
        maxInFlight: int = 100,
        maxTotalConnections: int = 0,
    ) -> None:
        """
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        @param multiplexer: the connections.
        @param queueSize: the bound of the request queue, and of the
            number of waiting L{acquire} calls.
        @param maxConnections: how many connections may be acquired at once.
        @param acquireTimeout: the default L{acquire} timeout in seconds.
        @param healthPolicy: what L{evictUnhealthy} evicts.
        @param maxInFlight: requests one connection carries at most.
        @param maxTotalConnections: how many open connections the pool holds
            at most across all addresses, the multiplexer's and inserted
            ones together; L{insert} is refused at this cap. 0 (the default)
            sets no cap. (The multiplexer's own number is set by its
            C{connectionsPerAddress} and the name service.)
        @raise ValueError: if C{maxTotalConnections} is negative.
        """
        if maxTotalConnections < 0:
            raise ValueError(
                f"maxTotalConnections must be 0 (no cap) or more, not {maxTotalConnections}"
            )
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._mux = multiplexer
        self._queueSize = queueSize
        self._maxConnections = maxConnections
        self._acquireTimeout = acquireTimeout
        self._policy = healthPolicy
        self._maxInFlight = maxInFlight
        self._maxTotalConnections = maxTotalConnections
        self._queue: deque[_Queued] = deque()
        self._acquirers: deque[_Acquirer] = deque()
        self._inserted: dict[Any, Address] = {}
        self._cursor = 0
        self._held: set[Any] = set()
        self._inFlight: dict[Any, int] = {}
        self._metrics: dict[Any, ConnectionMetrics] = {}
        self._unhealthy: set[Any] = set()
        self._addressOf: dict[Any, Address] = {}
        self._addressMetrics: dict[Address, ConnectionMetrics] = {}
        self._cleanups: set[CleanupHandle] = set()
        self._unobserve: Callable[[], None] | None = None

    @property
    def maxConnections(self) -> int:
        """
        How many connections may be acquired at once.
        """
        return self._maxConnections

    @property
    def acquireTimeout(self) -> float:
        """
        The default L{acquire} timeout in seconds.
        """
        return self._acquireTimeout

    @property
    def maxTotalConnections(self) -> int:
        """
        How many open connections the pool holds at most (0: no cap).
        """
        return self._maxTotalConnections

    # --- service ----------------------------------------------------------

    def startService(self) -> None:
        """
        Start the multiplexer and accept requests.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._unobserve = self._mux.addStateObserver(self._slotChanged)
        self._mux.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop the cleanup loops, fail waiting L{acquire} calls and queued
        requests with L{PoolClosed}, stop the multiplexer and close the
        inserted connections (close handshake on every connection).

        @return: a Deferred firing when every connection is closed.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for handle in list(self._cleanups):
            handle.stop()
        acquirers, self._acquirers = self._acquirers, deque()
        for acquirer in acquirers:
            acquirer.timer.cancel()
            acquirer.deferred.errback(PoolClosed("the pool stopped while acquire() waited"))
        queued, self._queue = self._queue, deque()
        for entry in queued:
            entry.deferred.errback(PoolClosed("the pool stopped before the request was sent"))
        closing = [self._closeInserted(connection) for connection in list(self._inserted)]
        if not closing:
            return self._mux.stopService()
        closing.append(self._mux.stopService())
        return gatherResults(closing).addCallback(lambda _: None)

    # --- request/reply ----------------------------------------------------

    def request(self, payload: Any) -> Deferred[Any]:
        """
        Send C{payload} on a connection and return its reply.

        @return: a Deferred firing with the reply; failing with L{QueueFull}
            at once if the queue is full, L{PoolClosed} if the pool is not
            running or stops before the request was sent, or the
            connection's error.
        """
        if not self.running:
            return fail(PoolClosed("the pool is not running"))
        if not self._queue:
            connection = self._pickWhere(self._canSend)
            if connection is not None:
                return self._send(connection, payload)
        if len(self._queue) >= self._queueSize:
            return fail(QueueFull(f"the request queue holds {self._queueSize} requests"))

        def cancel(deferred: Deferred[Any]) -> None:
            if entry in self._queue:
                self._queue.remove(entry)

        entry = _Queued(payload, Deferred(cancel))
        self._queue.append(entry)
        return entry.deferred

    def _canSend(self, connection: Any) -> bool:
        return (
            connection not in self._held and self._inFlight.get(connection, 0) < self._maxInFlight
        )

    def _send(self, connection: Any, payload: Any) -> Deferred[Any]:
        self._inFlight[connection] = self._inFlight.get(connection, 0) + 1
        start = self._reactor.seconds()
        try:
            reply: Deferred[Any] = connection.request(payload)
        except Exception:
            reply = fail()
        reply.addBoth(self._finished, connection, start)
        return reply

    def _finished(self, result: object, connection: Any, start: float) -> object:
        count = self._inFlight.get(connection, 0) - 1
        if count > 0:
            self._inFlight[connection] = count
        else:
            self._inFlight.pop(connection, None)
        now = self._reactor.seconds()
        if isinstance(result, Failure):
            self._record(connection, now, None)
        else:
            self._record(connection, now, now - start)
        if self._queue:
            self._dispatch()
        return result

    def _dispatch(self) -> None:
        queue = self._queue
        while queue:
            connection = self._pickWhere(self._canSend)
            if connection is None:
                return
            entry = queue.popleft()
            self._send(connection, entry.payload).chainDeferred(entry.deferred)

    def _pickWhere(self, predicate: Callable[[Any], bool]) -> Any:
        """
        @return: the next open connection in round-robin order satisfying
            C{predicate}, or L{None}; while a healthy connection is open,
            unhealthy ones are skipped.
        """
        unhealthy = self._unhealthy
        if unhealthy and self._anyHealthy():
            predicate = _excluding(unhealthy, predicate)
        if self._inserted:
            return self._pickAmongAll(predicate)
        try:
            first = self._mux.pick()
        except NoConnectionAvailable:
            return None
        if predicate(first):
            return first
        for _ in range(len(self._mux.readyConnections()) - 1):
            connection = self._mux.pick()
            if connection is first:
                break
            if predicate(connection):
                return connection
        return None

    def _pickAmongAll(self, predicate: Callable[[Any], bool]) -> Any:
        """
        L{_pickWhere} when connections were inserted: round-robin over the
        multiplexer's open connections followed by the inserted ones.
        """
        candidates = self._mux.readyConnections() + list(self._inserted)
        count = len(candidates)
        for step in range(count):
            index = (self._cursor + step) % count
            if predicate(candidates[index]):
                self._cursor = index + 1
                return candidates[index]
        return None

    def _anyHealthy(self) -> bool:
        """
        @return: whether an open connection is not unhealthy.
        """
        unhealthy = self._unhealthy
        return any(c not in unhealthy for c in self._mux.readyConnections()) or any(
            c not in unhealthy for c in self._inserted
        )

    def isHealthy(self, connection: Any) -> bool:
        """
        @return: whether C{connection} is not unhealthy under the pool's
            L{HealthPolicy} (a connection with nothing recorded is healthy).
        """
        return connection not in self._unhealthy

    def pick(self, where: Callable[[Any], bool] | None = None) -> Any:
        """
        The connection to use for a message that needs no reply tracking by
        the pool (the caller records the outcome with L{recordSuccess} and
        L{recordError}).

        @param where: if given, only a connection for which it is true will
            do.
        @return: the next open connection in round-robin order that is not
            acquired and satisfies C{where}, skipping unhealthy connections
            while a healthy one is open; L{None} if there is none.
        """
        if where is None:
            return self._pickWhere(self._isFree)
        held = self._held
        return self._pickWhere(lambda connection: connection not in held and where(connection))

    def usableConnections(self) -> list[Any]:
        """
        @return: the open connections L{pick} chooses among, in round-robin
            order of the multiplexer then the inserted ones: those neither
            acquired nor unhealthy, or (when every open connection is
            unhealthy) those not acquired.
        """
        free = [c for c in self.connections() if c not in self._held]
        healthy = [c for c in free if c not in self._unhealthy]
        return healthy or free

    def connections(self) -> list[Any]:
        """
        @return: every open connection of the pool: the multiplexer's, then
            the inserted ones.
        """
        if not self._inserted:
            return self._mux.readyConnections()
        return self._mux.readyConnections() + list(self._inserted)

    def addressMetrics(self) -> dict[Address, ConnectionMetrics]:
        """
        @return: the per-address aggregates the pool keeps (see
            L{metrics}), by address.
        """
        self._pruneAggregates()
        return dict(self._addressMetrics)

    def _slotChanged(self, status: SlotStatus) -> None:
        if status.state == OPEN:
            self._dispatch()
            self._serveAcquirers()

    # --- acquire/release --------------------------------------------------

    def acquire(
        self, timeout: float | None = None, address: Address | None = None
    ) -> Deferred[Any]:
        """
        Hold an open connection exclusively until L{release}.

        @param timeout: seconds to wait at most; L{None} for the pool's
            C{acquireTimeout}.
        @param address: if given, only a connection to this address will do
            (one of the multiplexer's or an inserted one); the call waits
            for one like any other, even if the address is not current yet.
        @return: a Deferred firing with the connection; failing with
            L{AcquireTimeout} after C{timeout}, L{QueueFull} if C{queueSize}
            calls already wait, L{PoolClosed} if the pool is not running or
            stops.
        @raise TypeError: if C{address} is neither an L{Address} nor
            L{None}.
        """
        if address is not None and not isinstance(address, Address):
            raise TypeError(f"address must be an Address, not {type(address).__name__}")
        if not self.running:
            return fail(PoolClosed("the pool is not running"))
        if self.availablePermits() > 0:
            # Any waiting acquirer wants another address: a connection it
            # could take would have been handed to it already.
            connection = self._pickWhere(self._freeFor(address))
            if connection is not None:
                self._held.add(connection)
                return succeed(connection)
        if len(self._acquirers) >= self._queueSize:
            return fail(QueueFull(f"{self._queueSize} acquire() calls already wait"))
        seconds = self._acquireTimeout if timeout is None else timeout

        def cancel(deferred: Deferred[Any]) -> None:
            self._forgetAcquirer(entry)

        waiter: Deferred[Any] = Deferred(cancel)
        timer = self._reactor.callLater(seconds, self._acquireExpired, waiter, seconds)
        entry = _Acquirer(waiter, timer, address)
        self._acquirers.append(entry)
        return waiter

    def release(self, connection: Any) -> None:
        """
        Give back a connection from L{acquire}. Releasing a connection that
        is not held does nothing.
        """
        if connection in self._held:
            self._held.discard(connection)
            self._serveAcquirers()
            if self._queue:
                self._dispatch()

    def availablePermits(self) -> int:
        """
        @return: how many more connections may be acquired now.
        """
        return self._maxConnections - len(self._held)

    def activeConnections(self) -> int:
        """
        @return: how many connections are acquired.
        """
        return len(self._held)

    def _isFree(self, connection: Any) -> bool:
        return connection not in self._held

    def _freeFor(self, address: Address | None) -> Callable[[Any], bool]:
        """
        @return: a predicate true of a connection that is not held and, if
            C{address} is given, connected to it.
        """
        if address is None:
            return self._isFree
        return lambda connection: (
            connection not in self._held and self._addressFor(connection) == address
        )

    def _serveAcquirers(self) -> None:
        """
        Hand free connections to waiting acquirers, oldest first; one that
        wants an address with no free connection lets the next ones pass.
        """
        for entry in list(self._acquirers):
            if self.availablePermits() <= 0:
                return
            connection = self._pickWhere(self._freeFor(entry.address))
            if connection is None:
                if entry.address is None:
                    return
                continue
            self._acquirers.remove(entry)
            entry.timer.cancel()
            self._held.add(connection)
            entry.deferred.callback(connection)

    def _forgetAcquirer(self, entry: _Acquirer) -> None:
        if entry in self._acquirers:
            self._acquirers.remove(entry)
        if entry.timer.active():
            entry.timer.cancel()

    def _acquireExpired(self, waiter: Deferred[Any], seconds: float) -> None:
        self._acquirers = deque(entry for entry in self._acquirers if entry.deferred is not waiter)
        waiter.errback(AcquireTimeout(f"no connection could be acquired within {seconds}s"))

    # --- connections made elsewhere ---------------------------------------

    def insert(self, address: Address, protocol: Any) -> bool:
        """
        Add a connection made elsewhere, to C{address}: from now on the pool
        uses it like its multiplexer's (requests, L{acquire}, metrics,
        eviction) and owns it: eviction and L{stopService} close it with a
        close handshake. It leaves the pool when it closes or through
        L{remove}.

        @param protocol: an open Autobahn WebSocket protocol (its
            C{is_closed} Deferred tells the pool when it closes).
        @return: C{True} if it was added; C{False} if the pool already holds
            C{maxTotalConnections} open connections.
        @raise TypeError: if C{address} is not an L{Address} or C{protocol}
            has no C{is_closed} Deferred.
        @raise ValueError: if C{protocol} has closed or is already in the
            pool.
        @raise PoolClosed: if the pool is not running.
        """
        if not isinstance(address, Address):
            raise TypeError(f"address must be an Address, not {type(address).__name__}")
        closed = getattr(protocol, "is_closed", None)
        if not isinstance(closed, Deferred):
            raise TypeError(
                f"{type(protocol).__name__} is not an Autobahn WebSocket protocol "
                f"(it has no is_closed Deferred)"
            )
        if closed.called:
            raise ValueError("the connection has closed")
        if protocol in self._inserted or protocol in self._mux.readyConnections():
            raise ValueError("the connection is already in the pool")
        if not self.running:
            raise PoolClosed("the pool is not running")
        if 0 < self._maxTotalConnections <= self.connectionCount():
            return False
        self._inserted[protocol] = address
        self._metricsFor(protocol)
        closed.addBoth(self._insertedClosed, protocol)
        self._dispatch()
        self._serveAcquirers()
        return True

    def remove(self, address: Address) -> list[Any]:
        """
        Take the connections inserted for C{address} out of the pool without
        closing them: the caller owns them again. Acquired ones are released
        (L{release} of them does nothing); requests they carry still get
        their replies. The multiplexer's own connections to C{address} stay:
        they follow the name service.

        @return: the connections removed, oldest first; empty if none was
            inserted for C{address}.
        """
        removed = [c for c, a in self._inserted.items() if a == address]
        for connection in removed:
            self._dropInserted(connection)
        if removed:
            self._serveAcquirers()
        return removed

    def connectionCount(self) -> int:
        """
        @return: how many open connections the pool holds: the
            multiplexer's and the inserted ones.
        """
        return len(self._mux.readyConnections()) + len(self._inserted)

    def _insertedClosed(self, result: object, connection: Any) -> object:
        if connection in self._inserted:
            self._dropInserted(connection)
            self._serveAcquirers()
        return result

    def _dropInserted(self, connection: Any) -> None:
        del self._inserted[connection]
        self._held.discard(connection)
        self._forget(None, connection)

    def _closeInserted(self, connection: Any) -> Deferred[Any]:
        """
        Take an inserted connection out of the pool and start its close
        handshake.

        @return: its C{is_closed} Deferred.
        """
        self._dropInserted(connection)
        done: Deferred[None] = Deferred()

        def closed(result: object) -> object:
            done.callback(None)
            return result

        connection.is_closed.addBoth(closed)
        connection.sendClose(code=1000, reason="relaypool: closing")
        return done

    # --- metrics and eviction ---------------------------------------------

    def stats(self) -> PoolStats:
        """
        @return: a snapshot of the pool (inserted connections included).
        """
        ready = self._mux.readyConnections() + list(self._inserted)
        active = sum(1 for c in ready if c in self._held or c in self._inFlight)
        unhealthy = sum(
            1 for c in ready if c in self._metrics and self._policy.isUnhealthy(self._metrics[c])
        )
        return PoolStats(
            total=len(ready),
            active=active,
            idle=len(ready) - active,
            healthy=len(ready) - unhealthy,
            waiting=len(self._acquirers),
            queued=len(self._queue),
            utilization=active / len(ready) if ready else 0.0,
        )

    def metrics(self, key: Any) -> ConnectionMetrics | None:
        """
        @param key: a connection, or an L{Address} for the aggregate of that
            address's connections.
        @return: the metrics, or L{None} for a connection that is not open
            or an address that is not current or saw no connection yet.
        """
        if isinstance(key, Address):
            return self._addressMetrics.get(key)
        return self._metricsFor(key)

    def recordSuccess(self, key: Any, latency: float) -> None:
        """
        Count a reply that took C{latency} seconds.

        @param key: a connection (its metrics and its address's aggregate
            count it; nothing is counted for a connection that is not open,
            since its metrics went when it closed), or an L{Address} (its
            aggregate counts it).
        @raise KeyError: if C{key} is an L{Address} that is neither current
            nor has a connection in the pool.
        """
        self._recordOn(key, latency)

    def recordError(self, key: Any) -> None:
        """
        Count a failed request.

        @param key: a connection or an L{Address}, as for L{recordSuccess}.
        @raise KeyError: if C{key} is an L{Address} that is neither current
            nor has a connection in the pool.
        """
        self._recordOn(key, None)

    def _recordOn(self, key: Any, latency: float | None) -> None:
        """
        Count a success (with C{latency}) or an error (C{latency} L{None})
        on a connection or an address.
        """
        if not isinstance(key, Address):
            self._record(key, self._reactor.seconds(), latency)
            return
        address = key
        aggregate = self._addressMetrics.get(address)
        if aggregate is None:
            if not self._isKnown(address):
                raise KeyError(f"{address} is neither current nor connected in this pool")
            self._pruneAggregates()
            now = self._reactor.seconds()
            aggregate = self._addressMetrics[address] = ConnectionMetrics(now, self._policy)
        now = self._reactor.seconds()
        if latency is None:
            aggregate.recordError(now)
        else:
            aggregate.recordSuccess(latency, now)

    def _isKnown(self, address: Address) -> bool:
        """
        @return: whether C{address} is current in the multiplexer or has a
            connection in the pool.
        """
        return (
            address in self._mux.addresses()
            or address in self._addressOf.values()
            or address in self._inserted.values()
        )

    def _pruneAggregates(self) -> None:
        for address in [a for a in self._addressMetrics if not self._isKnown(a)]:
            del self._addressMetrics[address]

    def _addressFor(self, connection: Any) -> Address | None:
        """
        @return: the address of an open connection of the pool, or L{None}.
        """
        address = self._inserted.get(connection)
        if address is not None:
            return address
        try:
            return self._mux.addressOf(connection)
        except KeyError:
            return None

    def _record(self, connection: Any, now: float, latency: float | None) -> None:
        metrics = self._metricsFor(connection)
        if metrics is None:
            return
        aggregate = self._addressMetrics[self._addressOf[connection]]
        if latency is None:
            metrics.recordError(now)
            aggregate.recordError(now)
        else:
            metrics.recordSuccess(latency, now)
            aggregate.recordSuccess(latency, now)
        if self._policy.isUnhealthy(metrics):
            self._unhealthy.add(connection)
        else:
            self._unhealthy.discard(connection)

    def _metricsFor(self, connection: Any) -> ConnectionMetrics | None:
        metrics = self._metrics.get(connection)
        if metrics is not None:
            return metrics
        address = self._addressFor(connection)
        if address is None:
            return None
        now = self._reactor.seconds()
        metrics = self._metrics[connection] = ConnectionMetrics(now, self._policy)
        self._addressOf[connection] = address
        if address not in self._addressMetrics:
            self._addressMetrics[address] = ConnectionMetrics(now, self._policy)
        if connection not in self._inserted:
            # An inserted connection is forgotten when it leaves the pool.
            self._mux.whenClosed(connection).addCallback(self._forget, connection)
        return metrics

    def _forget(self, result: object, connection: Any) -> None:
        self._metrics.pop(connection, None)
        self._unhealthy.discard(connection)
        self._inFlight.pop(connection, None)
        address = self._addressOf.pop(connection, None)
        if address is not None and not self._isKnown(address):
            self._addressMetrics.pop(address, None)

    def evictIdle(self, maxIdle: float) -> int:
        """
        Evict every open connection that is neither acquired nor carrying
        requests and was last used (or first seen by the pool) C{maxIdle}
        seconds ago or more: the multiplexer's are recycled (their slot
        reconnects at once), inserted ones leave the pool and are closed.

        @return: how many were evicted.
        """
        now = self._reactor.seconds()
        evicted = 0
        for connection in self._mux.readyConnections() + list(self._inserted):
            if connection in self._held or connection in self._inFlight:
                continue
            metrics = self._metricsFor(connection)
            if metrics is not None and now - metrics.lastUsed >= maxIdle:
                self._evict(connection)
                evicted += 1
        return evicted

    def evictUnhealthy(self) -> int:
        """
        Evict every open connection that is not acquired and is unhealthy
        under the pool's L{HealthPolicy}; requests it still carries fail
        with the protocol's connection-lost error. The multiplexer's are
        recycled (their slot reconnects at once), inserted ones leave the
        pool and are closed.

        @return: how many were evicted.
        """
        evicted = 0
        for connection in self._mux.readyConnections() + list(self._inserted):
            metrics = self._metrics.get(connection)
            if (
                connection not in self._held
                and metrics is not None
                and self._policy.isUnhealthy(metrics)
            ):
                self._evict(connection)
                evicted += 1
        return evicted

    def _evict(self, connection: Any) -> None:
        if connection in self._inserted:
            self._closeInserted(connection)
        else:
            self._mux.recycle(connection)

    def startCleanup(self, interval: float, maxIdle: float = 300.0) -> CleanupHandle:
        """
        Run L{evictIdle} (with C{maxIdle}) and L{evictUnhealthy} every
        C{interval} seconds on one L{LoopingCall}. An exception in either is
        logged and does not stop the loop. L{stopService} stops it.

        @return: a handle whose C{stop()} stops the loop.
        """
        loop = LoopingCall(self._cleanup, maxIdle)
        loop.clock = self._reactor
        handle = CleanupHandle(loop, self._cleanups.discard)
        self._cleanups.add(handle)
        loop.start(interval, now=False)
        return handle

    def _cleanup(self, maxIdle: float) -> None:
        evictions: tuple[tuple[str, Callable[[], int]], ...] = (
            ("idle", lambda: self.evictIdle(maxIdle)),
            ("unhealthy", self.evictUnhealthy),
        )
        for name, evict in evictions:
            try:
                count = evict()
            except Exception:
                self.log.failure("Evicting {kind} connections failed", kind=name)
            else:
                if count:
                    self.log.info("Evicted {count} {kind} connections", count=count, kind=name)
