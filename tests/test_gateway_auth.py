"""
Tests for L{relaypool.gateway.auth}: NIP-42 authentication events.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidEvent
from relaypool.gateway.auth import (
    expectedRelayURL,
    makeChallenge,
    relayURLMatches,
    verifyAuthEvent,
)
from relaypool.gateway.gateway import Gateway
from relaypool.nostr.event import AUTH_KIND, Event, generatePrivateKey
from relaypool.testing import TEST_PRIVATE_KEY, TEST_PUBLIC_KEY
from relaypool.transport.names import StaticNameService
from relaypool.upstream.relaypool import RelayPool
from tests.test_gateway_protocol import GatewayTestCase

NOW = 1_700_000_000
URL = "wss://relay.example.com/"


def authEvent(
    challenge: str = "abc",
    relay: str | None = URL,
    kind: int = AUTH_KIND,
    createdAt: int = NOW,
) -> Event:
    tags = [["challenge", challenge]]
    if relay is not None:
        tags.append(["relay", relay])
    return Event.sign(TEST_PRIVATE_KEY, kind, "", tags, createdAt)


class VerifyAuthEventTests(SynchronousTestCase):
    """
    L{verifyAuthEvent} accepts exactly the events NIP-42 describes.
    """

    def test_valid(self) -> None:
        """
        A fresh kind-22242 event with the challenge and relay URL passes.
        """
        event = authEvent()
        verifyAuthEvent(event, "abc", URL, NOW)
        self.assertEqual(event.pubkey, TEST_PUBLIC_KEY)

    def test_wrongKind(self) -> None:
        """
        Another kind is refused.
        """
        error = self.assertRaises(InvalidEvent, verifyAuthEvent, authEvent(kind=1), "abc", URL, NOW)
        self.assertIn("22242", str(error))

    def test_wrongChallenge(self) -> None:
        """
        A challenge other than the connection's is refused.
        """
        error = self.assertRaises(
            InvalidEvent, verifyAuthEvent, authEvent("other"), "abc", URL, NOW
        )
        self.assertTrue(str(error).startswith("invalid: "))
        self.assertIn("challenge", str(error))

    def test_stale(self) -> None:
        """
        An event more than ten minutes from now, either way, is refused.
        """
        for createdAt in (NOW - 601, NOW + 601):
            self.assertRaises(
                InvalidEvent,
                verifyAuthEvent,
                authEvent(createdAt=createdAt),
                "abc",
                URL,
                NOW,
            )
        verifyAuthEvent(authEvent(createdAt=NOW - 599), "abc", URL, NOW)

    def refusal(self, relay: str, relayURL: str | None) -> str:
        """
        The message of the refusal of an AUTH event naming C{relay}.
        """
        error = self.assertRaises(
            InvalidEvent, verifyAuthEvent, authEvent(relay=relay), "abc", relayURL, NOW
        )
        self.assertTrue(str(error).startswith("invalid: "), str(error))
        return str(error)

    def test_otherRelay(self) -> None:
        """
        An event naming another relay is refused, naming the URL this relay
        expected.
        """
        self.assertIn(URL, self.refusal("wss://elsewhere.example.com/", URL))

    def test_noRelayTag(self) -> None:
        """
        An event without a relay tag is refused, even when the gateway has no
        configured URL.
        """
        self.assertRaises(InvalidEvent, verifyAuthEvent, authEvent(relay=None), "abc", None, NOW)

    def test_unknownURLRefused(self) -> None:
        """
        When the relay does not know its own URL, no relay tag is accepted,
        and the refusal says why.
        """
        self.assertIn("own URL", self.refusal("ws://127.0.0.1:1234", None))

    def test_badSignature(self) -> None:
        """
        An event whose signature does not verify is refused.
        """
        event = authEvent()
        forged = replace(event, sig=("0" if event.sig[0] != "0" else "1") + event.sig[1:])
        self.assertRaises(InvalidEvent, verifyAuthEvent, forged, "abc", URL, NOW)


class RelayURLMatchesTests(SynchronousTestCase):
    """
    L{relayURLMatches} compares normalized relay URLs.
    """

    def test_normalized(self) -> None:
        """
        Scheme and host case, a default port and a trailing slash do not
        matter.
        """
        self.assertTrue(relayURLMatches("WSS://Relay.Example.com:443", URL))
        self.assertTrue(relayURLMatches("ws://relay.example.com:80/", "ws://RELAY.example.com"))
        self.assertTrue(
            relayURLMatches("wss://relay.example.com/nostr/", "wss://relay.example.com/nostr")
        )

    def test_different(self) -> None:
        """
        Another scheme, host, port or path does not match, nor does garbage.
        """
        self.assertFalse(relayURLMatches("ws://relay.example.com/", URL))
        self.assertFalse(relayURLMatches("wss://relay.example.com:8443/", URL))
        self.assertFalse(relayURLMatches("wss://relay.example.org/", URL))
        self.assertFalse(relayURLMatches("wss://relay.example.com/other", URL))
        self.assertFalse(relayURLMatches("https://relay.example.com/", URL))
        self.assertFalse(relayURLMatches("not a url", URL))
        self.assertFalse(relayURLMatches("ws://[::1", URL))


class ExpectedRelayURLTests(SynchronousTestCase):
    """
    L{expectedRelayURL} is the configured URL, else the one the client
    connected to.
    """

    def test_configured(self) -> None:
        """
        A configured URL wins over the C{Host} header, normalized.
        """
        self.assertEqual(
            expectedRelayURL("wss://Relay.Example.com", "other.example.com", False),
            "wss://relay.example.com/",
        )

    def test_fromHost(self) -> None:
        """
        Without a configured URL, it is C{ws://<Host>/}, or C{wss://<Host>/}
        over TLS.
        """
        self.assertEqual(
            expectedRelayURL(None, "Relay.Example.com:7777", False),
            "ws://relay.example.com:7777/",
        )
        self.assertEqual(
            expectedRelayURL(None, "relay.example.com", True), "wss://relay.example.com/"
        )
        self.assertEqual(expectedRelayURL(None, "[::1]:7777", False), "ws://[::1]:7777/")

    def test_unusableHost(self) -> None:
        """
        No C{Host} header, or one that is not C{host[:port]}, gives no URL.
        """
        for host in (None, "", "example.com/path", "user@example.com", "example.com:x"):
            self.assertIsNone(expectedRelayURL(None, host, False), host)


class MakeChallengeTests(SynchronousTestCase):
    """
    L{makeChallenge} makes unguessable strings.
    """

    def test_distinct(self) -> None:
        """
        Two challenges differ and are long enough.
        """
        first, second = makeChallenge(), makeChallenge()
        self.assertNotEqual(first, second)
        self.assertGreaterEqual(len(first), 24)


class GatewayRelayURLTests(GatewayTestCase):
    """
    A gateway that requires NIP-42 checks the C{relay} tag of AUTH events
    against its configured URL, or else the URL the client connected to.
    """

    @inlineCallbacks
    def startAuthGateway(self, **kwargs: Any) -> Any:
        gateway = yield self.startGateway(store=self.openStore(), authRequired=True, **kwargs)
        return gateway

    @inlineCallbacks
    def authenticate(
        self, gateway: Gateway, relay: str, headers: dict[str, str] | None = None
    ) -> Any:
        """
        Connect, answer the challenge with an AUTH event naming C{relay},
        and return the C{OK} frame.
        """
        client = yield self.connect(gateway, headers=headers)
        (_, challenge) = yield client.waitForVerb("AUTH")
        auth = Event.sign(
            generatePrivateKey(),
            AUTH_KIND,
            "",
            [["relay", relay], ["challenge", challenge]],
            int(time.time()),
        )
        client.send("AUTH", auth.toDict())
        ok = yield client.waitForVerb("OK", auth.id)
        return ok

    def hostURL(self, gateway: Gateway, scheme: str = "ws") -> str:
        assert gateway.port is not None
        return f"{scheme}://127.0.0.1:{gateway.port.getHost().port}/"

    @inlineCallbacks
    def test_otherRelayRefusedWithoutConfiguredURL(self) -> Any:
        """
        Without C{relayURL}, an AUTH event naming another relay is refused
        with C{OK false "invalid: ..."} naming the URL the client connected
        to.
        """
        gateway = yield self.startAuthGateway()
        ok = yield self.authenticate(gateway, "wss://elsewhere.example.com/")
        self.assertFalse(ok[2])
        self.assertTrue(ok[3].startswith("invalid: "), ok[3])
        self.assertIn(self.hostURL(gateway), ok[3])

    @inlineCallbacks
    def test_hostURLAcceptedWithoutConfiguredURL(self) -> Any:
        """
        Without C{relayURL}, an AUTH event naming C{ws://<Host>/} (without
        the trailing slash, too) is accepted.
        """
        gateway = yield self.startAuthGateway()
        ok = yield self.authenticate(gateway, self.hostURL(gateway).rstrip("/"))
        self.assertEqual(ok[2:], [True, ""])

    @inlineCallbacks
    def test_forwardedTLS(self) -> Any:
        """
        Behind a TLS terminator that sends C{X-Forwarded-Proto: https}, the
        expected URL is C{wss://<Host>/}: C{ws://<Host>/} is refused.
        """
        gateway = yield self.startAuthGateway()
        headers = {"X-Forwarded-Proto": "https"}
        ok = yield self.authenticate(gateway, self.hostURL(gateway), headers)
        self.assertFalse(ok[2])
        self.assertIn(self.hostURL(gateway, "wss"), ok[3])
        ok = yield self.authenticate(gateway, self.hostURL(gateway, "wss"), headers)
        self.assertEqual(ok[2:], [True, ""])

    @inlineCallbacks
    def test_configuredURLWins(self) -> Any:
        """
        With C{relayURL}, an AUTH event naming the C{Host} URL is refused
        with a message naming the configured one.
        """
        gateway = yield self.startAuthGateway(relayURL="wss://relay.example.com")
        ok = yield self.authenticate(gateway, self.hostURL(gateway))
        self.assertFalse(ok[2])
        self.assertIn("wss://relay.example.com/", ok[3])
        ok = yield self.authenticate(gateway, "wss://relay.example.com/")
        self.assertEqual(ok[2:], [True, ""])


class GatewayAuthLogTests(SynchronousTestCase):
    """
    A gateway that requires NIP-42 says at start which URL AUTH events must
    name.
    """

    def startedMessages(self, **kwargs: Any) -> list[str]:
        messages: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "NIP-42" in (event.get("log_format") or ""):
                messages.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        clock = MemoryReactorClock()
        pool = RelayPool(clock, nameService=StaticNameService(), fetchInformation=False)
        gateway = Gateway(clock, pool, "tcp:0", authRequired=True, **kwargs)
        gateway.startService()
        self.addCleanup(gateway.stopService)
        return messages

    def test_configuredURLLogged(self) -> None:
        """
        The configured URL is logged, normalized.
        """
        (message,) = self.startedMessages(relayURL="wss://Relay.Example.com")
        self.assertIn("wss://relay.example.com/", message)

    def test_hostURLLogged(self) -> None:
        """
        Without a configured URL, the log says the URL comes from the Host
        header and names C{--relay-url}.
        """
        (message,) = self.startedMessages()
        self.assertIn("ws://<Host>/", message)
        self.assertIn("--relay-url", message)
