"""
NIP-11 relay information documents: parsing what a relay publishes,
building our own, and finding the document's URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relaypool.errors import InvalidRelayInformation
from relaypool.nostr.url import parseRelayURL

_LIMITATION_INTS = (
    ("max_message_length", "maxMessageLength"),
    ("max_subscriptions", "maxSubscriptions"),
    ("max_filters", "maxFilters"),
    ("max_limit", "maxLimit"),
    ("max_subid_length", "maxSubidLength"),
    ("max_event_tags", "maxEventTags"),
    ("max_content_length", "maxContentLength"),
    ("min_pow_difficulty", "minPowDifficulty"),
    ("created_at_lower_limit", "createdAtLowerLimit"),
    ("created_at_upper_limit", "createdAtUpperLimit"),
    ("default_limit", "defaultLimit"),
)
_LIMITATION_BOOLS = (
    ("auth_required", "authRequired"),
    ("payment_required", "paymentRequired"),
    ("restricted_writes", "restrictedWrites"),
)
_INFORMATION_STRINGS = (
    ("name", "name"),
    ("description", "description"),
    ("banner", "banner"),
    ("icon", "icon"),
    ("pubkey", "pubkey"),
    ("self", "selfPubkey"),
    ("contact", "contact"),
    ("software", "software"),
    ("version", "version"),
    ("terms_of_service", "termsOfService"),
    ("payments_url", "paymentsURL"),
)
_KNOWN_FIELDS = frozenset(
    [wire for wire, _ in _INFORMATION_STRINGS] + ["supported_nips", "limitation", "fees"]
)


@dataclass(frozen=True, slots=True)
class Limitation:
    """
    The C{limitation} object of a relay information document; C{None}
    means the relay did not say. Wire names are the snake_case forms of
    the attribute names (C{maxMessageLength} is C{max_message_length}).

    @ivar maxFilters: the most filters one C{REQ} may hold (C{max_filters},
        from earlier NIP-11 revisions, still published by many relays).
    """

    maxMessageLength: int | None = None
    maxSubscriptions: int | None = None
    maxFilters: int | None = None
    maxLimit: int | None = None
    maxSubidLength: int | None = None
    maxEventTags: int | None = None
    maxContentLength: int | None = None
    minPowDifficulty: int | None = None
    authRequired: bool | None = None
    paymentRequired: bool | None = None
    restrictedWrites: bool | None = None
    createdAtLowerLimit: int | None = None
    createdAtUpperLimit: int | None = None
    defaultLimit: int | None = None

    @classmethod
    def fromDict(cls, obj: object) -> Limitation:
        """
        Build a L{Limitation} from a decoded C{limitation} object, ignoring
        unknown fields and treating C{null} as absent.

        @raise InvalidRelayInformation: if a known field has the wrong type.
        """
        if type(obj) is not dict:
            raise InvalidRelayInformation("'limitation' must be an object")
        values: dict[str, Any] = {}
        for wire, attribute in _LIMITATION_INTS:
            value = obj.get(wire)
            if value is not None:
                if type(value) is not int or value < 0:
                    raise InvalidRelayInformation(
                        f"'limitation.{wire}' must be a non-negative integer"
                    )
                values[attribute] = value
        for wire, attribute in _LIMITATION_BOOLS:
            value = obj.get(wire)
            if value is not None:
                if type(value) is not bool:
                    raise InvalidRelayInformation(f"'limitation.{wire}' must be a boolean")
                values[attribute] = value
        return cls(**values)

    def toDict(self) -> dict[str, Any]:
        """
        The limitation with wire names, omitting fields that are C{None}.
        """
        result: dict[str, Any] = {}
        for wire, attribute in _LIMITATION_INTS + _LIMITATION_BOOLS:
            value = getattr(self, attribute)
            if value is not None:
                result[wire] = value
        return result


@dataclass(frozen=True, slots=True)
class RelayInformation:
    """
    A NIP-11 relay information document. Every field is optional.

    @ivar selfPubkey: the relay's own pubkey (C{self} on the wire).
    @ivar supportedNips: the NIP numbers the relay implements.
    @ivar fees: the C{fees} object, as decoded JSON.
    @ivar extra: fields this class does not know, kept so that they are
        written back by L{toDict}.
    """

    name: str | None = None
    description: str | None = None
    banner: str | None = None
    icon: str | None = None
    pubkey: str | None = None
    selfPubkey: str | None = None
    contact: str | None = None
    supportedNips: tuple[int, ...] = ()
    software: str | None = None
    version: str | None = None
    termsOfService: str | None = None
    paymentsURL: str | None = None
    limitation: Limitation = Limitation()
    fees: Mapping[str, Any] = field(default_factory=dict, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def fromDict(cls, obj: object) -> RelayInformation:
        """
        Build a L{RelayInformation} from a decoded document: unknown fields
        go to C{extra}, C{null} counts as absent.

        @raise InvalidRelayInformation: if a known field has the wrong type.
        """
        if type(obj) is not dict:
            raise InvalidRelayInformation("a relay information document must be a JSON object")
        values: dict[str, Any] = {}
        for wire, attribute in _INFORMATION_STRINGS:
            value = obj.get(wire)
            if value is not None:
                if type(value) is not str:
                    raise InvalidRelayInformation(f"{wire!r} must be a string")
                values[attribute] = value
        nips = obj.get("supported_nips")
        if nips is not None:
            if type(nips) is not list or any(type(n) is not int for n in nips):
                raise InvalidRelayInformation("'supported_nips' must be a list of integers")
            values["supportedNips"] = tuple(nips)
        limitation = obj.get("limitation")
        if limitation is not None:
            values["limitation"] = Limitation.fromDict(limitation)
        fees = obj.get("fees")
        if fees is not None:
            if type(fees) is not dict:
                raise InvalidRelayInformation("'fees' must be an object")
            values["fees"] = dict(fees)
        extra = {key: value for key, value in obj.items() if key not in _KNOWN_FIELDS}
        if extra:
            values["extra"] = extra
        return cls(**values)

    @classmethod
    def fromJSON(cls, data: bytes | str) -> RelayInformation:
        """
        Parse a JSON relay information document, as L{fromDict}.

        @raise InvalidRelayInformation: if C{data} is not JSON or not a
            valid document.
        """
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidRelayInformation("the relay information document is not JSON") from None
        return cls.fromDict(obj)

    def toDict(self) -> dict[str, Any]:
        """
        The document with wire names, omitting absent fields (an empty
        C{supported_nips}, C{limitation} or C{fees} included).
        """
        result: dict[str, Any] = dict(self.extra)
        for wire, attribute in _INFORMATION_STRINGS:
            value = getattr(self, attribute)
            if value is not None:
                result[wire] = value
        if self.supportedNips:
            result["supported_nips"] = list(self.supportedNips)
        limitation = self.limitation.toDict()
        if limitation:
            result["limitation"] = limitation
        if self.fees:
            result["fees"] = dict(self.fees)
        return result

    def toJSON(self) -> bytes:
        """
        The document as JSON bytes.
        """
        return orjson.dumps(self.toDict())


def informationURL(relayURL: str) -> str:
    """
    The HTTP URL serving the NIP-11 document of the relay at C{relayURL}:
    C{ws://} becomes C{http://} and C{wss://} C{https://}, with the same
    host, port, path and query.

    @raise InvalidRelayURL: if C{relayURL} is not a C{ws://} or C{wss://}
        URL with a host.
    """
    return parseRelayURL(relayURL).informationURL


__all__ = [
    "Limitation",
    "RelayInformation",
    "informationURL",
]
