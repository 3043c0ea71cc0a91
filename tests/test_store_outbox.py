"""
Tests for L{relaypool.store.sqlite.SQLiteEventStore} as a durable outbox, and for
its durability when the process is killed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from relaypool.errors import QueueFull
from relaypool.nostr.filter import Filter
from relaypool.store.sqlite import RelayDelivery
from tests.test_store import NOW, FakeWallClock, StoreTestMixin, note

A, B = "wss://a.example", "wss://b.example"


class OutboxTests(StoreTestMixin, TestCase):
    """
    Enqueueing events, recording relays' answers, and what stays pending.
    """

    @inlineCallbacks
    def test_enqueue(self) -> Any:
        """
        An enqueued event is pending for every relay, none accepted yet, with
        the store's clock as its enqueue time.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        [entry] = yield store.pending()
        self.assertEqual(entry.event, event)
        self.assertEqual(entry.enqueuedAt, NOW)
        fresh = RelayDelivery(accepted=False, attempts=0, lastMessage="", lastAttemptAt=None)
        self.assertEqual(dict(entry.relays), {A: fresh, B: fresh})

    @inlineCallbacks
    def test_recordRefusal(self) -> Any:
        """
        A refusal is recorded with its message and time, and the event stays
        pending.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock)
        event = note()
        yield store.enqueue(event, [A])
        clock.now = NOW + 5
        yield store.recordResult(event.id, A, False, "rate-limited: slow down")
        yield store.recordResult(event.id, A, False, "error: timeout")
        [entry] = yield store.pending()
        self.assertEqual(
            entry.relays[A],
            RelayDelivery(
                accepted=False, attempts=2, lastMessage="error: timeout", lastAttemptAt=NOW + 5
            ),
        )

    @inlineCallbacks
    def test_partlyAccepted(self) -> Any:
        """
        An event some relays accepted stays pending, with their acceptance
        recorded.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, True, "")
        [entry] = yield store.pending()
        self.assertTrue(entry.relays[A].accepted)
        self.assertFalse(entry.relays[B].accepted)

    @inlineCallbacks
    def test_allAccepted(self) -> Any:
        """
        An event every relay accepted leaves the outbox.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, True, "")
        yield store.recordResult(event.id, B, True, "duplicate: have it")
        self.assertEqual((yield store.pending()), [])

    @inlineCallbacks
    def test_acceptedStaysAccepted(self) -> Any:
        """
        A relay's later refusal does not undo its acceptance.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, True, "")
        yield store.recordResult(event.id, A, False, "error: later")
        [entry] = yield store.pending()
        self.assertTrue(entry.relays[A].accepted)

    @inlineCallbacks
    def test_refusedSettles(self) -> Any:
        """
        A relay that refused an event for good is recorded as refused (and
        settled) and stays so after a later temporary answer; once the
        other relay accepted, the event leaves the outbox.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, False, "blocked: no", refused=True)
        yield store.recordResult(event.id, A, False, "error: later")
        [entry] = yield store.pending()
        self.assertEqual(
            (entry.relays[A].refused, entry.relays[A].settled, entry.relays[B].settled),
            (True, True, False),
        )
        yield store.recordResult(event.id, B, True, "")
        self.assertEqual((yield store.pending()), [])

    @inlineCallbacks
    def test_allRefused(self) -> Any:
        """
        An event every relay refused for good leaves the outbox.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, False, "blocked: no", refused=True)
        yield store.recordResult(event.id, B, False, "pow: difficulty 30", refused=True)
        self.assertEqual((yield store.pending()), [])

    @inlineCallbacks
    def test_enqueueAgain(self) -> Any:
        """
        Enqueueing an event already pending adds the new relays and keeps
        what was recorded for the others.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A])
        yield store.recordResult(event.id, A, False, "error: x")
        yield store.enqueue(event, [A, B])
        [entry] = yield store.pending()
        self.assertEqual(sorted(entry.relays), [A, B])
        self.assertEqual(entry.relays[A].attempts, 1)

    @inlineCallbacks
    def test_noRelays(self) -> Any:
        """
        Enqueueing for no relay records nothing.
        """
        store = self.openStore()
        yield store.enqueue(note(), [])
        self.assertEqual((yield store.pending()), [])

    @inlineCallbacks
    def test_oldestFirst(self) -> Any:
        """
        C{pending} lists events in the order they were enqueued.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - i, content=str(i)) for i in range(5)]
        yield gatherResults([store.enqueue(e, [A]) for e in events])
        self.assertEqual([entry.event for entry in (yield store.pending())], events)

    @inlineCallbacks
    def test_discard(self) -> Any:
        """
        A discarded event leaves the outbox.
        """
        store = self.openStore()
        kept, dropped = note(content="k"), note(content="d")
        yield gatherResults([store.enqueue(kept, [A]), store.enqueue(dropped, [A, B])])
        yield store.discard(dropped.id)
        self.assertEqual([entry.event for entry in (yield store.pending())], [kept])

    @inlineCallbacks
    def test_unknownResult(self) -> Any:
        """
        A result for an event or relay not in the outbox is ignored.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A])
        yield store.recordResult("0" * 64, A, True, "")
        yield store.recordResult(event.id, B, True, "")
        [entry] = yield store.pending()
        self.assertEqual(list(entry.relays), [A])

    @inlineCallbacks
    def test_maxOutbox(self) -> Any:
        """
        Past C{maxOutbox} events, C{enqueue} fails with L{QueueFull}; adding
        relays to a pending event still works.
        """
        store = self.openStore(maxOutbox=2)
        events = [note(content=str(i)) for i in range(3)]
        yield store.enqueue(events[0], [A])
        yield store.enqueue(events[1], [A])
        yield self.assertFailure(store.enqueue(events[2], [A]), QueueFull)
        yield store.enqueue(events[0], [B])
        self.assertEqual(len((yield store.pending())), 2)

    @inlineCallbacks
    def test_failureUndoesOnlyItsCall(self) -> Any:
        """
        A call failing in a batch of writes leaves the other writes of the
        batch committed.
        """
        store = self.openStore(maxOutbox=2)
        events = [note(content=str(i)) for i in range(3)]
        enqueued = [store.enqueue(e, [A]) for e in events]
        saved = store.save(events[2])
        yield self.assertFailure(enqueued.pop(), QueueFull)
        yield gatherResults(enqueued)
        self.assertTrue((yield saved))
        self.assertEqual([entry.event for entry in (yield store.pending())], events[:2])
        self.assertEqual((yield store.query([Filter()])), [events[2]])

    @inlineCallbacks
    def test_reopen(self) -> Any:
        """
        The outbox is there when the store is reopened.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A])
        yield store.close()
        reopened = self.openStore(store.path)
        self.assertEqual([entry.event for entry in (yield reopened.pending())], [event])

    @inlineCallbacks
    def test_refusedSurvivesReopen(self) -> Any:
        """
        A relay's refusal for good is still recorded when the store is
        reopened.
        """
        store = self.openStore()
        event = note()
        yield store.enqueue(event, [A, B])
        yield store.recordResult(event.id, A, False, "restricted: members only", refused=True)
        yield store.close()
        reopened = self.openStore(store.path)
        [entry] = yield reopened.pending()
        self.assertEqual(
            (entry.relays[A].refused, entry.relays[A].lastMessage, entry.relays[B].refused),
            (True, "restricted: members only", False),
        )


# Run by a child process: enqueue and save the events whose JSON is on
# stdin, print their ids once every Deferred fired, then wait to be killed.
_CHILD = """
import sys
from twisted.internet import defer, reactor
from relaypool.nostr.event import Event
from relaypool.store.sqlite import SQLiteEventStore

events = [Event.fromJSON(line) for line in sys.stdin.buffer.read().splitlines()]
store = SQLiteEventStore(sys.argv[1], batchSize=int(sys.argv[2]))

def ready(_):
    sys.stdout.write("ready\\n")
    sys.stdout.flush()

work = [store.enqueue(e, ["wss://a.example"]) for e in events]
work += [store.save(e) for e in events]
defer.gatherResults(work).addCallback(ready)
reactor.callLater(60, reactor.stop)
reactor.run()
"""


class _Child(ProcessProtocol):
    """
    Fires C{ready} when the child says so, and C{ended} when it ended.
    """

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[BaseException] = Deferred()
        self.output = b""
        self.errors = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready\n" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.errors.decode(errors="replace")))
        self.ended.callback(reason.value)


class CrashTests(StoreTestMixin, TestCase):
    """
    What a process killed with SIGKILL leaves in the database.
    """

    timeout = 30

    @inlineCallbacks
    def test_resumeAfterKill(self) -> Any:
        """
        After the process is killed, the reopened store has every event it
        enqueued and saved before their Deferreds fired.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "store.db")
        events = [note(content=str(i), tags=[["t", "crash"]]) for i in range(200)]
        child = _Child()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = dict(os.environ, PYTHONPATH=root)
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, sys.executable, [sys.executable, "-c", _CHILD, path, "16"], env=environment
        )
        transport.write(b"\n".join(e.toJSON() for e in events))
        transport.closeStdin()
        try:
            yield child.ready
        finally:
            if not child.ended.called:
                transport.signalProcess("KILL")
            reason = yield child.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, 9)

        store = self.openStore(path)
        pending = yield store.pending()
        self.assertEqual([entry.event for entry in pending], events)
        stored = yield store.query([Filter(tags=(("t", frozenset(["crash"])),))])
        self.assertEqual({e.id for e in stored}, {e.id for e in events})
