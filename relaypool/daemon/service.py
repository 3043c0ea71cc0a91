"""
The C{twistd relaypool} daemon: its command-line L{Options} and
L{makeService}, which wires the event store, the relay pool, the outbox and
the gateway into one service.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from relaypool._reactor import DaemonReactor, defaultReactor
from relaypool.daemon.config import (
    CONFIG_VARIABLE,
    SETTINGS,
    Config,
    ConfigSources,
    RelaySpec,
    Setting,
)
from relaypool.daemon.interval import IntervalService
from relaypool.errors import (
    ConfigError,
    RelayRefused,
    StartupError,
    StoreError,
    TooManyRelays,
)
from relaypool.upstream.admission import RelayPatterns

if TYPE_CHECKING:
    from relaypool.cluster.node import ClusterNode
    from relaypool.gateway.gateway import Gateway
    from relaypool.interfaces import IOutbox
    from relaypool.store.outbox import OutboxPublisher
    from relaypool.store.sqlite import SQLiteEventStore
    from relaypool.upstream.relaypool import RelayPool

__all__ = [
    "ConnectionStateLogger",
    "OrderedMultiService",
    "Options",
    "RelayPoolService",
    "ReplaceableAdmit",
    "StatusLogger",
    "makeService",
]


def _optionName(setting: Setting) -> str:
    """
    @return: the long option of C{setting}: C{relay} for the relay list,
        C{no-<key>} for a flag on by default, else the key itself.
    """
    if setting.option is not None:
        return setting.option
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


_LISTS = {setting.key: setting for setting in SETTINGS if setting.option is not None}


class Options(usage.Options):
    """
    The options of C{twistd relaypool}; every setting of L{Config} has one.
    After parsing, L{config} holds the validated settings.

    @ivar config: the L{Config} built from the command line, the
        environment and the config file.
    @ivar sources: where they came from, to read them again on C{SIGHUP}.
    @ivar environ: the environment read (L{os.environ} unless replaced
        before parsing).
    @cvar command: the command these options belong to, named in errors.
    """

    command = "twistd relaypool"

    synopsis = "[--relay URL ...] [--read-relay URL ...] [--write-relay URL ...] [options]"
    longdesc = (
        "Serve many Nostr relays as one WebSocket endpoint, deduplicating "
        "their events and acknowledging publishes only when relays accepted "
        "them. Settings may also come from a TOML file (--config) whose keys "
        "are the long option names (relays = [...] for --relay, verify = false "
        "for --no-verify; a relay may also be a table with its roles, "
        '{url = "wss://...", read = true, write = false, discovery = false}). '
        "Every setting is also an environment variable RELAYPOOL_<KEY> "
        '(RELAYPOOL_QUORUM=2, RELAYPOOL_RELAYS="wss://a wss://b"; RELAYPOOL_READ_RELAYS, '
        "RELAYPOOL_WRITE_RELAYS and RELAYPOOL_DISCOVERY_RELAYS add relays with one role). "
        "Precedence: command line > environment > file > default. SIGHUP "
        "re-reads the file."
    )

    optParameters = [
        [
            "config",
            None,
            None,
            f"a TOML file of settings, re-read on SIGHUP [default: ${CONFIG_VARIABLE}]",
        ],
    ] + [
        [setting.key, None, None, _describe(setting)]
        for setting in SETTINGS
        if not setting.isFlag() and setting.option is None
    ]
    optFlags = [
        [_optionName(setting), None, _describe(setting)] for setting in SETTINGS if setting.isFlag()
    ]

    config: Config
    sources: ConfigSources

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for setting in SETTINGS:
            if setting.option is not None:
                self[setting.key] = []
        self.environ: Mapping[str, str] = os.environ

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

    def _addItem(self, key: str, value: str) -> None:
        """
        Add one item to the list setting C{key}, from its repeatable option.

        @raise usage.UsageError: naming the option, if the item is invalid.
        """
        try:
            self[key].append(_LISTS[key].parseItem(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def opt_relay(self, url: str) -> None:
        """an upstream relay URL (ws:// or wss://), read and write; repeatable [default: none]"""
        self._addItem("relays", url)

    def _addRelay(self, option: str, url: str, roles: RelaySpec) -> None:
        """
        Add a relay with C{roles} (a L{RelaySpec} whose URL is ignored) to
        the relay list, from the repeatable C{--<option>}.

        @raise usage.UsageError: naming the option, if the URL is invalid.
        """
        try:
            spec = _LISTS["relays"].parseItem(url)
        except ConfigError as e:
            raise usage.UsageError(f"--{option}: {e.message}") from None
        assert isinstance(spec, RelaySpec)
        self["relays"].append(dataclasses.replace(roles, url=spec.url))

    def opt_read_relay(self, url: str) -> None:
        """a relay that subscriptions, queries and counts go to, not publishes; repeatable"""
        self._addRelay("read-relay", url, RelaySpec("", read=True, write=False))

    def opt_write_relay(self, url: str) -> None:
        """a relay that publishes go to (and count for the quorum), not subscriptions; repeatable"""
        self._addRelay("write-relay", url, RelaySpec("", read=False, write=True))

    def opt_discovery_relay(self, url: str) -> None:
        """a relay used only to find relay lists (NIP-65) for --outbox-model; repeatable"""
        self._addRelay(
            "discovery-relay", url, RelaySpec("", read=False, write=False, discovery=True)
        )

    def opt_relay_allow(self, pattern: str) -> None:
        """a pattern (shell glob on a relay's URL or host); with any, only matching relays are used; repeatable"""
        self._addItem("relay-allow", pattern)

    def opt_relay_deny(self, pattern: str) -> None:
        """a pattern (shell glob on a relay's URL or host, e.g. '*.onion') of relays never used; repeatable"""
        self._addItem("relay-deny", pattern)

    def opt_allow_pubkey(self, pubkey: str) -> None:
        """a pubkey (hex) that may publish under --write-restricted; repeatable"""
        self._addItem("allow-pubkeys", pubkey)

    def opt_deny_pubkey(self, pubkey: str) -> None:
        """a pubkey (hex) whose events are refused (blocked:) and not served; repeatable"""
        self._addItem("deny-pubkeys", pubkey)

    def opt_allow_kind(self, kind: str) -> None:
        """an event kind clients may publish; with any, only those; repeatable"""
        self._addItem("allow-kinds", kind)

    def opt_deny_kind(self, kind: str) -> None:
        """an event kind refused (blocked:) and not served; repeatable"""
        self._addItem("deny-kinds", kind)

    def opt_admin_pubkey(self, pubkey: str) -> None:
        """a pubkey (hex) allowed to use the NIP-86 management API; repeatable [default: none, API off]"""
        self._addItem("admin-pubkeys", pubkey)

    def opt_sync(self, filter: str) -> None:
        """a filter (JSON, e.g. '{"kinds":[0,3]}') synced with every relay each --sync-interval (NIP-77); repeatable [default: none]"""
        self._addItem("sync-filters", filter)

    def postOptions(self) -> None:
        """
        Read the config file, apply the environment and then the command
        line over it and validate.

        @raise usage.UsageError: with one line naming the invalid key.
        """
        overrides: dict[str, object] = {}
        for setting in SETTINGS:
            name = _optionName(setting)
            if setting.option is not None:
                if self[setting.key]:
                    overrides[setting.key] = list(self[setting.key])
            elif setting.isFlag():
                if self[name]:
                    overrides[setting.key] = not setting.default()
            elif self[name] is not None:
                overrides[setting.key] = self[name]
        self.sources = ConfigSources.fromEnvironment(self.environ, self["config"], overrides)
        try:
            self.config = self.sources.load()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class ReplaceableAdmit:
    """
    The pool's admit policy (L{relaypool.upstream.admission}) from the
    C{relay-allow} and C{relay-deny} patterns, which a reload replaces.

    @ivar patterns: the patterns, or L{None} to admit every relay.
    """

    def __init__(self, patterns: RelayPatterns | None) -> None:
        self.patterns = patterns

    def __call__(self, url: str) -> bool:
        """
        @return: whether the normalized relay URL C{url} may be connected.
        """
        return self.refusal(url) is None

    def refusal(self, url: str) -> str | None:
        """
        @return: why C{url} is refused (naming the pattern), or L{None}.
        """
        return None if self.patterns is None else self.patterns.refusal(url)

    def __repr__(self) -> str:
        return repr(self.patterns)


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


class StatusLogger(IntervalService):
    """
    Logs one line per upstream relay (state, health, events, OKs) every
    C{interval} seconds while running.
    """

    what = "relay status logging"

    def __init__(
        self, pool: RelayPool, interval: float, reactor: IReactorTime | None = None
    ) -> None:
        """
        @param interval: seconds between two rounds of status lines.
        @param reactor: an L{IReactorTime}; C{None} means the global reactor.
        """
        super().__init__(interval, reactor)
        self._pool = pool

    def tick(self) -> None:
        self.logStatus()

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
    L{relaypool.transport.names.DNSNameService}, the L{RelayPool}, with
    C{redis} set a L{relaypool.cluster.node.ClusterNode} (and the outbox on
    Redis, L{relaypool.cluster.outbox.RedisOutbox}), the L{OutboxPublisher}
    and a L{StatusLogger}; then the L{Gateway} serving clients.

    The parts are built when the service starts (in
    L{privilegedStartService}, or L{startService} if that was not called),
    not when it is made: twistd forks to daemonize between the two, and the
    store's threads must start in the process that uses them.

    Stopping stops the parts one after the other, in the reverse order:
    the gateway first (clients get a close handshake), then the status
    logger, the outbox, the cluster node (its leases are let go), the pool
    (relays get a close handshake), the name service, and the store last,
    after its pending writes.

    @ivar store: the event store, once started.
    @ivar pool: the relay pool, once started with relays, else L{None}.
    @ivar outbox: the outbox publisher, once started with relays, else
        L{None}.
    @ivar cluster: the cluster node, once started with C{redis} set, else
        L{None}.
    @ivar gateway: the gateway, once started.
    @ivar sources: where the settings came from, read again on C{SIGHUP}
        (L{reload}); with L{None}, C{SIGHUP} is left alone.
    """

    store: SQLiteEventStore | None = None
    pool: RelayPool | None = None
    outbox: OutboxPublisher | None = None
    cluster: ClusterNode | None = None
    gateway: Gateway | None = None

    def __init__(
        self,
        config: Config,
        reactor: DaemonReactor | None = None,
        exitProcess: Callable[[int], object] | None = None,
        sources: ConfigSources | None = None,
    ) -> None:
        """
        @param config: the settings.
        @param sources: where C{config} came from: given, C{SIGHUP} reads
            them again while the service runs (L{reload}).
        @param reactor: the L{relaypool._reactor.DaemonReactor} every part
            uses; C{None} means the global reactor.
        @param exitProcess: ends the process with a status, once the reactor
            stopped after the gateway failed to listen late (the default
            flushes stdout and stderr and calls L{os._exit}).
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        self._exitProcess = _exitProcess if exitProcess is None else exitProcess
        self._watchingListening = False
        self.sources = sources
        self._previousHangup: Any = None
        self._admit = ReplaceableAdmit(config.admitPolicy())

    def _build(self) -> None:
        from relaypool.daemon.periodicsync import PeriodicSync
        from relaypool.gateway.gateway import Gateway
        from relaypool.gateway.metrics import GatewayMetrics
        from relaypool.store.outbox import OutboxPublisher
        from relaypool.transport.names import DNSNameService
        from relaypool.upstream.relaypool import RelayPool
        from relaypool.upstream.syncing import SyncSettings

        reactor = defaultReactor(self._reactor)
        config = self.config
        metrics = GatewayMetrics()
        store = self._openStore(reactor, metrics.observeStore)
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
                onLatency=metrics.observeRelay,
                syncSettings=SyncSettings(maxRecords=config.syncMaxRecords),
                syncAfterOutage=config.outageSync,
                outageLookback=config.outageLookback,
                admit=self._admit,
                outboxModel=config.outboxModel,
                outboxRelaysPerAuthor=config.outboxRelaysPerAuthor,
                outboxIdleTimeout=config.outboxIdleTimeout,
                outboxLookupTimeout=config.outboxLookupTimeout,
                outboxRelayListCapacity=config.outboxRelayLists,
                outboxMaxTagged=config.outboxMaxTagged,
                verifyThreads=config.verifyThreads,
                verifyQueueSize=config.verifyQueueSize,
            )
            for spec in config.relays:
                try:
                    pool.addRelay(
                        spec.url, read=spec.read, write=spec.write, discovery=spec.discovery
                    )
                except RelayRefused as e:
                    raise self._startupError(str(e)) from None
            pool.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.pool = pool
            outboxRecord: IOutbox = store
            if config.redis is not None:
                self.cluster = cluster = self._joinCluster(reactor, pool, store)
                outboxRecord = self._clusterOutbox(reactor, cluster, pool, store)
            outbox = OutboxPublisher(
                reactor,
                pool,
                outboxRecord,
                quorum=config.quorum,
                maxAge=config.outboxMaxAge,
            )
            outbox.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.outbox = outbox
            if config.statusInterval:
                StatusLogger(pool, config.statusInterval, reactor).setServiceParent(self)  # type: ignore[no-untyped-call]
            if config.syncFilters:
                PeriodicSync(
                    pool, config.syncFilters, config.syncInterval, config.syncDirection, reactor
                ).setServiceParent(self)  # type: ignore[no-untyped-call]
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
            policy=config.eventPolicy(),
            adminPubkeys=config.adminPubkeys,
            adminAuthWindow=config.adminAuthWindow,
            statusPageInterval=config.statusPageInterval,
            statusPageHistory=config.statusPageHistory,
            metrics=metrics,
            maxVerifying=config.maxVerifying,
            cluster=self.cluster,
        )
        gateway.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.gateway = gateway
        self.log.info(
            "relaypool: {relays} relays ({read} read, {write} write, {discovery} discovery),"
            " store {store}, OK policy {policy}, listening on {listen}",
            relays=len(config.relays),
            read=len(config.relayURLs("read")),
            write=len(config.relayURLs("write")),
            discovery=len(config.relayURLs("discovery")),
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
        if self.sources is not None:
            self._previousHangup = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> Deferred[None]:
        """
        Stop handling C{SIGHUP} (restoring the handler before), then stop
        the parts in the reverse order.
        """
        if self.sources is not None and self.running:
            signal.signal(signal.SIGHUP, self._previousHangup or signal.SIG_DFL)
            self._previousHangup = None
        return super().stopService()

    def _hangup(self, signum: int, frame: Any) -> None:
        """
        The C{SIGHUP} handler: reload in the reactor thread, then call the
        handler that was there before, if it was a function.
        """
        defaultReactor(self._reactor).callFromThread(self.reload)
        if callable(self._previousHangup):
            self._previousHangup(signum, frame)

    def reload(self) -> list[str] | None:
        """
        Read the settings again from L{sources} (the config file, with the
        environment and the command line still over it) and apply them
        (L{applyConfig}). Invalid settings are refused with one log line
        naming the problem, and the running ones stay.

        @return: the changes applied, or L{None} if the settings were
            refused.
        """
        if self.sources is None or self.sources.path is None:
            self.log.warn(
                "relaypool: reload: no config file to re-read (--config or {variable});"
                " nothing changed",
                variable=CONFIG_VARIABLE,
            )
            return None
        try:
            config = self.sources.load()
        except ConfigError as e:
            self.log.error(
                "relaypool: reload refused, the running settings stay: {problem}", problem=str(e)
            )
            return None
        return self.applyConfig(config)

    def applyConfig(self, new: Config) -> list[str]:
        """
        Apply C{new} settings to the running daemon as a difference from
        L{config}, without dropping a downstream client: relays added and
        removed on the pool, and their roles changed; the relay allow and deny
        patterns (relays in the pool the new ones refuse are removed); the
        gateway's limits, OK policy and quorum, the
        NIP-11 name and description, and the pool's timeouts for the messages
        from now on. A setting that only takes effect on a restart gets a log
        line saying so, and keeps its running value in L{config}; the others
        are still applied. One line sums up what changed.

        To make one more setting reloadable, add its key to L{RELOADABLE}
        and one C{if} below applying it.

        @param new: valid settings (from L{ConfigSources.load}).
        @return: one description per setting applied (C{"quorum 1 -> 2"}).
        """
        old = self.config
        changed = [s for s in SETTINGS if _settingValue(old, s) != _settingValue(new, s)]
        keys = {setting.key for setting in changed}
        restart = [s for s in changed if s.key not in RELOADABLE]
        if "relays" in keys and self.pool is None:
            restart.append(_BY_KEY["relays"])
        for setting in restart:
            self.log.warn(
                "relaypool: reload: {key} changed ({before} -> {after}) but needs a restart",
                key=setting.key,
                before=_shownValue(_settingValue(old, setting)),
                after=_shownValue(_settingValue(new, setting)),
            )
        kept = {setting.attribute: getattr(old, setting.attribute) for setting in restart}
        applied = [s for s in changed if s not in restart]
        self.config = dataclasses.replace(new, **kept)
        assert self.gateway is not None
        pool = self.pool
        if keys & {"relay-allow", "relay-deny"}:
            self._admit.patterns = new.admitPolicy()
            if pool is not None:
                self._dropRefused(pool)
        if pool is not None and "relays" in keys:
            self._applyRelays(pool, old.relays, new.relays)
        if pool is not None:
            pool.maxRelays = new.maxRelays
            pool.eoseTimeout = new.eoseTimeout
            pool.publishTimeout = new.publishTimeout
        if keys & {"relays", "quorum", "ok-policy"}:
            self.gateway.setOkPolicy(self.config.effectiveOkPolicy(), new.quorum)
            if self.outbox is not None:
                self.outbox.quorum = new.quorum
        if any(setting.isLimit() for setting in applied):
            self.gateway.setLimits(new.limits)
        if keys & {"name", "description"}:
            self.gateway.setInformation(new.name, new.description)
        if keys & _POLICY_KEYS:
            self.gateway.facade.setPolicy(new.eventPolicy())
        if "admin-pubkeys" in keys:
            self.gateway.management.admins = frozenset(new.adminPubkeys)
        changes = [
            f"{s.key} {_shownValue(_settingValue(old, s))} -> {_shownValue(_settingValue(new, s))}"
            for s in applied
        ]
        self.log.info(
            "relaypool: reloaded {path}: {changes}",
            path=self.sources.path if self.sources is not None else "settings",
            changes="; ".join(changes) if changes else "nothing changed",
        )
        return changes

    def _applyRelays(
        self, pool: RelayPool, before: tuple[RelaySpec, ...], after: tuple[RelaySpec, ...]
    ) -> None:
        """
        Remove the relays in C{before} and not in C{after} from C{pool}, add
        those in C{after} and not in C{before}, and give those in both the
        roles of C{after} where they changed, comparing normalized URLs
        (C{ws://a} and C{ws://a/} are one relay).
        """
        was = {spec.normalized(): spec for spec in before}
        now = {spec.normalized(): spec for spec in after}
        for url, spec in was.items():
            if url not in now:
                pool.removeRelay(spec.url).addErrback(self._removeFailed, spec.url)
        inPool = set(pool.relayURLs())
        for url, spec in now.items():
            if url in was and was[url].roles() == spec.roles():
                continue
            roles = {"read": spec.read, "write": spec.write, "discovery": spec.discovery}
            try:
                if url in inPool:
                    pool.setRelayRoles(url, **roles)
                else:
                    pool.addRelay(spec.url, **roles)
            except (TooManyRelays, RelayRefused) as e:
                self.log.error("relaypool: reload: {problem}", problem=str(e))

    def _dropRefused(self, pool: RelayPool) -> None:
        """
        Remove the relays in C{pool} that the admit policy (just replaced)
        refuses: relays added through the management API, or by the outbox
        model. (Configured relays it refuses made the settings invalid.)
        """
        for url in pool.relayURLs():
            why = self._admit.refusal(url)
            if why is not None:
                self.log.warn(
                    "relaypool: reload: removing {url}: the relay patterns refuse it ({why})",
                    url=url,
                    why=why,
                )
                pool.removeRelay(url).addErrback(self._removeFailed, url)

    def _removeFailed(self, failure: Failure, url: str) -> None:
        self.log.failure("relaypool: reload: removing {url} failed", failure, url=url)

    def _joinCluster(self, reactor: Any, pool: RelayPool, store: SQLiteEventStore) -> ClusterNode:
        """
        The cluster node on C{config.redis}: started after the pool, so
        stopped before it (its leases are let go while the pool still
        runs). If Redis cannot be reached at start, the daemon stops with
        one line saying so, unless C{redisOptional}.
        """
        from relaypool.cluster.link import parseRedisURL
        from relaypool.cluster.node import ClusterNode

        config = self.config
        assert config.redis is not None

        def unreachable(reason: str) -> None:
            self._startupError(
                f"{reason} (start with --redis-optional to serve as a single node until it is"
                " reachable)"
            )
            self._exitAfterShutdown(1)

        node = ClusterNode(
            parseRedisURL(config.redis),
            pool,
            store,
            reactor,
            nodeId=config.nodeId,
            leaseTime=config.leaseTime,
            historySize=config.clusterHistory,
            onUnreachable=None if config.redisOptional else unreachable,
            handoverLookback=config.outageLookback if config.outageSync else None,
        )
        node.setServiceParent(self)  # type: ignore[no-untyped-call]
        return node

    def _clusterOutbox(
        self, reactor: Any, cluster: ClusterNode, pool: RelayPool, store: SQLiteEventStore
    ) -> IOutbox:
        """
        The cluster's shared outbox on Redis, with the store's outbox for
        the events accepted while Redis is away.
        """
        from relaypool.cluster.outbox import RedisOutbox

        config = self.config
        return RedisOutbox(
            cluster.link,
            cluster.nodeId,
            pool.relayURLs,
            store,
            reactor,
            maxEvents=config.outboxMaxEvents,
            claimTime=config.outboxClaimTime,
        )

    def _openStore(
        self, reactor: IReactorFromThreads, onLatency: Callable[[str, float], None]
    ) -> SQLiteEventStore:
        from relaypool.store.sqlite import SQLiteEventStore

        config = self.config
        try:
            return SQLiteEventStore(
                config.store,
                reactor=reactor,
                maxEvents=config.storeMaxEvents or None,
                maxBytes=config.storeMaxBytes or None,
                cacheBytes=config.storeCacheBytes,
                maxOutbox=config.outboxMaxEvents,
                onLatency=onLatency,
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


_POLICY_KEYS = frozenset(
    {"allow-pubkeys", "deny-pubkeys", "allow-kinds", "deny-kinds", "write-restricted"}
)
"""
The keys of the settings that make the gateway's event policy
(L{Config.eventPolicy}).
"""

RELOADABLE = frozenset(
    {
        "relays",
        "quorum",
        "ok-policy",
        "max-relays",
        "eose-timeout",
        "publish-timeout",
        "name",
        "description",
        "admin-pubkeys",
        "relay-allow",
        "relay-deny",
        *_POLICY_KEYS,
        *(setting.key for setting in SETTINGS if setting.isLimit()),
    }
)
"""
The keys of the settings L{RelayPoolService.applyConfig} changes in a
running daemon; the others need a restart.
"""

_BY_KEY = {setting.key: setting for setting in SETTINGS}


def _settingValue(config: Config, setting: Setting) -> object:
    """
    @return: the value of C{setting} in C{config}.
    """
    holder: object = config.limits if setting.isLimit() else config
    return getattr(holder, setting.attribute)


def _shownValue(value: object) -> str:
    """
    @return: C{value} for a log line: a list (of relay URLs, pubkeys,
        kinds) as its items separated by commas (C{[]} when empty).
    """
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def makeService(options: Options) -> RelayPoolService:
    """
    Make the daemon's service from parsed L{Options}: it re-reads its
    settings on C{SIGHUP}.
    """
    return RelayPoolService(options.config, sources=options.sources)
