"""
Request/reply throughput of L{relaypool.transport.pool.Pool} against a bare Autobahn
connection, over a loopback echo server running in a separate process.

Usage: C{python bench/pool_request.py [--requests N] [--depth D] [--rounds R]}

Each run sends N requests keeping D in flight. The bare run drives one
L{tests.echo.EchoClientProtocol} directly; the pool runs go through
C{Pool.request} over 1, 2 and 4 connections to the same server. Each
figure is the best of R rounds; the ratio is pool / bare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUN_TIMEOUT = 120.0


def serve() -> None:
    """
    Run an echo server on 127.0.0.1 and print its port.
    """
    from twisted.internet import reactor

    from tests.echo import EchoServerFactory

    port = reactor.listenTCP(0, EchoServerFactory(), interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


async def drive(send: Callable[[bytes], Any], total: int, depth: int) -> float:
    """
    Send C{total} requests through C{send}, C{depth} at a time.

    @return: requests per second.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    finished: Deferred[None] = Deferred()
    counts = {"sent": 0, "received": 0}
    payload = b"x" * 64

    def one() -> None:
        counts["sent"] += 1
        send(payload).addCallbacks(replied, finished.errback)

    def replied(reply: bytes) -> None:
        counts["received"] += 1
        if counts["sent"] < total:
            one()
        elif counts["received"] == total:
            finished.callback(None)

    started = time.perf_counter()
    for _ in range(min(depth, total)):
        one()
    await finished.addTimeout(RUN_TIMEOUT, reactor)
    return total / (time.perf_counter() - started)


async def bare(port: int, total: int, depth: int) -> float:
    """
    @return: requests per second over one bare Autobahn connection.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from tests.echo import clientFactory

    factory = clientFactory(f"ws://127.0.0.1:{port}")
    factory.setProtocolOptions(maxMessagePayloadSize=1 << 20, maxFramePayloadSize=1 << 20)
    protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    await protocol.is_open
    try:
        return await drive(protocol.request, total, depth)
    finally:
        protocol.sendClose(1000)
        await protocol.is_closed


async def pooled(port: int, connections: int, total: int, depth: int) -> float:
    """
    @return: requests per second through a L{Pool} of C{connections}.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from relaypool.transport.mux import UniformMultiplexer
    from relaypool.transport.names import StaticNameService
    from relaypool.transport.pool import Pool
    from tests.echo import clientFactory

    name = f"127.0.0.1:{port}"
    mux = UniformMultiplexer(
        reactor,
        StaticNameService(),
        name,
        clientFactory(f"ws://{name}"),
        connectionsPerAddress=connections,
    )
    pool = Pool(reactor, mux, queueSize=depth, maxInFlight=depth)
    pool.startService()
    try:
        for _ in range(500):
            if len(mux.readyConnections()) == connections:
                break
            await deferLater(reactor, 0.01, lambda: None)
        return await drive(pool.request, total, depth)
    finally:
        await pool.stopService()


async def main(options: argparse.Namespace) -> None:
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        total, depth = options.requests, options.depth
        await bare(port, min(total, 2000), depth)
        results: dict[str, float] = {}
        for _ in range(options.rounds):
            runs: list[tuple[str, Any]] = [("bare", lambda: bare(port, total, depth))]
            runs += [(f"pool x{n}", lambda n=n: pooled(port, n, total, depth)) for n in (1, 2, 4)]
            for label, run in runs:
                results[label] = max(results.get(label, 0.0), await run())
        print(f"{total} requests, {depth} in flight, best of {options.rounds} rounds")
        for label, rate in results.items():
            print(f"{label:>8}: {rate:10.0f} req/s  ratio {rate / results['bare']:.2f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    if arguments.serve:
        serve()
    else:
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.task import react

        react(lambda reactor: ensureDeferred(main(arguments)))
