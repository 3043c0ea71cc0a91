"""
Tests for L{relaypool.gateway.management} (the NIP-86 API with NIP-98
authorization) and L{relaypool.gateway.policy} in a running gateway: real
HTTP and WebSocket connections on 127.0.0.1.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.logger import capturedLogs
from twisted.web.client import Agent, HTTPConnectionPool

from relaypool.gateway.gateway import Gateway
from relaypool.gateway.policy import EventPolicy
from relaypool.nostr.event import Event, generatePrivateKey, publicKeyFor
from relaypool.nostr.nip98 import makeAuthorization
from relaypool.transport.names import StaticNameService
from relaypool.upstream.admission import AdmitPolicy, RelayPatterns
from relaypool.upstream.relaypool import RelayPool
from tests.test_gateway_protocol import GatewayTestCase

ADMIN_KEY = generatePrivateKey()
ADMIN = publicKeyFor(ADMIN_KEY)
OTHER_KEY = generatePrivateKey()
AUTHOR_KEY = generatePrivateKey()
AUTHOR = publicKeyFor(AUTHOR_KEY)
RPC = b"application/nostr+json+rpc"


class ManagementTestCase(GatewayTestCase):
    """
    Fixtures: a gateway over a store (and optionally a relay pool) with one
    admin pubkey, and an HTTP client for its NIP-86 API.
    """

    async def start(self, pool: Any = None, **kwargs: Any) -> Gateway:
        kwargs.setdefault("adminPubkeys", [ADMIN])
        if pool is None:
            kwargs.setdefault("okPolicy", "local")
        self.store = self.openStore()
        gateway: Gateway = await ensureDeferred(
            self.startGateway(pool, store=self.store, **kwargs)  # type: ignore[arg-type]
        )
        self.gateway = gateway
        assert gateway.port is not None
        self.portNumber = gateway.port.getHost().port
        self.url = f"http://127.0.0.1:{self.portNumber}/"
        connections = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=connections)
        return gateway

    async def post(
        self, body: bytes, headers: dict[bytes, bytes], path: str = "/"
    ) -> tuple[int, Any]:
        """
        POST C{body} with C{headers}.

        @return: the status code and the decoded JSON body.
        """
        response = await treq.request(
            "POST",
            f"http://127.0.0.1:{self.portNumber}{path}",
            data=body,
            headers={name: [value] for name, value in headers.items()},
            agent=self.agent,
        )
        content = await treq.content(response)
        try:
            decoded = orjson.loads(content)
        except orjson.JSONDecodeError:
            decoded = content
        return response.code, decoded

    async def call(
        self,
        method: str,
        *params: Any,
        key: bytes = ADMIN_KEY,
        url: str | None = None,
        httpMethod: str = "POST",
        createdAt: int | None = None,
        signedBody: bytes | None = None,
    ) -> tuple[int, Any]:
        """
        Call a NIP-86 method, authorized with a NIP-98 event signed by
        C{key} for C{url} (the gateway's), C{httpMethod} and C{signedBody}
        (the body sent).

        @return: the status code and the decoded response.
        """
        body = orjson.dumps({"method": method, "params": list(params)})
        authorization = makeAuthorization(
            key,
            self.url if url is None else url,
            httpMethod,
            body if signedBody is None else signedBody,
            createdAt,
        )
        return await self.post(
            body, {b"content-type": RPC, b"authorization": authorization.encode("ascii")}
        )

    async def ok(self, method: str, *params: Any) -> Any:
        """
        Call a method that must succeed.

        @return: its result.
        """
        code, answer = await self.call(method, *params)
        self.assertEqual((code, answer.get("error")), (200, None), answer)
        return answer["result"]

    async def publish(self, event: Event) -> list[Any]:
        """
        Publish C{event} through a new WebSocket client.

        @return: the C{OK} frame.
        """
        client = await ensureDeferred(self.connect(self.gateway))  # type: ignore[arg-type]
        client.send("EVENT", event.toDict())
        frame: list[Any] = await client.waitForVerb("OK", event.id)
        return frame


def note(key: bytes = AUTHOR_KEY, kind: int = 1, content: str = "hello") -> Event:
    return Event.sign(key, kind, content)


class AuthorizationTests(ManagementTestCase):
    """
    Every NIP-86 call needs a valid NIP-98 authorization by an admin pubkey;
    anything else is refused with HTTP 401 and the reason.
    """

    async def assertRefused(self, expected: str, **kwargs: Any) -> None:
        await self.start()
        code, answer = await self.call("supportedmethods", **kwargs)
        self.assertEqual(code, 401)
        self.assertIn(expected, answer["error"])

    async def test_valid(self) -> None:
        """
        A call signed by an admin for the gateway's URL, method and body is
        answered 200 with its result.
        """
        await self.start()
        code, answer = await self.call("supportedmethods")
        self.assertEqual((code, "banpubkey" in answer["result"]), (200, True))

    async def test_missingHeader(self) -> None:
        """
        A call without an C{Authorization} header is refused.
        """
        await self.start()
        code, answer = await self.post(
            b'{"method":"supportedmethods","params":[]}', {b"content-type": RPC}
        )
        self.assertEqual((code, "no Authorization header" in answer["error"]), (401, True))

    async def test_notNostrScheme(self) -> None:
        """
        An C{Authorization} header of another scheme is refused.
        """
        await self.start()
        code, answer = await self.post(
            b"{}", {b"content-type": RPC, b"authorization": b"Basic dXNlcjpwYXNz"}
        )
        self.assertEqual((code, "Nostr <base64" in answer["error"]), (401, True))

    async def test_badSignature(self) -> None:
        """
        An authorization event whose signature does not verify is refused.
        """
        await self.start()
        body = b'{"method":"supportedmethods","params":[]}'
        token = makeAuthorization(ADMIN_KEY, self.url, "POST", body).split(" ", 1)[1]
        event = orjson.loads(base64.b64decode(token))
        event["sig"] = ("0" if event["sig"][0] != "0" else "1") + event["sig"][1:]
        forged = b"Nostr " + base64.b64encode(orjson.dumps(event))
        code, answer = await self.post(body, {b"content-type": RPC, b"authorization": forged})
        self.assertEqual((code, "does not verify" in answer["error"]), (401, True))

    async def test_wrongURL(self) -> None:
        """
        An authorization event whose C{u} tag names another URL is refused.
        """
        await self.assertRefused("u tag", url="http://127.0.0.1:1/")

    async def test_wrongMethod(self) -> None:
        """
        An authorization event whose C{method} tag is not C{POST} is refused.
        """
        await self.assertRefused("method tag must be POST", httpMethod="GET")

    async def test_stale(self) -> None:
        """
        An authorization event older than the window (60 s) is refused.
        """
        await self.assertRefused("within 60 seconds", createdAt=int(time.time()) - 120)

    async def test_wrongPayload(self) -> None:
        """
        An authorization event whose C{payload} tag is not the SHA-256 of
        the body is refused.
        """
        await self.assertRefused("payload tag", signedBody=b"another body")

    async def test_unknownPubkey(self) -> None:
        """
        A valid authorization by a pubkey that is not an admin's is refused.
        """
        await self.assertRefused("is not allowed to manage this relay", key=OTHER_KEY)

    async def test_hostHeaderURL(self) -> None:
        """
        Without C{relay-url}, the C{u} tag must name the URL the client
        used, from the C{Host} header: C{localhost} names are accepted when
        the request came with C{Host: localhost:<port>}, in C{ws://} form
        too.
        """
        await self.start()
        body = b'{"method":"supportedmethods","params":[]}'
        authorization = makeAuthorization(
            ADMIN_KEY, f"ws://localhost:{self.portNumber}", "POST", body
        )
        code, _ = await self.post(
            body,
            {
                b"content-type": RPC,
                b"authorization": authorization.encode(),
                b"host": b"localhost:%d" % self.portNumber,
            },
        )
        self.assertEqual(code, 200)

    async def test_configuredRelayURL(self) -> None:
        """
        With C{relay-url} set, the C{u} tag must name it (in its
        C{https://} form), not the address the request reached.
        """
        await self.start(relayURL="wss://relaypool.example.com")
        code, _ = await self.call("supportedmethods", url="https://relaypool.example.com/")
        self.assertEqual(code, 200)
        code, _ = await self.call("supportedmethods")
        self.assertEqual(code, 401)

    async def test_disabled(self) -> None:
        """
        Without admin pubkeys the API is off: HTTP 404 saying how to turn it
        on, even to a well-signed call.
        """
        await self.start(adminPubkeys=[])
        code, answer = await self.call("supportedmethods")
        self.assertEqual((code, "admin-pubkeys" in answer["error"]), (404, True))

    async def test_otherContentType(self) -> None:
        """
        A C{POST /} of another content type is answered 415, naming the one
        to use.
        """
        await self.start()
        code, answer = await self.post(b"{}", {b"content-type": b"application/json"})
        self.assertEqual((code, b"application/nostr+json+rpc" in answer), (415, True))

    async def test_notACall(self) -> None:
        """
        An authorized body that is not a NIP-86 call is answered 400 with
        the reason.
        """
        await self.start()
        body = b'["supportedmethods"]'
        authorization = makeAuthorization(ADMIN_KEY, self.url, "POST", body)
        code, answer = await self.post(
            body, {b"content-type": RPC, b"authorization": authorization.encode()}
        )
        self.assertEqual((code, answer["result"]), (400, None))
        self.assertIn('"method"', answer["error"])

    async def test_informationAndUpgradeStillServed(self) -> None:
        """
        With the API on, C{GET /} still serves NIP-11 (listing NIP-86 and
        NIP-98) and WebSocket upgrades still work.
        """
        await self.start()
        response = await treq.get(
            self.url, headers={"accept": "application/nostr+json"}, agent=self.agent
        )
        document = orjson.loads(await treq.content(response))
        self.assertTrue({86, 98} <= set(document["supported_nips"]))
        client = await ensureDeferred(self.connect(self.gateway))  # type: ignore[arg-type]
        self.assertFalse(client.isClosed)


class MethodTests(ManagementTestCase):
    """
    The NIP-86 methods change the gateway's policy at once.
    """

    async def test_supportedMethods(self) -> None:
        """
        C{supportedmethods} lists every other method: the NIP-86 ones that
        apply to a relay pool, and relaypool's own.
        """
        await self.start()
        self.assertEqual(
            sorted(await self.ok("supportedmethods")),
            sorted(
                [
                    "banpubkey",
                    "unbanpubkey",
                    "listbannedpubkeys",
                    "allowpubkey",
                    "unallowpubkey",
                    "listallowedpubkeys",
                    "banevent",
                    "allowevent",
                    "listbannedevents",
                    "allowkind",
                    "disallowkind",
                    "listallowedkinds",
                    "relaypool_listdisallowedkinds",
                    "relaypool_listrelays",
                    "relaypool_addrelay",
                    "relaypool_removerelay",
                ]
            ),
        )

    async def test_unknownMethod(self) -> None:
        """
        An unknown method is answered with an error naming it.
        """
        await self.start()
        code, answer = await self.call("blockip", "127.0.0.1")
        self.assertEqual((code, answer["result"]), (200, None))
        self.assertIn("'blockip'", answer["error"])

    async def test_banPubkey(self) -> None:
        """
        C{banpubkey} bans at once: the author's next EVENT is refused with
        C{blocked:} and the reason, and C{listbannedpubkeys} lists it.
        """
        await self.start()
        self.assertIs(await self.ok("banpubkey", AUTHOR, "spam"), True)
        frame = await self.publish(note())
        self.assertEqual(frame[2:], [False, "blocked: this pubkey is banned from this relay: spam"])
        self.assertEqual(await self.ok("listbannedpubkeys"), [{"pubkey": AUTHOR, "reason": "spam"}])

    async def test_unbanPubkey(self) -> None:
        """
        C{unbanpubkey} lifts a ban: the author may publish again.
        """
        await self.start()
        await self.ok("banpubkey", AUTHOR)
        await self.ok("unbanpubkey", AUTHOR)
        frame = await self.publish(note())
        self.assertEqual((frame[2], await self.ok("listbannedpubkeys")), (True, []))

    async def test_badPubkey(self) -> None:
        """
        A pubkey that is not 64 hex characters is answered with an error.
        """
        await self.start()
        code, answer = await self.call("banpubkey", "npub1xyz")
        self.assertEqual((code, answer["result"]), (200, None))
        self.assertIn("64 hex characters", answer["error"])

    async def test_allowPubkeyWriteRestricted(self) -> None:
        """
        In write-restricted mode, C{allowpubkey} lets an author publish,
        C{unallowpubkey} stops it (C{restricted:}), and
        C{listallowedpubkeys} lists the allowed ones.
        """
        await self.start(policy=EventPolicy(writeRestricted=True))
        frame = await self.publish(note())
        self.assertEqual(
            frame[2:], [False, "restricted: only allowed pubkeys may publish to this relay"]
        )
        await self.ok("allowpubkey", AUTHOR, "a friend")
        self.assertEqual((await self.publish(note(content="2")))[2], True)
        self.assertEqual(
            await self.ok("listallowedpubkeys"), [{"pubkey": AUTHOR, "reason": "a friend"}]
        )
        await self.ok("unallowpubkey", AUTHOR)
        self.assertEqual((await self.publish(note(content="3")))[2], False)

    async def test_banEvent(self) -> None:
        """
        C{banevent} deletes a stored event, refuses it if published again
        (C{blocked:}), and C{listbannedevents} lists it.
        """
        await self.start()
        event = note()
        self.assertEqual((await self.publish(event))[2], True)
        await self.ok("banevent", event.id, "illegal")
        self.assertEqual(await self.store.fetch([event.id]), [])
        frame = await self.publish(event)
        self.assertEqual(
            frame[2:], [False, "blocked: this event is banned from this relay: illegal"]
        )
        self.assertEqual(await self.ok("listbannedevents"), [{"id": event.id, "reason": "illegal"}])

    async def test_allowEvent(self) -> None:
        """
        C{allowevent} lifts an event's ban: it may be published again.
        """
        await self.start()
        event = note()
        await self.ok("banevent", event.id)
        await self.ok("allowevent", event.id)
        self.assertEqual(
            ((await self.publish(event))[2], await self.ok("listbannedevents")), (True, [])
        )

    async def test_allowKind(self) -> None:
        """
        C{allowkind} makes the allowed kinds the only ones clients may
        publish: another kind is refused with C{restricted:}; C{listallowedkinds}
        lists them.
        """
        await self.start()
        await self.ok("allowkind", 1)
        self.assertEqual((await self.publish(note(kind=1)))[2], True)
        frame = await self.publish(note(kind=7))
        self.assertEqual(
            frame[2:], [False, "restricted: kind 7 events are not allowed on this relay"]
        )
        self.assertEqual(await self.ok("listallowedkinds"), [1])

    async def test_disallowKind(self) -> None:
        """
        C{disallowkind} refuses a kind with C{blocked:};
        C{relaypool_listdisallowedkinds} lists it; C{allowkind} takes it off
        that list.
        """
        await self.start()
        await self.ok("disallowkind", 7)
        frame = await self.publish(note(kind=7))
        self.assertEqual(
            frame[2:], [False, "blocked: kind 7 events are not accepted by this relay"]
        )
        self.assertEqual(await self.ok("relaypool_listdisallowedkinds"), [7])
        await self.ok("allowkind", 7)
        self.assertEqual(await self.ok("relaypool_listdisallowedkinds"), [])

    async def test_badKind(self) -> None:
        """
        A kind that is not an integer 0-65535 is answered with an error.
        """
        await self.start()
        code, answer = await self.call("allowkind", "1")
        self.assertEqual((code, answer["result"]), (200, None))
        self.assertIn("event kind", answer["error"])

    async def test_changeLogged(self) -> None:
        """
        A change is logged with the admin who made it, and that it is not
        persisted.
        """
        await self.start()
        with capturedLogs() as events:
            await self.ok("banpubkey", AUTHOR)
        lines = [e for e in events if "NIP-86" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual((lines[0]["admin"], lines[0]["method"]), (ADMIN, "banpubkey"))
        self.assertIn("not persisted", lines[0]["persisted"])

    async def test_bannedNotServed(self) -> None:
        """
        Events by a banned pubkey already in the store are no longer served
        to a C{REQ}; others still are.
        """
        await self.start()
        banned, kept = note(), note(OTHER_KEY)
        await self.store.save(banned)
        await self.store.save(kept)
        await self.ok("banpubkey", AUTHOR)
        client = await ensureDeferred(self.connect(self.gateway))  # type: ignore[arg-type]
        client.send("REQ", "s", {"kinds": [1]})
        await client.waitForVerb("EOSE", "s")
        self.assertEqual(client.eventIds("s"), [kept.id])


class RelayMethodTests(ManagementTestCase):
    """
    relaypool's own methods act on the running relay pool at once.
    """

    async def startWithPool(
        self, *urls: str, quorum: int = 1, admit: AdmitPolicy | None = None, readOnly: Iterable[str] = ()
    ) -> RelayPool:
        pool = RelayPool(
            reactor, nameService=StaticNameService(), fetchInformation=False, admit=admit
        )
        for url in urls:
            pool.addRelay(url)
        for url in readOnly:
            pool.addRelay(url, read=True, write=False)
        await self.start(pool, quorum=quorum)
        return pool

    async def stats(self) -> dict[str, Any]:
        response = await treq.get(self.url + "stats", agent=self.agent)
        result: dict[str, Any] = orjson.loads(await treq.content(response))
        return result

    async def test_listRelays(self) -> None:
        """
        C{relaypool_listrelays} lists each relay with its state, health and
        roles.
        """
        await self.startWithPool("ws://127.0.0.1:1", "ws://127.0.0.1:2")
        relays = await self.ok("relaypool_listrelays")
        self.assertEqual(
            [(r["url"], sorted(r)) for r in relays],
            [
                ("ws://127.0.0.1:1/", ["healthScore", "roles", "state", "url"]),
                ("ws://127.0.0.1:2/", ["healthScore", "roles", "state", "url"]),
            ],
        )

    async def test_listRelayRoles(self) -> None:
        """
        Each relay's C{roles} in C{relaypool_listrelays} are the names of
        its roles in the pool.
        """
        await self.startWithPool("ws://127.0.0.1:1", readOnly=["ws://127.0.0.1:2"])
        relays = await self.ok("relaypool_listrelays")
        self.assertEqual(
            [(r["url"], r["roles"]) for r in relays],
            [("ws://127.0.0.1:1/", ["read", "write"]), ("ws://127.0.0.1:2/", ["read"])],
        )

    async def test_addRefusedRelay(self) -> None:
        """
        C{relaypool_addrelay} with a URL the pool's admit policy refuses is
        answered with an error naming the relay and the pattern, and the
        relay is not added.
        """
        await self.startWithPool("ws://127.0.0.1:1", admit=RelayPatterns(deny=["*.onion"]))
        code, answer = await self.call("relaypool_addrelay", "ws://hidden.onion")
        self.assertEqual((code, answer["result"]), (200, None))
        self.assertEqual(
            answer["error"],
            "cannot add ws://hidden.onion/: refused by the pool's admit policy: it matches the"
            " deny pattern '*.onion'",
        )
        self.assertEqual(list((await self.stats())["relays"]), ["ws://127.0.0.1:1/"])

    async def test_addRelay(self) -> None:
        """
        C{relaypool_addrelay} adds a relay to the running pool: it shows in
        C{/stats} at once.
        """
        await self.startWithPool("ws://127.0.0.1:1")
        self.assertIs(await self.ok("relaypool_addrelay", "ws://127.0.0.1:2"), True)
        self.assertEqual(
            sorted((await self.stats())["relays"]), ["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"]
        )

    async def test_addRelayWithRoles(self) -> None:
        """
        C{relaypool_addrelay}'s optional second parameter gives the relay's
        roles; a bad one is answered with what to write.
        """
        await self.startWithPool("ws://127.0.0.1:1")
        self.assertIs(
            await self.ok("relaypool_addrelay", "ws://127.0.0.1:2", {"write": False, "discovery": True}), True
        )
        self.assertEqual((await self.stats())["relays"]["ws://127.0.0.1:2/"]["roles"], ["read", "discovery"])
        for roles, error in (
            ([True], 'parameter 2 must be an object of roles, {"read": true, "write": false}, got [true]'),
            ({"reader": True}, "parameter 2 has unknown roles reader: the roles are read, write, discovery"),
            ({"read": "yes"}, 'parameter 2\'s roles must be true or false, got {"read":"yes"}'),
            ({"read": False, "write": False}, "ws://127.0.0.1:3/: a relay needs a role: read, write or discovery"),
        ):
            code, answer = await self.call("relaypool_addrelay", "ws://127.0.0.1:3", roles)
            self.assertEqual((code, answer["result"], answer["error"]), (200, None, error))
        self.assertNotIn("ws://127.0.0.1:3/", (await self.stats())["relays"])

    async def test_addBadRelay(self) -> None:
        """
        C{relaypool_addrelay} with a URL that is not a relay URL is answered
        with the reason.
        """
        await self.startWithPool("ws://127.0.0.1:1")
        code, answer = await self.call("relaypool_addrelay", "http://example.com")
        self.assertEqual((code, answer["result"]), (200, None))
        self.assertIn("ws://", answer["error"])

    async def test_removeRelay(self) -> None:
        """
        C{relaypool_removerelay} removes a relay from the running pool: it is
        gone from C{/stats}.
        """
        await self.startWithPool("ws://127.0.0.1:1", "ws://127.0.0.1:2")
        self.assertIs(await self.ok("relaypool_removerelay", "ws://127.0.0.1:2"), True)
        self.assertEqual(list((await self.stats())["relays"]), ["ws://127.0.0.1:1/"])

    async def test_removeUnknownRelay(self) -> None:
        """
        Removing a relay that is not in the pool is answered with an error.
        """
        await self.startWithPool("ws://127.0.0.1:1", "ws://127.0.0.1:2")
        code, answer = await self.call("relaypool_removerelay", "ws://127.0.0.1:3")
        self.assertIn("is not in the pool", answer["error"])

    async def test_removeBelowQuorum(self) -> None:
        """
        A relay is not removed when fewer relays than the quorum would be
        left.
        """
        await self.startWithPool("ws://127.0.0.1:1", "ws://127.0.0.1:2", quorum=2)
        code, answer = await self.call("relaypool_removerelay", "ws://127.0.0.1:2")
        self.assertIn("fewer than the quorum (2)", answer["error"])
        self.assertEqual(len((await self.stats())["relays"]), 2)

    async def test_removeBelowQuorumCountsWriteRelays(self) -> None:
        """
        The quorum check counts write relays: a write relay is not removed
        when fewer write relays than the quorum would be left, even with
        read-only relays left over.
        """
        await self.startWithPool(
            "ws://127.0.0.1:1", "ws://127.0.0.1:2", quorum=2, readOnly=["ws://127.0.0.1:3"]
        )
        code, answer = await self.call("relaypool_removerelay", "ws://127.0.0.1:2")
        self.assertEqual(
            answer["error"],
            "cannot remove ws://127.0.0.1:2/: 1 write relays would be left, fewer than the"
            " quorum (2)",
        )
        self.assertEqual(len((await self.stats())["relays"]), 3)

    async def test_removeReadRelayAtQuorum(self) -> None:
        """
        A read-only relay is removed even when the write relays are just as
        many as the quorum: it does not count towards it.
        """
        await self.startWithPool(
            "ws://127.0.0.1:1", "ws://127.0.0.1:2", quorum=2, readOnly=["ws://127.0.0.1:3"]
        )
        self.assertIs(await self.ok("relaypool_removerelay", "ws://127.0.0.1:3"), True)
        self.assertEqual(
            sorted((await self.stats())["relays"]), ["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"]
        )

    async def test_noPool(self) -> None:
        """
        Without a relay pool (a store-only gateway), the relay methods
        answer an error saying so.
        """
        await self.start()
        code, answer = await self.call("relaypool_addrelay", "ws://127.0.0.1:1")
        self.assertIn("started without relays", answer["error"])


class UpstreamPolicyTests(GatewayTestCase):
    """
    The policy also hides events that arrive from the upstream relays.
    """

    async def test_bannedFromUpstreamNotServed(self) -> None:
        """
        An event a relay sends by a banned author is not delivered to a
        subscription; one by another author is.
        """
        fakes, pool, gateway = await ensureDeferred(self.relayAndGateway())  # type: ignore[arg-type]
        gateway.facade.setPolicy(EventPolicy.fromLists(denyPubkeys=[AUTHOR]))
        banned, kept = note(), note(OTHER_KEY)
        fakes[0].store(banned)
        fakes[0].store(kept)
        client = await ensureDeferred(self.connect(gateway))  # type: ignore[arg-type]
        client.send("REQ", "s", {"kinds": [1]})
        await client.waitForVerb("EOSE", "s")
        self.assertEqual(client.eventIds("s"), [kept.id])
