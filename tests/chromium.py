"""
Headless Chromium for the tests, driven over the DevTools protocol with
Autobahn's WebSocket client: open a page, evaluate JavaScript in it, wait
(boundedly) for a condition on its rendered DOM.

Debian's C{chromium} package provides the browser; L{findChromium} says
whether it is there.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import orjson
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

MISSING = (
    "headless Chromium is needed for the status page tests: "
    "install Debian's chromium package (apt-get install -y chromium)"
)

_LISTENING = re.compile(rb"DevTools listening on (ws://127\.0\.0\.1:(\d+)/\S+)")


def findChromium() -> str | None:
    """
    @return: the path of the C{chromium} executable, or L{None}.
    """
    return shutil.which("chromium")


class _Process(ProcessProtocol):
    """
    Chromium's process: fires C{listening} with the DevTools port read from
    its standard error; C{ended} once it exited.
    """

    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended = False
        self._stderr = b""

    def errReceived(self, data: bytes) -> None:
        if self.listening.called:
            return
        self._stderr = (self._stderr + data)[-16384:]
        match = _LISTENING.search(self._stderr)
        if match is not None:
            self.listening.callback(int(match.group(2)))

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            self.listening.errback(
                RuntimeError(f"chromium exited before listening: {' | '.join(tail)}")
            )
        self.ended = True


class _DevTools(WebSocketClientProtocol):  # type: ignore[misc]
    """
    One DevTools protocol connection, to a page: commands with their ids,
    answers matched to them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[_DevTools] = Deferred()
        self._next = 0
        self._waiting: dict[int, Deferred[Any]] = {}

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = orjson.loads(payload)
        waiter = self._waiting.pop(message.get("id", -1), None)
        if waiter is None:
            return
        if "error" in message:
            waiter.errback(RuntimeError(f"DevTools error: {message['error']}"))
        else:
            waiter.callback(message.get("result", {}))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(RuntimeError(f"DevTools connection closed: {reason}"))

    def command(self, method: str, **params: Any) -> Deferred[Any]:
        self._next += 1
        d: Deferred[Any] = Deferred()
        self._waiting[self._next] = d
        self.sendMessage(orjson.dumps({"id": self._next, "method": method, "params": params}))
        return d


class HeadlessChromium:
    """
    A headless Chromium process with one page, for a test.

    @ivar reactor: the (real) reactor.
    @ivar timeout: seconds any one step may take.
    """

    def __init__(self, reactor: Any, timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self._process: _Process | None = None
        self._transport: Any = None
        self._page: _DevTools | None = None
        self._profile: str | None = None

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start Chromium (with a fresh profile) and connect to a blank page.

        @raise RuntimeError: if Chromium is not installed or does not start.
        """
        executable = findChromium()
        if executable is None:
            raise RuntimeError(MISSING)
        self._profile = tempfile.mkdtemp(prefix="relaypool-chromium-")
        args = [
            executable,
            "--headless=new",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "about:blank",
        ]
        if os.getuid() == 0:
            # Chromium's sandbox refuses to run as root.
            args.insert(2, "--no-sandbox")
        self._process = _Process()
        self._transport = self.reactor.spawnProcess(
            self._process, executable, args, env=dict(os.environ)
        )
        port = yield self._process.listening.addTimeout(self.timeout, self.reactor)
        response = yield treq.get(
            f"http://127.0.0.1:{port}/json/list", persistent=False
        ).addTimeout(self.timeout, self.reactor)
        targets = yield treq.json_content(response)
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise RuntimeError(f"chromium has no page to drive: {targets!r}")
        url = pages[0]["webSocketDebuggerUrl"]
        factory = WebSocketClientFactory(url)
        factory.protocol = _DevTools
        factory.setProtocolOptions(maxMessagePayloadSize=64 << 20, maxFramePayloadSize=64 << 20)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        protocol = yield endpoint.connect(factory).addTimeout(self.timeout, self.reactor)
        self._page = yield protocol.opened.addTimeout(self.timeout, self.reactor)

    def command(self, method: str, **params: Any) -> Deferred[Any]:
        """
        Send a DevTools command to the page.

        @return: a Deferred firing with its result (failing after
            C{timeout} seconds).
        """
        assert self._page is not None, "start() first"
        return self._page.command(method, **params).addTimeout(self.timeout, self.reactor)

    def navigate(self, url: str) -> Deferred[Any]:
        """
        Load C{url} in the page (as a browser's navigation: with its
        C{Accept: text/html...} header).
        """
        return self.command("Page.navigate", url=url)

    @inlineCallbacks
    def evaluate(self, expression: str) -> Any:
        """
        @return: the JSON-able value of C{expression} in the page.
        @raise RuntimeError: if it threw.
        """
        result = yield self.command("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    @inlineCallbacks
    def waitFor(
        self, expression: str, predicate: Callable[[Any], bool], timeout: float = 20.0
    ) -> Any:
        """
        Evaluate C{expression} every 100 ms until C{predicate} holds for its
        value.

        @return: that value.
        @raise AssertionError: after C{timeout} seconds, with the last value.
        """
        value = None
        for _ in range(int(timeout / 0.1)):
            value = yield self.evaluate(expression)
            if predicate(value):
                return value
            yield deferLater(self.reactor, 0.1, lambda: None)
        raise AssertionError(f"the page did not get there in {timeout} s; last: {value!r}")

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Close the DevTools connection, end Chromium (killing it if it does
        not exit in C{timeout} seconds) and remove its profile.
        """
        if self._page is not None:
            self._page.dropConnection(abort=True)
            self._page = None
        process, self._process = self._process, None
        if process is not None and not process.ended:
            for signal in ("TERM", "KILL"):
                self._transport.signalProcess(signal)
                for _ in range(int(self.timeout / 0.05)):
                    if process.ended:
                        break
                    yield deferLater(self.reactor, 0.05, lambda: None)
                if process.ended:
                    break
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None


__all__ = ["MISSING", "HeadlessChromium", "findChromium"]
