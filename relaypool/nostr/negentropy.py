"""
Negentropy V1, the range-based set reconciliation of NIP-77, free of
Twisted.

Each side holds a L{NegentropyStorage} of (timestamp, 32-byte id) records.
The initiator sends L{NegentropyInitiator.initiate}'s message, the responder
answers each message with L{NegentropyResponder.reconcile}, and the
initiator's L{NegentropyInitiator.reconcile} learns from each answer which
ids only it has and which only the other side has, until it has no more
question. Messages are bytes; NIP-77 hex-encodes them on the wire.

Everything here follows the appendix of NIP-77: the varints, the bounds
with their delta-encoded timestamps and shortest id prefixes, the 16-bucket
split, id lists for ranges under 32 records, the fingerprint (SHA-256 of the
sum of the ids modulo 2**256, as little-endian numbers, followed by the
count as a varint, cut to 16 bytes), and the frame size limit, past which a
side answers the rest of the space with one fingerprint to be asked again.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable

__all__ = [
    "ID_SIZE",
    "MAX_TIMESTAMP",
    "MIN_FRAME_SIZE_LIMIT",
    "PROTOCOL_VERSION",
    "NegentropyError",
    "NegentropyInitiator",
    "NegentropyResponder",
    "NegentropyStorage",
    "fingerprint",
]

PROTOCOL_VERSION = 0x61
"""The version byte that starts every V1 message."""

MAX_TIMESTAMP = (1 << 64) - 1
"""The reserved "infinity" timestamp: no record may have it."""

ID_SIZE = 32

MIN_FRAME_SIZE_LIMIT = 4096
"""The smallest frame size limit a side accepts (0 means no limit)."""

_MODE_SKIP = 0
_MODE_FINGERPRINT = 1
_MODE_ID_LIST = 2
_BUCKETS = 16
_ID_LIST_BELOW = 2 * _BUCKETS
_FINGERPRINT_SIZE = 16
_MODULUS = 1 << 256
_FRAME_MARGIN = 200
"""How far below the frame size limit a message stops growing: room for the
closing fingerprint range."""


class NegentropyError(ValueError):
    """
    A malformed or unsupported message, or a misuse of the protocol; the
    text says which, in words fit for a C{NEG-ERR} reason.
    """


def _encodeVarint(value: int) -> bytes:
    if value < 0:
        raise NegentropyError(f"invalid: a varint cannot be negative ({value})")
    digits = [value & 0x7F]
    value >>= 7
    while value:
        digits.append((value & 0x7F) | 0x80)
        value >>= 7
    digits.reverse()
    return bytes(digits)


def fingerprint(idSum: int, count: int) -> bytes:
    """
    The fingerprint of a range: SHA-256 over the sum of its ids (modulo
    2**256, 32 bytes little-endian) followed by C{count} as a varint, cut
    to 16 bytes.

    @param idSum: the sum of the range's ids read as little-endian numbers.
    @param count: how many records the range holds.
    """
    data = (idSum % _MODULUS).to_bytes(ID_SIZE, "little") + _encodeVarint(count)
    return hashlib.sha256(data).digest()[:_FINGERPRINT_SIZE]


class NegentropyStorage:
    """
    A sealed, sorted set of (timestamp, id) records: ascending by timestamp,
    then by id bytes.

    Records are added with L{insert} (or given at construction) and the
    storage is then L{seal}ed, which sorts it, refuses duplicates, and
    prepares the prefix sums that make every fingerprint cost O(1).
    """

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()) -> None:
        self._items: list[tuple[int, bytes]] = []
        self._sums: list[int] = []
        self._sealed = False
        for timestamp, eventId in items:
            self.insert(timestamp, eventId)

    def insert(self, timestamp: int, eventId: bytes) -> None:
        """
        Add a record.

        @raise NegentropyError: if the storage is sealed, the timestamp is
            not in [0, 2**64 - 1) or the id is not 32 bytes.
        """
        if self._sealed:
            raise NegentropyError("error: the storage is sealed, no record can be added")
        if not isinstance(timestamp, int) or not 0 <= timestamp < MAX_TIMESTAMP:
            raise NegentropyError(
                f"invalid: a timestamp must be in [0, 2**64 - 1), got {timestamp!r}"
            )
        if not isinstance(eventId, bytes) or len(eventId) != ID_SIZE:
            raise NegentropyError(f"invalid: an id must be {ID_SIZE} bytes, got {eventId!r}")
        self._items.append((timestamp, eventId))

    def seal(self) -> None:
        """
        Sort the records and prepare the fingerprints; no insert after.

        @raise NegentropyError: if an id appears twice.
        """
        if self._sealed:
            raise NegentropyError("error: the storage is already sealed")
        self._items.sort()
        total = 0
        sums = [0]
        previous: bytes | None = None
        for _, eventId in self._items:
            if eventId == previous:
                raise NegentropyError(f"invalid: the id {eventId.hex()} is stored twice")
            previous = eventId
            total += int.from_bytes(eventId, "little")
            sums.append(total)
        self._sums = sums
        self._sealed = True

    @property
    def sealed(self) -> bool:
        """Whether L{seal} was called."""
        return self._sealed

    def __len__(self) -> int:
        return len(self._items)

    def item(self, index: int) -> tuple[int, bytes]:
        """The record at C{index}."""
        return self._items[index]

    def ids(self, lower: int, upper: int) -> list[bytes]:
        """The ids of the records in [C{lower}, C{upper})."""
        return [eventId for _, eventId in self._items[lower:upper]]

    def findLowerBound(self, lower: int, upper: int, bound: tuple[int, bytes]) -> int:
        """
        The index of the first record in [C{lower}, C{upper}) not below
        C{bound}, or C{upper}.

        @param bound: a timestamp and an id prefix, as in a message (the
            omitted trailing bytes are zeros).
        """
        return bisect_left(self._items, (bound[0], bound[1].ljust(ID_SIZE, b"\0")), lower, upper)

    def fingerprint(self, lower: int, upper: int) -> bytes:
        """The fingerprint of the records in [C{lower}, C{upper})."""
        return fingerprint(self._sums[upper] - self._sums[lower], upper - lower)


class _Reader:
    """
    Reads one message: its varints, bounds and raw bytes, decoding the
    timestamps against the previous one as V1 says.
    """

    def __init__(self, message: bytes) -> None:
        self._data = message
        self._offset = 0
        self._lastTimestamp = 0

    def atEnd(self) -> bool:
        return self._offset >= len(self._data)

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise NegentropyError("invalid: the message ends in the middle of a range")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value = 0
        for _ in range(10):
            digit = self.byte()
            value = (value << 7) | (digit & 0x7F)
            if not digit & 0x80:
                return value
        raise NegentropyError("invalid: a varint is longer than 64 bits")

    def bound(self) -> tuple[int, bytes]:
        encoded = self.varint()
        if encoded == 0 or self._lastTimestamp == MAX_TIMESTAMP:
            timestamp = MAX_TIMESTAMP
        else:
            timestamp = self._lastTimestamp + encoded - 1
            if timestamp >= MAX_TIMESTAMP:
                raise NegentropyError("invalid: a bound's timestamp is past 2**64 - 1")
        self._lastTimestamp = timestamp
        length = self.varint()
        if length > ID_SIZE:
            raise NegentropyError(
                f"invalid: a bound's id prefix is {length} bytes, more than {ID_SIZE}"
            )
        return timestamp, self.take(length)


class _Writer:
    """
    Builds one message, encoding the timestamps against the previous one.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = [bytes([PROTOCOL_VERSION])]
        self.size = 1
        self._lastTimestamp = 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def bound(self, timestamp: int, prefix: bytes = b"") -> bytes:
        """
        The encoding of a bound (a timestamp and an id prefix), which moves
        the timestamp base.
        """
        if timestamp == MAX_TIMESTAMP:
            encoded = 0
        else:
            encoded = 1 + timestamp - self._lastTimestamp
        self._lastTimestamp = timestamp
        return _encodeVarint(encoded) + _encodeVarint(len(prefix)) + prefix

    def message(self) -> bytes:
        return b"".join(self.parts)


def _minimalBound(previous: tuple[int, bytes], current: tuple[int, bytes]) -> tuple[int, bytes]:
    """
    The shortest bound above C{previous} and not above C{current}: the
    timestamp alone when they differ, else the id prefix one byte past
    what they share.
    """
    if previous[0] != current[0]:
        return current[0], b""
    shared = 0
    while shared < ID_SIZE and previous[1][shared] == current[1][shared]:
        shared += 1
    return current[0], current[1][: shared + 1]


def _skipUpTo(writer: _Writer, bound: tuple[int, bytes]) -> list[bytes]:
    """
    The range that closes a run of skipped ranges: up to C{bound}, in mode
    skip.
    """
    return [writer.bound(*bound), _encodeVarint(_MODE_SKIP)]


class _Reconciler:
    """
    What both sides share: reading a message range by range against the
    storage and writing the answer, within the frame size limit.
    """

    _initiator = False

    def __init__(self, storage: NegentropyStorage, frameSizeLimit: int = 0) -> None:
        if not storage.sealed:
            raise NegentropyError("error: seal the storage before reconciling")
        if frameSizeLimit and frameSizeLimit < MIN_FRAME_SIZE_LIMIT:
            raise NegentropyError(
                f"error: the frame size limit must be 0 (none) or at least {MIN_FRAME_SIZE_LIMIT}, "
                f"got {frameSizeLimit}"
            )
        self.storage = storage
        self.frameSizeLimit = frameSizeLimit

    def _exceeds(self, size: int) -> bool:
        return bool(self.frameSizeLimit) and size > self.frameSizeLimit - _FRAME_MARGIN

    def _split(
        self, writer: _Writer, lower: int, upper: int, upperBound: tuple[int, bytes]
    ) -> list[bytes]:
        """
        The ranges describing [C{lower}, C{upper}): one id list when it is
        small, else 16 fingerprinted buckets.
        """
        storage = self.storage
        count = upper - lower
        if count < _ID_LIST_BELOW:
            ids = storage.ids(lower, upper)
            return [
                writer.bound(*upperBound),
                _encodeVarint(_MODE_ID_LIST),
                _encodeVarint(len(ids)),
                *ids,
            ]
        parts: list[bytes] = []
        perBucket, extra = divmod(count, _BUCKETS)
        current = lower
        for bucket in range(_BUCKETS):
            size = perBucket + (1 if bucket < extra else 0)
            bucketPrint = storage.fingerprint(current, current + size)
            current += size
            if current == upper:
                bound = writer.bound(*upperBound)
            else:
                timestamp, prefix = _minimalBound(storage.item(current - 1), storage.item(current))
                bound = writer.bound(timestamp, prefix)
            parts += [bound, _encodeVarint(_MODE_FINGERPRINT), bucketPrint]
        return parts

    def _reconcile(self, message: bytes, haveIds: list[bytes], needIds: list[bytes]) -> bytes:
        reader = _Reader(message)
        writer = _Writer()
        if not message:
            raise NegentropyError("invalid: an empty message")
        version = reader.byte()
        if not 0x60 <= version <= 0x6F:
            raise NegentropyError(f"invalid: 0x{version:02x} is not a negentropy protocol version")
        if version != PROTOCOL_VERSION:
            if self._initiator:
                raise NegentropyError(
                    f"invalid: unsupported negentropy protocol version 0x{version:02x}"
                )
            return writer.message()
        storage = self.storage
        size = len(storage)
        previousIndex = 0
        previousBound = (0, b"")
        skipping = False
        while not reader.atEnd():
            parts: list[bytes] = []
            currentBound = reader.bound()
            mode = reader.varint()
            lower = previousIndex
            upper = storage.findLowerBound(previousIndex, size, currentBound)

            if mode == _MODE_SKIP:
                skipping = True
            elif mode == _MODE_FINGERPRINT:
                theirs = reader.take(_FINGERPRINT_SIZE)
                if theirs != storage.fingerprint(lower, upper):
                    if skipping:
                        parts += _skipUpTo(writer, previousBound)
                        skipping = False
                    parts += self._split(writer, lower, upper, currentBound)
                else:
                    skipping = True
            elif mode == _MODE_ID_LIST:
                count = reader.varint()
                theirIds = {reader.take(ID_SIZE) for _ in range(count)}
                if self._initiator:
                    skipping = True
                    for eventId in storage.ids(lower, upper):
                        if eventId in theirIds:
                            theirIds.discard(eventId)
                        else:
                            haveIds.append(eventId)
                    needIds.extend(sorted(theirIds))
                else:
                    # The answer is every id of the range, up to the frame
                    # size limit; it is written at once, and the check below
                    # then closes the message with the rest of the space.
                    if skipping:
                        parts += _skipUpTo(writer, previousBound)
                        skipping = False
                    endBound = currentBound
                    ids: list[bytes] = []
                    for index in range(lower, upper):
                        if self._exceeds(writer.size + ID_SIZE * len(ids)):
                            endBound = storage.item(index)
                            upper = index
                            break
                        ids.append(storage.item(index)[1])
                    parts += [
                        writer.bound(*endBound),
                        _encodeVarint(_MODE_ID_LIST),
                        _encodeVarint(len(ids)),
                        *ids,
                    ]
                    for part in parts:
                        writer.add(part)
                    parts.clear()
            else:
                raise NegentropyError(f"invalid: unknown range mode {mode}")
            if self._exceeds(writer.size + sum(map(len, parts))):
                # Past the limit: everything from here on is one range,
                # fingerprinted, for the other side to ask about again.
                writer.add(writer.bound(MAX_TIMESTAMP))
                writer.add(_encodeVarint(_MODE_FINGERPRINT))
                writer.add(storage.fingerprint(upper, size))
                break
            for part in parts:
                writer.add(part)
            previousIndex = upper
            previousBound = currentBound
        return writer.message()


class NegentropyInitiator(_Reconciler):
    """
    The side that starts a reconciliation and learns the differences.

    @param storage: the sealed local records.
    @param frameSizeLimit: the largest message to send, in bytes (0: no
        limit; else at least 4096); the responder's answers may be larger.
    """

    _initiator = True

    def initiate(self) -> bytes:
        """
        The first message: the whole space, as an id list or 16
        fingerprints.
        """
        writer = _Writer()
        for part in self._split(writer, 0, len(self.storage), (MAX_TIMESTAMP, b"")):
            writer.add(part)
        return writer.message()

    def reconcile(self, message: bytes) -> tuple[bytes | None, list[bytes], list[bytes]]:
        """
        Take in the responder's answer.

        @return: the next message to send, or L{None} when the
            reconciliation is complete; the ids only this side has (the
            responder needs them); the ids only the responder has (this side
            needs them), from this answer.
        @raise NegentropyError: if the answer is malformed or of another
            protocol version.
        """
        haveIds: list[bytes] = []
        needIds: list[bytes] = []
        reply = self._reconcile(message, haveIds, needIds)
        return (None if len(reply) == 1 else reply), haveIds, needIds


class NegentropyResponder(_Reconciler):
    """
    The side that answers: a relay, or anything serving C{NEG-OPEN}.

    @param storage: the sealed local records (those matching the filter).
    @param frameSizeLimit: the largest answer to send, in bytes (0: no
        limit; else at least 4096).
    """

    def reconcile(self, message: bytes) -> bytes:
        """
        Answer one message from the initiator.

        A message of another protocol version is answered with the one byte
        of the version this side speaks, as V1 says.

        @raise NegentropyError: if the message is malformed.
        """
        return self._reconcile(message, [], [])
