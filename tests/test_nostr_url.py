"""
Tests for L{relaypool.nostr.url}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidRelayURL
from relaypool.nostr.url import RelayURL, parseRelayURL


class ParseRelayURLTests(SynchronousTestCase):
    def test_normalizes(self) -> None:
        """
        Scheme and host are lowercased, blanks stripped, an empty path
        becomes C{/}, the default port follows the scheme, and the path and
        query are kept apart.
        """
        self.assertEqual(
            parseRelayURL(" WSS://Relay.Example.COM "),
            RelayURL("wss://relay.example.com/", "relay.example.com", 443, True),
        )
        self.assertEqual(
            parseRelayURL("ws://127.0.0.1:7777/a?b=1"),
            RelayURL("ws://127.0.0.1:7777/a?b=1", "127.0.0.1", 7777, False, "/a", "b=1"),
        )

    def test_nameForNameService(self) -> None:
        """
        C{name} is C{host:port}, with an IPv6 host in brackets.
        """
        self.assertEqual(parseRelayURL("ws://relay.example").name, "relay.example:80")
        self.assertEqual(parseRelayURL("wss://[::1]:9/").name, "[::1]:9")
        self.assertEqual(parseRelayURL("wss://[::1]:9/").url, "wss://[::1]:9/")

    def test_rejections(self) -> None:
        """
        Non-websocket schemes, missing hosts, bad ports and non-strings are
        refused with a message naming the problem.
        """
        cases = {
            "http://relay.example": '"http://relay.example" is not a ws:// or wss:// URL',
            "ws://": '"ws://" has no host',
            "ws://a:x": '"ws://a:x" is not a valid URL',
            "relay.example": '"relay.example" is not a ws:// or wss:// URL',
        }
        for url, message in cases.items():
            error = self.assertRaises(InvalidRelayURL, parseRelayURL, url)
            self.assertTrue(str(error).startswith(message), str(error))
        self.assertRaises(InvalidRelayURL, parseRelayURL, 7)
