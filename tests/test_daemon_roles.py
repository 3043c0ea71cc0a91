"""
Tests for relay roles and relay patterns in the daemon: relays configured as
read, write or discovery relays route a client's REQs and EVENTs, the quorum
counts write relays, C{relay-deny}/C{relay-allow} refuse relays at start, on
reload and in the management API, and a reload changes roles.

Every test runs the daemon in-process in front of L{FakeRelay}s on
127.0.0.1. A check that a relay did I{not} get a message waits for a later
message on the same connection instead of waiting for time to pass: the pool
keeps one connection per relay, and a relay reads its messages in the order
they were sent.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import treq
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError

from relaypool.daemon.config import ConfigSources, RelaySpec, buildConfig
from relaypool.daemon.service import Options
from relaypool.errors import RelayRefused
from relaypool.nostr.event import generatePrivateKey, publicKeyFor
from relaypool.nostr.messages import ClientEvent, ClientReq
from relaypool.nostr.nip98 import makeAuthorization
from relaypool.nostr.url import parseRelayURL
from relaypool.testing import FakeRelay, makeEvent
from tests.test_service import DaemonFixture, _connect, _until

ADMIN_KEY = generatePrivateKey()


def _normalized(relay: FakeRelay) -> str:
    return parseRelayURL(relay.url).url


def _reqIds(relay: FakeRelay) -> list[str]:
    """
    @return: the subscription ids of the REQs C{relay} received.
    """
    return [m.subscriptionId for m in relay.received if isinstance(m, ClientReq)]


def _eventIds(relay: FakeRelay) -> list[str]:
    """
    @return: the ids of the events C{relay} received in EVENT messages.
    """
    return [m.event.id for m in relay.received if isinstance(m, ClientEvent)]


class RolesFixture(DaemonFixture):
    """
    The daemon in front of fake relays with roles.
    """

    @inlineCallbacks
    def startWithRoles(self, relays: list[object], **settings: object) -> Any:
        """
        Start the daemon with C{relays} (URLs or relay tables), status
        lines off; wait until every relay is connected and has sent its
        NIP-11 document (so no REQ waits for it and messages to a relay go
        out in the order they are sent).
        """
        daemon, port = yield self.startDaemon(relays=relays, **{"status-interval": "0", **settings})
        count = len(daemon.config.relays)
        yield _until(
            lambda: (
                len(daemon.pool.activeRelayURLs()) == count
                and all(
                    daemon.pool.relay(url).information is not None
                    for url in daemon.pool.relayURLs()
                )
            )
        )
        return daemon, port

    @inlineCallbacks
    def readAndWrite(self) -> Any:
        """
        Start the daemon with a read-only relay and a write-only relay.

        @return: the read relay, the write relay, the daemon and its port.
        """
        reader, writer = yield self.fakeRelays(2)
        daemon, port = yield self.startWithRoles(
            [{"url": reader.url, "write": False}, {"url": writer.url, "read": False}]
        )
        return reader, writer, daemon, port


class RoutingTests(RolesFixture):
    """
    A client's REQs go to the read relays, its EVENTs to the write relays.
    """

    @inlineCallbacks
    def test_reqReachesReadRelayOnly(self) -> Any:
        """
        A client's REQ is sent to the read relay, whose stored events it
        gets, and not to the write-only relay: when the write relay received
        the client's next EVENT, it had received no REQ before it.
        """
        reader, writer, daemon, port = yield self.readAndWrite()
        onReader, onWriter = makeEvent(content="on the reader"), makeEvent(content="on the writer")
        reader.store(onReader)
        writer.store(onWriter)
        client = yield _connect(port)
        client.send("REQ", "notes", {"kinds": [1]})
        event = yield client.next()
        self.assertEqual(((yield client.next()), event[2]["id"]), (["EOSE", "notes"], onReader.id))
        published = makeEvent(content="a marker")
        client.send("EVENT", published.toDict())
        yield _until(lambda: published.id in _eventIds(writer))
        self.assertEqual((len(_reqIds(reader)), _reqIds(writer)), (1, []))

    @inlineCallbacks
    def test_eventReachesWriteRelayOnly(self) -> Any:
        """
        A client's EVENT is accepted by the write relay and not sent to the
        read-only relay: when the read relay received the client's next
        REQ, it had received no EVENT before it.
        """
        reader, writer, daemon, port = yield self.readAndWrite()
        client = yield _connect(port)
        published = makeEvent(content="to the writer")
        client.send("EVENT", published.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", published.id, True])
        self.assertEqual([e.id for e in writer.events], [published.id])
        client.send("REQ", "marker", {"kinds": [7]})
        self.assertEqual((yield client.next()), ["EOSE", "marker"])
        self.assertEqual((_reqIds(reader) != [], _eventIds(reader), reader.events), (True, [], []))

    @inlineCallbacks
    def test_quorumCountsWriteRelays(self) -> Any:
        """
        With quorum 2 over two write relays and a read relay, an EVENT that
        one write relay refuses is answered C{OK false}: the read relay,
        which never gets it, does not make up the quorum.
        """
        first, second, reader = yield self.fakeRelays(3)
        second.misbehaviour.rejectWith = "blocked: not here"
        daemon, port = yield self.startWithRoles(
            [first.url, second.url, {"url": reader.url, "write": False}],
            quorum="2",
        )
        client = yield _connect(port)
        published = makeEvent(content="needs two")
        client.send("EVENT", published.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", published.id, False])
        self.assertIn("blocked: not here", ok[3])
        self.assertEqual(_eventIds(reader), [])

    @inlineCallbacks
    def test_quorumReachedByWriteRelays(self) -> Any:
        """
        With quorum 2 over two write relays and a read relay, an EVENT both
        write relays accept is answered C{OK true}.
        """
        first, second, reader = yield self.fakeRelays(3)
        daemon, port = yield self.startWithRoles(
            [first.url, second.url, {"url": reader.url, "write": False}], quorum="2"
        )
        client = yield _connect(port)
        published = makeEvent(content="two of two")
        client.send("EVENT", published.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", published.id, True])
        self.assertEqual([[e.id for e in r.events] for r in (first, second)], [[published.id]] * 2)

    @inlineCallbacks
    def test_rolesInStatusDocuments(self) -> Any:
        """
        C{/stats} and C{/status.json} give each relay's roles.
        """
        reader, writer, daemon, port = yield self.readAndWrite()
        response = yield treq.get(f"http://127.0.0.1:{port}/status.json", persistent=False)
        status = orjson.loads((yield response.content()))
        self.assertEqual(
            sorted((r["url"], r["roles"]) for r in status["relays"]),
            sorted([(_normalized(reader), ["read"]), (_normalized(writer), ["write"])]),
        )
        response = yield treq.get(f"http://127.0.0.1:{port}/stats", persistent=False)
        stats = orjson.loads((yield response.content()))
        self.assertEqual(stats["relays"][_normalized(reader)]["roles"], ["read"])


class PatternTests(RolesFixture):
    """
    C{relay-allow} and C{relay-deny} patterns decide which relays the pool
    may use.
    """

    def test_denyRefusesConfiguredRelayOnCommandLine(self) -> None:
        """
        A configured relay that a C{--relay-deny} pattern refuses stops
        C{twistd relaypool} with one line naming the relay and the pattern.
        """
        options = Options()
        options.environ = {}
        options.parent = Options()  # type: ignore[attr-defined]
        error = self.assertRaises(
            SystemExit,
            options.parseOptions,
            [
                "--relay",
                "wss://relay.example",
                "--relay",
                "ws://hidden.onion",
                "--relay-deny",
                "*.onion",
            ],
        )
        self.assertEqual(
            error.code,
            "twistd relaypool: relay-deny: refuses the configured relay ws://hidden.onion (it"
            " matches the deny pattern '*.onion'): remove the relay or change the pattern\n"
            "Try 'twistd relaypool --help'.",
        )

    def test_allowRefusesConfiguredRelay(self) -> None:
        """
        With C{relay-allow} patterns, a configured relay matching none of
        them is a usage error naming it and the patterns.
        """
        options = Options()
        options.environ = {}
        error = self.assertRaises(
            UsageError,
            options.parseOptions,
            ["--read-relay", "ws://127.0.0.1:1", "--relay-allow", "wss://*"],
        )
        self.assertEqual(
            str(error),
            "relay-allow: refuses the configured relay ws://127.0.0.1:1 (it matches no allow"
            " pattern ('wss://*')): remove the relay or change the pattern",
        )

    @inlineCallbacks
    def test_poolRefusesDeniedRelay(self) -> Any:
        """
        The running pool refuses to add a relay the deny patterns match.
        """
        (relay,) = yield self.fakeRelays(1)
        daemon, port = yield self.startWithRoles([relay.url], **{"relay-deny": ["*.onion"]})
        error = self.assertRaises(RelayRefused, daemon.pool.addRelay, "wss://hidden.onion")
        self.assertIn("it matches the deny pattern '*.onion'", str(error))

    @inlineCallbacks
    def test_managementAddRelayRefusedByDeny(self) -> Any:
        """
        The management API's C{relaypool_addrelay} with a relay the deny
        patterns match answers an error naming the pattern, and the relay
        is not added.
        """
        (relay,) = yield self.fakeRelays(1)
        daemon, port = yield self.startWithRoles(
            [relay.url],
            **{"relay-deny": ["*.onion"], "admin-pubkeys": [publicKeyFor(ADMIN_KEY)]},
        )
        url = f"http://127.0.0.1:{port}/"
        body = orjson.dumps({"method": "relaypool_addrelay", "params": ["wss://hidden.onion"]})
        authorization = makeAuthorization(ADMIN_KEY, url, "POST", body)
        response = yield treq.post(
            url,
            data=body,
            headers={
                b"content-type": [b"application/nostr+json+rpc"],
                b"authorization": [authorization.encode("ascii")],
            },
            persistent=False,
        )
        answer = orjson.loads((yield response.content()))
        self.assertEqual(
            answer,
            {
                "result": None,
                "error": "cannot add wss://hidden.onion/: refused by the pool's admit policy:"
                " it matches the deny pattern '*.onion'",
            },
        )
        self.assertEqual(daemon.pool.relayURLs(), [_normalized(relay)])

    @inlineCallbacks
    def test_reloadDenyRemovesRefusedRelay(self) -> Any:
        """
        A reload adding a deny pattern removes the relays in the pool that
        it refuses (here one added at run time, as the management API
        does), and the pool refuses them from then on.
        """
        kept, added = yield self.fakeRelays(2)
        daemon, port = yield self.startWithRoles([kept.url])
        daemon.pool.addRelay(added.url)
        pattern = _normalized(added)
        changes = daemon.applyConfig(
            buildConfig(
                overrides={**_settings(daemon), "relays": [kept.url], "relay-deny": [pattern]}
            )
        )
        self.assertEqual(changes, [f"relay-deny [] -> [{pattern}]"])
        self.assertEqual(daemon.pool.relayURLs(), [_normalized(kept)])
        self.assertRaises(RelayRefused, daemon.pool.addRelay, added.url)


class ReloadRoleTests(RolesFixture):
    """
    A reload applies role changes to the running pool.
    """

    @inlineCallbacks
    def test_readRoleRemoved(self) -> Any:
        """
        A relay that stops being a read relay on reload closes the
        subscriptions it served, keeps its connection, and the change is
        logged with its new roles.
        """
        first, second = yield self.fakeRelays(2)
        daemon, port = yield self.startWithRoles([first.url, second.url])
        client = yield _connect(port)
        client.send("REQ", "live", {"kinds": [1]})
        self.assertEqual((yield client.next()), ["EOSE", "live"])
        yield _until(lambda: second.subscriptionCount() == 1)
        with capturedLogs() as events:
            changes = daemon.applyConfig(
                buildConfig(
                    overrides={
                        **_settings(daemon),
                        "relays": [first.url, {"url": second.url, "read": False}],
                    }
                )
            )
        self.assertEqual(
            changes, [f"relays [{first.url}, {second.url}] -> [{first.url}, {second.url} (write)]"]
        )
        self.assertEqual(daemon.pool.relayRoles(second.url).names(), ("write",))
        yield _until(lambda: second.subscriptionCount() == 0)
        self.assertEqual(
            (first.subscriptionCount(), second.connectionCount()),
            (1, 1),
        )
        self.assertEqual(
            [formatEvent(e) for e in events if "reloaded" in formatEvent(e)],
            [f"relaypool: reloaded settings: {changes[0]}"],
        )

    @inlineCallbacks
    def test_readRoleAddedFromFile(self) -> Any:
        """
        A write-only relay made a read relay in the config file gets the
        live subscriptions on C{reload}, and a new event it sends reaches
        the client.
        """
        first, second = yield self.fakeRelays(2)
        path = self.mktemp()
        _writeRelays(path, f'"{first.url}", {{url = "{second.url}", read = false}}')
        sources = ConfigSources(
            path, {}, {"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:"}
        )
        daemon, port = yield self.startDaemon(sources, **_fileSettings(sources))
        yield _until(lambda: len(daemon.pool.activeRelayURLs()) == 2)
        client = yield _connect(port)
        client.send("REQ", "live", {"kinds": [1]})
        self.assertEqual((yield client.next()), ["EOSE", "live"])
        _writeRelays(path, f'"{first.url}", "{second.url}"')
        changes = daemon.reload()
        self.assertEqual(
            changes, [f"relays [{first.url}, {second.url} (write)] -> [{first.url}, {second.url}]"]
        )
        yield _until(lambda: second.subscriptionCount() == 1)
        late = makeEvent(content="only on the second relay")
        second.store(late)
        event = yield client.next()
        self.assertEqual(event[:2] + [event[2]["id"]], ["EVENT", "live", late.id])

    @inlineCallbacks
    def test_reloadRefusedWhenDenyMatchesConfiguredRelay(self) -> Any:
        """
        A config file whose deny pattern refuses one of its relays is
        refused on reload with one line naming both; the running settings
        stay.
        """
        (relay,) = yield self.fakeRelays(1)
        path = self.mktemp()
        _writeRelays(path, f'"{relay.url}"')
        sources = ConfigSources(
            path, {}, {"listen": "tcp:0:interface=127.0.0.1", "store": ":memory:"}
        )
        daemon, port = yield self.startDaemon(sources, **_fileSettings(sources))
        with open(path, "a", encoding="utf-8") as f:
            f.write('relay-deny = ["127.0.0.1"]\n')
        with capturedLogs() as events:
            self.assertIsNone(daemon.reload())
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "relaypool: reload refused, the running settings stay: relay-deny: refuses the"
                f" configured relay {relay.url} (it matches the deny pattern '127.0.0.1'): remove"
                " the relay or change the pattern"
            ],
        )
        self.assertEqual(daemon.pool.relayURLs(), [_normalized(relay)])


class ConfigRolesTests(DaemonFixture):
    """
    The daemon starts its pool with the configured roles.
    """

    @inlineCallbacks
    def test_rolesGivenToPool(self) -> Any:
        """
        Each configured relay joins the pool with its roles; a relay given
        twice with different roles gets both.
        """
        daemon, port = yield self.startDaemon(
            relays=[
                RelaySpec("ws://127.0.0.1:1", read=True, write=False),
                RelaySpec("ws://127.0.0.1:1/", read=False, write=True),
                {"url": "ws://127.0.0.1:2", "read": False, "write": False, "discovery": True},
            ],
            **{"status-interval": "0", "outbox-model": True},
        )
        self.assertEqual(
            [(url, daemon.pool.relayRoles(url).names()) for url in daemon.pool.relayURLs()],
            [("ws://127.0.0.1:1/", ("read", "write")), ("ws://127.0.0.1:2/", ("discovery",))],
        )


def _settings(daemon: Any) -> dict[str, object]:
    """
    @return: the settings L{DaemonFixture.startDaemon} and L{RolesFixture}
        start a daemon with, to build a changed L{Config} from.
    """
    return {"listen": daemon.config.listen, "store": ":memory:", "status-interval": "0"}


def _writeRelays(path: str, relays: str) -> None:
    """
    Write a config file with C{relays} (TOML items) and status lines off.
    """
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(f"relays = [{relays}]\nstatus-interval = 0\n")
    os.replace(path + ".new", path)


def _fileSettings(sources: ConfigSources) -> dict[str, object]:
    """
    @return: the settings C{sources} load, by key, for
        L{DaemonFixture.startDaemon}, which adds them as overrides.
    """
    config = sources.load()
    return {"relays": list(config.relays), "status-interval": "0"}


class OutboxModelTests(RolesFixture):
    """
    The daemon with C{--outbox-model}: a home relay (read and write), a
    discovery relay holding relay lists, and the relays two authors write
    to.
    """

    @inlineCallbacks
    def test_clientsReadAuthorsFromTheirRelaysAndPublishToTagged(self) -> Any:
        """
        A client's REQ for an author is answered from the author's write
        relay, found in the author's relay list on the discovery relay; an
        EVENT tagging another user reaches that user's read relay through
        the durable outbox, besides the home relay.
        """
        home, discovery, alicesRelay, bobsRelay = yield self.fakeRelays(4)
        aliceKey, bobKey = generatePrivateKey(), generatePrivateKey()
        discovery.store(
            makeEvent(10002, "", [["r", alicesRelay.url, "write"]], privateKey=aliceKey),
            makeEvent(10002, "", [["r", bobsRelay.url, "read"]], privateKey=bobKey),
        )
        note = makeEvent(1, "alice writes here", privateKey=aliceKey)
        alicesRelay.store(note)
        daemon, port = yield self.startWithRoles(
            [home.url, {"url": discovery.url, "read": False, "write": False, "discovery": True}],
            **{"outbox-model": True},
        )
        client = yield _connect(port)
        client.send("REQ", "alice", {"kinds": [1], "authors": [publicKeyFor(aliceKey)]})
        event = yield client.next()
        self.assertEqual((event[0], event[2]["id"]), ("EVENT", note.id))
        self.assertEqual((yield client.next()), ["EOSE", "alice"])
        self.assertEqual(_reqIds(home), [])
        mention = makeEvent(1, "hi bob", [["p", publicKeyFor(bobKey)]], privateKey=aliceKey)
        client.send("CLOSE", "alice")
        client.send("EVENT", mention.toDict())
        ok = yield client.next()
        self.assertEqual(ok[:3], ["OK", mention.id, True])
        for relay in (bobsRelay, home, alicesRelay):
            yield _until(lambda relay=relay: mention.id in {e.id for e in relay.events})
        self.assertEqual(
            sorted(daemon.pool.relayURLs("outbox")), sorted([_normalized(alicesRelay), _normalized(bobsRelay)])
        )

    @inlineCallbacks
    def test_boundsReachThePool(self) -> Any:
        """
        The outbox model's settings are the pool's router's bounds.
        """
        [relay] = yield self.fakeRelays(1)
        daemon, port = yield self.startDaemon(
            relays=[relay.url],
            **{
                "status-interval": "0",
                "outbox-model": True,
                "outbox-relays-per-author": "3",
                "outbox-idle-timeout": "60",
                "outbox-lookup-timeout": "2.5",
                "outbox-relay-lists": "50",
                "outbox-max-tagged": "4",
            },
        )
        router = daemon.pool._router
        self.assertEqual(
            (router.relaysPerAuthor, router.idleTimeout, router.lookupTimeout, router.capacity, router.maxTagged),
            (3, 60.0, 2.5, 50, 4),
        )


class VerificationSettingsTests(RolesFixture):
    """
    The verification bounds reach the pool and the gateway.
    """

    @inlineCallbacks
    def test_verificationBounds(self) -> Any:
        """
        C{verify-queue-size} bounds the pool's events waiting for their
        check, C{verify-threads 0} verifies on the reactor thread, and
        C{max-verifying} bounds the gateway's.
        """
        [relay] = yield self.fakeRelays(1)
        daemon, port = yield self.startDaemon(
            relays=[relay.url],
            **{
                "status-interval": "0",
                "verify-threads": "0",
                "verify-queue-size": "64",
                "max-verifying": "32",
            },
        )
        self.assertEqual((daemon.pool._verifier, daemon.pool._verifyQueueSize), (None, 64))
        self.assertEqual(daemon.gateway.facade._verifier.maxPending, 32)
        other, _ = yield self.startDaemon(relays=[relay.url], **{"status-interval": "0"})
        self.assertIsNotNone(other.pool._verifier)
