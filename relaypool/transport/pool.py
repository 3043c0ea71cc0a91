"""
The factory-based connection pool over a L{UniformMultiplexer}: request/reply
through a bounded queue, exclusive acquire/release under a permit limit,
per-connection metrics and eviction of idle or unhealthy connections.

Request/reply needs protocols providing L{IRequestProtocol}; acquire and
release work with any protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    C{maxConnections} are held at once.

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
        reactor: Any,
        multiplexer: UniformMultiplexer,
        queueSize: int = 1000,
        maxConnections: int = 10,
        acquireTimeout: float = 30.0,
        healthPolicy: HealthPolicy = _DEFAULT_POLICY,
        maxInFlight: int = 100,
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
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._mux = multiplexer
        self._queueSize = queueSize
        self._maxConnections = maxConnections
        self._acquireTimeout = acquireTimeout
        self._policy = healthPolicy
        self._maxInFlight = maxInFlight
        self._queue: deque[_Queued] = deque()
        self._acquirers: deque[tuple[Deferred[Any], IDelayedCall]] = deque()
        self._held: set[Any] = set()
        self._inFlight: dict[Any, int] = {}
        self._metrics: dict[Any, ConnectionMetrics] = {}
        self._addressOf: dict[Any, Address] = {}
        self._addressMetrics: dict[Address, ConnectionMetrics] = {}
        self._cleanups: set[CleanupHandle] = set()
        self._unobserve: Callable[[], None] | None = None

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
        requests with L{PoolClosed}, and stop the multiplexer (close
        handshake on every connection).

        @return: a Deferred firing when every connection is closed.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for handle in list(self._cleanups):
            handle.stop()
        acquirers, self._acquirers = self._acquirers, deque()
        for waiter, timer in acquirers:
            timer.cancel()
            waiter.errback(PoolClosed("the pool stopped while acquire() waited"))
        queued, self._queue = self._queue, deque()
        for entry in queued:
            entry.deferred.errback(PoolClosed("the pool stopped before the request was sent"))
        return self._mux.stopService()

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
            C{predicate}, or L{None}.
        """
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

    def _slotChanged(self, status: SlotStatus) -> None:
        if status.state == OPEN:
            self._dispatch()
            self._serveAcquirers()

    # --- acquire/release --------------------------------------------------

    def acquire(self, timeout: float | None = None) -> Deferred[Any]:
        """
        Hold an open connection exclusively until L{release}.

        @param timeout: seconds to wait at most; L{None} for the pool's
            C{acquireTimeout}.
        @return: a Deferred firing with the connection; failing with
            L{AcquireTimeout} after C{timeout}, L{QueueFull} if C{queueSize}
            calls already wait, L{PoolClosed} if the pool is not running or
            stops.
        """
        if not self.running:
            return fail(PoolClosed("the pool is not running"))
        if not self._acquirers and self.availablePermits() > 0:
            connection = self._pickWhere(self._isFree)
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
        entry = (waiter, timer)
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

    def _serveAcquirers(self) -> None:
        while self._acquirers and self.availablePermits() > 0:
            connection = self._pickWhere(self._isFree)
            if connection is None:
                return
            waiter, timer = self._acquirers.popleft()
            timer.cancel()
            self._held.add(connection)
            waiter.callback(connection)

    def _forgetAcquirer(self, entry: tuple[Deferred[Any], IDelayedCall]) -> None:
        if entry in self._acquirers:
            self._acquirers.remove(entry)
        if entry[1].active():
            entry[1].cancel()

    def _acquireExpired(self, waiter: Deferred[Any], seconds: float) -> None:
        self._acquirers = deque(entry for entry in self._acquirers if entry[0] is not waiter)
        waiter.errback(AcquireTimeout(f"no connection could be acquired within {seconds}s"))

    # --- metrics and eviction ---------------------------------------------

    def stats(self) -> PoolStats:
        """
        @return: a snapshot of the pool.
        """
        ready = self._mux.readyConnections()
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

    def recordSuccess(self, connection: Any, latency: float) -> None:
        """
        Count a reply that took C{latency} seconds on C{connection}.
        """
        self._record(connection, self._reactor.seconds(), latency)

    def recordError(self, connection: Any) -> None:
        """
        Count a failed request on C{connection}.
        """
        self._record(connection, self._reactor.seconds(), None)

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

    def _metricsFor(self, connection: Any) -> ConnectionMetrics | None:
        metrics = self._metrics.get(connection)
        if metrics is not None:
            return metrics
        try:
            address = self._mux.addressOf(connection)
        except KeyError:
            return None
        now = self._reactor.seconds()
        metrics = self._metrics[connection] = ConnectionMetrics(now, self._policy)
        self._addressOf[connection] = address
        if address not in self._addressMetrics:
            self._addressMetrics[address] = ConnectionMetrics(now, self._policy)
        self._mux.whenClosed(connection).addCallback(self._forget, connection)
        return metrics

    def _forget(self, result: object, connection: Any) -> None:
        self._metrics.pop(connection, None)
        self._inFlight.pop(connection, None)
        address = self._addressOf.pop(connection)
        if address not in self._mux.addresses() and address not in self._addressOf.values():
            self._addressMetrics.pop(address, None)

    def evictIdle(self, maxIdle: float) -> int:
        """
        Recycle every open connection that is neither acquired nor carrying
        requests and was last used (or first seen by the pool) C{maxIdle}
        seconds ago or more. Its slot reconnects at once.

        @return: how many were evicted.
        """
        now = self._reactor.seconds()
        evicted = 0
        for connection in self._mux.readyConnections():
            if connection in self._held or connection in self._inFlight:
                continue
            metrics = self._metricsFor(connection)
            if metrics is not None and now - metrics.lastUsed >= maxIdle:
                self._mux.recycle(connection)
                evicted += 1
        return evicted

    def evictUnhealthy(self) -> int:
        """
        Recycle every open connection that is not acquired and is unhealthy
        under the pool's L{HealthPolicy}; requests it still carries fail
        with the protocol's connection-lost error. Its slot reconnects at
        once.

        @return: how many were evicted.
        """
        evicted = 0
        for connection in self._mux.readyConnections():
            metrics = self._metrics.get(connection)
            if (
                connection not in self._held
                and metrics is not None
                and self._policy.isUnhealthy(metrics)
            ):
                self._mux.recycle(connection)
                evicted += 1
        return evicted

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
