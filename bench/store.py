"""
Benchmark of L{relaypool.store.sqlite.SQLiteEventStore}: insert throughput
(through saveMany() calls and through a save() call per event), the cost of
one insert, query latency and bytes on disk per event at 10k, 100k and 1M
stored events, beside the same work on a plain SQLite table with no index (a
table scan).

    python bench/store.py                       # 10k, 100k, then 1M events
    python bench/store.py --quick               # 10k and 100k events
    python bench/store.py --sizes 10000,50000   # other sizes
    python bench/store.py --against 68fd430     # beside an earlier store
    python bench/store.py --gc-threshold 10000  # Python's collector set otherwise

Events are not signed (random ids and signatures): the store does not
verify them.

With --against REF, the store of git revision REF (this repository's) is
measured first, in a subprocess on the same events (a save() call per event
where it has no saveMany()), and each insert rate is printed as a ratio to
it. This machine's speed
drifts (the plain table's rate, printed for both runs, shows by how much), so
a target set as an absolute rate on another day is best read as its ratio to
the store of that day: issue 12 measured the store at 68fd430.

Python's cyclic garbage collector keeps its own settings unless
--gc-threshold sets its first threshold (for the earlier store of --against
too), and the time it took is printed at each size: save() calls make many
objects that wait for the writer thread, and collections of them take a
share of the save() figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.python.failure import Failure

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The relaypool measured: this repository's, or (for --against) the copy of
# an earlier revision's named by this variable.
CODE_VARIABLE = "RELAYPOOL_BENCH_CODE"
sys.path.insert(0, os.environ.get(CODE_VARIABLE) or REPOSITORY)

from relaypool.nostr.event import Event  # noqa: E402
from relaypool.nostr.filter import Filter  # noqa: E402
from relaypool.store.sqlite import SQLiteEventStore  # noqa: E402

AUTHORS = 2000
START = 1_600_000_000
EVENTS_PER_SECOND = 10
CHUNK = 20_000
# Events per saveMany() call.
MANY = 1_000


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

    def ids(self, ids: list[str]) -> None:
        self._db.execute(
            f"SELECT raw FROM plain WHERE id IN ({', '.join('?' * len(ids))})"
            " ORDER BY created_at DESC, id",
            ids,
        ).fetchall()

    def untilLimit(self, until: int) -> None:
        self._db.execute(
            "SELECT raw FROM plain WHERE created_at <= ? ORDER BY created_at DESC, id"
            " LIMIT 100",
            (until,),
        ).fetchall()

    def kindsSince(self, since: int) -> None:
        self._db.execute(
            "SELECT raw FROM plain WHERE kind = 1 AND created_at >= ?"
            " ORDER BY created_at DESC, id",
            (since,),
        ).fetchall()

    def usedBytes(self) -> int:
        return _usedBytes(self._db)

    def close(self) -> None:
        self._db.close()


def _usedBytes(db: sqlite3.Connection) -> int:
    """
    The bytes of the database's pages in use, its WAL copied back first.
    """
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages, free, size = (
        db.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("page_count", "freelist_count", "page_size")
    )
    used: int = (pages - free) * size
    return used


def _cpuSeconds() -> float:
    """
    The CPU time of this process (every thread), user and system.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        ("ids (10)", lambda: [rng.choice(source.referenced) for _ in range(10)]),
        ("until limit 100", lambda: rng.randrange(START, source.newest() + 1)),
    ]


def _storeFilter(shape: str, argument: Any) -> Filter:
    if shape.startswith("authors"):
        return Filter(authors=frozenset([argument]), kinds=frozenset([1, 7]), limit=50)
    if shape.startswith("#e"):
        return Filter(tags=(("e", frozenset([argument])),))
    if shape.startswith("ids"):
        return Filter(ids=frozenset(argument))
    if shape.startswith("until"):
        return Filter(until=argument, limit=100)
    return Filter(kinds=frozenset([1]), since=argument)


def _saveAll(store: SQLiteEventStore, events: list[Event]) -> Deferred[None]:
    """
    Save C{events}, each with its own L{SQLiteEventStore.save} call, as the
    gateway saves clients' EVENTs: one callback per save (a
    L{gatherResults} over them would cost the reactor thread 6 us per save
    itself).

    @return: a Deferred firing once every save has, failing with the
        first failure.
    """
    done: Deferred[None] = Deferred()
    waiting = [len(events)]
    failures: list[Failure] = []

    def saved(result: object) -> None:
        if isinstance(result, Failure):
            failures.append(result)
        waiting[0] -= 1
        if waiting[0] == 0:
            if failures:
                done.errback(failures[0])
            else:
                done.callback(None)

    for event in events:
        store.save(event).addBoth(saved)
    return done


def _saveInCalls(store: SQLiteEventStore, events: list[Event]) -> Deferred[Any]:
    """
    Save C{events} with L{SQLiteEventStore.saveMany} calls of L{MANY}
    events, as the relay pool saves what it verified.
    """
    return gatherResults(
        [store.saveMany(events[start : start + MANY]) for start in range(0, len(events), MANY)]
    )


@inlineCallbacks
def _timed(work: Callable[[], Deferred[Any]]) -> Iterator[Any]:
    """
    @return: the wall and the CPU seconds C{work()} took to fire.
    """
    started, cpu = time.perf_counter(), _cpuSeconds()
    yield work()
    return time.perf_counter() - started, _cpuSeconds() - cpu


@inlineCallbacks
def _insert(store: SQLiteEventStore, plain: PlainTable, events: list[Event]) -> Iterator[Any]:
    """
    Insert the first half of C{events} in the store with C{saveMany}
    calls, the second half with a C{save} call each (all of them with
    C{save} in an earlier store, which has no C{saveMany}), then all of
    them in the plain table.

    @return: for each way of inserting, its name, how many events it
        inserted, and the wall and CPU seconds that took.
    """
    if not hasattr(store, "saveMany"):
        each = yield _timed(lambda: _saveAll(store, events))
        return [("save", len(events), each), ("plain", len(events), _timedPlain(plain, events))]
    half = len(events) // 2
    many = yield _timed(lambda: _saveInCalls(store, events[:half]))
    each = yield _timed(lambda: _saveAll(store, events[half:]))
    return [
        ("saveMany", half, many),
        ("save", len(events) - half, each),
        ("plain", len(events), _timedPlain(plain, events)),
    ]


def _timedPlain(plain: PlainTable, events: list[Event]) -> tuple[float, float]:
    """
    @return: the wall and the CPU seconds inserting C{events} in the plain
        table took.
    """
    started, cpu = time.perf_counter(), _cpuSeconds()
    plain.insert(events)
    return time.perf_counter() - started, _cpuSeconds() - cpu


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
        "ids (10)": plain.ids,
        "until limit 100": plain.untilLimit,
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


class CollectorTime:
    """
    The collections Python's cyclic garbage collector ran in this process
    and the wall seconds they took, in all and of the oldest generation
    (full collections).
    """

    def __init__(self) -> None:
        self.collections = 0
        self.seconds = 0.0
        self.full = 0
        self.fullSeconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.collections += 1
        self.seconds += took
        if info["generation"] == 2:
            self.full += 1
            self.fullSeconds += took

    def summary(self) -> str:
        return (
            f"{self.collections:,} collections, {self.seconds:.2f} s"
            f" ({self.full:,} full ones, {self.fullSeconds:.2f} s)"
        )


class Totals:
    """
    Events inserted and the wall and CPU seconds inserting them took.
    """

    def __init__(self) -> None:
        self.events = 0
        self.wall = 0.0
        self.cpu = 0.0

    def add(self, events: int, times: tuple[float, float]) -> None:
        self.events += events
        self.wall += times[0]
        self.cpu += times[1]

    def rate(self) -> float:
        """
        Events inserted per second of wall time.
        """
        return self.events / self.wall

    def since(self, earlier: Totals) -> str:
        """
        The rate and the cost of one insert since C{earlier}.
        """
        events = self.events - earlier.events
        wall = self.wall - earlier.wall
        cpu = self.cpu - earlier.cpu
        return (
            f"{events / wall:9,.0f}/s {wall / events * 1e6:6.1f} us wall"
            f" {cpu / events * 1e6:6.1f} us CPU"
        )

    def copy(self) -> Totals:
        totals = Totals()
        totals.add(self.events, (self.wall, self.cpu))
        return totals


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(size.replace("_", "")) for size in text.split(",")})
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive event counts")
    return sizes


@inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Iterator[Deferred[Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[10_000, 100_000, 1_000_000],
        help="stored-event counts to measure at, comma-separated (default 10k,100k,1M)",
    )
    parser.add_argument("--quick", action="store_true", help="10k and 100k events only")
    parser.add_argument("--queries", type=int, default=500, help="per shape, store")
    parser.add_argument(
        "--scan-queries", type=int, default=10, help="per shape, plain table scan"
    )
    parser.add_argument("--dir", default=None, help="where the databases go (made if missing)")
    parser.add_argument(
        "--against",
        metavar="REF",
        help="first measure the inserts of the store of this repository's git revision"
        " REF, and print each rate's ratio to it (issue 12 measured 68fd430)",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="allocations between two collections of Python's youngest generation"
        " (default: Python's own, 700)",
    )
    # For --against: measure inserts only and print their rates as JSON.
    parser.add_argument("--inserts-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.gc_threshold is not None:
        if options.gc_threshold < 1:
            parser.error("--gc-threshold must be at least 1")
        gc.set_threshold(options.gc_threshold, *gc.get_threshold()[1:])
    collector = CollectorTime()
    checkpoints = [10_000, 100_000] if options.quick else options.sizes
    directory = options.dir or tempfile.mkdtemp(prefix="relaypool-bench-")
    os.makedirs(directory, exist_ok=True)
    earlier = None
    if options.against:
        earlier = _earlierRates(options.against, checkpoints, directory, options.gc_threshold)
    print(
        f"databases in {directory}; events are unsigned (the store does not verify);"
        " CPU is this process's, every thread; Python's collector: youngest generation"
        f" every {gc.get_threshold()[0]:,} allocations (--gc-threshold)"
    )
    storePath = os.path.join(directory, "store.db")
    store = SQLiteEventStore(storePath, reactor=reactor)
    plain = PlainTable(os.path.join(directory, "plain.db"))
    source = EventSource()
    totals = {"saveMany": Totals(), "save": Totals(), "plain": Totals()}
    rates: dict[int, dict[str, float]] = {}
    try:
        for checkpoint in checkpoints:
            before = {name: total.copy() for name, total in totals.items()}
            while source.made < checkpoint:
                events = source.chunk(min(CHUNK, checkpoint - source.made))
                for name, count, times in (yield _insert(store, plain, events)):
                    totals[name].add(count, times)
                print(f"  inserted {source.made:,}", end="\r", flush=True)
            print(f"{checkpoint:,} events stored" + " " * 20)
            print(f"  Python's collector so far (inserts and queries): {collector.summary()}")
            if hasattr(store, "saveMany"):
                print(
                    f"  inserts: of each {CHUNK:,}, half in saveMany() calls of {MANY:,} (as"
                    " the relay pool saves)\n  and half with a save() call each (as the"
                    " gateway saves EVENTs); plain: executemany, no index:"
                )
            else:
                print("  inserts: a save() call each; plain: executemany, no index:")
            measured = {name: total for name, total in totals.items() if total.events}
            rates[checkpoint] = {name: total.rate() for name, total in measured.items()}
            for name, total in measured.items():
                print(f"    {name + ',':9} 0 to {checkpoint:,}: {total.since(Totals())}")
            if before["plain"].events:
                for name, total in measured.items():
                    print(
                        f"    {name + ',':9} {before['plain'].events:,} to {checkpoint:,}:"
                        f" {total.since(before[name])}"
                    )
            if options.inserts_only:
                continue
            yield _measure(store, plain, source, options.queries, options.scan_queries)
            storeBytes = yield _storeBytes(store)
            plainBytes = plain.usedBytes()
            print(
                f"  bytes on disk per event: store {storeBytes / checkpoint:,.0f},"
                f" plain table {plainBytes / checkpoint:,.0f}"
            )
    finally:
        plain.close()
        yield store.close()
    if options.inserts_only:
        print(_RATES_LINE + json.dumps(rates))
    if earlier is not None:
        _printRatios(options.against, earlier, rates)


# How the subprocess of --against starts the line of its rates.
_RATES_LINE = "rates: "


def _earlierRates(
    revision: str, checkpoints: list[int], directory: str, gcThreshold: int | None
) -> dict[int, dict[str, float]]:
    """
    Measure the inserts of the store of git revision C{revision} (this
    repository's), in a subprocess, up to each of C{checkpoints}, with
    Python's collector's first threshold set to C{gcThreshold} if given.

    @return: for each checkpoint, the rate of each way of inserting from
        0 to it (C{"save"}, C{"plain"}).
    @raise SystemExit: if the revision cannot be read or measured.
    """
    code = os.path.join(directory, "earlier-code")
    os.makedirs(code, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", REPOSITORY, "archive", revision, "relaypool"], capture_output=True
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"--against {revision}: git cannot read that revision of {REPOSITORY}:"
            f" {archive.stderr.decode(errors='replace').strip()}"
        )
    subprocess.run(["tar", "-x", "-C", code], input=archive.stdout, check=True)
    print(f"the store of {revision}:", flush=True)
    collector = [] if gcThreshold is None else ["--gc-threshold", str(gcThreshold)]
    run = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--inserts-only",
            "--sizes",
            ",".join(str(size) for size in checkpoints),
            "--dir",
            os.path.join(directory, "earlier"),
            *collector,
        ],
        env=dict(os.environ, **{CODE_VARIABLE: code}),
        stdout=subprocess.PIPE,
        text=True,
    )
    rates = None
    for line in run.stdout.splitlines():
        if line.startswith(_RATES_LINE):
            rates = {int(size): rate for size, rate in json.loads(line[len(_RATES_LINE):]).items()}
        else:
            print(f"  [{revision}] {line.split(chr(13))[-1]}")
    if run.returncode != 0 or rates is None:
        raise SystemExit(f"--against {revision}: measuring that store failed (above)")
    return rates


def _printRatios(
    revision: str,
    earlier: dict[int, dict[str, float]],
    rates: dict[int, dict[str, float]],
) -> None:
    """
    Print each insert rate of this run beside the rate of the store of
    C{revision}, from 0 to each size, and their ratio.
    """
    print(
        f"inserts/s from 0 to each size, this store against the store of {revision}"
        " (each way of inserting against the same way, or save() if it had no saveMany()):"
    )
    print(f"  {'size':>10} {'way':>9} {revision:>12} {'now':>10} {'ratio':>6}")
    for size, now in rates.items():
        then = earlier[size]
        for way in ("saveMany", "save", "plain"):
            before = then.get(way, then["save"])
            print(
                f"  {size:>10,} {way:>9} {before:>12,.0f} {now[way]:>10,.0f}"
                f" {now[way] / before:>6.2f}"
            )


def _storeBytes(store: SQLiteEventStore) -> Deferred[int]:
    """
    The bytes of the store's pages in use, read on a connection of its own
    once the store's writes are committed.
    """
    done = store.count([Filter(limit=0)])

    def measure(_: object) -> int:
        db = sqlite3.connect(store.path, isolation_level=None)
        try:
            return _usedBytes(db)
        finally:
            db.close()

    return done.addCallback(measure)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
