"""
Tests for L{relaypool.nostr.event}.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidEvent, InvalidKey
from relaypool.nostr import event as eventModule
from relaypool.nostr.event import (
    DEFAULT_EVENT_LIMITS,
    Event,
    EventLimits,
    computeEventId,
    generatePrivateKey,
    isAddressable,
    isEphemeral,
    isRegular,
    isReplaceable,
    publicKeyFor,
    serializeForId,
)

PRIVATE_KEY = "5e7f2a0bc0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091"
PUBLIC_KEY = "52738645cb2476b7f88c674d8766d8ba0749e4af79e1d092a17aa10657f75d80"

# Signed by rust-nostr (nostr-sdk), an independent implementation.
SDK_EVENT = (
    '{"id":"91acf0df0681a904450d02f193af13c2d1593edb175b97b75ec31de4419c2bf4",'
    '"pubkey":"52738645cb2476b7f88c674d8766d8ba0749e4af79e1d092a17aa10657f75d80",'
    '"created_at":1700000001,"kind":30023,"tags":[["p",'
    '"52738645cb2476b7f88c674d8766d8ba0749e4af79e1d092a17aa10657f75d80"],'
    '["d","my-article"]],"content":"plain: \\"q\\" \\\\ / tab\\t nl\\n cr\\r \u00e9 '
    '\U0001f600 \u2028","sig":"d1a3331389e35abc4c04c2045d51212f022590e7b6b20ab8c48f'
    'a728e386337fb690660b9b731e3e40db256f4aed0af6a89f4025b710071a978561395b87c13f"}'
)

# Signed by rust-nostr over the standard JSON form (\u0001 and so on), as
# most clients do, not over the NIP-01 form with raw control characters.
SDK_CONTROL_EVENT = (
    '{"id":"76aa5e5df7d1ccc5dd32d603aecf98a63864688a73dbe10cc881803d54c9692c",'
    '"pubkey":"52738645cb2476b7f88c674d8766d8ba0749e4af79e1d092a17aa10657f75d80",'
    '"created_at":1700000000,"kind":1,"tags":[["e",'
    '"5c83da77af1dec6d7289834998ad7aafbd9e2191396d75ec3cc27f5a77226f36",'
    '"wss://nostr.example.com"],["t","x\\u0002y"],["expiration","1600000000"]],'
    '"content":"ctl:\\u0001\\u001f del:\x7f ls:\u2028 emoji:\U0001f600 q:\\" bs:\\\\ '
    'sl:/ tab:\\t nl:\\n cr:\\r bsp:\\b ff:\\f \u00e9","sig":"a1438168a440fad2e14a390c'
    "25810f388bab2afc3c72d8e26ed061ffe5624d14eeab20036680ce1b901c7cb6ad664f2088db7470"
    '2298a686f4e2527137802065"}'
)
SDK_CONTROL_EVENT_NIP01_ID = "8a0aac0a03bf191f535723bcc2ebf3db31a017a4a3b6bb3ecb6d8992d14e5d56"


def validDict(**overrides: Any) -> dict[str, Any]:
    """
    A well-formed event dict (its id and signature are not valid), with
    C{overrides} applied; a value of C{...} removes the field.
    """
    obj: dict[str, Any] = {
        "id": "a" * 64,
        "pubkey": PUBLIC_KEY,
        "created_at": 1700000000,
        "kind": 1,
        "tags": [["e", "b" * 64], ["t", "nostr"]],
        "content": "hello",
        "sig": "c" * 128,
    }
    for key, value in overrides.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return obj


class KindTests(SynchronousTestCase):
    """
    Tests for the NIP-01 kind ranges.
    """

    def test_replaceable(self) -> None:
        """
        Kinds 0, 3 and 10000-19999 are replaceable, and nothing else.
        """
        self.assertEqual(
            [k for k in (0, 1, 2, 3, 9999, 10000, 19999, 20000) if isReplaceable(k)],
            [0, 3, 10000, 19999],
        )

    def test_ephemeral(self) -> None:
        """
        Kinds 20000-29999 are ephemeral.
        """
        self.assertEqual(
            [k for k in (19999, 20000, 29999, 30000) if isEphemeral(k)], [20000, 29999]
        )

    def test_addressable(self) -> None:
        """
        Kinds 30000-39999 are addressable.
        """
        self.assertEqual(
            [k for k in (29999, 30000, 39999, 40000) if isAddressable(k)], [30000, 39999]
        )

    def test_regular(self) -> None:
        """
        Kinds in none of the other ranges are regular.
        """
        self.assertEqual(
            [k for k in (0, 1, 2, 3, 4, 44, 500, 1000, 10000, 20000, 30000, 40000) if isRegular(k)],
            [1, 2, 4, 44, 500, 1000, 40000],
        )


class SerializationTests(SynchronousTestCase):
    """
    Tests for L{serializeForId} and L{computeEventId}.
    """

    def test_plain(self) -> None:
        """
        Without special characters, the serialization is compact JSON of
        C{[0, pubkey, created_at, kind, tags, content]}.
        """
        self.assertEqual(
            serializeForId(PUBLIC_KEY, 1700000000, 1, [["t", "x"], ["p", "y", "z"]], "hi"),
            b'[0,"' + PUBLIC_KEY.encode() + b'",1700000000,1,[["t","x"],["p","y","z"]],"hi"]',
        )

    def test_escapes(self) -> None:
        """
        Line feed, double quote, backslash, carriage return, tab, backspace
        and form feed are escaped; slash and non-ASCII text are verbatim.
        """
        content = 'a\nb"c\\d\re\tf\bg\fh/i\u00e9\U0001f600'
        self.assertEqual(
            serializeForId(PUBLIC_KEY, 1, 1, [], content),
            b'[0,"'
            + PUBLIC_KEY.encode()
            + b'",1,1,[],"a\\nb\\"c\\\\d\\re\\tf\\bg\\fh/i'
            + "\u00e9\U0001f600".encode()
            + b'"]',
        )

    def test_otherControlCharactersVerbatim(self) -> None:
        """
        Control characters other than the escaped ones, DEL and U+2028 are
        written verbatim, in tags and content alike.
        """
        expected = (
            b'[0,"'
            + PUBLIC_KEY.encode()
            + b'",5,7,[["t","a\x01b"]],"\x00\x01\x1f\x7f'
            + "\u2028".encode()
            + b'\\n"]'
        )
        self.assertEqual(
            serializeForId(PUBLIC_KEY, 5, 7, [["t", "a\x01b"]], "\x00\x01\x1f\x7f\u2028\n"),
            expected,
        )

    def test_literalBackslashU(self) -> None:
        """
        Content holding a literal backslash followed by C{u0041} is
        serialized with the backslash escaped and nothing else changed.
        """
        self.assertEqual(
            serializeForId(PUBLIC_KEY, 1, 1, [], "\\u0041"),
            b'[0,"' + PUBLIC_KEY.encode() + b'",1,1,[],"\\\\u0041"]',
        )

    def test_computeEventId(self) -> None:
        """
        The id is the SHA-256 of the serialization, as lowercase hex.
        """
        content = 'x\x01\x7f\u2028\U0001f600"\\/\t\n'
        tags = [["e", "f" * 64, "wss://r"]]
        manual = (
            b'[0,"'
            + PUBLIC_KEY.encode()
            + b'",1700000000,1,[["e","'
            + b"f" * 64
            + b'","wss://r"]],"x\x01\x7f'
            + "\u2028\U0001f600".encode()
            + b'\\"\\\\/\\t\\n"]'
        )
        self.assertEqual(
            computeEventId(PUBLIC_KEY, 1700000000, 1, tags, content),
            hashlib.sha256(manual).hexdigest(),
        )

    def test_loneSurrogate(self) -> None:
        """
        A string holding a lone surrogate cannot be serialized.
        """
        exc = self.assertRaises(InvalidEvent, serializeForId, PUBLIC_KEY, 1, 1, [], "\ud800")
        self.assertTrue(str(exc).startswith("invalid: "))


class KeyTests(SynchronousTestCase):
    """
    Tests for key generation and derivation.
    """

    def test_generate(self) -> None:
        """
        L{generatePrivateKey} returns distinct 32-byte keys.
        """
        first, second = generatePrivateKey(), generatePrivateKey()
        self.assertEqual((len(first), len(second)), (32, 32))
        self.assertNotEqual(first, second)

    def test_publicKeyFor(self) -> None:
        """
        L{publicKeyFor} gives the x-only public key of a hex or bytes key.
        """
        self.assertEqual(publicKeyFor(PRIVATE_KEY), PUBLIC_KEY)
        self.assertEqual(publicKeyFor(bytes.fromhex(PRIVATE_KEY)), PUBLIC_KEY)
        self.assertEqual(publicKeyFor(PRIVATE_KEY.upper()), PUBLIC_KEY)

    def test_invalidKeys(self) -> None:
        """
        Keys of the wrong length or encoding, and zero, are rejected.
        """
        for key in (b"\x01" * 31, b"\x00" * 32, "zz" * 32, PRIVATE_KEY[:-1], b"\xff" * 32):
            self.assertRaises(InvalidKey, publicKeyFor, key)


class SignatureTests(SynchronousTestCase):
    """
    Tests for signing and verification.
    """

    def test_signRoundTrip(self) -> None:
        """
        A signed event has the signer's pubkey and a valid id and signature.
        """
        event = Event.sign(PRIVATE_KEY, 1, "hello", [["t", "x"]], createdAt=1700000000)
        self.assertEqual(
            (event.pubkey, event.kind, event.content, event.tags, event.createdAt),
            (PUBLIC_KEY, 1, "hello", (("t", "x"),), 1700000000),
        )
        self.assertTrue(event.hasValidId())
        self.assertTrue(event.hasValidSignature())
        event.verify()

    def test_signNow(self) -> None:
        """
        Without C{createdAt}, the event is dated now.
        """
        before = int(time.time())
        event = Event.sign(bytes.fromhex(PRIVATE_KEY), 1, "")
        self.assertTrue(before <= event.createdAt <= int(time.time()))

    def test_signControlCharacters(self) -> None:
        """
        An event with raw control characters is signed over the NIP-01
        serialization.
        """
        event = Event.sign(PRIVATE_KEY, 1, "a\x01b", [["t", "\x02"]], createdAt=1)
        self.assertEqual(event.id, computeEventId(PUBLIC_KEY, 1, 1, [["t", "\x02"]], "a\x01b"))
        event.verify()

    def test_independentImplementation(self) -> None:
        """
        An event signed by another implementation verifies, and its id is
        the one computed here.
        """
        event = Event.fromJSON(SDK_EVENT)
        event.verify()
        self.assertEqual(event.computeId(), event.id)

    def test_standardJSONControlCharacters(self) -> None:
        """
        An event whose id was computed over standard JSON (C{\\u00XX} for
        control characters) verifies, although its NIP-01 id differs.
        """
        event = Event.fromJSON(SDK_CONTROL_EVENT)
        event.verify()
        self.assertEqual(event.computeId(), SDK_CONTROL_EVENT_NIP01_ID)

    def test_forgedSignature(self) -> None:
        """
        A changed signature fails verification with C{invalid: bad
        signature}, naming the event.
        """
        event = Event.fromJSON(SDK_EVENT)
        forged = Event.fromDict(event.toDict() | {"sig": "0" + event.sig[1:]})
        self.assertFalse(forged.hasValidSignature())
        exc = self.assertRaises(InvalidEvent, forged.verify)
        self.assertEqual(str(exc), "invalid: bad signature")
        self.assertEqual(exc.eventId, event.id)

    def test_otherKeysSignature(self) -> None:
        """
        A valid signature by another key does not verify for this pubkey.
        """
        mine = Event.sign(PRIVATE_KEY, 1, "x", createdAt=1)
        theirs = Event.sign(generatePrivateKey(), 1, "x", createdAt=1)
        stolen = Event.fromDict(theirs.toDict() | {"pubkey": mine.pubkey, "id": mine.id})
        self.assertRaises(InvalidEvent, stolen.verify)

    def test_tamperedContent(self) -> None:
        """
        Changed content no longer matches the id.
        """
        event = Event.fromJSON(SDK_EVENT)
        tampered = Event.fromDict(event.toDict() | {"content": "changed"})
        self.assertFalse(tampered.hasValidId())
        exc = self.assertRaises(InvalidEvent, tampered.verify)
        self.assertEqual(str(exc), "invalid: event id does not match its content")

    def test_pubkeyNotOnCurve(self) -> None:
        """
        A pubkey that is not a point on the curve fails verification.
        """
        event = Event.sign(PRIVATE_KEY, 1, "x", createdAt=1)
        bogus = Event(
            id=computeEventId("0" * 64, 1, 1, [], "x"),
            pubkey="0" * 64,
            createdAt=1,
            kind=1,
            tags=(),
            content="x",
            sig=event.sig,
        )
        self.assertTrue(bogus.hasValidId())
        self.assertFalse(bogus.hasValidSignature())
        self.assertRaises(InvalidEvent, bogus.verify)

    def test_malformedFieldsAreInvalid(self) -> None:
        """
        An event built directly with malformed fields is reported invalid
        instead of raising something else.
        """
        for event in (
            Event("zz", PUBLIC_KEY, 1, 1, (), "x", "c" * 128),
            Event("a" * 64, PUBLIC_KEY, 1, 1, (), "\ud800", "c" * 128),
            Event("a" * 64, PUBLIC_KEY, 1, 1, (), "x", "not hex"),
        ):
            self.assertFalse(event.hasValidId())
            self.assertFalse(event.hasValidSignature())
            self.assertRaises(InvalidEvent, event.verify)

    def test_hugeCreatedAt(self) -> None:
        """
        Integers too large for orjson are still serialized.
        """
        self.assertEqual(
            serializeForId(PUBLIC_KEY, 2**70, 1, [], ""),
            b'[0,"' + PUBLIC_KEY.encode() + b'",' + str(2**70).encode() + b',1,[],""]',
        )
        event = Event("a" * 64, PUBLIC_KEY, 2**70, 1, (), "", "c" * 128)
        self.assertFalse(event.hasValidId())

    def test_publicKeyCacheBounded(self) -> None:
        """
        Parsed public keys are cached in an LRU of
        L{eventModule.PUBLIC_KEY_CACHE_SIZE} entries.
        """
        self.assertEqual(
            eventModule._xOnlyKey.cache_info().maxsize, eventModule.PUBLIC_KEY_CACHE_SIZE
        )


class FromDictTests(SynchronousTestCase):
    """
    Tests for L{Event.fromDict} and L{Event.fromJSON}.
    """

    def assertInvalid(
        self, obj: object, message: str, limits: EventLimits = DEFAULT_EVENT_LIMITS
    ) -> InvalidEvent:
        """
        Assert that C{obj} is rejected with an C{invalid: } message holding
        C{message}.
        """
        exc = self.assertRaises(InvalidEvent, Event.fromDict, obj, limits)
        self.assertTrue(str(exc).startswith("invalid: "), str(exc))
        self.assertIn(message, str(exc))
        return exc

    def test_roundTrip(self) -> None:
        """
        C{toDict} uses wire names and C{fromDict} reads it back.
        """
        event = Event.fromDict(validDict())
        self.assertEqual(event.toDict(), validDict())
        self.assertEqual(event.createdAt, 1700000000)
        self.assertEqual(event.tags, (("e", "b" * 64), ("t", "nostr")))

    def test_jsonRoundTrip(self) -> None:
        """
        C{toJSON} gives JSON that C{fromJSON} reads back equal.
        """
        event = Event.sign(PRIVATE_KEY, 1, "a\x01\U0001f600", [["t", "\u2028"]], createdAt=3)
        self.assertEqual(Event.fromJSON(event.toJSON()), event)
        self.assertEqual(Event.fromJSON(event.toJSON().decode()), event)

    def test_unknownFieldsIgnored(self) -> None:
        """
        Fields NIP-01 does not define are ignored.
        """
        self.assertEqual(Event.fromDict(validDict(extra=1)), Event.fromDict(validDict()))

    def test_notAnObject(self) -> None:
        """
        An event must be an object.
        """
        self.assertInvalid([], "JSON object")

    def test_badJSON(self) -> None:
        """
        C{fromJSON} rejects text that is not JSON.
        """
        exc = self.assertRaises(InvalidEvent, Event.fromJSON, b"{nope")
        self.assertTrue(str(exc).startswith("invalid: "))

    def test_missingFields(self) -> None:
        """
        Every NIP-01 field is required.
        """
        for key in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig"):
            self.assertInvalid(validDict(**{key: ...}), f"'{key}' is missing")

    def test_badId(self) -> None:
        """
        The id must be 64 lowercase hex characters; the error still names
        it when it is a string.
        """
        for bad in ("A" * 64, "a" * 63, "g" * 64, 5):
            exc = self.assertInvalid(validDict(id=bad), "'id'")
            self.assertEqual(exc.eventId, bad if isinstance(bad, str) else None)

    def test_eventIdOnOtherErrors(self) -> None:
        """
        An error in another field carries the event's id.
        """
        exc = self.assertInvalid(validDict(kind="1"), "'kind'")
        self.assertEqual(exc.eventId, "a" * 64)

    def test_badPubkey(self) -> None:
        """
        The pubkey must be 64 lowercase hex characters.
        """
        for bad in (PUBLIC_KEY.upper(), PUBLIC_KEY[:-1], None):
            self.assertInvalid(validDict(pubkey=bad), "'pubkey'")

    def test_badSig(self) -> None:
        """
        The signature must be 128 lowercase hex characters.
        """
        for bad in ("c" * 64, "C" * 128, ["c"]):
            self.assertInvalid(validDict(sig=bad), "'sig'")

    def test_badCreatedAt(self) -> None:
        """
        created_at must be a non-negative integer, not a bool or float.
        """
        for bad in (-1, True, 1.0, "1", 2**63):
            self.assertInvalid(validDict(created_at=bad), "'created_at'")

    def test_badKind(self) -> None:
        """
        kind must be an integer between 0 and 65535.
        """
        for bad in (-1, 65536, False, 1.0, "1"):
            self.assertInvalid(
                validDict(kind=bad), "field 'kind' must be an integer between 0 and 65535"
            )

    def test_badContent(self) -> None:
        """
        content must be a string.
        """
        self.assertInvalid(validDict(content=None), "'content'")

    def test_badTags(self) -> None:
        """
        tags must be a list of non-empty lists of strings.
        """
        for bad in ({}, [[]], ["e"], [["e", 1]], [("e", "x")], [["e", None]]):
            self.assertInvalid(validDict(tags=bad), "tag")

    def test_contentTooLong(self) -> None:
        """
        content is limited in UTF-8 bytes, not characters.
        """
        limits = EventLimits(maxContentBytes=8)
        Event.fromDict(validDict(content="\u00e9" * 4), limits)
        self.assertInvalid(validDict(content="\u00e9" * 5), "8 bytes", limits)

    def test_tooManyTags(self) -> None:
        """
        The number of tags is limited.
        """
        self.assertInvalid(
            validDict(tags=[["t", "x"]] * 3), "at most 2 tags", EventLimits(maxTags=2)
        )

    def test_tooManyTagElements(self) -> None:
        """
        The number of strings in one tag is limited.
        """
        self.assertInvalid(
            validDict(tags=[["t", "x", "y"]]), "at most 2 elements", EventLimits(maxTagElements=2)
        )

    def test_tagElementTooLong(self) -> None:
        """
        Each tag string is limited in UTF-8 bytes.
        """
        limits = EventLimits(maxTagElementBytes=4)
        Event.fromDict(validDict(tags=[["t", "\U0001f600"]]), limits)
        self.assertInvalid(validDict(tags=[["t", "a\U0001f600"]]), "4 bytes", limits)

    def test_unencodableContent(self) -> None:
        """
        Content with a lone surrogate near the size bound is rejected.
        """
        limits = EventLimits(maxContentBytes=3)
        self.assertInvalid(validDict(content="\ud800"), "Unicode", limits)


class TagTests(SynchronousTestCase):
    """
    Tests for tag accessors.
    """

    def event(self, *tags: tuple[str, ...]) -> Event:
        """
        An unsigned event with C{tags}.
        """
        return Event("a" * 64, PUBLIC_KEY, 1, 30000, tags, "", "c" * 128)

    def test_tagValues(self) -> None:
        """
        C{tagValues} lists the second element of every tag with that name.
        """
        event = self.event(("e", "1"), ("p", "2"), ("e", "3", "relay"), ("e",))
        self.assertEqual(event.tagValues("e"), ["1", "3"])
        self.assertEqual(event.tagValues("x"), [])

    def test_dTag(self) -> None:
        """
        C{dTag} is the first C{d} tag's value, or C{""}.
        """
        self.assertEqual(self.event(("d", "one"), ("d", "two")).dTag(), "one")
        self.assertEqual(self.event(("t", "x")).dTag(), "")
        self.assertEqual(self.event(("d",)).dTag(), "")

    def test_expiration(self) -> None:
        """
        C{expiration} parses the NIP-40 tag.
        """
        self.assertEqual(self.event(("expiration", "1600000000")).expiration(), 1600000000)

    def test_expirationAbsentOrInvalid(self) -> None:
        """
        A missing or non-numeric expiration tag gives C{None}.
        """
        for tags in ((), (("expiration",),), (("expiration", "soon"),), (("expiration", "-5"),)):
            self.assertIsNone(self.event(*tags).expiration())
