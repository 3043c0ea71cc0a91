"""
Tests for L{relaypool.nostr.nip98}: NIP-98 HTTP authorization events.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidHTTPAuth
from relaypool.nostr.event import Event, generatePrivateKey
from relaypool.nostr.nip98 import (
    HTTP_AUTH_KIND,
    makeAuthorization,
    parseAuthorization,
    sameURL,
    verifyHTTPAuth,
)

KEY = generatePrivateKey()
URL = "http://127.0.0.1:7777/"
BODY = b'{"method":"supportedmethods","params":[]}'
NOW = 1_700_000_000


def signed(*tags: list[str], kind: int = HTTP_AUTH_KIND, createdAt: int = NOW) -> Event:
    return Event.sign(KEY, kind, "", tags, createdAt)


def standard(**overrides: str) -> Event:
    tags = {"u": URL, "method": "POST", "payload": hashlib.sha256(BODY).hexdigest()}
    tags.update(overrides)
    return signed(*([name, value] for name, value in tags.items() if value))


class ParseTests(SynchronousTestCase):
    """
    L{parseAuthorization} decodes C{Authorization: Nostr <base64>}.
    """

    def test_roundTrip(self) -> None:
        """
        The header L{makeAuthorization} builds decodes to its event.
        """
        header = makeAuthorization(KEY, URL, "POST", BODY, NOW)
        event = parseAuthorization(header.encode("ascii"))
        self.assertEqual(
            (event.kind, event.tagValues("u"), event.createdAt), (HTTP_AUTH_KIND, [URL], NOW)
        )

    def test_missing(self) -> None:
        """
        No header is refused, saying what to send.
        """
        error = self.assertRaises(InvalidHTTPAuth, parseAuthorization, None)
        self.assertIn("no Authorization header", str(error))

    def test_otherScheme(self) -> None:
        """
        Another scheme is refused.
        """
        self.assertRaises(InvalidHTTPAuth, parseAuthorization, "Bearer abc")

    def test_notBase64(self) -> None:
        """
        A token that is not base64 is refused.
        """
        error = self.assertRaises(InvalidHTTPAuth, parseAuthorization, "Nostr !!!")
        self.assertIn("not base64", str(error))

    def test_notAnEvent(self) -> None:
        """
        Base64 of something that is not an event is refused.
        """
        token = base64.b64encode(b'{"id": 1}').decode()
        error = self.assertRaises(InvalidHTTPAuth, parseAuthorization, f"Nostr {token}")
        self.assertIn("no valid event", str(error))


class VerifyTests(SynchronousTestCase):
    """
    L{verifyHTTPAuth} makes NIP-98's checks, and NIP-86's payload one.
    """

    def verify(self, event: Event, **kwargs: object) -> None:
        verifyHTTPAuth(event, URL, "POST", BODY, NOW, **kwargs)  # type: ignore[arg-type]

    def assertRefused(self, event: Event, expected: str, **kwargs: object) -> None:
        error = self.assertRaises(InvalidHTTPAuth, self.verify, event, **kwargs)
        self.assertIn(expected, str(error))

    def test_valid(self) -> None:
        """
        An event with the right kind, time, URL, method, payload and
        signature passes.
        """
        self.verify(standard())

    def test_kind(self) -> None:
        """
        Another kind is refused.
        """
        self.assertRefused(signed(["u", URL], ["method", "POST"], kind=1), "kind 27235")

    def test_stale(self) -> None:
        """
        A C{created_at} further than the window from now is refused; the
        window is configurable.
        """
        old = signed(["u", URL], ["method", "POST"], createdAt=NOW - 61)
        self.assertRefused(old, "within 60 seconds", requirePayload=False)
        self.verify(old, requirePayload=False, window=120.0)

    def test_future(self) -> None:
        """
        A C{created_at} too far in the future is refused too.
        """
        self.assertRefused(signed(["u", URL], ["method", "POST"], createdAt=NOW + 61), "within")

    def test_wrongURL(self) -> None:
        """
        A C{u} tag naming another URL is refused, naming the expected one.
        """
        self.assertRefused(standard(u="http://127.0.0.1:7778/"), URL)

    def test_missingURL(self) -> None:
        """
        An event without a C{u} tag is refused.
        """
        self.assertRefused(standard(u=""), "u tag")

    def test_wrongMethod(self) -> None:
        """
        A C{method} tag other than the request's is refused.
        """
        self.assertRefused(standard(method="GET"), "method tag must be POST")

    def test_wrongPayload(self) -> None:
        """
        A C{payload} tag that is not the SHA-256 of the body is refused.
        """
        self.assertRefused(standard(payload=hashlib.sha256(b"x").hexdigest()), "payload tag")

    def test_missingPayload(self) -> None:
        """
        Without a C{payload} tag, the event is refused when it is required
        (NIP-86), accepted when not.
        """
        self.assertRefused(standard(payload=""), "needs a payload tag")
        self.verify(standard(payload=""), requirePayload=False)

    def test_badSignature(self) -> None:
        """
        An event whose signature does not verify is refused.
        """
        self.assertRefused(replace(standard(), sig="00" * 64), "does not verify")


class SameURLTests(SynchronousTestCase):
    """
    L{sameURL} compares the C{u} tag with the request URL.
    """

    def test_equivalent(self) -> None:
        """
        C{http}/C{ws} and C{https}/C{wss} are the same, as are case, a
        default port and a trailing slash.
        """
        self.assertTrue(sameURL("ws://127.0.0.1:7777", URL))
        self.assertTrue(sameURL("WSS://Relay.Example.com:443", "https://relay.example.com/"))

    def test_different(self) -> None:
        """
        Security, host, port and path must match.
        """
        for claimed in (
            "https://127.0.0.1:7777/",
            "http://localhost:7777/",
            "http://127.0.0.1:7778/",
            "http://127.0.0.1:7777/admin",
            "not a url",
        ):
            self.assertFalse(sameURL(claimed, URL), claimed)
