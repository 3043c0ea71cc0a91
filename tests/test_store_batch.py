"""
Tests for the store's writer running a batch of saves together
(L{relaypool.store.sqlite._saveEvents}, which runs the save() calls waiting
together, L{relaypool.store.sqlite._SaveJob.runAll}): whatever the batch
holds, it leaves the database as saving the events one at a time does.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaypool.nostr.event import Event
from relaypool.store.schema import migrate
from relaypool.store.sqlite import _saveEvent, _saveEvents, _SaveJob
from tests.test_store import NOW, note

# Strings that JSON writes with escapes, and characters beyond ASCII.
_AWKWARD_CONTENT = [
    "",
    'quote " and backslash \\',
    "line\nbreak\ttab\r",
    "nul \x00 and \x1f",
    "caf\u00e9 \u2028 \u2029 \U0001f600",
    "</script>",
]


def _database() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection)
    return connection


def _contents(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    """
    The stored events and tag rows, without the row numbers (which may
    differ where an insert was skipped).
    """
    events = connection.execute(
        "SELECT id, pubkey, kind, created_at, address, expiration, raw FROM events ORDER BY id"
    ).fetchall()
    tags = connection.execute(
        "SELECT t.name, t.value, t.created_at, e.id"
        " FROM (SELECT * FROM tags UNION ALL SELECT * FROM fresh_tags) t"
        " JOIN events e ON e.seq = t.seq ORDER BY 1, 2, 3, 4"
    ).fetchall()
    return events, tags


def _saveOneByOne(events: list[Event]) -> tuple[list[bool], tuple[list[Any], list[Any]]]:
    connection = _database()
    connection.execute("BEGIN")
    saved = [_saveEvent(event, event.expiration(), connection) for event in events]
    connection.execute("COMMIT")
    return saved, _contents(connection)


def _saveTogether(events: list[Event]) -> tuple[list[bool], tuple[list[Any], list[Any]]]:
    connection = _database()
    connection.execute("BEGIN")
    saved = list(
        _SaveJob.runAll([_SaveJob(event, event.expiration()) for event in events], connection)
    )
    connection.execute("COMMIT")
    return saved, _contents(connection)


_plainSpecs = st.tuples(
    st.integers(0, 2),
    st.sampled_from([1, 7, 1, 1, 0, 30023, 5]),
    st.sampled_from(_AWKWARD_CONTENT),
    st.lists(
        st.sampled_from([["t", "x"], ["p", "ab" * 32], ["e", "cd" * 32], ["t", "x"], ["r", "y"]]),
        max_size=3,
    ),
    st.booleans(),
)


@st.composite
def _batches(draw: st.DrawFn) -> list[Event]:
    """
    Events to save in one batch: mostly plain ones, some repeated, some
    deletion requests for earlier ones, replaceable and addressable ones,
    and some with an expiration.
    """
    events: list[Event] = []
    for i, (key, kind, content, tags, expiring) in enumerate(
        draw(st.lists(_plainSpecs, min_size=1, max_size=25))
    ):
        if events and draw(st.integers(0, 5)) == 0:
            events.append(draw(st.sampled_from(events)))
            continue
        tags = list(tags)
        if kind == 5 and events:
            target = draw(st.sampled_from(events))
            tags = [["e", target.id]]
        if kind == 30023:
            tags = [["d", "article"]] + tags
        if expiring:
            tags.append(["expiration", str(NOW + 1000)])
        events.append(
            note(key=key, kind=kind, content=f"{content} {i}", tags=tags, createdAt=NOW - i)
        )
    return events


class SaveTogetherTests(SynchronousTestCase):
    """
    L{_saveEvents} against L{_saveEvent} called for each event in turn.
    """

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(events=_batches())
    def test_sameAsOneByOne(self, events: list[Event]) -> None:
        """
        Each event's result and the database's contents (events with their
        raw JSON, tag rows) are those of saving the events one at a time.
        """
        self.assertEqual(_saveTogether(events), _saveOneByOne(events))

    def test_rawJSONKept(self) -> None:
        """
        Events inserted together keep the JSON that L{Event.toJSON} writes,
        byte for byte, whatever their content.
        """
        events = [note(content=content, tags=[["t", content]]) for content in _AWKWARD_CONTENT]
        saved, (rows, tags) = _saveTogether(events)
        self.assertEqual(saved, [True] * len(events))
        self.assertEqual(
            sorted(row[6] for row in rows), sorted(event.toJSON() for event in events)
        )
        self.assertEqual(sorted(row[1] for row in tags), sorted(_AWKWARD_CONTENT))

    def test_repeatsAndStoredOnes(self) -> None:
        """
        An event already stored, or twice in the batch, is stored once: the
        first time it comes, C{True}; every other time, C{False}.
        """
        connection = _database()
        stored, fresh = note(content="stored"), note(content="fresh")
        _saveEvent(stored, None, connection)
        saved = _saveEvents(
            [fresh, stored, fresh, note(content="other")], [None] * 4, connection
        )
        self.assertEqual(saved, [True, False, False, True])
        self.assertEqual(connection.execute("SELECT events FROM stats").fetchone(), (3,))

    def test_deletedByRequestInTheBatch(self) -> None:
        """
        A deletion request in the batch deletes the events before it and
        keeps out those after it that it names.
        """
        first, later = note(content="first"), note(content="later")
        request = note(kind=5, tags=[["e", first.id], ["e", later.id]])
        saved, (rows, _) = _saveTogether([first, note(content="kept"), request, later])
        self.assertEqual(saved, [True, True, True, False])
        self.assertEqual(len(rows), 2)
