"""
Tests for L{relaypool.transport.pool}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.errors import AcquireTimeout, PoolClosed, QueueFull
from relaypool.transport.health import HealthPolicy
from relaypool.transport.mux import Backoff, UniformMultiplexer
from relaypool.transport.names import Address, StaticNameService
from relaypool.transport.pool import Pool, PoolStats
from tests.echo import EchoServerFactory, clientFactory, serve, waitFor

NAME = "echo.test:80"
CURRENT = Address("10.0.0.1", 80)
OTHER = Address("10.0.0.2", 80)
THIRD = Address("10.0.0.3", 80)


class _MadeElsewhere:
    """
    A connection made outside the pool: an open WebSocket protocol's
    C{is_closed}, C{sendClose} and an echoing C{request}.

    @ivar closes: how many times C{sendClose} was called.
    """

    def __init__(self) -> None:
        self.is_closed: Deferred[None] = Deferred()
        self.closes = 0

    def request(self, payload: bytes) -> Deferred[bytes]:
        return succeed(payload)

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        self.closes += 1

    def closed(self) -> None:
        self.is_closed.callback(None)


class UnconnectedPoolTests(SynchronousTestCase):
    """
    L{Pool} whose multiplexer never gets a connection, on a
    L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        mux = UniformMultiplexer(
            self.reactor,
            StaticNameService({NAME: [CURRENT]}),
            NAME,
            clientFactory("ws://echo.test"),
        )
        self.pool = Pool(self.reactor, mux, queueSize=2, acquireTimeout=10.0)
        self.pool.startService()

    def insertNew(self, address: Address = OTHER, pool: Pool | None = None) -> _MadeElsewhere:
        """
        @return: a connection made elsewhere, inserted into the pool.
        """
        connection = _MadeElsewhere()
        self.assertTrue((pool or self.pool).insert(address, connection))
        return connection

    def test_limitsReadable(self) -> None:
        """
        The pool's C{maxConnections}, C{acquireTimeout} and
        C{maxTotalConnections} are readable.
        """
        pool = Pool(self.reactor, self.pool._mux, maxConnections=3, acquireTimeout=7.5)
        self.assertEqual((pool.maxConnections, pool.acquireTimeout), (3, 7.5))
        self.assertEqual(pool.maxTotalConnections, 0)

    def test_insertedConnectionUsed(self) -> None:
        """
        A connection inserted with L{Pool.insert} sends a queued request,
        serves a waiting acquire and counts in the stats.
        """
        queued, waiting = self.pool.request(b"early"), self.pool.acquire()
        connection = self.insertNew()
        self.assertEqual(self.successResultOf(queued), b"early")
        self.assertIs(self.successResultOf(waiting), connection)
        self.assertEqual((self.pool.stats().total, self.pool.connectionCount()), (1, 1))
        metrics = self.pool.metrics(connection)
        assert metrics is not None
        self.assertEqual(metrics.successes, 1)

    def test_insertRefusedAtCap(self) -> None:
        """
        L{Pool.insert} returns C{False} and adds nothing once the pool holds
        C{maxTotalConnections} connections across all addresses; a
        removal makes room again. With the default 0 there is no cap.
        """
        capped = Pool(self.reactor, self.pool._mux, maxTotalConnections=2)
        capped.startService()
        self.insertNew(OTHER, capped)
        self.insertNew(THIRD, capped)
        self.assertFalse(capped.insert(OTHER, _MadeElsewhere()))
        self.assertEqual(capped.connectionCount(), 2)
        self.assertEqual(len(capped.remove(THIRD)), 1)
        self.insertNew(OTHER, capped)
        for _ in range(5):
            self.insertNew()
        self.assertEqual(self.pool.connectionCount(), 5)

    def test_insertBadInput(self) -> None:
        """
        L{Pool.insert} refuses a non-address or a non-WebSocket protocol
        with L{TypeError}, a closed or already inserted connection with
        L{ValueError}, and raises L{PoolClosed} when the pool is not
        running; C{maxTotalConnections} may not be negative.
        """
        notAnAddress: Any = "10.0.0.2:80"
        self.assertRaises(TypeError, self.pool.insert, notAnAddress, _MadeElsewhere())
        self.assertRaises(TypeError, self.pool.insert, OTHER, object())
        closed = _MadeElsewhere()
        closed.closed()
        self.assertRaises(ValueError, self.pool.insert, OTHER, closed)
        inserted = self.insertNew()
        self.assertRaises(ValueError, self.pool.insert, THIRD, inserted)
        self.assertRaises(TypeError, self.pool.acquire, address=notAnAddress)
        self.assertRaises(ValueError, Pool, self.reactor, self.pool._mux, maxTotalConnections=-1)
        self.pool.stopService()
        self.assertRaises(PoolClosed, self.pool.insert, OTHER, _MadeElsewhere())

    def test_acquireByAddress(self) -> None:
        """
        C{acquire(address=...)} takes only a connection to that address,
        waiting (without holding up acquires for other addresses) until
        one is there.
        """
        other, third = self.insertNew(OTHER), self.insertNew(THIRD)
        self.assertIs(self.successResultOf(self.pool.acquire(address=THIRD)), third)
        wantsThird = self.pool.acquire(address=THIRD)
        self.assertIs(self.successResultOf(self.pool.acquire()), other)
        self.assertNoResult(wantsThird)
        self.pool.release(other)
        self.assertNoResult(wantsThird)
        self.assertIs(self.successResultOf(self.pool.acquire(address=OTHER)), other)
        self.pool.release(third)
        self.assertIs(self.successResultOf(wantsThird), third)

    def test_acquireByAddressNotYetThere(self) -> None:
        """
        C{acquire(address=...)} for an address without a connection is
        served by a connection inserted for it later, or times out.
        """
        served, expires = self.pool.acquire(address=OTHER), self.pool.acquire(address=THIRD)
        connection = self.insertNew(OTHER)
        self.assertIs(self.successResultOf(served), connection)
        self.reactor.advance(10.0)
        self.failureResultOf(expires).trap(AcquireTimeout)

    def test_removeReturnsInserted(self) -> None:
        """
        L{Pool.remove} takes the connections inserted for an address out of
        the pool without closing them, releases them if acquired, and
        returns them; for an address with none it returns an empty list.
        """
        first, second, kept = self.insertNew(), self.insertNew(), self.insertNew(THIRD)
        self.assertIs(self.successResultOf(self.pool.acquire(address=OTHER)), first)
        self.assertEqual(self.pool.remove(OTHER), [first, second])
        self.assertEqual((first.closes, second.closes), (0, 0))
        self.assertEqual((self.pool.activeConnections(), self.pool.connectionCount()), (0, 1))
        self.assertIsNone(self.pool.metrics(first))
        self.assertEqual(self.pool.remove(OTHER), [])
        self.assertIs(self.successResultOf(self.pool.acquire()), kept)

    def test_insertedClosedLeaves(self) -> None:
        """
        An inserted connection that closes leaves the pool, acquired or
        not, and its metrics go.
        """
        connection = self.insertNew()
        self.successResultOf(self.pool.acquire())
        self.pool.recordError(connection)
        connection.closed()
        self.assertEqual((self.pool.connectionCount(), self.pool.activeConnections()), (0, 0))
        self.assertIsNone(self.pool.metrics(connection))
        self.assertIsNone(self.pool.metrics(OTHER))

    def test_evictInsertedCloses(self) -> None:
        """
        Eviction closes an inserted connection with a close handshake and
        takes it out of the pool: an unhealthy one (here by seed 002's
        total error count, C{maxErrors}) and an idle one.
        """
        pool = Pool(
            self.reactor,
            self.pool._mux,
            healthPolicy=HealthPolicy(maxErrors=2, maxConsecutiveErrors=10, minScore=0.0),
        )
        pool.startService()
        sick, idle = self.insertNew(OTHER, pool), self.insertNew(THIRD, pool)
        for _ in range(2):
            pool.recordError(sick)
            pool.recordSuccess(sick, 0.01)
        self.assertEqual(pool.evictUnhealthy(), 1)
        self.assertEqual((sick.closes, pool.connectionCount()), (1, 1))
        self.reactor.advance(60.0)
        self.assertEqual(pool.evictIdle(60.0), 1)
        self.assertEqual((idle.closes, pool.connectionCount()), (1, 0))

    def test_stopClosesInserted(self) -> None:
        """
        Stopping the pool closes its inserted connections and fires once
        they closed.
        """
        connection = self.insertNew()
        stopped = self.pool.stopService()
        self.assertEqual(connection.closes, 1)
        self.assertNoResult(stopped)
        connection.closed()
        self.assertIsNone(self.successResultOf(stopped))

    def test_recordByAddress(self) -> None:
        """
        L{Pool.recordSuccess} and L{Pool.recordError} given an L{Address}
        count on that address's aggregate, which L{Pool.metrics} returns;
        an address that is neither current nor connected is refused with
        L{KeyError}.
        """
        self.pool.recordSuccess(CURRENT, 0.25)
        self.pool.recordError(CURRENT)
        aggregate = self.pool.metrics(CURRENT)
        assert aggregate is not None
        self.assertEqual((aggregate.successes, aggregate.errors), (1, 1))
        self.assertEqual(aggregate.lastLatency, 0.25)
        self.insertNew(OTHER)
        self.pool.recordError(OTHER)
        self.assertEqual(self.pool.metrics(OTHER).errors, 1)  # type: ignore[union-attr]
        self.assertRaises(KeyError, self.pool.recordSuccess, THIRD, 0.1)
        self.assertRaises(KeyError, self.pool.recordError, THIRD)
        self.assertIsNone(self.pool.metrics(THIRD))

    def test_notRunning(self) -> None:
        """
        A pool that is not running refuses requests and acquires with
        L{PoolClosed}.
        """
        self.pool.stopService()
        self.failureResultOf(self.pool.request(b"x")).trap(PoolClosed)
        self.failureResultOf(self.pool.acquire()).trap(PoolClosed)

    def test_queueFull(self) -> None:
        """
        Requests wait in the queue; once it holds C{queueSize} the next one
        fails at once with L{QueueFull}.
        """
        first = self.pool.request(b"1")
        self.pool.request(b"2")
        self.assertNoResult(first)
        self.failureResultOf(self.pool.request(b"3")).trap(QueueFull)
        self.assertEqual(self.pool.stats().queued, 2)

    def test_cancelQueued(self) -> None:
        """
        Cancelling a queued request frees its place in the queue.
        """
        self.pool.request(b"1").cancel()
        self.assertEqual(self.pool.stats().queued, 0)
        self.flushLoggedErrors()

    def test_acquireTimeout(self) -> None:
        """
        An acquire that gets no connection within its timeout fails with
        L{AcquireTimeout}; without a timeout the pool's default applies.
        """
        explicit, default = self.pool.acquire(timeout=1.0), self.pool.acquire()
        self.reactor.advance(1.0)
        self.failureResultOf(explicit).trap(AcquireTimeout)
        self.assertNoResult(default)
        self.reactor.advance(9.0)
        self.failureResultOf(default).trap(AcquireTimeout)
        self.assertEqual(self.pool.stats().waiting, 0)

    def test_acquireWaitersBounded(self) -> None:
        """
        Beyond C{queueSize} waiting acquires, acquire fails with
        L{QueueFull}.
        """
        self.pool.acquire()
        self.pool.acquire()
        self.failureResultOf(self.pool.acquire()).trap(QueueFull)

    def test_stopFailsWaiting(self) -> None:
        """
        Stopping fails queued requests and waiting acquires with
        L{PoolClosed}, leaves no timer behind, and fires.
        """
        queued, waiting = self.pool.request(b"1"), self.pool.acquire()
        self.pool.startCleanup(5.0)
        self.assertIsNone(self.successResultOf(self.pool.stopService()))
        self.failureResultOf(queued).trap(PoolClosed)
        self.failureResultOf(waiting).trap(PoolClosed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stats(self) -> None:
        """
        L{Pool.stats} counts connections, waiters and queued requests, and
        summarizes on one line.
        """
        self.pool.request(b"1")
        self.pool.acquire()
        stats = self.pool.stats()
        self.assertEqual(stats, PoolStats(0, 0, 0, 0, 1, 1, 0.0))
        self.assertEqual(
            stats.summary(),
            "total=0 active=0 idle=0 healthy=0 waiting=1 queued=1 utilization=0.0%",
        )

    def sicken(self, connection: Any) -> None:
        """
        Record errors on C{connection} until the pool's policy finds it
        unhealthy.
        """
        for _ in range(HealthPolicy().maxConsecutiveErrors):
            self.pool.recordError(connection)
        self.assertFalse(self.pool.isHealthy(connection))

    def test_pickSkipsUnhealthy(self) -> None:
        """
        L{Pool.pick} skips an unhealthy connection while a healthy one is
        open, round after round.
        """
        sick, well = self.insertNew(), self.insertNew()
        self.sicken(sick)
        self.assertEqual([self.pool.pick() for _ in range(4)], [well] * 4)
        self.assertEqual(self.pool.usableConnections(), [well])

    def test_pickUnhealthyWhenNoneHealthy(self) -> None:
        """
        When every open connection is unhealthy, L{Pool.pick} still picks
        among them.
        """
        first, second = self.insertNew(), self.insertNew()
        self.sicken(first)
        self.sicken(second)
        self.assertEqual({self.pool.pick(), self.pool.pick()}, {first, second})

    def test_pickWhere(self) -> None:
        """
        L{Pool.pick} with C{where} picks only a connection for which it is
        true, and L{None} when there is none.
        """
        first, second = self.insertNew(), self.insertNew()
        self.assertIs(self.pool.pick(lambda c: c is second), second)
        self.assertIsNone(self.pool.pick(lambda c: False))
        self.assertIs(self.pool.pick(lambda c: c is first), first)

    def test_pickSkipsAcquired(self) -> None:
        """
        L{Pool.pick} does not pick an acquired connection.
        """
        first, second = self.insertNew(), self.insertNew()
        held = self.successResultOf(self.pool.acquire())
        other = second if held is first else first
        self.assertEqual([self.pool.pick() for _ in range(3)], [other] * 3)

    def test_acquireSkipsUnhealthy(self) -> None:
        """
        L{Pool.acquire} hands out a healthy connection while one is open,
        even when the unhealthy one is next in round-robin order.
        """
        sick, well = self.insertNew(), self.insertNew()
        self.sicken(sick)
        self.assertIs(self.successResultOf(self.pool.acquire()), well)

    def test_recoveredConnectionIsPickedAgain(self) -> None:
        """
        A connection whose metrics recover (a success after its errors ends
        the streak) is healthy again and picked again.
        """
        policy = HealthPolicy(minScore=0.0)
        mux = UniformMultiplexer(
            self.reactor, StaticNameService({}), NAME, clientFactory("ws://echo.test")
        )
        pool = Pool(self.reactor, mux, healthPolicy=policy)
        pool.startService()
        self.addCleanup(pool.stopService)
        sick, well = self.insertNew(pool=pool), self.insertNew(pool=pool)
        for _ in range(policy.maxConsecutiveErrors):
            pool.recordError(sick)
        self.assertEqual({pool.pick(), pool.pick()}, {well})
        pool.recordSuccess(sick, 0.01)
        self.assertTrue(pool.isHealthy(sick))
        self.assertEqual({pool.pick(), pool.pick()}, {sick, well})


class PoolTests(TestCase):
    """
    L{Pool} over real loopback echo servers; the pool's own time is a
    L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def makePool(self, servers: int = 1, perAddress: int = 1, **kwargs: Any) -> Pool:
        self.servers = [EchoServerFactory() for _ in range(servers)]
        self.ports = [serve(self, factory) for factory in self.servers]
        self.names = StaticNameService({NAME: [Address("127.0.0.1", p) for p in self.ports]})
        self.mux = UniformMultiplexer(
            reactor,
            self.names,
            NAME,
            clientFactory("ws://echo.test"),
            connectionsPerAddress=perAddress,
            backoff=Backoff(initial=0.01, jitter=0.0),
        )
        pool = Pool(self.clock, self.mux, **kwargs)
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool

    async def opened(self, count: int) -> list[Any]:
        await waitFor(lambda: len(self.mux.readyConnections()) == count)
        return self.mux.readyConnections()

    async def test_requestReply(self) -> None:
        """
        L{Pool.request} fires with the connection's reply.
        """
        pool = self.makePool()
        await self.opened(1)
        self.assertEqual(await pool.request(b"ping"), b"ping")

    async def test_queuedUntilConnected(self) -> None:
        """
        A request made before any connection opened waits in the queue and
        is sent once one opens.
        """
        pool = self.makePool()
        reply = pool.request(b"early")
        self.assertEqual(pool.stats().queued, 1)
        self.assertEqual(await reply, b"early")

    async def test_roundRobin(self) -> None:
        """
        Requests are spread evenly over every connection.
        """
        pool = self.makePool(servers=2, perAddress=2)
        connections = await self.opened(4)
        for reply in [pool.request(b"%d" % i) for i in range(8)]:
            await reply
        self.assertEqual([pool.metrics(c).successes for c in connections], [2] * 4)

    async def test_maxInFlight(self) -> None:
        """
        A connection carrying C{maxInFlight} requests takes no more; further
        requests queue until a reply arrives.
        """
        pool = self.makePool(maxInFlight=1)
        await self.opened(1)
        held = pool.request(b"hold")
        queued = pool.request(b"next")
        self.assertEqual(pool.stats().queued, 1)
        await waitFor(lambda: len(self.servers[0].held) == 1)
        self.servers[0].releaseHeld()
        self.assertEqual((await held, await queued), (b"hold", b"next"))

    async def test_acquireExclusive(self) -> None:
        """
        An acquired connection is not handed to other acquirers nor used by
        L{Pool.request} until released.
        """
        pool = self.makePool(perAddress=2)
        await self.opened(2)
        first = await pool.acquire()
        second = await pool.acquire()
        third = pool.acquire()
        self.assertNotEqual(first, second)
        self.assertNoResult(third)
        self.assertEqual((pool.activeConnections(), pool.stats().waiting), (2, 1))
        pool.release(first)
        self.assertIs(await third, first)
        self.assertEqual(pool.stats().queued, 0)
        queued = pool.request(b"waits")
        self.assertEqual(pool.stats().queued, 1)
        pool.release(second)
        self.assertEqual(await queued, b"waits")
        self.assertEqual(pool.metrics(second).successes, 1)

    async def test_permits(self) -> None:
        """
        At most C{maxConnections} connections are held at once, even when
        more are free.
        """
        pool = self.makePool(perAddress=2, maxConnections=1)
        await self.opened(2)
        held = await pool.acquire()
        waiting = pool.acquire()
        self.assertEqual(pool.availablePermits(), 0)
        self.assertNoResult(waiting)
        pool.release(held)
        pool.release(held)
        await waiting
        self.assertEqual(pool.availablePermits(), 0)

    async def test_metrics(self) -> None:
        """
        Requests record successes and latency per connection and per
        address.
        """
        pool = self.makePool(perAddress=2)
        connections = await self.opened(2)
        for i in range(4):
            await pool.request(b"%d" % i)
        metrics = pool.metrics(connections[0])
        aggregate = pool.metrics(Address("127.0.0.1", self.ports[0]))
        assert metrics is not None and aggregate is not None
        self.assertEqual((metrics.successes, metrics.lastLatency), (2, 0.0))
        self.assertEqual(aggregate.successes, 4)

    async def test_metricsForgotten(self) -> None:
        """
        A closed connection's metrics are dropped.
        """
        pool = self.makePool()
        (connection,) = await self.opened(1)
        pool.recordSuccess(connection, 0.1)
        await self.mux.recycle(connection)
        self.assertIsNone(pool.metrics(connection))

    async def test_evictIdle(self) -> None:
        """
        Connections unused for C{maxIdle} are recycled and replaced.
        """
        pool = self.makePool(perAddress=2)
        first, second = await self.opened(2)
        self.assertEqual(pool.evictIdle(60.0), 0)
        self.clock.advance(30)
        pool.recordSuccess(second, 0.01)
        self.clock.advance(30)
        self.assertEqual(pool.evictIdle(60.0), 1)
        await self.mux.whenClosed(first)
        await waitFor(lambda: len(self.mux.readyConnections()) == 2)
        self.assertIn(second, self.mux.readyConnections())

    async def test_evictUnhealthy(self) -> None:
        """
        Connections with C{maxConsecutiveErrors} errors in a row are
        recycled and replaced.
        """
        pool = self.makePool(perAddress=2, healthPolicy=HealthPolicy(maxConsecutiveErrors=2))
        first, second = await self.opened(2)
        pool.recordError(first)
        pool.recordError(first)
        pool.recordSuccess(second, 0.01)
        pool.recordError(second)
        self.assertEqual(pool.stats().healthy, 1)
        self.assertEqual(pool.evictUnhealthy(), 1)
        await self.mux.whenClosed(first)
        await waitFor(lambda: len(self.mux.readyConnections()) == 2)

    async def test_cleanupSurvivesError(self) -> None:
        """
        The cleanup loop runs both evictions each interval, and an
        exception in one is logged without stopping the loop.
        """
        pool = self.makePool()
        await self.opened(1)
        calls: list[str] = []

        def broken(maxIdle: float) -> int:
            calls.append("idle")
            raise RuntimeError("broken eviction")

        def unhealthy() -> int:
            calls.append("unhealthy")
            return 0

        pool.evictIdle = broken  # type: ignore[method-assign]
        pool.evictUnhealthy = unhealthy  # type: ignore[method-assign]
        handle = pool.startCleanup(10.0)
        self.clock.advance(10.0)
        self.clock.advance(10.0)
        handle.stop()
        self.clock.advance(10.0)
        self.assertEqual(calls, ["idle", "unhealthy"] * 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_stopClosesCleanly(self) -> None:
        """
        Stopping the pool closes every connection with a close handshake
        and fires once they are closed.
        """
        pool = self.makePool(perAddress=2)
        connections = await self.opened(2)
        await pool.stopService()
        self.assertTrue(all(c.wasClean for c in connections))
        await waitFor(lambda: self.servers[0].closes == [True, True])
