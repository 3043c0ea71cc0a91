"""
Tests for NIP-77 in the gateway (L{relaypool.gateway.negentropy}): real
WebSocket clients on 127.0.0.1 sync against the gateway's store, with
relaypool's initiator and with nostr-tools' C{NegentropySync} under node.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from relaypool.gateway.limits import GatewayLimits
from relaypool.nostr.event import Event, generatePrivateKey
from relaypool.nostr.negentropy import NegentropyInitiator, NegentropyStorage
from relaypool.testing import makeEvent
from tests.nostrtools import requireNostrTools
from tests.test_gateway_protocol import GatewayTestCase, waitUntil
from tests.wsclient import NostrClient

CLIENT_SCRIPT = os.path.join(os.path.dirname(__file__), "negentropy_client.mjs")


def events(count: int, kind: int = 1, start: int = 1_700_000_000) -> list[Event]:
    key = generatePrivateKey()
    return [
        makeEvent(kind, f"n{n}", createdAt=start + n // 3, privateKey=key) for n in range(count)
    ]


def records(some: list[Event]) -> list[tuple[int, bytes]]:
    return [(event.createdAt, bytes.fromhex(event.id)) for event in some]


class NegentropyGatewayTests(GatewayTestCase):
    """
    The gateway answers NEG-OPEN, NEG-MSG and NEG-CLOSE from its store.
    """

    @inlineCallbacks
    def storeAndGateway(self, stored: list[Event], **limits: Any) -> Any:
        store = self.openStore()
        yield gatherResults([store.save(event) for event in stored])
        gateway = yield self.startGateway(store=store, limits=GatewayLimits(**limits))
        client = yield self.connect(gateway)
        return gateway, client

    @inlineCallbacks
    def initiate(
        self,
        client: NostrClient,
        ours: list[Event],
        filter: dict[str, Any],
        subscriptionId: str = "n1",
    ) -> Any:
        """
        Sync C{ours} against the gateway with relaypool's initiator.

        @return: (the ids only we have, the ids only the gateway has, the
            number of NEG-MSG answers).
        """
        storage = NegentropyStorage(records(ours))
        storage.seal()
        initiator = NegentropyInitiator(storage)
        have: set[str] = set()
        need: set[str] = set()
        answers = 0
        client.send("NEG-OPEN", subscriptionId, filter, initiator.initiate().hex())
        while True:
            frame = yield client.waitFor(
                lambda f: f[0] in ("NEG-MSG", "NEG-ERR") and f[1] == subscriptionId
            )
            client.frames.remove(frame)
            if frame[0] == "NEG-ERR":
                raise AssertionError(f"NEG-ERR {frame[2:]}")
            answers += 1
            message, haveIds, needIds = initiator.reconcile(bytes.fromhex(frame[2]))
            have.update(i.hex() for i in haveIds)
            need.update(i.hex() for i in needIds)
            if message is None:
                client.send("NEG-CLOSE", subscriptionId)
                return have, need, answers
            client.send("NEG-MSG", subscriptionId, message.hex())

    @inlineCallbacks
    def test_syncFindsDifferences(self) -> None:
        """
        A client learns exactly which of its events the gateway lacks and
        which stored events it lacks, restricted to the filter.
        """
        common = events(3000)
        onlyStored = events(40)
        onlyClient = events(25)
        otherKind = events(30, kind=7)
        _, client = yield self.storeAndGateway(common + onlyStored + otherKind)
        have, need, _ = yield self.initiate(client, common + onlyClient, {"kinds": [1]})
        self.assertEqual(have, {e.id for e in onlyClient})
        self.assertEqual(need, {e.id for e in onlyStored})

    @inlineCallbacks
    def test_frameSizeRounds(self) -> None:
        """
        With a small C{negFrameSize}, the answers stay under it (in bytes
        before hex) and the sync takes more rounds to find the same
        differences.
        """
        common = events(4000)
        onlyStored = events(300)
        _, client = yield self.storeAndGateway(common + onlyStored, negFrameSize=4096)
        have, need, answers = yield self.initiate(client, common, {})
        self.assertEqual((have, need), (set(), {e.id for e in onlyStored}))
        self.assertGreater(answers, 2)
        sizes = [len(f[2]) // 2 for f in client.frames if f[0] == "NEG-MSG"]
        self.assertLessEqual(max(sizes, default=0), 4096)

    @inlineCallbacks
    def test_tooManyRecords(self) -> None:
        """
        A filter matching more than C{negMaxRecords} stored events is
        answered C{NEG-ERR "blocked: ..."} with the bound as 4th element.
        """
        _, client = yield self.storeAndGateway(events(11), negMaxRecords=10)
        client.send("NEG-OPEN", "big", {}, "6100000200")
        frame = yield client.waitForVerb("NEG-ERR", "big")
        self.assertTrue(frame[2].startswith("blocked: "), frame)
        self.assertEqual(frame[3], 10)

    @inlineCallbacks
    def test_tooManySyncs(self) -> None:
        """
        One more open sync than C{negMaxSyncs} is answered C{NEG-ERR
        "blocked: ..."}; the open ones go on.
        """
        _, client = yield self.storeAndGateway(events(5), negMaxSyncs=2)
        for name in ("a", "b"):
            client.send("NEG-OPEN", name, {}, "6100000200")
            yield client.waitForVerb("NEG-MSG", name)
        client.send("NEG-OPEN", "c", {}, "6100000200")
        frame = yield client.waitForVerb("NEG-ERR", "c")
        self.assertIn("at most 2 negentropy syncs", frame[2])
        client.send("NEG-CLOSE", "a")
        client.send("NEG-OPEN", "c", {}, "6100000200")
        yield client.waitForVerb("NEG-MSG", "c")

    @inlineCallbacks
    def test_reopenReplaces(self) -> None:
        """
        A NEG-OPEN for an id already open closes the old sync first and
        starts anew (it does not count twice against the bound).
        """
        _, client = yield self.storeAndGateway(events(40), negMaxSyncs=1)
        client.send("NEG-OPEN", "same", {}, "6100000200")
        yield client.waitForVerb("NEG-MSG", "same")
        have, need, _ = yield self.initiate(client, [], {}, "same")
        self.assertEqual((len(have), len(need)), (0, 40))

    @inlineCallbacks
    def test_malformed(self) -> None:
        """
        Malformed NIP-77 messages are answered with C{NEG-ERR}: a message
        that is not hex, one of another negentropy shape, a NEG-MSG for no
        open sync, a bad filter.
        """
        _, client = yield self.storeAndGateway(events(3))
        client.send("NEG-OPEN", "x1", {}, "zz")
        frame = yield client.waitForVerb("NEG-ERR", "x1")
        self.assertIn("not hex", frame[2])
        client.send("NEG-OPEN", "x2", {}, "01")
        frame = yield client.waitForVerb("NEG-ERR", "x2")
        self.assertTrue(frame[2].startswith("invalid: "), frame)
        client.send("NEG-MSG", "x3", "61")
        frame = yield client.waitForVerb("NEG-ERR", "x3")
        self.assertTrue(frame[2].startswith("closed: "), frame)
        client.send("NEG-OPEN", "x4", {"kinds": "one"}, "6100000200")
        frame = yield client.waitForVerb("NEG-ERR", "x4")
        self.assertTrue(frame[2].startswith("invalid: "), frame)
        self.assertNotIn("CLOSED", client.verbs())

    @inlineCallbacks
    def test_otherVersion(self) -> None:
        """
        A NEG-OPEN of protocol version 2 is answered with the one byte of
        version 1, as the spec says.
        """
        _, client = yield self.storeAndGateway(events(3))
        client.send("NEG-OPEN", "v2", {}, "6200000200")
        frame = yield client.waitForVerb("NEG-MSG", "v2")
        self.assertEqual(frame[2], "61")

    @inlineCallbacks
    def test_idleTimeout(self) -> None:
        """
        A sync the client leaves without a NEG-MSG for C{negIdleTimeout}
        seconds is closed with C{NEG-ERR "closed: ..."}.
        """
        _, client = yield self.storeAndGateway(events(40), negIdleTimeout=0.2)
        client.send("NEG-OPEN", "idle", {}, "6100000200")
        yield client.waitForVerb("NEG-MSG", "idle")
        frame = yield client.waitForVerb("NEG-ERR", "idle")
        self.assertIn("closed: no NEG-MSG for 0.2 seconds", frame[2])

    @inlineCallbacks
    def test_withoutStore(self) -> None:
        """
        A gateway without a store refuses syncs and does not list NIP-77;
        with one, NIP-11 lists 77.
        """
        relays = yield self.startRelays(1)
        pool = yield self.startPool(relays)
        gateway = yield self.startGateway(pool)
        self.assertNotIn(77, gateway.information()["supported_nips"])
        client = yield self.connect(gateway)
        client.send("NEG-OPEN", "s", {}, "6100000200")
        frame = yield client.waitForVerb("NEG-ERR", "s")
        self.assertTrue(frame[2].startswith("blocked: "), frame)
        stored, _ = yield self.storeAndGateway([])
        self.assertIn(77, stored.information()["supported_nips"])

    @inlineCallbacks
    def test_statistics(self) -> None:
        """
        Syncs opened and refused are counted, and the NIP-77 verbs appear
        in the messages received and sent.
        """
        gateway, client = yield self.storeAndGateway(events(5), negMaxRecords=4)
        client.send("NEG-OPEN", "big", {}, "6100000200")
        yield client.waitForVerb("NEG-ERR", "big")
        client.send("NEG-OPEN", "ok", {"kinds": [2]}, "6100000200")
        yield client.waitForVerb("NEG-MSG", "ok")
        stats = gateway.facade.stats()
        self.assertEqual((stats.syncsOpened, stats.syncsRefused), (1, 1))
        self.assertEqual(stats.messagesReceived["NEG-OPEN"], 2)
        self.assertEqual((stats.messagesSent["NEG-MSG"], stats.messagesSent["NEG-ERR"]), (1, 1))

    @inlineCallbacks
    def test_disconnectForgetsSyncs(self) -> None:
        """
        A client that disconnects mid-sync leaves no sync and no timer
        behind.
        """
        gateway, client = yield self.storeAndGateway(events(40))
        client.send("NEG-OPEN", "gone", {}, "6100000200")
        yield client.waitForVerb("NEG-MSG", "gone")
        sessions = list(gateway.facade._sessions.values())
        self.assertEqual([len(s.syncs) for s in sessions], [1])
        yield client.close()
        yield waitUntil(lambda: not gateway.facade._sessions)
        self.assertEqual(sessions[0].syncs, {})


class NostrToolsClientTests(GatewayTestCase):
    """
    nostr-tools' own NIP-77 client (C{NegentropySync} over its C{Relay})
    against the gateway, under node.
    """

    timeout = 120

    @inlineCallbacks
    def test_nostrToolsSync(self) -> None:
        """
        nostr-tools learns exactly which events it has that the gateway
        lacks and which the gateway has that it lacks, for its filter.
        """
        folder = requireNostrTools(self.fail)
        common = events(2000)
        onlyStored = events(30)
        onlyClient = events(20)
        store = self.openStore()
        yield gatherResults([store.save(e) for e in common + onlyStored + events(10, kind=7)])
        gateway = yield self.startGateway(store=store)
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump([[e.createdAt, e.id] for e in common + onlyClient], f)
        url = f"ws://127.0.0.1:{gateway.port.getHost().port}/"
        out, err, code = yield getProcessOutputAndValue(
            "node",
            [
                "--no-warnings",
                "--experimental-websocket",
                CLIENT_SCRIPT,
                url,
                path,
                json.dumps({"kinds": [1]}),
            ],
            env={**os.environ, "NOSTR_TOOLS_DIR": folder},
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode())
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(set(result["have"]), {e.id for e in onlyClient})
        self.assertEqual(set(result["need"]), {e.id for e in onlyStored})
        self.assertIsNone(result["closed"])
