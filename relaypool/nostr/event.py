"""
NIP-01 events: validation, canonical serialization, ids and BIP-340
signatures.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from coincurve import PrivateKey, PublicKeyXOnly

from relaypool.errors import InvalidEvent, InvalidKey

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_ANY_CASE_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DECIMAL = re.compile(r"[0-9]{1,19}")

#: NIP-42: the kind of the events that answer an AUTH challenge.
AUTH_KIND = 22242

MAX_CREATED_AT = 2**63 - 1
"""
The largest C{created_at} accepted: the largest signed 64-bit integer, so
every accepted event can be stored and re-serialized without overflow.
"""

PUBLIC_KEY_CACHE_SIZE = 4096
"""
How many parsed public keys L{Event.hasValidSignature} keeps, least
recently used evicted first, so that verifying many events by the same
authors parses each key once.
"""


def isReplaceable(kind: int) -> bool:
    """
    Whether C{kind} is replaceable (0, 3 and 10000-19999): relays keep
    only the latest event per pubkey and kind.
    """
    return kind == 0 or kind == 3 or 10000 <= kind < 20000


def isEphemeral(kind: int) -> bool:
    """
    Whether C{kind} is ephemeral (20000-29999): relays do not store it.
    """
    return 20000 <= kind < 30000


def isAddressable(kind: int) -> bool:
    """
    Whether C{kind} is addressable (30000-39999): relays keep only the
    latest event per pubkey, kind and C{d} tag.
    """
    return 30000 <= kind < 40000


def isRegular(kind: int) -> bool:
    """
    Whether C{kind} is regular: every event is stored.

    NIP-01 names the ranges 1, 2, 4-44 and 1000-9999; as relays do, every
    kind that is neither replaceable, ephemeral nor addressable is regular
    here too.
    """
    return not (isReplaceable(kind) or isEphemeral(kind) or isAddressable(kind))


@dataclass(frozen=True, slots=True)
class EventLimits:
    """
    Size bounds applied by L{Event.fromDict}.

    @ivar maxContentBytes: the largest C{content}, in UTF-8 bytes.
    @ivar maxTags: the most tags an event may have.
    @ivar maxTagElements: the most strings one tag may have.
    @ivar maxTagElementBytes: the largest string in a tag, in UTF-8 bytes.
    """

    maxContentBytes: int = 131072
    maxTags: int = 2500
    maxTagElements: int = 100
    maxTagElementBytes: int = 4096


DEFAULT_EVENT_LIMITS = EventLimits()

_ESCAPES = str.maketrans(
    {
        "\n": "\\n",
        '"': '\\"',
        "\\": "\\\\",
        "\r": "\\r",
        "\t": "\\t",
        "\b": "\\b",
        "\f": "\\f",
    }
)


def _quote(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _standardJSON(
    pubkey: str,
    createdAt: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
) -> bytes | None:
    try:
        return orjson.dumps([0, pubkey, createdAt, kind, tags, content])
    except orjson.JSONEncodeError:
        return None


def _exactSerialization(
    pubkey: str,
    createdAt: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
) -> bytes:
    text = "[0,{},{},{},[{}],{}]".format(
        _quote(pubkey),
        createdAt,
        kind,
        ",".join("[" + ",".join(map(_quote, tag)) + "]" for tag in tags),
        _quote(content),
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("invalid: event contains a string that is not valid Unicode") from None


def _isExact(standard: bytes) -> bool:
    # orjson writes control characters other than \n \r \t \b \f as
    # \u00XX; without that sequence (an escaped backslash followed by "u00"
    # only gives a false alarm) its output is the NIP-01 serialization.
    return b"\\u00" not in standard


def serializeForId(
    pubkey: str,
    createdAt: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
) -> bytes:
    """
    The exact NIP-01 serialization whose SHA-256 is an event's id.

    Only C{\\n \\" \\\\ \\r \\t \\b \\f} are escaped; every other
    character, other control characters included, is written verbatim as
    UTF-8.

    @raise InvalidEvent: if a string is not encodable as UTF-8 (it holds a
        lone surrogate).
    """
    standard = _standardJSON(pubkey, createdAt, kind, tags, content)
    if standard is not None and _isExact(standard):
        return standard
    return _exactSerialization(pubkey, createdAt, kind, tags, content)


def computeEventId(
    pubkey: str,
    createdAt: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
) -> str:
    """
    The NIP-01 id (lowercase hex SHA-256 of L{serializeForId}) of an event
    with these fields.
    """
    return hashlib.sha256(serializeForId(pubkey, createdAt, kind, tags, content)).hexdigest()


def _privateKey(privateKey: bytes | str) -> PrivateKey:
    if isinstance(privateKey, str):
        if not _ANY_CASE_HEX64.fullmatch(privateKey):
            raise InvalidKey("a private key must be 64 hex characters")
        privateKey = bytes.fromhex(privateKey)
    if len(privateKey) != 32:
        raise InvalidKey("a private key must be 32 bytes")
    try:
        return PrivateKey(privateKey)
    except ValueError:
        raise InvalidKey("the private key is out of the secp256k1 range") from None


def generatePrivateKey() -> bytes:
    """
    A new random secp256k1 private key, 32 bytes.
    """
    return PrivateKey().secret


def publicKeyFor(privateKey: bytes | str) -> str:
    """
    The x-only public key (64 lowercase hex characters) of C{privateKey}
    (32 bytes or 64 hex characters).

    @raise InvalidKey: if C{privateKey} is not a valid secp256k1 key.
    """
    return _privateKey(privateKey).public_key_xonly.format().hex()


@lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def _xOnlyKey(pubkey: str) -> PublicKeyXOnly | None:
    try:
        return PublicKeyXOnly(bytes.fromhex(pubkey))
    except ValueError:
        return None


def _utf8Length(s: str, field: str) -> int:
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEvent(
            f"invalid: field {field!r} contains a string that is not valid Unicode"
        ) from None


def _checkSize(s: str, maxBytes: int, field: str) -> None:
    # A str holds at most 4 UTF-8 bytes per character, so the encoding is
    # only needed for strings near the bound.
    if len(s) > maxBytes or (len(s) * 4 > maxBytes and _utf8Length(s, field) > maxBytes):
        raise InvalidEvent(f"invalid: field {field!r} is longer than {maxBytes} bytes")


def _checkTags(tags: object, limits: EventLimits) -> tuple[tuple[str, ...], ...]:
    if type(tags) is not list:
        raise InvalidEvent("invalid: field 'tags' must be a list of lists of strings")
    if len(tags) > limits.maxTags:
        raise InvalidEvent(f"invalid: an event may have at most {limits.maxTags} tags")
    result = []
    for tag in tags:
        if type(tag) is not list or not tag:
            raise InvalidEvent("invalid: every tag must be a non-empty list of strings")
        if len(tag) > limits.maxTagElements:
            raise InvalidEvent(f"invalid: a tag may have at most {limits.maxTagElements} elements")
        for element in tag:
            if type(element) is not str:
                raise InvalidEvent("invalid: every tag must be a non-empty list of strings")
            _checkSize(element, limits.maxTagElementBytes, "tags")
        result.append(tuple(tag))
    return tuple(result)


def _isInt(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _fromDict(obj: object, limits: EventLimits) -> Event:
    if type(obj) is not dict:
        raise InvalidEvent("invalid: an event must be a JSON object")
    for key in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig"):
        if key not in obj:
            raise InvalidEvent(f"invalid: field {key!r} is missing")
    eventId = obj["id"]
    pubkey = obj["pubkey"]
    createdAt = obj["created_at"]
    kind = obj["kind"]
    content = obj["content"]
    sig = obj["sig"]
    if type(eventId) is not str or not _HEX64.fullmatch(eventId):
        raise InvalidEvent("invalid: field 'id' must be 64 lowercase hex characters")
    if type(pubkey) is not str or not _HEX64.fullmatch(pubkey):
        raise InvalidEvent("invalid: field 'pubkey' must be 64 lowercase hex characters")
    if type(sig) is not str or not _HEX128.fullmatch(sig):
        raise InvalidEvent("invalid: field 'sig' must be 128 lowercase hex characters")
    if not _isInt(createdAt, 0, MAX_CREATED_AT):
        raise InvalidEvent(
            "invalid: field 'created_at' must be a non-negative integer (unix time in seconds)"
        )
    if not _isInt(kind, 0, 65535):
        raise InvalidEvent("invalid: field 'kind' must be an integer between 0 and 65535")
    if type(content) is not str:
        raise InvalidEvent("invalid: field 'content' must be a string")
    _checkSize(content, limits.maxContentBytes, "content")
    return Event(
        id=eventId,
        pubkey=pubkey,
        createdAt=createdAt,
        kind=kind,
        tags=_checkTags(obj["tags"], limits),
        content=content,
        sig=sig,
    )


@dataclass(frozen=True, slots=True)
class Event:
    """
    A Nostr event, as on the wire.

    Constructing one directly checks nothing; use L{Event.fromDict} or
    L{Event.fromJSON} for untrusted input, then L{Event.verify}.

    @ivar id: the event id, 64 lowercase hex characters.
    @ivar pubkey: the author's x-only public key, 64 lowercase hex characters.
    @ivar createdAt: unix time in seconds (C{created_at} on the wire).
    @ivar kind: the event kind, 0-65535.
    @ivar tags: the tags, each a non-empty tuple of strings.
    @ivar content: the content.
    @ivar sig: the BIP-340 signature of the id, 128 lowercase hex characters.
    """

    id: str
    pubkey: str
    createdAt: int
    kind: int
    tags: tuple[tuple[str, ...], ...]
    content: str
    sig: str

    @classmethod
    def fromDict(cls, obj: object, limits: EventLimits = DEFAULT_EVENT_LIMITS) -> Event:
        """
        Validate the types and sizes of a decoded JSON event and build an
        L{Event}. The id and signature are not checked: see L{verify}.

        @raise InvalidEvent: with a message starting with C{invalid: }, and
            C{eventId} set when C{obj} has a string C{id}.
        """
        try:
            return _fromDict(obj, limits)
        except InvalidEvent as e:
            if type(obj) is dict and type(obj.get("id")) is str:
                e.eventId = obj["id"]
            raise

    @classmethod
    def fromJSON(cls, data: bytes | str, limits: EventLimits = DEFAULT_EVENT_LIMITS) -> Event:
        """
        Parse and validate a JSON event, as L{fromDict}.

        @raise InvalidEvent: if C{data} is not JSON or not a valid event.
        """
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InvalidEvent(f"invalid: event is not valid JSON ({e})") from None
        return cls.fromDict(obj, limits)

    @classmethod
    def sign(
        cls,
        privateKey: bytes | str,
        kind: int,
        content: str,
        tags: Sequence[Sequence[str]] = (),
        createdAt: int | None = None,
    ) -> Event:
        """
        Build and sign a new event.

        @param privateKey: the author's key, 32 bytes or 64 hex characters.
        @param createdAt: unix time in seconds; C{None} means now.
        @raise InvalidKey: if C{privateKey} is not a valid key.
        """
        key = _privateKey(privateKey)
        pubkey = key.public_key_xonly.format().hex()
        if createdAt is None:
            createdAt = int(time.time())
        frozenTags = tuple(tuple(tag) for tag in tags)
        digest = hashlib.sha256(
            serializeForId(pubkey, createdAt, kind, frozenTags, content)
        ).digest()
        sig = key.sign_schnorr(digest, os.urandom(32))
        return cls(
            id=digest.hex(),
            pubkey=pubkey,
            createdAt=createdAt,
            kind=kind,
            tags=frozenTags,
            content=content,
            sig=sig.hex(),
        )

    def toDict(self) -> dict[str, Any]:
        """
        The event as a JSON-ready dict with wire field names.
        """
        return self._wireFields([list(tag) for tag in self.tags])

    def toJSON(self) -> bytes:
        """
        The event as compact JSON bytes.
        """
        # orjson writes the tag tuples as arrays: no lists to build.
        return orjson.dumps(self._wireFields(self.tags))

    def _wireFields(self, tags: object) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.createdAt,
            "kind": self.kind,
            "tags": tags,
            "content": self.content,
            "sig": self.sig,
        }

    def _idDigests(self) -> tuple[bytes, bytes | None]:
        """
        The SHA-256 of the NIP-01 serialization and, when the event holds
        control characters that standard JSON writes as C{\\u00XX} (as
        JavaScript's C{JSON.stringify} and most libraries do), the SHA-256
        of that standard JSON form too.
        """
        fields = (self.pubkey, self.createdAt, self.kind, self.tags, self.content)
        standard = _standardJSON(*fields)
        if standard is not None and _isExact(standard):
            return hashlib.sha256(standard).digest(), None
        exact = hashlib.sha256(_exactSerialization(*fields)).digest()
        if standard is None:
            return exact, None
        return exact, hashlib.sha256(standard).digest()

    def _matchingDigest(self) -> bytes | None:
        exact, standard = self._idDigests()
        if exact.hex() == self.id:
            return exact
        if standard is not None and standard.hex() == self.id:
            return standard
        return None

    def computeId(self) -> str:
        """
        The NIP-01 id of this event's content, whatever its C{id} field says.

        @raise InvalidEvent: if a string holds a lone surrogate.
        """
        return computeEventId(self.pubkey, self.createdAt, self.kind, self.tags, self.content)

    def hasValidId(self) -> bool:
        """
        Whether C{id} is the id of this event's content.

        Besides the NIP-01 serialization, which writes every control
        character verbatim, the standard JSON one (C{\\u00XX} for control
        characters other than C{\\n \\r \\t \\b \\f}) is accepted: most
        clients sign that form. Both encode the fields unambiguously, so
        neither lets one id stand for two different events.
        """
        try:
            return self._matchingDigest() is not None
        except InvalidEvent:
            return False

    def _signatureMatches(self, digest: bytes) -> bool:
        key = _xOnlyKey(self.pubkey)
        if key is None:
            return False
        try:
            return bool(key.verify(bytes.fromhex(self.sig), digest))
        except ValueError:
            return False

    def hasValidSignature(self) -> bool:
        """
        Whether C{sig} is C{pubkey}'s signature of C{id} (the id itself is
        not recomputed: see L{hasValidId}).
        """
        try:
            digest = bytes.fromhex(self.id)
        except ValueError:
            return False
        return self._signatureMatches(digest)

    def verify(self) -> None:
        """
        Check the id (as L{hasValidId}) and the signature.

        @raise InvalidEvent: C{"invalid: event id does not match its
            content"} or C{"invalid: bad signature"}, with C{eventId} set.
        """
        try:
            digest = self._matchingDigest()
            if digest is None:
                raise InvalidEvent("invalid: event id does not match its content")
            if not self._signatureMatches(digest):
                raise InvalidEvent("invalid: bad signature")
        except InvalidEvent as e:
            e.eventId = self.id
            raise

    def tagValues(self, name: str) -> list[str]:
        """
        The second element of every tag named C{name}, in order: the values
        a C{#name} filter matches.
        """
        return [tag[1] for tag in self.tags if len(tag) > 1 and tag[0] == name]

    def dTag(self) -> str:
        """
        The value of the first C{d} tag, C{""} if there is none: with
        C{kind} and C{pubkey}, the address of an addressable event.
        """
        for tag in self.tags:
            if tag[0] == "d":
                return tag[1] if len(tag) > 1 else ""
        return ""

    def expiration(self) -> int | None:
        """
        The NIP-40 expiration time (unix seconds) from the first
        C{expiration} tag, or C{None} if there is none or it is not a
        non-negative decimal integer.
        """
        for tag in self.tags:
            if tag[0] == "expiration":
                if len(tag) > 1 and _DECIMAL.fullmatch(tag[1]):
                    return int(tag[1])
                return None
        return None

    def isExpired(self, now: float) -> bool:
        """
        @return: whether the event's NIP-40 expiration time is at or before
            C{now} (unix seconds).
        """
        expiration = self.expiration()
        return expiration is not None and expiration <= now


__all__ = [
    "AUTH_KIND",
    "DEFAULT_EVENT_LIMITS",
    "MAX_CREATED_AT",
    "PUBLIC_KEY_CACHE_SIZE",
    "Event",
    "EventLimits",
    "computeEventId",
    "generatePrivateKey",
    "isAddressable",
    "isEphemeral",
    "isRegular",
    "isReplaceable",
    "publicKeyFor",
    "serializeForId",
]
