"""
Tests for the migration of L{relaypool.store.sqlite.SQLiteEventStore}'s
database from schema version 3 (hex text ids, pubkeys and tag values), from
version 4 (the count of events and the check for deletion requests kept by
triggers), from version 5 (triggers refusing events stored already and
adding their fresh_ids rows) and from version 6 (the pubkey index on the
events table) to the current schema: a file is written with its version's
own SQL, then opened by the store.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from relaypool.errors import SchemaVersionError
from relaypool.nostr.event import Event, isAddressable, isReplaceable
from relaypool.nostr.filter import Filter
from relaypool.store.schema import SCHEMA_VERSION, migrate, schemaVersion, storedValue
from relaypool.store.sqlite import SQLiteEventStore
from tests.test_store import NOW, PUBKEYS, FakeWallClock, note, storedTagRows


def _writeVersion3(path: str, events: Sequence[Event]) -> None:
    """
    Write a version-3 database at C{path} holding C{events}, with the rows
    version 3 wrote for them (ids, pubkeys and tag values as text).
    """
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(connection, target=3)
        connection.execute("BEGIN")
        for event in events:
            address: str | None = None
            if isReplaceable(event.kind):
                address = ""
            elif isAddressable(event.kind):
                address = event.dTag()
            cursor = connection.execute(
                "INSERT INTO events (id, pubkey, kind, created_at, address, expiration, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.pubkey,
                    event.kind,
                    event.createdAt,
                    address,
                    event.expiration(),
                    event.toJSON(),
                ),
            )
            connection.executemany(
                "INSERT OR IGNORE INTO tags (seq, name, value, created_at) VALUES (?, ?, ?, ?)",
                [
                    (cursor.lastrowid, tag[0], tag[1], event.createdAt)
                    for tag in event.tags
                    if len(tag) > 1 and len(tag[0]) == 1 and tag[0].isalpha()
                ],
            )
        connection.execute("COMMIT")
    finally:
        connection.close()


def _insertEvent(connection: sqlite3.Connection, event: Event) -> int:
    """
    Insert C{event}'s row in the events table of versions 4 to 6 (id and
    pubkey as bytes), as those versions did for a regular event.

    @return: its seq.
    """
    cursor = connection.execute(
        "INSERT INTO events (id, pubkey, kind, created_at, raw) VALUES (?, ?, ?, ?, ?)",
        (
            bytes.fromhex(event.id),
            bytes.fromhex(event.pubkey),
            event.kind,
            event.createdAt,
            event.toJSON(),
        ),
    )
    seq = cursor.lastrowid
    assert seq is not None
    return seq


def _writeVersion4(path: str, events: Sequence[Event]) -> None:
    """
    Write a version-4 database at C{path} holding C{events} (regular ones
    and deletion requests), with the rows version 4 wrote for them.
    """
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(connection, target=4)
        connection.execute("BEGIN")
        for event in events:
            seq = _insertEvent(connection, event)
            connection.executemany(
                "INSERT OR IGNORE INTO tags (name, value, created_at, seq) VALUES (?, ?, ?, ?)",
                [
                    (tag[0], storedValue(tag[1]), event.createdAt, seq)
                    for tag in event.tags
                    if len(tag) > 1 and len(tag[0]) == 1 and tag[0].isalpha()
                ],
            )
        connection.execute("COMMIT")
    finally:
        connection.close()


class MigrationFromVersion4Tests(TestCase):
    """
    A version-4 database opened by the store is migrated: the stored
    deletion requests still refuse what they name, and the count of events
    that bounds the store stays right.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "store.db")
        self.deleted = note(content="deleted")
        self.theirs = note(content="theirs", key=1)
        self.oldest = note(content="oldest", createdAt=NOW - 200)
        self.request = note(
            kind=5, tags=[["e", self.deleted.id], ["e", self.theirs.id], ["e", "not hex"]]
        )
        _writeVersion4(self.path, [self.oldest, self.request])

    @inlineCallbacks
    def test_deletion(self) -> Any:
        """
        The request still refuses its author's event, and not another
        author's with an id it names; once it is removed, it refuses
        nothing.
        """
        store = SQLiteEventStore(self.path)
        self.addCleanup(store.close)
        self.assertFalse((yield store.save(self.deleted)))
        self.assertTrue((yield store.save(self.theirs)))
        yield store.delete([self.request.id])
        self.assertTrue((yield store.save(self.deleted)))

    @inlineCallbacks
    def test_count(self) -> Any:
        """
        The count that version 4's triggers kept goes on from where it was:
        past C{maxEvents}, the oldest event is evicted.
        """
        store = SQLiteEventStore(self.path, maxEvents=2)
        self.addCleanup(store.close)
        newer = note(content="newer", createdAt=NOW - 50)
        self.assertEqual((yield store.saveMany([newer])), [True])
        self.assertEqual(
            sorted(e.id for e in (yield store.query([Filter()]))),
            sorted([self.request.id, newer.id]),
        )


def _writeVersion5(path: str, events: Sequence[Event]) -> None:
    """
    Write a version-5 database at C{path} holding C{events} (regular ones
    without tags), inserted as version 5 inserted them: its triggers added
    their fresh_ids rows.
    """
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(connection, target=5)
        connection.execute("BEGIN")
        for event in events:
            _insertEvent(connection, event)
        connection.execute("UPDATE stats SET events = ?", (len(events),))
        connection.execute("COMMIT")
    finally:
        connection.close()


class MigrationFromVersion5Tests(TestCase):
    """
    A version-5 database opened by the store is migrated: its triggers are
    gone, and the store itself refuses what is stored already and finds
    what it stores by id.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "store.db")
        self.stored = note(content="stored")
        _writeVersion5(self.path, [self.stored])

    def test_triggers(self) -> Any:
        """
        Of version 5's triggers, none refusing events or adding their rows
        is left: only one deleting an event's rows.
        """
        store = SQLiteEventStore(self.path)
        self.addCleanup(store.close)
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(
            connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
            ).fetchall(),
            [("events_rows_delete",)],
        )

    @inlineCallbacks
    def test_storedOnce(self) -> Any:
        """
        An event version 5 stored is refused by C{save} and C{saveMany};
        a new one is stored once and found by id.
        """
        store = SQLiteEventStore(self.path)
        self.addCleanup(store.close)
        new = note(content="new")
        self.assertFalse((yield store.save(self.stored)))
        self.assertEqual((yield store.saveMany([self.stored, new, new])), [False, True, False])
        found = yield store.query([Filter(ids=frozenset([self.stored.id, new.id]))])
        self.assertEqual(sorted(e.id for e in found), sorted([self.stored.id, new.id]))
        self.assertEqual((yield store.count([Filter()])), 2)


class MigrationFromVersion6Tests(TestCase):
    """
    A version-6 database (the pubkey index on the events table) opened by
    the store is migrated: its events are found by author from the authors
    table, and deleting one removes its row there.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "store.db")
        self.events = [note(content=f"note {i}", key=i % 2, createdAt=NOW - i) for i in range(4)]
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            migrate(connection, target=6)
            connection.execute("BEGIN")
            for event in self.events:
                connection.execute(
                    "INSERT INTO fresh_ids (prefix, seq) VALUES (?, ?)",
                    (bytes.fromhex(event.id)[:8], _insertEvent(connection, event)),
                )
            connection.execute("UPDATE stats SET events = ?", (len(self.events),))
            connection.execute("COMMIT")
        finally:
            connection.close()

    @inlineCallbacks
    def test_byAuthor(self) -> Any:
        """
        Each author's events are found, newest first, also with kinds and
        a limit; the count agrees.
        """
        store = SQLiteEventStore(self.path)
        self.addCleanup(store.close)
        for key in (0, 1):
            author = PUBKEYS[key]
            mine = [e.id for e in self.events if e.pubkey == author]
            found = yield store.query([Filter(authors=frozenset([author]))])
            self.assertEqual([e.id for e in found], mine)
            found = yield store.query(
                [Filter(authors=frozenset([author]), kinds=frozenset([1]), limit=1)]
            )
            self.assertEqual([e.id for e in found], mine[:1])
            self.assertEqual((yield store.count([Filter(authors=frozenset([author]))])), 2)

    @inlineCallbacks
    def test_deleteRemovesAuthorRow(self) -> Any:
        """
        An event deleted from the store leaves no row in the authors
        tables.
        """
        store = SQLiteEventStore(self.path)
        self.addCleanup(store.close)
        self.assertEqual((yield store.delete([self.events[0].id])), 1)
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        rows = connection.execute(
            "SELECT count(*) FROM (SELECT seq FROM authors UNION ALL SELECT seq FROM fresh_authors)"
        ).fetchone()[0]
        self.assertEqual(rows, len(self.events) - 1)


class MigrationFromVersion3Tests(TestCase):
    """
    A version-3 database opened by the store is migrated and keeps every
    event, tag, deletion and outbox entry.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "store.db")
        self.target = "f" * 64
        self.deleted = note(content="deleted later", createdAt=NOW - 50)
        self.regular = note(
            content="tagged",
            tags=[["e", self.target], ["p", PUBKEYS[1]], ["t", "nostr"]],
            createdAt=NOW - 40,
        )
        self.profile = note(kind=0, content="{}", createdAt=NOW - 30)
        self.article = note(kind=30023, tags=[["d", "post"]], createdAt=NOW - 20)
        self.deletion = note(kind=5, tags=[["e", self.deleted.id]], createdAt=NOW - 10)
        self.expiring = note(
            content="expires", tags=[["expiration", str(NOW + 100)]], createdAt=NOW - 5
        )
        self.events = [self.regular, self.profile, self.article, self.deletion, self.expiring]
        _writeVersion3(self.path, self.events)
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute(
            "INSERT INTO outbox (event_id, raw, enqueued_at) VALUES (?, ?, ?)",
            (self.regular.id, self.regular.toJSON(), NOW),
        )
        connection.executemany(
            "INSERT INTO outbox_relays (event_id, relay, accepted, attempts, last_message,"
            " last_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (self.regular.id, "ws://a", 1, 1, "", NOW),
                (self.regular.id, "ws://b", 0, 2, "rate-limited: slow", NOW),
            ],
        )
        connection.close()
        self.clock = FakeWallClock()
        self.store = SQLiteEventStore(self.path, clock=self.clock)
        self.addCleanup(self.store.close)

    def test_version(self) -> None:
        """
        The file has the current schema version once opened.
        """
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(schemaVersion(connection), SCHEMA_VERSION)

    @inlineCallbacks
    def test_events(self) -> Any:
        """
        Every event is kept and found by id, author and kind, newest first.
        """
        everything = sorted(self.events, key=lambda e: (-e.createdAt, e.id))
        self.assertEqual((yield self.store.query([Filter()])), everything)
        self.assertEqual((yield self.store.count([Filter()])), len(self.events))
        ids = frozenset(e.id for e in self.events)
        self.assertEqual((yield self.store.query([Filter(ids=ids)])), everything)
        byAuthor = yield self.store.query([Filter(authors=frozenset([PUBKEYS[0]]))])
        self.assertEqual(byAuthor, everything)
        byKind = yield self.store.query([Filter(kinds=frozenset([30023]))])
        self.assertEqual(byKind, [self.article])
        self.assertEqual(
            (yield self.store.fetch([self.profile.id, self.regular.id])),
            [self.profile, self.regular],
        )

    @inlineCallbacks
    def test_tags(self) -> Any:
        """
        The tags are kept: hex values (ids, pubkeys) and others are found.
        """
        for name, value in (("e", self.target), ("p", PUBKEYS[1]), ("t", "nostr")):
            found = yield self.store.query([Filter(tags=((name, frozenset([value])),))])
            self.assertEqual(found, [self.regular], (name, value))
        byD = yield self.store.query([Filter(tags=(("d", frozenset(["post"])),))])
        self.assertEqual(byD, [self.article])

    @inlineCallbacks
    def test_deletion(self) -> Any:
        """
        A deletion request stored before the migration still refuses the
        event it names.
        """
        self.assertFalse((yield self.store.save(self.deleted)))
        self.assertEqual((yield self.store.fetch([self.deleted.id])), [])

    @inlineCallbacks
    def test_replaceable(self) -> Any:
        """
        The replaceable and addressable events keep their addresses: a newer
        version replaces each, an older one is refused.
        """
        self.assertFalse((yield self.store.save(note(kind=0, createdAt=NOW - 31))))
        newer = note(kind=30023, tags=[["d", "post"]], content="v2", createdAt=NOW - 1)
        self.assertTrue((yield self.store.save(newer)))
        found = yield self.store.query([Filter(kinds=frozenset([30023]))])
        self.assertEqual(found, [newer])

    @inlineCallbacks
    def test_expiration(self) -> Any:
        """
        The expiration time is kept: the event is not returned once expired.
        """
        self.clock.now = NOW + 100
        self.assertEqual((yield self.store.fetch([self.expiring.id])), [])

    @inlineCallbacks
    def test_outbox(self) -> Any:
        """
        The outbox entries and each relay's record are kept.
        """
        [entry] = yield self.store.pending()
        self.assertEqual(entry.event, self.regular)
        self.assertEqual(
            {url: (d.accepted, d.attempts, d.lastMessage) for url, d in entry.relays.items()},
            {"ws://a": (True, 1, ""), "ws://b": (False, 2, "rate-limited: slow")},
        )

    @inlineCallbacks
    def test_deleteRemovesTags(self) -> Any:
        """
        Deleting a migrated event removes its migrated tag rows too.
        """
        self.assertEqual((yield self.store.delete([self.regular.id])), 1)
        yield self.store.close()
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        names = [row[0] for row in storedTagRows(connection, "name, value, seq")]
        self.assertEqual(names, ["d", "e"])


class NewerVersionTests(TestCase):
    """
    A file written by a newer relaypool is not touched.
    """

    def test_newerVersion(self) -> None:
        """
        Opening a database whose schema version is newer than
        L{SCHEMA_VERSION} raises L{SchemaVersionError} and leaves the file
        as it was.
        """
        path = self.mktemp()
        _writeVersion3(path, [note()])
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.commit()
        connection.close()
        error = self.assertRaises(SchemaVersionError, SQLiteEventStore, path)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", str(error))
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(
            connection.execute("SELECT typeof(id) FROM events").fetchall(), [("text",)]
        )
