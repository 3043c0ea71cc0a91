"""
Tests for L{relaypool.nostr.nip11}.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidRelayInformation, InvalidRelayURL
from relaypool.nostr.nip11 import Limitation, RelayInformation, informationURL

# The nostr.wine example of NIP-11, with an old-style max_filters.
WINE: dict[str, Any] = {
    "contact": "wino@nostr.wine",
    "description": "A paid nostr relay for wine enthusiasts and everyone else.",
    "fees": {"admission": [{"amount": 18888000, "unit": "msats"}]},
    "icon": "https://image.nostr.build/30acdce4.png",
    "limitation": {
        "auth_required": False,
        "created_at_lower_limit": 94608000,
        "created_at_upper_limit": 300,
        "max_event_tags": 4000,
        "max_limit": 1000,
        "max_message_length": 524288,
        "max_subid_length": 71,
        "max_subscriptions": 50,
        "max_filters": 10,
        "min_pow_difficulty": 0,
        "payment_required": True,
        "restricted_writes": True,
    },
    "name": "nostr.wine",
    "payments_url": "https://nostr.wine/invoices",
    "pubkey": "4918eb332a41b71ba9a74b1dc64276cfff592e55107b93baae38af3520e55975",
    "software": "https://nostr.wine",
    "supported_nips": [1, 2, 4, 9, 11, 40, 42, 50, 70, 77],
    "terms_of_service": "https://nostr.wine/terms",
    "version": "0.3.3",
}


class RelayInformationTests(SynchronousTestCase):
    """
    Tests for L{RelayInformation}.
    """

    def test_parse(self) -> None:
        """
        Known fields are read into camelCase attributes.
        """
        info = RelayInformation.fromDict(WINE)
        self.assertEqual(info.name, "nostr.wine")
        self.assertEqual(info.supportedNips, (1, 2, 4, 9, 11, 40, 42, 50, 70, 77))
        self.assertEqual(info.termsOfService, "https://nostr.wine/terms")
        self.assertEqual(info.paymentsURL, "https://nostr.wine/invoices")
        self.assertEqual(info.fees, WINE["fees"])
        self.assertEqual(info.limitation.maxSubscriptions, 50)
        self.assertEqual(info.limitation.maxFilters, 10)
        self.assertEqual(info.limitation.authRequired, False)
        self.assertEqual(info.limitation.paymentRequired, True)

    def test_roundTrip(self) -> None:
        """
        C{toDict} writes back the document that was read.
        """
        self.assertEqual(RelayInformation.fromDict(WINE).toDict(), WINE)

    def test_jsonRoundTrip(self) -> None:
        """
        C{toJSON} gives JSON that C{fromJSON} reads back equal.
        """
        info = RelayInformation.fromDict(WINE)
        self.assertEqual(RelayInformation.fromJSON(info.toJSON()), info)

    def test_selfField(self) -> None:
        """
        The relay's own pubkey, C{self} on the wire, is C{selfPubkey}.
        """
        info = RelayInformation.fromDict({"self": "ab"})
        self.assertEqual(info.selfPubkey, "ab")
        self.assertEqual(info.toDict(), {"self": "ab"})

    def test_unknownFieldsKept(self) -> None:
        """
        Unknown fields are kept in C{extra} and written back.
        """
        info = RelayInformation.fromDict({"name": "r", "posting_policy": "https://x"})
        self.assertEqual(info.extra, {"posting_policy": "https://x"})
        self.assertEqual(info.toDict(), {"name": "r", "posting_policy": "https://x"})

    def test_unknownLimitationFieldsIgnored(self) -> None:
        """
        Unknown limitation fields are ignored.
        """
        info = RelayInformation.fromDict({"limitation": {"max_limit": 5, "frobs": 1}})
        self.assertEqual(info.limitation, Limitation(maxLimit=5))

    def test_nullIsAbsent(self) -> None:
        """
        C{null} values count as absent.
        """
        info = RelayInformation.fromDict({"name": None, "limitation": {"max_limit": None}})
        self.assertEqual(info, RelayInformation())

    def test_emptyOmitted(self) -> None:
        """
        An empty document writes as C{{}}.
        """
        self.assertEqual(RelayInformation().toDict(), {})

    def test_hashable(self) -> None:
        """
        Documents can be hashed.
        """
        self.assertEqual(
            hash(RelayInformation.fromDict(WINE)), hash(RelayInformation.fromDict(WINE))
        )

    def test_notAnObject(self) -> None:
        """
        A document must be an object.
        """
        self.assertRaises(InvalidRelayInformation, RelayInformation.fromDict, [])

    def test_badJSON(self) -> None:
        """
        Text that is not JSON is rejected.
        """
        self.assertRaises(InvalidRelayInformation, RelayInformation.fromJSON, b"<html>")

    def test_wrongTypes(self) -> None:
        """
        Known fields of the wrong type are rejected, naming the field.
        """
        for obj, name in (
            ({"name": 5}, "name"),
            ({"supported_nips": "1,2"}, "supported_nips"),
            ({"supported_nips": ["1"]}, "supported_nips"),
            ({"fees": []}, "fees"),
            ({"limitation": []}, "limitation"),
            ({"limitation": {"max_limit": "5"}}, "max_limit"),
            ({"limitation": {"max_limit": -5}}, "max_limit"),
            ({"limitation": {"max_limit": True}}, "max_limit"),
            ({"limitation": {"auth_required": 1}}, "auth_required"),
        ):
            exc = self.assertRaises(InvalidRelayInformation, RelayInformation.fromDict, obj)
            self.assertIn(name, str(exc))

    def test_limitationJSON(self) -> None:
        """
        A limitation writes snake_case names, omitting unset fields.
        """
        self.assertEqual(
            orjson.dumps(Limitation(maxFilters=3, restrictedWrites=False).toDict()),
            b'{"max_filters":3,"restricted_writes":false}',
        )


class InformationURLTests(SynchronousTestCase):
    """
    Tests for L{informationURL}.
    """

    def test_ws(self) -> None:
        """
        C{ws://} becomes C{http://}, keeping host, port and path.
        """
        self.assertEqual(informationURL("ws://127.0.0.1:7777/a"), "http://127.0.0.1:7777/a")

    def test_wss(self) -> None:
        """
        C{wss://} becomes C{https://}, keeping the query.
        """
        self.assertEqual(
            informationURL("wss://relay.example.com/?x=1"), "https://relay.example.com/?x=1"
        )

    def test_uppercaseScheme(self) -> None:
        """
        The scheme is case-insensitive; the URL is the normalized relay URL's.
        """
        self.assertEqual(informationURL("WSS://relay.example.com"), "https://relay.example.com/")

    def test_invalid(self) -> None:
        """
        URLs that are not WebSocket URLs with a host are rejected.
        """
        for url in ("https://relay.example.com", "ws://", "relay.example.com", ""):
            self.assertRaises(InvalidRelayURL, informationURL, url)
