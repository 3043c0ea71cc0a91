"""
Tests for L{relaypool.transport.mux}.
"""

from __future__ import annotations

import datetime
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.errors import ConnectionDrained, NoConnectionAvailable, PoolClosed, QueueFull
from relaypool.transport.mux import Backoff, SlotStatus, UniformMultiplexer
from relaypool.transport.names import Address, StaticNameService
from tests.echo import EchoServerFactory, clientFactory, serve, waitFor

NAME = "echo.test:80"
FAST = Backoff(initial=0.01, maximum=0.08, factor=2.0, jitter=0.0, resetAfter=1000.0)


class BackoffTests(SynchronousTestCase):
    """
    Tests for L{Backoff.delay}.
    """

    def test_grows(self) -> None:
        """
        Without jitter the delay doubles from C{initial} with each attempt.
        """
        backoff = Backoff(initial=0.5, factor=2.0, jitter=0.0)
        self.assertEqual([backoff.delay(n, lambda: 0.0) for n in (1, 2, 3)], [0.5, 1.0, 2.0])

    def test_capped(self) -> None:
        """
        No delay exceeds C{maximum}, even at huge attempt counts.
        """
        backoff = Backoff(initial=1.0, maximum=60.0, factor=10.0, jitter=0.5)
        self.assertEqual(backoff.delay(100000, lambda: 0.999), 60.0)

    def test_jitter(self) -> None:
        """
        Jitter moves the delay by up to C{jitter} of it in both directions.
        """
        backoff = Backoff(initial=1.0, jitter=0.25)
        self.assertEqual(backoff.delay(1, lambda: 0.0), 0.75)
        self.assertEqual(backoff.delay(1, lambda: 0.5), 1.0)


class MemoryTests(SynchronousTestCase):
    """
    Timing behaviour of L{UniformMultiplexer} on a L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.names = StaticNameService({NAME: [Address("10.0.0.1", 80)]})
        self.statuses: list[SlotStatus] = []
        self.mux = UniformMultiplexer(
            self.reactor,
            self.names,
            NAME,
            clientFactory("ws://echo.test"),
            backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0),
            onStateChange=self.statuses.append,
        )

    def refuseLast(self) -> None:
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def test_refusedDelaysGrow(self) -> None:
        """
        Each refused connection grows the delay before the next attempt, up
        to the maximum.
        """
        self.mux.startService()
        delays = []
        for _ in range(5):
            self.refuseLast()
            status = self.mux.slots()[0]
            self.assertEqual(status.state, "backing-off")
            assert status.nextRetry is not None
            delays.append(status.nextRetry - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertEqual(len(self.reactor.tcpClients), 6)

    def test_connectsToAddress(self) -> None:
        """
        The slot connects to the resolved address, not to the URL's host.
        """
        self.mux.startService()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.1", 80))

    def test_ipv6Address(self) -> None:
        """
        An IPv6 address is connected to over TCP6.
        """
        self.names.update(NAME, [Address("::1", 80)])
        self.mux.startService()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("::1", 80))

    def test_whenReadyTimeout(self) -> None:
        """
        L{UniformMultiplexer.whenReady} fails with L{NoConnectionAvailable}
        when no connection opens within its timeout.
        """
        self.mux.startService()
        failure = self.failureResultOf(self._advanced(self.mux.whenReady(3.0), 3.0))
        failure.trap(NoConnectionAvailable)

    def _advanced(self, d: Deferred[Any], seconds: float) -> Deferred[Any]:
        self.assertNoResult(d)
        self.reactor.advance(seconds)
        return d

    def test_whenReadyBounded(self) -> None:
        """
        Beyond C{maxWaiters} waiting callers, L{UniformMultiplexer.whenReady}
        fails at once with L{QueueFull}.
        """
        mux = UniformMultiplexer(
            self.reactor, self.names, NAME, clientFactory("ws://echo.test"), maxWaiters=1
        )
        mux.startService()
        mux.whenReady()
        self.failureResultOf(mux.whenReady()).trap(QueueFull)

    def test_stopFailsWaiters(self) -> None:
        """
        Stopping fails waiting L{UniformMultiplexer.whenReady} calls with
        L{PoolClosed}, and later calls too.
        """
        self.mux.startService()
        waiting = self.mux.whenReady()
        self.mux.stopService()
        self.failureResultOf(waiting).trap(PoolClosed)
        self.failureResultOf(self.mux.whenReady()).trap(PoolClosed)

    def test_stopCancelsRetry(self) -> None:
        """
        Stopping a multiplexer whose slot is backing off cancels the retry
        and fires at once.
        """
        self.mux.startService()
        self.refuseLast()
        self.assertIsNone(self.successResultOf(self.mux.stopService()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.mux.slots(), [])

    def test_stopCancelsAttempt(self) -> None:
        """
        Stopping while a TCP connection attempt is pending cancels it.
        """
        self.mux.startService()
        stopped = self.mux.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_payloadLimitApplied(self) -> None:
        """
        A factory left with unlimited payloads gets C{maxMessageSize}.
        """
        factory = clientFactory("ws://echo.test")
        UniformMultiplexer(self.reactor, self.names, NAME, factory, maxMessageSize=4096)
        self.assertEqual((factory.maxMessagePayloadSize, factory.maxFramePayloadSize), (4096, 4096))

    def test_payloadLimitKept(self) -> None:
        """
        A factory with payload limits keeps them.
        """
        factory = clientFactory("ws://echo.test")
        factory.setProtocolOptions(maxMessagePayloadSize=10, maxFramePayloadSize=5)
        UniformMultiplexer(self.reactor, self.names, NAME, factory)
        self.assertEqual((factory.maxMessagePayloadSize, factory.maxFramePayloadSize), (10, 5))

    def test_factoryCallable(self) -> None:
        """
        A callable factory is called with the address on every attempt.
        """
        seen: list[Address] = []

        def make(address: Address) -> Any:
            seen.append(address)
            return clientFactory("ws://echo.test")

        mux = UniformMultiplexer(self.reactor, self.names, NAME, make, backoff=Backoff(jitter=0))
        mux.startService()
        self.refuseLast()
        self.reactor.advance(0.5)
        self.assertEqual(seen, [Address("10.0.0.1", 80)] * 2)


def selfSigned(hostname: str) -> tuple[PrivateCertificate, Certificate]:
    """
    @return: a server certificate and key for C{hostname}, and the same
        certificate as a trust root.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PrivateCertificate.loadPEM(certPEM + keyPEM), Certificate.loadPEM(certPEM)


class IntegrationTests(TestCase):
    """
    L{UniformMultiplexer} against real Autobahn echo servers on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.statuses: list[tuple[SlotStatus, float]] = []

    def server(self, reject: bool = False) -> tuple[EchoServerFactory, int]:
        factory = EchoServerFactory(reject=reject)
        return factory, serve(self, factory)

    def multiplexer(self, ports: list[int], **kwargs: Any) -> UniformMultiplexer:
        self.names = StaticNameService({NAME: [Address("127.0.0.1", port) for port in ports]})
        kwargs.setdefault("factory", clientFactory("ws://echo.test"))
        kwargs.setdefault("backoff", FAST)
        mux = UniformMultiplexer(
            reactor,
            self.names,
            NAME,
            onStateChange=lambda status: self.statuses.append((status, reactor.seconds())),
            **kwargs,
        )
        mux.startService()
        self.addCleanup(mux.stopService)
        return mux

    def states(self, mux: UniformMultiplexer) -> list[str]:
        return [status.state for status in mux.slots()]

    async def test_connectionsPerAddress(self) -> None:
        """
        The multiplexer keeps C{connectionsPerAddress} connections open to
        each address.
        """
        (one, port1), (two, port2) = self.server(), self.server()
        mux = self.multiplexer([port1, port2], connectionsPerAddress=2)
        await waitFor(lambda: len(mux.readyConnections()) == 4)
        self.assertEqual(self.states(mux), ["open"] * 4)
        self.assertEqual((len(one.connections), len(two.connections)), (2, 2))

    async def test_addressAdded(self) -> None:
        """
        An address the name service adds gets its own connections.
        """
        (_, port1), (two, port2) = self.server(), self.server()
        mux = self.multiplexer([port1])
        await waitFor(lambda: len(mux.readyConnections()) == 1)
        self.names.update(NAME, [Address("127.0.0.1", port1), Address("127.0.0.1", port2)])
        await waitFor(lambda: len(mux.readyConnections()) == 2)
        self.assertEqual(len(two.connections), 1)
        self.assertEqual(mux.addresses(), {Address("127.0.0.1", p) for p in (port1, port2)})

    async def test_removedAddressDrains(self) -> None:
        """
        A removed address's connection stops being picked, finishes its
        requests in flight, then closes with a close handshake.
        """
        (one, port1), (_, port2) = self.server(), self.server()
        mux = self.multiplexer([port1, port2])
        await waitFor(lambda: len(mux.readyConnections()) == 2)
        first = next(c for c in mux.readyConnections() if mux.addressOf(c).port == port1)
        reply = first.request(b"hold-1")
        await waitFor(lambda: len(one.held) == 1)
        self.names.update(NAME, [Address("127.0.0.1", port2)])
        self.assertEqual(
            {(s.address.port, s.state) for s in mux.slots()}, {(port1, "draining"), (port2, "open")}
        )
        self.assertNotIn(first, mux.readyConnections())
        one.releaseHeld()
        self.assertEqual(await reply, b"hold-1")
        await waitFor(lambda: len(mux.slots()) == 1)
        await waitFor(lambda: one.closes == [True])

    async def test_drainTimeout(self) -> None:
        """
        Requests still in flight when the drain timeout passes fail with
        L{ConnectionDrained} and the connection closes.
        """
        one, port1 = self.server()
        mux = self.multiplexer([port1], drainTimeout=0.05)
        connection = await mux.whenReady(5.0)
        reply = connection.request(b"hold")
        await waitFor(lambda: len(one.held) == 1)
        self.names.update(NAME, [])
        with self.assertRaises(ConnectionDrained):
            await reply
        await waitFor(lambda: mux.slots() == [])

    async def test_plainProtocolClosedAtOnce(self) -> None:
        """
        A removed address's connection whose protocol does not provide
        L{IRequestProtocol} is closed at once.
        """
        one, port1 = self.server()
        factory = clientFactory("ws://echo.test")
        factory.protocol = WebSocketClientProtocol
        mux = self.multiplexer([port1], factory=factory, drainTimeout=100.0)
        connection = await mux.whenReady(5.0)
        self.names.update(NAME, [])
        await connection.is_closed
        self.assertEqual(mux.slots(), [])

    async def test_roundRobin(self) -> None:
        """
        L{UniformMultiplexer.pick} cycles over every open connection.
        """
        (_, port1), (_, port2) = self.server(), self.server()
        mux = self.multiplexer([port1, port2], connectionsPerAddress=2)
        await waitFor(lambda: len(mux.readyConnections()) == 4)
        picks = [mux.pick() for _ in range(8)]
        self.assertEqual(picks[:4], picks[4:])
        self.assertEqual(set(picks), set(mux.readyConnections()))

    async def test_pickWithoutConnection(self) -> None:
        """
        L{UniformMultiplexer.pick} raises L{NoConnectionAvailable} when no
        connection is open.
        """
        mux = self.multiplexer([])
        self.assertRaises(NoConnectionAvailable, mux.pick)

    async def test_whenReady(self) -> None:
        """
        L{UniformMultiplexer.whenReady} fires with a connection once one
        opens.
        """
        _, port1 = self.server()
        mux = self.multiplexer([port1])
        waiting = mux.whenReady()
        self.assertNoResult(waiting)
        self.assertEqual([await waiting], mux.readyConnections())

    async def test_reconnectAfterDrop(self) -> None:
        """
        A dropped connection is replaced after the backoff delay.
        """
        one, port1 = self.server()
        mux = self.multiplexer([port1])
        first = await mux.whenReady(5.0)
        one.connections[0].dropConnection(abort=True)
        await waitFor(lambda: mux.readyConnections() not in ([], [first]))
        backingOff = [s for s, _ in self.statuses if s.state == "backing-off"]
        self.assertEqual([s.attempts for s in backingOff], [1])

    async def test_rejectedHandshakeIsFailedAttempt(self) -> None:
        """
        A rejected WebSocket handshake counts as a failed attempt: the slot
        backs off with one more attempt each time, saying why. (The delays
        themselves are checked on a Clock in L{tests.test_slot}: here the
        real reactor's time passes between the slot's state change and the
        observer.)
        """
        _, port1 = self.server(reject=True)
        mux = self.multiplexer([port1])
        await waitFor(lambda: mux.slots()[0].attempts >= 5)
        backingOff = [status for status, _ in self.statuses if status.state == "backing-off"]
        self.assertEqual([status.attempts for status in backingOff][:5], [1, 2, 3, 4, 5])
        for status in backingOff:
            self.assertIn("WebSocket handshake failed", status.lastError or "")
        self.assertEqual(mux.readyConnections(), [])

    async def test_resetAfterOpen(self) -> None:
        """
        A connection that stayed open C{resetAfter} seconds resets the
        attempt count when it drops.
        """
        one, port1 = self.server()
        mux = self.multiplexer([port1], backoff=Backoff(initial=0.01, jitter=0, resetAfter=0))
        for _ in range(2):
            await waitFor(lambda: len(one.connections) == 1)
            one.connections[0].dropConnection(abort=True)
            await waitFor(lambda: mux.slots()[0].state == "backing-off")
            self.assertEqual(mux.slots()[0].attempts, 1)

    async def test_recycle(self) -> None:
        """
        L{UniformMultiplexer.recycle} closes the connection cleanly and its
        slot reconnects at once.
        """
        one, port1 = self.server()
        mux = self.multiplexer([port1])
        first = await mux.whenReady(5.0)
        await mux.recycle(first)
        self.assertEqual(one.closes, [True])
        second = await mux.whenReady(5.0)
        self.assertIsNot(second, first)
        self.assertEqual(mux.slots()[0].attempts, 0)

    async def test_addressOfAndWhenClosed(self) -> None:
        """
        L{UniformMultiplexer.addressOf} names a connection's address until
        it closes; L{UniformMultiplexer.whenClosed} fires when it does.
        """
        _, port1 = self.server()
        mux = self.multiplexer([port1])
        connection = await mux.whenReady(5.0)
        self.assertEqual(mux.addressOf(connection), Address("127.0.0.1", port1))
        closed = mux.whenClosed(connection)
        connection.sendClose(1000)
        await closed
        self.assertRaises(KeyError, mux.addressOf, connection)

    async def test_stopClosesCleanly(self) -> None:
        """
        Stopping closes every connection with a close handshake and fires
        once all are closed.
        """
        one, port1 = self.server()
        mux = self.multiplexer([port1], connectionsPerAddress=3)
        await waitFor(lambda: len(mux.readyConnections()) == 3)
        connections = mux.readyConnections()
        await mux.stopService()
        self.assertEqual(mux.slots(), [])
        self.assertTrue(all(c.wasClean for c in connections))
        await waitFor(lambda: len(one.closes) == 3)
        self.assertEqual(one.closes, [True] * 3)

    def tlsServer(self) -> tuple[int, Certificate]:
        serverCert, trustRoot = selfSigned("localhost")
        factory = EchoServerFactory("wss://localhost")
        return serve(self, factory, serverCert.options()), trustRoot

    async def test_wss(self) -> None:
        """
        A C{wss://} factory connects over TLS to the resolved address and
        verifies the certificate against the URL's hostname.
        """
        port, trustRoot = self.tlsServer()
        mux = self.multiplexer(
            [port],
            factory=clientFactory(f"wss://localhost:{port}"),
            tls=optionsForClientTLS("localhost", trustRoot=trustRoot),
        )
        connection = await mux.whenReady(5.0)
        self.assertEqual(await connection.request(b"over tls"), b"over tls")

    async def test_wssWrongHostname(self) -> None:
        """
        A certificate that does not match the expected hostname fails the
        attempt.
        """
        port, trustRoot = self.tlsServer()
        mux = self.multiplexer(
            [port],
            factory=clientFactory(f"wss://localhost:{port}"),
            tls=optionsForClientTLS("wrong.example", trustRoot=trustRoot),
        )
        await waitFor(lambda: mux.slots()[0].attempts >= 2)
        self.assertEqual(mux.readyConnections(), [])
