"""
The C{twistd relaypool} daemon: its command-line L{Options} and
L{makeService}, which wires the event store, the relay pool, the outbox and
the gateway into one service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from relaypool.config import (
    SETTINGS,
    Config,
    Setting,
    buildConfig,
    loadConfigFile,
    validateRelayURL,
)
from relaypool.errors import ConfigError, InvalidRelayURL

if TYPE_CHECKING:
    from relaypool.gateway.gateway import Gateway
    from relaypool.outbox import OutboxPublisher
    from relaypool.relaypool import RelayPool
    from relaypool.store import SQLiteEventStore

__all__ = [
    "OrderedMultiService",
    "Options",
    "RelayPoolService",
    "StatusLogger",
    "logConnectionState",
    "makeService",
]


def _optionName(setting: Setting) -> str:
    """
    @return: the long option of C{setting}: C{relay} for the relay list,
        C{no-<key>} for a flag on by default, else the key itself.
    """
    if setting.key == "relays":
        return "relay"
    if setting.isFlag() and setting.default():
        return f"no-{setting.key}"
    return setting.key


def _describe(setting: Setting) -> str:
    default = setting.default()
    if setting.key == "store":
        shown = f"{default} in the current directory"
    elif setting.isFlag():
        return f"{setting.help} (off by default)" if not default else f"do not {setting.help}"
    elif default is None:
        shown = "none"
    else:
        shown = str(default)
    return f"{setting.help} [default: {shown}]"


class Options(usage.Options):
    """
    The options of C{twistd relaypool}; every setting of L{Config} has one.
    After parsing, L{config} holds the validated settings.

    @ivar config: the L{Config} built from C{--config} and the command line.
    """

    synopsis = "[--relay URL ...] [options]"
    longdesc = (
        "Serve many Nostr relays as one WebSocket endpoint, deduplicating "
        "their events and acknowledging publishes only when relays accepted "
        "them. Settings may also come from a TOML file (--config) whose keys "
        "are the long option names (relays = [...] for --relay, verify = false "
        "for --no-verify); the command line overrides the file."
    )

    optParameters = [
        ["config", None, None, "a TOML file of settings; the command line overrides it"],
    ] + [
        [setting.key, None, None, _describe(setting)]
        for setting in SETTINGS
        if not setting.isFlag() and setting.key != "relays"
    ]
    optFlags = [
        [_optionName(setting), None, _describe(setting)] for setting in SETTINGS if setting.isFlag()
    ]

    config: Config

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["relays"] = []

    def opt_relay(self, url: str) -> None:
        """an upstream relay URL (ws:// or wss://); repeatable [default: none]"""
        try:
            self["relays"].append(validateRelayURL(url))
        except InvalidRelayURL as e:
            raise usage.UsageError(f"--relay: {e}") from None

    def postOptions(self) -> None:
        """
        Read the config file, apply the command line over it and validate.

        @raise usage.UsageError: with one line naming the invalid key.
        """
        overrides: dict[str, object] = {}
        for setting in SETTINGS:
            name = _optionName(setting)
            if setting.key == "relays":
                if self["relays"]:
                    overrides["relays"] = list(self["relays"])
            elif setting.isFlag():
                if self[name]:
                    overrides[setting.key] = not setting.default()
            elif self[name] is not None:
                overrides[setting.key] = self[name]
        try:
            fileValues = loadConfigFile(self["config"]) if self["config"] else {}
            self.config = buildConfig(fileValues, overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


_connectionLog = Logger(namespace="relaypool.connections")


def logConnectionState(relayURL: str, slot: Any) -> None:
    """
    Log one upstream connection slot's state change (a
    L{relaypool.mux.SlotStatus}).
    """
    retry = ""
    if slot.nextRetry is not None:
        retry = f", retry at {slot.nextRetry:.1f}"
    _connectionLog.info(
        "{url} {address} #{index}: {state} (failed attempts: {attempts}{retry})",
        url=relayURL,
        address=str(slot.address),
        index=slot.index,
        state=slot.state,
        attempts=slot.attempts,
        retry=retry,
    )


class StatusLogger(service.Service):
    """
    Logs one line per upstream relay (state, health, events, OKs) every
    C{interval} seconds while running, on one L{LoopingCall}.
    """

    log = Logger()

    def __init__(self, pool: RelayPool, interval: float, reactor: Any = None) -> None:
        """
        @param interval: seconds between two rounds of status lines.
        @param reactor: an L{IReactorTime}; C{None} means the global reactor.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._pool = pool
        self._interval = interval
        self._loop = LoopingCall(self.logStatus)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: self.log.failure("relay status logging stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()

    def logStatus(self) -> None:
        """
        Log every relay's status now.
        """
        for url, stats in sorted(self._pool.stats().items()):
            latency = "-" if stats.latency is None else f"{stats.latency * 1000:.0f} ms"
            self.log.info(
                "relay {url}: {state}, health {health:.0f}, events {received} received"
                " ({unique} unique, {invalid} invalid), OK {accepted} accepted"
                " {rejected} rejected, latency {latency}, reconnects {reconnects},"
                " queued {queued}, dropped {dropped}",
                url=url,
                state=stats.state,
                health=stats.healthScore,
                received=stats.eventsReceived,
                unique=stats.eventsUnique,
                invalid=stats.eventsInvalid,
                accepted=stats.okAccepted,
                rejected=stats.okRejected,
                latency=latency,
                reconnects=stats.reconnects,
                queued=stats.outboundQueued,
                dropped=stats.outboundDropped,
            )


class _StoreCloser(service.Service):
    """
    Closes the event store when stopped (the store needs no starting).
    """

    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self._store.close()


class OrderedMultiService(service.MultiService):
    """
    A L{MultiService} that stops its children one after the other, in the
    reverse order they were added, each once the one before it finished
    stopping (a plain L{MultiService} stops them all at once).
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        """
        Stop the children one by one; a child failing to stop is logged and
        the others still stop.

        @return: a Deferred firing when all stopped.
        """
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        done: Deferred[None] = succeed(None)
        for child in reversed(list(self)):
            done.addCallback(self._stopChild, child)
            done.addErrback(self._stopFailed, child)
        return done

    def _stopChild(self, ignored: None, child: service.IService) -> Deferred[None]:
        return maybeDeferred(child.stopService)

    def _stopFailed(self, failure: Failure, child: service.IService) -> None:
        self.log.failure("stopping {child} failed", failure, child=child)


class RelayPoolService(OrderedMultiService):
    """
    The daemon: the event store, and with relays configured a
    L{relaypool.names.DNSNameService}, the L{RelayPool}, its
    L{OutboxPublisher} and a L{StatusLogger}; then the L{Gateway} serving
    clients.

    The parts are built when the service starts (in
    L{privilegedStartService}, or L{startService} if that was not called),
    not when it is made: twistd forks to daemonize between the two, and the
    store's threads must start in the process that uses them.

    Stopping stops the parts one after the other, in the reverse order:
    the gateway first (clients get a close handshake), then the status
    logger, the outbox, the pool (relays get a close handshake), the name
    service, and the store last, after its pending writes.

    @ivar store: the event store, once started.
    @ivar pool: the relay pool, once started with relays, else L{None}.
    @ivar outbox: the outbox publisher, once started with relays, else
        L{None}.
    @ivar gateway: the gateway, once started.
    """

    store: SQLiteEventStore | None = None
    pool: RelayPool | None = None
    outbox: OutboxPublisher | None = None
    gateway: Gateway | None = None

    def __init__(self, config: Config, reactor: Any = None) -> None:
        """
        @param config: the settings.
        @param reactor: the reactor every part uses; C{None} means the global
            reactor.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor

    def _build(self) -> None:
        from relaypool.gateway.gateway import Gateway
        from relaypool.names import DNSNameService
        from relaypool.outbox import OutboxPublisher
        from relaypool.relaypool import RelayPool
        from relaypool.store import SQLiteEventStore

        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        config = self.config
        store = SQLiteEventStore(
            config.store,
            reactor=reactor,
            maxEvents=config.storeMaxEvents or None,
            maxBytes=config.storeMaxBytes or None,
            maxOutbox=config.outboxMaxEvents,
        )
        _StoreCloser(store).setServiceParent(self)  # type: ignore[no-untyped-call]
        self.store = store
        if config.relays:
            names = DNSNameService(reactor)
            names.setServiceParent(self)  # type: ignore[no-untyped-call]
            pool = RelayPool(
                reactor=reactor,
                ringCapacity=config.ringCapacity,
                cacheSize=config.dedupSize,
                broadcastCapacity=config.broadcastCapacity,
                maxRelays=config.maxRelays,
                verifySignatures=config.verify,
                nameService=names,
                connectionsPerAddress=config.connectionsPerAddress,
                eoseTimeout=config.eoseTimeout,
                publishTimeout=config.publishTimeout,
                store=store,
                onStateChange=logConnectionState,
            )
            for url in config.relays:
                pool.addRelay(url)
            pool.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.pool = pool
            outbox = OutboxPublisher(
                reactor, pool, store, quorum=config.quorum, maxAge=config.outboxMaxAge
            )
            outbox.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.outbox = outbox
            if config.statusInterval:
                StatusLogger(pool, config.statusInterval, reactor).setServiceParent(self)  # type: ignore[no-untyped-call]
        gateway = Gateway(
            reactor,
            self.pool,
            config.listen,
            limits=config.gatewayLimits(),
            store=store,
            outbox=self.outbox,
            quorum=config.quorum,
            okPolicy=config.effectiveOkPolicy(),
            authRequired=config.authRequired,
            relayURL=config.relayURL,
            name=config.name,
            description=config.description,
        )
        gateway.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.gateway = gateway
        self.log.info(
            "relaypool: {relays} relays, store {store}, OK policy {policy}, listening on {listen}",
            relays=len(config.relays),
            store=config.store,
            policy=config.effectiveOkPolicy(),
            listen=config.listen,
        )

    def privilegedStartService(self) -> None:
        if self.store is None:
            self._build()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        if self.store is None:
            self._build()
        super().startService()  # type: ignore[no-untyped-call]
        assert self.gateway is not None
        self.gateway.whenListening().addCallbacks(self._listening, self._notListening)

    def _listening(self, port: IListeningPort) -> None:
        address = port.getHost()
        self.log.info(
            "relaypool: serving clients on {host}:{port}",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )

    def _notListening(self, failure: Failure) -> None:
        self.log.critical(
            "relaypool: cannot listen on {listen}: {error}",
            listen=self.config.listen,
            error=failure.getErrorMessage(),
        )


def makeService(options: Options) -> RelayPoolService:
    """
    Make the daemon's service from parsed L{Options}.
    """
    return RelayPoolService(options.config)
