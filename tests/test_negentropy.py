"""
Tests for L{relaypool.nostr.negentropy}: the NIP-77 V1 message format
against vectors derived from the spec, reconciliation between relaypool's
own sides, and interoperability with nostr-tools' nip77 under node.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaypool.nostr.negentropy import (
    MAX_TIMESTAMP,
    PROTOCOL_VERSION,
    NegentropyError,
    NegentropyInitiator,
    NegentropyResponder,
    NegentropyStorage,
    fingerprint,
)
from tests.nostrtools import PEER_SCRIPT, requireNostrTools

Record = tuple[int, bytes]


def storage(records: list[Record]) -> NegentropyStorage:
    sealed = NegentropyStorage(records)
    sealed.seal()
    return sealed


def idOf(n: int) -> bytes:
    """A 32-byte id whose first bytes are C{n}, so ids sort as numbers."""
    return n.to_bytes(4, "big") + bytes(28)


def generatedSets(
    size: int, onlyFirst: int, onlySecond: int, seed: int
) -> tuple[list[Record], list[Record]]:
    """
    Two sets of records sharing C{size}, plus C{onlyFirst} and
    C{onlySecond} of their own, timestamps spread so that some repeat.
    """
    generator = random.Random(seed)

    def record() -> Record:
        return generator.randrange(
            1_700_000_000, 1_700_000_000 + max(size // 4, 10)
        ), generator.randbytes(32)

    common = [record() for _ in range(size)]
    first = common + [record() for _ in range(onlyFirst)]
    second = common + [record() for _ in range(onlySecond)]
    return first, second


def reconcile(
    initiator: NegentropyInitiator, answer: Any, limit: int = 0
) -> tuple[set[bytes], set[bytes], int, list[int]]:
    """
    Run a whole reconciliation: C{answer} maps each message to the
    responder's reply.

    @return: the ids only the initiator has, those only the responder has,
        the number of round trips, and the size of every message sent.
    """
    have: set[bytes] = set()
    need: set[bytes] = set()
    sizes = []
    message: bytes | None = initiator.initiate()
    rounds = 0
    while message is not None:
        sizes.append(len(message))
        reply = answer(message)
        sizes.append(len(reply))
        rounds += 1
        message, haveIds, needIds = initiator.reconcile(reply)
        have.update(haveIds)
        need.update(needIds)
    return have, need, rounds, sizes


class VectorTests(SynchronousTestCase):
    """
    Messages compared byte for byte with what the appendix of NIP-77
    defines.
    """

    def test_emptyInitialMessage(self) -> None:
        """
        With no record, the first message is the version byte and one range
        up to infinity (timestamp 0, no id prefix) holding an empty id list.
        """
        message = NegentropyInitiator(storage([])).initiate()
        self.assertEqual(message.hex(), "6100000200")

    def test_smallSetIsOneIdList(self) -> None:
        """
        Fewer than 32 records go as one id list, in ascending
        (timestamp, id) order.
        """
        records = [(20, idOf(2)), (10, idOf(9)), (20, idOf(1))]
        message = NegentropyInitiator(storage(records)).initiate()
        expected = bytes([PROTOCOL_VERSION, 0, 0, 2, 3]) + idOf(9) + idOf(1) + idOf(2)
        self.assertEqual(message, expected)

    def test_fingerprintDefinition(self) -> None:
        """
        A fingerprint is the first 16 bytes of the SHA-256 of the sum of
        the ids (little-endian, modulo 2**256) followed by the count as a
        varint.
        """
        ids = [bytes([0xFF] * 32), bytes([2] + [0] * 31)]
        total = sum(int.from_bytes(i, "little") for i in ids) % (1 << 256)
        data = total.to_bytes(32, "little") + bytes([2])
        self.assertEqual(fingerprint(total, 2), hashlib.sha256(data).digest()[:16])
        self.assertEqual(
            storage([(1, ids[0]), (2, ids[1])]).fingerprint(0, 2), fingerprint(total, 2)
        )
        self.assertEqual(
            storage([]).fingerprint(0, 0), hashlib.sha256(bytes(32) + b"\x00").digest()[:16]
        )

    def test_bucketsAndBounds(self) -> None:
        """
        32 records or more are split into 16 fingerprinted buckets (the
        first ones taking the remainder); a bound between two timestamps is
        the later timestamp alone, delta-encoded as 1 + the difference from
        the previous bound, and the last bound is infinity (0).
        """
        records = [(100 + n, idOf(n)) for n in range(34)]
        sealed = storage(records)
        message = NegentropyInitiator(sealed).initiate()
        expected = bytearray([PROTOCOL_VERSION])
        sizes = [3, 3] + [2] * 14
        start = 0
        previous = 0
        for index, size in enumerate(sizes):
            end = start + size
            if index == 15:
                expected += bytes([0, 0])
            else:
                timestamp = records[end][0]
                expected += bytes([1 + timestamp - previous, 0])
                previous = timestamp
            expected += bytes([1]) + sealed.fingerprint(start, end)
            start = end
        self.assertEqual(message, bytes(expected))

    def test_boundPrefixForEqualTimestamps(self) -> None:
        """
        Between two records of the same timestamp, the bound carries the
        later id's prefix one byte past the bytes both ids share, and the
        timestamp delta is then 0 (encoded 1).
        """
        records = [(7, bytes([0xAB, n // 2, n]) + bytes(29)) for n in range(32)]
        body = NegentropyInitiator(storage(records)).initiate()[1:]
        # Buckets of two: record 1 (AB 00 01) and record 2 (AB 01 02) share
        # one byte; records 3 (AB 01 03) and 4 (AB 02 04) too.
        self.assertEqual(body[:5], bytes([8, 2, 0xAB, 0x01, 1]))
        self.assertEqual(body[21:26], bytes([1, 2, 0xAB, 0x02, 1]))

    def test_varintEncoding(self) -> None:
        """
        Varints are base-128, most significant digit first, the high bit on
        every byte but the last: a first bound at timestamp 201 is encoded
        202, the bytes 0x81 0x4a.
        """
        records = [(199 + n, idOf(n)) for n in range(32)]
        message = NegentropyInitiator(storage(records)).initiate()
        self.assertEqual(message[1:4], bytes([0x81, 0x4A, 0]))

    def test_responderSkipsMatchingRanges(self) -> None:
        """
        A responder whose fingerprints all match answers with nothing but
        the version byte, and the initiator is then done.
        """
        records, _ = generatedSets(500, 0, 0, seed=3)
        initiator = NegentropyInitiator(storage(records))
        reply = NegentropyResponder(storage(records)).reconcile(initiator.initiate())
        self.assertEqual(reply, bytes([PROTOCOL_VERSION]))
        self.assertEqual(initiator.reconcile(reply), (None, [], []))


class ReconcileTests(SynchronousTestCase):
    """
    relaypool's initiator against relaypool's responder.
    """

    def assertReconciles(
        self, first: list[Record], second: list[Record], limit: int = 0
    ) -> list[int]:
        initiator = NegentropyInitiator(storage(first), limit)
        responder = NegentropyResponder(storage(second), limit)
        have, need, _, sizes = reconcile(initiator, responder.reconcile)
        self.assertEqual(have, {i for _, i in first} - {i for _, i in second})
        self.assertEqual(need, {i for _, i in second} - {i for _, i in first})
        return sizes

    def test_emptySets(self) -> None:
        """Two empty sets reconcile with no difference."""
        self.assertReconciles([], [])

    def test_oneSideEmpty(self) -> None:
        """Against an empty side, every record is a difference, both ways."""
        records, _ = generatedSets(1000, 0, 0, seed=1)
        self.assertReconciles(records, [])
        self.assertReconciles([], records)

    def test_identicalSets(self) -> None:
        """Identical sets reconcile in one round trip with no difference."""
        records, _ = generatedSets(3000, 0, 0, seed=2)
        initiator = NegentropyInitiator(storage(records))
        have, need, rounds, _ = reconcile(
            initiator, NegentropyResponder(storage(records)).reconcile
        )
        self.assertEqual((have, need, rounds), (set(), set(), 1))

    def test_differencesBothWays(self) -> None:
        """Each side learns exactly the other's missing and extra ids."""
        first, second = generatedSets(5000, 60, 45, seed=4)
        self.assertReconciles(first, second)

    def test_sameTimestamp(self) -> None:
        """Records sharing one timestamp are told apart by their ids."""
        generator = random.Random(5)
        common = [(42, generator.randbytes(32)) for _ in range(2000)]
        self.assertReconciles(common + [(42, generator.randbytes(32))], common)

    def test_frameSizeLimit(self) -> None:
        """
        With a frame size limit, no message exceeds it, and the
        reconciliation takes more rounds but still finds every difference.
        """
        first, second = generatedSets(20000, 200, 150, seed=6)
        sizes = self.assertReconciles(first, second, limit=4096)
        self.assertLessEqual(max(sizes), 4096)
        self.assertGreater(len(sizes), 4)

    def test_frameSizeLimitTooSmall(self) -> None:
        """A frame size limit under 4096 (other than 0) is refused."""
        error = self.assertRaises(NegentropyError, NegentropyResponder, storage([]), 1000)
        self.assertIn("at least 4096", str(error))


class MalformedTests(SynchronousTestCase):
    """
    Bad messages get a L{NegentropyError} naming the problem.
    """

    def responder(self) -> NegentropyResponder:
        return NegentropyResponder(storage([(1, idOf(1))]))

    def test_empty(self) -> None:
        """An empty message is refused."""
        self.assertRaises(NegentropyError, self.responder().reconcile, b"")

    def test_notAVersion(self) -> None:
        """A first byte outside 0x60-0x6f is refused."""
        error = self.assertRaises(NegentropyError, self.responder().reconcile, b"\x01")
        self.assertIn("version", str(error))

    def test_otherVersionAnswered(self) -> None:
        """
        A responder answers a message of another version with the one byte
        of its own version, as V1 says; an initiator refuses such a reply.
        """
        self.assertEqual(self.responder().reconcile(b"\x62\x00\x00\x00"), b"\x61")
        initiator = NegentropyInitiator(storage([]))
        error = self.assertRaises(NegentropyError, initiator.reconcile, b"\x62")
        self.assertIn("unsupported", str(error))

    def test_truncated(self) -> None:
        """A message cut in the middle of a range is refused."""
        message = NegentropyInitiator(storage([(1, idOf(2))])).initiate()
        error = self.assertRaises(NegentropyError, self.responder().reconcile, message[:-3])
        self.assertIn("ends in the middle", str(error))

    def test_prefixTooLong(self) -> None:
        """An id prefix longer than 32 bytes is refused."""
        error = self.assertRaises(
            NegentropyError, self.responder().reconcile, bytes([0x61, 1, 33]) + bytes(33)
        )
        self.assertIn("more than 32", str(error))

    def test_unknownMode(self) -> None:
        """A range mode other than 0, 1 and 2 is refused."""
        error = self.assertRaises(
            NegentropyError, self.responder().reconcile, bytes([0x61, 0, 0, 3])
        )
        self.assertIn("mode 3", str(error))

    def test_varintTooLong(self) -> None:
        """A varint of more than 64 bits is refused."""
        error = self.assertRaises(
            NegentropyError, self.responder().reconcile, bytes([0x61] + [0xFF] * 11)
        )
        self.assertIn("varint", str(error))

    def test_badRecords(self) -> None:
        """
        Records with an id other than 32 bytes, the infinity timestamp, or
        an id twice are refused; a sealed storage takes no more.
        """
        self.assertRaises(NegentropyError, NegentropyStorage, [(1, b"short")])
        self.assertRaises(NegentropyError, NegentropyStorage, [(MAX_TIMESTAMP, idOf(1))])
        twice = NegentropyStorage([(1, idOf(1)), (2, idOf(1))])
        self.assertRaises(NegentropyError, twice.seal)
        sealed = storage([])
        self.assertRaises(NegentropyError, sealed.insert, 1, idOf(1))
        self.assertRaises(NegentropyError, NegentropyInitiator, NegentropyStorage())


class NostrToolsPeer:
    """
    C{tests/negentropy_peer.mjs} under node: nostr-tools' nip77 as the
    other side, over JSON lines.
    """

    def __init__(
        self, folder: str, role: str, records: list[Record], frameSizeLimit: int = 0
    ) -> None:
        self.process = subprocess.Popen(
            ["node", str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "NOSTR_TOOLS_DIR": folder},
            text=True,
        )
        self.first = self.ask(
            {
                "role": role,
                "records": [[t, i.hex()] for t, i in records],
                "frameSizeLimit": frameSizeLimit,
            }
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the nostr-tools peer exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"nostr-tools: {answer['error']}")
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        assert self.process.stdout is not None
        self.process.stdout.close()


class NostrToolsTests(SynchronousTestCase):
    """
    relaypool's sides against nostr-tools' (npm C{nostr-tools}, C{nip77}),
    on generated sets.
    """

    def setUp(self) -> None:
        self.folder = requireNostrTools(self.fail)

    def peer(self, role: str, records: list[Record], frameSizeLimit: int = 0) -> NostrToolsPeer:
        peer = NostrToolsPeer(self.folder, role, records, frameSizeLimit)
        self.addCleanup(peer.close)
        return peer

    def relaypoolInitiates(self, ours: list[Record], theirs: list[Record], limit: int = 0) -> None:
        """
        relaypool's initiator against a responder built from nostr-tools'
        parts finds exactly the differences.
        """
        peer = self.peer("responder", theirs, limit)
        initiator = NegentropyInitiator(storage(ours), limit)
        have, need, _, sizes = reconcile(
            initiator, lambda message: bytes.fromhex(peer.ask({"msg": message.hex()})["msg"])
        )
        self.assertEqual(have, {i for _, i in ours} - {i for _, i in theirs})
        self.assertEqual(need, {i for _, i in theirs} - {i for _, i in ours})
        if limit:
            self.assertLessEqual(max(sizes), limit)

    def nostrToolsInitiates(self, ours: list[Record], theirs: list[Record], limit: int = 0) -> None:
        """
        nostr-tools' initiator (holding C{theirs}) against relaypool's
        responder (holding C{ours}) finds exactly the differences.
        """
        peer = self.peer("initiator", theirs, limit)
        responder = NegentropyResponder(storage(ours), limit)
        have: set[str] = set()
        need: set[str] = set()
        message = peer.first["msg"]
        while message is not None:
            answer = peer.ask({"msg": responder.reconcile(bytes.fromhex(message)).hex()})
            have.update(answer["have"])
            need.update(answer["need"])
            message = answer["msg"]
        self.assertEqual(have, {i.hex() for _, i in theirs} - {i.hex() for _, i in ours})
        self.assertEqual(need, {i.hex() for _, i in ours} - {i.hex() for _, i in theirs})

    def test_sameFirstMessage(self) -> None:
        """
        For the same records, nostr-tools and relaypool build the same
        first message, byte for byte.
        """
        records, _ = generatedSets(5000, 0, 0, seed=7)
        peer = self.peer("initiator", records)
        self.assertEqual(peer.first["msg"], NegentropyInitiator(storage(records)).initiate().hex())

    def test_emptySets(self) -> None:
        """Empty sets, both directions, and one side empty."""
        records, _ = generatedSets(300, 0, 0, seed=8)
        for ours, theirs in (([], []), (records, []), ([], records)):
            self.relaypoolInitiates(ours, theirs)
            self.nostrToolsInitiates(ours, theirs)

    def test_identicalSets(self) -> None:
        """Identical sets, both directions."""
        records, _ = generatedSets(4000, 0, 0, seed=9)
        self.relaypoolInitiates(records, records)
        self.nostrToolsInitiates(records, records)

    def test_differencesBothWays(self) -> None:
        """Sets with differences on each side, both directions."""
        first, second = generatedSets(8000, 90, 70, seed=10)
        self.relaypoolInitiates(first, second)
        self.nostrToolsInitiates(first, second)

    def test_frameSizeLimit(self) -> None:
        """Both sides under a 4096-byte frame size limit, both directions."""
        first, second = generatedSets(6000, 70, 50, seed=11)
        self.relaypoolInitiates(first, second, limit=4096)
        self.nostrToolsInitiates(first, second, limit=4096)

    def test_hundredThousand(self) -> None:
        """100,000 records differing by 1% (both ways), both directions."""
        first, second = generatedSets(100_000, 1000, 1000, seed=12)
        self.relaypoolInitiates(first, second, limit=60_000)
        self.nostrToolsInitiates(first, second, limit=60_000)
