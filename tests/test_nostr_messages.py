"""
Tests for L{relaypool.nostr.messages}.
"""

from __future__ import annotations

import orjson
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidEvent, InvalidMessage
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter, FilterLimits
from relaypool.nostr.messages import (
    ClientAuth,
    ClientClose,
    ClientCount,
    ClientEvent,
    ClientReq,
    RelayAuth,
    RelayClosed,
    RelayCount,
    RelayEOSE,
    RelayEvent,
    RelayNotice,
    RelayOK,
    isFinalRefusal,
    isRelayFailure,
    parseClientMessage,
    parseRelayMessage,
    reasonPrefix,
)

PRIVATE_KEY = "5e7f2a0bc0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091"
EVENT = Event.sign(PRIVATE_KEY, 1, "hi \x01", [["t", "x"]], createdAt=1700000000)
FILTERS = (Filter.fromDict({"kinds": [1]}), Filter.fromDict({"#t": ["x"], "limit": 3}))


def dumps(*items: object) -> bytes:
    """
    A JSON array of C{items}.
    """
    return orjson.dumps(list(items))


class RelayMessageTests(SynchronousTestCase):
    """
    Tests for relay-to-client messages and L{parseRelayMessage}.
    """

    def assertInvalid(self, data: bytes | str) -> InvalidMessage:
        """
        Assert that C{data} is not a valid relay message.
        """
        exc = self.assertRaises(InvalidMessage, parseRelayMessage, data)
        self.assertTrue(str(exc).startswith("invalid: "), str(exc))
        return exc

    def test_roundTrips(self) -> None:
        """
        Every relay message parses back from its JSON.
        """
        for message in (
            RelayEvent("sub", EVENT),
            RelayOK(EVENT.id, True, ""),
            RelayOK(EVENT.id, False, "blocked: no"),
            RelayEOSE("sub"),
            RelayClosed("sub", "error: bye"),
            RelayNotice("hello"),
            RelayAuth("challenge"),
            RelayCount("sub", 5),
            RelayCount("sub", 7, approximate=True),
        ):
            self.assertEqual(parseRelayMessage(message.toJSON()), message)

    def test_wireFormat(self) -> None:
        """
        Messages are written as NIP-01 arrays.
        """
        self.assertEqual(
            orjson.loads(RelayEvent("s", EVENT).toJSON()), ["EVENT", "s", EVENT.toDict()]
        )
        self.assertEqual(RelayOK("ab", False, "pow: x").toJSON(), b'["OK","ab",false,"pow: x"]')
        self.assertEqual(RelayCount("s", 1).toJSON(), b'["COUNT","s",{"count":1}]')

    def test_acceptsStr(self) -> None:
        """
        Text as well as bytes is parsed.
        """
        self.assertEqual(parseRelayMessage('["EOSE","s"]'), RelayEOSE("s"))

    def test_lenientOptionalParts(self) -> None:
        """
        A missing OK or CLOSED message reads as empty, and extra trailing
        elements are ignored.
        """
        self.assertEqual(parseRelayMessage(dumps("OK", "ab", True)), RelayOK("ab", True, ""))
        self.assertEqual(parseRelayMessage(dumps("CLOSED", "s")), RelayClosed("s", ""))
        self.assertEqual(parseRelayMessage(dumps("EOSE", "s", "extra")), RelayEOSE("s"))

    def test_malformedEvent(self) -> None:
        """
        A malformed event inside EVENT raises L{InvalidEvent}.
        """
        self.assertRaises(
            InvalidEvent, parseRelayMessage, dumps("EVENT", "s", {**EVENT.toDict(), "kind": -1})
        )

    def test_badJSON(self) -> None:
        """
        Text that is not JSON is rejected.
        """
        self.assertInvalid(b"[nope")

    def test_badShapes(self) -> None:
        """
        Messages of the wrong shape are rejected.
        """
        for data in (
            dumps(),
            b"{}",
            b'"EVENT"',
            dumps(1, "s"),
            dumps("EVENT", "s"),
            dumps("EVENT", 1, EVENT.toDict()),
            dumps("OK", EVENT.id),
            dumps("OK", EVENT.id, "true", ""),
            dumps("OK", EVENT.id, True, 5),
            dumps("EOSE"),
            dumps("CLOSED", 1, ""),
            dumps("NOTICE"),
            dumps("AUTH", {}),
            dumps("COUNT", "s"),
            dumps("COUNT", "s", {"count": -1}),
            dumps("COUNT", "s", {"count": True}),
            dumps("COUNT", "s", {"count": 1, "approximate": "yes"}),
        ):
            self.assertInvalid(data)

    def test_unknownVerb(self) -> None:
        """
        An unknown verb is rejected.
        """
        self.assertIn("unknown", str(self.assertInvalid(dumps("PING", "x"))))


class ClientMessageTests(SynchronousTestCase):
    """
    Tests for client-to-relay messages and L{parseClientMessage}.
    """

    def assertInvalid(self, data: bytes) -> InvalidMessage:
        """
        Assert that C{data} is not a valid client message.
        """
        exc = self.assertRaises(InvalidMessage, parseClientMessage, data)
        self.assertTrue(str(exc).startswith("invalid: "), str(exc))
        return exc

    def test_roundTrips(self) -> None:
        """
        Every client message parses back from its JSON.
        """
        for message in (
            ClientEvent(EVENT),
            ClientReq("sub", FILTERS),
            ClientClose("sub"),
            ClientCount("sub", FILTERS),
            ClientAuth(EVENT),
        ):
            self.assertEqual(parseClientMessage(message.toJSON()), message)

    def test_reqWireFormat(self) -> None:
        """
        REQ writes each filter as its own element.
        """
        self.assertEqual(
            orjson.loads(ClientReq("s", FILTERS).toJSON()),
            ["REQ", "s", {"kinds": [1]}, {"#t": ["x"], "limit": 3}],
        )

    def test_badJSON(self) -> None:
        """
        Text that is not JSON is rejected without a subscription id.
        """
        self.assertIsNone(self.assertInvalid(b"[").subscriptionId)

    def test_unknownVerb(self) -> None:
        """
        An unknown verb is rejected.
        """
        self.assertIn("unknown", str(self.assertInvalid(dumps("NOTICE", "x"))))

    def test_subscriptionIdRules(self) -> None:
        """
        A subscription id must be a non-empty string of at most 64
        characters.
        """
        for verb in ("REQ", "CLOSE", "COUNT"):
            for bad in ("", "x" * 65, 5, None):
                exc = self.assertInvalid(dumps(verb, bad, {}))
                self.assertIsNone(exc.subscriptionId)
        self.assertEqual(parseClientMessage(dumps("CLOSE", "x" * 64)), ClientClose("x" * 64))

    def test_reqNeedsFilter(self) -> None:
        """
        REQ and COUNT need at least one filter; the error names the
        subscription.
        """
        for verb in ("REQ", "COUNT"):
            self.assertEqual(self.assertInvalid(dumps(verb, "sub")).subscriptionId, "sub")

    def test_invalidFilter(self) -> None:
        """
        An invalid filter in REQ is an L{InvalidMessage} naming the
        subscription and the filter problem.
        """
        exc = self.assertInvalid(dumps("REQ", "sub", {"kinds": [1]}, {"#ee": ["x"]}))
        self.assertEqual(exc.subscriptionId, "sub")
        self.assertIn("'#ee'", str(exc))

    def test_filterLimits(self) -> None:
        """
        The filter limits given are applied.
        """
        self.assertRaises(
            InvalidMessage,
            parseClientMessage,
            dumps("REQ", "s", {"kinds": [1, 2]}),
            filterLimits=FilterLimits(maxValues=1),
        )

    def test_closeArguments(self) -> None:
        """
        CLOSE takes exactly a subscription id.
        """
        self.assertEqual(self.assertInvalid(dumps("CLOSE", "s", "x")).subscriptionId, "s")

    def test_eventArguments(self) -> None:
        """
        EVENT and AUTH take exactly one event.
        """
        for verb in ("EVENT", "AUTH"):
            self.assertInvalid(dumps(verb))
            self.assertInvalid(dumps(verb, EVENT.toDict(), 1))

    def test_malformedEvent(self) -> None:
        """
        A malformed event raises L{InvalidEvent} carrying its id.
        """
        exc = self.assertRaises(
            InvalidEvent, parseClientMessage, dumps("EVENT", {**EVENT.toDict(), "sig": "x"})
        )
        self.assertEqual(exc.eventId, EVENT.id)
        self.assertTrue(str(exc).startswith("invalid: "))

    def test_eventWithoutId(self) -> None:
        """
        A malformed event without a string id raises L{InvalidEvent} with
        no id.
        """
        exc = self.assertRaises(InvalidEvent, parseClientMessage, dumps("EVENT", {"id": 5}))
        self.assertIsNone(exc.eventId)


class ReasonPrefixTests(SynchronousTestCase):
    """
    Tests for L{reasonPrefix}.
    """

    def test_standardPrefixes(self) -> None:
        """
        The standard prefixes are recognised.
        """
        for prefix in ("duplicate", "pow", "blocked", "rate-limited", "invalid"):
            self.assertEqual(reasonPrefix(f"{prefix}: why"), prefix)
        for prefix in ("restricted", "mute", "error", "auth-required"):
            self.assertEqual(reasonPrefix(f"{prefix}:why"), prefix)

    def test_otherMessages(self) -> None:
        """
        Messages without a standard prefix give C{None}.
        """
        for message in ("", "blocked", "something: else", "see https://x", " invalid: x"):
            self.assertIsNone(reasonPrefix(message))

    def test_finalRefusals(self) -> None:
        """
        C{blocked:}, C{invalid:}, C{pow:}, C{restricted:} and C{mute:} are
        final refusals; every other answer, a message without a known prefix
        included, is temporary.
        """
        for prefix in ("blocked", "invalid", "pow", "restricted", "mute"):
            self.assertTrue(isFinalRefusal(f"{prefix}: why"), prefix)
        temporary = ("rate-limited: x", "error: x", "auth-required: x", "duplicate: x", "", "no")
        for message in temporary:
            self.assertFalse(isFinalRefusal(message), message)

    def test_relayFailures(self) -> None:
        """
        Only C{error:} and a message without a known prefix report a failure
        of the relay; refusals by its rules do not.
        """
        for message in ("error: x", "", "something: else"):
            self.assertTrue(isRelayFailure(message), message)
        for prefix in ("blocked", "invalid", "pow", "restricted", "mute", "rate-limited"):
            self.assertFalse(isRelayFailure(f"{prefix}: x"), prefix)
        for prefix in ("auth-required", "duplicate"):
            self.assertFalse(isRelayFailure(f"{prefix}: x"), prefix)
