"""
Tests for L{relaypool.daemon.service}: the C{twistd relaypool} options, the status
logger, ordered shutdown, and the whole daemon serving a WebSocket client
in front of fake relays.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.daemon.config import Config, ConfigSources, RelaySpec, buildConfig
from relaypool.daemon.service import (
    ConnectionStateLogger,
    Options,
    OrderedMultiService,
    RelayPoolService,
    StatusLogger,
    makeService,
)
from relaypool.daemon.tryit import TryItFailed, tryRelay
from relaypool.errors import StartupError
from relaypool.testing import FakeRelay, makeEvent
from relaypool.transport.mux import SlotStatus
from relaypool.transport.names import Address
from relaypool.upstream.relaypool import RelayStats


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    """
    L{Options} parses the command line into a validated L{Config}.
    """

    def test_defaults(self) -> None:
        """
        No options give the default L{Config}.
        """
        self.assertEqual(_parse().config, Config())

    def test_repeatableRelay(self) -> None:
        """
        C{--relay} may be given several times; the relays keep their order.
        """
        options = _parse("--relay", "wss://b.example", "--relay=ws://a.example:7000")
        self.assertEqual(options.config.relayURLs(), ("wss://b.example", "ws://a.example:7000"))

    def test_relayRoleOptions(self) -> None:
        """
        C{--read-relay}, C{--write-relay} and C{--discovery-relay} add a
        relay with that role alone; a relay given with two of them gets
        both roles.
        """
        config = _parse(
            "--relay", "ws://both",
            "--read-relay", "ws://r",
            "--write-relay", "ws://w",
            "--discovery-relay", "ws://d",
            "--write-relay", "ws://r/",
        ).config  # fmt: skip
        self.assertEqual(
            [(spec.url, spec.roles()) for spec in config.relays],
            [
                ("ws://both", ("read", "write")),
                ("ws://r", ("read", "write")),
                ("ws://w", ("write",)),
                ("ws://d", ("discovery",)),
            ],
        )

    def test_relayRoleOptionsReplaceFile(self) -> None:
        """
        C{--read-relay} (like C{--relay}) replaces the file's C{relays}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('relays = ["ws://a", {url = "ws://b", write = false}]\n')
        config = _parse("--config", path, "--read-relay", "ws://c").config
        self.assertEqual(config.relays, (RelaySpec("ws://c", read=True, write=False),))

    def test_badRoleRelay(self) -> None:
        """
        An invalid URL given to C{--write-relay} is a usage error naming
        that option.
        """
        error = self.assertRaises(UsageError, _parse, "--write-relay", "http://relay.example")
        self.assertEqual(
            str(error), '--write-relay: "http://relay.example" is not a ws:// or wss:// URL'
        )

    def test_relayPatternOptions(self) -> None:
        """
        C{--relay-allow} and C{--relay-deny} are repeatable.
        """
        config = _parse(
            "--relay-allow", "wss://*", "--relay-allow", "ws://127.0.0.1:*",
            "--relay-deny", "*.onion",
        ).config  # fmt: skip
        self.assertEqual(
            (config.relayAllow, config.relayDeny), (("wss://*", "ws://127.0.0.1:*"), ("*.onion",))
        )

    def test_outboxOptions(self) -> None:
        """
        C{--outbox-model}, C{--outbox-relays-per-author} and
        C{--outbox-idle-timeout} set the outbox model's settings.
        """
        config = _parse(
            "--relay", "ws://a", "--outbox-model",
            "--outbox-relays-per-author", "4", "--outbox-idle-timeout", "60",
        ).config  # fmt: skip
        self.assertEqual(
            (config.outboxModel, config.outboxRelaysPerAuthor, config.outboxIdleTimeout),
            (True, 4, 60.0),
        )

    def test_repeatablePolicyLists(self) -> None:
        """
        C{--deny-pubkey}, C{--allow-kind}, C{--deny-kind} and
        C{--admin-pubkey} may each be given several times.
        """
        options = _parse(
            "--deny-pubkey", "ab" * 32, "--deny-pubkey", "cd" * 32,
            "--allow-kind", "1", "--allow-kind=7", "--deny-kind", "4",
            "--admin-pubkey", "ef" * 32,
        )
        config = options.config
        self.assertEqual(
            (config.denyPubkeys, config.allowKinds, config.denyKinds, config.adminPubkeys),
            (("ab" * 32, "cd" * 32), (1, 7), (4,), ("ef" * 32,)),
        )

    def test_writeRestricted(self) -> None:
        """
        C{--write-restricted} with C{--allow-pubkey} restricts publishing to
        the allowed pubkeys.
        """
        config = _parse("--write-restricted", "--allow-pubkey", "ab" * 32).config
        self.assertEqual((config.writeRestricted, config.allowPubkeys), (True, ("ab" * 32,)))

    def test_badPubkeyOption(self) -> None:
        """
        A bad pubkey on the command line is a usage error naming the option
        and the key.
        """
        error = self.assertRaises(UsageError, _parse, "--admin-pubkey", "xyz")
        self.assertEqual(
            str(error), '--admin-pubkey: "xyz" is not a public key in hex (64 hex characters)'
        )

    def test_badRelayScheme(self) -> None:
        """
        A C{--relay} that is not ws:// or wss:// is a usage error naming the
        option and the value.
        """
        error = self.assertRaises(UsageError, _parse, "--relay", "http://relay.example")
        self.assertEqual(str(error), '--relay: "http://relay.example" is not a ws:// or wss:// URL')

    def test_badRelayNoHost(self) -> None:
        """
        A C{--relay} with no host is a usage error.
        """
        error = self.assertRaises(UsageError, _parse, "--relay", "wss://")
        self.assertEqual(str(error), '--relay: "wss://" has no host')

    def test_parameters(self) -> None:
        """
        Parameters are parsed into their settings.
        """
        config = _parse(
            "--relay",
            "ws://a",
            "--relay",
            "ws://b",
            "--quorum",
            "2",
            "--connections-per-address",
            "3",
            "--eose-timeout",
            "2.5",
            "--store",
            ":memory:",
            "--listen",
            "tcp:0",
        ).config
        self.assertEqual(
            (
                config.quorum,
                config.connectionsPerAddress,
                config.eoseTimeout,
                config.store,
                config.listen,
            ),
            (2, 3, 2.5, ":memory:", "tcp:0"),
        )

    def test_flags(self) -> None:
        """
        C{--no-verify} turns verification off; C{--auth-required} turns
        NIP-42 on.
        """
        config = _parse("--no-verify", "--auth-required").config
        self.assertEqual((config.verify, config.authRequired), (False, True))

    def test_invalidValue(self) -> None:
        """
        An invalid value is one usage error line naming the key.
        """
        error = self.assertRaises(UsageError, _parse, "--quorum", "two")
        self.assertEqual(str(error), 'quorum: must be a positive integer, got "two"')

    def test_environment(self) -> None:
        """
        C{RELAYPOOL_} variables set settings under the command line, and
        C{RELAYPOOL_CONFIG} names the file; L{Options.sources} keeps them.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("max-relays = 4\ndedup-size = 3\n")
        options = Options()
        options.environ = {"RELAYPOOL_CONFIG": path, "RELAYPOOL_DEDUP_SIZE": "7", "X": "1"}
        options.parseOptions(["--max-filters", "2", "--store", ":memory:"])
        config = options.config
        self.assertEqual((config.maxRelays, config.dedupSize, config.limits.maxFilters), (4, 7, 2))
        self.assertEqual(options.sources.path, path)

    def test_environmentError(self) -> None:
        """
        An invalid variable is one usage error line naming it.
        """
        options = Options()
        options.environ = {"RELAYPOOL_QUORUM": "two"}
        error = self.assertRaises(UsageError, options.parseOptions, [])
        self.assertEqual(str(error), 'RELAYPOOL_QUORUM: must be a positive integer, got "two"')

    def test_invalidValueUnderTwistd(self) -> None:
        """
        Under twistd (with a C{parent}), an invalid value ends the process
        with one line naming the key and a hint to C{--help}, not with the
        whole usage text.
        """
        options = Options()
        options.parent = Options()  # type: ignore[attr-defined]
        error = self.assertRaises(SystemExit, options.parseOptions, ["--quorum", "two"])
        self.assertEqual(
            error.code,
            'twistd relaypool: quorum: must be a positive integer, got "two"\n'
            "Try 'twistd relaypool --help'.",
        )

    def test_configFileErrorUnderTwistd(self) -> None:
        """
        Under twistd, a config file that cannot be read is one line naming
        the file and the reason, and a hint to C{--help}.
        """
        path = self.mktemp()
        options = Options()
        options.parent = Options()  # type: ignore[attr-defined]
        error = self.assertRaises(SystemExit, options.parseOptions, ["--config", path])
        self.assertEqual(
            error.code,
            f"twistd relaypool: config: cannot read {path}: No such file or directory\n"
            "Try 'twistd relaypool --help'.",
        )

    def test_configFile(self) -> None:
        """
        C{--config} reads a TOML file, and the command line overrides it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('relays = ["ws://a", "ws://b"]\nquorum = 2\nname = "from file"\n')
        config = _parse("--config", path, "--quorum", "1").config
        self.assertEqual(
            (config.relayURLs(), config.quorum, config.name), (("ws://a", "ws://b"), 1, "from file")
        )

    def test_commandLineRelaysReplaceFile(self) -> None:
        """
        C{--relay} options replace the file's C{relays}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('relays = ["ws://a", "ws://b"]\n')
        self.assertEqual(_parse("--config", path, "--relay", "ws://c").config.relayURLs(), ("ws://c",))

    def test_configFileError(self) -> None:
        """
        An invalid key in the file is a usage error naming it and the file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("colour = 1\n")
        error = self.assertRaises(UsageError, _parse, "--config", path)
        self.assertEqual(str(error), f"colour: unknown setting (in {path})")

    def test_everySettingHasAnOption(self) -> None:
        """
        The help lists an option for every setting, with its default.
        """
        usage = Options().getUsage(width=200)
        for option in (
            "--relay=",
            "--read-relay=",
            "--write-relay=",
            "--discovery-relay=",
            "--relay-allow=",
            "--relay-deny=",
            "--outbox-model",
            "--outbox-relays-per-author=",
            "--no-verify",
            "--auth-required",
            "--store-max-bytes=",
        ):
            self.assertIn(option, usage)
        self.assertIn("[default: relaypool.db in the current directory]", usage)

    def test_makeService(self) -> None:
        """
        L{makeService} makes a L{RelayPoolService} with the parsed settings,
        which opens nothing until started.
        """
        options = _parse("--store", ":memory:")
        made = makeService(options)
        self.assertIsInstance(made, RelayPoolService)
        self.assertEqual((made.config, made.store, list(made)), (options.config, None, []))


class _FakePool:
    def __init__(self, stats: dict[str, RelayStats]) -> None:
        self._stats = stats

    def stats(self) -> dict[str, RelayStats]:
        return self._stats


def _stats(url: str, state: str) -> RelayStats:
    return RelayStats(
        url=url,
        state=state,
        connectedSince=None,
        reconnects=2,
        eventsReceived=10,
        eventsUnique=7,
        eventsInvalid=1,
        okAccepted=3,
        okRejected=0,
        latency=0.05,
        healthScore=90.0,
        outboundQueued=0,
        outboundDropped=0,
        waitingSubscriptions=0,
    )


class StatusLoggerTests(SynchronousTestCase):
    """
    L{StatusLogger} logs each relay's status every interval.
    """

    def test_logsEveryInterval(self) -> None:
        """
        One line per relay is logged each interval, none before the first.
        """
        clock = Clock()
        pool = _FakePool(
            {"ws://b": _stats("ws://b", "open"), "ws://a": _stats("ws://a", "backing-off")}
        )
        logger = StatusLogger(pool, 60.0, clock)  # type: ignore[arg-type]
        with capturedLogs() as events:
            logger.startService()
            clock.advance(59)
            self.assertEqual(len(events), 0)
            clock.advance(1)
            logger.stopService()
            clock.advance(60)
        self.assertEqual([e["url"] for e in events], ["ws://a", "ws://b"])

    def test_lineContent(self) -> None:
        """
        A status line names the relay, its state, health, events and OKs.
        """
        from twisted.logger import formatEvent

        logger = StatusLogger(_FakePool({"ws://a": _stats("ws://a", "open")}), 60.0, Clock())  # type: ignore[arg-type]
        with capturedLogs() as events:
            logger.logStatus()
        self.assertEqual(
            formatEvent(events[0]),
            "relay ws://a: open, health 90, events 10 received (7 unique, 1 invalid),"
            " OK 3 accepted 0 rejected, latency 50 ms, reconnects 2, queued 0, dropped 0",
        )


def _slot(
    state: str,
    attempts: int,
    nextRetry: float | None = None,
    lastError: str | None = None,
    failingSince: float | None = None,
) -> SlotStatus:
    return SlotStatus(
        Address("127.0.0.1", 7000), 0, state, attempts, nextRetry, lastError, failingSince
    )


class ConnectionStateLogTests(SynchronousTestCase):
    """
    L{ConnectionStateLogger} logs one line per connection state change, with
    human times, and summarizes repeated failures.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.logger = ConnectionStateLogger(self.clock)

    def lines(self, *slots: SlotStatus) -> list[str]:
        with capturedLogs() as events:
            for slot in slots:
                self.logger("ws://127.0.0.1:7000/", slot)
        return [formatEvent(event) for event in events]

    def test_failureLine(self) -> None:
        """
        A failed attempt is one line with the relay, address, attempt
        number, error and the delay before the next attempt in seconds.
        """
        self.assertEqual(
            self.lines(_slot("backing-off", 1, 1004.25, "Connection refused.", 1000)),
            ["ws://127.0.0.1:7000/ 127.0.0.1:7000 #0: attempt 1 failed: Connection refused;"
             " retry in 4.2 s"],
        )

    def test_retryNotLogged(self) -> None:
        """
        The first connection attempt is logged; a retry's C{connecting} is
        not (the failure before it said when it comes).
        """
        self.assertEqual(
            self.lines(_slot("connecting", 0), _slot("connecting", 2, None, "refused", 990)),
            ["ws://127.0.0.1:7000/ 127.0.0.1:7000 #0: connecting"],
        )

    def test_repeatedFailuresSummarized(self) -> None:
        """
        After the first three failed attempts in a row, only attempts whose
        number is a power of two or a multiple of 64 are logged, as a
        summary with the local time the failures began and the last error.
        """
        since = time.strftime("%H:%M:%S", time.localtime(self.clock.seconds()))
        lines = self.lines(
            *[
                _slot("backing-off", n, self.clock.seconds() + 60, "refused", 1000)
                for n in range(1, 200)
            ]
        )
        self.assertEqual(
            [line.split(": ", 1)[1] for line in lines],
            [f"attempt {n} failed: refused; retry in 60.0 s" for n in (1, 2, 3)]
            + [
                f"still failing: {n} attempts since {since}, last error: refused;"
                " retry in 60.0 s"
                for n in (4, 8, 16, 32, 64, 128, 192)
            ],
        )

    def test_openAfterFailures(self) -> None:
        """
        Opening after failed attempts says how many and since when.
        """
        since = time.strftime("%H:%M:%S", time.localtime(990))
        self.assertEqual(
            self.lines(_slot("open", 5, None, "refused", 990)),
            [f"ws://127.0.0.1:7000/ 127.0.0.1:7000 #0: open after 5 failed attempts since {since}"],
        )


class _Part(Service):
    def __init__(self, name: str, stops: list[str], done: Deferred[None] | None = None) -> None:
        self.name = name
        self._stops = stops
        self._done = done

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        self._stops.append(self.name)
        return self._done


class OrderedMultiServiceTests(SynchronousTestCase):
    """
    L{OrderedMultiService} stops its children one after the other.
    """

    def test_reverseOrderOneByOne(self) -> None:
        """
        The last child added stops first, and the one before it only when
        that stop finished.
        """
        stops: list[str] = []
        gate: Deferred[None] = Deferred()
        parent = OrderedMultiService()
        _Part("store", stops).setServiceParent(parent)
        _Part("gateway", stops, gate).setServiceParent(parent)
        parent.startService()
        done = parent.stopService()
        self.assertEqual(stops, ["gateway"])
        gate.callback(None)
        self.assertEqual(stops, ["gateway", "store"])
        self.successResultOf(done)

    def test_failureLoggedAndOthersStop(self) -> None:
        """
        A child failing to stop is logged and the others still stop.
        """
        stops: list[str] = []
        parent = OrderedMultiService()
        _Part("store", stops).setServiceParent(parent)
        _Part("gateway", stops, Deferred.fromCoroutine(_raise())).setServiceParent(parent)
        parent.startService()
        with capturedLogs() as events:
            self.successResultOf(parent.stopService())
        self.assertEqual(stops, ["gateway", "store"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(events), 1)


async def _raise() -> None:
    raise RuntimeError("cannot stop")


class _Client(WebSocketClientProtocol):  # type: ignore[misc]
    """
    A bare Nostr client: sends JSON lists, queues what it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inbox: deque[Any] = deque()
        self.waiting: deque[Deferred[Any]] = deque()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = orjson.loads(payload)
        if self.waiting:
            self.waiting.popleft().callback(message)
        else:
            self.inbox.append(message)

    def send(self, *message: Any) -> None:
        self.sendMessage(orjson.dumps(list(message)))

    def next(self) -> Deferred[Any]:
        if self.inbox:
            return succeed(self.inbox.popleft())
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d.addTimeout(10, reactor)


@inlineCallbacks
def _connect(port: int) -> Any:
    url = f"ws://127.0.0.1:{port}"
    factory = WebSocketClientFactory(url)
    factory.protocol = _Client
    client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    yield client.is_open
    return client


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
    """
    Fire once C{predicate()} holds, checking every 20 ms; fail after
    C{timeout} seconds.
    """

    @inlineCallbacks
    def wait() -> Any:
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"condition not met in {timeout} s")

    return wait()  # type: ignore[no-any-return]


class DaemonFixture(TestCase):
    """
    Starts the daemon in-process, on a free port of 127.0.0.1 with its store
    in memory, and fake relays for it.
    """

    @inlineCallbacks
    def startDaemon(self, sources: ConfigSources | None = None, **settings: object) -> Any:
        overrides = {"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:", **settings}
        daemon = RelayPoolService(buildConfig(overrides=overrides), sources=sources)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        assert daemon.gateway is not None
        port = yield daemon.gateway.whenListening()
        return daemon, port.getHost().port

    @inlineCallbacks
    def fakeRelays(self, count: int) -> Any:
        relays = []
        for _ in range(count):
            relay = FakeRelay()
            yield relay.start()
            self.addCleanup(relay.stop)
            relays.append(relay)
        return relays


class DaemonTests(DaemonFixture):
    """
    The daemon serving real WebSocket clients on 127.0.0.1.
    """

    @inlineCallbacks
    def test_publishAndReadBack(self) -> Any:
        """
        With relays, a client's EVENT is answered OK true once the quorum of
        relays accepted it, every relay has it, and a REQ by its id returns
        it, then EOSE.
        """
        relays = yield self.fakeRelays(2)
        daemon, port = yield self.startDaemon(
            relays=[relay.url for relay in relays], quorum="2", **{"status-interval": "0"}
        )
        yield _until(lambda: len(daemon.pool.activeRelayURLs()) == 2)
        client = yield _connect(port)
        event = makeEvent(content="hello through the daemon")
        client.send("EVENT", event.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", event.id, True])
        self.assertEqual([[e.id for e in relay.events] for relay in relays], [[event.id]] * 2)
        client.send("REQ", "mine", {"ids": [event.id]})
        received = yield client.next()
        eose = yield client.next()
        self.assertEqual(
            (received[0], received[2]["id"], eose), ("EVENT", event.id, ["EOSE", "mine"])
        )
        yield daemon.stopService()
        yield client.is_closed

    @inlineCallbacks
    def test_storeAlone(self) -> Any:
        """
        With no relays the daemon serves its store: an EVENT is answered
        OK true once stored, and a REQ returns it.
        """
        daemon, port = yield self.startDaemon()
        self.assertIsNone(daemon.pool)
        client = yield _connect(port)
        event = makeEvent(content="kept locally")
        client.send("EVENT", event.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", event.id, True])
        client.send("REQ", "mine", {"ids": [event.id]})
        received = yield client.next()
        self.assertEqual(received[2]["id"], event.id)
        yield daemon.stopService()
        yield client.is_closed

    @inlineCallbacks
    def test_partsWired(self) -> Any:
        """
        Started with relays, the daemon has a store, a pool holding the
        relays, an outbox and a gateway, and stopping it stops them all.
        """
        relays = yield self.fakeRelays(1)
        daemon, port = yield self.startDaemon(relays=[relays[0].url])
        # Stopping the pool while it fetches a relay's NIP-11 document
        # leaves that fetch's connection attempt behind: wait for it.
        yield _until(lambda: len(daemon.pool.activeRelayURLs()) == 1)
        self.assertEqual(
            (
                len(daemon.pool.relayURLs()),
                daemon.outbox is not None,
                daemon.gateway.port is not None,
            ),
            (1, True, True),
        )
        yield daemon.stopService()
        self.assertEqual([part.running for part in daemon], [0] * len(list(daemon)))


class TryItTests(TestCase):
    """
    L{relaypool.daemon.tryit} against the daemon.
    """

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        The try-it client publishes a note to a running daemon and reads it
        back, reporting each step.
        """
        daemon = RelayPoolService(
            buildConfig(overrides={"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:"})
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)
        port = yield daemon.gateway.whenListening()
        lines: list[str] = []
        note = yield tryRelay(reactor, f"ws://127.0.0.1:{port.getHost().port}", 5.0, lines.append)
        self.assertEqual(
            (note.content.startswith("hello from relaypool tryit "), lines[-1]),
            (True, f"read back: {note.content!r} (id and signature verified)"),
        )

    @inlineCallbacks
    def test_noRelay(self) -> Any:
        """
        With nothing listening, the try-it client fails with a message
        saying how to start the daemon.
        """
        relay = FakeRelay()
        yield relay.start()
        yield relay.stop()
        error = yield self.assertFailure(tryRelay(reactor, relay.url, 5.0, print), TryItFailed)
        self.assertTrue(
            str(error).startswith(f"no relay at {relay.url}: start it with `twistd -n relaypool`")
        )


class StartupFailureTests(TestCase):
    """
    A daemon that cannot listen or cannot open its store does not start: it
    logs one line saying why and raises L{StartupError}, which ends twistd
    with status 1.
    """

    def failedStart(self, **overrides: object) -> tuple[StartupError, list[str]]:
        daemon = RelayPoolService(buildConfig(overrides={"store": ":memory:", **overrides}))
        self.addCleanup(daemon.stopService)
        with capturedLogs() as events:
            error = self.assertRaises(StartupError, daemon.privilegedStartService)
        critical = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
        return error, critical

    def test_portTaken(self) -> None:
        """
        When the port is taken, starting fails with one line naming the
        endpoint and the reason; the error is a L{SystemExit} with code 1.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        error, critical = self.failedStart(listen=listen)
        self.assertEqual(
            (str(error), error.code, critical),
            (
                f"cannot listen on {listen}: Address already in use",
                1,
                [f"relaypool: cannot listen on {listen}: Address already in use"],
            ),
        )

    def test_storeNewerSchema(self) -> None:
        """
        A store written by a newer relaypool fails the start with one line
        naming the file and its schema version.
        """
        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA user_version = 99")
        connection.close()
        error, critical = self.failedStart(store=path, listen="tcp:0:interface=127.0.0.1")
        self.assertEqual(len(critical), 1)
        self.assertTrue(
            critical[0].startswith(
                f"relaypool: cannot open the store {path}: the database has schema version 99"
            ),
            critical,
        )

    def test_storeIsDirectory(self) -> None:
        """
        A store path that cannot be opened as a file fails the start with
        one line naming it and SQLite's reason.
        """
        path = self.mktemp()
        os.mkdir(path)
        error, critical = self.failedStart(store=path, listen="tcp:0:interface=127.0.0.1")
        self.assertEqual(
            critical, [f"relaypool: cannot open the store {path}: unable to open database file"]
        )

    def test_listenFailsLater(self) -> None:
        """
        When the endpoint reports its failure only once the reactor runs,
        the line is logged, the reactor is stopped, and the process ends
        with status 1 once the reactor shut down.
        """
        fakeReactor = MemoryReactorClock()
        exits: list[int] = []
        daemon = RelayPoolService(Config(), reactor=fakeReactor, exitProcess=exits.append)
        listening: Deferred[Any] = Deferred()
        daemon.gateway = _LateGateway(listening)  # type: ignore[assignment]
        daemon._watchListening()
        with capturedLogs() as events:
            listening.errback(CannotListenError("127.0.0.1", 7777, OSError(98, "Address already in use")))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["relaypool: cannot listen on tcp:7777:interface=127.0.0.1: Address already in use"],
        )
        self.assertTrue(fakeReactor.hasStopped)
        for trigger, args, kwargs in fakeReactor.triggers["after"]["shutdown"]:
            trigger(*args, **kwargs)
        self.assertEqual(exits, [1])


class _LateGateway:
    def __init__(self, listening: Deferred[Any]) -> None:
        self._listening = listening

    def whenListening(self) -> Deferred[Any]:
        return self._listening


class ConnectionLogTests(TestCase):
    """
    What the daemon logs about a relay that is down.
    """

    @inlineCallbacks
    def test_relayDown(self) -> Any:
        """
        A relay refusing connections gets one line per failed attempt, with
        the delay before the next in seconds, and no "Starting factory" or
        "Stopping factory" lines (neither for the WebSocket connections nor
        for the NIP-11 fetch).
        """
        closed = socket.socket()
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/"
        config = buildConfig(
            overrides={
                "relays": [url],
                "listen": "tcp:0:interface=127.0.0.1",
                "store": ":memory:",
                "status-interval": "0",
            }
        )
        daemon = RelayPoolService(config)
        with capturedLogs() as events:
            daemon.startService()
            self.addCleanup(daemon.stopService)
            texts = lambda: [formatEvent(e) for e in events]  # noqa: E731
            yield _until(lambda: any("no NIP-11 document" in t for t in texts()))
            yield _until(lambda: any("attempt 2 failed" in t for t in texts()))
        lines = texts()
        self.assertEqual([t for t in lines if "factory" in t.lower()], [])
        connections = [
            t.split(": ", 1)[1]
            for e, t in zip(events, lines, strict=True)
            if e["log_namespace"] == "relaypool.connections"
        ]
        self.assertEqual(connections[0], "connecting")
        for n, line in enumerate(connections[1:3], start=1):
            self.assertRegex(
                line, rf"^attempt {n} failed: Connection was refused .*; retry in \d+\.\d s$"
            )
