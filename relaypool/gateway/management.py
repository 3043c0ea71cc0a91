"""
The NIP-86 relay management API: JSON-RPC-like calls in HTTP C{POST}s with
C{Content-Type: application/nostr+json+rpc} to the gateway's C{/}, each
authorized by a NIP-98 event signed by one of the configured admin pubkeys.

The methods change the gateway's L{EventPolicy} (bans and allow lists of
pubkeys, events and kinds) and the relay pool's upstream relays, at once.
Nothing is persisted: a restart (or a reload of the config) goes back to the
config's lists and relays.
"""

# twisted.web's Request has no annotations.
# mypy: allow-untyped-calls

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from relaypool._reactor import defaultReactor
from relaypool.errors import InvalidHTTPAuth, InvalidRelayURL, RelayRefused, TooManyRelays
from relaypool.gateway.auth import expectedRelayURL
from relaypool.gateway.facade import RelayFacade
from relaypool.gateway.policy import EventPolicy
from relaypool.interfaces import IEventStore, IRelayPool
from relaypool.nostr.nip98 import HTTP_AUTH_WINDOW, parseAuthorization, verifyHTTPAuth
from relaypool.nostr.url import parseRelayURL

__all__ = ["RPC_CONTENT_TYPE", "ManagementAPI"]

_log = Logger()

RPC_CONTENT_TYPE = b"application/nostr+json+rpc"
"""
The content type of NIP-86 requests.
"""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_KIND = 65535
_READ_ONLY = frozenset(
    {
        "supportedmethods",
        "listbannedpubkeys",
        "listallowedpubkeys",
        "listbannedevents",
        "listallowedkinds",
        "relaypool_listdisallowedkinds",
        "relaypool_listrelays",
    }
)
"""
The methods that change nothing, and are not logged.
"""

_NOT_PERSISTED = "not persisted: a restart, or a reload changing the policy settings, goes back to the config"


class _CallError(Exception):
    """
    A call cannot be carried out; the message is the response's C{error}.
    """


def _param(params: list[Any], index: int, what: str) -> Any:
    if len(params) <= index:
        raise _CallError(f"missing parameter {index + 1}: {what}")
    return params[index]


def _hexParam(params: list[Any], what: str) -> str:
    value = _param(params, 0, what)
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise _CallError(
            f"parameter 1 must be a {what} (64 hex characters), got {orjson.dumps(value).decode()}"
        )
    return value.lower()


def _reason(params: list[Any]) -> str:
    if len(params) < 2 or params[1] is None:
        return ""
    if not isinstance(params[1], str):
        raise _CallError("parameter 2, the reason, must be a string")
    return params[1]


def _kindParam(params: list[Any]) -> int:
    value = _param(params, 0, "an event kind")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_KIND:
        raise _CallError(
            f"parameter 1 must be an event kind (an integer 0-{_MAX_KIND}), "
            f"got {orjson.dumps(value).decode()}"
        )
    return value


def _urlParam(params: list[Any]) -> str:
    value = _param(params, 0, "a relay URL")
    try:
        return parseRelayURL(value).url
    except InvalidRelayURL as e:
        raise _CallError(str(e)) from None


_ROLES = ("read", "write", "discovery")


def _rolesParam(params: list[Any]) -> dict[str, bool]:
    """
    The optional second parameter of C{relaypool_addrelay}: an object of
    roles, C{{"read": true, "write": false, "discovery": false}} (a missing
    read or write is true, a missing discovery false).
    """
    if len(params) < 2 or params[1] is None:
        return {}
    value = params[1]
    shown = orjson.dumps(value).decode()
    if not isinstance(value, dict):
        raise _CallError(f'parameter 2 must be an object of roles, {{"read": true, "write": false}}, got {shown}')
    unknown = sorted(set(value) - set(_ROLES))
    if unknown:
        raise _CallError(f"parameter 2 has unknown roles {', '.join(unknown)}: the roles are {', '.join(_ROLES)}")
    if not all(isinstance(flag, bool) for flag in value.values()):
        raise _CallError(f"parameter 2's roles must be true or false, got {shown}")
    return dict(value)


def _listed(entries: Iterable[tuple[str, str]], key: str) -> list[dict[str, str]]:
    return [{key: value, "reason": reason} for value, reason in sorted(entries)]


class ManagementAPI:
    """
    The NIP-86 API of one gateway: NIP-98 authorization of the admins, and
    the methods.

    @ivar admins: the pubkeys allowed to call; none disables the API.
    """

    def __init__(
        self,
        facade: RelayFacade,
        pool: IRelayPool | None = None,
        store: IEventStore | None = None,
        admins: Iterable[str] = (),
        quorum: int = 1,
        authWindow: float = HTTP_AUTH_WINDOW,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param facade: the facade whose policy the methods change; its
            C{relayURL}, if set, is the URL NIP-98 events must name.
        @param pool: the relay pool the C{relaypool_*} methods act on, or
            L{None} (they then answer an error).
        @param store: the store C{banevent} deletes from, or L{None}.
        @param admins: the hex pubkeys allowed to call.
        @param quorum: upstream acceptances a publish needs: a relay is not
            removed if fewer relays would be left.
        @param authWindow: seconds a NIP-98 event's C{created_at} may be
            from the gateway's clock.
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        """
        self._facade = facade
        self._pool = pool
        self._store = store
        self.admins = frozenset(admins)
        self.quorum = quorum
        self._authWindow = authWindow
        self._reactor = defaultReactor(reactor)
        self._methods: dict[str, Callable[[list[Any]], Any]] = {
            "supportedmethods": self._supportedMethods,
            "banpubkey": self._banPubkey,
            "unbanpubkey": self._unbanPubkey,
            "listbannedpubkeys": self._listBannedPubkeys,
            "allowpubkey": self._allowPubkey,
            "unallowpubkey": self._unallowPubkey,
            "listallowedpubkeys": self._listAllowedPubkeys,
            "banevent": self._banEvent,
            "allowevent": self._allowEvent,
            "listbannedevents": self._listBannedEvents,
            "allowkind": self._allowKind,
            "disallowkind": self._disallowKind,
            "listallowedkinds": self._listAllowedKinds,
            "relaypool_listdisallowedkinds": self._listDisallowedKinds,
            "relaypool_listrelays": self._listRelays,
            "relaypool_addrelay": self._addRelay,
            "relaypool_removerelay": self._removeRelay,
        }

    # --- HTTP ----------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        """
        Answer a NIP-86 request: 404 when no admin is configured, 401 when
        the NIP-98 authorization is missing or invalid or its pubkey is not
        an admin's, 400 for a body that is not a call, else 200 with
        C{{"result": ..., "error": ...}}.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if not self.admins:
            request.setResponseCode(404)
            return _answer(
                None,
                "the NIP-86 management API is off: list the pubkeys allowed to use it "
                "with admin-pubkeys",
            )
        body = request.content.read() if request.content is not None else b""
        try:
            admin = self._authorize(request, body)
        except InvalidHTTPAuth as e:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b"Nostr")
            return _answer(None, f"unauthorized: {e}")
        try:
            method, params = _parseCall(body)
        except _CallError as e:
            request.setResponseCode(400)
            return _answer(None, str(e))
        d = self.call(admin, method, params)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def respond(answer: bytes) -> None:
            if not finished[0]:
                request.write(answer)
                request.finish()

        d.addCallback(respond)
        return NOT_DONE_YET

    def _authorize(self, request: Request, body: bytes) -> str:
        """
        @return: the admin pubkey that signed the request's NIP-98 event.
        @raise InvalidHTTPAuth: if it is missing, invalid, or not an admin's.
        """
        event = parseAuthorization(request.getHeader(b"authorization"))
        host = request.getHeader(b"host")
        forwarded = (request.getHeader(b"x-forwarded-proto") or b"").strip().lower()
        secure = ISSLTransport.providedBy(request.transport) or forwarded in (b"https", b"wss")
        url = expectedRelayURL(
            self._facade.relayURL, None if host is None else host.decode("latin-1"), secure
        )
        if url is None:
            raise InvalidHTTPAuth(
                "this relay cannot tell its own URL (no usable Host header) to check the u tag "
                "against; set relay-url"
            )
        url = ("https" if url.startswith("wss:") else "http") + url[url.index(":") :]
        method = request.method.decode("ascii", "replace")
        verifyHTTPAuth(event, url, method, body, self._reactor.seconds(), self._authWindow)
        if event.pubkey not in self.admins:
            raise InvalidHTTPAuth(f"pubkey {event.pubkey} is not allowed to manage this relay")
        return event.pubkey

    # --- calls ---------------------------------------------------------------

    def call(self, admin: str, method: str, params: list[Any]) -> Deferred[bytes]:
        """
        Carry out one call.

        @param admin: the pubkey that made it, for the log.
        @return: a Deferred firing with the response body, never failing.
        """
        handler = self._methods.get(method)
        if handler is None:
            return succeed(_answer(None, f"unsupported method {method!r}; see supportedmethods"))
        d = maybeDeferred(handler, params)

        def done(result: object) -> bytes:
            if method not in _READ_ONLY:
                _log.info(
                    "NIP-86: {admin} called {method} {params} ({persisted})",
                    admin=admin,
                    method=method,
                    params=params,
                    persisted=_NOT_PERSISTED,
                )
            return _answer(result)

        def failed(failure: Failure) -> bytes:
            if failure.check(_CallError):
                return _answer(None, str(failure.value))
            _log.failure("NIP-86 call {method} failed", failure, method=method)
            return _answer(None, f"error: {failure.getErrorMessage()}")

        return d.addCallbacks(done, failed)

    def _change(self, change: Callable[[EventPolicy], EventPolicy]) -> bool:
        self._facade.setPolicy(change(self._facade.policy))
        return True

    def _supportedMethods(self, params: list[Any]) -> list[str]:
        return [name for name in self._methods if name != "supportedmethods"]

    def _banPubkey(self, params: list[Any]) -> bool:
        pubkey, reason = _hexParam(params, "pubkey"), _reason(params)
        return self._change(lambda policy: policy.banPubkey(pubkey, reason))

    def _unbanPubkey(self, params: list[Any]) -> bool:
        pubkey = _hexParam(params, "pubkey")
        return self._change(lambda policy: policy.unbanPubkey(pubkey))

    def _listBannedPubkeys(self, params: list[Any]) -> list[dict[str, str]]:
        return _listed(self._facade.policy.bannedPubkeys.items(), "pubkey")

    def _allowPubkey(self, params: list[Any]) -> bool:
        pubkey, reason = _hexParam(params, "pubkey"), _reason(params)
        return self._change(lambda policy: policy.allowPubkey(pubkey, reason))

    def _unallowPubkey(self, params: list[Any]) -> bool:
        pubkey = _hexParam(params, "pubkey")
        return self._change(lambda policy: policy.unallowPubkey(pubkey))

    def _listAllowedPubkeys(self, params: list[Any]) -> list[dict[str, str]]:
        return _listed(self._facade.policy.allowedPubkeys.items(), "pubkey")

    def _banEvent(self, params: list[Any]) -> Deferred[bool] | bool:
        eventId, reason = _hexParam(params, "event id"), _reason(params)
        self._change(lambda policy: policy.banEvent(eventId, reason))
        if self._store is None:
            return True
        d: Deferred[int] = maybeDeferred(self._store.delete, [eventId])
        return d.addCallback(lambda removed: True)

    def _allowEvent(self, params: list[Any]) -> bool:
        eventId = _hexParam(params, "event id")
        return self._change(lambda policy: policy.unbanEvent(eventId))

    def _listBannedEvents(self, params: list[Any]) -> list[dict[str, str]]:
        return _listed(self._facade.policy.bannedEvents.items(), "id")

    def _allowKind(self, params: list[Any]) -> bool:
        kind = _kindParam(params)
        return self._change(lambda policy: policy.allowKind(kind))

    def _disallowKind(self, params: list[Any]) -> bool:
        kind = _kindParam(params)
        return self._change(lambda policy: policy.disallowKind(kind))

    def _listAllowedKinds(self, params: list[Any]) -> list[int]:
        return sorted(self._facade.policy.allowedKinds)

    def _listDisallowedKinds(self, params: list[Any]) -> list[int]:
        return sorted(self._facade.policy.disallowedKinds)

    def _requirePool(self) -> IRelayPool:
        if self._pool is None:
            raise _CallError(
                "this relaypool has no relay pool: it was started without relays and serves "
                "its store alone"
            )
        return self._pool

    def _listRelays(self, params: list[Any]) -> list[dict[str, Any]]:
        stats = self._requirePool().stats()
        return [
            {
                "url": url,
                "state": relay.state,
                "healthScore": relay.healthScore,
                "roles": list(relay.roles),
            }
            for url, relay in sorted(stats.items())
        ]

    def _addRelay(self, params: list[Any]) -> bool:
        pool = self._requirePool()
        url = _urlParam(params)
        roles = _rolesParam(params)
        try:
            pool.addRelay(url, **roles)
        except RelayRefused as e:
            raise _CallError(f"cannot add {e}") from None
        except (TooManyRelays, ValueError) as e:
            raise _CallError(str(e)) from None
        return True

    def _removeRelay(self, params: list[Any]) -> Deferred[bool]:
        pool = self._requirePool()
        url = _urlParam(params)
        stats = pool.stats()
        if url not in stats:
            raise _CallError(f"{url} is not in the pool")
        writeRelays = [other for other, relay in stats.items() if "write" in relay.roles]
        if url in writeRelays and len(writeRelays) - 1 < self.quorum:
            raise _CallError(
                f"cannot remove {url}: {len(writeRelays) - 1} write relays would be left, fewer"
                f" than the quorum ({self.quorum})"
            )
        removing: Deferred[bool] = pool.removeRelay(url)
        return removing.addCallback(lambda removed: True)


def _answer(result: object, error: str | None = None) -> bytes:
    """
    @return: a NIP-86 response body.
    """
    if error is None:
        return orjson.dumps({"result": result})
    return orjson.dumps({"result": result, "error": error})


def _parseCall(body: bytes) -> tuple[str, list[Any]]:
    """
    @return: the method and params of a NIP-86 request body.
    @raise _CallError: if it is not one.
    """
    try:
        call = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _CallError(f"the body is not JSON ({e})") from None
    if not isinstance(call, dict) or not isinstance(call.get("method"), str):
        raise _CallError('the body must be {"method": "<name>", "params": [...]}')
    params = call.get("params", [])
    if not isinstance(params, list):
        raise _CallError("params must be an array")
    return call["method"], params
