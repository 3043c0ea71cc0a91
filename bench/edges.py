"""
The daemon at its edges, end to end: C{twistd relaypool} runs as a
subprocess, clients and upstream relays run in other processes, and every
figure is read from outside (frames received, C{/stats}, the daemon's RSS).

Usage: C{python bench/edges.py [--answer-mb 10] [--live-events 2000]
[--live-rate 200] [--live-size 32768]}

Scenarios, each printed with its figures and a verdict:

    1. a stored answer of C{--answer-mb} MB (events of 20 KB) to one reader
       that reads as fast as it can: events and EOSEs received, whether it
       was closed, and the daemon's RSS growth beside the answer's size;
    2. a live stream of C{--live-events} events of C{--live-size} bytes,
       published at C{--live-rate} per second, to a subscriber reading as
       fast as it can: events received, evictions;
    3. an offline daemon and a daemon in front of two relays: the same event
       published twice is answered C{OK true "duplicate: ..."} both times
       in both modes;
    4. the daemon in front of two relays (quorum 1): after 20 publishes,
       the outbox holds nothing once both relays answered.

Exits 1 if any verdict fails.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.peers import freePort  # noqa: E402

STEP_TIMEOUT = 120.0
FAST = ["--events-per-second", "100000", "--event-burst", "100000"]


# --- child processes ----------------------------------------------------------


def _runClient(url: str, script: Any) -> None:
    """
    Connect to C{url} and run C{script(protocol)} (a Deferred-returning
    function) in a child process; print its result as one JSON line.
    """
    import orjson
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred

    class Client(WebSocketClientProtocol):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.handlers: list[Any] = []
            self.closed: Deferred[int | None] = Deferred()

        def onOpen(self) -> None:
            ensureDeferred(script(self)).addBoth(finish)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            message = orjson.loads(payload)
            for handler in list(self.handlers):
                handler(message, len(payload))

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            if not self.closed.called:
                self.closed.callback(code)

        def sendJSON(self, *message: Any) -> None:
            self.sendMessage(orjson.dumps(list(message)))

    def finish(result: Any) -> None:
        print(json.dumps(result if isinstance(result, dict) else {"error": str(result)}))
        sys.stdout.flush()
        reactor.stop()

    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    host, port = url.rsplit(":", 1)
    reactor.connectTCP("127.0.0.1", int(port), factory)
    reactor.callLater(STEP_TIMEOUT, finish, "timed out")
    reactor.run()


def _waitFor(protocol: Any, predicate: Any) -> Any:
    """
    @return: a Deferred firing with the first message matching C{predicate},
        or with L{None} if the connection closes first.
    """
    from twisted.internet.defer import Deferred

    d: Any = Deferred()

    def handler(message: Any, size: int) -> None:
        if predicate(message) and not d.called:
            protocol.handlers.remove(handler)
            d.callback(message)

    protocol.handlers.append(handler)
    protocol.closed.addCallback(lambda code: None if d.called else d.callback(None))
    return d


def reader(url: str, filterJSON: str, expected: int) -> None:
    """
    REQ C{filter}; count events, their bytes and EOSEs until C{expected}
    events came after the EOSE (live) or, with C{expected} 0, until the
    EOSE (stored); print the figures.
    """
    figures = {"events": 0, "bytes": 0, "eose": 0, "closeCode": None}

    async def script(protocol: Any) -> dict[str, Any]:
        started = time.monotonic()

        def count(message: Any, size: int) -> None:
            if message[0] == "EVENT":
                figures["events"] += 1
                figures["bytes"] += size
            elif message[0] == "EOSE":
                figures["eose"] += 1
                print("ready")
                sys.stdout.flush()

        protocol.handlers.append(count)
        protocol.sendJSON("REQ", "edge", json.loads(filterJSON))
        if expected:
            await _waitFor(protocol, lambda m: m[0] == "EVENT" and figures["events"] >= expected)
        else:
            await _waitFor(protocol, lambda m: m[0] == "EOSE")
        figures["seconds"] = round(time.monotonic() - started, 3)
        if protocol.closed.called:
            figures["closeCode"] = protocol.closed.result
        return figures

    _runClient(url, script)


def publisher(url: str, count: int, size: int, rate: float, repeat: int) -> None:
    """
    Publish C{count} events of about C{size} bytes, C{rate} per second (0:
    100 in flight), each C{repeat} times; print the OK answers' figures.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from relaypool.nostr.event import Event, generatePrivateKey

    key = generatePrivateKey()
    now = int(time.time())
    events = [Event.sign(key, 1, f"{i} " + "x" * size, createdAt=now - count + i) for i in range(count)]

    async def script(protocol: Any) -> dict[str, Any]:
        answers: dict[str, list[Any]] = {}
        done: dict[str, Any] = {}

        def collect(message: Any, _: int) -> None:
            if message[0] == "OK":
                answers.setdefault(message[1], []).append(message[2:])
                if len(answers[message[1]]) == repeat and message[1] in done:
                    done.pop(message[1]).callback(None)

        protocol.handlers.append(collect)
        started = time.monotonic()
        inFlight: list[Any] = []
        for index, event in enumerate(events):
            from twisted.internet.defer import Deferred

            waiter: Any = Deferred()
            done[event.id] = waiter
            for _ in range(repeat):
                protocol.sendJSON("EVENT", event.toDict())
                if repeat > 1:
                    await _waitFor(
                        protocol, lambda m, i=event.id: m[0] == "OK" and m[1] == i
                    )
            inFlight.append(waiter)
            if rate:
                delay = started + (index + 1) / rate - time.monotonic()
                if delay > 0:
                    await deferLater(reactor, delay)
            elif len(inFlight) >= 100:
                await inFlight.pop(0)
        for waiter in inFlight:
            await waiter
        okTrue = sum(1 for a in answers.values() for accepted, _ in a if accepted)
        return {
            "published": count,
            "okTrue": okTrue,
            "answers": sum(len(a) for a in answers.values()),
            "repeats": [a for a in answers.values()][:1],
            "seconds": round(time.monotonic() - started, 3),
        }

    _runClient(url, script)


def relays(count: int) -> None:
    """
    Run C{count} in-process fake relays; print their URLs; run until
    stdin closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import gatherResults
    from twisted.internet.protocol import Protocol

    from relaypool.testing import FakeRelay

    fakes = [FakeRelay(reactor) for _ in range(count)]

    class Stdin(Protocol):
        def connectionLost(self, reason: Any) -> None:
            reactor.stop()

    def started(_: Any) -> None:
        print(json.dumps([relay.url for relay in fakes]))
        sys.stdout.flush()

    gatherResults([relay.start() for relay in fakes]).addCallback(started)
    stdio.StandardIO(Stdin())
    reactor.run()


# --- the orchestrator -------------------------------------------------------


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _line(stream: IO[str] | None) -> str:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise SystemExit("a child process ended early")
    return line.strip()


class Daemon:
    """
    C{twistd -n relaypool} on a free port with its store in a temporary
    folder.
    """

    def __init__(self, folder: str, *options: str) -> None:
        self.port = freePort()
        self.url = f"ws://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={folder}/twistd.log",
            "relaypool",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--store",
            f"{folder}/relaypool.db",
            "--status-interval",
            "0",
            *options,
        ]
        self.process = subprocess.Popen(command, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the daemon did not start; see {folder}/twistd.log")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as page:
            stats: dict[str, Any] = json.load(page)
            return stats

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _result(process: subprocess.Popen[str], daemon: Daemon | None = None) -> tuple[dict[str, Any], int]:
    """
    Wait for a client's JSON line, sampling the daemon's RSS meanwhile.

    @return: the client's figures and the daemon's peak RSS.
    """
    lines: queue.Queue[str] = queue.Queue()

    def readLines() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("{"):
                lines.put(line)

    threading.Thread(target=readLines, daemon=True).start()
    peak = 0
    deadline = time.monotonic() + STEP_TIMEOUT + 10
    while time.monotonic() < deadline:
        if daemon is not None:
            peak = max(peak, daemon.rss())
        try:
            line = lines.get(timeout=0.02)
        except queue.Empty:
            continue
        process.wait(timeout=30)
        return json.loads(line), peak
    process.kill()
    raise SystemExit("a client did not finish in time")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def storedAnswer(folder: str, megabytes: float) -> bool:
    daemon = Daemon(folder, *FAST)
    try:
        count = int(megabytes * 1_000_000 // 20_000)
        filling, _ = _result(_child("publisher", daemon.url, str(count), "20000", "0", "1"))
        reads = []
        for _ in range(2):
            before = daemon.rss()
            figures, peak = _result(
                _child("reader", daemon.url, json.dumps({"kinds": [1], "limit": count}), "0"),
                daemon,
            )
            reads.append((figures, max(0, peak - before) / 1e6))
        stats = daemon.stats()
    finally:
        daemon.stop()
    ok = filling["okTrue"] == count and stats["registry"]["evictedSlow"] == 0
    for index, (figures, growth) in enumerate(reads):
        answer = figures["bytes"] / 1e6
        ok = ok and figures["events"] == count and figures["eose"] == 1
        ok = ok and figures["closeCode"] is None
        print(
            f"1. stored answer, reader {index + 1}: {figures['events']}/{count} events "
            f"({answer:.1f} MB) and {figures['eose']} EOSE in {figures['seconds']:.2f} s "
            f"({answer / max(figures['seconds'], 1e-9):.1f} MB/s); closed: "
            f"{figures['closeCode']}; daemon RSS peak growth {growth:.1f} MB "
            f"({growth / max(answer, 1e-9):.2f}x the answer)"
        )
    print(f"   (reader 1 also fills the store's page cache)  {_verdict(ok)}")
    return ok


def liveStream(folder: str, events: int, rate: float, size: int) -> bool:
    daemon = Daemon(folder, *FAST)
    try:
        subscriber = _child("reader", daemon.url, json.dumps({"kinds": [1], "limit": 0}), str(events))
        assert _line(subscriber.stdout) == "ready"
        sent, _ = _result(_child("publisher", daemon.url, str(events), str(size), str(rate), "1"))
        figures, peak = _result(subscriber, daemon)
        stats = daemon.stats()
    finally:
        daemon.stop()
    evicted = stats["registry"]["evictedSlow"]
    ok = figures["events"] == events and evicted == 0 and figures["closeCode"] is None
    print(
        f"2. live stream: {sent['okTrue']} published at {rate:g}/s of {size} bytes; "
        f"subscriber got {figures['events']}/{events}; evicted: {evicted}; "
        f"closed: {figures['closeCode']}; daemon RSS peak {peak / 1e6:.1f} MB  {_verdict(ok)}"
    )
    return ok


def _duplicates(daemon: Daemon) -> tuple[bool, list[Any]]:
    figures, _ = _result(_child("publisher", daemon.url, "1", "100", "0", "2"))
    (answers,) = figures["repeats"]
    ok = (
        len(answers) == 2
        and all(accepted for accepted, _ in answers)
        and answers[1][1].startswith("duplicate:")
    )
    return ok, answers


def upstreams(folder: str) -> bool:
    fakes = _child("relays", "2")
    urls = json.loads(_line(fakes.stdout))
    offline = Daemon(os.path.join(folder, "offline"), *FAST)
    try:
        offlineOK, offlineAnswers = _duplicates(offline)
    finally:
        offline.stop()
    gateway = Daemon(
        os.path.join(folder, "gateway"), *FAST, "--relay", urls[0], "--relay", urls[1]
    )
    try:
        deadline = time.monotonic() + 30
        while gateway.stats()["pool"]["activeRelays"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        gatewayOK, gatewayAnswers = _duplicates(gateway)
        published, _ = _result(_child("publisher", gateway.url, "20", "200", "0", "1"))
        waiting = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            outbox = gateway.stats().get("outbox", {})
            waiting = outbox.get("waiting")
            if waiting == 0:
                break
            time.sleep(0.1)
        health = {url: r["healthScore"] for url, r in gateway.stats()["relays"].items()}
    finally:
        gateway.stop()
        assert fakes.stdin is not None
        fakes.stdin.close()
        fakes.wait(timeout=30)
    print(
        f"3. duplicate EVENT, offline: {offlineAnswers}  {_verdict(offlineOK)}\n"
        f"   duplicate EVENT, two relays: {gatewayAnswers}  {_verdict(gatewayOK)}"
    )
    outboxOK = published["okTrue"] == 20 and waiting == 0
    print(
        f"4. two relays, quorum 1: {published['okTrue']}/20 OK true; events waiting in the "
        f"outbox after both answered: {waiting}; relay health: {health}  {_verdict(outboxOK)}"
    )
    return offlineOK and gatewayOK and outboxOK


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("reader", "publisher", "relays"):
        role, args = sys.argv[1], sys.argv[2:]
        if role == "reader":
            reader(args[0], args[1], int(args[2]))
        elif role == "publisher":
            publisher(args[0], int(args[1]), int(args[2]), float(args[3]), int(args[4]))
        else:
            relays(int(args[0]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-mb", type=float, default=10.0)
    parser.add_argument("--live-events", type=int, default=2000)
    parser.add_argument("--live-rate", type=float, default=200.0)
    parser.add_argument("--live-size", type=int, default=32 * 1024)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name in ("answer", "live", "offline", "gateway"):
            os.mkdir(os.path.join(folder, name))
        results = [
            storedAnswer(os.path.join(folder, "answer"), options.answer_mb),
            liveStream(
                os.path.join(folder, "live"),
                options.live_events,
                options.live_rate,
                options.live_size,
            ),
            upstreams(folder),
        ]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
