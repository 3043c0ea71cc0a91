"""
A SQLite event store with NIP-01 query semantics, and the durable outbox of
events being published upstream.

L{SQLiteEventStore} never blocks the reactor: one writer thread owns the
writing connection and commits every write waiting for it in one transaction
(so writes batch under load and wait for nothing under light load), and one
reader thread answers queries on its own connection beside it (WAL mode).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar, cast

import orjson
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from relaypool._reactor import defaultReactor
from relaypool.errors import QueueFull, StoreError
from relaypool.interfaces import IEventStore, IOutbox
from relaypool.nostr.event import Event, isAddressable, isEphemeral, isReplaceable
from relaypool.nostr.filter import Filter
from relaypool.store.schema import migrate, storedValue

_T = TypeVar("_T")

_Work = Callable[[sqlite3.Connection], Any]

_TAG_LETTERS = frozenset(string.ascii_letters)

_DELETION = 5

_MAX_INTEGER = 2**63 - 1

# Longer lists are passed as two parameters at most (the byte strings
# concatenated, the others as a JSON array), which keeps every statement far
# below SQLite's bound on parameters.
_MAX_INLINE_PARAMETERS = 64

# Values of one size (bytes) concatenated in one parameter (the second), cut
# apart; the first parameter is the offset of the last one (1-based).
_SPLIT_BLOBS = (
    "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + {size} FROM k WHERE i < ?)"
    " SELECT substr(?, i, {size}) FROM k"
)

# The id and author tables hold the first _PREFIX bytes of each id and
# pubkey (see relaypool.store.schema): a lookup names the prefix, for the
# table's key, and the whole value.
_PREFIX = 8

# The WAL size (in pages, 200 MB) past which a commit copies it back into the
# database: fewer checkpoints copy each hot index page back fewer times (at
# 400k events, 3.8 KB written per event instead of 4.8 KB with 10,000 pages).
_CHECKPOINT_PAGES = 50_000

DEFAULT_CHECKPOINT_PAUSE = 0.25
"""
The default least time (seconds) between two checkpoints of the store's
checkpoint thread, which copies the WAL back into the database beside the
writer after commits: commits during the pause wait for the next one, so a
stream of small transactions does not make it copy and sync the file for
each. The writer's own checkpoint (past L{_CHECKPOINT_PAGES}) then finds
most of the WAL copied: on a copy of a million-event file on this
machine's disk, commits of 10,000 events waited at most 175 ms instead of
606 ms, and the writer spent 3.4 us less per event (with a pause of 1 s,
250 ms and 1.7 us).
"""

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
"""
The default bound on each database connection's page cache. Random-keyed
indexes (ids, pubkeys, tag values) make each insert touch pages all over
them: a cache that holds the indexes keeps the insert rate at a million
events (about 150 MB of indexes).
"""

DEFAULT_FRESH_EVENTS = 50_000
"""
The default number of events stored before their id, tag and author rows
are merged from small tables of their own into the large ones (see
L{relaypool.store.schema} and L{_FreshRows}). On the way to a million
stored events, the merges took the writer 3.8 s in all here, in slices of at
most 57 ms, where inserting the same rows into the large tables directly
cost it about 10 us more per event (C{bench/store.py}).
"""

# How many eviction rounds one batch may run to get under maxBytes.
_MAX_EVICTION_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class RelayDelivery:
    """
    What one relay did with an outbox event.

    @ivar accepted: whether the relay has the event (C{OK true}, or a
        C{duplicate:} answer).
    @ivar attempts: how many results were recorded for this relay.
    @ivar lastMessage: the message of the last recorded result.
    @ivar lastAttemptAt: when the last result was recorded (the store's
        clock), C{None} before the first.
    @ivar refused: whether the relay refused the event for good (a final
        refusal, see L{relaypool.nostr.messages.isFinalRefusal}).
    """

    accepted: bool
    attempts: int
    lastMessage: str
    lastAttemptAt: float | None
    refused: bool = False

    @property
    def settled(self) -> bool:
        """
        Whether the relay is done with the event: it accepted it or refused
        it for good, so it is not published to again.
        """
        return self.accepted or self.refused


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """
    An event waiting in the outbox for some relays to accept it (or to
    refuse it for good).

    @ivar event: the event to publish.
    @ivar enqueuedAt: when it was enqueued (the store's clock).
    @ivar relays: each relay URL it is to be published to, with what that
        relay did with it so far.
    """

    event: Event
    enqueuedAt: float
    relays: Mapping[str, RelayDelivery]


class _Job(Deferred[Any]):
    """
    A call to run in a database thread, and the Deferred firing with its
    result. Being its own Deferred, a call waiting for the thread is one
    object for Python's garbage collector rather than three: a burst of
    L{SQLiteEventStore.save} calls keeps thousands of them waiting, and
    every full collection walks them all.

    @cvar together: whether neighbouring jobs of this class in a batch
        run together, by one call of L{runAll}.
    @ivar kind: what kind of call this is (C{"write"} or C{"query"}).
    @ivar started: when it was submitted (C{time.perf_counter}).
    @ivar outcome: once run in the thread, its result or the exception it
        raised.
    """

    together: ClassVar[bool] = False
    started = 0.0
    outcome: object = None

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def run(self, connection: sqlite3.Connection) -> object:
        """
        In the thread: do the call's work on C{connection}.

        @return: its result.
        """
        raise NotImplementedError(f"{type(self).__name__} does not say what it runs")

    @classmethod
    def runAll(cls, jobs: Sequence[_Job], connection: sqlite3.Connection) -> Sequence[object]:
        """
        In the thread: run C{jobs}, all of this class, in order.

        @return: their results.
        """
        return [job.run(connection) for job in jobs]


class _CallJob(_Job):
    """
    A job running C{work(connection)}.
    """

    def __init__(self, work: _Work, kind: str = "") -> None:
        super().__init__(kind)
        self.work = work

    def run(self, connection: sqlite3.Connection) -> object:
        return self.work(connection)


_STOP = object()


class _ConnectionThread:
    """
    A thread that owns one SQLite connection, closed when the thread ends.
    A subclass sets up what its L{_work} needs before calling this
    constructor, which starts the thread.
    """

    def __init__(
        self, name: str, connection: sqlite3.Connection, reactor: IReactorFromThreads
    ) -> None:
        self._connection = connection
        self._reactor = reactor
        self._stopped: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        """
        In the thread: the work it does, returning when it is to end.
        """
        raise NotImplementedError(f"{type(self).__name__} does not say what it does")

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self._connection.close()
            self._reactor.callFromThread(self._stopped.callback, None)

    def _ended(self) -> Deferred[None]:
        """
        @return: a Deferred firing when the thread has ended.
        """
        return self._stopped.addCallback(lambda _: self._thread.join())


class _DatabaseThread(_ConnectionThread):
    """
    A thread that owns one SQLite connection and runs jobs on it, every job
    waiting (up to C{batchSize}) in one transaction, and a failing job
    undoing only its own work.

    A job that finds the thread idle runs at once, alone (no timer waits for
    company); jobs submitted while a transaction runs share the next one.
    Results are handed to the reactor thread with one call for all the
    transactions it has not collected yet.

    @ivar lastError: why the last transaction could not write (SQLite's
        message: the transaction failed, or a job in it failed with an
        operational error such as a full disk or a read-only database), or
        L{None} if it wrote.
    """

    lastError: str | None = None

    def __init__(
        self,
        name: str,
        connection: sqlite3.Connection,
        begin: str,
        batchSize: int,
        reactor: IReactorFromThreads,
        beforeCommit: Callable[[sqlite3.Connection], None] | None,
        finished: Callable[[_Job], None] | None = None,
        afterCommit: Callable[[], None] | None = None,
    ) -> None:
        self._afterCommit = afterCommit
        self._finished = finished
        self._begin = begin
        self._batchSize = batchSize
        self._beforeCommit = beforeCommit
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._ran: list[_Job] = []
        self._ranLock = threading.Lock()
        super().__init__(name, connection, reactor)

    def isRunning(self) -> bool:
        """
        @return: whether the thread is still running.
        """
        return self._thread.is_alive()

    def submit(self, job: _Job) -> _Job:
        """
        Run C{job} in the thread.

        @return: C{job}, which fires with its result once committed.
        """
        job.started = time.perf_counter()
        self._queue.put(job)
        return job

    def stop(self) -> Deferred[None]:
        """
        Run the jobs already submitted, close the connection and end the
        thread.

        @return: a Deferred firing when the thread has ended.
        """
        self._queue.put(_STOP)
        return self._ended()

    def _work(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Job] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Job)
                batch.append(item)
                if len(batch) >= self._batchSize:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._runBatch(batch)
                self._handOver(batch)

    def _handOver(self, jobs: list[_Job]) -> None:
        """
        In the thread: queue C{jobs}, which ran, for the reactor thread, and
        wake it unless a wake-up is on its way already.
        """
        with self._ranLock:
            awaited = bool(self._ran)
            self._ran += jobs
        if not awaited:
            self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """
        In the reactor thread: fire the Deferreds of the jobs that ended.
        """
        with self._ranLock:
            jobs, self._ran = self._ran, []
        finished = self._finished
        for job in jobs:
            if finished is not None:
                finished(job)
            outcome = job.outcome
            if isinstance(outcome, Exception):
                job.errback(outcome)
            else:
                job.callback(outcome)

    def _runBatch(self, batch: list[_Job], isolated: bool = False) -> None:
        """
        Run C{batch} in one transaction, setting each job's outcome. If a
        job fails, the transaction is rolled back and the batch run again
        C{isolated}: each job in its own savepoint, so that only the failing
        one is undone.
        """
        connection = self._connection
        operationalError: str | None = None
        try:
            connection.execute(self._begin)
            if not isolated:
                try:
                    for jobs, results in _runTogether(batch, connection):
                        for job, result in zip(jobs, results, strict=True):
                            job.outcome = result
                except Exception:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    self._runBatch(batch, isolated=True)
                    return
            for job in batch if isolated else ():
                connection.execute("SAVEPOINT job")
                try:
                    job.outcome = job.run(connection)
                except Exception as e:
                    connection.execute("ROLLBACK TO job")
                    if isinstance(e, sqlite3.OperationalError):
                        operationalError = str(e)
                    job.outcome = _failure(e)
                connection.execute("RELEASE job")
            if self._beforeCommit is not None:
                self._beforeCommit(connection)
            connection.execute("COMMIT")
        except Exception as e:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self.lastError = str(e)
            failure = _failure(e)
            for job in batch:
                job.outcome = failure
            return
        self.lastError = operationalError
        if self._afterCommit is not None:
            self._afterCommit()


class _Checkpointer(_ConnectionThread):
    """
    A thread with a connection of its own that copies the WAL back into the
    database when asked (a passive checkpoint: it waits for no one, and the
    writer goes on committing meanwhile), then pauses C{pause} seconds:
    requests meanwhile are served by one checkpoint after the pause.
    """

    def __init__(
        self,
        name: str,
        connection: sqlite3.Connection,
        pause: float,
        reactor: IReactorFromThreads,
    ) -> None:
        self._pause = pause
        self._wake = threading.Event()
        self._stopping = threading.Event()
        super().__init__(name, connection, reactor)

    def request(self) -> None:
        """
        From any thread: run a checkpoint, once the one under way (if any)
        has ended.
        """
        self._wake.set()

    def stop(self) -> Deferred[None]:
        """
        Close the connection and end the thread, after the checkpoint under
        way if any.

        @return: a Deferred firing when the thread has ended.
        """
        self._stopping.set()
        self._wake.set()
        return self._ended()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            # What this checkpoint cannot copy, the writer's own copies (a
            # full disk then shows as a failed write, writeProblem).
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._stopping.wait(self._pause)


def _runTogether(
    batch: Sequence[_Job], connection: sqlite3.Connection
) -> Iterator[tuple[Sequence[_Job], Sequence[object]]]:
    """
    Run C{batch}'s jobs in order: each run of neighbouring jobs of one
    class that runs them L{together<_Job.together>} by one call of its
    C{runAll}, any other job alone.

    @return: each run (or job) and its results.
    """
    start = 0
    while start < len(batch):
        kind = type(batch[start])
        end = start + 1
        while kind.together and end < len(batch) and type(batch[end]) is kind:
            end += 1
        jobs = batch[start:end]
        if len(jobs) == 1:
            yield jobs, [jobs[0].run(connection)]
        else:
            yield jobs, kind.runAll(jobs, connection)
        start = end


def _failure(error: Exception) -> Exception:
    if isinstance(error, sqlite3.Error):
        wrapped = StoreError(f"error: database failure: {error}")
        wrapped.__cause__ = error
        return wrapped
    return error


def _inClause(column: str, values: Iterable[object]) -> tuple[str, list[object]]:
    """
    The condition that C{column} is one of C{values} (integers, strings, or
    byte strings all of one size), and its parameters.
    """
    items = list(values)
    if len(items) <= _MAX_INLINE_PARAMETERS:
        return f"{column} IN ({', '.join('?' * len(items))})", items
    blobs = [item for item in items if isinstance(item, bytes)]
    others = [item for item in items if not isinstance(item, bytes)]
    clauses = []
    params: list[object] = []
    if blobs:
        size = len(blobs[0])
        clauses.append(f"{column} IN ({_SPLIT_BLOBS.format(size=size)})")
        params += [size * (len(blobs) - 1) + 1, b"".join(blobs)]
    if others:
        clauses.append(f"{column} IN (SELECT value FROM json_each(?))")
        params.append(orjson.dumps(others).decode())
    return f"({' OR '.join(clauses)})", params


def _storedValues(values: Iterable[str]) -> list[bytes | str]:
    return [storedValue(value) for value in values]


def _hexKeys(values: Iterable[str]) -> list[bytes]:
    """
    Of ids or pubkeys C{values}, those that are hex, as stored (others
    match nothing).
    """
    return [key for key in _storedValues(values) if isinstance(key, bytes)]


def _authorsClause(values: Iterable[str]) -> tuple[str, list[object]]:
    """
    The condition that the pubkey of the events aliased C{e}, whose rows of
    the authors table (or its fresh twin) are aliased C{d}, is one of
    C{values} (hex; others match nothing), and its parameters.
    """
    keys = _hexKeys(values)
    prefixes, prefixParams = _inClause("d.prefix", sorted({key[:_PREFIX] for key in keys}))
    whole, wholeParams = _inClause("e.pubkey", keys)
    return f"{prefixes} AND {whole}", prefixParams + wholeParams


def _seqsInBoth(table: str, condition: str) -> str:
    """
    The SQL selecting the C{seq} of the rows matching C{condition} in
    C{table} (C{ids} or C{tags}) and in its C{fresh_} twin (see
    L{relaypool.store.schema}).
    """
    return (
        f"SELECT seq FROM {table} WHERE {condition}"
        f" UNION ALL SELECT seq FROM fresh_{table} WHERE {condition}"
    )


def _idClause(table: str, values: Iterable[str]) -> tuple[str, list[object]]:
    """
    The condition that the id of the events table named (or aliased)
    C{table} is one of C{values} (hex; others match nothing), found by
    prefix in the ids and fresh_ids tables, and its parameters.
    """
    keys = _hexKeys(values)
    prefixes, prefixParams = _inClause("prefix", sorted({key[:_PREFIX] for key in keys}))
    whole, wholeParams = _inClause(f"{table}.id", keys)
    return (
        f"{table}.seq IN ({_seqsInBoth('ids', prefixes)}) AND {whole}",
        prefixParams + prefixParams + wholeParams,
    )


def _indexedTags(tags: Iterable[Sequence[str]]) -> set[tuple[str, bytes | str]]:
    """
    The rows of the tags table for an event with C{tags}: each distinct
    single-letter name with its first value, as stored.
    """
    return {
        (tag[0], storedValue(tag[1]))
        for tag in tags
        if len(tag) > 1 and len(tag[0]) == 1 and tag[0] in _TAG_LETTERS
    }


def _eventFromJSON(raw: bytes) -> Event:
    # Stored events were validated before they were saved.
    obj = orjson.loads(raw)
    return Event(
        id=obj["id"],
        pubkey=obj["pubkey"],
        createdAt=obj["created_at"],
        kind=obj["kind"],
        tags=tuple(tuple(tag) for tag in obj["tags"]),
        content=obj["content"],
        sig=obj["sig"],
    )


def _address(event: Event) -> str | None:
    if isReplaceable(event.kind):
        return ""
    if isAddressable(event.kind):
        return event.dTag()
    return None


def _filterSelect(
    f: Filter, now: int, limit: int | None, ordered: bool
) -> tuple[str, list[object]]:
    """
    The SQL selecting the C{seq} of the stored events matching C{f} and not
    expired at C{now}, newest first if C{ordered}, at most C{limit}.
    """
    where = ["(e.expiration IS NULL OR e.expiration > ?)"]
    params: list[object] = [now]
    tags = list(f.tags)
    # The rows driving the query, aliased d, in both halves of a table and
    # its fresh twin (merged, each in created_at order): a tag condition
    # with one value drives it from the tag tables, else authors (without
    # ids, which find fewer) from the authors tables (created_at and kind
    # in their keys); else the events table's own indexes do.
    driving: str | None = None
    created = "e.created_at"
    kinds = "e.kind"
    tagDriver = next(((n, v) for n, v in tags if len(v) == 1), None)
    if tagDriver is not None:
        driving, kinds = "tags", "+e.kind"
        tags.remove(tagDriver)
        where += ["d.name = ?", "d.value = ?"]
        params += [tagDriver[0], storedValue(next(iter(tagDriver[1])))]
    elif f.authors is not None and f.ids is None:
        driving, created, kinds = "authors", "d.created_at", "d.kind"
    if f.ids is not None:
        clause, clauseParams = _idClause("e", f.ids)
        where.append(clause)
        params += clauseParams
    if f.authors is not None:
        if driving == "authors":
            clause, clauseParams = _authorsClause(f.authors)
        else:
            clause, clauseParams = _inClause("e.pubkey", _hexKeys(f.authors))
        where.append(clause)
        params += clauseParams
    if f.kinds is not None:
        clause, clauseParams = _inClause(kinds, f.kinds)
        where.append(clause)
        params += clauseParams
    if f.since is not None:
        where.append(f"{created} >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append(f"{created} <= ?")
        params.append(f.until)
    for name, tagValues in tags:
        clause, clauseParams = _inClause("value", _storedValues(tagValues))
        where.append(f"e.seq IN ({_seqsInBoth('tags', f'name = ? AND {clause}')})")
        params += [name, *clauseParams, name, *clauseParams]
    condition = " AND ".join(where)
    if driving is None:
        sql = f"SELECT e.seq FROM events e WHERE {condition}"
        if ordered:
            sql += " ORDER BY e.created_at DESC, e.id"
    else:
        arms = [
            f"SELECT e.seq AS seq, d.created_at AS created_at, e.id AS id"
            f" FROM {table} d JOIN events e ON e.seq = d.seq WHERE {condition}"
            for table in (driving, f"fresh_{driving}")
        ]
        sql = " UNION ALL ".join(arms)
        params += params
        if ordered:
            sql += " ORDER BY created_at DESC, id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return (sql if driving is None else f"SELECT seq FROM ({sql})"), params


@implementer(IEventStore, IOutbox)
class SQLiteEventStore:
    """
    An L{IEventStore} and L{IOutbox} in one SQLite database file.

    Storage follows NIP-01: regular events are kept; of replaceable events
    (kinds 0, 3, 10000-19999) only the newest per author and kind is kept,
    and of addressable ones (30000-39999) the newest per author, kind and
    C{d} tag, ties going to the lowest id; ephemeral events (20000-29999) are
    never stored. A NIP-09 deletion request (kind 5) deletes the events of
    its own author it names by id (C{e} tags) and by address (C{a} tags, the
    versions up to its C{created_at}), is kept, and makes the store refuse
    those events if they arrive later (until the request itself is evicted).
    Deletion requests cannot be deleted. NIP-40: an event already expired is
    refused, expired events are never returned or counted, and they are
    purged at each write transaction.

    Bounds:
      - C{maxEvents}: after each write transaction, while more events are
        stored, the oldest (lowest C{created_at}) regular events are evicted,
        and replaceable and addressable ones only when no regular event is
        left.
      - C{maxBytes}: the same eviction, while the database's used pages
        (C{(page_count - freelist_count) * page_size}, the WAL file not
        counted) exceed it. The file does not shrink: freed pages are reused.
        Eviction frees whole pages only, so this bound is approximate.
      - C{maxPending}: calls waiting for the database threads; past it, a
        call fails at once with L{QueueFull}.
      - C{maxOutbox}: events in the outbox; past it, L{enqueue} fails with
        L{QueueFull}.
      - C{maxLimit}: the most events one filter returns from L{query}, the
        filter's own C{limit} applying if smaller.
      - C{cacheBytes}: the page cache of each of its two connections that
        read pages (writer, reader); pages past it are read from the file
        again when needed.

    Durability: the database is in WAL mode with C{synchronous=NORMAL}: a
    Deferred that fired reports a committed transaction, which survives the
    process being killed; a power loss may undo the last transactions. The
    WAL file grows to about 200 MB at most under a heavy write load: after
    commits, a thread of the store's own copies it back into the database
    beside the writer (at most once per C{checkpointPause}), and past 200 MB
    the writer copies what is left itself and restarts it.

    The file is opened and its schema migrated in the constructor.

    @ivar path: the database file, or C{":memory:"} for a private in-memory
        database (reads then share the writer's thread and connection).
    """

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads | None = None,
        maxEvents: int | None = None,
        maxBytes: int | None = None,
        batchSize: int = 10_000,
        clock: Callable[[], float] | None = None,
        maxPending: int = 100_000,
        maxOutbox: int = 10_000,
        maxLimit: int = 10_000,
        onLatency: Callable[[str, float], None] | None = None,
        cacheBytes: int = DEFAULT_CACHE_BYTES,
        freshEvents: int = DEFAULT_FRESH_EVENTS,
        checkpointPause: float = DEFAULT_CHECKPOINT_PAUSE,
    ) -> None:
        """
        Open (creating or migrating) the database at C{path}.

        @param reactor: delivers results from the database threads; C{None}
            means the global reactor.
        @param clock: the wall clock (unix seconds) for NIP-40 expiration and
            outbox times, called from the database threads too; C{None} means
            C{time.time}.
        @param batchSize: the most writes committed in one transaction.
        @param onLatency: called in the reactor thread with C{"write"} or
            C{"query"} and the seconds a call took, from the call to its
            result (the wait for the database thread included), for every
            call that reached a database thread: C{"write"} for L{save},
            L{enqueue}, L{recordResult} and L{discard}; C{"query"} for
            L{query}, L{queryIds}, L{fetch}, L{count} and L{pending}.
        @param cacheBytes: the most memory each of the two database
            connections (writer, reader) keeps as its page cache.
        @param freshEvents: how many events are stored, their id, tag and
            author rows kept in small tables of their own, before those
            rows are merged into the large ones (a slice per write
            transaction, from the one that passes it on).
        @param checkpointPause: the least seconds between two checkpoints
            of the thread that copies the WAL back into the database after
            commits, beside the writer.
        @raise relaypool.errors.SchemaVersionError: if the database has a
            newer schema than this relaypool knows.
        @raise StoreError: if the database cannot be opened.
        """
        reactor = defaultReactor(reactor)
        if clock is None:
            clock = time.time
        self.path = path
        self._clock = clock
        self._maxEvents = maxEvents
        self._maxBytes = maxBytes
        self._maxPending = maxPending
        self._maxOutbox = maxOutbox
        self._maxLimit = maxLimit
        self._pending = 0
        self._onLatency = onLatency
        self._probing = False
        self._closed: Deferred[None] | None = None
        self._cacheKiB = max(1, cacheBytes // 1024)
        self._freshEvents = freshEvents
        writeConnection = self._connect()
        others: list[sqlite3.Connection] = []
        try:
            migrate(writeConnection)
            self._fresh = _FreshRows(writeConnection)
            if path != ":memory:":
                for _ in ("reader", "checkpoint"):
                    others.append(self._connect())
        except BaseException as e:
            for connection in [writeConnection, *others]:
                connection.close()
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"cannot open the database {path!r}: {e}") from e
            raise
        self._checkpointer: _Checkpointer | None = None
        if others:
            readConnection, checkpointConnection = others
            self._checkpointer = _Checkpointer(
                "relaypool-store-checkpoint", checkpointConnection, checkpointPause, reactor
            )
        self._writer = _DatabaseThread(
            "relaypool-store-writer",
            writeConnection,
            "BEGIN IMMEDIATE",
            batchSize,
            reactor,
            self._maintain,
            self._jobFinished,
            None if self._checkpointer is None else self._checkpointer.request,
        )
        self._reader = self._writer
        if others:
            self._reader = _DatabaseThread(
                "relaypool-store-reader",
                readConnection,
                "BEGIN",
                batchSize,
                reactor,
                None,
                self._jobFinished,
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path!r}: {e}") from e
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA temp_store = MEMORY")
            connection.execute(f"PRAGMA cache_size = {-self._cacheKiB:d}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES:d}")
        except sqlite3.Error as e:
            connection.close()
            raise StoreError(f"cannot open the database {self.path!r}: {e}") from e
        return connection

    def _submit(self, thread: _DatabaseThread, work: _Work, kind: str) -> Deferred[Any]:
        return self._submitJob(thread, _CallJob(work, kind))

    def _submitJob(self, thread: _DatabaseThread, job: _Job) -> Deferred[Any]:
        if self._closed is not None:
            return fail(StoreError("the store is closed"))
        if self._pending >= self._maxPending:
            return fail(
                QueueFull(f"{self._pending} store calls are waiting already")
            )
        self._pending += 1
        return thread.submit(job)

    def _jobFinished(self, job: _Job) -> None:
        """
        In the reactor thread, before a call's Deferred fires: count it
        done and report its latency.
        """
        self._pending -= 1
        if self._onLatency is not None:
            self._onLatency(job.kind, time.perf_counter() - job.started)

    # --- IEventStore ---------------------------------------------------------

    def save(self, event: Event) -> Deferred[bool]:
        """
        Store C{event}; see L{IEventStore.save}.
        """
        expiration = event.expiration()
        if self._notStored(event, expiration):
            return succeed(False)
        return self._submitJob(self._writer, _SaveJob(event, expiration))

    def saveMany(self, events: Sequence[Event]) -> Deferred[list[bool]]:
        """
        Store C{events} in one call; see L{IEventStore.saveMany}.
        """
        kept: list[Event] = []
        expirations: list[int | None] = []
        positions: list[int] = []
        for index, event in enumerate(events):
            expiration = event.expiration()
            if not self._notStored(event, expiration):
                kept.append(event)
                expirations.append(expiration)
                positions.append(index)
        if not kept:
            return succeed([False] * len(events))

        def placed(saved: list[bool]) -> list[bool]:
            result = [False] * len(events)
            for index, stored in zip(positions, saved, strict=True):
                result[index] = stored
            return result

        return self._submit(
            self._writer, partial(_saveEvents, kept, expirations), "write"
        ).addCallback(placed)

    def _notStored(self, event: Event, expiration: int | None) -> bool:
        """
        Whether C{event}, which expires at C{expiration}, is not to be
        stored: ephemeral, or expired already.
        """
        return isEphemeral(event.kind) or (expiration is not None and expiration <= self._clock())

    def query(self, filters: Sequence[Filter]) -> Deferred[list[Event]]:
        """
        The stored events matching C{filters}; see L{IEventStore.query}.
        """
        return self._submit(
            self._reader, partial(_queryEvents, tuple(filters), self._maxLimit, self._now()),
            "query",
        )

    def queryIds(self, filters: Sequence[Filter]) -> Deferred[list[str]]:
        """
        The ids of the stored events matching C{filters}, in L{query}'s
        order; see L{IEventStore.queryIds}.
        """
        return self._submit(
            self._reader, partial(_queryIds, tuple(filters), self._maxLimit, self._now()),
            "query",
        )

    def syncRecords(
        self, filters: Sequence[Filter], maxRecords: int
    ) -> Deferred[list[tuple[int, str]]]:
        """
        The C{(created_at, id)} of the stored events matching C{filters}, at
        most C{maxRecords + 1}; see L{IEventStore.syncRecords}.
        """
        return self._submit(
            self._reader, partial(_syncRecords, tuple(filters), maxRecords + 1, self._now()), "query"
        )

    def fetch(self, eventIds: Sequence[str]) -> Deferred[list[Event]]:
        """
        The stored events among C{eventIds}, in their order; see
        L{IEventStore.fetch}.
        """
        return self._submit(self._reader, partial(_fetchEvents, tuple(eventIds), self._now()), "query")

    def count(self, filters: Sequence[Filter]) -> Deferred[int]:
        """
        How many distinct stored events match C{filters}, each filter's
        C{limit} applying to its own matches; see L{IEventStore.count}.
        """
        return self._submit(self._reader, partial(_countEvents, tuple(filters), self._now()), "query")

    def delete(self, eventIds: Sequence[str]) -> Deferred[int]:
        """
        Remove the events with these ids; see L{IEventStore.delete}.
        """
        return self._submit(self._writer, partial(_deleteEvents, tuple(eventIds)), "write")

    def close(self) -> Deferred[None]:
        """
        Finish the calls already made, close the database and end its
        threads. Later calls fail with L{StoreError}.

        @return: a Deferred firing when done (every call to C{close}).
        """
        if self._closed is None:
            threads: set[_DatabaseThread | _Checkpointer] = {self._writer, self._reader}
            if self._checkpointer is not None:
                threads.add(self._checkpointer)
            self._closed = gatherResults([thread.stop() for thread in threads]).addCallback(
                lambda _: None
            )
        done: Deferred[None] = Deferred()

        def passOn(result: _T) -> _T:
            done.callback(None)
            return result

        self._closed.addBoth(passOn)
        return done

    def writeProblem(self) -> str | None:
        """
        Why the store cannot write now, without a query: it is closed, its
        writer thread ended, or its last write transaction failed (then an
        empty write transaction is started in the background, one at a
        time, so that a store that recovered says so at the next call).

        @return: a reason a person can act on, or L{None} if the store is
            writable.
        """
        if self._closed is not None:
            return "the store is closed"
        writer = self._writer
        if not writer.isRunning():
            return "the store's writer thread has ended"
        if writer.lastError is None:
            return None
        if not self._probing:
            self._probing = True

            def probed(result: object) -> None:
                self._probing = False

            self._submit(writer, _probeWrite, "write").addBoth(probed)
        return f"the store's last write failed: {writer.lastError}"

    # --- IOutbox -------------------------------------------------------------

    def enqueue(self, event: Event, relayURLs: Iterable[str]) -> Deferred[None]:
        """
        Record C{event} as to be published to every relay in C{relayURLs}
        (added to those already recorded if it is in the outbox already).
        An empty C{relayURLs} records nothing.

        @return: a Deferred firing once committed, or failing with
            L{QueueFull} if the outbox holds C{maxOutbox} events already.
        """
        return self._submit(
            self._writer,
            partial(
                _enqueue, event, tuple(relayURLs), self._clock(), self._maxOutbox
            ),
            "write",
        )

    def recordResult(
        self, eventId: str, relayURL: str, accepted: bool, message: str, refused: bool = False
    ) -> Deferred[None]:
        """
        Record a relay's answer; see L{IOutbox.recordResult}. Once a relay
        accepted an event, or refused it for good, it stays so. A result for
        an event or relay not in the outbox is ignored.
        """
        return self._submit(
            self._writer,
            partial(_recordResult, eventId, relayURL, accepted, message, refused, self._clock()),
            "write",
        )

    def pending(self) -> Deferred[list[OutboxEntry]]:
        """
        The outbox, oldest first; see L{IOutbox.pending}.
        """
        return self._submit(self._reader, _pending, "query")

    def discard(self, eventId: str) -> Deferred[None]:
        """
        Remove an event from the outbox; see L{IOutbox.discard}.
        """
        return self._submit(self._writer, partial(_discard, eventId), "write")

    # --- writer maintenance --------------------------------------------------

    def _now(self) -> int:
        return min(int(self._clock()), _MAX_INTEGER)

    def _maintain(self, connection: sqlite3.Connection) -> None:
        self._fresh.mergeIfPast(connection, self._freshEvents)
        _removeEvents(connection, "expiration <= ?", (self._now(),))
        if self._maxEvents is not None:
            stored: int = connection.execute("SELECT events FROM stats").fetchone()[0]
            if stored > self._maxEvents:
                _evict(connection, stored - self._maxEvents)
        if self._maxBytes is not None:
            for _ in range(_MAX_EVICTION_ROUNDS):
                used = _usedBytes(connection)
                if used <= self._maxBytes:
                    break
                stored = connection.execute("SELECT events FROM stats").fetchone()[0]
                if stored == 0:
                    break
                perEvent = max(1, used // stored)
                _evict(connection, max(1, -(-(used - self._maxBytes) // perEvent)))


# The most rows one write transaction moves from each fresh table into its
# large one: a merge is spread over transactions so that none of them waits
# long for it.
_MERGE_SLICE_ROWS = 10_000


class _FreshRows:
    """
    In the writer thread: the merge of the id, tag and author rows of the
    newest events from the fresh_ids, fresh_tags and fresh_authors tables
    into the ids, tags and authors tables (see L{relaypool.store.schema}).

    Once more than C{bound} events were stored since the last merge, each
    write transaction moves the next L{_MERGE_SLICE_ROWS} rows of each
    fresh table, in key order, until a pass over them is done: each slice
    covers a key range, so each page of a large table still takes all the
    rows of its range at once. Rows stored during a pass behind its
    position wait for the next one. The events stored are counted by the
    growth of the highest seq, one index lookup per transaction.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._highest = _highestSeq(connection)
        self._events: int = connection.execute("SELECT count(*) FROM fresh_ids").fetchone()[0]
        self._passes = [
            _MergePass("fresh_ids", "ids", ("prefix", "seq")),
            _MergePass("fresh_tags", "tags", ("name", "value", "created_at", "seq")),
            _MergePass("fresh_authors", "authors", ("prefix", "created_at", "kind", "seq")),
        ]

    def mergeIfPast(self, connection: sqlite3.Connection, bound: int) -> None:
        """
        Move the next slice of fresh rows if a merge is under way or more
        than C{bound} events were stored since the last one began.
        """
        highest = _highestSeq(connection)
        self._events += max(0, highest - self._highest)
        self._highest = highest
        if self._events > bound:
            self._events = 0
            for mergePass in self._passes:
                mergePass.begin()
        for mergePass in self._passes:
            mergePass.moveSlice(connection)


class _MergePass:
    """
    A pass moving the rows of one fresh table into its large one, slice by
    slice in key order.

    @ivar position: the key of the last row moved in the pass under way,
        C{()} at its start, or L{None} when no pass is under way.
    """

    position: tuple[object, ...] | None = None

    def __init__(self, fresh: str, large: str, key: tuple[str, ...]) -> None:
        self._fresh = fresh
        self._large = large
        self._columns = ", ".join(key)
        self._placeholders = ", ".join("?" * len(key))

    def begin(self) -> None:
        """
        Start a pass from the lowest key (or start it again).
        """
        self.position = ()

    def moveSlice(self, connection: sqlite3.Connection) -> None:
        """
        Move the next slice of the pass under way, if any, and end the pass
        when it reached the end of the table.
        """
        position = self.position
        if position is None:
            return
        columns, fresh = self._columns, self._fresh
        bounds = [f"({columns}) > ({self._placeholders})"] if position else []
        params = list(position)
        last = connection.execute(
            f"SELECT {columns} FROM {fresh}{_where(bounds)} ORDER BY {columns}"
            " LIMIT 1 OFFSET ?",
            [*params, _MERGE_SLICE_ROWS - 1],
        ).fetchone()
        if last is not None:
            bounds.append(f"({columns}) <= ({self._placeholders})")
            params += last
        where = _where(bounds)
        connection.execute(
            f"INSERT INTO {self._large} ({columns})"
            f" SELECT {columns} FROM {fresh}{where} ORDER BY {columns}",
            params,
        )
        connection.execute(f"DELETE FROM {fresh}{where}", params)
        self.position = last


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _highestSeq(connection: sqlite3.Connection) -> int:
    highest: int = connection.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return highest


def _probeWrite(connection: sqlite3.Connection) -> None:
    """
    Nothing: a job that only makes its transaction (begun with C{BEGIN
    IMMEDIATE}, the writer's lock taken, committed) show whether the store
    can write.
    """


def _usedBytes(connection: sqlite3.Connection) -> int:
    pages: int = connection.execute("PRAGMA page_count").fetchone()[0]
    free: int = connection.execute("PRAGMA freelist_count").fetchone()[0]
    size: int = connection.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


def _evict(connection: sqlite3.Connection, count: int) -> None:
    evicted = _removeEvents(
        connection,
        "seq IN (SELECT seq FROM events WHERE address IS NULL"
        " ORDER BY created_at, id DESC LIMIT ?)",
        (count,),
    )
    if evicted < count:
        _removeEvents(
            connection,
            "seq IN (SELECT seq FROM events ORDER BY created_at, id DESC LIMIT ?)",
            (count - evicted,),
        )


def _removeEvents(
    connection: sqlite3.Connection, condition: str, params: Sequence[object]
) -> int:
    """
    Delete the events matching the SQL C{condition} (on the events table)
    and their rows in the tags table.

    @return: how many events were deleted.
    """
    rows = connection.execute(
        f"SELECT seq, created_at, kind, pubkey, raw FROM events WHERE {condition}", params
    ).fetchall()
    if not rows:
        return 0
    tagRows = []
    deletedRows = []
    for seq, createdAt, kind, pubkey, raw in rows:
        tags = _indexedTags(orjson.loads(raw)["tags"])
        tagRows += [(name, value, createdAt, seq) for name, value in tags]
        if kind == _DELETION:
            deletedRows += _deletedRows(tags, pubkey, seq)
    for table in ("tags", "fresh_tags"):
        connection.executemany(
            f"DELETE FROM {table} WHERE name = ? AND value = ? AND created_at = ? AND seq = ?",
            tagRows,
        )
    connection.executemany(
        "DELETE FROM deleted WHERE id = ? AND pubkey = ? AND seq = ?", deletedRows
    )
    connection.executemany("DELETE FROM events WHERE seq = ?", [(row[0],) for row in rows])
    _countStored(connection, -len(rows))
    return len(rows)


def _deletedRows(
    tags: Iterable[tuple[str, bytes | str]], pubkey: bytes, seq: int
) -> list[tuple[bytes, bytes, int]]:
    """
    The rows of the deleted table for a deletion request by C{pubkey}
    stored as C{seq}, whose rows in the tags table are C{tags}: one per id
    it names.
    """
    return [(value, pubkey, seq) for name, value in tags if name == "e" and isinstance(value, bytes)]


def _countStored(connection: sqlite3.Connection, change: int) -> None:
    """
    Add C{change} to the count of stored events (the stats table).
    """
    if change:
        connection.execute("UPDATE stats SET events = events + ?", (change,))


# --- jobs run in the database threads ----------------------------------------


# A stored deletion request by the author (?2) naming the event by its
# address (?1) at or after its created_at (?3).
_DELETED_BY_ADDRESS = (
    "SELECT 1 FROM events d WHERE d.seq IN ("
    + _seqsInBoth("tags", "name = 'a' AND value = ?1 AND created_at >= ?3")
    + ") AND d.kind = 5 AND d.pubkey = ?2"
)

# Of ?3 events whose ids (?1) and pubkeys (?2) are 32-byte values
# concatenated, the positions (from 0) of those stored already, or (if ?4)
# named by id in a stored deletion request of their author.
_REFUSED = (
    "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?3)"
    " SELECT i FROM k WHERE EXISTS (SELECT 1 FROM events WHERE seq IN ("
    + _seqsInBoth("ids", "prefix = substr(?1, 32 * i + 1, 8)")
    + ") AND id = substr(?1, 32 * i + 1, 32)) OR (?4 AND EXISTS ("
    " SELECT 1 FROM deleted WHERE id = substr(?1, 32 * i + 1, 32)"
    " AND pubkey = substr(?2, 32 * i + 1, 32)))"
)

_INSERT_TAGS = "INSERT INTO fresh_tags (name, value, created_at, seq) VALUES "
_TAG_ROWS = 256

_INSERT_EVENT = (
    "INSERT INTO events (id, pubkey, kind, created_at, address, expiration, raw)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _refused(
    eventIds: bytes,
    pubkeys: bytes,
    count: int,
    checkDeleted: bool,
    connection: sqlite3.Connection,
) -> set[int]:
    """
    Which of C{count} events, whose ids and pubkeys are C{eventIds} and
    C{pubkeys} (32-byte values concatenated), are not to be stored: those
    stored already, and if C{checkDeleted}, those named by id in a stored
    deletion request of their author.

    @return: their positions, from 0.
    """
    return {
        row[0]
        for row in connection.execute(_REFUSED, (eventIds, pubkeys, count, checkDeleted))
    }


def _applyDeletion(connection: sqlite3.Connection, request: Event) -> None:
    author = bytes.fromhex(request.pubkey)
    ids = request.tagValues("e")
    if ids:
        clause, params = _idClause("events", ids)
        _removeEvents(connection, f"{clause} AND pubkey = ? AND kind != 5", (*params, author))
    for value in request.tagValues("a"):
        kind, _, rest = value.partition(":")
        pubkey, separator, address = rest.partition(":")
        if separator and pubkey == request.pubkey and kind.isdigit():
            _removeEvents(
                connection,
                "pubkey = ? AND kind = ? AND address = ? AND created_at <= ?",
                (author, int(kind), address, request.createdAt),
            )


def _deleteEvents(eventIds: tuple[str, ...], connection: sqlite3.Connection) -> int:
    if not eventIds:
        return 0
    clause, params = _idClause("events", eventIds)
    return _removeEvents(connection, clause, params)


def _saveEvents(
    events: Sequence[Event], expirations: Sequence[int | None], connection: sqlite3.Connection
) -> list[bool]:
    """
    Store C{events}, which expire at C{expirations}, in order: each run of
    plain events (see L{_isPlain}: nothing they do depends on the others)
    with one statement for the events (or one per L{_BULK_BYTES} of them)
    and one for their tags, any other event alone.

    @return: for each, whether it was stored.
    """
    saved: list[bool] = []
    start = 0
    while start < len(events):
        end, size, raws = start, 0, []
        while end < len(events) and size < _BULK_BYTES and _isPlain(events[end], expirations[end]):
            raws.append(events[end].toJSON())
            size += len(raws[-1])
            end += 1
        if end > start:
            saved += _insertPlain(events[start:end], raws, connection)
        else:
            saved.append(_saveEvent(events[start], expirations[start], connection))
            end += 1
        start = end
    return saved


class _SaveJob(_Job):
    """
    The job of L{SQLiteEventStore.save}: store C{event}, which expires at
    C{expiration}. Several of them next to each other in a batch run
    together (L{_saveEvents}).
    """

    def __init__(self, event: Event, expiration: int | None) -> None:
        super().__init__("write")
        self.event = event
        self.expiration = expiration

    def run(self, connection: sqlite3.Connection) -> bool:
        return _saveEvent(self.event, self.expiration, connection)

    together = True

    @classmethod
    def runAll(cls, jobs: Sequence[_Job], connection: sqlite3.Connection) -> Sequence[object]:
        saves = cast(Sequence[_SaveJob], jobs)
        return _saveEvents(
            [job.event for job in saves], [job.expiration for job in saves], connection
        )


def _isPlain(event: Event, expiration: int | None) -> bool:
    """
    Whether C{event}, which expires at C{expiration}, is a regular one (not
    replaceable, addressable or a deletion request) with no expiration.
    """
    return expiration is None and event.kind != _DELETION and _address(event) is None


# The most bytes of events inserted by one statement.
_BULK_BYTES = 4 * 1024 * 1024

# The events' JSON concatenated (?5), their ids (?2) and pubkeys (?3) as
# 32-byte values concatenated, and for each a JSON array of its kind,
# created_at, and where its JSON starts in ?5 (from 1) and its length: SQLite
# takes them apart, the rows numbered from ?1. One statement, not one per
# event: the thread holds the GIL only to build it.
_INSERT_PLAIN_EVENTS = """
    INSERT INTO events (seq, id, pubkey, kind, created_at, address, expiration, raw)
    SELECT ?1 + key, substr(?2, 32 * key + 1, 32), substr(?3, 32 * key + 1, 32),
        json_extract(value, '$[0]'), json_extract(value, '$[1]'), NULL, NULL,
        substr(?5, json_extract(value, '$[2]'), json_extract(value, '$[3]'))
    FROM json_each(?4)
"""

# The fresh_ids and fresh_authors rows of the events numbered from ? on.
_INSERT_PLAIN_ROWS = (
    "INSERT INTO fresh_ids (prefix, seq) SELECT substr(id, 1, 8), seq FROM events WHERE seq >= ?",
    "INSERT INTO fresh_authors (prefix, created_at, kind, seq)"
    " SELECT substr(pubkey, 1, 8), created_at, kind, seq FROM events WHERE seq >= ?",
)

# The tag rows as a JSON array of [name, created_at, seq, start, length,
# text]: the value is the bytes of ?2 from start (1-based) on, as a TEXT if
# text is 1 (UTF-8) and as a BLOB if 0 (see storedValue).
_INSERT_PLAIN_TAGS = """
    INSERT INTO fresh_tags (name, value, created_at, seq)
    SELECT name, iif(text, CAST(substr(?2, start, length) AS TEXT), substr(?2, start, length)),
        created_at, event
    FROM (
        SELECT json_extract(value, '$[0]') AS name, json_extract(value, '$[1]') AS created_at,
            json_extract(value, '$[2]') AS event, json_extract(value, '$[3]') AS start,
            json_extract(value, '$[4]') AS length, json_extract(value, '$[5]') AS text
        FROM json_each(?1)
    )
"""


def _insertPlain(
    events: Sequence[Event], raws: Sequence[bytes], connection: sqlite3.Connection
) -> list[bool]:
    """
    Insert C{events} (plain ones, see L{_isPlain}), whose JSON is C{raws}.

    @return: for each, whether it was stored (not there already, earlier
        in C{events}, nor deleted by a stored deletion request).
    """
    eventIds = [bytes.fromhex(event.id) for event in events]
    pubkeys = [bytes.fromhex(event.pubkey) for event in events]
    refused = _refused(b"".join(eventIds), b"".join(pubkeys), len(events), True, connection)
    saved = [False] * len(events)
    seen: set[bytes] = set()
    kept: list[int] = []
    for index, eventId in enumerate(eventIds):
        if index not in refused and eventId not in seen:
            seen.add(eventId)
            kept.append(index)
            saved[index] = True
    if not kept:
        return saved
    first = _highestSeq(connection) + 1
    layout: list[tuple[int, int, int, int]] = []
    start = 1
    for index in kept:
        event, size = events[index], len(raws[index])
        layout.append((event.kind, event.createdAt, start, size))
        start += size
    connection.execute(
        _INSERT_PLAIN_EVENTS,
        (
            first,
            b"".join([eventIds[index] for index in kept]),
            b"".join([pubkeys[index] for index in kept]),
            orjson.dumps(layout),
            b"".join([raws[index] for index in kept]),
        ),
    )
    for statement in _INSERT_PLAIN_ROWS:
        connection.execute(statement, (first,))
    rows: list[tuple[str, int, int, int, int, int]] = []
    values: list[bytes] = []
    start = 1
    for seq, index in enumerate(kept, first):
        event = events[index]
        for name, value in _indexedTags(event.tags):
            text = isinstance(value, str)
            stored = value.encode() if isinstance(value, str) else value
            rows.append((name, event.createdAt, seq, start, len(stored), text))
            values.append(stored)
            start += len(stored)
    if rows:
        connection.execute(_INSERT_PLAIN_TAGS, (orjson.dumps(rows), b"".join(values)))
    _countStored(connection, len(kept))
    return saved


def _saveEvent(event: Event, expiration: int | None, connection: sqlite3.Connection) -> bool:
    address = _address(event)
    eventId = bytes.fromhex(event.id)
    pubkey = bytes.fromhex(event.pubkey)
    if _refused(eventId, pubkey, 1, event.kind != _DELETION, connection):
        return False
    if address is not None:
        # Checked before an older version is replaced.
        byAddress = storedValue(f"{event.kind}:{event.pubkey}:{address}")
        if connection.execute(
            _DELETED_BY_ADDRESS, (byAddress, pubkey, event.createdAt)
        ).fetchone():
            return False
        row = connection.execute(
            "SELECT seq, created_at, id FROM events WHERE pubkey = ? AND kind = ?"
            " AND address = ?",
            (pubkey, event.kind, address),
        ).fetchone()
        if row is not None:
            if (row[1], eventId) >= (event.createdAt, row[2]):
                return False
            _removeEvents(connection, "seq = ?", (row[0],))
    cursor = connection.execute(
        _INSERT_EVENT,
        (
            eventId,
            pubkey,
            event.kind,
            event.createdAt,
            address,
            None if expiration is None else min(expiration, _MAX_INTEGER),
            event.toJSON(),
        ),
    )
    seq = cursor.lastrowid
    assert seq is not None
    connection.execute(
        "INSERT INTO fresh_ids (prefix, seq) VALUES (?, ?)", (eventId[:_PREFIX], seq)
    )
    connection.execute(
        "INSERT INTO fresh_authors (prefix, created_at, kind, seq) VALUES (?, ?, ?, ?)",
        (pubkey[:_PREFIX], event.createdAt, event.kind, seq),
    )
    _countStored(connection, 1)
    tags = list(_indexedTags(event.tags))
    # A statement per _TAG_ROWS rows, not per row.
    for start in range(0, len(tags), _TAG_ROWS):
        chunk = tags[start : start + _TAG_ROWS]
        connection.execute(
            _INSERT_TAGS + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
            [item for name, value in chunk for item in (name, value, event.createdAt, seq)],
        )
    if event.kind == _DELETION:
        connection.executemany(
            "INSERT OR IGNORE INTO deleted (id, pubkey, seq) VALUES (?, ?, ?)",
            _deletedRows(tags, pubkey, seq),
        )
        _applyDeletion(connection, event)
    return True


def _newestMatches(
    filters: tuple[Filter, ...],
    maxLimit: int,
    now: int,
    extraColumns: str,
    connection: sqlite3.Connection,
) -> list[tuple[Any, ...]]:
    """
    The rows C{(id, created_at, *extraColumns)} of the events matching any
    of C{filters}, each filter's C{limit} applied to its own matches, newest
    first (ties by lowest id).
    """
    found: dict[bytes, tuple[Any, ...]] = {}
    for f in filters:
        limit = maxLimit if f.limit is None else min(f.limit, maxLimit)
        # The newest matches are picked first, then only they are read.
        sql, params = _filterSelect(f, now, limit, True)
        for row in connection.execute(
            f"SELECT id, created_at{extraColumns} FROM events WHERE seq IN ({sql})", params
        ):
            found[row[0]] = row
    return sorted(found.values(), key=lambda row: (-row[1], row[0]))


def _queryEvents(
    filters: tuple[Filter, ...], maxLimit: int, now: int, connection: sqlite3.Connection
) -> list[Event]:
    rows = _newestMatches(filters, maxLimit, now, ", raw", connection)
    return [_eventFromJSON(row[2]) for row in rows]


def _queryIds(
    filters: tuple[Filter, ...], maxLimit: int, now: int, connection: sqlite3.Connection
) -> list[str]:
    return [row[0].hex() for row in _newestMatches(filters, maxLimit, now, "", connection)]


def _syncRecords(
    filters: tuple[Filter, ...], maxRecords: int, now: int, connection: sqlite3.Connection
) -> list[tuple[int, str]]:
    rows = _newestMatches(filters, maxRecords, now, "", connection)
    return [(createdAt, eventId.hex()) for eventId, createdAt in rows[:maxRecords]]


def _fetchEvents(
    eventIds: tuple[str, ...], now: int, connection: sqlite3.Connection
) -> list[Event]:
    if not eventIds:
        return []
    clause, params = _idClause("events", eventIds)
    raws: dict[bytes | str, bytes] = dict(
        connection.execute(
            f"SELECT id, raw FROM events WHERE {clause}"
            " AND (expiration IS NULL OR expiration > ?)",
            [*params, now],
        )
    )
    keys = _storedValues(eventIds)
    return [_eventFromJSON(raws[key]) for key in keys if key in raws]


def _countEvents(
    filters: tuple[Filter, ...], now: int, connection: sqlite3.Connection
) -> int:
    if not filters:
        return 0
    parts = []
    params: list[object] = []
    for f in filters:
        sql, partParams = _filterSelect(f, now, f.limit, f.limit is not None)
        parts.append(f"SELECT seq FROM ({sql})")
        params += partParams
    counted: int = connection.execute(
        f"SELECT count(*) FROM ({' UNION '.join(parts)})", params
    ).fetchone()[0]
    return counted


def _enqueue(
    event: Event,
    relayURLs: tuple[str, ...],
    now: float,
    maxOutbox: int,
    connection: sqlite3.Connection,
) -> None:
    if not relayURLs:
        return
    queued = connection.execute(
        "SELECT 1 FROM outbox WHERE event_id = ?", (event.id,)
    ).fetchone()
    if queued is None:
        size: int = connection.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if size >= maxOutbox:
            raise QueueFull(f"the outbox holds {size} events already")
        connection.execute(
            "INSERT INTO outbox (event_id, raw, enqueued_at) VALUES (?, ?, ?)",
            (event.id, event.toJSON(), now),
        )
    connection.executemany(
        "INSERT OR IGNORE INTO outbox_relays (event_id, relay) VALUES (?, ?)",
        [(event.id, url) for url in relayURLs],
    )


def _recordResult(
    eventId: str,
    relayURL: str,
    accepted: bool,
    message: str,
    refused: bool,
    now: float,
    connection: sqlite3.Connection,
) -> None:
    connection.execute(
        "UPDATE outbox_relays SET accepted = max(accepted, ?), refused = max(refused, ?),"
        " attempts = attempts + 1, last_message = ?, last_attempt_at = ?"
        " WHERE event_id = ? AND relay = ?",
        (int(accepted), int(refused), message, now, eventId, relayURL),
    )
    if accepted or refused:
        # The event leaves the outbox once every relay settled it.
        connection.execute(
            "DELETE FROM outbox WHERE event_id = ? AND NOT EXISTS (SELECT 1 FROM"
            " outbox_relays WHERE event_id = ? AND accepted = 0 AND refused = 0)",
            (eventId, eventId),
        )


def _pending(connection: sqlite3.Connection) -> list[OutboxEntry]:
    relays: dict[str, dict[str, RelayDelivery]] = {}
    for eventId, url, accepted, attempts, message, lastAttemptAt, refused in connection.execute(
        "SELECT event_id, relay, accepted, attempts, last_message, last_attempt_at, refused"
        " FROM outbox_relays"
    ):
        relays.setdefault(eventId, {})[url] = RelayDelivery(
            accepted=bool(accepted),
            attempts=attempts,
            lastMessage=message,
            lastAttemptAt=lastAttemptAt,
            refused=bool(refused),
        )
    return [
        OutboxEntry(
            event=_eventFromJSON(raw),
            enqueuedAt=enqueuedAt,
            relays=MappingProxyType(relays.get(eventId, {})),
        )
        for eventId, raw, enqueuedAt in connection.execute(
            "SELECT event_id, raw, enqueued_at FROM outbox ORDER BY seq"
        )
    ]


def _discard(eventId: str, connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM outbox WHERE event_id = ?", (eventId,))


__all__ = ["DEFAULT_CACHE_BYTES", "OutboxEntry", "RelayDelivery", "SQLiteEventStore"]
