"""
Tests for L{relaypool.testing}: the fake relay, driven by a plain Autobahn
client over real TCP on 127.0.0.1, and the in-memory network.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
import treq
import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from relaypool.errors import InvalidEvent
from relaypool.nostr.event import Event, generatePrivateKey, publicKeyFor
from relaypool.nostr.messages import ClientEvent, ClientReq
from relaypool.testing import (
    TEST_PRIVATE_KEY,
    TEST_PUBLIC_KEY,
    FakeRelay,
    MemoryNetwork,
    Misbehaviour,
    forgeSignature,
    makeEvent,
)


class _Client(WebSocketClientProtocol):  # type: ignore[misc]
    """
    A bare Nostr client: sends JSON lists, queues every message it gets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inbox: deque[Any] = deque()
        self._waiting: deque[Deferred[Any]] = deque()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = orjson.loads(payload)
        if self._waiting:
            self._waiting.popleft().callback(message)
        else:
            self.inbox.append(message)

    def send(self, *message: Any) -> None:
        self.sendMessage(orjson.dumps(list(message)))

    def next(self) -> Deferred[Any]:
        """
        The next message not yet read.
        """
        if self.inbox:
            return succeed(self.inbox.popleft())
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    async def take(self, n: int) -> list[Any]:
        """
        The next C{n} messages.
        """
        return [await self.next() for _ in range(n)]


class _NotifyingList(list[Any]):
    """
    A list that can tell when it reaches a length: stands in for
    L{FakeRelay.received} to know the relay has handled a message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def append(self, item: Any) -> None:
        super().append(item)
        ready = [d for n, d in self._waiters if n <= len(self)]
        self._waiters = [(n, d) for n, d in self._waiters if n > len(self)]
        for d in ready:
            d.callback(None)

    def whenLength(self, n: int) -> Deferred[None]:
        if len(self) >= n:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((n, d))
        return d


class _SplitReactor:
    """
    The real reactor for networking, a L{Clock} for time.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.listenTCP(*args, **kwargs)

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()


class _RelayTestCase(TestCase):
    timeout = 10

    async def startRelay(self, **kwargs: Any) -> FakeRelay:
        relay = FakeRelay(**kwargs)
        await relay.start()
        self.addCleanup(relay.stop)
        return relay

    async def connect(self, relay: FakeRelay) -> _Client:
        """
        Open a WebSocket to C{relay}; closed at the end of the test.
        """
        client = await self.connectRaw(relay)
        await client.is_open
        return client

    async def connectRaw(self, relay: FakeRelay) -> _Client:
        factory = WebSocketClientFactory(relay.url)
        factory.protocol = _Client
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", relay.port)
        client: _Client = await endpoint.connect(factory)
        self.addCleanup(self._close, client)
        return client

    async def _close(self, client: _Client) -> None:
        if client.state != WebSocketClientProtocol.STATE_CLOSED:
            client.sendClose()
        await client.is_closed


class HelpersTests(SynchronousTestCase):
    """
    L{makeEvent} and L{forgeSignature}.
    """

    def test_makeEventSigned(self) -> None:
        """
        L{makeEvent} makes an event by L{TEST_PUBLIC_KEY} that verifies.
        """
        event = makeEvent(kind=7, content="+", tags=[["e", "a" * 64]])
        event.verify()
        self.assertEqual(
            (event.pubkey, event.kind, event.content, event.tags),
            (TEST_PUBLIC_KEY, 7, "+", (("e", "a" * 64),)),
        )

    def test_makeEventOrdered(self) -> None:
        """
        Without C{createdAt}, successive events are distinct and each is
        newer than the previous one.
        """
        first, second = makeEvent(), makeEvent()
        self.assertNotEqual(first.id, second.id)
        self.assertGreater(second.createdAt, first.createdAt)

    def test_makeEventKey(self) -> None:
        """
        L{makeEvent} signs with the given private key and created_at.
        """
        key = generatePrivateKey()
        event = makeEvent(privateKey=key, createdAt=42)
        self.assertEqual((event.pubkey, event.createdAt), (publicKeyFor(key), 42))

    def test_forgeSignature(self) -> None:
        """
        A forged event keeps its id and content but fails verification.
        """
        event = makeEvent(content="hello")
        forged = forgeSignature(event)
        self.assertEqual((forged.id, forged.content), (event.id, event.content))
        self.assertNotEqual(forged.sig, event.sig)
        self.assertRaises(InvalidEvent, forged.verify)

    def test_misbehaviourTypo(self) -> None:
        """
        Setting a L{Misbehaviour} switch that does not exist raises, so a
        typo cannot make a test pass silently.
        """
        misbehaviour = Misbehaviour()
        self.assertRaises(AttributeError, setattr, misbehaviour, "dropEvent", True)

    def test_testKey(self) -> None:
        """
        L{TEST_PRIVATE_KEY} is a fixed 32-byte key whose public key is
        L{TEST_PUBLIC_KEY}.
        """
        self.assertEqual(len(TEST_PRIVATE_KEY), 32)
        self.assertEqual(publicKeyFor(TEST_PRIVATE_KEY), TEST_PUBLIC_KEY)


class SubscriptionTests(_RelayTestCase):
    """
    REQ, CLOSE and live forwarding.
    """

    async def test_storedThenEOSE(self) -> None:
        """
        A REQ gets the stored matching events, newest first, then EOSE.
        """
        relay = await self.startRelay()
        events = [makeEvent(content=str(i)) for i in range(3)]
        relay.store(*events)
        client = await self.connect(relay)
        client.send("REQ", "s", {"kinds": [1]})
        messages = await client.take(4)
        self.assertEqual(
            messages,
            [["EVENT", "s", e.toDict()] for e in reversed(events)] + [["EOSE", "s"]],
        )

    async def test_limit(self) -> None:
        """
        A filter's C{limit} caps the stored events sent, keeping the newest.
        """
        relay = await self.startRelay()
        events = [makeEvent() for _ in range(5)]
        relay.store(*events)
        client = await self.connect(relay)
        client.send("REQ", "s", {"limit": 2})
        messages = await client.take(3)
        self.assertEqual([m[2]["id"] for m in messages[:2]], [events[4].id, events[3].id])
        self.assertEqual(messages[2], ["EOSE", "s"])

    async def test_filtersUnion(self) -> None:
        """
        Several filters send the events matching any of them, once each,
        newest first.
        """
        relay = await self.startRelay()
        note, reaction, other = makeEvent(kind=1), makeEvent(kind=7), makeEvent(kind=3)
        relay.store(note, reaction, other)
        client = await self.connect(relay)
        client.send("REQ", "s", {"kinds": [1]}, {"kinds": [7, 1]})
        messages = await client.take(3)
        self.assertEqual(
            [m[2]["id"] if m[0] == "EVENT" else m for m in messages],
            [reaction.id, note.id, ["EOSE", "s"]],
        )

    async def test_liveForwarding(self) -> None:
        """
        After EOSE, events published by another client and matching the
        subscription are forwarded; others are not.
        """
        relay = await self.startRelay()
        subscriber = await self.connect(relay)
        publisher = await self.connect(relay)
        subscriber.send("REQ", "s", {"kinds": [1]})
        self.assertEqual(await subscriber.next(), ["EOSE", "s"])
        ignored, wanted = makeEvent(kind=7), makeEvent(kind=1)
        publisher.send("EVENT", ignored.toDict())
        publisher.send("EVENT", wanted.toDict())
        self.assertEqual(await subscriber.next(), ["EVENT", "s", wanted.toDict()])

    async def test_storeForwards(self) -> None:
        """
        L{FakeRelay.store} forwards to live matching subscriptions.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.next()
        event = makeEvent()
        relay.store(event)
        self.assertEqual(await client.next(), ["EVENT", "s", event.toDict()])

    async def test_replaceReq(self) -> None:
        """
        A REQ with a live subscription's id replaces its filters.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.send("REQ", "s", {"kinds": [1]})
        client.send("REQ", "s", {"kinds": [7]})
        await client.take(2)
        self.assertEqual(relay.subscriptionCount(), 1)
        note, reaction = makeEvent(kind=1), makeEvent(kind=7)
        relay.store(note, reaction)
        self.assertEqual(await client.next(), ["EVENT", "s", reaction.toDict()])

    async def test_close(self) -> None:
        """
        CLOSE ends a subscription.
        """
        relay = await self.startRelay()
        relay.received = _NotifyingList()
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.next()
        self.assertEqual(relay.subscriptionCount(), 1)
        client.send("CLOSE", "s")
        await relay.received.whenLength(2)
        self.assertEqual(relay.subscriptionCount(), 0)

    async def test_maxSubscriptions(self) -> None:
        """
        A REQ beyond C{maxSubscriptions} on a connection gets C{CLOSED
        "error: too many subscriptions"}; replacing a live one is allowed.
        """
        relay = await self.startRelay(maxSubscriptions=1)
        client = await self.connect(relay)
        client.send("REQ", "a", {})
        client.send("REQ", "b", {})
        client.send("REQ", "a", {"kinds": [1]})
        self.assertEqual(
            await client.take(3),
            [["EOSE", "a"], ["CLOSED", "b", "error: too many subscriptions"], ["EOSE", "a"]],
        )

    async def test_whenConnections(self) -> None:
        """
        L{FakeRelay.whenConnections} fires once that many WebSockets are open.
        """
        relay = await self.startRelay()
        ready = relay.whenConnections(2)
        await self.connect(relay)
        self.assertNoResult(ready)
        await self.connect(relay)
        await ready
        self.assertEqual(relay.connectionCount(), 2)

    async def test_received(self) -> None:
        """
        Every parsed client message is recorded in C{received}.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        event = makeEvent()
        client.send("EVENT", event.toDict())
        client.send("REQ", "s", {"kinds": [1]})
        await client.take(3)
        self.assertIsInstance(relay.received[0], ClientEvent)
        self.assertIsInstance(relay.received[1], ClientReq)

    async def test_count(self) -> None:
        """
        COUNT is answered with the number of stored events matching any
        filter.
        """
        relay = await self.startRelay()
        relay.store(makeEvent(kind=1), makeEvent(kind=1), makeEvent(kind=7))
        client = await self.connect(relay)
        client.send("COUNT", "c", {"kinds": [1]}, {"kinds": [1, 7], "limit": 1})
        self.assertEqual(await client.next(), ["COUNT", "c", {"count": 3}])

    async def test_invalidFilter(self) -> None:
        """
        A REQ with an invalid filter gets C{CLOSED "invalid: ..."}.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.send("REQ", "s", {"kinds": "one"})
        message = await client.next()
        self.assertEqual(message[:2], ["CLOSED", "s"])
        self.assertTrue(message[2].startswith("invalid: "))
        self.assertEqual(relay.subscriptionCount(), 0)

    async def test_malformed(self) -> None:
        """
        A message that is not a valid client message gets a NOTICE.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.sendMessage(b'["NOPE"]')
        message = await client.next()
        self.assertEqual(message[0], "NOTICE")


class PublishTests(_RelayTestCase):
    """
    EVENT handling.
    """

    async def test_accepted(self) -> None:
        """
        A valid event gets C{OK true ""} and is stored.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        event = makeEvent()
        client.send("EVENT", event.toDict())
        self.assertEqual(await client.next(), ["OK", event.id, True, ""])
        self.assertEqual(relay.events, [event])

    async def test_duplicate(self) -> None:
        """
        An event already stored gets C{OK true "duplicate: ..."}.
        """
        relay = await self.startRelay()
        event = makeEvent()
        relay.store(event)
        client = await self.connect(relay)
        client.send("EVENT", event.toDict())
        self.assertEqual(
            await client.next(), ["OK", event.id, True, "duplicate: already have this event"]
        )
        self.assertEqual(relay.events, [event])

    async def test_badSignature(self) -> None:
        """
        An event whose signature does not verify gets C{OK false
        "invalid: ..."} and is not stored.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        forged = forgeSignature(makeEvent())
        client.send("EVENT", forged.toDict())
        self.assertEqual(await client.next(), ["OK", forged.id, False, "invalid: bad signature"])
        self.assertEqual(relay.events, [])

    async def test_badId(self) -> None:
        """
        An event whose id does not match its content gets C{OK false
        "invalid: ..."}.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        event = makeEvent().toDict()
        event["content"] = "changed"
        client.send("EVENT", event)
        ok = await client.next()
        self.assertEqual(ok[:3], ["OK", event["id"], False])
        self.assertTrue(ok[3].startswith("invalid: "))

    async def test_malformedEvent(self) -> None:
        """
        An EVENT whose event is malformed but has an id gets C{OK false
        "invalid: ..."}.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        event = makeEvent().toDict()
        event["kind"] = "one"
        client.send("EVENT", event)
        ok = await client.next()
        self.assertEqual(ok[:3], ["OK", event["id"], False])
        self.assertTrue(ok[3].startswith("invalid: "))

    async def test_noVerify(self) -> None:
        """
        With C{verify=False}, a forged event is accepted.
        """
        relay = await self.startRelay(verify=False)
        client = await self.connect(relay)
        forged = forgeSignature(makeEvent())
        client.send("EVENT", forged.toDict())
        self.assertEqual(await client.next(), ["OK", forged.id, True, ""])
        self.assertEqual(relay.events, [forged])

    async def test_ephemeral(self) -> None:
        """
        An ephemeral event is forwarded but not stored.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.next()
        event = makeEvent(kind=20001)
        client.send("EVENT", event.toDict())
        self.assertEqual(
            await client.take(2),
            [["OK", event.id, True, ""], ["EVENT", "s", event.toDict()]],
        )
        self.assertEqual(relay.events, [])

    async def test_replaceable(self) -> None:
        """
        Of replaceable events by one author and kind, only the newest is
        kept, whatever the arrival order.
        """
        relay = await self.startRelay()
        old, new, older = (makeEvent(kind=0, createdAt=t) for t in (10, 20, 5))
        relay.store(old, new, older)
        self.assertEqual(relay.events, [new])

    async def test_addressable(self) -> None:
        """
        Addressable events are replaced per C{d} tag.
        """
        relay = await self.startRelay()
        a1, b1, a2 = (
            makeEvent(kind=30000, tags=[["d", d]], createdAt=t)
            for d, t in (("a", 1), ("b", 2), ("a", 3))
        )
        relay.store(a1, b1, a2)
        self.assertEqual(relay.events, [b1, a2])

    async def test_authEventNotForwarded(self) -> None:
        """
        A kind-22242 event sent as EVENT is neither stored nor forwarded.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.next()
        event = makeEvent(kind=22242)
        client.send("EVENT", event.toDict())
        client.send("COUNT", "c", {})
        self.assertEqual(
            await client.take(2),
            [["OK", event.id, True, ""], ["COUNT", "c", {"count": 0}]],
        )


class MisbehaviourTests(_RelayTestCase):
    """
    Each L{Misbehaviour} switch.
    """

    async def test_dropEvents(self) -> None:
        """
        C{dropEvents}: EVENT gets C{OK true} but is neither stored nor
        forwarded.
        """
        relay = await self.startRelay()
        relay.misbehaviour.dropEvents = True
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.next()
        event = makeEvent()
        client.send("EVENT", event.toDict())
        client.send("COUNT", "c", {})
        self.assertEqual(
            await client.take(2),
            [["OK", event.id, True, ""], ["COUNT", "c", {"count": 0}]],
        )
        self.assertEqual(relay.events, [])

    async def test_silentOK(self) -> None:
        """
        C{silentOK}: EVENT gets no OK (but is stored).
        """
        relay = await self.startRelay()
        relay.misbehaviour.silentOK = True
        client = await self.connect(relay)
        event = makeEvent()
        client.send("EVENT", event.toDict())
        client.send("COUNT", "c", {})
        self.assertEqual(await client.next(), ["COUNT", "c", {"count": 1}])

    async def test_rejectWith(self) -> None:
        """
        C{rejectWith}: EVENT gets C{OK false} with that message and is not
        stored.
        """
        relay = await self.startRelay()
        relay.misbehaviour.rejectWith = "blocked: no"
        client = await self.connect(relay)
        event = makeEvent()
        client.send("EVENT", event.toDict())
        self.assertEqual(await client.next(), ["OK", event.id, False, "blocked: no"])
        self.assertEqual(relay.events, [])

    async def test_neverEOSE(self) -> None:
        """
        C{neverEOSE}: REQ gets the stored events but no EOSE.
        """
        relay = await self.startRelay()
        relay.misbehaviour.neverEOSE = True
        event = makeEvent()
        relay.store(event)
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        client.send("COUNT", "c", {})
        self.assertEqual(
            await client.take(2),
            [["EVENT", "s", event.toDict()], ["COUNT", "c", {"count": 1}]],
        )

    async def test_delay(self) -> None:
        """
        C{delay}: every reply is held that long, then sent in order.
        """
        clock = Clock()
        relay = await self.startRelay(reactor=_SplitReactor(clock))
        relay.received = _NotifyingList()
        client = await self.connect(relay)
        relay.misbehaviour.delay = 5.0
        event = makeEvent()
        client.send("EVENT", event.toDict())
        client.send("REQ", "s", {"kinds": [7]})
        await relay.received.whenLength(2)
        clock.advance(4.9)
        self.assertEqual(list(client.inbox), [])
        clock.advance(0.1)
        self.assertEqual(await client.take(2), [["OK", event.id, True, ""], ["EOSE", "s"]])

    async def test_stopDiscardsDelayed(self) -> None:
        """
        Replies still held by C{delay} are dropped, and their timer
        cancelled, when the connection closes.
        """
        clock = Clock()
        relay = FakeRelay(reactor=_SplitReactor(clock))
        await relay.start()
        relay.received = _NotifyingList()
        client = await self.connect(relay)
        relay.misbehaviour.delay = 5.0
        client.send("REQ", "s", {})
        await relay.received.whenLength(1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        await relay.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_forge(self) -> None:
        """
        C{forge}: events are sent with signatures that do not verify, stored
        and live ones alike.
        """
        relay = await self.startRelay()
        relay.misbehaviour.forge = True
        stored, live = makeEvent(), makeEvent()
        relay.store(stored)
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        await client.take(2)
        relay.store(live)
        message = await client.next()
        received = Event.fromDict(message[2])
        self.assertEqual(received.id, live.id)
        self.assertRaises(InvalidEvent, received.verify)

    async def test_forgeStored(self) -> None:
        """
        C{forge} applies to stored events sent in answer to a REQ.
        """
        relay = await self.startRelay()
        relay.misbehaviour.forge = True
        relay.store(makeEvent())
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        message = await client.next()
        self.assertRaises(InvalidEvent, Event.fromDict(message[2]).verify)

    async def test_refuse(self) -> None:
        """
        C{refuse}: the WebSocket handshake is rejected with HTTP 403.
        """
        relay = await self.startRelay()
        relay.misbehaviour.refuse = True
        client = await self.connectRaw(relay)
        await client.is_closed
        self.assertFalse(client.wasClean)
        self.assertIn("403", client.wasNotCleanReason)
        self.assertEqual(relay.connectionCount(), 0)

    async def test_closeWith(self) -> None:
        """
        C{closeWith}: REQ gets C{CLOSED} with that message.
        """
        relay = await self.startRelay()
        relay.misbehaviour.closeWith = "rate-limited: slow down"
        relay.store(makeEvent())
        client = await self.connect(relay)
        client.send("REQ", "s", {})
        self.assertEqual(await client.next(), ["CLOSED", "s", "rate-limited: slow down"])
        self.assertEqual(relay.subscriptionCount(), 0)

    async def test_countUnsupported(self) -> None:
        """
        C{countSupported=False}: COUNT gets C{CLOSED "unsupported: ..."}.
        """
        relay = await self.startRelay()
        relay.misbehaviour.countSupported = False
        client = await self.connect(relay)
        client.send("COUNT", "c", {})
        message = await client.next()
        self.assertEqual(message[:2], ["CLOSED", "c"])
        self.assertTrue(message[2].startswith("unsupported: "))

    async def test_countRefusalNotice(self) -> None:
        """
        C{countRefusal="notice"}: an unsupported COUNT gets a C{NOTICE}, as
        from a relay that does not know the verb.
        """
        relay = await self.startRelay()
        relay.misbehaviour.countSupported = False
        relay.misbehaviour.countRefusal = "notice"
        client = await self.connect(relay)
        client.send("COUNT", "c", {})
        self.assertEqual((await client.next())[0], "NOTICE")

    async def test_countRefusalIgnore(self) -> None:
        """
        C{countRefusal="ignore"}: an unsupported COUNT gets no answer; the
        REQ sent after it is answered first.
        """
        relay = await self.startRelay()
        relay.misbehaviour.countSupported = False
        relay.misbehaviour.countRefusal = "ignore"
        client = await self.connect(relay)
        client.send("COUNT", "c", {})
        client.send("REQ", "s", {})
        self.assertEqual(await client.next(), ["EOSE", "s"])


class AuthTests(_RelayTestCase):
    """
    NIP-42 with C{requireAuth}.
    """

    async def authRelay(self) -> tuple[FakeRelay, _Client, str]:
        relay = await self.startRelay()
        relay.misbehaviour.requireAuth = True
        client = await self.connect(relay)
        kind, challenge = await client.next()
        self.assertEqual(kind, "AUTH")
        return relay, client, challenge

    def authEvent(self, relay: FakeRelay, challenge: str, **kwargs: Any) -> Event:
        tags = kwargs.pop("tags", [["relay", relay.url], ["challenge", challenge]])
        return Event.sign(TEST_PRIVATE_KEY, kwargs.pop("kind", 22242), "", tags, **kwargs)

    async def test_reqBeforeAuth(self) -> None:
        """
        A REQ before AUTH gets C{CLOSED "auth-required: ..."}.
        """
        relay, client, _ = await self.authRelay()
        client.send("REQ", "s", {})
        message = await client.next()
        self.assertEqual(message[:2], ["CLOSED", "s"])
        self.assertTrue(message[2].startswith("auth-required: "))

    async def test_eventBeforeAuth(self) -> None:
        """
        An EVENT before AUTH gets C{OK false "auth-required: ..."}.
        """
        relay, client, _ = await self.authRelay()
        event = makeEvent()
        client.send("EVENT", event.toDict())
        message = await client.next()
        self.assertEqual(message[:3], ["OK", event.id, False])
        self.assertTrue(message[3].startswith("auth-required: "))
        self.assertEqual(relay.events, [])

    async def test_auth(self) -> None:
        """
        A valid kind-22242 event answering the challenge gets C{OK true},
        authenticates its pubkey, and then REQ is served.
        """
        relay, client, challenge = await self.authRelay()
        auth = self.authEvent(relay, challenge)
        client.send("AUTH", auth.toDict())
        self.assertEqual(await client.next(), ["OK", auth.id, True, ""])
        self.assertEqual(relay.authenticated, {TEST_PUBLIC_KEY})
        client.send("REQ", "s", {})
        self.assertEqual(await client.next(), ["EOSE", "s"])

    async def test_wrongChallenge(self) -> None:
        """
        An AUTH event with another challenge is refused.
        """
        relay, client, _ = await self.authRelay()
        auth = self.authEvent(relay, "not-the-challenge")
        client.send("AUTH", auth.toDict())
        message = await client.next()
        self.assertEqual(message[:3], ["OK", auth.id, False])
        self.assertEqual(relay.authenticated, set())

    async def test_wrongRelay(self) -> None:
        """
        An AUTH event naming another relay is refused.
        """
        relay, client, challenge = await self.authRelay()
        auth = self.authEvent(
            relay, challenge, tags=[["relay", "wss://elsewhere.example"], ["challenge", challenge]]
        )
        client.send("AUTH", auth.toDict())
        self.assertEqual((await client.next())[:3], ["OK", auth.id, False])

    async def test_wrongKind(self) -> None:
        """
        An AUTH event of another kind is refused.
        """
        relay, client, challenge = await self.authRelay()
        auth = self.authEvent(relay, challenge, kind=1)
        client.send("AUTH", auth.toDict())
        self.assertEqual((await client.next())[:3], ["OK", auth.id, False])

    async def test_staleAuth(self) -> None:
        """
        An AUTH event created long ago is refused.
        """
        relay, client, challenge = await self.authRelay()
        auth = self.authEvent(relay, challenge, createdAt=1000)
        client.send("AUTH", auth.toDict())
        self.assertEqual((await client.next())[:3], ["OK", auth.id, False])

    async def test_challengeOnDemand(self) -> None:
        """
        When C{requireAuth} is switched on for an open connection, the
        first refused REQ is preceded by a challenge.
        """
        relay = await self.startRelay()
        client = await self.connect(relay)
        relay.misbehaviour.requireAuth = True
        client.send("REQ", "s", {})
        auth, closed = await client.take(2)
        self.assertEqual(auth[0], "AUTH")
        self.assertEqual(closed[:2], ["CLOSED", "s"])


class LifecycleTests(_RelayTestCase):
    """
    start, stop, restart and the NIP-11 document.
    """

    async def test_gracefulStop(self) -> None:
        """
        L{FakeRelay.stop} closes WebSockets with a close handshake.
        """
        relay = FakeRelay()
        await relay.start()
        client = await self.connect(relay)
        await relay.stop()
        await client.is_closed
        self.assertTrue(client.wasClean)
        self.assertEqual(relay.connectionCount(), 0)

    async def test_abortAndRestart(self) -> None:
        """
        C{stop(abort=True)} drops connections without a close handshake;
        C{start} then listens again on the same port.
        """
        relay = await self.startRelay()
        port = relay.port
        client = await self.connect(relay)
        await relay.stop(abort=True)
        await client.is_closed
        self.assertFalse(client.wasClean)
        await relay.start()
        self.assertEqual(relay.port, port)
        again = await self.connect(relay)
        again.send("REQ", "s", {})
        self.assertEqual(await again.next(), ["EOSE", "s"])

    async def test_stopIdempotent(self) -> None:
        """
        Stopping a relay that is not listening does nothing.
        """
        relay = FakeRelay()
        await relay.stop()
        await relay.start()
        await relay.stop()
        await relay.stop()

    async def test_nip11(self) -> None:
        """
        C{GET /} with C{Accept: application/nostr+json} returns the NIP-11
        document, with CORS headers and the subscription limit.
        """
        relay = await self.startRelay(maxSubscriptions=3)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(
            relay.url.replace("ws://", "http://") + "/",
            headers={"Accept": "application/nostr+json"},
            pool=pool,
        )
        document = orjson.loads(await response.content())
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        self.assertEqual(document["name"], "relaypool fake relay")
        self.assertEqual(document["supported_nips"], [1, 11, 42, 45, 77])
        self.assertEqual(document["limitation"]["max_subscriptions"], 3)

    async def test_plainGet(self) -> None:
        """
        C{GET /} without the NIP-11 C{Accept} header gets a short text page.
        """
        relay = await self.startRelay()
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(relay.url.replace("ws://", "http://") + "/", pool=pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"]
        )
        await response.content()

    async def test_stopClosesHTTP(self) -> None:
        """
        L{FakeRelay.stop} also closes idle HTTP keep-alive connections.
        """
        relay = FakeRelay()
        await relay.start()
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(
            relay.url.replace("ws://", "http://") + "/",
            headers={"Accept": "application/nostr+json"},
            pool=pool,
        )
        await response.content()
        await relay.stop()


class MemoryNetworkTests(SynchronousTestCase):
    """
    L{MemoryNetwork}: clients of the reactor reach the fake relays listening
    on it, in memory, when the test flushes.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        savedLoop = txaio.config.loop
        txaio.config.loop = self.network
        self.addCleanup(setattr, txaio.config, "loop", savedLoop)
        self.relay = FakeRelay(self.network)
        self.relay.start()

    def connectRaw(self, port: int | None = None) -> Deferred[_Client]:
        """
        Ask the network for a WebSocket connection to the relay (or to
        C{port}); nothing happens before a flush.
        """
        factory = WebSocketClientFactory(self.relay.url)
        factory.protocol = _Client
        endpoint = TCP4ClientEndpoint(self.network, "127.0.0.1", port or self.relay.port)
        connecting: Deferred[_Client] = endpoint.connect(factory)
        return connecting

    def connect(self) -> _Client:
        """
        @return: an open WebSocket client of the relay.
        """
        client = self.successResultOf(self.flushed(self.connectRaw()))
        self.successResultOf(client.is_open)
        return client

    def flushed(self, d: Deferred[Any]) -> Deferred[Any]:
        self.network.flush()
        return d

    def test_relayAnswers(self) -> None:
        """
        A client's connection is made on the next flush, and the fake
        relay's NIP-01 server answers over it.
        """
        event = makeEvent()
        self.relay.store(event)
        connecting = self.connectRaw()
        self.assertNoResult(connecting)
        self.network.flush()
        client = self.successResultOf(connecting)
        self.successResultOf(client.is_open)
        client.send("REQ", "s", {"kinds": [1]})
        self.assertEqual(list(client.inbox), [])
        self.network.flush()
        self.assertEqual(list(client.inbox), [["EVENT", "s", event.toDict()], ["EOSE", "s"]])
        self.assertEqual(self.relay.connectionCount(), 1)

    def test_freePorts(self) -> None:
        """
        A relay started without a port gets a free one of its own, in its
        URL.
        """
        other = FakeRelay(self.network)
        other.start()
        self.assertNotEqual(self.relay.port, other.port)
        self.assertNotIn(0, (self.relay.port, other.port))
        self.assertEqual(other.url, f"ws://127.0.0.1:{other.port}")

    def test_refusedWithoutListener(self) -> None:
        """
        An attempt to a port nothing listens on is refused.
        """
        connecting = self.connectRaw(port=self.relay.port + 1000)
        self.network.flush()
        self.failureResultOf(connecting, ConnectionRefusedError)

    def test_stoppedRelay(self) -> None:
        """
        Stopping a relay closes its connections and fires once they are
        closed; it refuses new ones until started again, on the same port.
        """
        client = self.connect()
        stopped = self.relay.stop()
        self.assertNoResult(stopped)
        self.network.flush()
        self.successResultOf(stopped)
        self.successResultOf(client.is_closed)
        self.failureResultOf(self.flushed(self.connectRaw()), ConnectionRefusedError)
        self.relay.start()
        self.connect()
        self.assertEqual(self.relay.connectionCount(), 1)

    def test_cancelledAttempt(self) -> None:
        """
        An attempt cancelled before the flush never reaches the relay.
        """
        connecting = self.connectRaw()
        connecting.cancel()
        self.network.flush()
        self.failureResultOf(connecting, ConnectingCancelledError)
        self.assertEqual((self.network.links, self.relay.connectionCount()), ([], 0))

    def test_stalledLink(self) -> None:
        """
        Over a stalled link no byte moves until it is released; closing one
        end still ends the connection.
        """
        client = self.connect()
        link = self.network.linkOf(client)
        link.stalled = True
        client.send("REQ", "s", {})
        self.network.flush()
        self.assertEqual(list(client.inbox), [])
        link.stalled = False
        self.network.flush()
        self.assertEqual(list(client.inbox), [["EOSE", "s"]])
        link.stalled = True
        client.transport.abortConnection()
        self.network.flush()
        self.assertTrue(link.closed)
        self.assertEqual(self.relay.connectionCount(), 0)

    def test_disconnect(self) -> None:
        """
        L{MemoryLink.disconnect} drops the connection from the server's side
        without a close handshake.
        """
        client = self.connect()
        self.network.linkOf(client).disconnect()
        self.network.flush()
        self.successResultOf(client.is_closed)
        self.assertFalse(client.wasClean)
        self.assertEqual(self.relay.connectionCount(), 0)
