"""
The schema of L{relaypool.store.sqlite}'s SQLite database and its migrations.

The schema version is kept in C{PRAGMA user_version}. L{MIGRATIONS} holds one
step per version: step C{n} takes a database from version C{n} to C{n + 1},
version 0 being an empty file. A database is always migrated step by step, so
a file made by any earlier relaypool opens with the current one.

From version 4 on, event ids and pubkeys are stored as 32-byte BLOBs, and so
is every tag value that is 64 lowercase hex characters (see L{storedValue}).
From version 5 on, the id and tag rows of the newest events are in the
fresh_ids and fresh_tags tables until the store merges them into the ids and
tags tables: a lookup reads both. From version 6 on, no trigger refuses an
event stored already or deleted, nor adds its fresh_ids row: the store does.
From version 7 on, the pubkey index is the authors and fresh_authors tables,
kept like ids and fresh_ids.
"""

from __future__ import annotations

import sqlite3

from relaypool.errors import SchemaVersionError

_VERSION_1 = (
    # Events: the raw JSON plus the columns NIP-01 filters select on.
    # address is NULL for regular events, "" for replaceable ones and the
    # d tag for addressable ones: with pubkey and kind, the replacement key.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        pubkey TEXT NOT NULL,
        kind INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        address TEXT,
        expiration INTEGER,
        raw BLOB NOT NULL
    )
    """,
    "CREATE INDEX events_created_at ON events (created_at DESC, id)",
    # With id, it covers the ordering of authors(+kinds) queries: the
    # newest are picked from the index and only they are read.
    "CREATE INDEX events_pubkey ON events (pubkey, kind, created_at DESC, id)",
    "CREATE INDEX events_kind ON events (kind, created_at DESC)",
    """
    CREATE UNIQUE INDEX events_address ON events (pubkey, kind, address)
    WHERE address IS NOT NULL
    """,
    """
    CREATE INDEX events_expiration ON events (expiration)
    WHERE expiration IS NOT NULL
    """,
    # One row per distinct (single-letter name, first value) of an event.
    """
    CREATE TABLE tags (
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (seq, name, value)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX tags_value ON tags (name, value, created_at DESC)",
    "CREATE TABLE stats (events INTEGER NOT NULL)",
    "INSERT INTO stats (events) VALUES (0)",
    """
    CREATE TRIGGER events_insert AFTER INSERT ON events BEGIN
        UPDATE stats SET events = events + 1;
    END
    """,
    """
    CREATE TRIGGER events_delete AFTER DELETE ON events BEGIN
        UPDATE stats SET events = events - 1;
        DELETE FROM tags WHERE seq = old.seq;
    END
    """,
)

_VERSION_2 = (
    # The publish outbox: events to send upstream and each relay's answer.
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        raw BLOB NOT NULL,
        enqueued_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE outbox_relays (
        event_id TEXT NOT NULL,
        relay TEXT NOT NULL,
        accepted INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_message TEXT NOT NULL DEFAULT '',
        last_attempt_at REAL,
        PRIMARY KEY (event_id, relay)
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER outbox_delete AFTER DELETE ON outbox BEGIN
        DELETE FROM outbox_relays WHERE event_id = old.event_id;
    END
    """,
)

_VERSION_3 = (
    # A relay that refused an outbox event for good (a final refusal, see
    # relaypool.nostr.messages.FINAL_REFUSAL_PREFIXES) is settled: it is
    # not retried, and the event does not wait for it.
    "ALTER TABLE outbox_relays ADD COLUMN refused INTEGER NOT NULL DEFAULT 0",
    # Settle the final refusals recorded before, then drop the events that
    # wait for no relay any more. The prefixes are those of this version,
    # written out: a migration step never changes.
    """
    UPDATE outbox_relays SET refused = 1
    WHERE accepted = 0 AND (
        last_message GLOB 'blocked:*' OR last_message GLOB 'invalid:*'
        OR last_message GLOB 'pow:*' OR last_message GLOB 'restricted:*'
        OR last_message GLOB 'mute:*'
    )
    """,
    """
    DELETE FROM outbox WHERE NOT EXISTS (
        SELECT 1 FROM outbox_relays
        WHERE outbox_relays.event_id = outbox.event_id
        AND accepted = 0 AND refused = 0
    )
    """,
)


def storedValue(value: str) -> bytes | str:
    """
    How an event id, a pubkey or a tag value is stored: a value of 64
    lowercase hex characters as the 32 bytes it spells, any other as it is
    (SQLite never finds a BLOB equal to a TEXT, so the two cannot mix up).
    """
    if len(value) == 64:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return value
        # fromhex also takes capitals and spaces: only the value that the
        # bytes spell back is stored as them.
        if raw.hex() == value:
            return raw
    return value


_VERSION_4 = (
    # Ids, pubkeys and hex tag values as 32-byte BLOBs, and narrower
    # indexes: a query ordered by (created_at DESC, id) sorts the ties of
    # the index's created_at order, reading id from the table row.
    "DROP TRIGGER events_insert",
    "DROP TRIGGER events_delete",
    """
    CREATE TABLE events_v4 (
        seq INTEGER PRIMARY KEY,
        id BLOB NOT NULL,
        pubkey BLOB NOT NULL,
        kind INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        address TEXT,
        expiration INTEGER,
        raw BLOB NOT NULL
    )
    """,
    """
    INSERT INTO events_v4 (seq, id, pubkey, kind, created_at, address, expiration, raw)
    SELECT seq, relaypool_stored(id), relaypool_stored(pubkey), kind, created_at,
        address, expiration, raw
    FROM events ORDER BY seq
    """,
    # One row per distinct (single-letter name, first value) of an event,
    # keyed for the tag queries. The store deletes an event's rows with
    # the event (the keys come from its raw JSON): no index on seq.
    """
    CREATE TABLE tags_v4 (
        name TEXT NOT NULL,
        value NOT NULL,
        created_at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (name, value, created_at, seq)
    ) WITHOUT ROWID
    """,
    """
    INSERT INTO tags_v4 (name, value, created_at, seq)
    SELECT name, relaypool_stored(value), created_at, seq FROM tags
    """,
    "DROP TABLE tags",
    "DROP TABLE events",
    "ALTER TABLE events_v4 RENAME TO events",
    "ALTER TABLE tags_v4 RENAME TO tags",
    # The id and pubkey indexes hold their first 8 bytes: random keys, so
    # each insert writes pages all over them, and narrow ones have fewer.
    # A lookup compares the whole value in the row; the events_refuse
    # trigger keeps ids unique.
    "CREATE INDEX events_id ON events (substr(id, 1, 8))",
    "CREATE INDEX events_created_at ON events (created_at)",
    # An author's events newest first, their kinds read from the index: a
    # query for some of an author's kinds reads only the rows it returns.
    "CREATE INDEX events_pubkey ON events (substr(pubkey, 1, 8), created_at, kind)",
    "CREATE INDEX events_kind ON events (kind, created_at)",
    """
    CREATE UNIQUE INDEX events_address ON events (pubkey, kind, address)
    WHERE address IS NOT NULL
    """,
    """
    CREATE INDEX events_expiration ON events (expiration)
    WHERE expiration IS NOT NULL
    """,
    # An event already stored, or (unless it is one itself) named by id in
    # a deletion request of its author, is not inserted (no error).
    """
    CREATE TRIGGER events_refuse BEFORE INSERT ON events BEGIN
        SELECT RAISE(IGNORE) WHERE EXISTS (
            SELECT 1 FROM events
            WHERE substr(id, 1, 8) = substr(new.id, 1, 8) AND id = new.id
        ) OR (new.kind != 5 AND EXISTS (
            SELECT 1 FROM tags t JOIN events d ON d.seq = t.seq
            WHERE t.name = 'e' AND t.value = new.id AND d.kind = 5
            AND d.pubkey = new.pubkey
        ));
    END
    """,
    """
    CREATE TRIGGER events_insert AFTER INSERT ON events BEGIN
        UPDATE stats SET events = events + 1;
    END
    """,
    """
    CREATE TRIGGER events_delete AFTER DELETE ON events BEGIN
        UPDATE stats SET events = events - 1;
    END
    """,
)

_VERSION_5 = (
    # Work taken off each insert. The store keeps the count of events in
    # stats itself, one update per statement instead of a trigger per row.
    "DROP TRIGGER events_insert",
    "DROP TRIGGER events_delete",
    "DROP TRIGGER events_refuse",
    # The ids that stored deletion requests name (e tags holding an id),
    # with the request's author and seq: the store adds a request's rows
    # when it stores it and removes them with it. An insert checks this
    # small table instead of the whole tag index.
    """
    CREATE TABLE deleted (
        id BLOB NOT NULL,
        pubkey BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (id, pubkey, seq)
    ) WITHOUT ROWID
    """,
    """
    INSERT OR IGNORE INTO deleted (id, pubkey, seq)
    SELECT t.value, d.pubkey, d.seq FROM tags t JOIN events d ON d.seq = t.seq
    WHERE t.name = 'e' AND typeof(t.value) = 'blob' AND length(t.value) = 32
    AND d.kind = 5
    """,
    # The id index becomes a table keyed by (8-byte prefix, seq), and the
    # rows of the newest events (their id and tag rows) go to small tables
    # of their own first: an insert writes to small B-trees whose pages
    # stay hot, and the store merges them into the large ones in key order
    # now and then (SQLiteEventStore's freshEvents), where each page takes
    # many rows at once. Random-keyed inserts into the large B-trees were
    # most of an insert's cost at a million events. A lookup reads both.
    "DROP INDEX events_id",
    """
    CREATE TABLE ids (
        prefix BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (prefix, seq)
    ) WITHOUT ROWID
    """,
    "INSERT INTO ids (prefix, seq) SELECT substr(id, 1, 8), seq FROM events ORDER BY 1, 2",
    """
    CREATE TABLE fresh_ids (
        prefix BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (prefix, seq)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE fresh_tags (
        name TEXT NOT NULL,
        value NOT NULL,
        created_at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (name, value, created_at, seq)
    ) WITHOUT ROWID
    """,
    # An event already stored, or (unless it is one itself) named by id in
    # a deletion request of its author, is not inserted (no error).
    """
    CREATE TRIGGER events_refuse BEFORE INSERT ON events BEGIN
        SELECT RAISE(IGNORE) WHERE EXISTS (
            SELECT 1 FROM events WHERE seq IN (
                SELECT seq FROM ids WHERE prefix = substr(new.id, 1, 8)
                UNION ALL
                SELECT seq FROM fresh_ids WHERE prefix = substr(new.id, 1, 8)
            ) AND id = new.id
        ) OR (new.kind != 5 AND EXISTS (
            SELECT 1 FROM deleted WHERE id = new.id AND pubkey = new.pubkey
        ));
    END
    """,
    # Row by row, so that a statement inserting the same event twice stores
    # it once.
    """
    CREATE TRIGGER events_id_insert AFTER INSERT ON events BEGIN
        INSERT INTO fresh_ids (prefix, seq) VALUES (substr(new.id, 1, 8), new.seq);
    END
    """,
    """
    CREATE TRIGGER events_id_delete AFTER DELETE ON events BEGIN
        DELETE FROM fresh_ids WHERE prefix = substr(old.id, 1, 8) AND seq = old.seq;
        DELETE FROM ids WHERE prefix = substr(old.id, 1, 8) AND seq = old.seq;
    END
    """,
)

_VERSION_6 = (
    # The store itself refuses an event stored already or named by id in a
    # deletion request of its author (unless it is one itself), and adds
    # its fresh_ids row: one statement for a run of events instead of two
    # trigger programs run for each row, which were a third of the cost of
    # an insert at 100k stored events.
    "DROP TRIGGER events_refuse",
    "DROP TRIGGER events_id_insert",
)

_VERSION_7 = (
    # The pubkey index becomes a table keyed by (8-byte pubkey prefix,
    # created_at, kind, seq), with a fresh twin for the newest events,
    # merged into it like the ids and tags tables: with a few thousand
    # authors, each commit wrote a page of the index per author, and the
    # index was a third of an insert's cost at a million events.
    "DROP INDEX events_pubkey",
    """
    CREATE TABLE authors (
        prefix BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (prefix, created_at, kind, seq)
    ) WITHOUT ROWID
    """,
    """
    INSERT INTO authors (prefix, created_at, kind, seq)
    SELECT substr(pubkey, 1, 8), created_at, kind, seq FROM events ORDER BY 1, 2, 3, 4
    """,
    """
    CREATE TABLE fresh_authors (
        prefix BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (prefix, created_at, kind, seq)
    ) WITHOUT ROWID
    """,
    "DROP TRIGGER events_id_delete",
    """
    CREATE TRIGGER events_rows_delete AFTER DELETE ON events BEGIN
        DELETE FROM fresh_ids WHERE prefix = substr(old.id, 1, 8) AND seq = old.seq;
        DELETE FROM ids WHERE prefix = substr(old.id, 1, 8) AND seq = old.seq;
        DELETE FROM fresh_authors WHERE prefix = substr(old.pubkey, 1, 8)
            AND created_at = old.created_at AND kind = old.kind AND seq = old.seq;
        DELETE FROM authors WHERE prefix = substr(old.pubkey, 1, 8)
            AND created_at = old.created_at AND kind = old.kind AND seq = old.seq;
    END
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _VERSION_1,
    _VERSION_2,
    _VERSION_3,
    _VERSION_4,
    _VERSION_5,
    _VERSION_6,
    _VERSION_7,
)
"""
The SQL statements of each migration step, step C{n} taking a database from
version C{n} to C{n + 1}.
"""

SCHEMA_VERSION = len(MIGRATIONS)
"""
The schema version this relaypool writes.
"""


def schemaVersion(connection: sqlite3.Connection) -> int:
    """
    The schema version of the database open on C{connection}.
    """
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(connection: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """
    Bring the database open on C{connection} (in autocommit mode) to schema
    version C{target}, one committed step at a time.

    @return: the version the database had before.
    @raise SchemaVersionError: if the database has a version newer than
        L{SCHEMA_VERSION}.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        original = schemaVersion(connection)
    finally:
        connection.execute("COMMIT")
    if original > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has schema version {original}, newer than the"
            f" newest this relaypool knows ({SCHEMA_VERSION}): open it with"
            " a newer relaypool"
        )
    # For the migration steps' SQL.
    connection.create_function("relaypool_stored", 1, storedValue, deterministic=True)
    for step in range(original, target):
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it in between.
            if schemaVersion(connection) == step:
                for statement in MIGRATIONS[step]:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {step + 1:d}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    return original


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schemaVersion", "storedValue"]
