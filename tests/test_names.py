"""
Tests for L{relaypool.transport.names}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidName
from relaypool.transport.names import Address, DNSNameService, StaticNameService, parseName


class ParseNameTests(SynchronousTestCase):
    """
    Tests for L{parseName} and L{Address}.
    """

    def test_hostPort(self) -> None:
        """
        C{host:port} splits into host and integer port.
        """
        self.assertEqual(parseName("relay.example:443"), ("relay.example", 443))

    def test_bracketedIPv6(self) -> None:
        """
        An IPv6 host is written in brackets, which are stripped.
        """
        self.assertEqual(parseName("[::1]:7777"), ("::1", 7777))

    def test_invalid(self) -> None:
        """
        Names without a host, without a valid port, or with a bare IPv6
        host raise L{InvalidName}.
        """
        for name in ["host", "host:", ":80", "host:0", "host:65536", "host:x", "::1:80", "[::1]80"]:
            self.assertRaises(InvalidName, parseName, name)

    def test_addressStr(self) -> None:
        """
        An address prints as C{host:port}, IPv6 hosts in brackets.
        """
        self.assertEqual(
            (str(Address("1.2.3.4", 80)), str(Address("::1", 80))), ("1.2.3.4:80", "[::1]:80")
        )


class StaticNameServiceTests(SynchronousTestCase):
    """
    Tests for L{StaticNameService}.
    """

    def setUp(self) -> None:
        self.a = Address("10.0.0.1", 80)
        self.b = Address("10.0.0.2", 80)
        self.names = StaticNameService({"svc:80": [self.a]})
        self.seen: list[frozenset[Address]] = []

    def test_currentAtOnce(self) -> None:
        """
        A subscriber gets the current set at once.
        """
        self.names.subscribe("svc:80", self.seen.append)
        self.assertEqual(self.seen, [{self.a}])

    def test_updateNotifies(self) -> None:
        """
        An update that changes the set notifies subscribers.
        """
        self.names.subscribe("svc:80", self.seen.append)
        self.names.update("svc:80", [self.a, self.b])
        self.assertEqual(self.seen, [{self.a}, {self.a, self.b}])

    def test_sameSetNotRepeated(self) -> None:
        """
        An update to the same set notifies nobody.
        """
        self.names.subscribe("svc:80", self.seen.append)
        self.names.update("svc:80", [self.a])
        self.assertEqual(self.seen, [{self.a}])

    def test_cancel(self) -> None:
        """
        A cancelled subscription gets no more updates.
        """
        self.names.subscribe("svc:80", self.seen.append).cancel()
        self.names.update("svc:80", [self.b])
        self.assertEqual(self.seen, [{self.a}])

    def test_literalResolvesToItself(self) -> None:
        """
        An unmapped name with an IP literal host resolves to that address.
        """
        self.names.subscribe("[::1]:90", self.seen.append)
        self.assertEqual(self.seen, [{Address("::1", 90)}])

    def test_unmappedHostname(self) -> None:
        """
        An unmapped hostname resolves to the empty set.
        """
        self.names.subscribe("other:80", self.seen.append)
        self.assertEqual(self.seen, [frozenset()])

    def test_invalidName(self) -> None:
        """
        Subscribing to an invalid name raises L{InvalidName}.
        """
        self.assertRaises(InvalidName, self.names.subscribe, "nope", self.seen.append)


class FakeResolver:
    """
    An L{IHostnameResolver} whose lookups the test completes by hand.
    """

    def __init__(self) -> None:
        self.lookups: list[tuple[IResolutionReceiver, str, int]] = []
        self.error: Exception | None = None

    def resolveHostName(
        self, receiver: IResolutionReceiver, host: str, port: int = 0, *args: Any
    ) -> IResolutionReceiver:
        if self.error is not None:
            raise self.error
        self.lookups.append((receiver, host, port))
        return receiver

    def complete(self, *hosts: str) -> None:
        receiver, _, port = self.lookups.pop(0)
        for host in hosts:
            kind = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(kind("TCP", host, port))
        receiver.resolutionComplete()


class DNSNameServiceTests(SynchronousTestCase):
    """
    Tests for L{DNSNameService}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.clock.nameResolver = self.resolver  # type: ignore[attr-defined]
        self.names = DNSNameService(self.clock, refreshInterval=30.0)
        self.seen: list[frozenset[Address]] = []

    def start(self, name: str = "relay.example:443") -> None:
        self.names.subscribe(name, self.seen.append)
        self.names.startService()
        self.addCleanup(self.names.stopService)

    def test_resolvesAll(self) -> None:
        """
        Every A and AAAA address of the name is delivered, with the name's
        port.
        """
        self.start()
        self.resolver.complete("10.0.0.1", "2001:db8::1")
        self.assertEqual(
            self.seen, [frozenset(), {Address("10.0.0.1", 443), Address("2001:db8::1", 443)}]
        )

    def test_refreshNotifiesOnChange(self) -> None:
        """
        Each refresh interval re-resolves; only a changed set is delivered.
        """
        self.start()
        self.resolver.complete("10.0.0.1")
        self.clock.advance(30)
        self.resolver.complete("10.0.0.1")
        self.clock.advance(30)
        self.resolver.complete("10.0.0.2")
        self.assertEqual(
            self.seen, [frozenset(), {Address("10.0.0.1", 443)}, {Address("10.0.0.2", 443)}]
        )

    def test_emptyKeepsLast(self) -> None:
        """
        An empty lookup keeps the last good set.
        """
        self.start()
        self.resolver.complete("10.0.0.1")
        self.clock.advance(30)
        self.resolver.complete()
        self.assertEqual(self.seen, [frozenset(), {Address("10.0.0.1", 443)}])

    def test_failureKeepsLast(self) -> None:
        """
        A lookup that raises keeps the last good set and is logged.
        """
        self.start()
        self.resolver.complete("10.0.0.1")
        self.resolver.error = OSError("resolver broken")
        self.clock.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.seen, [frozenset(), {Address("10.0.0.1", 443)}])

    def test_literalNoLookup(self) -> None:
        """
        An IP literal resolves to itself without a lookup.
        """
        self.start("127.0.0.1:80")
        self.assertEqual((self.seen, self.resolver.lookups), ([{Address("127.0.0.1", 80)}], []))

    def test_oneLoop(self) -> None:
        """
        One timer re-resolves every name.
        """
        self.start("a.example:80")
        self.names.subscribe("b.example:80", self.seen.append)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual([host for _, host, _ in self.resolver.lookups], ["a.example", "b.example"])

    def test_oneLookupInFlight(self) -> None:
        """
        A name whose lookup is still running is not looked up again.
        """
        self.start()
        self.clock.advance(30)
        self.assertEqual(len(self.resolver.lookups), 1)

    def test_cancelledNameDropped(self) -> None:
        """
        A name with no subscriber left is no longer resolved.
        """
        subscription = self.names.subscribe("gone.example:80", self.seen.append)
        self.names.startService()
        self.addCleanup(self.names.stopService)
        self.resolver.complete("10.0.0.1")
        subscription.cancel()
        self.clock.advance(30)
        self.assertEqual(self.resolver.lookups, [])

    def test_stopStopsLoop(self) -> None:
        """
        Stopping the service leaves no timer behind.
        """
        self.names.startService()
        self.names.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
