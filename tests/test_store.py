"""
Tests for L{relaypool.store.sqlite.SQLiteEventStore} as an event store.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.errors import QueueFull, SchemaVersionError, StoreError
from relaypool.nostr.event import Event, isAddressable, isReplaceable, publicKeyFor
from relaypool.nostr.filter import Filter
from relaypool.store import sqlite
from relaypool.store.schema import SCHEMA_VERSION, migrate, schemaVersion, storedValue
from relaypool.store.sqlite import DEFAULT_FRESH_EVENTS, SQLiteEventStore, _CallJob

_T = TypeVar("_T")

KEYS = [bytes([i + 1]) * 32 for i in range(3)]
PUBKEYS = [publicKeyFor(key) for key in KEYS]
NOW = 1_700_000_000


def note(
    createdAt: int = NOW - 100,
    kind: int = 1,
    content: str = "",
    tags: Sequence[Sequence[str]] = (),
    key: int = 0,
) -> Event:
    """
    A signed event by C{KEYS[key]}.
    """
    return Event.sign(KEYS[key], kind, content, tags, createdAt=createdAt)


class FakeWallClock:
    """
    A settable wall clock for the store's C{clock} argument.
    """

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def storedTagRows(connection: sqlite3.Connection, columns: str) -> list[tuple[Any, ...]]:
    """
    The rows of both tag tables (fresh and merged; see
    L{relaypool.store.schema}), C{columns} of each, in order.
    """
    return connection.execute(
        f"SELECT {columns} FROM (SELECT * FROM tags UNION ALL SELECT * FROM fresh_tags) t"
        " ORDER BY 1, 2, 3"
    ).fetchall()


class StoreTestMixin:
    """
    Opens stores on files in a temporary directory, closed at test end.

    @cvar freshEvents: the stores' C{freshEvents}, if not the default: a
        class with 0 runs its tests with each transaction's id and tag rows
        merged into the large tables at once.
    """

    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]
    freshEvents: int | None = None

    def openStore(self, path: str | None = None, **kwargs: Any) -> SQLiteEventStore:
        if path is None:
            directory = self.mktemp()
            os.makedirs(directory)
            path = os.path.join(directory, "store.db")
        kwargs.setdefault("clock", FakeWallClock())
        if self.freshEvents is not None:
            kwargs.setdefault("freshEvents", self.freshEvents)
        store = SQLiteEventStore(path, **kwargs)
        self.addCleanup(store.close)
        return store


class SaveAndQueryTests(StoreTestMixin, TestCase):
    """
    Storing regular events and querying them with NIP-01 filters.
    """

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        A saved event is stored (C{True}) and a query returns it unchanged.
        """
        store = self.openStore()
        event = note(content="hello\n\u2603", tags=[["t", "x"], ["e", "0" * 64, "wss://r"]])
        self.assertTrue((yield store.save(event)))
        self.assertEqual((yield store.query([Filter()])), [event])

    @inlineCallbacks
    def test_saveMany(self) -> Any:
        """
        C{saveMany} answers for each event, in order, what C{save} would:
        C{False} for one stored already or earlier in the call, ephemeral,
        expired or older than the stored version of a replaceable one.
        """
        store = self.openStore()
        stored = note(content="stored")
        profile = note(kind=0, content="new profile", createdAt=NOW - 10)
        yield store.save(stored)
        yield store.save(profile)
        first, second = note(content="first"), note(content="second")
        events = [
            first,
            stored,
            note(kind=20001, content="ephemeral"),
            note(content="expired", tags=[["expiration", str(NOW - 1)]]),
            note(kind=0, content="old profile", createdAt=NOW - 20),
            first,
            second,
        ]
        saved = yield store.saveMany(events)
        self.assertEqual(saved, [True, False, False, False, False, False, True])
        self.assertEqual(
            {e.content for e in (yield store.query([Filter()]))},
            {"stored", "new profile", "first", "second"},
        )
        self.assertEqual((yield store.saveMany([])), [])

    @inlineCallbacks
    def test_duplicate(self) -> Any:
        """
        Saving an event already stored answers C{False} and keeps one copy.
        """
        store = self.openStore()
        event = note()
        yield store.save(event)
        self.assertFalse((yield store.save(event)))
        self.assertEqual((yield store.count([Filter()])), 1)

    @inlineCallbacks
    def test_order(self) -> Any:
        """
        Queries return the newest events first, ties by lowest id.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - 10 + i % 3, content=str(i)) for i in range(9)]
        yield gatherResults([store.save(e) for e in events])
        result = yield store.query([Filter()])
        self.assertEqual(result, sorted(events, key=lambda e: (-e.createdAt, e.id)))

    @inlineCallbacks
    def test_limitPerFilter(self) -> Any:
        """
        Each filter's limit applies to its own matches; the union is
        deduplicated and ordered.
        """
        store = self.openStore()
        ones = [note(createdAt=NOW - 100 + i, kind=1) for i in range(5)]
        sevens = [note(createdAt=NOW - 50 + i, kind=7) for i in range(5)]
        yield gatherResults([store.save(e) for e in ones + sevens])
        result = yield store.query(
            [
                Filter(kinds=frozenset([1]), limit=2),
                Filter(kinds=frozenset([7]), limit=1),
                Filter(kinds=frozenset([1, 7]), limit=1),
            ]
        )
        self.assertEqual(result, [sevens[4], ones[4], ones[3]])

    @inlineCallbacks
    def test_limitZero(self) -> Any:
        """
        A filter with C{limit} 0 returns nothing.
        """
        store = self.openStore()
        yield store.save(note())
        self.assertEqual((yield store.query([Filter(limit=0)])), [])

    @inlineCallbacks
    def test_maxLimit(self) -> Any:
        """
        A filter returns at most C{maxLimit} events, whatever its limit.
        """
        store = self.openStore(maxLimit=3)
        yield gatherResults([store.save(note(content=str(i))) for i in range(5)])
        self.assertEqual(len((yield store.query([Filter(limit=10)]))), 3)
        self.assertEqual(len((yield store.query([Filter()]))), 3)

    @inlineCallbacks
    def test_longLists(self) -> Any:
        """
        Filters with long C{ids}, C{authors} and tag lists match as short ones
        do.
        """
        store = self.openStore()
        events = [note(content=str(i), tags=[["p", f"{i:064x}"]]) for i in range(5)]
        yield gatherResults([store.save(e) for e in events])
        ids = frozenset([e.id for e in events[:3]] + [f"{i:064x}" for i in range(500)])
        byIds = yield store.query([Filter(ids=ids)])
        self.assertEqual({e.id for e in byIds}, {e.id for e in events[:3]})
        authors = frozenset([PUBKEYS[0]] + [f"{i:064x}" for i in range(500)])
        self.assertEqual(len((yield store.query([Filter(authors=authors)]))), 5)
        tagged = frozenset(f"{i:064x}" for i in range(2, 500))
        byTag = yield store.query([Filter(tags=(("p", tagged),))])
        self.assertEqual(byTag, sorted(events[2:], key=lambda e: (-e.createdAt, e.id)))

    @inlineCallbacks
    def test_longMixedTagList(self) -> Any:
        """
        A long tag list mixing 64-hex values and other strings matches
        events tagged with either kind of value.
        """
        store = self.openStore()
        hexTagged = note(content="hex", tags=[["t", "a" * 64]])
        wordTagged = note(content="word", tags=[["t", "word"]])
        yield gatherResults([store.save(e) for e in (hexTagged, wordTagged)])
        values = frozenset(["a" * 64, "word"] + [f"other{i}" for i in range(100)])
        found = yield store.query([Filter(tags=(("t", values),))])
        self.assertEqual({e.id for e in found}, {hexTagged.id, wordTagged.id})

    @inlineCallbacks
    def test_emptyLists(self) -> Any:
        """
        An empty C{ids} or C{authors} list matches nothing.
        """
        store = self.openStore()
        yield store.save(note())
        self.assertEqual((yield store.query([Filter(ids=frozenset())])), [])
        self.assertEqual((yield store.query([Filter(authors=frozenset())])), [])

    @inlineCallbacks
    def test_notHexIds(self) -> Any:
        """
        C{fetch} and C{delete} with ids that are not 64 lowercase hex
        characters find nothing.
        """
        store = self.openStore()
        event = note()
        yield store.save(event)
        odd = [event.id.upper(), "x", ""]
        self.assertEqual((yield store.fetch(odd)), [])
        self.assertEqual((yield store.delete(odd)), 0)
        self.assertEqual((yield store.fetch([event.id])), [event])

    @inlineCallbacks
    def test_manyTags(self) -> Any:
        """
        An event with hundreds of indexed tags is found by each of them.
        """
        store = self.openStore()
        pubkeys = [f"{i:064x}" for i in range(600)]
        event = note(tags=[["p", pubkey] for pubkey in pubkeys])
        yield store.save(event)
        for pubkey in (pubkeys[0], pubkeys[299], pubkeys[-1]):
            found = yield store.query([Filter(tags=(("p", frozenset([pubkey])),))])
            self.assertEqual(found, [event])

    @inlineCallbacks
    def test_hexValuesExact(self) -> Any:
        """
        A tag value that is 64 hex characters matches only itself: the same
        digits in upper case are another value.
        """
        store = self.openStore()
        lower = note(content="lower", tags=[["t", "ab" * 32]])
        upper = note(content="upper", tags=[["t", "AB" * 32]])
        yield gatherResults([store.save(e) for e in (lower, upper)])
        for event in (lower, upper):
            tag = event.tags[0][1]
            found = yield store.query([Filter(tags=(("t", frozenset([tag])),))])
            self.assertEqual(found, [event])

    @inlineCallbacks
    def test_tagConditions(self) -> Any:
        """
        Several tag conditions must all hold; each matches any of its values,
        and only single-letter tags' first values are indexed.
        """
        store = self.openStore()
        both = note(content="a", tags=[["t", "x"], ["p", "1" * 64], ["p", "2" * 64]])
        tOnly = note(content="b", tags=[["t", "x"], ["t", "y"]])
        secondValue = note(content="c", tags=[["t", "z", "x"]])
        yield gatherResults([store.save(e) for e in (both, tOnly, secondValue)])
        result = yield store.query(
            [Filter(tags=(("t", frozenset(["x"])), ("p", frozenset(["2" * 64, "3" * 64]))))]
        )
        self.assertEqual(result, [both])
        result = yield store.query([Filter(tags=(("t", frozenset(["x", "y"])),))])
        self.assertEqual({e.id for e in result}, {both.id, tOnly.id})

    @inlineCallbacks
    def test_count(self) -> Any:
        """
        C{count} counts distinct events matching any filter.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - 10 + i, kind=1 + i % 2) for i in range(6)]
        yield gatherResults([store.save(e) for e in events])
        counted = yield store.count(
            [
                Filter(kinds=frozenset([1])),
                Filter(since=NOW - 7),
                Filter(kinds=frozenset([2]), limit=1),
            ]
        )
        self.assertEqual(counted, 5)
        self.assertEqual((yield store.count([])), 0)

    @inlineCallbacks
    def test_reopen(self) -> Any:
        """
        Events saved before the store closed are there when it reopens.
        """
        store = self.openStore()
        event = note()
        yield store.save(event)
        yield store.close()
        reopened = self.openStore(store.path)
        self.assertEqual((yield reopened.query([Filter()])), [event])

    @inlineCallbacks
    def test_memory(self) -> Any:
        """
        C{":memory:"} gives a working private in-memory store.
        """
        store = self.openStore(":memory:")
        event = note()
        self.assertTrue((yield store.save(event)))
        self.assertEqual((yield store.query([Filter(ids=frozenset([event.id]))])), [event])
        self.assertEqual((yield store.count([Filter()])), 1)


class PagedQueryTests(StoreTestMixin, TestCase):
    """
    Reading an answer in pages: L{SQLiteEventStore.queryIds} then
    L{SQLiteEventStore.fetch}.
    """

    @inlineCallbacks
    def test_idsInQueryOrder(self) -> Any:
        """
        L{SQLiteEventStore.queryIds} gives the ids of what
        L{SQLiteEventStore.query} returns, in the same order, limits applied
        per filter.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - 10 + i % 3, kind=1 + i % 2, content=str(i)) for i in range(9)]
        yield gatherResults([store.save(e) for e in events])
        filters = [Filter(kinds=frozenset([1]), limit=3), Filter(kinds=frozenset([2]))]
        queried = yield store.query(filters)
        ids = yield store.queryIds(filters)
        self.assertEqual(ids, [e.id for e in queried])

    @inlineCallbacks
    def test_syncRecords(self) -> Any:
        """
        L{SQLiteEventStore.syncRecords} gives the C{(created_at, id)} of the
        matching events, limits applied per filter, and at most one record
        more than asked for.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - 10 + i, kind=1 + i % 2, content=str(i)) for i in range(9)]
        yield gatherResults([store.save(e) for e in events])
        filters = [Filter(kinds=frozenset([1]), limit=2), Filter(kinds=frozenset([2]))]
        records = yield store.syncRecords(filters, 100)
        newestOnes = sorted((e for e in events if e.kind == 1), key=lambda e: -e.createdAt)[:2]
        expected = {(e.createdAt, e.id) for e in newestOnes + [e for e in events if e.kind == 2]}
        self.assertEqual(sorted(records), sorted(expected))
        bounded = yield store.syncRecords([Filter()], 4)
        self.assertEqual(len(bounded), 5)
        self.assertLessEqual(set(bounded), {(e.createdAt, e.id) for e in events})

    @inlineCallbacks
    def test_fetchInGivenOrder(self) -> Any:
        """
        L{SQLiteEventStore.fetch} returns the stored events among the ids, in
        the order of the ids, leaving out unknown ones.
        """
        store = self.openStore()
        events = [note(content=str(i)) for i in range(3)]
        yield gatherResults([store.save(e) for e in events])
        fetched = yield store.fetch([events[2].id, "0" * 64, events[0].id])
        self.assertEqual(fetched, [events[2], events[0]])

    @inlineCallbacks
    def test_fetchManyIds(self) -> Any:
        """
        A page of more ids than SQLite parameters inline is fetched whole.
        """
        store = self.openStore()
        events = [note(createdAt=NOW - i, content=str(i)) for i in range(100)]
        yield gatherResults([store.save(e) for e in events])
        fetched = yield store.fetch([e.id for e in events])
        self.assertEqual(fetched, events)

    @inlineCallbacks
    def test_fetchLeavesOutExpired(self) -> Any:
        """
        An event that expired between L{SQLiteEventStore.queryIds} and
        L{SQLiteEventStore.fetch} is left out.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock)
        event = note(tags=[["expiration", str(NOW + 10)]])
        yield store.save(event)
        ids = yield store.queryIds([Filter()])
        clock.now = NOW + 10
        self.assertEqual((ids, (yield store.fetch(ids))), ([event.id], []))


class ReplacementTests(StoreTestMixin, TestCase):
    """
    NIP-01 replaceable, addressable and ephemeral events.
    """

    @inlineCallbacks
    def test_replaceableNewerReplaces(self) -> Any:
        """
        A newer replaceable event replaces the stored one of its author and
        kind; an older one is refused.
        """
        store = self.openStore()
        old, new, older = (note(createdAt=t, kind=0) for t in (NOW - 20, NOW - 10, NOW - 30))
        yield store.save(old)
        self.assertTrue((yield store.save(new)))
        self.assertFalse((yield store.save(older)))
        self.assertEqual((yield store.query([Filter(kinds=frozenset([0]))])), [new])

    @inlineCallbacks
    def test_replaceableTie(self) -> Any:
        """
        Of two replaceable events with the same C{created_at}, the lowest id
        is kept, whatever the order they arrive in.
        """
        first, second = sorted((note(kind=10002, content=c) for c in "ab"), key=lambda e: e.id)
        for order in ([first, second], [second, first]):
            store = self.openStore()
            for event in order:
                yield store.save(event)
            self.assertEqual((yield store.query([Filter()])), [first])

    @inlineCallbacks
    def test_replaceablePerAuthorAndKind(self) -> Any:
        """
        Replaceable events of different authors or kinds do not replace each
        other.
        """
        store = self.openStore()
        events = [note(kind=3), note(kind=3, key=1), note(kind=0)]
        results = yield gatherResults([store.save(e) for e in events])
        self.assertEqual(results, [True] * 3)
        self.assertEqual((yield store.count([Filter()])), 3)

    @inlineCallbacks
    def test_addressable(self) -> Any:
        """
        An addressable event replaces the one with the same author, kind and
        C{d} tag only.
        """
        store = self.openStore()
        a1 = note(createdAt=NOW - 20, kind=30023, tags=[["d", "a"]])
        b1 = note(createdAt=NOW - 20, kind=30023, tags=[["d", "b"]])
        a2 = note(createdAt=NOW - 10, kind=30023, tags=[["d", "a"]])
        noD = note(createdAt=NOW - 20, kind=30023)
        emptyD = note(createdAt=NOW - 10, kind=30023, tags=[["d", ""]])
        for event in (a1, b1, a2, noD, emptyD):
            yield store.save(event)
        result = yield store.query([Filter()])
        self.assertEqual({e.id for e in result}, {b1.id, a2.id, emptyD.id})

    @inlineCallbacks
    def test_ephemeral(self) -> Any:
        """
        Ephemeral events are never stored.
        """
        store = self.openStore()
        self.assertFalse((yield store.save(note(kind=20001))))
        self.assertEqual((yield store.count([Filter()])), 0)


class DeletionTests(StoreTestMixin, TestCase):
    """
    NIP-09 deletion requests.
    """

    @inlineCallbacks
    def test_deleteById(self) -> Any:
        """
        A deletion request deletes its author's events named in C{e} tags,
        not other authors' events, and is itself kept.
        """
        store = self.openStore()
        mine, theirs = note(content="m"), note(content="t", key=1)
        yield gatherResults([store.save(mine), store.save(theirs)])
        request = note(kind=5, tags=[["e", mine.id], ["e", theirs.id], ["k", "1"]])
        self.assertTrue((yield store.save(request)))
        result = yield store.query([Filter()])
        self.assertEqual({e.id for e in result}, {theirs.id, request.id})

    @inlineCallbacks
    def test_refuseDeletedLater(self) -> Any:
        """
        An event arriving after its author's deletion request is refused; the
        same id by another author's request is not.
        """
        store = self.openStore()
        mine, theirs = note(content="m"), note(content="t", key=1)
        yield store.save(note(kind=5, tags=[["e", mine.id], ["e", theirs.id]]))
        self.assertFalse((yield store.save(mine)))
        self.assertTrue((yield store.save(theirs)))

    @inlineCallbacks
    def test_deleteByAddress(self) -> Any:
        """
        An C{a} tag deletes the versions of its author's addressable event up
        to the request's C{created_at}, and refuses them later; a newer
        version is accepted.
        """
        store = self.openStore()
        address = f"30023:{PUBKEYS[0]}:post"
        old = note(createdAt=NOW - 30, kind=30023, tags=[["d", "post"]])
        other = note(createdAt=NOW - 30, kind=30023, tags=[["d", "other"]])
        yield gatherResults([store.save(old), store.save(other)])
        yield store.save(note(createdAt=NOW - 20, kind=5, tags=[["a", address]]))
        stored = yield store.query([Filter(kinds=frozenset([30023]))])
        self.assertEqual(stored, [other])
        self.assertFalse(
            (
                yield store.save(
                    note(createdAt=NOW - 25, kind=30023, tags=[["d", "post"]], content="x")
                )
            )
        )
        newer = note(createdAt=NOW - 10, kind=30023, tags=[["d", "post"]])
        self.assertTrue((yield store.save(newer)))

    @inlineCallbacks
    def test_deleteReplaceableByAddress(self) -> Any:
        """
        An C{a} tag with an empty C{d} part deletes a replaceable event.
        """
        store = self.openStore()
        yield store.save(note(createdAt=NOW - 30, kind=0))
        yield store.save(note(createdAt=NOW - 20, kind=5, tags=[["a", f"0:{PUBKEYS[0]}:"]]))
        self.assertEqual((yield store.count([Filter(kinds=frozenset([0]))])), 0)

    @inlineCallbacks
    def test_refuseDeletedVersionKeepsOlder(self) -> Any:
        """
        A newer version of a replaceable event that a deletion request names
        by id is refused, and the stored older version stays.
        """
        store = self.openStore()
        older = note(createdAt=NOW - 30, kind=0, content="older")
        newer = note(createdAt=NOW - 10, kind=0, content="newer")
        yield store.save(older)
        yield store.save(note(createdAt=NOW - 20, kind=5, tags=[["e", newer.id]]))
        self.assertFalse((yield store.save(newer)))
        self.assertEqual((yield store.query([Filter(kinds=frozenset([0]))])), [older])

    @inlineCallbacks
    def test_otherAuthorsAddress(self) -> Any:
        """
        An C{a} tag naming another author's address deletes nothing.
        """
        store = self.openStore()
        theirs = note(createdAt=NOW - 30, kind=0, key=1)
        yield store.save(theirs)
        yield store.save(note(createdAt=NOW - 20, kind=5, tags=[["a", f"0:{PUBKEYS[1]}:"]]))
        self.assertEqual((yield store.query([Filter(kinds=frozenset([0]))])), [theirs])

    @inlineCallbacks
    def test_removedRequestRefusesNothing(self) -> Any:
        """
        Once a deletion request is removed (by an operator), the events it
        named may be stored again; another stored request naming the same
        event still refuses it.
        """
        store = self.openStore()
        event = note()
        first = note(kind=5, content="first", tags=[["e", event.id]])
        second = note(kind=5, content="second", tags=[["e", event.id]])
        yield gatherResults([store.save(first), store.save(second)])
        yield store.delete([first.id])
        self.assertFalse((yield store.save(event)))
        yield store.delete([second.id])
        self.assertTrue((yield store.save(event)))

    @inlineCallbacks
    def test_deletingADeletion(self) -> Any:
        """
        A deletion request for a deletion request has no effect.
        """
        store = self.openStore()
        first = note(kind=5, tags=[["e", "0" * 64]])
        yield store.save(first)
        yield store.save(note(kind=5, content="again", tags=[["e", first.id]]))
        self.assertEqual((yield store.count([Filter(kinds=frozenset([5]))])), 2)


class OperatorDeleteTests(StoreTestMixin, TestCase):
    """
    L{SQLiteEventStore.delete}: an operator's removal of events by id.
    """

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        The named events are removed, whatever their author and kind, and
        their number returned; others stay.
        """
        store = self.openStore()
        first, second, kept = note(content="a"), note(kind=5, content="b", key=1), note(content="c")
        yield gatherResults([store.save(first), store.save(second), store.save(kept)])
        self.assertEqual((yield store.delete([first.id, second.id, "0" * 64])), 2)
        self.assertEqual([e.id for e in (yield store.query([Filter()]))], [kept.id])

    @inlineCallbacks
    def test_storedAgain(self) -> Any:
        """
        A removed event may be stored again (unlike a NIP-09 deletion).
        """
        store = self.openStore()
        event = note()
        yield store.save(event)
        yield store.delete([event.id])
        self.assertTrue((yield store.save(event)))


class ExpirationTests(StoreTestMixin, TestCase):
    """
    NIP-40 expiration.
    """

    @inlineCallbacks
    def test_refuseExpired(self) -> Any:
        """
        An event already expired is refused.
        """
        store = self.openStore()
        self.assertFalse((yield store.save(note(tags=[["expiration", str(NOW)]]))))
        self.assertEqual((yield store.count([Filter()])), 0)

    @inlineCallbacks
    def test_hideExpired(self) -> Any:
        """
        An event that expires after it was stored is no longer returned or
        counted.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock)
        event = note(tags=[["expiration", str(NOW + 10)]])
        self.assertTrue((yield store.save(event)))
        self.assertEqual((yield store.query([Filter()])), [event])
        clock.now = NOW + 10
        self.assertEqual((yield store.query([Filter()])), [])
        self.assertEqual((yield store.count([Filter()])), 0)

    @inlineCallbacks
    def test_purgeExpired(self) -> Any:
        """
        Expired events are deleted from the database at the next write.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock)
        yield store.save(note(tags=[["expiration", str(NOW + 10)]]))
        clock.now = NOW + 11
        yield store.save(note(content="later"))
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("SELECT count(*) FROM events").fetchone()[0], 1)


class BoundTests(StoreTestMixin, TestCase):
    """
    Bounds on the stored events and on waiting calls.
    """

    @inlineCallbacks
    def test_maxEvents(self) -> Any:
        """
        Past C{maxEvents}, the oldest regular events are evicted, and
        replaceable ones are kept.
        """
        store = self.openStore(maxEvents=3)
        profile = note(createdAt=NOW - 1000, kind=0)
        notes = [note(createdAt=NOW - 100 + i, content=str(i)) for i in range(4)]
        yield store.save(profile)
        for event in notes:
            yield store.save(event)
        result = yield store.query([Filter()])
        self.assertEqual(result, [notes[3], notes[2], profile])

    @inlineCallbacks
    def test_countOfStoredEvents(self) -> Any:
        """
        The count that C{maxEvents} is checked against stays the number of
        stored events through bulk and single saves, repeats, replacements,
        deletion requests, expiration and operator removals.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock)
        notes = [note(content=str(i), tags=[["t", "x"]]) for i in range(5)]
        expiring = note(content="expiring", tags=[["expiration", str(NOW + 10)]])
        yield store.saveMany([*notes, notes[0], expiring])
        yield store.save(notes[1])
        yield store.save(note(createdAt=NOW - 10, kind=0))
        yield store.save(note(createdAt=NOW - 5, kind=0, content="newer"))
        yield store.save(note(kind=5, tags=[["e", notes[2].id]]))
        yield store.delete([notes[3].id])
        clock.now = NOW + 11
        yield store.save(note(content="later"))
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        [(counted,)] = connection.execute("SELECT events FROM stats").fetchall()
        [(stored,)] = connection.execute("SELECT count(*) FROM events").fetchall()
        self.assertEqual((counted, stored), (6, 6))

    @inlineCallbacks
    def test_maxEventsOnlyReplaceable(self) -> Any:
        """
        When only replaceable events are left, the oldest of them are
        evicted.
        """
        store = self.openStore(maxEvents=1)
        old, new = note(createdAt=NOW - 10, kind=0), note(createdAt=NOW - 5, kind=3)
        yield store.save(old)
        yield store.save(new)
        self.assertEqual((yield store.query([Filter()])), [new])

    @inlineCallbacks
    def test_maxBytes(self) -> Any:
        """
        Past C{maxBytes} of used pages, the oldest events are evicted until
        the database fits.
        """
        maxBytes = 256 * 1024
        store = self.openStore(maxBytes=maxBytes)
        events = [note(createdAt=NOW - 1000 + i, content=str(i) * 2000) for i in range(10)]
        for _ in range(15):
            yield gatherResults([store.save(e) for e in events])
            events = [note(createdAt=e.createdAt + 10, content=e.content) for e in events]
        stored = yield store.query([Filter()])
        self.assertTrue(0 < len(stored) < 150)
        self.assertEqual(stored[0].createdAt, events[-1].createdAt - 10)
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        pages, free, size = (
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        self.assertLessEqual((pages - free) * size, maxBytes)

    def test_maxPending(self) -> Deferred[list[bool]]:
        """
        Past C{maxPending} waiting calls, a call fails at once with
        L{QueueFull}.
        """
        store = self.openStore(maxPending=2)
        waiting = [store.save(note(content=str(i))) for i in range(2)]
        self.failureResultOf(store.save(note(content="x")), QueueFull)
        self.failureResultOf(store.query([Filter()]), QueueFull)
        return gatherResults(waiting)


class TagRowsTests(StoreTestMixin, TestCase):
    """
    The tags table holds the tags of the stored events only.
    """

    @inlineCallbacks
    def test_removedWithTheirEvent(self) -> Any:
        """
        Every way an event leaves the store (replaced, deleted by a NIP-09
        request, expired, evicted, deleted) removes its tag rows.
        """
        clock = FakeWallClock()
        store = self.openStore(clock=clock, maxEvents=4)
        replaced = note(kind=30000, tags=[["d", "x"], ["t", "old"]], createdAt=NOW - 50)
        replacing = note(kind=30000, tags=[["d", "x"], ["t", "new"]], createdAt=NOW - 40)
        requested = note(content="requested", tags=[["p", PUBKEYS[1]]], createdAt=NOW - 30)
        expiring = note(tags=[["t", "brief"], ["expiration", str(NOW + 5)]], createdAt=NOW - 90)
        evicted = note(content="oldest", tags=[["t", "evicted"]], createdAt=NOW - 1000)
        deleted = note(content="deleted", tags=[["e", "c" * 64]], createdAt=NOW - 20)
        for event in (evicted, replaced, replacing, requested, expiring, deleted):
            yield store.save(event)
        yield store.save(note(kind=5, tags=[["e", requested.id]], createdAt=NOW - 10))
        clock.now = NOW + 5
        yield store.delete([deleted.id])
        stored = yield store.query([Filter()])
        self.assertEqual([e.kind for e in stored], [5, 30000])
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        rows = storedTagRows(connection, "name, value, created_at")
        self.assertEqual(
            [row[:2] for row in rows],
            [("d", "x"), ("e", bytes.fromhex(requested.id)), ("t", "new")],
        )


def _failWrite(connection: sqlite3.Connection) -> None:
    raise sqlite3.OperationalError("disk I/O error")


class ObservationTests(StoreTestMixin, TestCase):
    """
    What the store tells an operator: its latencies and whether it can
    write.
    """

    @inlineCallbacks
    def test_latencies(self) -> Any:
        """
        C{onLatency} hears of every call that reached a database thread:
        C{"write"} for writes, C{"query"} for reads, with the seconds each
        took.
        """
        observed: list[tuple[str, float]] = []
        store = self.openStore(onLatency=lambda kind, seconds: observed.append((kind, seconds)))
        yield store.save(note())
        yield store.query([Filter()])
        yield store.count([Filter()])
        yield store.enqueue(note(content="out"), ["ws://relay"])
        yield store.pending()
        self.assertEqual(
            [kind for kind, _ in observed], ["write", "query", "query", "write", "query"]
        )
        self.assertTrue(all(seconds >= 0 for _, seconds in observed), observed)

    def test_writable(self) -> None:
        """
        An open store has no write problem.
        """
        self.assertIsNone(self.openStore().writeProblem())

    @inlineCallbacks
    def test_closedNotWritable(self) -> Any:
        """
        A closed store says so.
        """
        store = self.openStore()
        yield store.close()
        self.assertEqual(store.writeProblem(), "the store is closed")

    @inlineCallbacks
    def test_failedWrite(self) -> Any:
        """
        After a write failed with an operational error (a full disk, a
        read-only file), the store says so, and checks again in the
        background with an empty write transaction: once that commits, it
        has no write problem.
        """
        store = self.openStore()
        failed = store._writer.submit(_CallJob(_failWrite))
        yield self.assertFailure(failed, StoreError)
        problem = store.writeProblem()
        for _ in range(2000):
            if store.writeProblem() is None:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(
            (problem, store.writeProblem()),
            ("the store's last write failed: disk I/O error", None),
        )


class LifecycleTests(StoreTestMixin, TestCase):
    """
    Opening, migrating and closing.
    """

    def test_newDatabase(self) -> None:
        """
        A new database gets the current schema version, in WAL mode.
        """
        store = self.openStore()
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        self.assertEqual(schemaVersion(connection), SCHEMA_VERSION)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    @inlineCallbacks
    def test_migrateFromVersion1(self) -> Any:
        """
        A version-1 database (events only) is migrated when opened: its
        events are kept and the outbox works.
        """
        path = self.mktemp()
        event = note()
        connection = sqlite3.connect(path, isolation_level=None)
        migrate(connection, target=1)
        connection.execute(
            "INSERT INTO events (id, pubkey, kind, created_at, raw) VALUES (?, ?, ?, ?, ?)",
            (event.id, event.pubkey, event.kind, event.createdAt, event.toJSON()),
        )
        connection.execute("INSERT INTO tags VALUES (?, ?, ?, ?)", (1, "t", "x", event.createdAt))
        connection.close()
        store = self.openStore(path)
        self.assertEqual((yield store.query([Filter(tags=(("t", frozenset("x")),))])), [event])
        yield store.enqueue(event, ["ws://relay"])
        self.assertEqual(len((yield store.pending())), 1)
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(schemaVersion(connection), SCHEMA_VERSION)

    @inlineCallbacks
    def test_migrateFromVersion2(self) -> Any:
        """
        A version-2 database (outbox without refusals) is migrated when
        opened: relays whose last answer was a final refusal are settled,
        an event left waiting for no relay leaves the outbox, and the
        others keep their records.
        """
        path = self.mktemp()
        settled, waiting = note(content="settled"), note(content="waiting")
        connection = sqlite3.connect(path, isolation_level=None)
        migrate(connection, target=2)
        for event in (settled, waiting):
            connection.execute(
                "INSERT INTO outbox (event_id, raw, enqueued_at) VALUES (?, ?, ?)",
                (event.id, event.toJSON(), NOW),
            )
        connection.executemany(
            "INSERT INTO outbox_relays (event_id, relay, accepted, attempts, last_message,"
            " last_attempt_at) VALUES (?, ?, ?, 1, ?, ?)",
            [
                (settled.id, "ws://a", 1, "", NOW),
                (settled.id, "ws://b", 0, "blocked: not here", NOW),
                (waiting.id, "ws://a", 0, "rate-limited: slow down", NOW),
                (waiting.id, "ws://b", 0, "pow: difficulty 30", NOW),
            ],
        )
        connection.close()
        store = self.openStore(path)
        [entry] = yield store.pending()
        self.assertEqual(entry.event, waiting)
        self.assertEqual(
            {url: (d.refused, d.attempts, d.lastMessage) for url, d in entry.relays.items()},
            {
                "ws://a": (False, 1, "rate-limited: slow down"),
                "ws://b": (True, 1, "pow: difficulty 30"),
            },
        )
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(schemaVersion(connection), SCHEMA_VERSION)

    def test_newerVersion(self) -> None:
        """
        A database with a newer schema version than this relaypool knows
        raises L{SchemaVersionError} saying so.
        """
        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.close()
        error = self.assertRaises(SchemaVersionError, SQLiteEventStore, path)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", str(error))

    def test_unopenable(self) -> None:
        """
        A path that cannot be opened raises L{StoreError}.
        """
        path = os.path.join(self.mktemp(), "missing", "store.db")
        self.assertRaises(StoreError, SQLiteEventStore, path)

    def test_notADatabase(self) -> None:
        """
        A file that is not a SQLite database raises L{StoreError}.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a database" * 100)
        self.assertRaises(StoreError, SQLiteEventStore, path)

    @inlineCallbacks
    def test_closed(self) -> Any:
        """
        After C{close}, calls fail with L{StoreError}; closing again fires
        too.
        """
        store = self.openStore()
        saved = store.save(note())
        yield store.close()
        self.assertTrue(self.successResultOf(saved))
        self.failureResultOf(store.save(note(content="late")), StoreError)
        self.failureResultOf(store.saveMany([note(content="late")]), StoreError)
        self.failureResultOf(store.query([Filter()]), StoreError)
        yield store.close()

    @inlineCallbacks
    def test_closeEndsItsThreads(self) -> Any:
        """
        C{close} ends the store's threads: writer, reader and checkpoint.
        """
        store = self.openStore()
        self.assertEqual(
            sorted(_storeThreads()),
            ["relaypool-store-checkpoint", "relaypool-store-reader", "relaypool-store-writer"],
        )
        yield store.close()
        self.assertEqual(_storeThreads(), [])

    @inlineCallbacks
    def test_checkpointBesideTheWriter(self) -> Any:
        """
        After commits, the store's checkpoint thread copies the WAL back
        into the database file (long before the writer's own checkpoint
        would): the events saved reach the file itself.
        """
        store = self.openStore(checkpointPause=0.01)
        events = [note(content=f"{i:03d} " + "x" * 1000) for i in range(200)]
        self.assertEqual((yield gatherResults([store.save(e) for e in events])), [True] * 200)
        for _ in range(1000):
            if _eventsInFile(store.path) == len(events):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(_eventsInFile(store.path), len(events))


def _storeThreads() -> list[str]:
    """
    The names of the running threads of stores.
    """
    return [t.name for t in threading.enumerate() if t.name.startswith("relaypool-store")]


def _eventsInFile(path: str) -> int | None:
    """
    How many events the database file at C{path} holds itself, its WAL not
    read (a copy of the file alone is), or L{None} if that copy cannot be
    read (it holds no events table yet, or was taken as a checkpoint wrote
    to the file).
    """
    copy = path + ".alone"
    with open(path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    connection = sqlite3.connect(copy)
    try:
        count: int = connection.execute("SELECT count(*) FROM events").fetchone()[0]
        return count
    except sqlite3.DatabaseError:
        return None
    finally:
        connection.close()


class PumpedReactor:
    """
    An C{IReactorFromThreads} whose calls run when a test waits on a
    Deferred, so that store calls can be made synchronously.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[object, ...]]] = (
            queue.SimpleQueue()
        )

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self._calls.put((f, args))

    def wait(self, d: Deferred[_T], timeout: float = 10.0) -> _T:
        """
        Run calls from the store's threads until C{d} fires.
        """
        results: list[object] = []
        d.addBoth(results.append)
        deadline = time.monotonic() + timeout
        while not results:
            f, args = self._calls.get(timeout=max(0.0, deadline - time.monotonic()))
            f(*args)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result  # type: ignore[return-value]


def _kept(events: list[Event]) -> list[Event]:
    """
    The events a NIP-01 relay keeps of C{events}.
    """
    regular: dict[str, Event] = {}
    latest: dict[tuple[str, int, str], Event] = {}
    for event in events:
        if isReplaceable(event.kind) or isAddressable(event.kind):
            key = (event.pubkey, event.kind, event.dTag() if isAddressable(event.kind) else "")
            current = latest.get(key)
            if current is None or (event.createdAt, current.id) > (current.createdAt, event.id):
                latest[key] = event
        else:
            regular[event.id] = event
    return list(regular.values()) + list(latest.values())


def _reference(stored: list[Event], filters: list[Filter]) -> list[str]:
    found: dict[str, Event] = {}
    for f in filters:
        matches = sorted((e for e in stored if f.matches(e)), key=lambda e: (-e.createdAt, e.id))
        if f.limit is not None:
            matches = matches[: f.limit]
        found.update((e.id, e) for e in matches)
    return [e.id for e in sorted(found.values(), key=lambda e: (-e.createdAt, e.id))]


_TAG_VALUES = {"e": ["a" * 64, "b" * 64], "p": PUBKEYS[:2], "t": ["x", "y", "z"]}

_eventSpecs = st.tuples(
    st.integers(0, 1),
    st.integers(NOW - 2, NOW),
    st.sampled_from([1, 7, 0, 3, 10002, 30023, 30078]),
    st.sampled_from(["", "a", "b"]),
    st.lists(
        st.sampled_from(sorted(_TAG_VALUES)).flatmap(
            lambda n: st.sampled_from(_TAG_VALUES[n]).map(lambda v: [n, v])
        ),
        max_size=3,
    ),
)

# Each event gets its position as content, so that every one is distinct.
_events = st.lists(_eventSpecs, min_size=1, max_size=30).map(
    lambda specs: [
        note(
            key=key,
            createdAt=createdAt,
            kind=kind,
            content=str(i),
            tags=([["d", d]] if isAddressable(kind) else []) + tags,
        )
        for i, (key, createdAt, kind, d, tags) in enumerate(specs)
    ]
)


def _maybeSet(values: Sequence[_T]) -> st.SearchStrategy[frozenset[_T] | None]:
    return st.none() | st.frozensets(st.sampled_from(values), min_size=1, max_size=3)


_filters = st.builds(
    Filter,
    authors=_maybeSet(PUBKEYS),
    kinds=_maybeSet([1, 7, 0, 3, 10002, 30023, 30078]),
    tags=st.lists(
        st.sampled_from(sorted(_TAG_VALUES)).flatmap(
            lambda n: st.frozensets(st.sampled_from(_TAG_VALUES[n]), min_size=1).map(
                lambda v: (n, v)
            )
        ),
        max_size=2,
        unique_by=lambda c: c[0],
    ).map(tuple),
    since=st.none() | st.integers(NOW - 5, NOW),
    until=st.none() | st.integers(NOW - 5, NOW),
    limit=st.none() | st.integers(0, 6),
)


class StoredValueTests(SynchronousTestCase):
    """
    L{storedValue} stores only canonical hex values as bytes.
    """

    def test_lowercaseHex(self) -> None:
        """
        64 lowercase hex characters are stored as the 32 bytes they spell.
        """
        self.assertEqual(storedValue("0f" * 32), b"\x0f" * 32)

    def test_otherValuesAsText(self) -> None:
        """
        Capitals, spaces, other characters and other lengths stay text: the
        bytes would not give the value back.
        """
        for value in ("0F" * 32, "0f " * 21 + "0", "0g" * 32, "0f" * 31, "0f" * 33, ""):
            self.assertEqual(storedValue(value), value)


class FreshRowsTests(StoreTestMixin, TestCase):
    """
    The id, tag and author rows of the newest events wait in tables of their
    own until more than C{freshEvents} events were stored since the last
    merge.
    """

    def rowCounts(self, store: SQLiteEventStore) -> tuple[int, ...]:
        connection = sqlite3.connect(store.path)
        self.addCleanup(connection.close)
        return tuple(
            connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("fresh_ids", "fresh_tags", "fresh_authors", "ids", "tags", "authors")
        )

    @inlineCallbacks
    def test_merged(self) -> Any:
        """
        The rows stay fresh up to the bound and are merged in the write that
        passes it; the events are found by id, by tag and by author before
        and after.
        """
        store = self.openStore(freshEvents=2)
        events = [note(content=str(i), tags=[["t", "x"]], createdAt=NOW - i) for i in range(3)]
        for event in events[:2]:
            yield store.save(event)
        self.assertEqual(self.rowCounts(store), (2, 2, 2, 0, 0, 0))
        byTag = [Filter(tags=(("t", frozenset(["x"])),))]
        byAuthor = [Filter(authors=frozenset([PUBKEYS[0]]))]
        self.assertEqual((yield store.query(byTag)), events[:2])
        self.assertEqual((yield store.query(byAuthor)), events[:2])
        yield store.save(events[2])
        self.assertEqual(self.rowCounts(store), (0, 0, 0, 3, 3, 3))
        self.assertEqual((yield store.query(byTag)), events)
        self.assertEqual((yield store.query(byAuthor)), events)
        self.assertEqual((yield store.fetch([e.id for e in events])), events)
        self.assertFalse((yield store.save(events[0])))

    @inlineCallbacks
    def test_mergedInSlices(self) -> Any:
        """
        A merge moves at most a slice of each fresh table per write, in key
        order, until a pass over them is done; the events are found by id,
        by tag and by author in the middle of it.
        """
        self.patch(sqlite, "_MERGE_SLICE_ROWS", 2)
        store = self.openStore(freshEvents=2)
        events = [note(content=str(i), tags=[["t", f"x{i}"]], createdAt=NOW - i) for i in range(3)]
        yield store.saveMany(events)
        self.assertEqual(self.rowCounts(store), (1, 1, 1, 2, 2, 2))
        self.assertEqual((yield store.fetch([e.id for e in events])), events)
        byAuthor = [Filter(authors=frozenset([PUBKEYS[0]]))]
        self.assertEqual((yield store.query(byAuthor)), events)
        for i, event in enumerate(events):
            byTag = Filter(tags=(("t", frozenset([f"x{i}"])),))
            self.assertEqual((yield store.query([byTag])), [event])
        self.assertFalse((yield store.save(events[0])))
        self.assertEqual(self.rowCounts(store), (0, 0, 0, 3, 3, 3))
        self.assertFalse((yield store.save(events[1])))
        self.assertEqual(self.rowCounts(store), (0, 0, 0, 3, 3, 3))

    @inlineCallbacks
    def test_countedAcrossOpens(self) -> Any:
        """
        A store opened on a file counts the fresh rows already in it.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "store.db")
        first = self.openStore(path, freshEvents=2)
        yield first.saveMany([note(content="a"), note(content="b")])
        yield first.close()
        second = self.openStore(path, freshEvents=2)
        yield second.save(note(content="c"))
        self.assertEqual(self.rowCounts(second)[:4], (0, 0, 0, 3))


def _merged(tests: type[StoreTestMixin]) -> type[StoreTestMixin]:
    """
    A subclass of C{tests} whose stores merge the id, tag and author rows
    into the large tables at every write (see L{StoreTestMixin.freshEvents}).
    """
    return type(
        tests.__name__.replace("Tests", "MergedTests"),
        (tests,),
        {"freshEvents": 0, "__doc__": f"L{{{tests.__name__}}}, rows merged at every write."},
    )


SaveAndQueryMergedTests = _merged(SaveAndQueryTests)
PagedQueryMergedTests = _merged(PagedQueryTests)
ReplacementMergedTests = _merged(ReplacementTests)
DeletionMergedTests = _merged(DeletionTests)
OperatorDeleteMergedTests = _merged(OperatorDeleteTests)
ExpirationMergedTests = _merged(ExpirationTests)
TagRowsMergedTests = _merged(TagRowsTests)


class ReferenceTests(SynchronousTestCase):
    """
    Queries against a reference implementation over generated events.
    """

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        events=_events,
        filters=st.lists(_filters, min_size=1, max_size=3),
        freshEvents=st.sampled_from([0, 2, DEFAULT_FRESH_EVENTS]),
        sliceRows=st.sampled_from([1, 3, 10_000]),
    )
    def test_matchesReference(
        self, events: list[Event], filters: list[Filter], freshEvents: int, sliceRows: int
    ) -> None:
        """
        C{query} returns the ids, in order, that L{Filter.matches}, NIP-01
        replacement, ordering and limits give; C{count} agrees with it when
        no filter has a limit; whether the events' id and tag rows were
        merged into the large tables (all, some or none, whole or in
        slices) makes no difference.
        """
        self.patch(sqlite, "_MERGE_SLICE_ROWS", sliceRows)
        pumped = PumpedReactor()
        store = SQLiteEventStore(
            self.mktemp(),
            reactor=pumped,
            clock=FakeWallClock(),  # type: ignore[arg-type]
            freshEvents=freshEvents,
        )
        try:
            for event in events:
                pumped.wait(store.save(event))
            stored = _kept(events)
            result = pumped.wait(store.query(filters))
            self.assertEqual([e.id for e in result], _reference(stored, filters))
            unlimited = [f.withLimit(None) for f in filters]
            self.assertEqual(
                pumped.wait(store.count(unlimited)), len(_reference(stored, unlimited))
            )
        finally:
            pumped.wait(store.close())
