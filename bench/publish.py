"""
The publish path, end to end: the offline daemon (C{twistd -n relaypool}
with a store, no relays, the C{local} OK policy) and PyPI C{nostr-relay}
(C{nostr-relay -c config.yaml serve}, SQLite storage) run as subprocesses
on 127.0.0.1 with their files in a temporary folder, and the same clients,
each in its own process with a raw WebSocket client and events signed before
the clock starts, measure both in the same run.

Usage: C{python bench/publish.py [--seconds 4] [--quick] [--only relaypool|nostr-relay]
[--profile FILE]}

Scenarios:

    a. one client publishing one event at a time, waiting for each OK;
    b. 4 such clients (and 16, for the growth figures);
    c. one client with 100 events in flight;
    d. one client publishing 60 events/s (for at least 10 s unless
       --quick) while 50 live subscribers (in two processes) wait for them:
       p50 and p99 of publish -> delivery.

Printed: a table of OK/s (or latencies) for both servers and their ratio,
then each server's CPU time per OK (its whole process tree, and its event
loop threads) at 1, 4 and 16 clients and with 100 in flight, to show how the
cost grows with the number of clients and how much runs beside the event
loop (the second core). C{--profile FILE} writes a cProfile of the daemon's
reactor thread.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.peers import freePort, nostrRelayCommand  # noqa: E402

SUBSCRIBERS = 50
LIVE_RATE = 60.0
IN_FLIGHT = 100
STEP_TIMEOUT = 60.0


# --- a raw WebSocket client ----------------------------------------------------


class RawClient:
    """
    A blocking WebSocket client that costs little: frames are masked with
    a zero key (free), and frames from the server are cut out of one buffer.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"WebSocket handshake refused: {head[:200]!r}")

    @staticmethod
    def frame(payload: bytes) -> bytes:
        """
        A masked text frame carrying C{payload}.
        """
        size = len(payload)
        if size < 126:
            header = bytes((0x81, 0x80 | size))
        elif size < 65536:
            header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
        return header + b"\0\0\0\0" + payload

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.frame(payload))

    def _read(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def messages(self) -> list[bytes]:
        """
        Read once from the socket; return the complete messages received.
        """
        self._read()
        buffer = self.buffer
        messages = []
        offset = 0
        while len(buffer) - offset >= 2:
            opcode = buffer[offset] & 0x0F
            size = buffer[offset + 1] & 0x7F
            start = offset + 2
            if size == 126:
                size = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif size == 127:
                size = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            if len(buffer) < start + size:
                break
            payload = buffer[start : start + size]
            offset = start + size
            if opcode == 0x9:
                self.sock.sendall(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            elif opcode == 0x8:
                raise ConnectionError("the server closed the WebSocket")
            else:
                messages.append(payload)
        self.buffer = buffer[offset:]
        return messages


def _signed(count: int, tag: str) -> list[tuple[bytes, bytes]]:
    """
    C{count} signed kind 1 events tagged C{t=tag}, content their index:
    each as C{(id, EVENT message)}.
    """
    import orjson

    from relaypool.nostr.event import Event, generatePrivateKey

    key = generatePrivateKey()
    now = int(time.time())
    signed = []
    for index in range(count):
        event = Event.sign(key, 1, f"{index} publish bench", tags=[("t", tag)], createdAt=now)
        signed.append((event.id.encode(), orjson.dumps(["EVENT", event.toDict()])))
    return signed


# --- client processes ------------------------------------------------------------


def publisher(
    port: int,
    count: int,
    window: int,
    rate: float,
    seconds: float,
    tag: str,
    ready: Any,
    results: Any,
) -> None:
    """
    Publish up to C{count} events for at most C{seconds}, C{window} in
    flight (or C{rate} per second, one at a time, if C{rate}); put the
    figures on C{results}: OKs received, how many were C{true}, the times
    of the first send and the last OK, and the send time of each event.
    """
    events = _signed(count, tag)
    client = RawClient(port)
    ready.wait()
    clock = time.monotonic
    started = clock()
    deadline = started + seconds
    sentAt: list[float] = []
    answered = accepted = 0
    for _, message in events[:window]:
        sentAt.append(clock())
        client.send(message)
    while answered < len(sentAt):
        for payload in client.messages():
            if not payload.startswith(b'["OK"'):
                continue
            answered += 1
            if b",true," in payload[:80]:
                accepted += 1
            if len(sentAt) < count and clock() < deadline:
                if rate:
                    delay = started + len(sentAt) / rate - clock()
                    if delay > 0:
                        time.sleep(delay)
                sentAt.append(clock())
                client.send(events[len(sentAt) - 1][1])
    results.put(
        {"answered": answered, "accepted": accepted, "start": started, "end": clock(), "sentAt": sentAt}
    )


def subscribers(port: int, count: int, tag: str, expected: int, ready: Any, results: Any) -> None:
    """
    Open C{count} connections, each with one live subscription to the
    events tagged C{t=tag}; once each got its EOSE, count down C{ready};
    then note when each event arrives, until C{expected} events reached
    every connection or the step times out; put on C{results} the arrival
    times by event index.
    """
    import selectors

    import orjson

    clients = [RawClient(port) for _ in range(count)]
    for client in clients:
        client.send(orjson.dumps(["REQ", "live", {"kinds": [1], "#t": [tag], "limit": 0}]))
    for client in clients:
        while not any(payload.startswith(b'["EOSE"') for payload in client.messages()):
            pass
    ready.wait()
    selector = selectors.DefaultSelector()
    for client in clients:
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, client)
    index = re.compile(rb'"content":\s*"(\d+) ')
    arrivals: list[tuple[int, float]] = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(arrivals) < expected * count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            now = time.monotonic()
            client = key.data
            try:
                payloads = client.messages()
            except (BlockingIOError, ConnectionError):
                continue
            for payload in payloads:
                found = index.search(payload) if payload.startswith(b'["EVENT"') else None
                if found is not None:
                    arrivals.append((int(found[1]), now))
    results.put({"arrivals": arrivals})


# --- the servers -----------------------------------------------------------------


class Server:
    """
    A relay in a subprocess on a free port, its files in C{folder}.
    """

    name = ""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.port = freePort()
        self.log = open(os.path.join(folder, "server.log"), "w")
        self.process = subprocess.Popen(
            self.command(), cwd=folder, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.psutil = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                RawClient(self.port).sock.close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        with open(self.log.name) as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"{self.name} did not start; its output ends with:\n{tail}")

    def command(self) -> list[str]:
        raise NotImplementedError

    def cpu(self) -> tuple[float, float]:
        """
        The CPU seconds used so far by the server's process tree, and by
        the main threads of its processes (the event loops: the other
        threads are the second core's share).
        """
        total = loops = 0.0
        for process in [self.psutil, *self.psutil.children(recursive=True)]:
            try:
                times = process.cpu_times()
                threads = process.threads()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
            loops += sum(t.user_time + t.system_time for t in threads if t.id == process.pid)
        return total, loops

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class RelayPoolDaemon(Server):
    name = "relaypool"
    profile: str | None = None

    def command(self) -> list[str]:
        # Under --profile, twistd's re-raising of the stop signal is skipped
        # so that cProfile writes its output.
        script = "from twisted.scripts.twistd import run; run()"
        if self.profile:
            script = (
                "import cProfile; from twisted.application import app; "
                "from twisted.scripts.twistd import run; "
                f"app._exitWithSignal = lambda sig: None; cProfile.run('run()', {self.profile!r})"
            )
        return [
            sys.executable,
            "-c",
            script,
            "-n",
            "--pidfile=",
            f"--logfile={self.folder}/twistd.log",
            "relaypool",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--store",
            f"{self.folder}/relaypool.db",
            "--ok-policy",
            "local",
            "--status-interval",
            "0",
            "--events-per-second",
            "1000000",
            "--event-burst",
            "1000000",
            "--max-connections-per-ip",
            "1000",
        ]


class NostrRelay(Server):
    name = "nostr-relay"

    def command(self) -> list[str]:
        return nostrRelayCommand(self.folder, self.port)


# --- scenarios -------------------------------------------------------------------


class Run:
    """
    The clients of one scenario against one server.
    """

    def __init__(self, server: Server, seconds: float) -> None:
        self.server = server
        self.seconds = seconds
        self.context = multiprocessing.get_context("fork")

    def _start(
        self, roles: list[tuple[Callable[..., None], tuple[Any, ...]]]
    ) -> tuple[list[Any], Any, Any]:
        ready = self.context.Barrier(len(roles) + 1)
        results = self.context.Queue()
        processes = [
            self.context.Process(target=target, args=(*args, ready, results))
            for target, args in roles
        ]
        for process in processes:
            process.start()
        ready.wait(timeout=STEP_TIMEOUT)
        return processes, ready, results

    def _collect(self, processes: list[Any], results: Any) -> list[dict[str, Any]]:
        figures = [results.get(timeout=STEP_TIMEOUT + self.seconds) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        return figures

    def publishing(self, clients: int, window: int, perClient: int) -> dict[str, float]:
        """
        C{clients} publishers with C{window} events in flight each.

        @return: OKs per second, the share of them that were C{true}, and
            the server's CPU microseconds per OK.
        """
        tag = f"ok{os.urandom(4).hex()}"
        roles = [(publisher, (self.server.port, perClient, window, 0.0, self.seconds, tag))]
        processes, _, results = self._start(roles * clients)
        cpu, loop = self.server.cpu()
        figures = self._collect(processes, results)
        after, loopAfter = self.server.cpu()
        answered = max(sum(f["answered"] for f in figures), 1)
        seconds = max(f["end"] for f in figures) - min(f["start"] for f in figures)
        return {
            "rate": answered / seconds,
            "accepted": sum(f["accepted"] for f in figures) / answered,
            "cpuPerOK": (after - cpu) / answered * 1e6,
            "loopPerOK": (loopAfter - loop) / answered * 1e6,
        }

    def delivery(self, seconds: float) -> dict[str, float]:
        """
        One publisher at L{LIVE_RATE} events per second for C{seconds},
        L{SUBSCRIBERS} subscribers in two processes.

        @return: p50 and p99 of publish -> delivery in milliseconds, and the
            deliveries received out of those expected.
        """
        tag = f"live{os.urandom(4).hex()}"
        count = int(LIVE_RATE * seconds)
        half = SUBSCRIBERS // 2
        roles = [
            (subscribers, (self.server.port, half, tag, count)),
            (subscribers, (self.server.port, SUBSCRIBERS - half, tag, count)),
            (publisher, (self.server.port, count, 1, LIVE_RATE, STEP_TIMEOUT, tag)),
        ]
        processes, _, results = self._start(roles)
        figures = self._collect(processes, results)
        (sent,) = [f["sentAt"] for f in figures if "sentAt" in f]
        latencies = [
            (arrived - sent[index]) * 1000
            for f in figures
            if "arrivals" in f
            for index, arrived in f["arrivals"]
        ]
        if len(latencies) < 2:
            return {"p50": float("nan"), "p99": float("nan"), "received": 0.0}
        percentiles = statistics.quantiles(latencies, n=100)
        return {
            "p50": statistics.median(latencies),
            "p99": percentiles[98],
            "received": len(latencies) / (count * SUBSCRIBERS),
        }


def measure(server: Server, seconds: float, quick: bool) -> dict[str, dict[str, float]]:
    run = Run(server, seconds)
    # Enough events for each client to stay busy for `seconds` at the targets.
    budget = 1 if quick else 2
    figures = {
        "a": run.publishing(1, 1, int(2_000 * seconds * budget)),
        "b": run.publishing(4, 1, int(1_000 * seconds * budget)),
        "c": run.publishing(1, IN_FLIGHT, int(10_000 * seconds * budget)),
        "16": run.publishing(16, 1, int(300 * seconds * budget)),
        # p99 of a few hundred events: at least 10 s unless --quick.
        "d": run.delivery(seconds if quick else max(seconds, 10.0)),
    }
    return figures


def _ratio(ours: float, theirs: float, higherIsBetter: bool) -> str:
    if not theirs or not ours or ours != ours or theirs != theirs:
        return "-"
    return f"{(ours / theirs if higherIsBetter else theirs / ours):.2f}x"


def report(results: dict[str, dict[str, dict[str, float]] | str]) -> None:
    names = list(results)

    def cell(name: str, scenario: str, key: str, fmt: str) -> str:
        figures = results[name]
        if isinstance(figures, str):
            return "n/a"
        return format(figures[scenario][key], fmt)

    def value(name: str, scenario: str, key: str) -> float:
        figures = results[name]
        return float("nan") if isinstance(figures, str) else figures[scenario][key]

    header = f"{'scenario':<44}" + "".join(f"{name:>14}" for name in names)
    if len(names) == 2:
        header += f"{'ratio':>9}"
    print(header)
    rows = [
        ("a. 1 client, 1 in flight (OK/s)", "a", "rate", ",.0f", True),
        ("b. 4 clients, 1 in flight each (OK/s)", "b", "rate", ",.0f", True),
        (f"c. 1 client, {IN_FLIGHT} in flight (OK/s)", "c", "rate", ",.0f", True),
        ("   16 clients, 1 in flight each (OK/s)", "16", "rate", ",.0f", True),
        (f"d. publish->delivery, {SUBSCRIBERS} subs, p50 (ms)", "d", "p50", ".2f", False),
        (f"d. publish->delivery, {SUBSCRIBERS} subs, p99 (ms)", "d", "p99", ".2f", False),
        ("   deliveries received (share)", "d", "received", ".3f", True),
    ]
    for label, scenario, key, fmt, higher in rows:
        line = f"{label:<44}" + "".join(f"{cell(n, scenario, key, fmt):>14}" for n in names)
        if len(names) == 2:
            line += f"{_ratio(value(names[0], scenario, key), value(names[1], scenario, key), higher):>9}"
        print(line)
    print()
    print(
        "Growth: server CPU per OK in microseconds, its whole process tree (and its"
        " event loop threads)"
    )
    print(f"{'clients':<44}" + "".join(f"{name:>22}" for name in names))
    for label, scenario in (
        ("1, 1 in flight", "a"),
        ("4, 1 in flight each", "b"),
        ("16, 1 in flight each", "16"),
        (f"1, {IN_FLIGHT} in flight", "c"),
    ):
        print(
            f"{label:<44}"
            + "".join(
                f"{cell(n, scenario, 'cpuPerOK', ',.0f') + ' (' + cell(n, scenario, 'loopPerOK', ',.0f') + ')':>22}"
                for n in names
            )
        )
    for name in names:
        figures = results[name]
        if isinstance(figures, str):
            print(f"{name}: {figures}")
        else:
            shares = {s: round(figures[s]["accepted"], 3) for s in ("a", "b", "c", "16")}
            print(f"{name}: share of OK true per scenario: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each scenario")
    parser.add_argument("--quick", action="store_true", help="2-second scenarios")
    parser.add_argument("--only", choices=("relaypool", "nostr-relay"), default=None)
    parser.add_argument("--profile", help="write a cProfile of the daemon to this file")
    options = parser.parse_args()
    RelayPoolDaemon.profile = options.profile and os.path.abspath(options.profile)
    seconds = 2.0 if options.quick else options.seconds
    servers: list[type[Server]] = [RelayPoolDaemon, NostrRelay]
    results: dict[str, dict[str, dict[str, float]] | str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in servers:
            if options.only not in (None, kind.name):
                continue
            path = os.path.join(folder, kind.name)
            os.mkdir(path)
            try:
                server = kind(path)
            except (RuntimeError, OSError) as e:
                results[kind.name] = f"could not run: {e}"
                continue
            try:
                results[kind.name] = measure(server, seconds, options.quick)
            finally:
                server.stop()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{seconds:g} s per scenario; clients in separate processes; {os.cpu_count()} cores; "
        f"load average at the end {load}"
    )
    report(results)


if __name__ == "__main__":
    main()
