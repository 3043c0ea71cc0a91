"""
Gateway fan-out: N downstream clients on one shared filter (same
subscription id) receive E events; the server's CPU per recipient and its
memory per idle connection, at several client counts, beside PyPI
C{nostr-relay} doing the same fan-out in the same run.

Usage: C{python bench/fanout.py [--clients 100,1000,5000] [--events 1000]
[--peer-clients 1000] [--no-peer] [--quick] [--profile FILE]}

Processes: this orchestrator; the server (for relaypool: a FakeRelay, a
RelayPool on it and a Gateway on the pool, the events coming from the fake
relay; for the peer: C{nostr-relay -c config.yaml serve} from a temp dir,
its events published by one more client), whose process tree's CPU and RSS
are measured with psutil; and the load client (raw-socket WebSocket clients,
C{bench/wsload.py}, that only parse frame headers, so the load costs as
little as possible). A fresh server and load client per client count.
Printed per run:

    - delivered frames/s: frames received by all clients, divided by the
      time from the publish command to the last frame;
    - server CPU us per recipient: the server's user+system CPU time over
      the fan-out, divided by events x clients;
    - server RSS per idle connection: the server's RSS with N open idle
      WebSocket connections minus its RSS with none, divided by N.

The file descriptor limit is raised to the hard limit; a client count that
does not fit under it is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.peers import freePort, nostrRelayCommand, raiseFileLimit  # noqa: E402

STEP_TIMEOUT = 180.0
#: File descriptors a process needs beside its connections.
FD_MARGIN = 100


# --- the server process -----------------------------------------------------


def serve(events: int, profile: str | None) -> None:
    """
    Run a FakeRelay, a RelayPool on it and a Gateway on the pool; print the
    gateway's port, then obey C{publish} commands on stdin. With C{profile},
    the fan-out (from C{publish} to C{stats}) runs under cProfile, whose
    statistics are written to that file.
    """
    import cProfile

    from twisted.internet import reactor, stdio
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater
    from twisted.protocols.basic import LineReceiver

    from relaypool.gateway.gateway import Gateway
    from relaypool.gateway.limits import GatewayLimits
    from relaypool.testing import FakeRelay, makeEvent
    from relaypool.transport.names import StaticNameService
    from relaypool.upstream.relaypool import RelayPool

    now = int(time.time())
    batch = [makeEvent(content=f"fan-out event {i}", createdAt=now) for i in range(events)]

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line == b"publish":
                if profiler is not None:
                    profiler.enable()
                relay.store(*batch)
                self.sendLine(b"published")
            elif line == b"stats":
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(profile)
                stats = gateway.registry.stats()
                self.sendLine(
                    f"evicted {stats.evictedSlow} connections {stats.connections}".encode()
                )

    @inlineCallbacks
    def start() -> Any:
        yield relay.start()
        pool.addRelay(relay.url)
        pool.startService()
        for _ in range(500):
            if pool.activeRelayURLs():
                break
            yield deferLater(reactor, 0.01, lambda: None)
        gateway.startService()
        port = yield gateway.whenListening()
        stdio.StandardIO(Commands())
        print(f"port {port.getHost().port}", flush=True)

    profiler = cProfile.Profile() if profile else None
    relay = FakeRelay(reactor)
    pool = RelayPool(reactor, nameService=StaticNameService(), fetchInformation=False)
    gateway = Gateway(
        reactor,
        pool,
        "tcp:0:interface=127.0.0.1:backlog=4096",
        limits=GatewayLimits(
            maxConnectionsPerIP=100_000,
            maxPendingBytes=64 << 20,
            maxBacklogBytes=64 << 20,
            reqsPerSecond=1000.0,
            reqBurst=1000,
        ),
    )
    start()
    reactor.run()


# --- the load client process ------------------------------------------------

def load() -> None:
    """
    Open raw WebSocket clients on command: C{connect N sub|idle}, C{expect
    E}, C{close}; for a server that takes events from clients (the peer),
    C{prepare E} signs E events and opens a publisher, which C{publish}
    sends them from; report on stdout.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import DeferredList
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from bench.wsload import CONNECT_BATCH, RawClient, maskedText

    state: dict[str, Any] = {"frames": 0, "expected": 0, "start": 0.0, "eosed": 0}
    clients: list[Client] = []
    req = maskedText(b'["REQ","bench",{"kinds":[1]}]')

    class Client(RawClient):
        def __init__(self, subscribe: bool) -> None:
            super().__init__(port)
            self.subscribe = subscribe

        def handshakeDone(self) -> None:
            if self.subscribe:
                self.transport.write(req)
            else:
                self.opened.callback(None)

        def framesReceived(self, buffer: bytes, frames: list[tuple[int, int]]) -> None:
            events = 0
            for start, _ in frames:
                if buffer[start + 2 : start + 7] == b"EVENT":
                    events += 1
                elif buffer[start + 2 : start + 6] == b"EOSE":
                    state["eosed"] += 1
                    self.opened.callback(None)
            if events:
                state["frames"] += events
                if state["expected"] and state["frames"] >= state["expected"]:
                    elapsed = time.perf_counter() - state["start"]
                    commands.sendLine(f"done {state['frames']} {elapsed:.6f}".encode())
                    state["expected"] = 0

    class ClientFactory(Factory):
        def __init__(self, subscribe: bool, into: list[Client]) -> None:
            self.subscribe = subscribe
            self.into = into

        def buildProtocol(self, addr: Any) -> Client:
            client = Client(self.subscribe)
            self.into.append(client)
            return client

    publisher: list[Client] = []
    frames: list[bytes] = []

    def prepare(count: int) -> None:
        from relaypool.testing import makeEvent

        now = int(time.time())
        for i in range(count):
            event = makeEvent(content=f"fan-out event {i}", createdAt=now)
            frames.append(maskedText(b'["EVENT",' + event.toJSON() + b"]"))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        endpoint.connect(ClientFactory(False, publisher)).addCallback(
            lambda client: client.opened
        ).addCallback(lambda _: commands.sendLine(b"prepared"))

    def connect(count: int, subscribe: bool) -> None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        factory = ClientFactory(subscribe, clients)

        def batch(remaining: int) -> None:
            if remaining <= 0:
                commands.sendLine(f"ready {len(clients)}".encode())
                return
            n = min(CONNECT_BATCH, remaining)
            opened = []
            for _ in range(n):
                d = endpoint.connect(factory)
                opened.append(d.addCallback(lambda client: client.opened))
            DeferredList(opened, consumeErrors=True).addCallback(lambda _: batch(remaining - n))

        batch(count)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            words = line.decode().split()
            if words[0] == "connect":
                connect(int(words[1]), words[2] == "sub")
            elif words[0] == "expect":
                state["frames"] = 0
                state["expected"] = int(words[1])
                state["start"] = time.perf_counter()
            elif words[0] == "prepare":
                prepare(int(words[1]))
            elif words[0] == "publish":
                publisher[0].transport.writeSequence(frames)
            elif words[0] == "close":
                for client in clients:
                    client.transport.loseConnection()
                clients.clear()
                self.sendLine(b"closed")

    port = int(sys.argv[sys.argv.index("--port") + 1])
    commands = Commands()
    stdio.StandardIO(commands)
    reactor.run()


# --- the orchestrator -------------------------------------------------------


def _expect(stream: IO[str], prefix: str) -> list[str]:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"process exited while waiting for {prefix!r}")
        if line.startswith(prefix):
            return line.split()
    raise RuntimeError(f"timed out waiting for {prefix!r}")


def _send(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _tree(process: Any) -> list[Any]:
    return [process, *process.children(recursive=True)]


def _cpu(process: Any) -> float:
    """
    @return: the user+system CPU seconds of a process and its children.
    """
    total = 0.0
    for member in _tree(process):
        times = member.cpu_times()
        total += times.user + times.system
    return total


def _rss(process: Any) -> int:
    """
    @return: the RSS of a process and its children.
    """
    return sum(int(member.memory_info().rss) for member in _tree(process))


def _settle(process: Any) -> int:
    """
    Wait for the server's RSS to stop moving (at most 3 s); return it.
    """
    rss = _rss(process)
    for _ in range(30):
        time.sleep(0.1)
        now = _rss(process)
        if now == rss:
            break
        rss = now
    return rss


class _Server:
    """
    A server under test: a subprocess whose tree is measured.
    """

    name = ""
    #: Whether its events are published by the load client (else the server
    #: publishes them itself on the C{publish} command).
    clientPublishes = False

    def __init__(self, events: int, profile: str | None) -> None:
        self.events = events
        self.profile = profile
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        raise NotImplementedError

    def publish(self, loader: subprocess.Popen[str]) -> None:
        assert self.process is not None
        _send(self.process, "publish")

    def evicted(self) -> str:
        return "-"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class _RelayPoolServer(_Server):
    name = "relaypool"

    def start(self) -> None:
        profile = ("--profile", os.path.abspath(self.profile)) if self.profile else ()
        self.process = _spawn("--role", "server", "--events", str(self.events), *profile)
        assert self.process.stdout is not None
        self.port = int(_expect(self.process.stdout, "port")[1])

    def evicted(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        _send(self.process, "stats")
        return _expect(self.process.stdout, "evicted")[1]


class _NostrRelayServer(_Server):
    """
    PyPI C{nostr-relay} as its users run it: its command line and a config
    file (SQLite storage, one worker) in a temp dir.
    """

    name = "nostr-relay"
    clientPublishes = True

    def start(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="fanout-nostr-relay-")
        self.port = freePort()
        command = nostrRelayCommand(self.folder, self.port, loglevel="warning", subscriptionLimit=32)
        self.log = open(os.path.join(self.folder, "relay.log"), "w")
        self.process = subprocess.Popen(
            command,
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nostr-relay exited; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("nostr-relay did not listen within 60 s")

    def publish(self, loader: subprocess.Popen[str]) -> None:
        _send(loader, "publish")

    def stop(self) -> None:
        super().stop()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _measure(server: _Server, clients: int, events: int) -> dict[str, Any]:
    """
    Start C{server}, measure its RSS per idle connection and its fan-out to
    C{clients} subscribers, stop it.
    """
    import psutil

    server.start()
    assert server.process is not None
    loader = _spawn("--role", "load", "--port", str(server.port))
    try:
        assert loader.stdout is not None
        measured = psutil.Process(server.process.pid)
        if server.clientPublishes:
            _send(loader, f"prepare {events}")
            _expect(loader.stdout, "prepared")

        # Idle connections: warm up, then RSS with none and with `clients`.
        _send(loader, "connect 50 idle")
        _expect(loader.stdout, "ready")
        _send(loader, "close")
        _expect(loader.stdout, "closed")
        time.sleep(0.5)
        before = _settle(measured)
        _send(loader, f"connect {clients} idle")
        _expect(loader.stdout, "ready")
        after = _settle(measured)
        _send(loader, "close")
        _expect(loader.stdout, "closed")

        # Fan-out.
        _send(loader, f"connect {clients} sub")
        _expect(loader.stdout, "ready")
        time.sleep(0.5)
        cpuBefore = _cpu(measured)
        _send(loader, f"expect {events * clients}")
        server.publish(loader)
        _, frames, elapsed = _expect(loader.stdout, "done")
        cpu = _cpu(measured) - cpuBefore
        return {
            "frames": int(frames),
            "rate": int(frames) / float(elapsed),
            "cpu": cpu,
            "perRecipient": cpu * 1e6 / (events * clients),
            "perIdle": (after - before) / clients,
            "evicted": server.evicted(),
        }
    finally:
        loader.kill()
        loader.wait(timeout=10)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", default="100,1000,5000", help="client counts, comma-separated"
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--peer-clients", type=int, default=1000)
    parser.add_argument("--no-peer", action="store_true", help="skip nostr-relay")
    parser.add_argument("--quick", action="store_true", help="200 events")
    parser.add_argument("--profile", help="write relaypool's cProfile of the fan-out here")
    options = parser.parse_args()
    events = 200 if options.quick else options.events
    sizes = [int(n) for n in options.clients.split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    print(f"events={events}; server CPU per recipient and RSS per idle connection")
    print(f"(issue 12 targets: <= 3 us and <= 8 KB); RLIMIT_NOFILE hard limit {hard}")
    header = (
        f"{'server':<12} {'clients':>7} {'frames/s':>10} {'CPU s':>7} "
        f"{'us/recipient':>12} {'KB/idle conn':>12} {'evicted':>7}"
    )
    print(header)
    runs: list[tuple[_Server, int]] = [
        (_RelayPoolServer(events, options.profile), n) for n in sizes
    ]
    if not options.no_peer:
        runs.append((_NostrRelayServer(events, None), options.peer_clients))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for server, clients in runs:
        if clients + FD_MARGIN > hard:
            print(f"{server.name:<12} {clients:>7} cannot run: needs about "
                  f"{clients + FD_MARGIN} file descriptors, the hard limit is {hard}")
            continue
        try:
            result = _measure(server, clients, events)
        except Exception as e:
            print(f"{server.name:<12} {clients:>7} could not run: {e}")
            continue
        results[server.name, clients] = result
        print(
            f"{server.name:<12} {clients:>7} {result['rate']:>10,.0f} {result['cpu']:>7.3f} "
            f"{result['perRecipient']:>12.2f} {result['perIdle'] / 1024:>12.1f} "
            f"{result['evicted']:>7}",
            flush=True,
        )
    ours = results.get(("relaypool", options.peer_clients))
    peer = results.get(("nostr-relay", options.peer_clients))
    if ours and peer:
        print(
            f"relaypool / nostr-relay at {options.peer_clients} clients: CPU per recipient "
            f"{ours['perRecipient'] / peer['perRecipient']:.2f}, RSS per idle connection "
            f"{ours['perIdle'] / peer['perIdle']:.2f}, frames/s {ours['rate'] / peer['rate']:.2f}"
        )


if __name__ == "__main__":
    raiseFileLimit()
    if "--role" in sys.argv:
        role = sys.argv[sys.argv.index("--role") + 1]
        if role == "server":
            profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
            serve(int(sys.argv[sys.argv.index("--events") + 1]), profile)
        else:
            load()
    else:
        main()
