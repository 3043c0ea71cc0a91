"""
Tests for L{relaypool.service}: the C{twistd relaypool} options, the status
logger, ordered shutdown, and the whole daemon serving a WebSocket client
in front of fake relays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.config import Config, buildConfig
from relaypool.relaypool import RelayStats
from relaypool.service import (
    Options,
    OrderedMultiService,
    RelayPoolService,
    StatusLogger,
    logConnectionState,
    makeService,
)
from relaypool.testing import FakeRelay, makeEvent
from relaypool.tryit import TryItFailed, tryRelay


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
        self.assertEqual(options.config.relays, ("wss://b.example", "ws://a.example:7000"))

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

    def test_configFile(self) -> None:
        """
        C{--config} reads a TOML file, and the command line overrides it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('relays = ["ws://a", "ws://b"]\nquorum = 2\nname = "from file"\n')
        config = _parse("--config", path, "--quorum", "1").config
        self.assertEqual(
            (config.relays, config.quorum, config.name), (("ws://a", "ws://b"), 1, "from file")
        )

    def test_commandLineRelaysReplaceFile(self) -> None:
        """
        C{--relay} options replace the file's C{relays}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('relays = ["ws://a", "ws://b"]\n')
        self.assertEqual(_parse("--config", path, "--relay", "ws://c").config.relays, ("ws://c",))

    def test_configFileError(self) -> None:
        """
        An invalid key in the file is a usage error naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("colour = 1\n")
        error = self.assertRaises(UsageError, _parse, "--config", path)
        self.assertEqual(str(error), "colour: unknown setting")

    def test_everySettingHasAnOption(self) -> None:
        """
        The help lists an option for every setting, with its default.
        """
        usage = Options().getUsage(width=200)
        for option in ("--relay=", "--no-verify", "--auth-required", "--store-max-bytes="):
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


class ConnectionStateLogTests(SynchronousTestCase):
    def test_slotChangeLine(self) -> None:
        """
        A connection slot's state change is logged with the relay, address,
        state, failed attempts and the next retry time.
        """
        from twisted.logger import formatEvent

        from relaypool.mux import SlotStatus
        from relaypool.names import Address

        slot = SlotStatus(Address("127.0.0.1", 7000), 0, "backing-off", 3, 12.5)
        with capturedLogs() as events:
            logConnectionState("ws://127.0.0.1:7000/", slot)
        self.assertEqual(
            formatEvent(events[0]),
            "ws://127.0.0.1:7000/ 127.0.0.1:7000 #0: backing-off (failed attempts: 3, retry at 12.5)",
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


class DaemonTests(TestCase):
    """
    The daemon serving real WebSocket clients on 127.0.0.1.
    """

    @inlineCallbacks
    def startDaemon(self, **settings: object) -> Any:
        overrides = {"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:", **settings}
        daemon = RelayPoolService(buildConfig(overrides=overrides))
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
    L{relaypool.tryit} against the daemon.
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
