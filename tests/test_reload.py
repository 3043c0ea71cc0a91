"""
Tests for reloading the daemon's settings: L{RelayPoolService.applyConfig},
L{RelayPoolService.reload} and C{SIGHUP}, in-process and with C{twistd
relaypool} as a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from relaypool.daemon.config import ConfigSources, buildConfig
from relaypool.nostr.url import parseRelayURL
from relaypool.testing import FakeRelay, makeEvent
from tests.test_service import DaemonFixture, _connect, _until

_BASE = {"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:", "status-interval": "0"}
"""
The settings L{DaemonFixture.startDaemon} starts the daemon with.
"""


class ApplyConfigTests(DaemonFixture):
    """
    L{RelayPoolService.applyConfig} changes a running daemon without
    dropping its clients.
    """

    def startDaemon(self, sources: ConfigSources | None = None, **settings: object) -> Any:
        return super().startDaemon(sources, **{"status-interval": "0", **settings})

    @inlineCallbacks
    def test_relaysAddedAndRemoved(self) -> Any:
        """
        A relay added to the settings joins the pool and C{/stats}; one
        removed leaves both; the change is returned and logged on one line.
        """
        a, b = yield self.fakeRelays(2)
        daemon, port = yield self.startDaemon(relays=[a.url])
        yield _until(lambda: len(daemon.pool.activeRelayURLs()) == 1)
        with capturedLogs() as events:
            changes = daemon.applyConfig(buildConfig(overrides={**_BASE, "relays": [b.url]}))
        self.assertEqual(changes, [f"relays [{a.url}] -> [{b.url}]"])
        self.assertEqual(daemon.config.relayURLs(), (b.url,))
        self.assertEqual(daemon.pool.relayURLs(), [parseRelayURL(b.url).url])
        self.assertEqual(
            [formatEvent(e) for e in events if "reloaded" in formatEvent(e)],
            [f"relaypool: reloaded settings: relays [{a.url}] -> [{b.url}]"],
        )
        yield _until(lambda: len(daemon.pool.activeRelayURLs()) == 1)
        response = yield treq.get(f"http://127.0.0.1:{port}/stats", persistent=False)
        stats = orjson.loads((yield response.content()))
        self.assertEqual(list(stats["relays"]), [parseRelayURL(b.url).url])

    @inlineCallbacks
    def test_limitAppliesToConnectedClient(self) -> Any:
        """
        A lower C{max-filters} applies to the next REQ of a client that is
        already connected, which stays connected and is served.
        """
        daemon, port = yield self.startDaemon()
        client = yield _connect(port)
        client.send("REQ", "two", {"kinds": [1]}, {"kinds": [2]})
        self.assertEqual((yield client.next()), ["EOSE", "two"])
        changes = daemon.applyConfig(buildConfig(overrides={**_BASE, "max-filters": "1"}))
        self.assertEqual(changes, ["max-filters 10 -> 1"])
        client.send("REQ", "again", {"kinds": [1]}, {"kinds": [2]})
        self.assertEqual(
            (yield client.next()), ["CLOSED", "again", "invalid: at most 1 filters per request"]
        )
        client.send("REQ", "one", {"kinds": [1]})
        self.assertEqual((yield client.next()), ["EOSE", "one"])
        self.assertEqual(daemon.gateway.information()["limitation"]["max_filters"], 1)

    @inlineCallbacks
    def test_rateAppliesToConnectedClient(self) -> Any:
        """
        A lower C{req-burst} applies to a connected client's token bucket:
        its next REQ over the new burst is refused as rate-limited.
        """
        daemon, port = yield self.startDaemon()
        client = yield _connect(port)
        daemon.applyConfig(
            buildConfig(overrides={**_BASE, "req-burst": "1", "reqs-per-second": "0.001"})
        )
        client.send("REQ", "first", {"kinds": [1]})
        self.assertEqual((yield client.next()), ["EOSE", "first"])
        client.send("REQ", "second", {"kinds": [1]})
        closed = yield client.next()
        self.assertEqual(closed[:2], ["CLOSED", "second"])
        self.assertTrue(closed[2].startswith("rate-limited:"), closed)

    @inlineCallbacks
    def test_okPolicyAndQuorum(self) -> Any:
        """
        A new quorum reaches the outbox, and an explicit C{local} OK policy
        answers the next EVENT once stored.
        """
        a, b = yield self.fakeRelays(2)
        daemon, port = yield self.startDaemon(relays=[a.url, b.url])
        changes = daemon.applyConfig(
            buildConfig(
                overrides={**_BASE, "relays": [a.url, b.url], "quorum": "2", "ok-policy": "local"}
            )
        )
        self.assertEqual(changes, ["quorum 1 -> 2", "ok-policy auto -> local"])
        self.assertEqual(daemon.outbox.quorum, 2)
        client = yield _connect(port)
        event = makeEvent(content="stored first")
        client.send("EVENT", event.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", event.id, True])
        # Published in the background: let it settle before stopping.
        for _ in range(500):
            pending = yield daemon.store.pending()
            if not pending:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(pending, [])

    @inlineCallbacks
    def test_restartNeeded(self) -> Any:
        """
        A setting that needs a restart gets one warning line and keeps its
        running value; the other changes still apply.
        """
        daemon, port = yield self.startDaemon()
        with capturedLogs() as events:
            changes = daemon.applyConfig(
                buildConfig(overrides={**_BASE, "listen": "tcp:0", "dedup-size": "5", "name": "x"})
            )
        self.assertEqual(changes, ["name relaypool -> x"])
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(
            warnings,
            [
                "relaypool: reload: listen changed (tcp:0:interface=127.0.0.1 -> tcp:0)"
                " but needs a restart",
                "relaypool: reload: dedup-size changed (10000 -> 5) but needs a restart",
            ],
        )
        self.assertEqual(
            (daemon.config.listen, daemon.config.dedupSize, daemon.config.name),
            ("tcp:0:interface=127.0.0.1", 10000, "x"),
        )
        self.assertEqual(daemon.gateway.information()["name"], "x")

    @inlineCallbacks
    def test_policyAndAdmins(self) -> Any:
        """
        A changed event policy replaces the gateway's at once: a connected
        client's next EVENT of a newly denied kind is refused with
        C{blocked:}; a changed list of admin pubkeys reaches the management
        API.
        """
        daemon, port = yield self.startDaemon()
        client = yield _connect(port)
        admin = "ab" * 32
        changes = daemon.applyConfig(
            buildConfig(overrides={**_BASE, "deny-kinds": ["7"], "admin-pubkeys": [admin]})
        )
        self.assertEqual(changes, ["deny-kinds [] -> [7]", f"admin-pubkeys [] -> [{admin}]"])
        self.assertEqual(daemon.gateway.management.admins, frozenset({admin}))
        denied = makeEvent(kind=7, content="+")
        client.send("EVENT", denied.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", denied.id, False])
        self.assertTrue(ok[3].startswith("blocked:"), ok[3])
        allowed = makeEvent(kind=1, content="still fine")
        client.send("EVENT", allowed.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", allowed.id, True])

    @inlineCallbacks
    def test_relaysWithoutPool(self) -> Any:
        """
        Relays given to a daemon started without any need a restart (it has
        no pool).
        """
        daemon, port = yield self.startDaemon()
        with capturedLogs() as events:
            changes = daemon.applyConfig(buildConfig(overrides={**_BASE, "relays": ["ws://a"]}))
        self.assertEqual((changes, daemon.config.relays, daemon.pool), ([], (), None))
        self.assertIn(
            "relaypool: reload: relays changed ([] -> [ws://a]) but needs a restart",
            [formatEvent(e) for e in events],
        )

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    @inlineCallbacks
    def test_reloadInvalidFile(self) -> Any:
        """
        L{RelayPoolService.reload} refuses a file that is not valid (not
        TOML, an invalid value, missing) with one error line naming the
        problem, and the running settings stay.
        """
        path = self.write("max-filters = 3\n")
        sources = ConfigSources(path, {}, dict(_BASE))
        daemon, port = yield self.startDaemon(sources, **{"max-filters": "3"})
        before = daemon.config
        for text, problem in (
            ("max-filters = [", f"config: {path} is not valid TOML"),
            ("max-filters = 0", f"max-filters: must be a positive integer, got 0 (in {path})"),
            (None, f"config: cannot read {path}: No such file or directory"),
        ):
            if text is None:
                os.remove(path)
            else:
                with open(path, "w") as f:
                    f.write(text)
            with capturedLogs() as events:
                self.assertIsNone(daemon.reload())
            lines = [formatEvent(e) for e in events]
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(
                lines[0].startswith(
                    "relaypool: reload refused, the running settings stay: " + problem
                ),
                lines[0],
            )
            self.assertIs(daemon.config, before)

    @inlineCallbacks
    def test_reloadKeepsCommandLine(self) -> Any:
        """
        Reloading reads the file again under the command line and the
        environment: the file's value of a setting they give is not used.
        """
        path = self.write("max-filters = 3\nmax-limit = 7\n")
        sources = ConfigSources(path, {"RELAYPOOL_MAX_LIMIT": "9"}, {**_BASE, "name": "cli"})
        daemon, port = yield self.startDaemon(sources, **{"max-filters": "3", "name": "cli"})
        with open(path, "w") as f:
            f.write('max-filters = 4\nmax-limit = 8\nname = "file"\n')
        self.assertEqual(daemon.reload(), ["max-filters 3 -> 4", "max-limit 500 -> 9"])
        self.assertEqual(daemon.config.name, "cli")

    @inlineCallbacks
    def test_sighup(self) -> Any:
        """
        While the service runs, C{SIGHUP} reloads the file; stopping it puts
        back the handler that was there before.
        """
        calls: list[int] = []
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        path = self.write("max-filters = 3\n")
        daemon, port = yield self.startDaemon(
            ConfigSources(path, {}, dict(_BASE)), **{"max-filters": "3"}
        )
        with open(path, "w") as f:
            f.write("max-filters = 4\n")
        os.kill(os.getpid(), signal.SIGHUP)
        yield _until(lambda: daemon.config.limits.maxFilters == 4)
        self.assertEqual(calls, [signal.SIGHUP])
        yield daemon.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, [signal.SIGHUP] * 2)


class _Daemon(ProcessProtocol):
    """
    A C{twistd -n relaypool} subprocess: collects its output lines.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SighupDaemonTests(TestCase):
    """
    C{SIGHUP} to C{twistd -n relaypool} run as a subprocess.
    """

    timeout = 60

    @inlineCallbacks
    def test_reloadKeepsClients(self) -> Any:
        """
        After C{SIGHUP}, a relay added in the file shows in C{/stats} and a
        connected client is still served; after C{SIGHUP} with a broken
        file, the daemon logs one line, keeps running with the settings it
        had, and the client is still served.
        """
        a, b = FakeRelay(), FakeRelay()
        for relay in (a, b):
            yield relay.start()
            self.addCleanup(relay.stop)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'relays = ["{a.url}"]\n')
        port = _freePort()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPOOL_")}
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        env["RELAYPOOL_CONFIG"] = path
        env["RELAYPOOL_STORE"] = ":memory:"
        env["RELAYPOOL_STATUS_INTERVAL"] = "0"
        daemon = _Daemon()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        argv += ["-n", "--pidfile=", "relaypool", "--listen", f"tcp:{port}:interface=127.0.0.1"]
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            daemon, sys.executable, argv, env=env, path=os.path.dirname(os.path.abspath(path))
        )

        @inlineCallbacks
        def stop() -> Any:
            if not daemon.ended.called:
                process.signalProcess("TERM")
            yield daemon.ended

        self.addCleanup(stop)
        try:
            yield _until(
                lambda: bool(daemon.matching("serving clients on")) or daemon.ended.called,
                timeout=30,
            )
            assert not daemon.ended.called
        except AssertionError:
            raise AssertionError("\n".join(daemon.lines)) from None

        @inlineCallbacks
        def stats() -> Any:
            response = yield treq.get(f"http://127.0.0.1:{port}/stats", persistent=False)
            return orjson.loads((yield response.content()))

        client = yield _connect(port)
        with open(path, "w") as f:
            f.write(f'relays = ["{a.url}", "{b.url}"]\nmax-filters = 1\n')
        process.signalProcess("HUP")
        yield _until(lambda: bool(daemon.matching("reloaded")), timeout=20)
        relays = sorted(parseRelayURL(relay.url).url for relay in (a, b))
        self.assertEqual(
            daemon.matching("reloaded")[0].split("relaypool: ", 1)[1],
            f"reloaded {path}: relays [{a.url}] -> [{a.url}, {b.url}]; max-filters 10 -> 1",
        )
        self.assertEqual(sorted((yield stats())["relays"]), relays)
        client.send("REQ", "two", {"kinds": [1]}, {"kinds": [2]})
        self.assertEqual(
            (yield client.next()), ["CLOSED", "two", "invalid: at most 1 filters per request"]
        )

        with open(path, "w") as f:
            f.write("relays = [\n")
        process.signalProcess("HUP")
        yield _until(lambda: bool(daemon.matching("reload refused")), timeout=20)
        self.assertEqual(len(daemon.matching("reload refused")), 1)
        self.assertIn(f"{path} is not valid TOML", daemon.matching("reload refused")[0])
        self.assertEqual(sorted((yield stats())["relays"]), relays)
        client.send("REQ", "one", {"kinds": [1]})
        self.assertEqual((yield client.next())[:2], ["EOSE", "one"])
        self.assertFalse(daemon.ended.called)
        self.assertEqual(daemon.matching("reloaded")[1:], [])
