"""
The C{twistd relaypool} daemon: its command-line L{Options} and
L{makeService}, which wires the event store, the relay pool, the outbox and
the gateway into one service.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from relaypool._reactor import defaultReactor
from relaypool.daemon.config import (
    SETTINGS,
    Config,
    Setting,
    buildConfig,
    loadConfigFile,
    validateRelayURL,
)
from relaypool.errors import ConfigError, InvalidRelayURL, StartupError, StoreError

if TYPE_CHECKING:
    from relaypool.gateway.gateway import Gateway
    from relaypool.store.outbox import OutboxPublisher
    from relaypool.store.sqlite import SQLiteEventStore
    from relaypool.upstream.relaypool import RelayPool

__all__ = [
    "ConnectionStateLogger",
    "OrderedMultiService",
    "Options",
    "RelayPoolService",
    "StatusLogger",
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
    @cvar command: the command these options belong to, named in errors.
    """

    command = "twistd relaypool"

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

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse C{options}. Under a parent command (twistd, whose C{relaypool}
        subcommand these options are, or the C{relaypool} script, whose
        C{run}), an invalid option or setting ends the process with one line
        saying what is wrong and a hint to C{--help}, instead of the
        parent's whole usage text followed by the error.

        @raise usage.UsageError: on invalid options, without a parent.
        @raise SystemExit: on invalid options, under a parent.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(f"{self.command}: {e}\nTry '{self.command} --help'.") from None

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
            self.config = buildConfig(fileValues, overrides, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


_connectionLog = Logger(namespace="relaypool.connections")


def _clockTime(seconds: float | None, now: float) -> str:
    """
    @return: the local time of C{seconds} since the epoch, C{HH:MM:SS}, with
        the date in front when it is not the day of C{now} (C{?} for
        L{None}).
    """
    if seconds is None:
        return "?"
    moment = time.localtime(seconds)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d", time.localtime(now)):
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M:%S", moment)


class ConnectionStateLogger:
    """
    Logs the state changes of upstream connection slots (each a
    L{relaypool.transport.mux.SlotStatus}), one line per change, in the
    C{relaypool.connections} namespace.

    A retry's C{connecting} is not logged: the failure before it said when
    it comes. The first C{detailedAttempts} failed attempts in a row each
    get a line with the error and the delay before the next; after them,
    only the attempts whose number is a power of two or a multiple of
    C{summaryEvery} do, as one summary line (C{still failing: 16 attempts
    since 10:42:03, last error: ...}), so a relay that is down for hours
    logs a few lines an hour, not one per attempt.

    @ivar detailedAttempts: failed attempts in a row logged one by one.
    @ivar summaryEvery: after those and past the powers of two, a summary
        line every this many failed attempts.
    """

    def __init__(
        self, clock: IReactorTime, detailedAttempts: int = 3, summaryEvery: int = 64
    ) -> None:
        """
        @param clock: the reactor whose C{seconds()} the slots' times are in.
        """
        self._clock = clock
        self.detailedAttempts = detailedAttempts
        self.summaryEvery = summaryEvery

    def __call__(self, relayURL: str, slot: Any) -> None:
        """
        Log C{slot}'s new state if it is worth a line.

        @param relayURL: the relay the slot connects to.
        @param slot: a L{relaypool.transport.mux.SlotStatus}.
        """
        where = f"{relayURL} {slot.address} #{slot.index}"
        attempts = slot.attempts
        if slot.state == "connecting":
            if attempts == 0:
                _connectionLog.info("{where}: connecting", where=where)
        elif slot.state == "open":
            after = ""
            if attempts:
                after = f" after {attempts} failed attempts since {_clockTime(slot.failingSince, self._clock.seconds())}"
            _connectionLog.info("{where}: open{after}", where=where, after=after)
        elif slot.state == "backing-off":
            retry = ""
            if slot.nextRetry is not None:
                retry = f"; retry in {max(0.0, slot.nextRetry - self._clock.seconds()):.1f} s"
            error = (slot.lastError or "unknown error").rstrip(".")
            if attempts <= self.detailedAttempts:
                _connectionLog.info(
                    "{where}: attempt {attempts} failed: {error}{retry}",
                    where=where,
                    error=error,
                    attempts=attempts,
                    retry=retry,
                )
            elif attempts & (attempts - 1) == 0 or attempts % self.summaryEvery == 0:
                _connectionLog.info(
                    "{where}: still failing: {attempts} attempts since {since},"
                    " last error: {error}{retry}",
                    where=where,
                    attempts=attempts,
                    since=_clockTime(slot.failingSince, self._clock.seconds()),
                    error=error,
                    retry=retry,
                )
        else:
            _connectionLog.info("{where}: {state}", where=where, state=slot.state)


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
        reactor = defaultReactor(reactor)
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


def _exitProcess(status: int) -> None:
    """
    End the process with C{status} now, after flushing stdout and stderr.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class RelayPoolService(OrderedMultiService):
    """
    The daemon: the event store, and with relays configured a
    L{relaypool.transport.names.DNSNameService}, the L{RelayPool}, its
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

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        exitProcess: Callable[[int], object] | None = None,
    ) -> None:
        """
        @param config: the settings.
        @param reactor: the reactor every part uses; C{None} means the global
            reactor.
        @param exitProcess: ends the process with a status, once the reactor
            stopped after the gateway failed to listen late (the default
            flushes stdout and stderr and calls L{os._exit}).
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        self._exitProcess = _exitProcess if exitProcess is None else exitProcess
        self._watchingListening = False

    def _build(self) -> None:
        from relaypool.gateway.gateway import Gateway
        from relaypool.store.outbox import OutboxPublisher
        from relaypool.transport.names import DNSNameService
        from relaypool.upstream.relaypool import RelayPool

        reactor = defaultReactor(self._reactor)
        config = self.config
        store = self._openStore(reactor)
        _StoreCloser(store).setServiceParent(self)  # type: ignore[no-untyped-call]
        self.store = store
        if config.relays:
            names = DNSNameService(reactor)
            names.setServiceParent(self)  # type: ignore[no-untyped-call]
            pool = RelayPool(
                reactor=reactor,
                ringCapacity=config.ringCapacity,
                dedupSize=config.dedupSize,
                broadcastCapacity=config.broadcastCapacity,
                maxRelays=config.maxRelays,
                verify=config.verify,
                nameService=names,
                connectionsPerAddress=config.connectionsPerAddress,
                eoseTimeout=config.eoseTimeout,
                publishTimeout=config.publishTimeout,
                store=store,
                onStateChange=ConnectionStateLogger(reactor),
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
            limits=config.limits,
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
        """
        Open the store and listen (twistd calls this before it drops
        privileges, after it daemonized).

        @raise StartupError: if the store cannot be opened or the gateway
            cannot listen; the reason is logged as one line first.
        """
        if self.store is None:
            self._build()
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._watchListening()

    def startService(self) -> None:
        """
        Start every part (building them and listening first if
        L{privilegedStartService} was not called).

        @raise StartupError: as L{privilegedStartService} does.
        """
        if self.store is None:
            self._build()
        super().startService()  # type: ignore[no-untyped-call]
        self._watchListening()

    def _openStore(self, reactor: Any) -> SQLiteEventStore:
        from relaypool.store.sqlite import SQLiteEventStore

        config = self.config
        try:
            return SQLiteEventStore(
                config.store,
                reactor=reactor,
                maxEvents=config.storeMaxEvents or None,
                maxBytes=config.storeMaxBytes or None,
                maxOutbox=config.outboxMaxEvents,
            )
        except StoreError as e:
            cause = e.__cause__
            reason = str(cause) if isinstance(cause, sqlite3.Error) else str(e)
            raise self._startupError(f"cannot open the store {config.store}: {reason}") from None

    def _startupError(self, message: str) -> StartupError:
        """
        Log C{message} as the one line saying why the daemon cannot start.

        @return: the L{StartupError} to raise.
        """
        self.log.critical("relaypool: {problem}", problem=message)
        return StartupError(message)

    def _watchListening(self) -> None:
        """
        Follow the gateway's listening (once): a failure known at once, as
        with every endpoint Twisted ships, is raised; one reported later,
        with the reactor running, stops the process with status 1.
        """
        if self._watchingListening:
            return
        self._watchingListening = True
        assert self.gateway is not None
        failures: list[Failure] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                failures.append(failure)
            else:
                self._cannotListen(failure)
                self._exitAfterShutdown(1)

        self.gateway.whenListening().addCallbacks(self._listening, failed)
        starting = False
        if failures:
            raise self._cannotListen(failures[0])

    def _exitAfterShutdown(self, status: int) -> None:
        """
        Stop the reactor (stopping every part), then end the process with
        C{status}. twistd gives no exit status to a process whose reactor
        stopped (it only re-raises a signal that stopped it), so the process
        ends itself once the reactor finished shutting down.
        """
        reactor = defaultReactor(self._reactor)
        reactor.addSystemEventTrigger("after", "shutdown", self._exitProcess, status)
        reactor.stop()

    def _listening(self, port: IListeningPort) -> None:
        address = port.getHost()
        self.log.info(
            "relaypool: serving clients on {host}:{port}",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )

    def _cannotListen(self, failure: Failure) -> StartupError:
        error = failure.value
        socketError = getattr(error, "socketError", None)
        reason = socketError.strerror if isinstance(socketError, OSError) else None
        return self._startupError(
            f"cannot listen on {self.config.listen}: {reason or failure.getErrorMessage()}"
        )
def makeService(options: Options) -> RelayPoolService:
    """
    Make the daemon's service from parsed L{Options}.
    """
    return RelayPoolService(options.config)
