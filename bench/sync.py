"""
Benchmark of NIP-77 sync: two stores of N events (100,000 by default) that
differ by 1% each way, reconciled over a real WebSocket on 127.0.0.1 by
L{RelayPool.sync} against a relaypool gateway serving the other store,

  - by negentropy (NIP-77), then
  - by the fallback a relay without NIP-77 leaves: a REQ for every event of
    the filter, compared with the store,

printed side by side: bytes on the wire (WebSocket payloads, both
directions), seconds, events fetched. The ids-only line is what a
hypothetical "send me every id" request would move at the least (67 bytes
per id in a JSON list); it is computed, not measured: NIP-01 has no such
request.

    python bench/sync.py                 # 100,000 events, 1% differences
    python bench/sync.py --events 20000  # smaller
    python bench/sync.py --quick         # 5,000 events

Events are signed (the pool verifies what it fetches, both ways).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import gatherResults

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relaypool.gateway.gateway import Gateway  # noqa: E402
from relaypool.gateway.limits import GatewayLimits  # noqa: E402
from relaypool.nostr.event import Event, generatePrivateKey  # noqa: E402
from relaypool.nostr.filter import Filter  # noqa: E402
from relaypool.store.sqlite import SQLiteEventStore  # noqa: E402
from relaypool.testing import makeEvent  # noqa: E402
from relaypool.transport.names import StaticNameService  # noqa: E402
from relaypool.upstream.relay import Relay, RelayConnection  # noqa: E402
from relaypool.upstream.relaypool import RelayPool  # noqa: E402

ID_IN_JSON_LIST = 67


class WireCounter:
    """
    Counts the WebSocket payload bytes the pool's relay connections send
    and receive.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._sendText = RelayConnection.sendText
        self._frameReceived = Relay._frameReceived
        counter = self

        def sendText(connection: RelayConnection, data: bytes) -> None:
            counter.sent += len(data)
            counter._sendText(connection, data)

        def frameReceived(relay: Relay, connection: RelayConnection, payload: bytes) -> None:
            counter.received += len(payload)
            counter._frameReceived(relay, connection, payload)

        RelayConnection.sendText = sendText  # type: ignore[method-assign]
        Relay._frameReceived = frameReceived  # type: ignore[method-assign]

    def reset(self) -> None:
        self.sent = self.received = 0


def makeEvents(count: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    keys = [generatePrivateKey() for _ in range(50)]
    start = 1_700_000_000
    return [
        makeEvent(
            1,
            f"note {seed}-{n} {rng.getrandbits(64):x}",
            createdAt=start + n * 3 + rng.randrange(3),
            privateKey=keys[n % len(keys)],
        )
        for n in range(count)
    ]


async def fill(store: SQLiteEventStore, events: list[Event]) -> None:
    for start in range(0, len(events), 5000):
        await gatherResults([store.save(e) for e in events[start : start + 5000]])


async def measure(
    reactor: Any, events: int, differ: float, folder: str
) -> None:
    different = max(1, int(events * differ))
    print(f"generating and signing {events + different:,} events ...", flush=True)
    common = makeEvents(events - different, seed=1)
    onlyRelay = makeEvents(different, seed=2)
    onlyPool = makeEvents(different, seed=3)

    # No cap on what one REQ returns, so that the fallback needs one page.
    relayStore = SQLiteEventStore(os.path.join(folder, "relay.db"), reactor, maxLimit=10 * events)
    await fill(relayStore, common + onlyRelay)
    limits = GatewayLimits(maxLimit=10 * events, negMaxRecords=10 * events)
    gateway = Gateway(reactor, None, "tcp:0:interface=127.0.0.1", store=relayStore, limits=limits)
    gateway.startService()
    port = await gateway.whenListening()
    url = f"ws://127.0.0.1:{port.getHost().port}/"
    counter = WireCounter()
    rows = []
    for method in ("negentropy", "req"):
        poolStore = SQLiteEventStore(os.path.join(folder, f"pool-{method}.db"), reactor)
        await fill(poolStore, common + onlyPool)
        pool = RelayPool(
            reactor,
            nameService=StaticNameService(),
            store=poolStore,
            fetchInformation=False,
            eoseTimeout=600.0,
            ringCapacity=1 << 20,
            dedupSize=4 * events,
        )
        pool.addRelay(url)
        pool.startService()
        relay = pool.relay(url)
        while not relay.isConnected():
            await task.deferLater(reactor, 0.01, lambda: None)
        if method == "req":
            relay.negentropyRefused = "bench: the REQ fallback"
        counter.reset()
        started = time.perf_counter()
        results = await pool.sync([Filter(kinds=frozenset({1}))], timeout=600.0)
        seconds = time.perf_counter() - started
        result = results[url]
        assert result.method == method, result
        assert result.need == different and result.fetched == different, result
        rows.append((method, counter.sent, counter.received, seconds, result.fetched, result.have))
        await pool.stopService()
        await poolStore.close()
    await gateway.stopService()
    await relayStore.close()

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"stores: {events:,} events each, {different:,} only on each side ({differ:.0%})")
    print(f"{'method':<28} {'sent':>12} {'received':>14} {'total':>14} {'seconds':>8} {'fetched':>8}")
    for method, sent, received, seconds, fetched, _ in rows:
        label = "negentropy (NIP-77)" if method == "negentropy" else "REQ every event (no NIP-77)"
        print(f"{label:<28} {sent:>12,} {received:>14,} {sent + received:>14,} {seconds:>8.2f} {fetched:>8,}")
    idsOnly = events * ID_IN_JSON_LIST
    print(f"{'ids only (computed bound)':<28} {'':>12} {idsOnly:>14,} {idsOnly:>14,} {'-':>8} {'-':>8}")
    negentropy = rows[0][1] + rows[0][2]
    req = rows[1][1] + rows[1][2]
    print()
    print(
        f"ratio, bytes: negentropy / REQ every event = {negentropy / req:.3f}; "
        f"negentropy / ids only = {negentropy / idsOnly:.3f}"
    )
    print(f"ratio, time:  negentropy / REQ every event = {rows[0][3] / rows[1][3]:.3f}")


def main(reactor: Any, arguments: argparse.Namespace) -> Any:
    folder = tempfile.mkdtemp(prefix="relaypool-sync-bench-")
    return task.Deferred.fromCoroutine(measure(reactor, arguments.events, arguments.differ, folder))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events in each store")
    parser.add_argument("--differ", type=float, default=0.01, help="share of each store the other lacks")
    parser.add_argument("--quick", action="store_true", help="5,000 events")
    options = parser.parse_args()
    if options.quick:
        options.events = 5000
    task.react(main, [options])
