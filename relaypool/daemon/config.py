"""
The daemon's settings: one frozen L{Config} holding every value with its
default, built from a TOML file and the command line.

A TOML file uses the long option names of C{twistd relaypool} as its keys,
with dashes, at the top level, with two exceptions: the lists behind
repeatable options are named in the plural (C{relays} for C{--relay},
C{deny-pubkeys} for C{--deny-pubkey}, ...), and the C{--no-verify} flag is
C{verify = false}. Every other flag is a boolean key of its own name
(C{auth-required = true}). For example::

    relays = [
        "wss://relay.damus.io",
        {url = "wss://nos.lol", read = true, write = false},
        {url = "wss://purplepag.es", read = false, write = false, discovery = true},
    ]
    connections-per-address = 2
    quorum = 2
    store = "/var/lib/relaypool/events.db"

An unknown key is an error.

A relay in C{relays} is a URL (read and write) or a table of its URL and
roles (L{RelaySpec}); on the command line C{--relay} adds a read and write
relay, C{--read-relay}, C{--write-relay} and C{--discovery-relay} one with
that role alone. The same relay given twice gets every role given to it.

Every setting can also be given as an environment variable,
C{RELAYPOOL_<KEY>}: the key upper-cased with C{_} for C{-}
(C{RELAYPOOL_QUORUM=2}, C{RELAYPOOL_DEDUP_SIZE=50000}); a list setting (C{RELAYPOOL_RELAYS},
C{RELAYPOOL_DENY_KINDS}, ...) is a list of values separated by commas or
blanks (C{RELAYPOOL_READ_RELAYS}, C{RELAYPOOL_WRITE_RELAYS} and
C{RELAYPOOL_DISCOVERY_RELAYS} add relays with one role to
C{RELAYPOOL_RELAYS}'s), and a flag is one of
C{true}, C{false}, C{yes}, C{no}, C{1}, C{0}. C{RELAYPOOL_CONFIG} names the
config file when C{--config} is not given. Any other C{RELAYPOOL_} variable
is an error, as an unknown key is.

The precedence is: command line > environment > file > default (C{--relay}
options and their C{--read-relay} kin, or C{RELAYPOOL_RELAYS} and its
kin, replace the file's whole C{relays} list, and so for every list).
L{ConfigSources} keeps where the settings came from, to read them again.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from relaypool.errors import ConfigError, InvalidFilter, InvalidRelayURL
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits
from relaypool.gateway.policy import EventPolicy
from relaypool.gateway.publishing import OK_POLICIES as GATEWAY_OK_POLICIES
from relaypool.gateway.status import DEFAULT_HISTORY, DEFAULT_SAMPLE_INTERVAL
from relaypool.nostr.filter import Filter
from relaypool.nostr.url import parseRelayURL
from relaypool.upstream.admission import RelayPatterns

__all__ = [
    "CONFIG_VARIABLE",
    "ENVIRONMENT_PREFIX",
    "KEY_VARIABLE",
    "RELAY_ROLE_VARIABLES",
    "SETTINGS",
    "Config",
    "ConfigSources",
    "RelaySpec",
    "Setting",
    "buildConfig",
    "environmentValues",
    "loadConfigFile",
    "validateRelayURL",
]

OK_POLICIES = ("auto", *GATEWAY_OK_POLICIES)
"""
The values of the C{ok-policy} setting: the gateway's, and C{"auto"}
(C{"quorum"} with relays, C{"local"} without).
"""


_ROLES = ("read", "write", "discovery")


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """
    A configured upstream relay: its URL and its roles (as
    L{relaypool.upstream.relaypool.RelayPool.addRelay} takes them).

    @ivar url: the relay's C{ws://} or C{wss://} URL, as written.
    @ivar read: subscriptions, queries and counts go to it.
    @ivar write: publishes go to it, and count towards their quorum.
    @ivar discovery: the outbox model looks relay lists (NIP-65) up on it.
    """

    url: str
    read: bool = True
    write: bool = True
    discovery: bool = False

    def roles(self) -> tuple[str, ...]:
        """
        @return: the names of its roles: C{"read"}, C{"write"},
            C{"discovery"}, in that order.
        """
        return tuple(role for role in _ROLES if getattr(self, role))

    def normalized(self) -> str:
        """
        @return: its normalized URL (C{ws://a} and C{ws://a/} are one relay).
        """
        return parseRelayURL(self.url).url

    def mergedWith(self, other: RelaySpec) -> RelaySpec:
        """
        @return: this relay with the roles of C{other} (the same relay
            given again) added.
        """
        return RelaySpec(
            self.url,
            self.read or other.read,
            self.write or other.write,
            self.discovery or other.discovery,
        )

    def __str__(self) -> str:
        """
        @return: its URL, followed by its roles unless it is a plain read
            and write relay (C{wss://a (read, discovery)}).
        """
        if self.roles() == ("read", "write"):
            return self.url
        return f"{self.url} ({', '.join(self.roles())})"


@dataclass(frozen=True, slots=True)
class Config:
    """
    Every setting of the daemon, with its default.

    @ivar relays: the upstream relays with their roles; none means the
        daemon serves its store alone. See L{relayURLs}.
    @ivar relayAllow: shell patterns (on a relay's normalized URL or host):
        if any, the only relays the pool may connect to.
    @ivar relayDeny: shell patterns of relays the pool must not connect to.
    @ivar outboxModel: route subscriptions with authors to the authors' own
        relays (NIP-65), as temporary relays.
    @ivar outboxRelaysPerAuthor: the outbox model's relays per author.
    @ivar outboxIdleTimeout: seconds an idle temporary relay stays open.
    @ivar outboxLookupTimeout: seconds a relay list lookup waits for the
        discovery relays.
    @ivar outboxRelayLists: how many relay lists the outbox model keeps.
    @ivar outboxMaxTagged: how many tagged pubkeys' read relays a publish
        also goes to.
    @ivar verifyThreads: threads verifying the events from relays (0: on
        the reactor thread).
    @ivar verifyQueueSize: events from relays waiting for their check
        before reading from the relays pauses.
    @ivar maxVerifying: client EVENTs waiting for their signature check
        before more are answered rate-limited.
    @ivar redis: the cluster's Redis server (C{redis://HOST:PORT/DB}), or
        L{None} for a single node.
    @ivar nodeId: this node's id in the cluster; L{None} for a generated
        one.
    @ivar redisOptional: start as a single node when Redis cannot be
        reached at start, instead of refusing to start.
    @ivar leaseTime: seconds a filter set's lease lasts without renewal.
    @ivar clusterHistory: events kept in Redis per filter set.
    @ivar outboxClaimTime: seconds an entry of the cluster's outbox stays
        idle (its node died) before another node publishes it.
    @ivar listen: the gateway's Twisted server endpoint string.
    @ivar okPolicy: when a downstream C{EVENT} is answered C{OK true}:
        C{"quorum"} once C{quorum} relays accepted it, C{"local"} once the
        store committed it (it is then published upstream in the background),
        C{"auto"} for C{"quorum"} when relays are configured and C{"local"}
        otherwise. See L{effectiveOkPolicy}.
    @ivar storeMaxEvents: the store's event bound; 0 means none.
    @ivar storeMaxBytes: the store's size bound in bytes; 0 means none.
    @ivar storeCacheBytes: the page cache of each of the store's two
        database connections, in bytes.
    @ivar statusInterval: seconds between per-relay status log lines; 0
        turns them off.
    @ivar statusPageInterval: seconds between two samples of the status
        page's history.
    @ivar statusPageHistory: samples the status page's history keeps.
    @ivar limits: the gateway's limits, one setting for each field of
        L{GatewayLimits}.
    @ivar allowPubkeys: the authors who may publish under
        C{writeRestricted}.
    @ivar denyPubkeys: authors whose events are refused and not served.
    @ivar allowKinds: if any, the only kinds clients may publish.
    @ivar denyKinds: kinds refused and not served.
    @ivar writeRestricted: only C{allowPubkeys} may publish.
    @ivar adminPubkeys: the pubkeys allowed to use the NIP-86 management
        API; none turns it off.
    @ivar adminAuthWindow: seconds a NIP-98 authorization's C{created_at}
        may be from the daemon's clock.
    @ivar outageSync: when a relay comes back after an outage, sync (NIP-77,
        down) the filters of the subscriptions it serves over the outage.
    @ivar outageLookback: seconds before the outage the outage sync covers.
    @ivar syncFilters: filters synced with every relay each C{syncInterval}
        seconds, in C{syncDirection}.
    @ivar syncMaxRecords: the stored events one filter of a sync may cover.
    """

    relays: tuple[RelaySpec, ...] = ()
    listen: str = "tcp:7777:interface=127.0.0.1"
    connectionsPerAddress: int = 1
    quorum: int = 1
    eoseTimeout: float = 10.0
    publishTimeout: float = 10.0
    dedupSize: int = 10_000
    ringCapacity: int = 4096
    broadcastCapacity: int = 64
    maxRelays: int = 20
    verify: bool = True
    authRequired: bool = False
    relayURL: str | None = None
    store: str = "relaypool.db"
    storeMaxEvents: int = 0
    storeMaxBytes: int = 0
    storeCacheBytes: int = 256 * 1024 * 1024
    okPolicy: str = "auto"
    outboxMaxAge: float = 7 * 86400.0
    outboxMaxEvents: int = 10_000
    limits: GatewayLimits = DEFAULT_LIMITS
    statusInterval: float = 60.0
    outageSync: bool = True
    outageLookback: float = 3600.0
    syncFilters: tuple[Filter, ...] = ()
    syncInterval: float = 3600.0
    syncDirection: str = "down"
    syncMaxRecords: int = 250_000
    statusPageInterval: float = DEFAULT_SAMPLE_INTERVAL
    statusPageHistory: int = DEFAULT_HISTORY
    name: str = "relaypool"
    description: str = "a Nostr relay pool: one connection to many relays"
    allowPubkeys: tuple[str, ...] = ()
    denyPubkeys: tuple[str, ...] = ()
    allowKinds: tuple[int, ...] = ()
    denyKinds: tuple[int, ...] = ()
    writeRestricted: bool = False
    adminPubkeys: tuple[str, ...] = ()
    adminAuthWindow: float = 60.0
    relayAllow: tuple[str, ...] = ()
    relayDeny: tuple[str, ...] = ()
    outboxModel: bool = False
    outboxRelaysPerAuthor: int = 2
    outboxIdleTimeout: float = 300.0
    outboxLookupTimeout: float = 5.0
    outboxRelayLists: int = 10000
    outboxMaxTagged: int = 20
    verifyThreads: int = 1
    verifyQueueSize: int = 1024
    maxVerifying: int = 10000
    redis: str | None = None
    nodeId: str | None = None
    redisOptional: bool = False
    leaseTime: float = 5.0
    clusterHistory: int = 500
    outboxClaimTime: float = 60.0

    def relayURLs(self, role: str | None = None) -> tuple[str, ...]:
        """
        @param role: C{"read"}, C{"write"} or C{"discovery"}, for the relays
            with that role.
        @return: the URLs of every configured relay, or of those with
            C{role}.
        """
        if role is None:
            return tuple(spec.url for spec in self.relays)
        if role not in _ROLES:
            raise ValueError(f"role must be one of {', '.join(_ROLES)}, got {role!r}")
        return tuple(spec.url for spec in self.relays if getattr(spec, role))

    def admitPolicy(self) -> RelayPatterns | None:
        """
        @return: the pool's admit policy from C{relayAllow} and
            C{relayDeny}, or L{None} without patterns.
        """
        if not (self.relayAllow or self.relayDeny):
            return None
        return RelayPatterns(allow=self.relayAllow, deny=self.relayDeny)

    def eventPolicy(self) -> EventPolicy:
        """
        @return: the gateway's L{EventPolicy} from these settings: what a
            (re)start or a reload gives to
            L{relaypool.gateway.facade.RelayFacade.setPolicy}.
        """
        return EventPolicy.fromLists(
            self.allowPubkeys,
            self.denyPubkeys,
            self.allowKinds,
            self.denyKinds,
            self.writeRestricted,
        )

    def effectiveOkPolicy(self) -> str:
        """
        @return: C{"quorum"} or C{"local"}, resolving C{"auto"}: C{"quorum"}
            with a write relay, else C{"local"}.
        """
        if self.okPolicy != "auto":
            return self.okPolicy
        return "quorum" if self.relayURLs("write") else "local"


class _Invalid(Exception):
    """
    A value failed a parser; the message completes C{"<key>: "}.
    """


_Parser = Callable[[object, bool], Any]


def _shown(value: object) -> str:
    """
    @return: C{value} as a person wrote it: strings in double quotes.
    """
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _number(kind: type, minimum: float, description: str) -> _Parser:
    """
    @return: a parser of C{int} or C{float} (per C{kind}) values at least
        C{minimum}, accepting text when it comes from the command line.
    """

    def parse(value: object, fromText: bool) -> int | float:
        number: object = value
        if fromText and isinstance(value, str):
            try:
                number = kind(value.strip())
            except ValueError:
                raise _Invalid(f"must be {description}, got {_shown(value)}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _Invalid(f"must be {description}, got {_shown(value)}")
        if kind is int and not isinstance(number, int):
            raise _Invalid(f"must be {description}, got {_shown(value)}")
        if number != number or number in (float("inf"), float("-inf")) or number < minimum:
            raise _Invalid(f"must be {description}, got {_shown(value)}")
        return kind(number)  # type: ignore[no-any-return]

    return parse


def _flag(value: object, fromText: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        raise _Invalid(f"must be true or false without quotes, got the string {_shown(value)}")
    raise _Invalid(f"must be true or false, got {_shown(value)}")


def _text(value: object, fromText: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string, got {_shown(value)}")
    return value.strip()


def _choice(*choices: str) -> _Parser:
    def parse(value: object, fromText: bool) -> str:
        if value not in choices:
            listed = ", ".join(_shown(c) for c in choices)
            raise _Invalid(f"must be one of {listed}, got {_shown(value)}")
        assert isinstance(value, str)
        return value

    return parse


def validateRelayURL(url: str) -> str:
    """
    Check that C{url} is a relay URL.

    @return: C{url} without surrounding blanks.
    @raise InvalidRelayURL: if it is not a C{ws://} or C{wss://} URL with a
        host (and a valid port, if any).
    """
    parseRelayURL(url)
    return url.strip()


def _relayURL(value: object, fromText: bool) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a ws:// or wss:// URL, got {_shown(value)}")
    try:
        return validateRelayURL(value)
    except InvalidRelayURL as e:
        raise _Invalid(str(e)) from None


def _redisURL(value: object, fromText: bool) -> str:
    from relaypool.cluster.link import parseRedisURL

    text = _text(value, fromText)
    try:
        parseRedisURL(text)
    except ValueError as e:
        raise _Invalid(str(e)) from None
    return text


def _shownTable(table: Mapping[Any, object]) -> str:
    """
    @return: C{table} as a TOML inline table (C{{url = "ws://a", read = true}}).
    """
    return "{" + ", ".join(f"{key} = {_shown(value)}" for key, value in table.items()) + "}"


_RELAY_TABLE_EXAMPLE = '{url = "wss://...", read = true, write = false, discovery = false}'


def _relay(value: object, fromText: bool) -> RelaySpec:
    """
    A relay: a URL (read and write), or a table of its C{url} and roles
    (C{read} and C{write}, true when missing, and C{discovery}, false when
    missing).
    """
    if isinstance(value, RelaySpec):
        return value
    if isinstance(value, str):
        return RelaySpec(_relayURL(value, fromText))
    if not isinstance(value, Mapping):
        raise _Invalid(
            f"a relay is a ws:// or wss:// URL or a table such as {_RELAY_TABLE_EXAMPLE},"
            f" got {_shown(value)}"
        )
    shown = _shownTable(value)
    for key in value:
        if key not in ("url", *_ROLES):
            close = difflib.get_close_matches(str(key), ["url", *_ROLES], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _Invalid(
                f"{shown}: unknown key {_shown(key)}{hint}; a relay table has url, read, write"
                " and discovery"
            )
    if "url" not in value:
        raise _Invalid(f"{shown} has no url: write it as {_RELAY_TABLE_EXAMPLE}")
    roles: dict[str, bool] = {}
    for role in _ROLES:
        flag = value.get(role, role != "discovery")
        if not isinstance(flag, bool):
            raise _Invalid(f"{shown}: {role} must be true or false, got {_shown(flag)}")
        roles[role] = flag
    try:
        url = _relayURL(value["url"], fromText)
    except _Invalid as e:
        raise _Invalid(f"{shown}: url {e}") from None
    if not any(roles.values()):
        raise _Invalid(
            f"{shown} has no role: set read, write or discovery to true, or remove the relay"
        )
    return RelaySpec(url, **roles)


def _relays(value: object, fromText: bool) -> tuple[RelaySpec, ...]:
    """
    A list of relays (see L{_relay}), in order; a relay given again (by its
    normalized URL) gets the roles of both.
    """
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _Invalid(
            f"must be a list of ws:// or wss:// URLs or relay tables, got {_shown(value)}"
        )
    merged: dict[str, RelaySpec] = {}
    for element in value:
        spec = _relay(element, fromText)
        key = spec.normalized()
        merged[key] = merged[key].mergedWith(spec) if key in merged else spec
    return tuple(merged.values())


def _relayPattern(value: object, fromText: bool) -> str:
    """
    A shell pattern (C{*}, C{?}, C{[...]}) matched against a relay's
    normalized URL and its host.
    """
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise _Invalid(
            'must be a shell pattern without blanks such as "*.onion" or'
            f' "wss://relay.example/", got {_shown(value)}'
        )
    return value.strip()


def _listOf(item: _Parser, description: str) -> _Parser:
    """
    @return: a parser of a list of values each parsed by C{item}, without
        repeats, in order.
    """

    def parse(value: object, fromText: bool) -> tuple[Any, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise _Invalid(f"must be a list of {description}, got {_shown(value)}")
        return tuple(dict.fromkeys(item(element, fromText) for element in value))

    return parse


def _syncFilter(value: object, fromText: bool) -> Filter:
    """
    A NIP-01 filter: a TOML table, or its JSON text (command line,
    environment).
    """
    if isinstance(value, Filter):
        return value
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise _Invalid(f"must be a JSON filter such as '{{\"kinds\": [0, 3]}}', got {_shown(value)}") from None
    try:
        return Filter.fromDict(value)
    except InvalidFilter as e:
        raise _Invalid(f"{_shown(value)} is not a valid filter: {e}") from None


def _pubkey(value: object, fromText: bool) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise _Invalid(f"{_shown(value)} is not a public key in hex (64 hex characters)")
    return text


def _kind(value: object, fromText: bool) -> int:
    kind = value
    if fromText and isinstance(value, str) and value.strip().isdigit():
        kind = int(value.strip())
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 65535:
        raise _Invalid(f"{_shown(value)} is not an event kind (an integer 0-65535)")
    return kind


def _storePath(value: object, fromText: bool) -> str:
    text = _text(value, fromText)
    if text != ":memory:":
        directory = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(directory):
            raise _Invalid(f"the directory {directory} of {_shown(text)} does not exist")
    return text


def _endpoint(value: object, fromText: bool) -> str:
    from twisted.internet.endpoints import serverFromString

    text = _text(value, fromText)
    try:
        # Parsing needs no reactor: the endpoint is built, never listened on.
        serverFromString(None, text)  # type: ignore[no-untyped-call]
    except (KeyError, IndexError) as e:
        if text.startswith("systemd:"):
            raise _Invalid(
                f"{_shown(text)}: systemd passed no such socket to this process (start it from"
                " a .socket unit; LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES must be set)"
            ) from None
        raise _Invalid(f"{_shown(text)} is not a Twisted server endpoint string: {e}") from None
    except (ValueError, TypeError, OSError) as e:
        raise _Invalid(f"{_shown(text)} is not a Twisted server endpoint string: {e}") from None
    return text


@dataclass(frozen=True, slots=True)
class Setting:
    """
    One setting: its key in a TOML file (the long option name), the L{Config}
    attribute it sets, and its help text.

    @ivar option: for a list, the repeatable command-line option adding one
        item (C{relay} for C{relays}); L{None} for any other setting.
    @ivar item: for a list, the parser of one item, else L{None}.
    @ivar separator: for a list, the pattern separating its items in an
        environment variable.
    """

    key: str
    attribute: str
    help: str
    parse: _Parser
    option: str | None = None
    item: _Parser | None = None
    separator: str = r"[\s,]+"

    def parseItem(self, value: str) -> object:
        """
        Check one item of a list given on the command line.

        @return: the parsed item.
        @raise ConfigError: naming the repeatable option, if it is invalid.
        """
        assert self.item is not None and self.option is not None, "only lists have items"
        try:
            return self.item(value, True)
        except _Invalid as e:
            raise ConfigError(f"--{self.option}", str(e)) from None

    def isLimit(self) -> bool:
        """
        @return: whether the setting is one of the gateway's limits, a field
            of L{GatewayLimits} (in L{Config.limits}).
        """
        return self.attribute in _LIMIT_FIELDS

    def default(self) -> object:
        """
        @return: the setting's default, from L{Config}, or from
            L{GatewayLimits} for one of the gateway's limits.
        """
        if self.isLimit():
            return getattr(DEFAULT_LIMITS, self.attribute)
        return _DEFAULTS[self.attribute]

    def isFlag(self) -> bool:
        """
        @return: whether the setting is a boolean (a flag on the command
            line).
        """
        return isinstance(self.default(), bool)

    def variable(self) -> str:
        """
        @return: the environment variable of the setting, C{RELAYPOOL_} and
            its key upper-cased with C{_} for C{-} (C{RELAYPOOL_DEDUP_SIZE}).
        """
        return ENVIRONMENT_PREFIX + self.key.upper().replace("-", "_")


_POSITIVE_INT = _number(int, 1, "a positive integer")
_COUNT = _number(int, 0, "an integer >= 0")
_POSITIVE_SECONDS = _number(float, 1e-3, "a number of seconds >= 0.001")
_SECONDS = _number(float, 0, "a number of seconds >= 0")
_RATE = _number(float, 1e-3, "a positive number")

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "relays",
        "relays",
        "upstream relays: URLs (ws:// or wss://, read and write) or tables with roles",
        _relays,
        "relay",
        _relay,
    ),
    Setting("listen", "listen", "the gateway's Twisted server endpoint", _endpoint),
    Setting(
        "connections-per-address",
        "connectionsPerAddress",
        "connections to each address of each relay",
        _POSITIVE_INT,
    ),
    Setting("quorum", "quorum", "relays that must accept a published event", _POSITIVE_INT),
    Setting(
        "eose-timeout", "eoseTimeout", "seconds to wait for every relay's EOSE", _POSITIVE_SECONDS
    ),
    Setting(
        "publish-timeout", "publishTimeout", "seconds to wait for relays' OK", _POSITIVE_SECONDS
    ),
    Setting("dedup-size", "dedupSize", "event ids remembered for deduplication", _POSITIVE_INT),
    Setting(
        "ring-capacity",
        "ringCapacity",
        "inbound messages queued before pausing relays",
        _POSITIVE_INT,
    ),
    Setting(
        "broadcast-capacity",
        "broadcastCapacity",
        "outbound messages queued per relay before dropping",
        _POSITIVE_INT,
    ),
    Setting("max-relays", "maxRelays", "the most upstream relays", _POSITIVE_INT),
    Setting("verify", "verify", "verify event ids and signatures from relays", _flag),
    Setting("auth-required", "authRequired", "require NIP-42 AUTH from clients", _flag),
    Setting(
        "relay-url",
        "relayURL",
        "the gateway's public URL, that NIP-42 AUTH events must name; "
        "default: ws://<Host header>/ (wss:// over TLS or with X-Forwarded-Proto: https)",
        _relayURL,
    ),
    Setting("store", "store", "the SQLite event store file, or :memory:", _storePath),
    Setting("store-max-events", "storeMaxEvents", "events kept in the store; 0: no bound", _COUNT),
    Setting("store-max-bytes", "storeMaxBytes", "bytes the store may use; 0: no bound", _COUNT),
    Setting(
        "store-cache-bytes",
        "storeCacheBytes",
        "page cache of each of the store's two database connections, in bytes",
        _POSITIVE_INT,
    ),
    Setting(
        "ok-policy",
        "okPolicy",
        "OK true after QUORUM relays accepted, or once stored LOCALly; "
        "AUTO: quorum with relays, local without",
        _choice(*OK_POLICIES),
    ),
    Setting(
        "outbox-max-age",
        "outboxMaxAge",
        "seconds an event is retried for relays that neither accepted nor finally refused it",
        _POSITIVE_SECONDS,
    ),
    Setting("outbox-max-events", "outboxMaxEvents", "events waiting in the outbox", _POSITIVE_INT),
    Setting("max-subscriptions", "maxSubscriptions", "subscriptions per client", _POSITIVE_INT),
    Setting("max-filters", "maxFilters", "filters per REQ", _POSITIVE_INT),
    Setting(
        "max-limit", "maxLimit", "the largest filter limit (larger ones are lowered)", _POSITIVE_INT
    ),
    Setting(
        "max-message-size", "maxMessageSize", "the largest client message in bytes", _POSITIVE_INT
    ),
    Setting("events-per-second", "eventsPerSecond", "EVENTs per second per client", _RATE),
    Setting("event-burst", "eventBurst", "EVENTs a client may send at once", _POSITIVE_INT),
    Setting("reqs-per-second", "reqsPerSecond", "REQs and COUNTs per second per client", _RATE),
    Setting("req-burst", "reqBurst", "REQs and COUNTs a client may send at once", _POSITIVE_INT),
    Setting(
        "max-connections-per-ip",
        "maxConnectionsPerIP",
        "client connections from one IP address",
        _POSITIVE_INT,
    ),
    Setting(
        "max-pending-bytes",
        "maxPendingBytes",
        "bytes waiting for a client before it counts as behind the live stream",
        _POSITIVE_INT,
    ),
    Setting(
        "max-lag",
        "maxLag",
        "seconds a client may stay behind (over max-pending-bytes) before it is evicted",
        _POSITIVE_SECONDS,
    ),
    Setting(
        "max-backlog-bytes",
        "maxBacklogBytes",
        "bytes waiting for a client at which it is evicted at once (memory guard)",
        _POSITIVE_INT,
    ),
    Setting(
        "max-catch-up-events",
        "maxCatchUpEvents",
        "new events held for a subscription while its stored events are sent",
        _POSITIVE_INT,
    ),
    Setting(
        "store-page-events",
        "storePageEvents",
        "stored events a REQ's answer reads from the store at a time",
        _POSITIVE_INT,
    ),
    Setting(
        "max-subscription-id-length",
        "maxSubscriptionIdLength",
        "characters in a subscription id (at most 64, NIP-01's bound)",
        _POSITIVE_INT,
    ),
    Setting("ping-interval", "pingInterval", "seconds between pings of clients", _POSITIVE_SECONDS),
    Setting("max-idle", "maxIdle", "seconds a silent client stays connected", _POSITIVE_SECONDS),
    Setting(
        "max-request-line",
        "maxRequestLine",
        "bytes in an HTTP request line (longer: HTTP 414)",
        _POSITIVE_INT,
    ),
    Setting(
        "max-header-bytes",
        "maxHeaderBytes",
        "bytes in an HTTP request line and headers (more: HTTP 431)",
        _POSITIVE_INT,
    ),
    Setting("max-headers", "maxHeaders", "HTTP request headers (more: HTTP 431)", _POSITIVE_INT),
    Setting(
        "status-interval",
        "statusInterval",
        "seconds between per-relay status log lines; 0: none",
        _SECONDS,
    ),
    Setting(
        "max-body-bytes",
        "maxBodyBytes",
        "bytes in an HTTP request body (NIP-86 calls; more: HTTP 413)",
        _POSITIVE_INT,
    ),
    Setting("neg-max-syncs", "negMaxSyncs", "NIP-77 syncs open at once per client", _POSITIVE_INT),
    Setting(
        "neg-max-records",
        "negMaxRecords",
        "stored events one NIP-77 sync may cover (more: NEG-ERR blocked)",
        _POSITIVE_INT,
    ),
    Setting(
        "neg-frame-size",
        "negFrameSize",
        "bytes in a negentropy message sent to a client (at least 4096)",
        _POSITIVE_INT,
    ),
    Setting(
        "neg-idle-timeout",
        "negIdleTimeout",
        "seconds a NIP-77 sync waits for the client's next NEG-MSG",
        _POSITIVE_SECONDS,
    ),
    Setting(
        "status-page-interval",
        "statusPageInterval",
        "seconds between two samples of the status page's charts",
        _POSITIVE_SECONDS,
    ),
    Setting(
        "status-page-history",
        "statusPageHistory",
        "samples the status page's charts keep (the oldest is dropped)",
        _number(int, 2, "an integer >= 2"),
    ),
    Setting("name", "name", "the gateway's NIP-11 name", _text),
    Setting("description", "description", "the gateway's NIP-11 description", _text),
    Setting(
        "allow-pubkeys",
        "allowPubkeys",
        "a pubkey (hex) that may publish under write-restricted",
        _listOf(_pubkey, "public keys in hex"),
        "allow-pubkey",
        _pubkey,
    ),
    Setting(
        "deny-pubkeys",
        "denyPubkeys",
        "a pubkey (hex) whose events are refused (blocked:) and not served",
        _listOf(_pubkey, "public keys in hex"),
        "deny-pubkey",
        _pubkey,
    ),
    Setting(
        "allow-kinds",
        "allowKinds",
        "an event kind clients may publish; with any, only those (restricted:)",
        _listOf(_kind, "event kinds"),
        "allow-kind",
        _kind,
    ),
    Setting(
        "deny-kinds",
        "denyKinds",
        "an event kind refused (blocked:) and not served",
        _listOf(_kind, "event kinds"),
        "deny-kind",
        _kind,
    ),
    Setting(
        "outage-sync",
        "outageSync",
        "after a relay's outage, or a cluster node's handover of a filter set, sync (NIP-77)"
        " the filters over it",
        _flag,
    ),
    Setting(
        "outage-lookback",
        "outageLookback",
        "seconds before a relay went down (or a handover's newest event) that the outage sync"
        " reaches back",
        _SECONDS,
    ),
    Setting(
        "sync-filters",
        "syncFilters",
        "a filter (JSON) synced with every relay each sync-interval (NIP-77)",
        _listOf(_syncFilter, "filters"),
        "sync",
        _syncFilter,
        r"\n+",
    ),
    Setting(
        "sync-interval", "syncInterval", "seconds between two syncs of the sync filters", _POSITIVE_SECONDS
    ),
    Setting(
        "sync-direction",
        "syncDirection",
        "DOWN: fetch what the store lacks; UP: send what relays lack; BOTH",
        _choice("down", "up", "both"),
    ),
    Setting(
        "sync-max-records",
        "syncMaxRecords",
        "stored events one filter of a sync may cover",
        _POSITIVE_INT,
    ),
    Setting(
        "write-restricted",
        "writeRestricted",
        "let only the allow-pubkeys publish (restricted:)",
        _flag,
    ),
    Setting(
        "admin-pubkeys",
        "adminPubkeys",
        "a pubkey (hex) allowed to use the NIP-86 management API (none: API off)",
        _listOf(_pubkey, "public keys in hex"),
        "admin-pubkey",
        _pubkey,
    ),
    Setting(
        "admin-auth-window",
        "adminAuthWindow",
        "seconds a NIP-98 authorization's created_at may be from the daemon's clock",
        _POSITIVE_SECONDS,
    ),
    Setting(
        "relay-allow",
        "relayAllow",
        "a pattern (shell glob on a relay's URL or host); with any, only matching relays are used",
        _listOf(_relayPattern, "patterns"),
        "relay-allow",
        _relayPattern,
    ),
    Setting(
        "relay-deny",
        "relayDeny",
        "a pattern (shell glob on a relay's URL or host, e.g. *.onion) of relays never used",
        _listOf(_relayPattern, "patterns"),
        "relay-deny",
        _relayPattern,
    ),
    Setting(
        "outbox-model",
        "outboxModel",
        "route subscriptions with authors to the authors' relays (NIP-65 relay lists)",
        _flag,
    ),
    Setting(
        "outbox-relays-per-author",
        "outboxRelaysPerAuthor",
        "relays of each author the outbox model uses",
        _POSITIVE_INT,
    ),
    Setting(
        "outbox-idle-timeout",
        "outboxIdleTimeout",
        "seconds a relay the outbox model opened stays open unused",
        _SECONDS,
    ),
    Setting(
        "outbox-lookup-timeout",
        "outboxLookupTimeout",
        "seconds the outbox model waits for relay lists from the discovery relays",
        _SECONDS,
    ),
    Setting(
        "outbox-relay-lists",
        "outboxRelayLists",
        "relay lists (kind 10002) the outbox model keeps in memory",
        _POSITIVE_INT,
    ),
    Setting(
        "verify-threads",
        "verifyThreads",
        "threads verifying the events from relays (0: on the reactor thread)",
        _COUNT,
    ),
    Setting(
        "verify-queue-size",
        "verifyQueueSize",
        "events from relays waiting for their signature check before reading pauses",
        _POSITIVE_INT,
    ),
    Setting(
        "max-verifying",
        "maxVerifying",
        "client EVENTs waiting for their signature check before more are answered rate-limited",
        _POSITIVE_INT,
    ),
    Setting(
        "outbox-max-tagged",
        "outboxMaxTagged",
        "tagged pubkeys (p tags) of a published event whose read relays get it too",
        _POSITIVE_INT,
    ),
    Setting(
        "redis",
        "redis",
        "the cluster's Redis server, redis://HOST:PORT/DB: this node shares upstream"
        " subscriptions with the other nodes on it",
        _redisURL,
    ),
    Setting(
        "node-id",
        "nodeId",
        "this node's id in the cluster; default: host name, process id and random bits",
        _text,
    ),
    Setting(
        "redis-optional",
        "redisOptional",
        "start as a single node when Redis is unreachable at start (else refuse to start)",
        _flag,
    ),
    Setting(
        "lease-time",
        "leaseTime",
        "seconds a filter set's lease lasts unrenewed: the longest it has no owner after"
        " its node died",
        _number(float, 0.3, "a number of seconds >= 0.3"),
    ),
    Setting(
        "cluster-history",
        "clusterHistory",
        "events kept in Redis per filter set: the most stored events a client of another"
        " node gets from it",
        _POSITIVE_INT,
    ),
    Setting(
        "outbox-claim-time",
        "outboxClaimTime",
        "seconds an event in the cluster's outbox waits, when its node died, before another"
        " node publishes it (more than publish-timeout)",
        _POSITIVE_SECONDS,
    ),
)

RELAY_ROLE_VARIABLES: Mapping[str, RelaySpec] = {
    "RELAYPOOL_READ_RELAYS": RelaySpec("", read=True, write=False),
    "RELAYPOOL_WRITE_RELAYS": RelaySpec("", read=False, write=True),
    "RELAYPOOL_DISCOVERY_RELAYS": RelaySpec("", read=False, write=False, discovery=True),
}
"""
The environment variables adding relays with one role to the C{relays}
setting, as the C{--read-relay}, C{--write-relay} and C{--discovery-relay}
options do; each maps to the roles it gives.
"""

ENVIRONMENT_PREFIX = "RELAYPOOL_"
"""
The prefix of the environment variables of settings (L{Setting.variable}).
"""

CONFIG_VARIABLE = ENVIRONMENT_PREFIX + "CONFIG"
"""
The environment variable naming the config file when C{--config} is not
given.
"""

KEY_VARIABLE = ENVIRONMENT_PREFIX + "KEY"
"""
The environment variable C{relaypool publish} reads a hex private key from
when neither C{--key} nor C{--key-file} is given; the daemon leaves it alone.
"""

_DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(Config)}
_LIMIT_FIELDS = frozenset(f.name for f in fields(GatewayLimits))
_BY_KEY = {setting.key: setting for setting in SETTINGS}
_BY_ATTRIBUTE = {setting.attribute: setting for setting in SETTINGS}
_BY_VARIABLE = {setting.variable(): setting for setting in SETTINGS}
_FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def loadConfigFile(path: str) -> dict[str, Any]:
    """
    Read a TOML config file.

    @return: its top-level table.
    @raise ConfigError: (key C{config}) if the file cannot be read or is not
        TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def _unknown(key: str) -> str:
    """
    @return: the error message for the unknown setting C{key}, with the
        closest known one as a hint.
    """
    close = difflib.get_close_matches(key.replace("_", "-"), list(_BY_KEY), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting{hint}"


def environmentValues(environ: Mapping[str, str]) -> dict[str, object]:
    """
    Find the settings given as environment variables (see the module
    docstring): every variable starting with L{ENVIRONMENT_PREFIX}, except
    L{CONFIG_VARIABLE} and L{KEY_VARIABLE}.

    @return: their text by setting key, for L{buildConfig}'s C{environment};
        lists (C{relays}, C{deny-kinds}, ...) as lists, flags as booleans.
    @raise ConfigError: naming the variable, for an unknown one (with the
        closest known one as a hint) or a flag that is not a yes or a no.
    """
    values: dict[str, object] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENVIRONMENT_PREFIX) or name in (CONFIG_VARIABLE, KEY_VARIABLE):
            continue
        roles = RELAY_ROLE_VARIABLES.get(name)
        if roles is not None:
            relays = values.setdefault("relays", [])
            assert isinstance(relays, list)
            for url in re.split(r"[\s,]+", text):
                if url.strip():
                    try:
                        relays.append(replace(roles, url=_relayURL(url, True)))
                    except _Invalid as e:
                        raise ConfigError(name, str(e)) from None
            continue
        setting = _BY_VARIABLE.get(name)
        if setting is None:
            known = [*_BY_VARIABLE, *RELAY_ROLE_VARIABLES, CONFIG_VARIABLE]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(name, f"unknown setting{hint}")
        if setting.option is not None:
            items = [item for item in re.split(setting.separator, text) if item.strip()]
            added = values.get(setting.key)
            values[setting.key] = items + (added if isinstance(added, list) else [])
        elif setting.isFlag():
            flag = _FLAG_WORDS.get(text.strip().lower())
            if flag is None:
                raise ConfigError(name, f"must be true or false (or yes, no, 1, 0), got {_shown(text)}")
            values[setting.key] = flag
        else:
            values[setting.key] = text
    return values


def buildConfig(
    fileValues: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    fileName: str | None = None,
    environment: Mapping[str, object] | None = None,
) -> Config:
    """
    Validate settings and build a L{Config}.

    @param fileValues: settings from a config file, by key (see the module
        docstring), with TOML types.
    @param overrides: settings from the command line, by the same keys,
        overriding C{environment} and C{fileValues}; numbers may be given as
        text.
    @param fileName: where C{fileValues} come from, named in their errors.
    @param environment: settings from environment variables, by key (see
        L{environmentValues}), overriding C{fileValues}; their errors name
        the variable.
    @raise ConfigError: naming the first invalid key, e.g. C{quorum: must be
        a positive integer, got "two"}, and the file it is in, if any (or
        the variable, C{RELAYPOOL_QUORUM: ...}).
    """
    values: dict[str, object] = {}
    limits: dict[str, object] = {}
    fromFile = f" (in {fileName})" if fileName else ""

    def variable(key: str) -> str:
        setting = _BY_KEY.get(key)
        return key if setting is None else setting.variable()

    sources: tuple[tuple[Mapping[str, object], bool, Callable[[str], str], str], ...] = (
        (fileValues or {}, False, str, fromFile),
        (environment or {}, True, variable, ""),
        (overrides or {}, True, str, ""),
    )
    for source, fromText, named, where in sources:
        for key, value in source.items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError(named(key), f"{_unknown(key)}{where}")
            try:
                parsed = setting.parse(value, fromText)
            except _Invalid as e:
                raise ConfigError(named(key), f"{e}{where}") from None
            (limits if setting.isLimit() else values)[setting.attribute] = parsed
    _checkLimitsTogether(limits)
    try:
        gatewayLimits = GatewayLimits(**limits)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ConfigError(_BY_ATTRIBUTE[e.key].key, e.message) from None
    config = Config(limits=gatewayLimits, **values)  # type: ignore[arg-type]
    _checkTogether(config)
    return config


@dataclass(frozen=True, slots=True)
class ConfigSources:
    """
    Where the daemon's settings come from, kept to read them again (on
    C{SIGHUP}) with the same precedence: command line > environment > file >
    default.

    @ivar path: the config file (C{--config}, else C{RELAYPOOL_CONFIG}), or
        L{None}.
    @ivar environment: the C{RELAYPOOL_} environment variables.
    @ivar overrides: the settings given on the command line, by key.
    """

    path: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def fromEnvironment(
        cls, environ: Mapping[str, str], path: str | None, overrides: Mapping[str, object]
    ) -> ConfigSources:
        """
        @param environ: the process's environment (L{os.environ}); only its
            C{RELAYPOOL_} variables are kept.
        @param path: the C{--config} option, or L{None} to use
            C{RELAYPOOL_CONFIG}, if set and not empty.
        @param overrides: the command line's settings, by key.
        """
        ours = {k: v for k, v in environ.items() if k.startswith(ENVIRONMENT_PREFIX)}
        if path is None:
            path = ours.get(CONFIG_VARIABLE) or None
        return cls(path, ours, dict(overrides))

    def load(self) -> Config:
        """
        Read the config file (if any) and build the L{Config}, validating
        everything.

        @raise ConfigError: one line naming what is wrong.
        """
        environment = environmentValues(self.environment)
        fileValues = loadConfigFile(self.path) if self.path else {}
        return buildConfig(fileValues, self.overrides, self.path, environment)


def _checkLimitsTogether(limits: Mapping[str, object]) -> None:
    """
    Check the gateway limits that constrain each other, naming the options
    (L{GatewayLimits} checks them too, naming its fields).

    @raise ConfigError: naming the key that is out of line.
    """
    pending = limits.get("maxPendingBytes", DEFAULT_LIMITS.maxPendingBytes)
    backlog = limits.get("maxBacklogBytes", DEFAULT_LIMITS.maxBacklogBytes)
    assert isinstance(pending, int) and isinstance(backlog, int)
    if backlog < pending:
        raise ConfigError(
            "max-backlog-bytes",
            f"must be at least max-pending-bytes ({pending}), got {backlog}",
        )


def _checkTogether(config: Config) -> None:
    """
    Check the settings that constrain each other.

    @raise ConfigError: naming the key that is out of line.
    """
    if len(config.relays) > config.maxRelays:
        raise ConfigError(
            "relays", f"{len(config.relays)} relays are more than max-relays ({config.maxRelays})"
        )
    writeRelays = config.relayURLs("write")
    if writeRelays and config.quorum > len(writeRelays):
        raise ConfigError(
            "quorum",
            f"must be at most the number of write relays ({len(writeRelays)}), got {config.quorum}",
        )
    for key, patterns in (
        ("relay-deny", RelayPatterns(deny=config.relayDeny)),
        ("relay-allow", RelayPatterns(allow=config.relayAllow)),
    ):
        for spec in config.relays:
            why = patterns.refusal(spec.normalized())
            if why is not None:
                raise ConfigError(
                    key,
                    f"refuses the configured relay {spec.url} ({why}): remove the relay or"
                    " change the pattern",
                )
    if config.allowPubkeys and not config.writeRestricted:
        raise ConfigError(
            "allow-pubkeys",
            "only matters with write-restricted (only these pubkeys may then publish): "
            "set write-restricted = true, or remove allow-pubkeys",
        )
    if config.syncFilters and not (config.relayURLs("read") or writeRelays):
        raise ConfigError(
            "sync-filters",
            "needs relays to sync with: add a read or write relay (discovery relays are"
            " not synced), or remove the filters",
        )
    if config.okPolicy == "quorum" and not writeRelays:
        raise ConfigError(
            "ok-policy", '"quorum" needs at least one write relay: add one or use "local"'
        )
    if config.redis is not None and not config.relays:
        raise ConfigError(
            "redis",
            "a cluster shares upstream subscriptions, so it needs relays: add one, or"
            " remove --redis",
        )
    if config.redis is not None and config.outboxClaimTime <= config.publishTimeout:
        raise ConfigError(
            "outbox-claim-time",
            f"must be more than publish-timeout ({config.publishTimeout:g} s): a node would"
            " take another's event while it is still being published",
        )
    if config.outboxModel and not config.relays:
        raise ConfigError(
            "outbox-model",
            "needs relays (the pool runs only with relays; a discovery relay finds the"
            " authors' relay lists): add one, or turn the outbox model off",
        )
