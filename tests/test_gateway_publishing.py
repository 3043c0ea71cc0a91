"""
Tests for L{relaypool.gateway.publishing.EventVerifier}: the signature
checks of downstream C{EVENT}s, on a thread of their own with a reactor that
takes calls from threads, at once with a test clock.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.errors import InvalidEvent
from relaypool.gateway.facade import RelayFacade
from relaypool.gateway.publishing import VERIFY_AT_ONCE_BELOW, EventVerifier, verdict
from relaypool.testing import forgeSignature, makeEvent
from tests.test_gateway_protocol import _FakeRegistry


class InlineVerifierTests(SynchronousTestCase):
    """
    With a reactor that does not take calls from threads, the verifier
    checks each event at once.
    """

    def test_verdictAtOnce(self) -> None:
        """
        The verdict is given before L{EventVerifier.verify} returns: L{None}
        for a valid event, the L{InvalidEvent} for a forged one.
        """
        verifier = EventVerifier(Clock())
        verdicts: list[Any] = []
        good, forged = makeEvent(content="good"), forgeSignature(makeEvent(content="forged"))
        self.assertTrue(verifier.verify(good, verdicts.append))
        self.assertTrue(verifier.verify(forged, verdicts.append))
        self.assertIsNone(verdicts[0])
        self.assertIsInstance(verdicts[1], InvalidEvent)
        self.assertEqual(str(verdicts[1]), "invalid: bad signature")

    def test_checkFailure(self) -> None:
        """
        A check that fails with an unexpected exception gives an
        L{InvalidEvent} starting with C{"error:"}, not an exception.
        """

        class Broken:
            id = "ab" * 32

            def verify(self) -> None:
                raise RuntimeError("broken")

        outcome = verdict(Broken())  # type: ignore[arg-type]
        assert outcome is not None
        self.assertTrue(str(outcome).startswith("error: could not check the event"), outcome)
        self.assertEqual(outcome.eventId, "ab" * 32)


class ThreadedVerifierTests(TestCase):
    """
    With the real reactor, the verifier checks events on its thread and
    hands the verdicts back to the reactor thread, in order.
    """

    def setUp(self) -> None:
        self.verifier = EventVerifier(reactor)
        self.addCleanup(self.verifier.stop)

    def test_verdictsInOrder(self) -> None:
        """
        The verdicts come in the order the events were given, each in the
        reactor thread, the forged events' as L{InvalidEvent}s.
        """
        events = [makeEvent(content=str(i)) for i in range(20)]
        events[3] = forgeSignature(events[3])
        events[11] = forgeSignature(events[11])
        verdicts: list[tuple[str, bool, bool]] = []
        done: Deferred[None] = Deferred()

        def verified(event: Any, verdict: InvalidEvent | None) -> None:
            isMain = threading.current_thread() is threading.main_thread()
            verdicts.append((event.content, verdict is None, isMain))
            if len(verdicts) == len(events):
                done.callback(None)

        for event in events:
            self.assertTrue(self.verifier.verify(event, lambda v, e=event: verified(e, v)))

        def check(_: None) -> None:
            expected = [(str(i), i not in (3, 11), True) for i in range(20)]
            self.assertEqual(verdicts, expected)
            self.assertEqual(self.verifier.pending, 0)

        return done.addCallback(check)

    def test_bounded(self) -> None:
        """
        Past C{maxPending} events waiting for their check, L{verify}
        refuses the next one (returns C{False}, never calls it back).
        """
        self.verifier.maxPending = 1
        verdicts: list[Any] = []
        done: Deferred[None] = Deferred()
        self.assertTrue(
            self.verifier.verify(makeEvent(content="first"), lambda v: done.callback(v))
        )
        self.assertFalse(self.verifier.verify(makeEvent(content="second"), verdicts.append))

        def check(verdict: Any) -> None:
            self.assertIsNone(verdict)
            self.assertEqual(verdicts, [])

        return done.addCallback(check)

    def facade(self, maxVerifying: int) -> tuple[RelayFacade, _FakeRegistry, _StuckStore]:
        registry = _FakeRegistry()
        store = _StuckStore()
        facade = RelayFacade(
            registry,  # type: ignore[arg-type]
            store=store,  # type: ignore[arg-type]
            okPolicy="local",
            reactor=reactor,
            maxVerifying=maxVerifying,
        )
        self.addCleanup(facade.close)
        return facade, registry, store

    def publish(self, facade: RelayFacade, session: Any, event: Any) -> None:
        facade.handleMessage(session, orjson.dumps(["EVENT", event.toDict()]))

    def test_lightLoadChecksAtOnce(self) -> None:
        """
        An C{EVENT} arriving while fewer than L{VERIFY_AT_ONCE_BELOW} events
        wait for their answer is checked at once, not handed to the
        verifier thread: a forged one is answered C{OK false "invalid:
        ..."} before C{handleMessage} returns.
        """
        facade, registry, store = self.facade(maxVerifying=0)
        session = facade.connect(1)
        for i in range(VERIFY_AT_ONCE_BELOW - 1):
            self.publish(facade, session, makeEvent(content=f"waiting {i}"))
        event = forgeSignature(makeEvent(content="forged"))
        self.publish(facade, session, event)
        self.assertEqual(registry.received[1], [["OK", event.id, False, "invalid: bad signature"]])

    def test_loadHandsOver(self) -> None:
        """
        An C{EVENT} arriving while L{VERIFY_AT_ONCE_BELOW} events wait for
        the store goes to the verifier thread, and is answered once checked
        and stored, after them.
        """
        facade, registry, store = self.facade(maxVerifying=10)
        session = facade.connect(1)
        events = [makeEvent(content=str(i)) for i in range(VERIFY_AT_ONCE_BELOW + 1)]
        for event in events[:-1]:
            self.publish(facade, session, event)
        self.assertEqual(len(store.saves), VERIFY_AT_ONCE_BELOW)
        self.publish(facade, session, events[-1])
        self.assertEqual(len(store.saves), VERIFY_AT_ONCE_BELOW)
        done: Deferred[None] = Deferred()
        store.onSave = lambda: reactor.callLater(0, done.callback, None)

        def saved(_: None) -> None:
            for _, d in store.saves:
                d.callback(True)
            self.assertEqual(registry.received[1], [["OK", e.id, True, ""] for e in events])

        return done.addCallback(saved)

    def test_facadeRefusesWhenFull(self) -> None:
        """
        An C{EVENT} that would go to the verifier thread while it is full
        is answered C{OK false "rate-limited: ..."} at once.
        """
        facade, registry, store = self.facade(maxVerifying=0)
        session = facade.connect(1)
        for i in range(VERIFY_AT_ONCE_BELOW):
            self.publish(facade, session, makeEvent(content=f"waiting {i}"))
        event = makeEvent(content="refused")
        self.publish(facade, session, event)
        ((verb, eventId, accepted, message),) = registry.received[1]
        self.assertEqual((verb, eventId, accepted), ("OK", event.id, False))
        self.assertTrue(message.startswith("rate-limited: 0 events are waiting"), message)
        self.assertEqual(facade.stats().rateLimited, 1)


class _StuckStore:
    """
    A store whose saves wait until the test fires them.
    """

    def __init__(self) -> None:
        self.saves: list[tuple[Any, Deferred[bool]]] = []
        self.onSave: Any = None

    def save(self, event: Any) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.saves.append((event, d))
        if self.onSave is not None:
            self.onSave()
        return d
