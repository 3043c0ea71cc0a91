"""
Tests for L{relaypool.gateway.auth}: NIP-42 authentication events.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidEvent
from relaypool.gateway.auth import (
    makeChallenge,
    relayURLMatches,
    verifyAuthEvent,
)
from relaypool.nostr.event import AUTH_KIND, Event
from relaypool.testing import TEST_PRIVATE_KEY, TEST_PUBLIC_KEY

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

    def test_otherRelay(self) -> None:
        """
        An event naming another relay is refused.
        """
        self.assertRaises(
            InvalidEvent,
            verifyAuthEvent,
            authEvent(relay="wss://elsewhere.example.com/"),
            "abc",
            URL,
            NOW,
        )

    def test_noRelayTag(self) -> None:
        """
        An event without a relay tag is refused, even when the gateway has no
        configured URL.
        """
        self.assertRaises(InvalidEvent, verifyAuthEvent, authEvent(relay=None), "abc", None, NOW)

    def test_anyRelayWithoutURL(self) -> None:
        """
        Without a configured URL, any relay tag is accepted.
        """
        verifyAuthEvent(authEvent(relay="ws://127.0.0.1:1234"), "abc", None, NOW)

    def test_badSignature(self) -> None:
        """
        An event whose signature does not verify is refused.
        """
        event = authEvent()
        forged = replace(event, sig=("0" if event.sig[0] != "0" else "1") + event.sig[1:])
        self.assertRaises(InvalidEvent, verifyAuthEvent, forged, "abc", URL, NOW)


class RelayURLMatchesTests(SynchronousTestCase):
    """
    L{relayURLMatches} compares host and path loosely.
    """

    def test_loose(self) -> None:
        """
        Scheme, port, host case and a trailing slash do not matter.
        """
        self.assertTrue(relayURLMatches("ws://Relay.Example.com:8080", URL))
        self.assertTrue(
            relayURLMatches("wss://relay.example.com/nostr/", "wss://relay.example.com/nostr")
        )

    def test_different(self) -> None:
        """
        Another host or path does not match, nor does garbage.
        """
        self.assertFalse(relayURLMatches("wss://relay.example.org/", URL))
        self.assertFalse(relayURLMatches("wss://relay.example.com/other", URL))
        self.assertFalse(relayURLMatches("not a url", URL))
        self.assertFalse(relayURLMatches("ws://[::1", URL))


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
