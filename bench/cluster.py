"""
Cluster fan-out: the same clients and events served by 1, 2 and 3
relaypool daemons sharing one Redis server, beside a single daemon without
Redis measured in the same run. Upstream work must not grow with the number
of nodes (one upstream subscription per filter set, held by the node with
its lease; the other nodes read the filter set's Redis stream), and each
node's cost per delivered frame should stay flat.

Usage: C{python bench/cluster.py [--clients 600] [--filters 10]
[--events 2000] [--rate 200] [--nodes 1,2,3] [--quick] [--keep-logs]}

C{--quick}: 150 clients and 300 events (about 20 s); the default run takes
about a minute. The default rate leaves the 2-core machine some room: at
500 events/s the single node alone uses most of a core and, with the load
client, the relay and Redis, the machine is saturated, so latencies there
are queueing.

Processes, all on 127.0.0.1, fresh for each configuration:

    - one C{redis-server} (temp dir, C{--save '' --appendonly no}) for the
      whole run, emptied with C{FLUSHALL} before each configuration;
    - the upstream relay: one L{relaypool.testing.FakeRelay} in a
      subprocess of its own, not in this orchestrator, whose blocking reads
      of pipes, HTTP and psutil would stall a reactor and with it the
      publishing rate and the publish times. It signs the events before
      the measured part (signing costs about 0.25 ms an event here), then
      stores them at C{--rate}, writing each one's publish time
      (C{time.time()} just before C{FakeRelay.store}) to a side table; the
      event's content is its number;
    - the nodes: C{python -m relaypool.daemon.cli run --store :memory:
      --relay ws://... --status-interval 0 --max-connections-per-ip
      100000} (the default 50 would refuse the clients, all from
      127.0.0.1), with C{--redis ... --node-id nK} in a cluster, each
      measured with psutil;
    - one load client process: raw-socket WebSocket clients that parse
      frame headers and the number in the content only (those of
      C{bench/wsload.py}, as C{bench/fanout.py}'s), not Autobahn clients,
      whose per-message path (a mask object and a Deferred per message,
      see the design notes, "Receiving") would take CPU the nodes need on a
      2-core machine.
      Its CPU is printed, so one sees it was not the bottleneck.

The clients are spread evenly over the nodes and the C{--filters} filter
sets (C{{"kinds":[1],"#t":["bench-F"]}}, one subscription id for all, as
C{bench/fanout.py}); each event carries the tag of one filter set, in
turn. The first client of filter set F joins node F mod N and gets its
EOSE before the others join, so that the leases are spread evenly over the
nodes as a load balancer would spread first clients; who holds each lease
is then read from Redis (C{relaypool:lease:<name>}, C{name} being
L{relaypool.cluster.node.filterSetName} of the filters with the limit the
gateway clamps to, 500).

Printed per configuration, one row (the figures of the publishing window:
from the first event stored on the relay to the last frame received):

    - C{live}: the REQs the relay holds while events flow
      (C{FakeRelay.subscriptionCount()}); C{REQs}: every REQ it received,
      including the one-shot query a single node sends upstream for each
      client that joins an existing shared subscription (a cluster node
      reads the filter set's stream for that instead);
    - C{Redis/ev}: Redis's C{total_commands_processed} delta per event
      (this bench's one C{INFO} taken off; the commands the lease script
      runs count each): the owner's C{XADD} (one per event), the other
      nodes' C{XREAD}s (one per read: fewer than one per event and node
      when reads find several entries), lease renewals and heartbeats
      (every lease time / 3 per node); C{node/ev}: the nodes' side, their
      C{/stats} C{cluster.redisCommands} deltas summed (a script call
      counts once), per event; C{Redis us}: C{redis-server}'s CPU time
      per event;
    - C{frames}: EVENT frames received by all clients; C{lost}: those
      expected (each event times the clients of its filter set) that did
      not come within the step timeout (negative: duplicates);
    - C{p50own}, C{p99own}: delivery latency in ms (publish on the relay
      to receipt by a client) for clients on the node holding the filter
      set's lease (every client without Redis); C{p50oth}, C{p99oth}: for
      clients on the other nodes, through the Redis stream;
    - C{client CPU}: the load client's CPU, in % of one core.

Then, in a cluster, the busiest Redis commands per event (C{INFO
commandstats}), and the stream entries: the events added to streams
(C{/stats} C{cluster.eventsPublished}; each event once, by its owner) and
read from them (C{cluster.eventsReceived}) beside the reads expected (each
event by every other node with clients on its filter set); the nodes whose
log says they lost their Redis link (such a node serves its own clients
alone, adding nothing to the streams until it is back). Then one row per
node: its clients, the leases it holds (from Redis; in parentheses its
C{/stats} C{leasesHeld} when that differs), frames its clients received,
frames/s (those frames over the time from the first publish to the
node's last frame: at a fixed publish rate this is the offered load, not a
capacity), its CPU seconds, and CPU us per frame (its whole process:
upstream or stream reading, verification, store, Redis, fan-out, over its
own frames).

Last, ratios to the single node without Redis: live REQs, REQs received,
per-node CPU us per frame (mean and max over the nodes) and the cluster's
CPU per frame (all nodes' CPU over all frames). Each node handles every
event its clients want (parse, store, stream) while its frames per event
fall as 1/N, so CPU per frame rises with N by that per-event part; the
fan-out part (one write per client per event at these rates) stays flat.

Everything is bounded: each step waits at most C{STEP_TIMEOUT} seconds,
the delivery at most the publishing time plus C{DRAIN_TIMEOUT}. The file
descriptor limit is raised to the hard limit. All processes share the
machine's cores, so latencies include scheduling delays; compare the
configurations of one run, never figures of different runs.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.peers import freePort, raiseFileLimit  # noqa: E402

STEP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0
#: File descriptors a process needs beside its connections.
FD_MARGIN = 100
#: The limit the gateway gives a filter without one (GatewayLimits.maxLimit).
CLAMPED_LIMIT = 500
#: Publishing ticks per second on the relay.
TICKS = 200


def _filterDict(index: int) -> dict[str, Any]:
    return {"kinds": [1], "#t": [f"bench-{index}"]}


class _CommandLines:
    """
    Mixed in before C{LineReceiver} (imported in the child processes only):
    a child's stdin, obeying the orchestrator's command lines. A line's
    first word names the command, run by the method C{command_<word>} with
    the other words as arguments; a line naming none is ignored. When stdin
    closes, the orchestrator is gone: so is this process.
    """

    delimiter = b"\n"

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        command = getattr(self, f"command_{words[0]}", None)
        if command is not None:
            command(*words[1:])


# --- the relay process ------------------------------------------------------------------


def relayRole() -> None:
    """
    Run a FakeRelay; print its port, then obey commands on stdin:
    C{prepare E F} signs E events (event I tagged for filter set I mod F),
    C{publish RATE PATH} stores them at RATE per second and writes their
    publish times to PATH, C{stats} reports the relay's subscriptions.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.task import LoopingCall
    from twisted.protocols.basic import LineReceiver

    from relaypool.nostr.messages import ClientReq
    from relaypool.testing import FakeRelay, makeEvent

    relay = FakeRelay(reactor, verify=False)
    events: list[Any] = []
    times = array.array("d")

    def prepare(count: int, filters: int) -> None:
        now = int(time.time())
        events[:] = [
            makeEvent(content=str(i), tags=[["t", f"bench-{i % filters}"]], createdAt=now)
            for i in range(count)
        ]
        commands.sendLine(b"prepared")

    def publish(rate: float, path: str) -> None:
        del times[:]
        started = time.time()

        def tick() -> None:
            due = min(len(events), int((time.time() - started) * rate) + 1)
            for i in range(len(times), due):
                times.append(time.time())
                relay.store(events[i])
            if len(times) == len(events):
                loop.stop()
                with open(path, "wb") as f:
                    times.tofile(f)
                commands.sendLine(f"published {len(times)} {times[0]:.6f} {times[-1]:.6f}".encode())

        loop = LoopingCall(tick)
        loop.start(1.0 / TICKS)

    class Commands(_CommandLines, LineReceiver):
        def command_prepare(self, count: str, filters: str) -> None:
            prepare(int(count), int(filters))

        def command_publish(self, rate: str, path: str) -> None:
            publish(float(rate), path)

        def command_stats(self) -> None:
            reqs = sum(1 for message in relay.received if isinstance(message, ClientReq))
            self.sendLine(
                f"stats {relay.subscriptionCount()} {reqs} {relay.connectionCount()}".encode()
            )

    commands = Commands()

    def started(_: object) -> None:
        stdio.StandardIO(commands)
        print(f"port {relay.port}", flush=True)

    relay.start().addCallback(started)
    reactor.run()


# --- the load client process ----------------------------------------------------------------

_CONTENT = b'"content":"'


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def loadRole() -> None:
    """
    Open raw WebSocket clients on command and time what they receive:
    C{connect NODE PORT FILTER COUNT} plans clients, C{open} opens the
    planned ones (answering C{ready} once each got its EOSE), C{expect N}
    starts counting (answering C{done} at N frames), C{report TIMES
    OWNERS} answers with the figures as JSON (TIMES: the relay's publish
    times file; OWNERS: the node holding each filter set, comma-separated).
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import DeferredList
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from bench.wsload import CONNECT_BATCH, RawClient, maskedText

    state: dict[str, Any] = {"frames": 0, "expected": 0}
    # Per (node, filter set): the event numbers received and when.
    received: dict[tuple[int, int], tuple[array.array[int], array.array[float]]] = {}
    lastFrame: dict[int, float] = {}
    framesByNode: dict[int, int] = {}
    clients: list[Client] = []
    planned: list[tuple[int, int, int, int]] = []

    class Client(RawClient):
        def __init__(self, node: int, filterIndex: int, port: int) -> None:
            super().__init__(port)
            self.node = node
            self.req = maskedText(
                b'["REQ","bench",' + json.dumps(_filterDict(filterIndex)).encode() + b"]"
            )
            self.numbers, self.times = received.setdefault(
                (node, filterIndex), (array.array("q"), array.array("d"))
            )

        def connectionLost(self, reason: Any = None) -> None:
            self._failed("connection lost")

        def _failed(self, why: str) -> None:
            # Refused or gone before its EOSE: counted as failed.
            if not self.opened.called:
                self.opened.errback(RuntimeError(why))

        def handshakeDone(self) -> None:
            self.transport.write(self.req)

        def framesReceived(self, buffer: bytes, frames: list[tuple[int, int]]) -> None:
            now = time.time()
            events = 0
            for start, end in frames:
                if buffer[start + 2 : start + 7] == b"EVENT":
                    events += 1
                    at = buffer.find(_CONTENT, start, end) + len(_CONTENT)
                    self.numbers.append(int(buffer[at : buffer.index(b'"', at, end)]))
                    self.times.append(now)
                elif buffer[start + 2 : start + 6] == b"EOSE":
                    if not self.opened.called:
                        self.opened.callback(None)
                elif buffer[start + 2 : start + 8] == b"CLOSED":
                    self._failed(bytes(buffer[start:end]).decode(errors="replace"))
            if events:
                node = self.node
                framesByNode[node] = framesByNode.get(node, 0) + events
                lastFrame[node] = now
                state["frames"] += events
                if state["expected"] and state["frames"] >= state["expected"]:
                    commands.sendLine(f"done {state['frames']}".encode())
                    state["expected"] = 0

    class ClientFactory(Factory):
        def __init__(self, node: int, filterIndex: int, port: int) -> None:
            self.args = (node, filterIndex, port)

        def buildProtocol(self, addr: Any) -> Client:
            client = Client(*self.args)
            clients.append(client)
            return client

    def openPlanned() -> None:
        attempts = [(node, port, f) for node, port, f, count in planned for _ in range(count)]
        planned.clear()
        failures = [0]

        def batch(first: int) -> None:
            if first >= len(attempts):
                commands.sendLine(f"ready {len(clients)} {failures[0]}".encode())
                return
            opened = []
            for node, port, f in attempts[first : first + CONNECT_BATCH]:
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
                d = endpoint.connect(ClientFactory(node, f, port))
                opened.append(d.addCallback(lambda client: client.opened))

            def counted(results: list[tuple[bool, Any]]) -> None:
                failures[0] += sum(1 for ok, _ in results if not ok)
                batch(first + CONNECT_BATCH)

            DeferredList(opened, consumeErrors=True).addCallback(counted)

        batch(0)

    def report(timesPath: str, owners: list[int]) -> dict[str, Any]:
        published = array.array("d")
        with open(timesPath, "rb") as source:
            published.frombytes(source.read())
        own: list[float] = []
        other: list[float] = []
        for (node, f), (numbers, times) in received.items():
            into = own if owners[f] in (node, -1) else other
            into.extend(
                (at - published[n]) * 1000.0
                for n, at in zip(numbers, times, strict=True)
                if n < len(published)
            )
        own.sort()
        other.sort()
        return {
            "frames": state["frames"],
            "framesByNode": {str(k): v for k, v in framesByNode.items()},
            "lastFrame": {str(k): v for k, v in lastFrame.items()},
            "own": [len(own), _percentile(own, 0.5), _percentile(own, 0.99)],
            "other": [len(other), _percentile(other, 0.5), _percentile(other, 0.99)],
        }

    class Commands(_CommandLines, LineReceiver):
        def command_connect(self, node: str, port: str, f: str, count: str) -> None:
            planned.append((int(node), int(port), int(f), int(count)))

        def command_open(self) -> None:
            openPlanned()

        def command_expect(self, expected: str) -> None:
            for numbers, times in received.values():
                del numbers[:]
                del times[:]
            framesByNode.clear()
            lastFrame.clear()
            state["frames"] = 0
            state["expected"] = int(expected)

        def command_report(self, timesPath: str, owners: str) -> None:
            found = report(timesPath, [int(word) for word in owners.split(",")])
            self.sendLine(b"report " + json.dumps(found).encode())

    commands = Commands()
    stdio.StandardIO(commands)
    reactor.run()


# --- the orchestrator -----------------------------------------------------------------------


class _Child:
    """
    A subprocess of this script obeying commands, its stdout read by a
    thread so that every wait for a line is bounded.
    """

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, prefix: str, timeout: float = STEP_TIMEOUT) -> list[str]:
        """
        @return: the words after C{prefix} of the next line starting with it.
        @raise TimeoutError: if none came within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {prefix!r}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"a {prefix!r} process exited")
            words = line.split(" ", 1)
            if words[0].strip() == prefix:
                return words[1].split() if len(words) > 1 else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class _Redis:
    """
    One C{redis-server} in a temp dir, and a blocking RESP client of it.
    """

    def __init__(self, folder: str) -> None:
        self.port = freePort()
        self.log = open(os.path.join(folder, "redis.log"), "wb")
        self.process = subprocess.Popen(
            [
                "/usr/bin/redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                folder,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.log.name}")
            try:
                self._socket = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not listen") from None
                time.sleep(0.05)
        self._file = self._socket.makefile("rb")
        while True:
            try:
                self.command("PING")
                break
            except RuntimeError:
                # LOADING: not ready yet.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: object) -> Any:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._socket.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("redis-server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected Redis reply {line!r}")

    def info(self) -> tuple[int, dict[str, int]]:
        """
        @return: C{total_commands_processed} and the calls of each command.
        """
        text = self.command("INFO", "all").decode()
        total = 0
        calls: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("total_commands_processed:"):
                total = int(line.split(":")[1])
            elif line.startswith("cmdstat_"):
                name, fields = line[len("cmdstat_") :].split(":", 1)
                for field in fields.split(","):
                    key, value = field.split("=")
                    if key == "calls":
                        calls[name] = int(value)
        return total, calls

    def version(self) -> str:
        text: str = self.command("INFO", "server").decode()
        for line in text.splitlines():
            if line.startswith("redis_version:"):
                return line.split(":")[1]
        return "?"

    def stop(self) -> None:
        self._file.close()
        self._socket.close()
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


class _Node:
    """
    One relaypool daemon, its gateway on a free port.
    """

    def __init__(
        self, index: int, relayPort: int, redis: _Redis | None, folder: str, logPrefix: str
    ) -> None:
        self.index = index
        self.nodeId = f"n{index + 1}"
        self.port = freePort()
        self.redis = redis
        command = [
            sys.executable,
            "-m",
            "relaypool.daemon.cli",
            "run",
            "--store",
            ":memory:",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            "--relay",
            f"ws://127.0.0.1:{relayPort}",
            "--status-interval",
            "0",
            "--max-connections-per-ip",
            "100000",
        ]
        if redis is not None:
            command += ["--redis", redis.url, "--node-id", self.nodeId]
        self.logPath = os.path.join(folder, f"{logPrefix}-{self.nodeId}.log")
        self.log = open(self.logPath, "wb")
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        environment = dict(os.environ, PYTHONPATH=path)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=environment,
        )

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/stats")[1])

    def waitReady(self) -> None:
        """
        Wait until the node's relay is open and, in a cluster, it is on
        Redis.
        """
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.nodeId} exited; see {self.logPath}")
            try:
                status, _ = self.get("/readyz")
                if status == 200 and (
                    self.redis is None or self.stats().get("cluster", {}).get("redisUp")
                ):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {self.nodeId} not ready within {STEP_TIMEOUT} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


def _cpu(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _placement(clients: int, nodes: int, filters: int) -> list[list[int]]:
    """
    @return: the clients of each node on each filter set: the nodes in
        turn, and each node's clients over the filter sets in turn.
    """
    counts = [[0] * filters for _ in range(nodes)]
    for c in range(clients):
        counts[c % nodes][(c // nodes) % filters] += 1
    return counts


def _runConfiguration(
    label: str,
    nodeCount: int,
    redis: _Redis | None,
    options: argparse.Namespace,
    folder: str,
) -> dict[str, Any]:
    """
    Start a relay, C{nodeCount} nodes and the clients; publish; measure;
    stop them.
    """
    import psutil

    from relaypool.cluster.node import filterSetName
    from relaypool.nostr.filter import Filter

    events, filters, rate = options.events, options.filters, options.rate
    if redis is not None:
        redis.command("FLUSHALL")
    relay = _Child("--role", "relay")
    nodes: list[_Node] = []
    load: _Child | None = None
    try:
        relayPort = int(relay.expect("port")[0])
        relay.send(f"prepare {events} {filters}")
        logPrefix = f"{nodeCount}-redis" if redis is not None else "single"
        for i in range(nodeCount):
            nodes.append(_Node(i, relayPort, redis, folder, logPrefix))
        relay.expect("prepared")
        for node in nodes:
            node.waitReady()
        load = _Child("--role", "load")

        # The first client of each filter set on node F mod N (every node
        # has clients on every filter set), then the rest.
        placement = _placement(options.clients, nodeCount, filters)
        counts = [list(row) for row in placement]
        for f in range(filters):
            k = f % nodeCount
            load.send(f"connect {k} {nodes[k].port} {f} 1")
            counts[k][f] -= 1
        load.send("open")
        failed = int(load.expect("ready")[1])
        for k, row in enumerate(counts):
            for f, count in enumerate(row):
                if count:
                    load.send(f"connect {k} {nodes[k].port} {f} {count}")
        load.send("open")
        failed += int(load.expect("ready")[1])
        members = [sum(row[f] for row in placement) for f in range(filters)]
        expected = sum(members[i % filters] for i in range(events))
        time.sleep(0.5)

        # Who holds each lease.
        names = [
            filterSetName((Filter.fromDict(_filterDict(f)).withLimit(CLAMPED_LIMIT),))
            for f in range(filters)
        ]

        def owners() -> list[int]:
            if redis is None:
                return [-1] * filters
            found = []
            for name in names:
                holder = redis.command("GET", f"relaypool:lease:{name}")
                found.append(int(holder[1:]) - 1 if holder else -2)
            return found

        ownersBefore = owners()
        relay.send("stats")
        liveBefore = int(relay.expect("stats")[0])

        # The measured window.
        measured = [psutil.Process(node.process.pid) for node in nodes]
        loader = psutil.Process(load.process.pid)
        redisProcess = psutil.Process(redis.process.pid) if redis is not None else None
        statsBefore = [node.stats() for node in nodes]
        infoBefore = redis.info() if redis is not None else (0, {})
        cpuBefore = [_cpu(p) for p in measured]
        loaderBefore = _cpu(loader)
        redisBefore = _cpu(redisProcess) if redisProcess is not None else 0.0
        timesPath = os.path.join(folder, "published.bin")
        load.send(f"expect {expected}")
        relay.send(f"publish {rate} {timesPath}")
        relayWords = relay.expect("published", events / rate + STEP_TIMEOUT)
        firstPublish, lastPublish = float(relayWords[1]), float(relayWords[2])
        complete = True
        try:
            load.expect("done", DRAIN_TIMEOUT)
        except TimeoutError:
            complete = False
        cpuAfter = [_cpu(p) for p in measured]
        loaderAfter = _cpu(loader)
        redisAfter = _cpu(redisProcess) if redisProcess is not None else 0.0
        infoAfter = redis.info() if redis is not None else (0, {})
        statsAfter = [node.stats() for node in nodes]
        relay.send("stats")
        liveAfter, reqsAfter, _ = (int(word) for word in relay.expect("stats"))
        ownersAfter = owners()
        load.send(f"report {timesPath} {','.join(str(k) for k in ownersBefore)}")
        report = json.loads(" ".join(load.expect("report")))

        lastFrame = max(report["lastFrame"].values(), default=lastPublish)
        window = max(lastFrame - firstPublish, 1e-6)
        perNode = []
        for k, node in enumerate(nodes):
            frames = report["framesByNode"].get(str(k), 0)
            cpu = cpuAfter[k] - cpuBefore[k]
            last = report["lastFrame"].get(str(k), lastFrame)
            perNode.append(
                {
                    "node": node.nodeId,
                    "clients": sum(placement[k]),
                    "leases": sum(1 for owner in ownersBefore if owner == k)
                    if redis is not None
                    else filters,
                    "leasesHeld": statsAfter[k].get("cluster", {}).get("leasesHeld"),
                    "frames": frames,
                    "rate": frames / max(last - firstPublish, 1e-6),
                    "cpu": cpu,
                    "perFrame": cpu * 1e6 / frames if frames else float("nan"),
                }
            )
        byCommand = {
            name: calls - infoBefore[1].get(name, 0)
            for name, calls in infoAfter[1].items()
            if name != "info"
        }
        totalCpu = sum(cpuAfter) - sum(cpuBefore)

        def clusterDelta(field: str) -> int:
            # The sum over the nodes of a /stats cluster counter's increase.
            return sum(
                after.get("cluster", {}).get(field, 0) - before.get("cluster", {}).get(field, 0)
                for before, after in zip(statsBefore, statsAfter, strict=True)
            )

        nodeCommands = clusterDelta("redisCommands")

        # Each event should be added to its stream once, by its filter set's
        # owner, and read once by every other node with clients on it.
        streamReaders = sum(
            sum(
                1
                for k in range(nodeCount)
                if placement[k][i % filters] and k != ownersBefore[i % filters]
            )
            for i in range(events)
        )
        lostRedis = []
        for node in nodes:
            with open(node.logPath, "rb") as log:
                losses = log.read().count(b"cluster: lost Redis")
            if losses:
                lostRedis.append(f"{node.nodeId} {losses}x")
        return {
            "label": label,
            "nodes": nodeCount,
            "redis": redis is not None,
            "failed": failed,
            "live": liveBefore,
            "liveAfter": liveAfter,
            "reqs": reqsAfter,
            "redisPerEvent": (infoAfter[0] - infoBefore[0] - 1) / events if redis else None,
            "nodePerEvent": nodeCommands / events if redis else None,
            "byCommand": byCommand,
            "redisCpu": (redisAfter - redisBefore) * 1e6 / events if redis else None,
            "frames": report["frames"],
            "expected": expected,
            "complete": complete,
            "own": report["own"],
            "other": report["other"],
            "clientCpu": (loaderAfter - loaderBefore) * 100 / window,
            "window": window,
            "perNode": perNode,
            "totalPerFrame": totalCpu * 1e6 / report["frames"] if report["frames"] else 0.0,
            "ownersChanged": ownersBefore != ownersAfter,
            "added": clusterDelta("eventsPublished"),
            "read": clusterDelta("eventsReceived"),
            "readers": streamReaders,
            "lostRedis": lostRedis,
            "owners": ownersBefore,
        }
    finally:
        if load is not None:
            load.stop()
        for node in nodes:
            node.stop()
        relay.stop()


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    return _figure(value, ".1f")


#: The columns of a configuration's row: heading and width (negative: to
#: the left).
_COLUMNS = (
    ("configuration", -17),
    ("live", 4),
    ("REQs", 5),
    ("Redis/ev", 8),
    ("node/ev", 7),
    ("Redis us", 8),
    ("frames", 7),
    ("lost", 5),
    ("p50own", 6),
    ("p99own", 6),
    ("p50oth", 6),
    ("p99oth", 6),
    ("client CPU", 10),
)
_NODE_COLUMNS = (
    ("    node", -8),
    ("clients", 7),
    ("leases", 9),
    ("frames", 7),
    ("frames/s", 8),
    ("CPU s", 6),
    ("us/frame", 8),
)
_RATIO_COLUMNS = (
    ("configuration", -17),
    ("live REQs", 9),
    ("REQs", 5),
    ("us/frame mean", 13),
    ("us/frame max", 12),
    ("cluster us/frame", 16),
)


def _row(columns: tuple[tuple[str, int], ...], values: list[str] | None = None) -> str:
    """
    @return: C{values} (or the headings) in C{columns}.
    """
    cells = values if values is not None else [heading for heading, _ in columns]
    return " ".join(
        f"{cell:<{-width}}" if width < 0 else f"{cell:>{width}}"
        for cell, (_, width) in zip(cells, columns, strict=True)
    )


def _print(result: dict[str, Any]) -> None:
    own, other = result["own"], result["other"]
    values = [
        result["label"],
        str(result["live"]),
        str(result["reqs"]),
        _figure(result["redisPerEvent"], ".2f"),
        _figure(result["nodePerEvent"], ".2f"),
        _figure(result["redisCpu"], ".0f"),
        str(result["frames"]),
        str(result["expected"] - result["frames"]),
        _ms(own[1]),
        _ms(own[2]),
        _ms(other[1]),
        _ms(other[2]),
        f"{result['clientCpu']:.0f}%",
    ]
    print(_row(_COLUMNS, values), flush=True)


def _printDetails(result: dict[str, Any], events: int) -> None:
    busiest = sorted(result["byCommand"].items(), key=lambda item: -item[1])
    shown = [f"{name} {calls / events:.2f}" for name, calls in busiest if calls][:6]
    if result["redis"]:
        print(f"    Redis commands per event: {', '.join(shown) or 'none'}")
        print(
            f"    stream entries: {result['added']} of {events} events added,"
            f" {result['read']} of {result['readers']} reads by other nodes"
        )
    if result["lostRedis"]:
        print(f"    nodes that lost their Redis link: {', '.join(result['lostRedis'])}")
    if result["liveAfter"] != result["live"]:
        print(f"    live REQs changed while publishing: {result['live']} -> {result['liveAfter']}")
    if result["ownersChanged"]:
        print("    a lease changed hands while publishing")
    if -2 in result["owners"]:
        print("    some filter sets had no lease holder in Redis")
    if result["failed"]:
        print(f"    {result['failed']} clients could not subscribe")
    if not result["complete"]:
        print(f"    delivery incomplete after {DRAIN_TIMEOUT:.0f} s")
    for node in result["perNode"]:
        held = node["leasesHeld"]
        leases = str(node["leases"])
        if held is not None and held != node["leases"]:
            leases += f" ({held})"
        values = [
            f"    {node['node']}",
            str(node["clients"]),
            leases,
            str(node["frames"]),
            f"{node['rate']:,.0f}",
            f"{node['cpu']:.2f}",
            f"{node['perFrame']:.1f}",
        ]
        print(_row(_NODE_COLUMNS, values), flush=True)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=600, help="clients in all (600)")
    parser.add_argument("--filters", type=int, default=10, help="distinct filter sets (10)")
    parser.add_argument("--events", type=int, default=2000, help="events published (2000)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    parser.add_argument("--nodes", default="1,2,3", help="cluster sizes (1,2,3)")
    parser.add_argument("--quick", action="store_true", help="150 clients, 300 events")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp dir with the nodes' logs"
    )
    options = parser.parse_args()
    if options.quick:
        options.clients, options.events = 150, 300
    sizes = [int(n) for n in options.nodes.split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if options.clients + FD_MARGIN > hard:
        parser.error(f"{options.clients} clients need more file descriptors than {hard}")
    if options.clients < max(sizes) * options.filters:
        parser.error("give at least one client per node and filter set")
    if min(options.events, options.filters, options.rate, *sizes) <= 0:
        parser.error("events, filters, rate and node counts must be positive")

    folder = tempfile.mkdtemp(prefix="bench-cluster-")
    redis = _Redis(folder)
    started = time.monotonic()
    try:
        print(
            f"{options.clients} clients, {options.filters} filter sets, {options.events} events"
            f" at {options.rate:.0f}/s; Redis {redis.version()}; {os.cpu_count()} cores;"
            f" RLIMIT_NOFILE {hard}"
        )
        print(_row(_COLUMNS))
        print(_row(_NODE_COLUMNS))
        configurations = [("1 node, no Redis", 1, False)] + [
            (f"{n} node{'s' if n > 1 else ''}, Redis", n, True) for n in sizes
        ]
        results = []
        for label, count, withRedis in configurations:
            try:
                result = _runConfiguration(
                    label, count, redis if withRedis else None, options, folder
                )
            except Exception as e:
                print(f"{label:<17} could not run: {e}", flush=True)
                continue
            results.append(result)
            _print(result)
            _printDetails(result, options.events)

        base = next((r for r in results if not r["redis"]), None)
        if base is not None:
            print()
            print("ratios to 1 node without Redis:")
            print(_row(_RATIO_COLUMNS))
            baseMean = sum(n["perFrame"] for n in base["perNode"]) / len(base["perNode"])
            baseMax = max(n["perFrame"] for n in base["perNode"])
            for result in results:
                mean = sum(n["perFrame"] for n in result["perNode"]) / len(result["perNode"])
                worst = max(n["perFrame"] for n in result["perNode"])
                values = [
                    result["label"],
                    _ratio(result["live"], base["live"]),
                    _ratio(result["reqs"], base["reqs"]),
                    _ratio(mean, baseMean),
                    _ratio(worst, baseMax),
                    _ratio(result["totalPerFrame"], base["totalPerFrame"]),
                ]
                print(_row(_RATIO_COLUMNS, values))
        print(f"run time {time.monotonic() - started:.0f} s")
    finally:
        redis.stop()
        if options.keep_logs:
            print(f"logs in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _exit(signum: int, frame: Any) -> None:
    # SIGTERM: stop the processes started (the finally clauses) and exit.
    sys.exit(1)


if __name__ == "__main__":
    raiseFileLimit()
    if "--role" in sys.argv:
        role = sys.argv[sys.argv.index("--role") + 1]
        if role == "relay":
            relayRole()
        else:
            loadRole()
    else:
        signal.signal(signal.SIGTERM, _exit)
        main()
