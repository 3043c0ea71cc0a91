"""
Tests for L{relaypool.upstream.verifying} and for the RelayPool's inbound
path when it verifies on a worker thread: the worker is a test double that
runs its jobs when the test says, and the relays are L{FakeRelay}s on a
L{MemoryNetwork}, so every interleaving is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txaio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter
from relaypool.testing import FakeRelay, MemoryNetwork, forgeSignature, makeEvent
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import RelayPool
from relaypool.upstream.verifying import Verifier, verifyBatch

KIND1 = Filter.fromDict({"kinds": [1]})


@implementer(IReactorFromThreads)
class ThreadsNetwork(MemoryNetwork):
    """
    A L{MemoryNetwork} whose C{callFromThread} runs the call at once: the
    "threads" are the test's L{ManualWorkers}, which run on this thread.
    """

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        callable(*args, **kwargs)


class ManualWorkers:
    """
    A L{relaypool.upstream.verifying.WorkerPool} whose jobs wait until
    L{run}.

    @ivar verified: every event a job verified, in order.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[bool, Any], object] | None, Callable[..., Any], tuple[Any, ...]]] = []
        self.verified: list[Event] = []
        self.running = False
        self.stopped = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.stopped = True

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        self.jobs.append((onResult, func, args))

    def run(self) -> int:
        """
        Run the jobs waiting now (not those they lead to).

        @return: how many ran.
        """
        jobs, self.jobs = self.jobs, []
        for onResult, func, args in jobs:
            if func is verifyBatch:
                self.verified.extend(args[0])
            try:
                result = func(*args)
            except Exception:
                if onResult is not None:
                    onResult(False, Failure())
            else:
                if onResult is not None:
                    onResult(True, result)
        return len(jobs)


class VerifierTests(SynchronousTestCase):
    """
    L{Verifier} alone.
    """

    def setUp(self) -> None:
        self.network = ThreadsNetwork()
        self.workers = ManualWorkers()
        self.results: list[tuple[list[str], list[str | None]]] = []
        self.verifier = Verifier(
            self.network,
            lambda events, errors: self.results.append(([e.id for e in events], errors)),
            workers=self.workers,
        )
        self.verifier.start()

    def test_verifyBatch(self) -> None:
        """
        verifyBatch gives None for a valid event and the reason for an
        invalid one, in order.
        """
        good = makeEvent()
        forged = forgeSignature(makeEvent())
        self.assertEqual(verifyBatch([good, forged]), [None, "invalid: bad signature"])

    def test_oneBatchPerIteration(self) -> None:
        """
        The events given during one reactor iteration go to the worker as
        one batch when the iteration ends, and come back together.
        """
        events = [makeEvent(content=str(i)) for i in range(3)]
        for event in events:
            self.verifier.verify(event)
        self.assertEqual(self.workers.jobs, [])
        self.network.advance(0)
        self.assertEqual(len(self.workers.jobs), 1)
        self.workers.run()
        self.assertEqual(self.results, [([e.id for e in events], [None, None, None])])

    def test_stopWaitsForTheBatchInTheThread(self) -> None:
        """
        stop() waits for the batch a worker is verifying, drops its result,
        then stops the workers.
        """
        self.verifier.verify(makeEvent())
        self.network.advance(0)
        stopped = self.verifier.stop()
        self.assertNoResult(stopped)
        self.assertFalse(self.workers.stopped)
        self.workers.run()
        self.successResultOf(stopped)
        self.assertTrue(self.workers.stopped)
        self.assertEqual(self.results, [])

    def test_stopDropsWhatWasNotHandedOver(self) -> None:
        """
        Events not handed to the worker yet are dropped by stop(), and no
        call is left scheduled.
        """
        self.verifier.verify(makeEvent())
        self.successResultOf(self.verifier.stop())
        self.assertEqual(self.network.getDelayedCalls(), [])
        self.assertEqual(self.workers.jobs, [])
        self.assertTrue(self.workers.stopped)


class _SaveManyRecorder:
    """
    The part of an L{IEventStore} that a pool saving events uses: records
    the ids of each L{saveMany} call.
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def saveMany(self, events: list[Event]) -> Deferred[list[bool]]:
        self.calls.append([event.id for event in events])
        return succeed([True] * len(events))


class PoolVerificationTests(SynchronousTestCase):
    """
    A L{RelayPool} verifying on a (test double) worker, with fake relays
    on a memory network.
    """

    def setUp(self) -> None:
        self.network = ThreadsNetwork()
        savedLoop = txaio.config.loop
        txaio.config.loop = self.network
        self.addCleanup(setattr, txaio.config, "loop", savedLoop)
        self.workers = ManualWorkers()

    def startRelay(self, *events: Event) -> FakeRelay:
        fake = FakeRelay(self.network)
        fake.store(*events)
        fake.start()

        def stop() -> None:
            stopped = fake.stop()
            self.network.flush()
            self.successResultOf(stopped)

        self.addCleanup(stop)
        return fake

    def makePool(self, *fakes: FakeRelay, **kwargs: Any) -> RelayPool:
        """
        A started pool connected to C{fakes}, verifying on L{workers}.
        """
        pool = RelayPool(
            self.network,
            nameService=StaticNameService(),
            fetchInformation=False,
            pingInterval=0,
            eoseTimeout=0,
            **kwargs,
        )
        if pool._verifier is not None:
            pool._verifier = Verifier(self.network, pool._verified, workers=self.workers)
        for fake in fakes:
            pool.addRelay(fake.url)
        pool.startService()

        def stop() -> None:
            if pool.running:
                stopped = pool.stopService()
                self.workers.run()
                self.network.flush()
                self.successResultOf(stopped)

        self.addCleanup(stop)
        self.network.flush()
        self.assertEqual(pool.countActiveRelays(), len(fakes))
        return pool

    def settle(self) -> None:
        """
        Move bytes and run the workers until nothing is left to do.
        """
        while True:
            self.network.flush()
            if not self.workers.run():
                return

    def record(self, pool: RelayPool) -> tuple[list[Any], Callable[..., Any]]:
        """
        @return: a list of what the subscriptions opened with the returned
            function hear, in order: C{(name, content)} per event and
            C{(name, "EOSE")}.
        """
        heard: list[Any] = []

        def subscribe(name: str, **kwargs: Any) -> Any:
            subscription = pool.subscribe([KIND1], **kwargs)
            subscription.onEvent(lambda event, url: heard.append((name, event.content)))
            subscription.onEOSE(lambda: heard.append((name, "EOSE")))
            return subscription

        return heard, subscribe

    def test_deliveredAfterVerificationInArrivalOrder(self) -> None:
        """
        Events are delivered once the worker verified them, in the order
        they arrived, and the relay's EOSE after them.
        """
        events = [makeEvent(content=str(i), createdAt=100 - i) for i in range(3)]
        fake = self.startRelay(*events)
        pool = self.makePool(fake)
        heard, subscribe = self.record(pool)
        subscribe("s")
        self.network.flush()
        self.assertEqual(heard, [])
        self.assertEqual(len(self.workers.jobs), 1)
        self.settle()
        self.assertEqual(heard, [("s", "0"), ("s", "1"), ("s", "2"), ("s", "EOSE")])

    def test_storedInOneCallPerBatch(self) -> None:
        """
        The new valid events a verified batch settles go to the store in
        one L{IEventStore.saveMany} call, in arrival order; a forged one
        does not.
        """
        good = [makeEvent(content=str(i), createdAt=100 - i) for i in range(3)]
        forged = forgeSignature(makeEvent(content="forged", createdAt=90))
        fake = self.startRelay(*good, forged)
        store = _SaveManyRecorder()
        pool = self.makePool(fake, store=store)
        pool.subscribe([KIND1])
        self.settle()
        self.assertEqual(store.calls, [[event.id for event in good]])

    def test_verifiedEventWaitsForTheOnesBefore(self) -> None:
        """
        An event already verified (for another subscription) that arrives
        behind one being verified is not delivered before it: each
        subscription hears its events in arrival order.
        """
        old = makeEvent(content="old", createdAt=50)
        fake = self.startRelay(old)
        pool = self.makePool(fake)
        heard, subscribe = self.record(pool)
        subscribe("first")
        self.settle()
        new = makeEvent(content="new", createdAt=100)
        fake.store(new)
        subscribe("second")
        self.network.flush()
        self.assertEqual([call for call in heard if call[0] == "second"], [])
        self.settle()
        self.assertEqual(
            [call for call in heard if call[0] == "second"],
            [("second", "new"), ("second", "old"), ("second", "EOSE")],
        )
        self.assertEqual([e.content for e in self.workers.verified], ["old", "new"])

    def test_copyArrivingDuringVerificationIsNotVerifiedAgain(self) -> None:
        """
        Copies of an event that other relays send while it is being verified
        join that verification: the event is verified once, delivered once,
        and each copy is counted as received.
        """
        event = makeEvent(content="shared")
        fakes = [self.startRelay(event) for _ in range(3)]
        pool = self.makePool(*fakes)
        heard, subscribe = self.record(pool)
        subscribe("s")
        self.network.flush()
        self.settle()
        self.assertEqual(heard, [("s", "shared"), ("s", "EOSE")])
        self.assertEqual([e.id for e in self.workers.verified], [event.id])
        stats = pool.stats()
        self.assertEqual([stats[f.url + "/"].eventsReceived for f in fakes], [1, 1, 1])
        self.assertEqual(sum(stats[f.url + "/"].eventsUnique for f in fakes), 1)

    def test_forgedCopyInFlightDoesNotHideGenuine(self) -> None:
        """
        When the copy being verified turns out forged, a genuine copy that
        arrived meanwhile from another relay is verified in its turn and
        delivered; the forger is counted.
        """
        event = makeEvent(content="genuine")
        forger = self.startRelay(event)
        forger.misbehaviour.forge = True
        honest = self.startRelay(event)
        pool = self.makePool(forger, honest)
        heard, subscribe = self.record(pool)
        subscription = subscribe("s")
        delivered: list[str] = []
        subscription.onEvent(lambda e, url: delivered.append(e.sig))
        self.settle()
        self.assertEqual(heard, [("s", "genuine"), ("s", "EOSE")])
        self.assertEqual(delivered, [event.sig])
        self.assertEqual([e.sig for e in self.workers.verified], [forgeSignature(event).sig, event.sig])
        stats = pool.stats()
        self.assertEqual((stats[forger.url + "/"].eventsInvalid, stats[honest.url + "/"].eventsUnique), (1, 1))

    def test_bulkResultsDeliveredAPortionPerTurn(self) -> None:
        """
        Verified events that come back from the worker in bulk are
        delivered about 64 KB per reactor turn, not in one burst.
        """
        events = [makeEvent(content=str(i) * 40000, createdAt=100 - i) for i in range(4)]
        fake = self.startRelay(*events)
        pool = self.makePool(fake)
        heard, subscribe = self.record(pool)
        turns: list[int] = []
        advance = pool._advance

        def turn() -> None:
            turns.append(len(heard))
            advance()

        self.patch(pool, "_advance", turn)
        subscribe("s")
        self.settle()
        self.assertEqual(heard, [("s", str(i) * 40000) for i in range(4)] + [("s", "EOSE")])
        self.assertEqual(turns, [0, 2, 4])

    def test_fullQueuePausesReading(self) -> None:
        """
        When verifyQueueSize events wait for verification the pool pauses
        reading from its relays, and resumes once half of them are done;
        nothing is lost or reordered.
        """
        events = [makeEvent(content=str(i), createdAt=100 - i) for i in range(12)]
        fake = self.startRelay(*events)
        pool = self.makePool(fake, verifyQueueSize=4)
        heard, subscribe = self.record(pool)
        subscribe("s")
        self.network.flush()
        self.assertTrue(pool.totals().paused)
        self.settle()
        self.assertFalse(pool.totals().paused)
        self.assertEqual(heard, [("s", str(i)) for i in range(12)] + [("s", "EOSE")])

    def test_stopWithVerificationsInFlight(self) -> None:
        """
        stopService waits for the batch in the worker, delivers nothing
        more, and stops the worker.
        """
        fake = self.startRelay(makeEvent())
        pool = self.makePool(fake)
        heard, subscribe = self.record(pool)
        subscribe("s")
        self.network.flush()
        stopped = pool.stopService()
        self.network.flush()
        self.assertNoResult(stopped)
        self.workers.run()
        self.network.flush()
        self.successResultOf(stopped)
        self.assertTrue(self.workers.stopped)
        self.assertEqual(heard, [])

    def test_withoutThreadsVerifiesInline(self) -> None:
        """
        With verifyThreads=0 the pool verifies on the reactor thread and
        delivers each event as it arrives.
        """
        fake = self.startRelay(makeEvent(content="now"))
        pool = self.makePool(fake, verifyThreads=0)
        heard, subscribe = self.record(pool)
        subscribe("s")
        self.network.flush()
        self.assertEqual(heard, [("s", "now"), ("s", "EOSE")])
        self.assertEqual(self.workers.jobs, [])
