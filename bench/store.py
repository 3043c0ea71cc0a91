"""
Benchmark of L{relaypool.store.sqlite.SQLiteEventStore}: insert throughput and
query latency at 100k and 1M stored events, beside the same work on a plain
SQLite table with no index (a table scan).

    python bench/store.py            # 100k, then 1M events
    python bench/store.py --quick    # 100k events only

Events are not signed (random ids and signatures): the store does not
verify them.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relaypool.nostr.event import Event  # noqa: E402
from relaypool.nostr.filter import Filter  # noqa: E402
from relaypool.store.sqlite import SQLiteEventStore  # noqa: E402

AUTHORS = 2000
START = 1_600_000_000
EVENTS_PER_SECOND = 10
CHUNK = 20_000


def _hex(rng: random.Random, size: int) -> str:
    return rng.randbytes(size).hex()


class EventSource:
    """
    Deterministic synthetic events: notes (kind 1), some replies with C{e}
    and C{p} tags, reactions (kind 7) and reposts (kind 6), ten per second.
    """

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)
        self.authors = [_hex(self._rng, 32) for _ in range(AUTHORS)]
        self.referenced: list[str] = []
        self._recent: list[str] = []
        self.made = 0

    def chunk(self, count: int) -> list[Event]:
        """
        The next C{count} events.
        """
        rng = self._rng
        events = []
        for _ in range(count):
            createdAt = START + self.made // EVENTS_PER_SECOND
            roll = rng.random()
            tags: tuple[tuple[str, ...], ...] = ()
            if roll < 0.6:
                kind = 1
                if self._recent and roll < 0.2:
                    target = rng.choice(self._recent)
                    tags = (("e", target), ("p", rng.choice(self.authors)))
                elif roll < 0.3:
                    tags = (("t", f"topic{rng.randrange(100)}"),)
            else:
                kind = 7 if roll < 0.9 else 6
                target = rng.choice(self._recent) if self._recent else _hex(rng, 32)
                tags = (("e", target), ("p", rng.choice(self.authors)))
            if tags and tags[0][0] == "e" and len(self.referenced) < 10_000:
                self.referenced.append(tags[0][1])
            event = Event(
                id=_hex(rng, 32),
                pubkey=rng.choice(self.authors),
                createdAt=createdAt,
                kind=kind,
                tags=tags,
                content="+" if kind == 7 else "benchmark note " + str(self.made),
                sig=_hex(rng, 64),
            )
            self._recent.append(event.id)
            if len(self._recent) > 1000:
                del self._recent[:500]
            events.append(event)
            self.made += 1
        return events

    def newest(self) -> int:
        """
        The C{created_at} of the newest event made.
        """
        return START + (self.made - 1) // EVENTS_PER_SECOND


class PlainTable:
    """
    The floor: one SQLite table, no index but the rowid, filters answered by
    a table scan.
    """

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(
            "CREATE TABLE plain (id TEXT, pubkey TEXT, kind INTEGER,"
            " created_at INTEGER, tags TEXT, raw BLOB)"
        )

    def insert(self, events: list[Event]) -> None:
        for start in range(0, len(events), 1000):
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO plain VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (e.id, e.pubkey, e.kind, e.createdAt, repr(e.tags), e.toJSON())
                    for e in events[start : start + 1000]
                ],
            )
            self._db.execute("COMMIT")

    def authorsKinds(self, author: str) -> None:
        self._db.execute(
            "SELECT raw FROM plain WHERE pubkey = ? AND kind IN (1, 7)"
            " ORDER BY created_at DESC, id LIMIT 50",
            (author,),
        ).fetchall()

    def tagE(self, target: str) -> None:
        self._db.execute(
            "SELECT raw FROM plain WHERE instr(tags, ?) ORDER BY created_at DESC, id",
            (f"('e', '{target}')",),
        ).fetchall()

    def kindsSince(self, since: int) -> None:
        self._db.execute(
            "SELECT raw FROM plain WHERE kind = 1 AND created_at >= ?"
            " ORDER BY created_at DESC, id",
            (since,),
        ).fetchall()

    def close(self) -> None:
        self._db.close()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def _shapes(source: EventSource, rng: random.Random) -> list[tuple[str, Callable[[], Any]]]:
    """
    Each filter shape: its name and a function making a random instance,
    as an argument list for the store and for the plain table.
    """
    since = source.newest() - 30
    return [
        (
            "authors+kinds limit 50",
            lambda: rng.choice(source.authors),
        ),
        ("#e tag", lambda: rng.choice(source.referenced)),
        ("kinds since (30 s)", lambda: since),
    ]


def _storeFilter(shape: str, argument: Any) -> Filter:
    if shape.startswith("authors"):
        return Filter(authors=frozenset([argument]), kinds=frozenset([1, 7]), limit=50)
    if shape.startswith("#e"):
        return Filter(tags=(("e", frozenset([argument])),))
    return Filter(kinds=frozenset([1]), since=argument)


@inlineCallbacks
def _insert(store: SQLiteEventStore, plain: PlainTable, events: list[Event]) -> Iterator[Any]:
    started = time.perf_counter()
    yield gatherResults([store.save(e) for e in events])
    storeSeconds = time.perf_counter() - started
    started = time.perf_counter()
    plain.insert(events)
    return storeSeconds, time.perf_counter() - started


@inlineCallbacks
def _measure(
    store: SQLiteEventStore,
    plain: PlainTable,
    source: EventSource,
    queries: int,
    plainQueries: int,
) -> Iterator[Any]:
    rng = random.Random(7)
    plainCalls = {
        "authors+kinds limit 50": plain.authorsKinds,
        "#e tag": plain.tagE,
        "kinds since (30 s)": plain.kindsSince,
    }
    print(f"  {'filter':24} {'store p50':>10} {'store p99':>10} {'results':>8}"
          f" {'scan p50':>10} {'scan p99':>10}")
    for shape, make in _shapes(source, rng):
        storeTimes = []
        results = 0
        for _ in range(queries):
            f = _storeFilter(shape, make())
            started = time.perf_counter()
            found = yield store.query([f])
            storeTimes.append(time.perf_counter() - started)
            results += len(found)
        plainTimes = []
        for _ in range(plainQueries):
            argument = make()
            started = time.perf_counter()
            plainCalls[shape](argument)
            plainTimes.append(time.perf_counter() - started)
        s50, s99 = _percentiles(storeTimes)
        p50, p99 = _percentiles(plainTimes)
        print(
            f"  {shape:24} {s50:8.2f}ms {s99:8.2f}ms {results / queries:8.1f}"
            f" {p50:8.1f}ms {p99:8.1f}ms"
        )


@inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Iterator[Deferred[Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k events only")
    parser.add_argument("--queries", type=int, default=500, help="per shape, store")
    parser.add_argument(
        "--scan-queries", type=int, default=10, help="per shape, plain table scan"
    )
    parser.add_argument("--dir", default=None, help="where the databases go")
    options = parser.parse_args(argv)
    total = 100_000 if options.quick else options.events
    checkpoints = sorted({min(100_000, total), total})
    directory = options.dir or tempfile.mkdtemp(prefix="relaypool-bench-")
    print(f"databases in {directory}; events are unsigned (the store does not verify)")
    store = SQLiteEventStore(os.path.join(directory, "store.db"), reactor=reactor)
    plain = PlainTable(os.path.join(directory, "plain.db"))
    source = EventSource()
    storeSeconds = plainSeconds = 0.0
    try:
        for checkpoint in checkpoints:
            while source.made < checkpoint:
                events = source.chunk(min(CHUNK, checkpoint - source.made))
                s, p = yield _insert(store, plain, events)
                storeSeconds += s
                plainSeconds += p
                print(f"  inserted {source.made:,}", end="\r", flush=True)
            print(f"{checkpoint:,} events stored")
            print(
                f"  inserts/s: store {source.made / storeSeconds:,.0f}"
                f" (batched transactions, via save() Deferreds),"
                f" plain table {source.made / plainSeconds:,.0f} (executemany, no index)"
            )
            yield _measure(store, plain, source, options.queries, options.scan_queries)
    finally:
        plain.close()
        yield store.close()


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
