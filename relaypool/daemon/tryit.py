"""
Try a relay (a running relaypool, or any Nostr relay): publish a signed
note with a fresh key, wait for its C{OK}, read it back by id, and print
each step.

    python -m relaypool.daemon.tryit [ws://127.0.0.1:7777] [--timeout SECONDS]

Exits 0 when the note came back, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure

from relaypool._reactor import ClientReactor
from relaypool.daemon.config import validateRelayURL
from relaypool.errors import InvalidRelayURL, RelayPoolError
from relaypool.nostr.event import AUTH_KIND, Event, generatePrivateKey, publicKeyFor
from relaypool.nostr.url import parseRelayURL

__all__ = ["TryItFailed", "describeFailure", "main", "tryRelay"]

DEFAULT_URL = "ws://127.0.0.1:7777"


class TryItFailed(RelayPoolError):
    """
    The relay did not do what the try-it client expected; the message says
    what happened.
    """


class _Client(WebSocketClientProtocol):
    """
    A minimal Nostr client: queues what it receives, and answers NIP-42
    C{AUTH} challenges with its key.
    """

    privateKey: bytes
    relayURL: str
    out: Callable[[str], None]

    def __init__(self) -> None:
        super().__init__()
        self._inbox: deque[list[Any]] = deque()
        self._waiter: tuple[Callable[[list[Any]], bool], Deferred[list[Any]]] | None = None
        self.authEventId: str | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.out(f"ignored a message that is not JSON: {payload[:80]!r}")
            return
        if not isinstance(message, list) or not message:
            return
        if message[0] == "AUTH" and len(message) > 1 and isinstance(message[1], str):
            self._authenticate(message[1])
            return
        if message[0] == "NOTICE":
            self.out(f"notice from the relay: {message[1:]}")
        self._inbox.append(message)
        self._deliver()

    def _authenticate(self, challenge: str) -> None:
        auth = Event.sign(
            self.privateKey,
            AUTH_KIND,
            "",
            [["relay", self.relayURL], ["challenge", challenge]],
        )
        self.authEventId = auth.id
        self.out("the relay asked for NIP-42 authentication: answering its challenge")
        self.send("AUTH", auth.toDict())

    def send(self, *message: Any) -> None:
        self.sendMessage(orjson.dumps(list(message)))  # type: ignore[no-untyped-call]

    def _deliver(self) -> None:
        if self._waiter is None:
            return
        predicate, d = self._waiter
        while self._inbox:
            message = self._inbox.popleft()
            if predicate(message):
                self._waiter = None
                d.callback(message)
                return

    def expect(self, predicate: Callable[[list[Any]], bool]) -> Deferred[list[Any]]:
        """
        @return: a Deferred firing with the next message C{predicate}
            accepts; the messages before it are dropped.
        """
        d: Deferred[list[Any]] = Deferred()
        self._waiter = (predicate, d)
        self._deliver()
        return d


def _endpoint(reactor: ClientReactor, url: str, timeout: float) -> IStreamClientEndpoint:
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    from twisted.internet.ssl import optionsForClientTLS

    parsed = parseRelayURL(url)
    endpoint = HostnameEndpoint(reactor, parsed.host, parsed.port, timeout=timeout)
    if parsed.secure:
        return wrapClientTLS(optionsForClientTLS(parsed.host), endpoint)
    return endpoint


def _firstOf(*deferreds: Deferred[Any]) -> Deferred[int]:
    """
    @return: a Deferred firing with the index of the first of C{deferreds}
        to fire (the others are left alone: Autobahn owns them).
    """
    first: Deferred[int] = Deferred()

    def fired(result: object, index: int) -> object:
        if not first.called:
            first.callback(index)
        return result

    for index, d in enumerate(deferreds):
        d.addBoth(fired, index)
    return first


def _abort(failure: Failure, client: _Client) -> None:
    """
    Drop a connection whose close handshake did not finish in time.
    """
    client.dropConnection(abort=True)


@inlineCallbacks
def tryRelay(
    reactor: ClientReactor, url: str, timeout: float = 10.0, out: Callable[[str], None] = print
) -> Any:
    """
    Publish a kind-1 note signed with a new key to the relay at C{url}, then
    read it back by id, reporting each step through C{out}.

    @param timeout: seconds each step (connect, OK, read back) may take.
    @return: a Deferred firing with the note (an L{Event}) once read back.
    @raise TryItFailed: (as the Deferred's failure) saying what went wrong.
    """
    privateKey = generatePrivateKey()
    factory = WebSocketClientFactory(url)  # type: ignore[no-untyped-call]
    factory.noisy = False
    factory.protocol = _Client
    factory.setProtocolOptions(  # type: ignore[no-untyped-call]
        maxMessagePayloadSize=1 << 20, maxFramePayloadSize=1 << 20
    )
    try:
        client: _Client = yield _endpoint(reactor, url, timeout).connect(factory)
    except (ConnectError, DNSLookupError, TimeoutError) as e:
        raise TryItFailed(
            f"no relay at {url}: start it with `twistd -n relaypool` ({e.__class__.__name__})"
        ) from None
    client.privateKey = privateKey
    client.relayURL = url
    client.out = out
    try:
        index = yield _firstOf(client.is_open, client.is_closed).addTimeout(timeout, reactor)
        if index != 0:
            raise TryItFailed(f"{url} refused the WebSocket handshake: is it a Nostr relay?")
        out(f"connected to {url}")
        result = yield _exchange(client, privateKey, reactor, timeout, out)
    except TimeoutError:
        raise TryItFailed(f"{url} did not answer within {timeout:g} seconds") from None
    finally:
        if client.transport is not None and not client.is_closed.called:
            client.sendClose()
            closed = _firstOf(client.is_closed).addTimeout(2.0, reactor)
            yield closed.addErrback(_abort, client)
    return result


@inlineCallbacks
def _exchange(
    client: _Client, privateKey: bytes, reactor: IReactorTime, timeout: float, out: Callable[[str], None]
) -> Any:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    note = Event.sign(privateKey, 1, f"hello from relaypool tryit {stamp}")
    out(f"publishing note {note.id} by {publicKeyFor(privateKey)}: {note.content!r}")
    ok = yield _publish(client, note, reactor, timeout)
    if ok[2] is not True:
        if client.authEventId is not None and str(ok[3]).startswith("auth-required:"):
            out("retrying after authenticating")
            yield client.expect(lambda m: m[0] == "OK" and m[1] == client.authEventId).addTimeout(
                timeout, reactor
            )
            ok = yield _publish(client, note, reactor, timeout)
        if ok[2] is not True:
            raise TryItFailed(f"the relay refused the note: {ok[3]!r}")
    out(
        f"OK: the relay accepted the note {ok[3]!r}" if ok[3] else "OK: the relay accepted the note"
    )
    subscription = f"tryit-{note.id[:8]}"
    client.send("REQ", subscription, {"ids": [note.id]})
    out(f"reading it back: REQ {subscription} {{ids: [{note.id[:8]}...]}}")
    found: Event | None = None
    while True:
        message = yield client.expect(
            lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and len(m) > 1 and m[1] == subscription
        ).addTimeout(timeout, reactor)
        if message[0] == "CLOSED":
            raise TryItFailed(f"the relay closed the subscription: {message[2:]}")
        if message[0] == "EOSE":
            break
        event = Event.fromDict(message[2])
        event.verify()
        if event.id == note.id:
            found = event
    client.send("CLOSE", subscription)
    if found is None:
        raise TryItFailed("the relay accepted the note but did not return it")
    out(f"read back: {found.content!r} (id and signature verified)")
    return found


def _publish(client: _Client, note: Event, reactor: IReactorTime, timeout: float) -> Deferred[list[Any]]:
    client.send("EVENT", note.toDict())
    return client.expect(lambda m: m[0] == "OK" and len(m) > 3 and m[1] == note.id).addTimeout(
        timeout, reactor
    )


def describeFailure(failure: Failure | BaseException) -> str:
    """
    @return: the one line a command prints for C{failure}: a relaypool
        error's own message, else Twisted's description of the error.
    """
    if isinstance(failure, BaseException):
        failure = Failure(failure)  # type: ignore[no-untyped-call]
    error = failure.value
    return str(error) if isinstance(error, RelayPoolError) else failure.getErrorMessage()


def main(reactor: ClientReactor, *argv: str) -> Deferred[None]:
    """
    The C{python -m relaypool.daemon.tryit} command, for L{twisted.internet.task.react}.
    """
    parser = argparse.ArgumentParser(
        prog="python -m relaypool.daemon.tryit",
        description="Publish a note to a Nostr relay and read it back.",
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    args = parser.parse_args(argv)
    try:
        url = validateRelayURL(args.url)
    except InvalidRelayURL as e:
        parser.error(str(e))

    def failed(failure: Failure) -> None:
        print(f"tryit: {describeFailure(failure)}", file=sys.stderr)
        raise SystemExit(1)

    def succeeded(note: Event) -> None:
        print("success: the relay stored and served the note")

    return tryRelay(reactor, url, args.timeout).addCallbacks(succeeded, failed)


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
