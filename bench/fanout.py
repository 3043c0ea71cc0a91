"""
Gateway fan-out: one fake upstream relay, N downstream clients on one shared
filter (same subscription id), E events; and the server's memory per idle
connection.

Usage: C{python bench/fanout.py [--clients 1000] [--events 1000]
[--idle 2000]}

Three processes: this orchestrator; the server (FakeRelay + RelayPool +
Gateway, the process whose CPU and RSS are measured with psutil); and the
load client (raw-socket WebSocket clients that only parse frame headers, so
the load costs as little as possible). Printed figures:

    - delivered frames/s: frames received by all clients, divided by the
      time from the publish command to the last frame;
    - server CPU µs per recipient: the server's user+system CPU time over
      the fan-out, divided by events x clients (target <= 10);
    - server RSS per idle connection: the server's RSS with C{--idle} open
      idle WebSocket connections minus its RSS with none, divided by
      C{--idle} (target <= 16 KB).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import struct
import subprocess
import sys
import time
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEP_TIMEOUT = 180.0
CONNECT_BATCH = 100


def _raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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

    batch = [makeEvent(content=f"fan-out event {i}") for i in range(events)]

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

_HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _maskedText(payload: bytes) -> bytes:
    # A client frame must be masked; an all-zero mask leaves the payload as is.
    if len(payload) < 126:
        header = struct.pack("!BB", 0x81, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    return header + b"\x00\x00\x00\x00" + payload


def load() -> None:
    """
    Open raw WebSocket clients on command: C{connect N sub|idle}, C{expect
    E}, C{close}; report on stdout.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import LineReceiver

    state: dict[str, Any] = {"frames": 0, "expected": 0, "start": 0.0, "eosed": 0}
    clients: list[Client] = []
    req = _maskedText(b'["REQ","bench",{"kinds":[1]}]')

    class Client(Protocol):
        def __init__(self, subscribe: bool) -> None:
            self.subscribe = subscribe
            self.buffer = b""
            self.upgraded = False
            self.opened: Deferred[None] = Deferred()

        def connectionMade(self) -> None:
            key = base64.b64encode(os.urandom(16)).decode()
            self.transport.write(_HANDSHAKE.format(port=port, key=key).encode())

        def dataReceived(self, data: bytes) -> None:
            buffer = self.buffer + data
            if not self.upgraded:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    self.buffer = buffer
                    return
                self.upgraded = True
                buffer = buffer[end + 4 :]
                if self.subscribe:
                    self.transport.write(req)
                else:
                    self.opened.callback(None)
            offset = 0
            size = len(buffer)
            frames = 0
            while size - offset >= 2:
                length = buffer[offset + 1] & 0x7F
                start = offset + 2
                if length == 126:
                    if size - offset < 4:
                        break
                    (length,) = struct.unpack_from("!H", buffer, offset + 2)
                    start = offset + 4
                elif length == 127:
                    if size - offset < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                    start = offset + 10
                if start + length > size:
                    break
                if buffer[start + 2 : start + 7] == b"EVENT":
                    frames += 1
                elif buffer[start + 2 : start + 6] == b"EOSE":
                    state["eosed"] += 1
                    self.opened.callback(None)
                offset = start + length
            self.buffer = buffer[offset:]
            if frames:
                state["frames"] += frames
                if state["expected"] and state["frames"] >= state["expected"]:
                    elapsed = time.perf_counter() - state["start"]
                    commands.sendLine(f"done {state['frames']} {elapsed:.6f}".encode())
                    state["expected"] = 0

    class ClientFactory(Factory):
        def __init__(self, subscribe: bool) -> None:
            self.subscribe = subscribe

        def buildProtocol(self, addr: Any) -> Client:
            client = Client(self.subscribe)
            clients.append(client)
            return client

    def connect(count: int, subscribe: bool) -> None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        factory = ClientFactory(subscribe)

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


def _settle(process: Any) -> int:
    """
    Wait for the server's RSS to stop moving (at most 3 s); return it.
    """
    rss = process.memory_info().rss
    for _ in range(30):
        time.sleep(0.1)
        now = process.memory_info().rss
        if now == rss:
            break
        rss = now
    return int(rss)


def main() -> None:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--profile", help="write the server's cProfile of the fan-out here")
    options = parser.parse_args()

    profile = ("--profile", os.path.abspath(options.profile)) if options.profile else ()
    server = _spawn("--role", "server", "--events", str(options.events), *profile)
    loader: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        port = _expect(server.stdout, "port")[1]
        loader = _spawn("--role", "load", "--port", port)
        assert loader.stdout is not None
        measured = psutil.Process(server.pid)

        # Idle connections: warm up, then RSS with none and with --idle.
        _send(loader, "connect 50 idle")
        _expect(loader.stdout, "ready")
        _send(loader, "close")
        _expect(loader.stdout, "closed")
        time.sleep(0.5)
        before = _settle(measured)
        _send(loader, f"connect {options.idle} idle")
        _expect(loader.stdout, "ready")
        after = _settle(measured)
        _send(loader, "close")
        _expect(loader.stdout, "closed")
        perIdle = (after - before) / options.idle

        # Fan-out.
        _send(loader, f"connect {options.clients} sub")
        _expect(loader.stdout, "ready")
        time.sleep(0.5)
        cpuBefore = measured.cpu_times()
        _send(loader, f"expect {options.events * options.clients}")
        _send(server, "publish")
        _, frames, elapsed = _expect(loader.stdout, "done")
        cpuAfter = measured.cpu_times()
        _send(server, "stats")
        assert server.stdout is not None
        evicted = _expect(server.stdout, "evicted")[1]
        cpu = (cpuAfter.user - cpuBefore.user) + (cpuAfter.system - cpuBefore.system)
        recipients = options.events * options.clients

        print(f"clients={options.clients} events={options.events} idle={options.idle}")
        print(f"delivered frames: {int(frames)} in {float(elapsed):.3f} s")
        print(f"delivered frames/s: {int(frames) / float(elapsed):,.0f}")
        print(
            f"server CPU per recipient: {cpu * 1e6 / recipients:.2f} us "
            f"({cpu:.3f} s CPU for {recipients} recipients; target <= 10 us)"
        )
        print(f"slow clients evicted: {evicted}")
        print(
            f"server RSS per idle connection: {perIdle / 1024:.1f} KB "
            f"({before / 2**20:.1f} MB with none, {after / 2**20:.1f} MB with "
            f"{options.idle}; target <= 16 KB)"
        )
    finally:
        for process in (loader, server):
            if process is not None:
                process.kill()
                process.wait(timeout=10)


if __name__ == "__main__":
    _raiseFileLimit()
    if "--role" in sys.argv:
        role = sys.argv[sys.argv.index("--role") + 1]
        if role == "server":
            profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
            serve(int(sys.argv[sys.argv.index("--events") + 1]), profile)
        else:
            load()
    else:
        main()
