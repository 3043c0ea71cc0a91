"""
Name services: turn C{host:port} names into sets of addresses and tell
subscribers when a name's set changes.

L{StaticNameService} serves fixed sets (tests, users with known addresses);
L{DNSNameService} resolves through the reactor's
L{IHostnameResolver<twisted.internet.interfaces.IHostnameResolver>} and
re-resolves every name on one loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from twisted.application import service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHostResolution, IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from relaypool._reactor import TimeResolverReactor, defaultReactor
from relaypool.errors import InvalidName
from relaypool.interfaces import INameService, INameSubscription

__all__ = ["Address", "DNSNameService", "StaticNameService", "parseName"]

AddressCallback = Callable[[frozenset["Address"]], None]


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """
    A resolved IP address and port.

    @ivar host: an IPv4 or IPv6 literal, without brackets.
    @ivar port: the TCP port.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parseName(name: str) -> tuple[str, int]:
    """
    Split a name into host and port.

    @param name: C{"host:port"}, or C{"[v6]:port"} for an IPv6 literal.
    @return: C{(host, port)}, the host without brackets.
    @raise InvalidName: if C{name} is not of that form or the port is not in
        1..65535.
    """
    if name.startswith("["):
        host, bracket, rest = name[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise InvalidName(f"not [host]:port: {name!r}")
        portText = rest[1:]
    else:
        host, colon, portText = name.rpartition(":")
        if not colon or ":" in host:
            raise InvalidName(f"not host:port: {name!r}")
    if not host or any(c.isspace() for c in host):
        raise InvalidName(f"no valid host in {name!r}")
    if not portText.isdigit() or not 0 < int(portText) < 65536:
        raise InvalidName(f"invalid port in {name!r}")
    return host, int(portText)


def _literalAddress(host: str, port: int) -> Address | None:
    """
    @return: the L{Address} C{host} denotes if it is an IP literal, else
        L{None}.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return Address(ip.compressed, port)


@implementer(INameSubscription)
class _Subscription:
    """
    One subscriber of one name; remembers the last set it was given so that
    it never gets the same set twice in a row.
    """

    def __init__(self, registry: _Subscribers, name: str, callback: AddressCallback) -> None:
        self._registry = registry
        self.name = name
        self._callback = callback
        self._last: frozenset[Address] | None = None
        self.active = True

    def deliver(self, addresses: frozenset[Address]) -> None:
        if self.active and addresses != self._last:
            self._last = addresses
            self._callback(addresses)

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._registry.remove(self)


class _Subscribers:
    """
    The subscriptions of a name service, by name.
    """

    def __init__(self, onEmpty: Callable[[str], None]) -> None:
        self._byName: dict[str, list[_Subscription]] = {}
        self._onEmpty = onEmpty

    def add(
        self, name: str, callback: AddressCallback, current: frozenset[Address]
    ) -> _Subscription:
        subscription = _Subscription(self, name, callback)
        self._byName.setdefault(name, []).append(subscription)
        subscription.deliver(current)
        return subscription

    def remove(self, subscription: _Subscription) -> None:
        subscriptions = self._byName.get(subscription.name, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._byName.pop(subscription.name, None)
            self._onEmpty(subscription.name)

    def notify(self, name: str, addresses: frozenset[Address]) -> None:
        for subscription in list(self._byName.get(name, ())):
            subscription.deliver(addresses)

    def names(self) -> list[str]:
        return list(self._byName)


@implementer(INameService)
class StaticNameService:
    """
    A name service over a mapping that only changes through L{update}.

    A name with no mapping whose host is an IP literal resolves to that
    address; any other unmapped name resolves to the empty set.
    """

    def __init__(self, mapping: Mapping[str, Iterable[Address]] | None = None) -> None:
        """
        @param mapping: the initial address set of each name.
        @raise InvalidName: if a key of C{mapping} is not C{host:port}.
        """
        self._mapping: dict[str, frozenset[Address]] = {}
        self._subscribers = _Subscribers(lambda name: None)
        for name, addresses in (mapping or {}).items():
            parseName(name)
            self._mapping[name] = frozenset(addresses)

    def _current(self, name: str) -> frozenset[Address]:
        if name in self._mapping:
            return self._mapping[name]
        literal = _literalAddress(*parseName(name))
        return frozenset() if literal is None else frozenset([literal])

    def subscribe(self, name: str, callback: AddressCallback) -> INameSubscription:
        """
        Follow C{name}'s address set; C{callback} gets the current set at
        once and every changed set after.

        @raise InvalidName: if C{name} is not C{host:port}.
        """
        return self._subscribers.add(name, callback, self._current(name))

    def update(self, name: str, addresses: Iterable[Address]) -> None:
        """
        Replace C{name}'s address set, notifying its subscribers if it
        changed.

        @raise InvalidName: if C{name} is not C{host:port}.
        """
        parseName(name)
        self._mapping[name] = frozenset(addresses)
        self._subscribers.notify(name, self._mapping[name])


@implementer(IResolutionReceiver)
class _Lookup:
    """
    Collects the addresses of one hostname resolution.
    """

    def __init__(self, onComplete: Callable[[frozenset[Address]], None], port: int) -> None:
        self._onComplete = onComplete
        self._port = port
        self._found: set[Address] = set()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            literal = _literalAddress(address.host, self._port)
            if literal is not None:
                self._found.add(literal)

    def resolutionComplete(self) -> None:
        self._onComplete(frozenset(self._found))


@implementer(INameService)
class DNSNameService(service.Service):
    """
    A name service resolving every A and AAAA address of a name through
    C{reactor.nameResolver}.

    While running, one L{LoopingCall} re-resolves every subscribed name each
    C{refreshInterval} seconds and notifies subscribers only when a set
    changed. A failed or empty lookup keeps the last good set (and is
    logged). Names whose host is an IP literal resolve to themselves without
    a lookup. At most one lookup per name is in flight.
    """

    log = Logger()

    def __init__(
        self, reactor: TimeResolverReactor | None = None, refreshInterval: float = 30.0
    ) -> None:
        """
        @param reactor: a L{relaypool._reactor.TimeResolverReactor}
            (C{nameResolver} and L{IReactorTime}); the global reactor if
            L{None}.
        @param refreshInterval: seconds between two re-resolutions of all
            names.
        """
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._refreshInterval = refreshInterval
        self._known: dict[str, frozenset[Address]] = {}
        self._inFlight: set[str] = set()
        self._subscribers = _Subscribers(self._forget)
        self._loop: LoopingCall | None = None

    def subscribe(self, name: str, callback: AddressCallback) -> INameSubscription:
        """
        Follow C{name}'s address set. The callback gets the last resolved
        set at once (empty before the first lookup finished) and each changed
        set after. A new name is resolved at once if the service runs.

        @raise InvalidName: if C{name} is not C{host:port}.
        """
        host, port = parseName(name)
        literal = _literalAddress(host, port)
        if literal is not None:
            return self._subscribers.add(name, callback, frozenset([literal]))
        isNew = name not in self._known
        if isNew:
            self._known[name] = frozenset()
        subscription = self._subscribers.add(name, callback, self._known[name])
        if isNew and self.running:
            self._resolve(name)
        return subscription

    def startService(self) -> None:
        """
        Resolve every subscribed name now and then every C{refreshInterval}.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._resolveAll)
        self._loop.clock = self._reactor
        self._loop.start(self._refreshInterval, now=True)

    def stopService(self) -> None:
        """
        Stop re-resolving. Lookups in flight still deliver their result.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _forget(self, name: str) -> None:
        self._known.pop(name, None)

    def _resolveAll(self) -> None:
        for name in self._subscribers.names():
            if name in self._known:
                self._resolve(name)

    def _resolve(self, name: str) -> None:
        if name in self._inFlight:
            return
        host, port = parseName(name)
        self._inFlight.add(name)
        try:
            self._reactor.nameResolver.resolveHostName(
                _Lookup(lambda found: self._resolved(name, found), port),
                host,
                port,
                [IPv4Address, IPv6Address],
                "TCP",
            )
        except Exception:
            self._inFlight.discard(name)
            self.log.failure("Lookup of {name} failed; keeping its last addresses", name=name)

    def _resolved(self, name: str, found: frozenset[Address]) -> None:
        self._inFlight.discard(name)
        if name not in self._known:
            return
        if not found:
            self.log.warn(
                "Lookup of {name} returned no address; keeping its last {count} addresses",
                name=name,
                count=len(self._known[name]),
            )
            return
        if found != self._known[name]:
            self._known[name] = found
            self._subscribers.notify(name, found)
