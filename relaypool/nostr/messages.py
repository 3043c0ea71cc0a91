"""
NIP-01 messages (with NIP-42 C{AUTH} and NIP-45 C{COUNT}) between clients
and relays: one value class per message, and parsers for each direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import orjson

from relaypool.errors import InvalidFilter, InvalidMessage
from relaypool.nostr.event import DEFAULT_EVENT_LIMITS, Event, EventLimits
from relaypool.nostr.filter import DEFAULT_FILTER_LIMITS, Filter, FilterLimits

MAX_SUBSCRIPTION_ID_LENGTH = 64
"""
The longest subscription id a client may use (NIP-01).
"""

REASON_PREFIXES = frozenset(
    {
        "duplicate",
        "pow",
        "blocked",
        "rate-limited",
        "invalid",
        "restricted",
        "mute",
        "error",
        "auth-required",
    }
)
"""
The machine-readable prefixes of C{OK} and C{CLOSED} messages defined by
NIP-01 and NIP-42.
"""

FINAL_REFUSAL_PREFIXES = frozenset({"blocked", "invalid", "pow", "restricted", "mute"})
"""
The prefixes of an C{OK false} that settle the event with that relay: it
refused the event by its rules (C{blocked}, C{restricted}), found it broken
(C{invalid}), short of the proof of work it asks for (C{pow}; the id cannot
change), or handled it and dropped it (C{mute}). Sending the same event
again gets the same answer, so it is never retried; see L{isFinalRefusal}.

Every other C{OK false} is temporary and retried: C{rate-limited},
C{auth-required} (the relay layer already tried NIP-42 AUTH once),
C{error}, and a message without a known prefix (NIP-01 makes it only
human-readable: retrying with backoff is the conservative reading).
"""


def isFinalRefusal(message: str) -> bool:
    """
    Whether an C{OK false} C{message} is a final refusal: its prefix is one
    of L{FINAL_REFUSAL_PREFIXES}, so sending the event again is pointless.
    """
    return reasonPrefix(message) in FINAL_REFUSAL_PREFIXES


def isRelayFailure(message: str) -> bool:
    """
    Whether an C{OK false} C{message} reports a failure of the relay
    (C{error:}, or no known prefix) rather than an answer by its rules
    (a final refusal, C{rate-limited:}, C{auth-required:}, C{duplicate:}).
    Only failures, and missing answers, count against a relay's health.
    """
    prefix = reasonPrefix(message)
    return prefix is None or prefix == "error"


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """
    C{["EVENT", subscriptionId, event]}: an event matching a subscription.
    """

    subscriptionId: str
    event: Event

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["EVENT", self.subscriptionId, self.event.toDict()])


@dataclass(frozen=True, slots=True)
class RelayOK:
    """
    C{["OK", eventId, accepted, message]}: whether a published event was
    accepted; C{message} starts with a reason prefix when it is not.
    """

    eventId: str
    accepted: bool
    message: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["OK", self.eventId, self.accepted, self.message])


@dataclass(frozen=True, slots=True)
class RelayEOSE:
    """
    C{["EOSE", subscriptionId]}: the end of stored events.
    """

    subscriptionId: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["EOSE", self.subscriptionId])


@dataclass(frozen=True, slots=True)
class RelayClosed:
    """
    C{["CLOSED", subscriptionId, message]}: the relay ended or refused a
    subscription.
    """

    subscriptionId: str
    message: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["CLOSED", self.subscriptionId, self.message])


@dataclass(frozen=True, slots=True)
class RelayNotice:
    """
    C{["NOTICE", message]}: a human-readable message.
    """

    message: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["NOTICE", self.message])


@dataclass(frozen=True, slots=True)
class RelayAuth:
    """
    C{["AUTH", challenge]}: a NIP-42 authentication challenge.
    """

    challenge: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["AUTH", self.challenge])


@dataclass(frozen=True, slots=True)
class RelayCount:
    """
    C{["COUNT", subscriptionId, {"count": count, "approximate": ...}]}: a
    NIP-45 count result.
    """

    subscriptionId: str
    count: int
    approximate: bool = False

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes; C{approximate} is only written when true.
        """
        result: dict[str, Any] = {"count": self.count}
        if self.approximate:
            result["approximate"] = True
        return orjson.dumps(["COUNT", self.subscriptionId, result])


@dataclass(frozen=True, slots=True)
class NegMessage:
    """
    C{["NEG-MSG", subscriptionId, messageHex]}: a NIP-77 negentropy
    message, in either direction.

    @ivar message: the binary negentropy message (hex on the wire).
    """

    subscriptionId: str
    message: bytes

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["NEG-MSG", self.subscriptionId, self.message.hex()])


@dataclass(frozen=True, slots=True)
class RelayNegErr:
    """
    C{["NEG-ERR", subscriptionId, reason]}: a relay ends a NIP-77 sync.

    @ivar maxRecords: with C{blocked:}, the most records the relay would
        process (the optional 4th element), or L{None}.
    """

    subscriptionId: str
    reason: str
    maxRecords: int | None = None

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        extra = [] if self.maxRecords is None else [self.maxRecords]
        return orjson.dumps(["NEG-ERR", self.subscriptionId, self.reason, *extra])


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """
    C{["EVENT", event]}: publish an event.
    """

    event: Event

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["EVENT", self.event.toDict()])


@dataclass(frozen=True, slots=True)
class ClientReq:
    """
    C{["REQ", subscriptionId, filter, ...]}: open (or replace) a
    subscription.
    """

    subscriptionId: str
    filters: tuple[Filter, ...]

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["REQ", self.subscriptionId, *(f.toDict() for f in self.filters)])


@dataclass(frozen=True, slots=True)
class ClientClose:
    """
    C{["CLOSE", subscriptionId]}: close a subscription.
    """

    subscriptionId: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["CLOSE", self.subscriptionId])


@dataclass(frozen=True, slots=True)
class ClientCount:
    """
    C{["COUNT", subscriptionId, filter, ...]}: a NIP-45 count query.
    """

    subscriptionId: str
    filters: tuple[Filter, ...]

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["COUNT", self.subscriptionId, *(f.toDict() for f in self.filters)])


@dataclass(frozen=True, slots=True)
class ClientNegOpen:
    """
    C{["NEG-OPEN", subscriptionId, filter, initialMessageHex]}: start a
    NIP-77 sync of the events matching C{filter}.
    """

    subscriptionId: str
    filter: Filter
    message: bytes

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(
            ["NEG-OPEN", self.subscriptionId, self.filter.toDict(), self.message.hex()]
        )


@dataclass(frozen=True, slots=True)
class ClientNegClose:
    """
    C{["NEG-CLOSE", subscriptionId]}: end a NIP-77 sync.
    """

    subscriptionId: str

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["NEG-CLOSE", self.subscriptionId])


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """
    C{["AUTH", event]}: a NIP-42 signed authentication event.
    """

    event: Event

    def toJSON(self) -> bytes:
        """
        The message as JSON bytes.
        """
        return orjson.dumps(["AUTH", self.event.toDict()])


RelayMessage: TypeAlias = (
    RelayEvent
    | RelayOK
    | RelayEOSE
    | RelayClosed
    | RelayNotice
    | RelayAuth
    | RelayCount
    | NegMessage
    | RelayNegErr
)
ClientMessage: TypeAlias = (
    ClientEvent
    | ClientReq
    | ClientClose
    | ClientCount
    | ClientAuth
    | ClientNegOpen
    | NegMessage
    | ClientNegClose
)


def reasonPrefix(message: str) -> str | None:
    """
    The machine-readable prefix of an C{OK} or C{CLOSED} message (the word
    before the first C{:}) if it is one of L{REASON_PREFIXES}, else C{None}.
    """
    prefix, colon, _ = message.partition(":")
    if colon and prefix in REASON_PREFIXES:
        return prefix
    return None


def _invalid(reason: str, subscriptionId: str | None = None) -> NoReturn:
    error = InvalidMessage(f"invalid: {reason}")
    error.subscriptionId = subscriptionId
    raise error


def decodeMessage(data: bytes | str) -> list[Any]:
    """
    Decode a message's JSON and check that it is an array starting with a
    string (its verb), for L{parseRelayMessage} or L{relayMessageFromList}.

    @raise InvalidMessage: if it is not.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        _invalid("message is not valid JSON")
    if type(message) is not list or not message or type(message[0]) is not str:
        _invalid("a message must be a JSON array starting with a string")
    return message


def _string(message: list[Any], index: int, what: str) -> str:
    if len(message) <= index or type(message[index]) is not str:
        _invalid(f"{message[0]} needs a string {what}")
    value: str = message[index]
    return value


def _optionalString(message: list[Any], index: int, what: str) -> str:
    if len(message) <= index:
        return ""
    return _string(message, index, what)


def _countResult(message: list[Any], subscriptionId: str) -> RelayCount:
    result = message[2] if len(message) > 2 else None
    if type(result) is not dict:
        _invalid("COUNT needs a result object", subscriptionId)
    count = result.get("count")
    approximate = result.get("approximate", False)
    if type(count) is not int or count < 0:
        _invalid("COUNT result needs a non-negative integer 'count'", subscriptionId)
    if type(approximate) is not bool:
        _invalid("COUNT result 'approximate' must be a boolean", subscriptionId)
    return RelayCount(subscriptionId, count, approximate)


def parseRelayMessage(
    data: bytes | str, limits: EventLimits = DEFAULT_EVENT_LIMITS
) -> RelayMessage:
    """
    Parse a message sent by a relay. Elements after the ones a verb
    defines are ignored; a missing C{OK} or C{CLOSED} message reads as
    C{""}.

    @raise InvalidMessage: for bad JSON, a wrong shape or an unknown verb.
    @raise InvalidEvent: for a malformed event in C{EVENT}.
    """
    return relayMessageFromList(decodeMessage(data), limits)


def relayMessageFromList(
    message: list[Any], limits: EventLimits = DEFAULT_EVENT_LIMITS
) -> RelayMessage:
    """
    L{parseRelayMessage} for a message already through L{decodeMessage}.
    """
    verb = message[0]
    if verb == "EVENT":
        subscriptionId = _string(message, 1, "subscription id")
        if len(message) < 3:
            _invalid("EVENT needs an event", subscriptionId)
        return RelayEvent(subscriptionId, Event.fromDict(message[2], limits))
    if verb == "OK":
        eventId = _string(message, 1, "event id")
        if len(message) < 3 or type(message[2]) is not bool:
            _invalid("OK needs a boolean")
        return RelayOK(eventId, message[2], _optionalString(message, 3, "message"))
    if verb == "EOSE":
        return RelayEOSE(_string(message, 1, "subscription id"))
    if verb == "CLOSED":
        subscriptionId = _string(message, 1, "subscription id")
        return RelayClosed(subscriptionId, _optionalString(message, 2, "message"))
    if verb == "NOTICE":
        return RelayNotice(_string(message, 1, "message"))
    if verb == "AUTH":
        return RelayAuth(_string(message, 1, "challenge"))
    if verb == "COUNT":
        return _countResult(message, _string(message, 1, "subscription id"))
    if verb == "NEG-MSG":
        subscriptionId = _string(message, 1, "subscription id")
        return NegMessage(subscriptionId, _negentropyMessage(message, 2, subscriptionId))
    if verb == "NEG-ERR":
        subscriptionId = _string(message, 1, "subscription id")
        maxRecords = message[3] if len(message) > 3 and type(message[3]) is int else None
        return RelayNegErr(subscriptionId, _optionalString(message, 2, "reason"), maxRecords)
    _invalid(f"unknown message type {verb[:32]!r}")


def _negentropyMessage(message: list[Any], index: int, subscriptionId: str) -> bytes:
    """
    The hex-encoded negentropy message at C{index}, decoded.
    """
    text = message[index] if len(message) > index else None
    if type(text) is not str:
        _invalid(f"{message[0]} needs a hex-encoded negentropy message", subscriptionId)
    try:
        return bytes.fromhex(text)
    except ValueError:
        _invalid(f"{message[0]} message is not hex", subscriptionId)


def _subscriptionId(message: list[Any]) -> str:
    subscriptionId = message[1] if len(message) > 1 else None
    if (
        type(subscriptionId) is not str
        or not subscriptionId
        or len(subscriptionId) > MAX_SUBSCRIPTION_ID_LENGTH
    ):
        _invalid(
            f"{message[0]} needs a subscription id of 1 to {MAX_SUBSCRIPTION_ID_LENGTH} characters"
        )
    return subscriptionId


def _filters(message: list[Any], subscriptionId: str, limits: FilterLimits) -> tuple[Filter, ...]:
    if len(message) < 3:
        _invalid(f"{message[0]} needs at least one filter", subscriptionId)
    try:
        return tuple(Filter.fromDict(f, limits) for f in message[2:])
    except InvalidFilter as e:
        error = InvalidMessage(str(e))
        error.subscriptionId = subscriptionId
        raise error from e


def _exactLength(message: list[Any], length: int, subscriptionId: str | None = None) -> None:
    if len(message) != length:
        _invalid(f"{message[0]} takes {length - 1} argument(s)", subscriptionId)


def parseClientMessage(
    data: bytes | str,
    eventLimits: EventLimits = DEFAULT_EVENT_LIMITS,
    filterLimits: FilterLimits = DEFAULT_FILTER_LIMITS,
) -> ClientMessage:
    """
    Parse a message sent by a client.

    @raise InvalidMessage: for bad JSON, a wrong shape, an unknown verb or
        an invalid filter; C{subscriptionId} is set when the message had a
        valid one.
    @raise InvalidEvent: for a malformed event in C{EVENT} or C{AUTH};
        C{eventId} is set when the event had a string id.
    """
    message = decodeMessage(data)
    verb = message[0]
    if verb == "EVENT" or verb == "AUTH":
        _exactLength(message, 2)
        event = Event.fromDict(message[1], eventLimits)
        return ClientEvent(event) if verb == "EVENT" else ClientAuth(event)
    if verb == "REQ":
        subscriptionId = _subscriptionId(message)
        return ClientReq(subscriptionId, _filters(message, subscriptionId, filterLimits))
    if verb == "COUNT":
        subscriptionId = _subscriptionId(message)
        return ClientCount(subscriptionId, _filters(message, subscriptionId, filterLimits))
    if verb == "CLOSE":
        subscriptionId = _subscriptionId(message)
        _exactLength(message, 2, subscriptionId)
        return ClientClose(subscriptionId)
    if verb in NEGENTROPY_VERBS:
        try:
            return _clientNegentropy(message, filterLimits)
        except InvalidMessage as e:
            e.negentropy = True
            raise
    _invalid(f"unknown message type {verb[:32]!r}")


NEGENTROPY_VERBS = frozenset({"NEG-OPEN", "NEG-MSG", "NEG-CLOSE"})
"""The client verbs of NIP-77; their errors are answered with C{NEG-ERR}."""


def _clientNegentropy(
    message: list[Any], filterLimits: FilterLimits
) -> ClientNegOpen | NegMessage | ClientNegClose:
    verb = message[0]
    subscriptionId = _subscriptionId(message)
    if verb == "NEG-CLOSE":
        _exactLength(message, 2, subscriptionId)
        return ClientNegClose(subscriptionId)
    if verb == "NEG-MSG":
        _exactLength(message, 3, subscriptionId)
        return NegMessage(subscriptionId, _negentropyMessage(message, 2, subscriptionId))
    _exactLength(message, 4, subscriptionId)
    (filter,) = _filters(message[:3], subscriptionId, filterLimits)
    return ClientNegOpen(subscriptionId, filter, _negentropyMessage(message, 3, subscriptionId))


__all__ = [
    "NEGENTROPY_VERBS",
    "ClientNegClose",
    "ClientNegOpen",
    "NegMessage",
    "RelayNegErr",
    "FINAL_REFUSAL_PREFIXES",
    "MAX_SUBSCRIPTION_ID_LENGTH",
    "REASON_PREFIXES",
    "ClientAuth",
    "ClientClose",
    "ClientCount",
    "ClientEvent",
    "ClientMessage",
    "ClientReq",
    "RelayAuth",
    "RelayClosed",
    "RelayCount",
    "RelayEOSE",
    "RelayEvent",
    "RelayMessage",
    "RelayNotice",
    "RelayOK",
    "decodeMessage",
    "isFinalRefusal",
    "isRelayFailure",
    "parseClientMessage",
    "parseRelayMessage",
    "reasonPrefix",
    "relayMessageFromList",
]
