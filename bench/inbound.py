"""
Inbound throughput: K relays serving the same M signed events to one
subscription, received by RelayPool, by a bare Autobahn floor and by
nostr-sdk.

Usage: C{python bench/inbound.py [--relays 1,5,20] [--events 20000]
[--repeat 3]}

One server process hosts the L{relaypool.testing.FakeRelay}s (as many as
the largest K), each storing the same M kind-1 events; a run at K relays
uses the first K. Every measured client runs in a fresh process of
its own, so its CPU is its own and its C{ru_maxrss} is its peak RSS. A run
is timed from the moment the subscription is sent (every connection already
open) to the moment every relay's EOSE was handled; it must deliver exactly
M unique events. Variants:

    - C{pool verify} / C{pool no-verify}: L{relaypool.upstream.relaypool.RelayPool}
      with C{verify} on or off, counting C{Subscription.onEvent}
      calls;
    - C{floor verify} / C{floor no-verify}: K bare Autobahn client
      protocols doing, for each EVENT frame, C{orjson.loads}, a C{set}
      lookup of the id, and for unique ones C{Event.fromDict} (and
      C{Event.verify});
    - C{nostr-sdk notify}: nostr-sdk's C{Client.subscribe} consumed through
      C{Client.notifications()} (C{NEW_EVENT} for events, C{MESSAGE} for
      the EOSEs), in asyncio;
    - C{nostr-sdk fetch}: nostr-sdk's C{Client.fetch_events} (exit on EOSE
      from every relay), which returns the deduplicated list at the end.

Each figure is the best of C{--repeat} runs; the ratio of a C{verify}
variant is against C{floor verify}, of a C{no-verify} one against
C{floor no-verify}; nostr-sdk verifies signatures, so its ratio is against
C{floor verify}. C{cpu s} is the client process's CPU time over the run
(all its threads: nostr-sdk's Rust runtime has several, the Twisted
clients one and, in C{pool verify}, its verification thread); C{main s}
the CPU time of the thread that runs the reactor (or asyncio loop). RSS
columns: C{base} is the peak RSS once the client is connected and ready,
C{peak} the largest peak of its runs.

Every variant runs at K = C{--table-relays} (5) and is printed in one table;
at each other K of C{--relays} the four Twisted variants run, and a last
table gives, per K, the CPU microseconds per unique event and per EVENT
frame received, to show how the cost grows with the number of relays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONNECT_TIMEOUT = 10.0
"""
Seconds a client may take to open every connection.
"""

EOSE_TIMEOUT = 60.0
"""
Seconds a run may take from subscribing to the last EOSE.
"""

RUN_TIMEOUT = EOSE_TIMEOUT + 2 * CONNECT_TIMEOUT
"""
Seconds the orchestrator waits for a client process before killing it.
"""

MAX_MESSAGE_SIZE = 1 << 20
"""
The Autobahn message and frame bound of the floor, as RelayPool's default.
"""

SUBSCRIPTION_ID = "inbound"

TARGET = 1.25
"""
The share of the floor's rate that C{pool verify} should reach (at
C{--table-relays}).
"""

NO_VERIFY_TARGET = 0.95
"""
The share of the floor's rate that C{pool no-verify} should reach.
"""

GROWTH_VARIANTS = ("floor verify", "pool verify", "floor no-verify", "pool no-verify")
"""
The variants run at every number of relays, for the growth table.
"""


def _maxRSS() -> int:
    """
    @return: the peak RSS of this process so far, in bytes (Linux reports
        kilobytes).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Measurement:
    """
    One timed run: created when the subscription is about to be sent.
    """

    def __init__(self) -> None:
        self.baseRSS = _maxRSS()
        self.started = time.perf_counter()
        self.startedCPU = time.process_time()
        self.startedThreadCPU = time.thread_time()

    def report(self, unique: int) -> None:
        """
        Print the run's figures as one JSON line.
        """
        print(
            json.dumps(
                {
                    "seconds": time.perf_counter() - self.started,
                    "cpu": time.process_time() - self.startedCPU,
                    "mainCPU": time.thread_time() - self.startedThreadCPU,
                    "unique": unique,
                    "baseRSS": self.baseRSS,
                    "peakRSS": _maxRSS(),
                }
            ),
            flush=True,
        )


# --- the relay process --------------------------------------------------------


def serve(relays: int, events: int) -> None:
    """
    Run C{relays} FakeRelays on 127.0.0.1, each storing the same C{events}
    signed kind-1 events; print their URLs on one line, and stop when
    standard input closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import gatherResults
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure

    from relaypool.testing import FakeRelay, makeEvent

    batch = [makeEvent(content=f"inbound bench event {i}") for i in range(events)]
    fakes = [FakeRelay(reactor, verify=False) for _ in range(relays)]

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: Failure | None = None) -> None:
            gatherResults([fake.stop(abort=True) for fake in fakes]).addBoth(
                lambda _: reactor.stop()
            )

    def started(_: object) -> None:
        print(" ".join(fake.url for fake in fakes), flush=True)
        stdio.StandardIO(StopOnEOF())  # type: ignore[no-untyped-call]

    for fake in fakes:
        fake.store(*batch)
    gatherResults([fake.start() for fake in fakes]).addCallback(started)
    reactor.run()


# --- measured clients: Twisted ------------------------------------------------


async def _poll(ready: Callable[[], bool], what: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + CONNECT_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


async def runPool(urls: Sequence[str], events: int, verify: bool) -> None:
    """
    Receive the events through a L{RelayPool} subscription and report.
    """
    from twisted.internet import reactor

    from relaypool.nostr.event import Event
    from relaypool.nostr.filter import Filter
    from relaypool.transport.names import StaticNameService
    from relaypool.upstream.relaypool import RelayPool

    pool = RelayPool(
        reactor,
        nameService=StaticNameService(),
        verify=verify,
        dedupSize=events + 5000,
        eoseTimeout=EOSE_TIMEOUT,
        fetchInformation=False,
    )
    for url in urls:
        pool.addRelay(url)
    pool.startService()
    try:
        await _poll(lambda: len(pool.activeRelayURLs()) == len(urls), "the relays")
        seen: set[str] = set()

        def received(event: Event, relayURL: str) -> None:
            seen.add(event.id)

        measurement = _Measurement()
        subscription = pool.subscribe([Filter.fromDict({"kinds": [1]})], eoseTimeout=EOSE_TIMEOUT)
        subscription.onEvent(received)
        await subscription.whenEOSE()
        measurement.report(len(seen))
    finally:
        await pool.stopService()


async def runFloor(urls: Sequence[str], events: int, verify: bool) -> None:
    """
    Receive the events over bare Autobahn connections, parsing and (if
    C{verify}) verifying each unique one, and report.
    """
    import orjson
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from relaypool.nostr.event import Event

    seen: set[str] = set()
    eoses = [0]
    finished: Deferred[None] = Deferred()

    class FloorProtocol(WebSocketClientProtocol):  # type: ignore[misc]
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            message = orjson.loads(payload)
            if message[0] == "EVENT":
                raw = message[2]
                eventId = raw["id"]
                if eventId not in seen:
                    event = Event.fromDict(raw)
                    if verify:
                        event.verify()
                    seen.add(eventId)
            elif message[0] == "EOSE":
                eoses[0] += 1
                if eoses[0] == len(urls):
                    finished.callback(None)

    protocols: list[FloorProtocol] = []
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        factory = WebSocketClientFactory(url)  # type: ignore[no-untyped-call]
        factory.protocol = FloorProtocol
        factory.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            autoPingInterval=0,
        )
        endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port)
        protocols.append(cast(FloorProtocol, await endpoint.connect(factory)))
    try:
        await gatherResults([p.is_open for p in protocols]).addTimeout(CONNECT_TIMEOUT, reactor)
        request = orjson.dumps(["REQ", SUBSCRIPTION_ID, {"kinds": [1]}])
        measurement = _Measurement()
        for protocol in protocols:
            protocol.sendMessage(request)  # type: ignore[no-untyped-call]
        await finished.addTimeout(EOSE_TIMEOUT, reactor)
        measurement.report(len(seen))
    finally:
        for protocol in protocols:
            protocol.sendClose(1000)
        await gatherResults([p.is_closed for p in protocols])


# --- measured clients: nostr-sdk (asyncio) ------------------------------------


async def _sdkClient(urls: Sequence[str], notifications: int | None = None) -> Any:
    """
    @param notifications: the size of the client's notification channel
        (C{None} for nostr-sdk's default).
    @return: a nostr-sdk client connected to C{urls}.
    """
    from datetime import timedelta

    from nostr_sdk import ClientBuilder, RelayUrl  # type: ignore[import-untyped]

    builder = ClientBuilder()
    if notifications is not None:
        builder = builder.notification_channel_size(notifications)
    client = builder.build()
    for url in urls:
        await client.add_relay(RelayUrl.parse(url))
    await client.connect(and_wait=timedelta(seconds=CONNECT_TIMEOUT))
    return client


def _sdkFilters() -> Any:
    from nostr_sdk import Filter, Kind, ReqTarget  # type: ignore[import-untyped]

    return ReqTarget.auto([Filter().kind(Kind(1))])


async def runSDKNotifications(urls: Sequence[str], events: int) -> None:
    """
    Receive the events through nostr-sdk's C{subscribe} and C{notifications}
    and report.
    """
    import asyncio

    # The notification channel is a broadcast channel that drops what a slow
    # reader has not taken yet (with the default 4096, a Python reader sees
    # under a fifth of the events): make room for a MESSAGE per EVENT frame,
    # a NEW_EVENT per frame at worst, and the EOSEs.
    client = await _sdkClient(urls, notifications=2 * len(urls) * events + len(urls))
    try:
        stream = client.notifications()
        seen: set[str] = set()
        eoses = 0

        async def consume() -> None:
            nonlocal eoses
            while eoses < len(urls):
                notification = await stream.next()
                if notification is None:
                    raise RuntimeError("nostr-sdk closed its notification stream")
                if notification.is_new_event():
                    seen.add(notification.event.id().to_hex())
                elif (
                    notification.is_message()
                    and notification.message.as_enum().is_end_of_stored_events()
                ):
                    eoses += 1

        measurement = _Measurement()
        await client.subscribe(_sdkFilters(), id=SUBSCRIPTION_ID)
        await asyncio.wait_for(consume(), EOSE_TIMEOUT)
        measurement.report(len(seen))
    finally:
        await client.shutdown()


async def runSDKFetch(urls: Sequence[str], events: int) -> None:
    """
    Fetch the events with nostr-sdk's C{fetch_events} (exit on EOSE) and
    report.
    """
    from datetime import timedelta

    client = await _sdkClient(urls)
    try:
        measurement = _Measurement()
        fetched = await client.fetch_events(
            _sdkFilters(), timeout=timedelta(seconds=EOSE_TIMEOUT), max_events=len(urls) * events
        )
        unique = len({event.id().to_hex() for event in fetched})
        measurement.report(unique)
    finally:
        await client.shutdown()


def runClient(variant: str, urls: Sequence[str], events: int) -> None:
    """
    Run one measured client in this process; it prints its figures as one
    JSON line.
    """
    if variant.startswith("nostr-sdk"):
        import asyncio

        fetch = runSDKNotifications if variant == "nostr-sdk notify" else runSDKFetch
        asyncio.run(fetch(urls, events))
        return
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    kind, mode = variant.split(" ", 1)
    run = runPool if kind == "pool" else runFloor
    react(lambda reactor: ensureDeferred(run(urls, events, mode == "verify")))


# --- the orchestrator ---------------------------------------------------------

VARIANTS = (
    "floor verify",
    "pool verify",
    "floor no-verify",
    "pool no-verify",
    "nostr-sdk notify",
    "nostr-sdk fetch",
)

FLOORS = {
    "floor verify": "floor verify",
    "pool verify": "floor verify",
    "floor no-verify": "floor no-verify",
    "pool no-verify": "floor no-verify",
    "nostr-sdk notify": "floor verify",
    "nostr-sdk fetch": "floor verify",
}


def measure(variant: str, urls: Sequence[str], events: int) -> dict[str, Any] | None:
    """
    Run one client variant in a fresh process.

    @return: its figures, or L{None} (after printing why) if it failed.
    """
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--client",
        variant,
        "--events",
        str(events),
    ]
    try:
        done = subprocess.run(
            command + ["--urls", *urls], capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        print(f"error: {variant}: no result after {RUN_TIMEOUT:.0f}s", flush=True)
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        print(f"error: {variant}: exit status {done.returncode}\n{tail}", flush=True)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    if result["unique"] != events:
        print(f"error: {variant}: {result['unique']} unique events, expected {events}", flush=True)
    return result


def measureAll(
    options: argparse.Namespace, urls: Sequence[str], variants: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """
    Run each of C{variants} C{--repeat} times against C{urls}.

    @return: the best run of each variant (fastest), and its largest peak RSS.
    """
    best: dict[str, dict[str, Any]] = {}
    peaks: dict[str, int] = {}
    for _ in range(options.repeat):
        for variant in variants:
            result = measure(variant, urls, options.events)
            if result is None or result["unique"] != options.events:
                continue
            peaks[variant] = max(peaks.get(variant, 0), result["peakRSS"])
            if variant not in best or result["seconds"] < best[variant]["seconds"]:
                best[variant] = result
    return best, peaks


def main(options: argparse.Namespace) -> None:
    sizes = sorted(set(options.relays) | {options.table_relays})
    server = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            "--relays",
            str(sizes[-1]),
            "--events",
            str(options.events),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        urls = server.stdout.readline().split()
        if len(urls) != sizes[-1]:
            raise SystemExit("error: the relay process did not start")
        growth: dict[int, dict[str, dict[str, Any]]] = {}
        for relays in sizes:
            if relays == options.table_relays:
                variants = options.variants
            else:
                variants = [v for v in options.variants if v in GROWTH_VARIANTS]
            best, peaks = measureAll(options, urls[:relays], variants)
            if relays == options.table_relays:
                _table(options, best, peaks)
            if relays in options.relays:
                growth[relays] = best
        _growth(options, growth)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _ratio(best: dict[str, dict[str, Any]], variant: str) -> float | None:
    """
    @return: how many times as fast as its floor C{variant} was, if both ran.
    """
    result, floor = best.get(variant), best.get(FLOORS[variant])
    if result is None or floor is None:
        return None
    ratio: float = floor["seconds"] / result["seconds"]
    return ratio


def _table(
    options: argparse.Namespace, best: dict[str, dict[str, Any]], peaks: dict[str, int]
) -> None:
    print(
        f"{options.table_relays} relays x {options.events} events (one kind-1 subscription), "
        f"best of {options.repeat}; python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print(
        f"{'variant':<17} {'seconds':>8} {'cpu s':>6} {'main s':>6} {'unique ev/s':>12} "
        f"{'vs floor':>9} {'base MB':>8} {'peak MB':>8}"
    )
    megabyte = 1 << 20
    for variant in options.variants:
        result = best.get(variant)
        if result is None:
            print(f"{variant:<17} {'failed':>8}")
            continue
        rate = options.events / result["seconds"]
        ratio = _ratio(best, variant)
        shown = "-" if ratio is None else f"{ratio:.2f}"
        print(
            f"{variant:<17} {result['seconds']:8.3f} {result['cpu']:6.2f} {result['mainCPU']:6.2f} "
            f"{rate:12.0f} {shown:>9} {result['baseRSS'] / megabyte:8.1f} "
            f"{peaks[variant] / megabyte:8.1f}"
        )
    for variant, target in (("pool verify", TARGET), ("pool no-verify", NO_VERIFY_TARGET)):
        ratio = _ratio(best, variant)
        if ratio is not None:
            verdict = "met" if ratio >= target else "MISSED"
            print(
                f"{variant} vs {FLOORS[variant]}: {ratio:.2f} (target >= {target:.2f}: {verdict})"
            )
    for variant in ("pool verify", "pool no-verify"):
        result, floor = best.get(variant), best.get(FLOORS[variant])
        if result is not None and floor is not None:
            rss = peaks[variant] / peaks[FLOORS[variant]]
            print(f"{variant} peak RSS vs {FLOORS[variant]}: {rss:.2f} (target <= 1.20)")
    pool = best.get("pool verify")
    for sdk in ("nostr-sdk notify", "nostr-sdk fetch"):
        other = best.get(sdk)
        if pool is not None and other is not None:
            print(f"pool verify vs {sdk}: {other['seconds'] / pool['seconds']:.2f}x as fast")


def _growth(options: argparse.Namespace, growth: dict[int, dict[str, dict[str, Any]]]) -> None:
    if not growth:
        return
    print(
        f"cost per event as relays grow ({options.events} events, best of {options.repeat}): "
        "CPU us per unique event / per EVENT frame received, seconds, vs floor"
    )
    variants = [v for v in options.variants if v in GROWTH_VARIANTS]
    print(f"{'relays':>6} " + " ".join(f"{v:>29}" for v in variants))
    for relays, best in sorted(growth.items()):
        cells = []
        for variant in variants:
            result = best.get(variant)
            if result is None:
                cells.append(f"{'failed':>29}")
                continue
            perEvent = result["cpu"] / options.events * 1e6
            perFrame = perEvent / relays
            ratio = _ratio(best, variant)
            shown = "-" if ratio is None else f"{ratio:.2f}"
            cells.append(
                f"{perEvent:7.1f} /{perFrame:6.1f} {result['seconds']:7.2f}s {shown:>5}"
            )
        print(f"{relays:>6} " + " ".join(cells))


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"relay counts must be positive: {text!r}")
    return sizes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--relays",
        type=_sizes,
        default=[1, 5, 20],
        help="numbers of relays to measure at, comma-separated (default 1,5,20); "
        "with --serve, how many to serve",
    )
    parser.add_argument(
        "--table-relays",
        type=int,
        default=5,
        help="the number of relays every variant runs at (default 5)",
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"which clients to run, among: {', '.join(repr(v) for v in VARIANTS)}",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=VARIANTS, help="run one client against --urls")
    parser.add_argument("--urls", nargs="+", default=[], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.relays[0], arguments.events)
    elif arguments.client is not None:
        runClient(arguments.client, arguments.urls, arguments.events)
    else:
        main(arguments)
