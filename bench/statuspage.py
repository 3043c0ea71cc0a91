"""
Take a screenshot of the status page, by hand (for the README):

    python bench/statuspage.py --screenshot docs/status-page.png [--seconds 60]

Runs a daemon in-process with three fake relays (relaypool.testing) and one
relay nothing listens on, a few clients subscribed to kind 1 and one
publishing, and events arriving at a rate that varies per relay; stops one
relay two thirds of the way through; then opens the page in headless
Chromium (Debian's chromium package) and saves a PNG. The page's charts
sample every second here (--status-page-interval 1) so that a minute of
traffic fills them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.internet.utils import getProcessOutputAndValue

from relaypool.daemon.config import buildConfig
from relaypool.daemon.service import RelayPoolService
from relaypool.nostr.nip11 import RelayInformation
from relaypool.testing import FakeRelay, makeEvent

_NAMES = ["nos.example (fake)", "relay.example (fake)", "archive.example (fake)"]
_UNREACHABLE = "ws://127.0.0.1:9"


class _Client(WebSocketClientProtocol):  # type: ignore[misc]
    """
    A downstream client that subscribes to kind 1 and ignores what arrives.
    """

    def onOpen(self) -> None:
        self.sendMessage(b'["REQ","feed",{"kinds":[1],"limit":0}]')


async def _connectClient(reactor: Any, port: int) -> _Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
    factory.protocol = _Client
    client: _Client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    return client


async def _screenshot(reactor: Any, url: str, path: str, width: int, height: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("statuspage: chromium not found: apt-get install -y chromium")
    profile = tempfile.mkdtemp(prefix="relaypool-screenshot-")
    args = [
        "--headless=new",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=4000",
        f"--screenshot={os.path.abspath(path)}",
        url,
    ]
    if os.getuid() == 0:
        args.insert(0, "--no-sandbox")
    try:
        out, err, code = await getProcessOutputAndValue(chromium, args, env=dict(os.environ))
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if code != 0 or not os.path.exists(path):
        raise SystemExit(f"statuspage: chromium failed ({code}): {err.decode(errors='replace')[-500:]}")


async def main(reactor: Any, options: argparse.Namespace) -> None:
    relays = []
    for name in _NAMES:
        relay = FakeRelay(information=RelayInformation(name=name))
        await relay.start()
        relays.append(relay)
    directory = tempfile.mkdtemp(prefix="relaypool-statuspage-")
    daemon = RelayPoolService(
        buildConfig(
            overrides={
                "listen": "tcp:0:interface=127.0.0.1",
                "store": os.path.join(directory, "relaypool.db"),
                "relays": [relay.url for relay in relays] + [_UNREACHABLE],
                "status-interval": "0",
                "status-page-interval": "1",
                "status-page-history": str(options.seconds + 1),
            }
        ),
        reactor=reactor,
    )
    daemon.startService()
    assert daemon.gateway is not None
    port = (await daemon.gateway.whenListening()).getHost().port
    url = f"http://127.0.0.1:{port}/"
    print(f"statuspage: serving {url} for {options.seconds} s", file=sys.stderr)
    clients = [await _connectClient(reactor, port) for _ in range(6)]
    start = time.monotonic()
    stopped: list[FakeRelay] = []

    def traffic() -> None:
        elapsed = time.monotonic() - start
        for index, relay in enumerate(relays):
            if relay in stopped:
                continue
            rate = (4 + 3 * index) * (1.2 + math.sin(elapsed / (6 + 3 * index) + index))
            for _ in range(int(rate * 0.2 + 0.5)):
                relay.store(makeEvent(content=f"note {elapsed:.1f}"))
        if int(elapsed * 5) % 10 == 0:
            event = makeEvent(content="published through the pool")
            clients[0].sendMessage(b'["EVENT",' + event.toJSON() + b"]")
        if elapsed > options.seconds * 2 / 3 and not stopped:
            stopped.append(relays[2])
            relays[2].stop(abort=True)

    loop = LoopingCall(traffic)
    loop.clock = reactor
    loop.start(0.2)
    await deferLater(reactor, options.seconds, lambda: None)
    await _screenshot(reactor, url, options.screenshot, options.width, options.height)
    loop.stop()
    print(f"statuspage: wrote {options.screenshot}", file=sys.stderr)
    for client in clients:
        client.dropConnection(abort=True)
    await daemon.stopService()
    done: list[Deferred[None]] = [relay.stop() for relay in relays]
    for d in done:
        await d
    shutil.rmtree(directory, ignore_errors=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", required=True, metavar="PNG", help="the file to write")
    parser.add_argument("--seconds", type=int, default=60, help="seconds of traffic first")
    parser.add_argument("--width", type=int, default=1360)
    parser.add_argument("--height", type=int, default=700)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = _parse(sys.argv[1:])
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
