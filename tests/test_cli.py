"""
Tests for L{relaypool.daemon.cli}, the C{relaypool} command: C{req},
C{publish} and C{count} against fake relays on 127.0.0.1, C{status}
against a daemon in this process, and C{run} as a subprocess.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from relaypool.daemon.cli import runCommand, statsURL, summarize
from relaypool.nostr.event import Event, publicKeyFor
from relaypool.testing import TEST_PRIVATE_KEY, makeEvent
from tests import test_service
from tests.daemons import startDaemon

_REPO = Path(__file__).resolve().parent.parent
_KEY = TEST_PRIVATE_KEY.hex()


def _closedPort() -> int:
    """
    @return: a port on 127.0.0.1 nothing listens on (bound, then closed).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _Run:
    """
    The outcome of one command run in this process.
    """

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    def lines(self) -> list[str]:
        return self.stdout.splitlines()


@inlineCallbacks
def _command(*argv: str) -> Any:
    """
    Run C{relaypool argv...} in this process.

    @return: a Deferred firing with its L{_Run}.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    status = yield runCommand(reactor, argv, stdout, stderr)
    return _Run(status, stdout.getvalue(), stderr.getvalue())


class _RelaysMixin:
    """
    Fake relays started for a test and stopped after it (the daemon tests'
    helper).
    """

    fakeRelays = test_service.DaemonTests.fakeRelays


class ReqTests(_RelaysMixin, TestCase):
    """
    C{relaypool req FILTER --relay URL...}.
    """

    @inlineCallbacks
    def test_printsEventsAsJSONLines(self) -> Any:
        """
        The events matching the filter, from every relay, are printed once
        each as NIP-01 event JSON, one per line, and the command ends with
        status 0 at EOSE.
        """
        relays = yield self.fakeRelays(2)
        shared, first, second = (makeEvent(content=f"note {i}") for i in range(3))
        relays[0].store(shared, first)
        relays[1].store(shared, second)
        relays[1].store(makeEvent(kind=7, content="+"))
        run = yield _command(
            "req", '{"kinds": [1]}', "--relay", relays[0].url, "--relay", relays[1].url
        )
        printed = [Event.fromDict(orjson.loads(line)) for line in run.lines()]
        self.assertEqual(
            (run.status, sorted(e.id for e in printed), run.stderr),
            (0, sorted(e.id for e in (shared, first, second)), ""),
        )

    @inlineCallbacks
    def test_limit(self) -> Any:
        """
        C{--limit N} stops after N events.
        """
        (relay,) = yield self.fakeRelays(1)
        relay.store(*(makeEvent(content=f"note {i}") for i in range(5)))
        run = yield _command("req", "--limit", "2", "--relay", relay.url, '{"kinds": [1]}')
        self.assertEqual((run.status, len(run.lines())), (0, 2))

    @inlineCallbacks
    def test_noRelayAnswered(self) -> Any:
        """
        When no relay can be reached the command ends with status 1 and one
        line naming each relay and why.
        """
        url = f"ws://127.0.0.1:{_closedPort()}/"
        run = yield _command("req", "{}", "--relay", url)
        self.assertEqual((run.status, run.stdout), (1, ""))
        self.assertEqual(len(run.stderr.splitlines()), 1)
        self.assertTrue(
            run.stderr.startswith(
                f"relaypool req: no relay answered: {url}: Connection was refused"
            ),
            run.stderr,
        )

    @inlineCallbacks
    def test_invalidFilter(self) -> Any:
        """
        A filter that is not a NIP-01 filter is refused with status 1, a
        line saying what is wrong and a hint to C{--help}.
        """
        run = yield _command("req", '{"kinds": "one"}', "--relay", "ws://127.0.0.1:1")
        self.assertEqual(
            (run.status, run.stderr),
            (
                1,
                "relaypool req: FILTER: filter 'kinds' must be a list\nTry 'relaypool req --help'.\n",
            ),
        )

    @inlineCallbacks
    def test_filterNotJSON(self) -> Any:
        """
        A filter that is not JSON is refused, saying so.
        """
        run = yield _command("req", "kinds=1", "--relay", "ws://127.0.0.1:1")
        self.assertEqual(run.status, 1)
        self.assertTrue(run.stderr.startswith("relaypool req: FILTER is not JSON: "), run.stderr)

    @inlineCallbacks
    def test_noRelay(self) -> Any:
        """
        Without C{--relay} the command says one is needed.
        """
        run = yield _command("req", "{}")
        self.assertEqual(
            (run.status, run.stderr.splitlines()[0]),
            (1, "relaypool req: at least one --relay URL is needed"),
        )


class PublishTests(_RelaysMixin, TestCase):
    """
    C{relaypool publish}.
    """

    @inlineCallbacks
    def test_signsAndPublishes(self) -> Any:
        """
        An event built from C{--kind}, C{--content} and C{--tag}, signed
        with C{--key}, reaches every relay; each relay's OK is printed, and
        the command ends with status 0.
        """
        relays = yield self.fakeRelays(2)
        run = yield _command(
            "publish",
            *("--relay", relays[0].url, "--relay", relays[1].url),
            *("--kind", "1", "--content", "hello", "--tag", "t,nostr", "--key", _KEY),
            *("--quorum", "2"),
        )
        self.assertEqual((run.status, run.stderr), (0, ""))
        [event] = relays[0].events
        self.assertEqual(
            (event.kind, event.content, event.tags, event.pubkey, relays[1].events),
            (1, "hello", (("t", "nostr"),), publicKeyFor(TEST_PRIVATE_KEY), [event]),
        )
        self.assertEqual(
            sorted(run.lines()),
            sorted(
                [f'{relay.url}/: OK true ""' for relay in relays]
                + [f"published: 2 of 2 relays accepted {event.id}, quorum 2"]
            ),
        )

    @inlineCallbacks
    def test_quorumNotReached(self) -> Any:
        """
        When fewer relays than C{--quorum} accept, the refusal is printed
        and the command ends with status 1, saying so.
        """
        relays = yield self.fakeRelays(2)
        relays[1].misbehaviour.rejectWith = "blocked: not here"
        run = yield _command(
            "publish",
            *("--relay", relays[0].url, "--relay", relays[1].url, "--quorum", "2"),
            *("--content", "hello", "--key", _KEY),
        )
        self.assertEqual(run.status, 1)
        self.assertIn(f'{relays[1].url}/: OK false "blocked: not here"', run.lines())
        self.assertRegex(
            run.stderr,
            r"^relaypool publish: quorum not reached: 1 of 2 relays accepted [0-9a-f]{64}, quorum 2\n$",
        )

    @inlineCallbacks
    def test_signedEventFromFile(self) -> Any:
        """
        C{--event FILE} publishes the signed event in the file as it is.
        """
        (relay,) = yield self.fakeRelays(1)
        event = makeEvent(content="signed elsewhere")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(event.toJSON())
        run = yield _command("publish", "--relay", relay.url, "--event", path)
        self.assertEqual((run.status, relay.events), (0, [event]))

    @inlineCallbacks
    def test_forgedEventRefused(self) -> Any:
        """
        An event in C{--event FILE} whose signature does not match is refused
        before anything is sent.
        """
        document = makeEvent(content="original").toDict()
        document["content"] = "changed"
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(orjson.dumps(document))
        run = yield _command("publish", "--relay", "ws://127.0.0.1:1", "--event", path)
        self.assertEqual(run.status, 1)
        self.assertTrue(run.stderr.startswith("relaypool publish: --event: "), run.stderr)

    @inlineCallbacks
    def test_keyFromEnvironment(self) -> Any:
        """
        Without C{--key}, the key is read from C{RELAYPOOL_KEY}.
        """
        (relay,) = yield self.fakeRelays(1)
        self.patch(os, "environ", {"RELAYPOOL_KEY": _KEY})
        run = yield _command("publish", "--relay", relay.url, "--content", "from env")
        self.assertEqual(
            (run.status, [e.pubkey for e in relay.events]), (0, [publicKeyFor(TEST_PRIVATE_KEY)])
        )

    @inlineCallbacks
    def test_keyFromFile(self) -> Any:
        """
        C{--key-file PATH} reads the hex key from a file.
        """
        (relay,) = yield self.fakeRelays(1)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_KEY + "\n")
        run = yield _command("publish", "--relay", relay.url, "--content", "x", "--key-file", path)
        self.assertEqual(
            (run.status, [e.pubkey for e in relay.events]), (0, [publicKeyFor(TEST_PRIVATE_KEY)])
        )

    @inlineCallbacks
    def test_noKey(self) -> Any:
        """
        Without a key the command says where one can come from.
        """
        self.patch(os, "environ", {})
        run = yield _command("publish", "--relay", "ws://127.0.0.1:1", "--content", "x")
        self.assertEqual(
            (run.status, run.stderr.splitlines()[0]),
            (
                1,
                "relaypool publish: a key is needed to sign: --key HEX, --key-file PATH or"
                " RELAYPOOL_KEY (or --event FILE with an event signed already)",
            ),
        )

    @inlineCallbacks
    def test_badKey(self) -> Any:
        """
        A key that is not 64 hex characters is refused, saying so.
        """
        run = yield _command(
            "publish", "--relay", "ws://127.0.0.1:1", "--content", "x", "--key", "abc"
        )
        self.assertEqual(
            (run.status, run.stderr.splitlines()[0]),
            (1, "relaypool publish: the key: a private key must be 64 hex characters"),
        )

    @inlineCallbacks
    def test_quorumAboveRelays(self) -> Any:
        """
        A C{--quorum} larger than the number of relays is refused.
        """
        run = yield _command(
            "publish", "--relay", "ws://127.0.0.1:1", "--quorum", "2", "--content", "x"
        )
        self.assertEqual(
            run.stderr.splitlines()[0],
            "relaypool publish: --quorum: must be at most the number of relays (1), got 2",
        )


class CountTests(_RelaysMixin, TestCase):
    """
    C{relaypool count FILTER --relay URL...}.
    """

    @inlineCallbacks
    def test_count(self) -> Any:
        """
        The largest count the relays gave is printed alone.
        """
        relays = yield self.fakeRelays(2)
        relays[0].store(*(makeEvent() for _ in range(3)))
        relays[1].store(makeEvent())
        run = yield _command(
            "count", '{"kinds": [1]}', "--relay", relays[0].url, "--relay", relays[1].url
        )
        self.assertEqual((run.status, run.lines()), (0, ["3"]))

    @inlineCallbacks
    def test_verbose(self) -> Any:
        """
        C{--verbose} prints each relay's count before the count.
        """
        relays = yield self.fakeRelays(2)
        relays[0].store(*(makeEvent() for _ in range(3)))
        relays[1].store(makeEvent())
        run = yield _command(
            "count", "-v", '{"kinds": [1]}', "--relay", relays[0].url, "--relay", relays[1].url
        )
        self.assertEqual(
            (run.status, sorted(run.lines()[:2]), run.lines()[2:]),
            (
                0,
                sorted([f"{relays[0].url}/: 3", f"{relays[1].url}/: 1"]),
                ["approximate: the largest of the relays' counts", "3"],
            ),
        )


class StatusTests(_RelaysMixin, TestCase):
    """
    C{relaypool status URL} against a daemon running in this process.
    """

    @inlineCallbacks
    def startDaemon(self) -> Any:
        (relay,) = yield self.fakeRelays(1)
        _, port = yield Deferred.fromCoroutine(startDaemon(self, [relay.url]))
        yield relay.whenConnections(1)
        return relay, port

    @inlineCallbacks
    def test_summary(self) -> Any:
        """
        The summary names each relay with its state and health, the clients
        and the outbox.
        """
        relay, port = yield self.startDaemon()
        run = yield _command("status", f"ws://127.0.0.1:{port}")
        self.assertEqual((run.status, run.stderr), (0, ""))
        lines = run.lines()
        self.assertEqual(lines[0], "relays: 1, 1 open")
        self.assertTrue(lines[1].startswith(f"  {relay.url}/  open  health "), lines[1])
        self.assertTrue(lines[2].startswith("clients: 0 connections, 0 subscriptions"), lines[2])
        self.assertTrue(lines[-1].startswith("outbox: 0 waiting, 0 retrying"), lines[-1])

    def test_summaryRoles(self) -> None:
        """
        The summary gives the roles of a relay that is not a plain read and
        write relay after its URL.
        """
        relay = {"state": "open", "healthScore": 100.0, "connectedFor": None, "latency": None}
        stats = {
            "relays": {
                "wss://a/": {**relay, "roles": ["read", "write"]},
                "wss://b/": {**relay, "roles": ["read"]},
                "wss://c/": {**relay, "roles": ["discovery", "outbox"]},
            },
            "pool": {"activeRelays": 3},
        }
        self.assertEqual(
            [line.split("  ")[1] for line in summarize(stats)[1:4]],
            ["wss://a/", "wss://b/ (read)", "wss://c/ (discovery, outbox)"],
        )

    def test_summaryCluster(self) -> None:
        """
        The summary of a cluster node says which node it is, how many it
        sees, whether Redis is connected and what it subscribes upstream.
        """
        stats = {
            "cluster": {
                "node": "a",
                "redis": "redis://127.0.0.1:6379/0",
                "redisUp": True,
                "nodes": {"a": {}, "b": {}},
                "filterSets": 10,
                "leasesHeld": 4,
                "following": 6,
            }
        }
        self.assertEqual(
            summarize(stats)[-1],
            "cluster: node a of 2 on redis://127.0.0.1:6379/0 (connected), 4 of 10 filter sets"
            " subscribed upstream, 6 read from other nodes",
        )

    @inlineCallbacks
    def test_json(self) -> Any:
        """
        C{--json} prints the C{/stats} document.
        """
        relay, port = yield self.startDaemon()
        run = yield _command("status", "--json", f"http://127.0.0.1:{port}")
        document = orjson.loads(run.stdout)
        self.assertEqual(
            (run.status, sorted(document), list(document["relays"])),
            (0, ["gateway", "outbox", "pool", "registry", "relays"], [f"{relay.url}/"]),
        )

    @inlineCallbacks
    def test_noDaemon(self) -> Any:
        """
        With nothing listening at the URL the command ends with status 1
        and one line saying so.
        """
        port = _closedPort()
        run = yield _command("status", f"http://127.0.0.1:{port}")
        self.assertEqual(run.status, 1)
        self.assertTrue(
            run.stderr.startswith(
                f"relaypool status: no relaypool at http://127.0.0.1:{port}/stats: is it running?"
            ),
            run.stderr,
        )
        self.assertEqual(len(run.stderr.splitlines()), 1)

    def test_statsURL(self) -> None:
        """
        A daemon's WebSocket or HTTP address gives the URL of its C{/stats}.
        """
        self.assertEqual(
            [
                statsURL(url)
                for url in ("ws://127.0.0.1:7777", "wss://relay.example/", "http://[::1]:80/x")
            ],
            ["http://127.0.0.1:7777/stats", "https://relay.example/stats", "http://[::1]:80/stats"],
        )

    @inlineCallbacks
    def test_badURL(self) -> Any:
        """
        A URL that is not http(s) or ws(s) is refused.
        """
        run = yield _command("status", "ftp://127.0.0.1")
        self.assertEqual(
            run.stderr.splitlines()[0],
            "relaypool status: URL: 'ftp://127.0.0.1' is not an http://, https://, ws:// or"
            " wss:// URL with a host",
        )


def _environment() -> dict[str, str]:
    """
    This environment with the repository first on C{PYTHONPATH}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return env


_CLI = [sys.executable, "-m", "relaypool.daemon.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=_environment(), capture_output=True, text=True, timeout=30, check=False
    )


class _Daemon(ProcessProtocol):
    """
    A daemon run as a child process: its output, and Deferreds for a line
    of it and for its end.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[bytes]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        for entry in list(self._waiting):
            text, d = entry
            for line in self.output.splitlines(keepends=True):
                if text in line and line.endswith(b"\n"):
                    self._waiting.remove(entry)
                    d.callback(line)
                    break

    def line(self, text: bytes) -> Deferred[bytes]:
        """
        @return: a Deferred firing with the first whole output line holding
            C{text} (failing after 20 seconds).
        """
        d: Deferred[bytes] = Deferred()
        self._waiting.append((text, d))
        self._check()
        return d.addTimeout(20, reactor)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


def _spawn(case: TestCase, *args: str) -> _Daemon:
    """
    Start C{args} as a child process, killed after C{case} if still running.
    """
    daemon = _Daemon()
    process = reactor.spawnProcess(daemon, args[0], list(args), env=_environment())

    def kill() -> Any:
        if not daemon.ended.called:
            process.signalProcess("KILL")
            return daemon.ended

    case.addCleanup(kill)
    return daemon


@inlineCallbacks
def _reqGetsEOSE(port: int) -> Any:
    """
    Connect a WebSocket client to 127.0.0.1:C{port}, send a REQ and wait
    for its EOSE.

    @return: a Deferred firing with the messages received.
    """
    client = yield test_service._connect(port).addTimeout(20, reactor)
    client.send("REQ", "probe", {"kinds": [1]})
    message = yield client.next()
    client.sendClose()
    yield client.is_closed
    return message


class RunTests(TestCase):
    """
    C{relaypool run}, as a subprocess.
    """

    @inlineCallbacks
    def test_servesAndStopsOnSIGTERM(self) -> Any:
        """
        C{relaypool run} serves WebSocket clients (a REQ gets EOSE), and
        stops cleanly on SIGTERM with status 0.
        """
        daemon = _spawn(
            self, *_CLI, "run", "--listen", "tcp:0:interface=127.0.0.1", "--store", ":memory:"
        )
        line = yield daemon.line(b"serving clients on 127.0.0.1:")
        port = int(line.rsplit(b":", 1)[1])
        message = yield _reqGetsEOSE(port)
        self.assertEqual(message, ["EOSE", "probe"])
        os.kill(daemon.transport.pid, 15)  # type: ignore[attr-defined]
        status = yield daemon.ended.addTimeout(20, reactor)
        self.assertEqual(status, 0, daemon.output.decode())

    def test_badOption(self) -> None:
        """
        An invalid setting ends C{relaypool run} with status 1 and one line
        saying what is wrong, and a hint to C{--help}.
        """
        result = _run(*_CLI, "run", "--quorum", "two")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (
                1,
                "",
                'relaypool run: quorum: must be a positive integer, got "two"\n'
                "Try 'relaypool run --help'.\n",
            ),
        )

    def test_cannotListen(self) -> None:
        """
        When it cannot listen, C{relaypool run} ends with status 1 and its
        last line says why.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        result = _run(*_CLI, "run", "--store", ":memory:", "--listen", listen)
        line = f"relaypool: cannot listen on {listen}: Address already in use"
        self.assertEqual(
            (result.returncode, [text for text in result.stdout.splitlines() if "cannot" in text]),
            (1, [result.stdout.splitlines()[-2]]),
            result.stdout + result.stderr,
        )
        self.assertTrue(result.stdout.splitlines()[-2].endswith(line), result.stdout)

    def test_helpOnEachCommand(self) -> None:
        """
        C{--help} on each command prints its usage, and C{run --help} has
        the daemon's options.
        """
        helps = {
            command: _run(*_CLI, command, "--help")
            for command in ("run", "req", "publish", "count", "status")
        }
        self.assertEqual(
            {
                command: (r.returncode, r.stdout.split("\n", 1)[0].split(" ")[:3])
                for command, r in helps.items()
            },
            {command: (0, ["Usage:", "relaypool", command]) for command in helps},
        )
        self.assertIn("--connections-per-address=", helps["run"].stdout)

    def test_consoleScript(self) -> None:
        """
        The package installs the C{relaypool} console script.
        """
        (script,) = entry_points(group="console_scripts", name="relaypool")
        self.assertEqual(script.value, "relaypool.daemon.cli:main")


_SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


class SystemdTests(TestCase):
    """
    Socket activation: the daemon listens on the socket systemd passes it
    (C{--listen systemd:domain=INET:index=0}), as under
    C{examples/systemd/relaypool.socket}, here with
    C{systemd-socket-activate}.
    """

    def setUp(self) -> None:
        if _SOCKET_ACTIVATE is None:
            missing = "systemd-socket-activate is not installed (Debian's systemd package)"
            if os.environ.get("CI") == "true":
                self.fail(missing + ": .ci/run installs it")
            raise SkipTest(missing)

    @inlineCallbacks
    def activate(self, *command: str) -> Any:
        assert _SOCKET_ACTIVATE is not None
        port = _closedPort()
        # Twisted reads the socket only with its name (LISTEN_FDNAMES), which
        # a .socket unit always gives and systemd-socket-activate on request.
        daemon = _spawn(
            self, _SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=relaypool", *command
        )
        yield daemon.line(b"Listening on 127.0.0.1:")
        message = yield _reqGetsEOSE(port)
        self.assertEqual(message, ["EOSE", "probe"])
        os.kill(daemon.transport.pid, 15)
        status = yield daemon.ended.addTimeout(20, reactor)
        return daemon, status

    @inlineCallbacks
    def test_relaypoolRun(self) -> Any:
        """
        C{relaypool run} serves a client through the socket systemd passed
        it, and stops on SIGTERM with status 0.
        """
        daemon, status = yield self.activate(
            *_CLI, "run", "--listen", "systemd:domain=INET:index=0", "--store", ":memory:"
        )
        self.assertEqual(status, 0, daemon.output.decode())

    @inlineCallbacks
    def test_twistd(self) -> Any:
        """
        C{twistd -n relaypool} serves a client through the socket systemd
        passed it.
        """
        daemon, status = yield self.activate(
            sys.executable,
            *("-c", "from twisted.scripts.twistd import run; run()"),
            *("-n", "--pidfile=", "relaypool"),
            *("--listen", "systemd:domain=INET:index=0", "--store", ":memory:"),
        )
        self.assertIn(b"Server Shut Down.", daemon.output)


class JSONLogTests(TestCase):
    """
    C{twistd --logger relaypool.daemon.jsonlog.observer}.
    """

    @inlineCallbacks
    def test_jsonLines(self) -> Any:
        """
        Every line the daemon logs is a JSON object (after the record
        separator), among them the line saying where it serves clients.
        """
        daemon = _spawn(
            self,
            sys.executable,
            *("-c", "from twisted.scripts.twistd import run; run()"),
            *("-n", "--pidfile=", "--logger", "relaypool.daemon.jsonlog.observer", "relaypool"),
            *("--listen", "tcp:0:interface=127.0.0.1", "--store", ":memory:"),
        )
        yield daemon.line(b"serving clients on")
        os.kill(daemon.transport.pid, 15)
        yield daemon.ended.addTimeout(20, reactor)
        events = [orjson.loads(line.lstrip(b"\x1e")) for line in daemon.output.splitlines()]
        self.assertIn(
            "relaypool: serving clients on {host}:{port}", [e.get("log_format") for e in events]
        )
