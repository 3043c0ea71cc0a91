"""
The C{relaypool} command: the daemon in the foreground, and small clients
of Nostr relays and of a running daemon.

    relaypool run [options]                   the daemon, as twistd -n relaypool
    relaypool req FILTER --relay URL ...      print events as JSON lines
    relaypool publish --relay URL ... ...     sign and publish an event
    relaypool count FILTER --relay URL ...    NIP-45 COUNT
    relaypool status [URL]                    a running daemon's /stats

C{req}, C{publish} and C{count} go through a L{RelayPool}: they connect to
every relay first (at most C{--timeout} seconds), then ask those that
opened. Each command ends with status 0 when it did what it was asked, 1
with one line on standard error saying why otherwise.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage

from relaypool._version import __version__
from relaypool.daemon.config import KEY_VARIABLE, validateRelayURL
from relaypool.daemon.service import Options, makeService
from relaypool.daemon.tryit import DEFAULT_URL, describeFailure
from relaypool.errors import (
    InvalidEvent,
    InvalidFilter,
    InvalidKey,
    InvalidRelayURL,
    PublishFailed,
    RelayPoolError,
    StartupError,
)
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter

__all__ = [
    "CommandFailed",
    "CountOptions",
    "PublishOptions",
    "RelayPoolCommand",
    "ReqOptions",
    "RunOptions",
    "StatusOptions",
    "main",
    "runCommand",
]



class CommandFailed(RelayPoolError):
    """
    A command could not do what it was asked; the message says why, in one
    line.
    """


def _positive(name: str, text: object, integer: bool = False) -> float:
    """
    @return: C{text} as a positive number (an integer if C{integer}).
    @raise usage.UsageError: naming the option C{--name} otherwise.
    """
    kind = "a positive integer" if integer else "a positive number"
    try:
        value = int(str(text)) if integer else float(str(text))
    except ValueError:
        raise usage.UsageError(f"--{name}: must be {kind}, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise usage.UsageError(f"--{name}: must be {kind}, got {text!r}")
    return value


def _parseFilters(*arguments: str) -> tuple[Filter, ...]:
    """
    @param arguments: one argument, a NIP-01 filter as JSON, or a JSON array
        of filters.
    @raise usage.UsageError: saying what is wrong with it.
    """
    if len(arguments) != 1:
        raise usage.UsageError(
            "one FILTER argument is needed, a NIP-01 filter as JSON such as"
            """ '{"kinds": [1], "limit": 10}'"""
            + ("" if not arguments else f", got {len(arguments)} arguments")
        )
    text = arguments[0]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise usage.UsageError(f"FILTER is not JSON: {e}") from None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise usage.UsageError("FILTER: an empty list has no filter")
    try:
        return tuple(Filter.fromDict(item) for item in items)
    except InvalidFilter as e:
        raise usage.UsageError(f"FILTER: {str(e).removeprefix('invalid: ')}") from None


class RunOptions(Options):
    """
    C{relaypool run}: the options of C{twistd relaypool}, word for word.
    """

    command = "relaypool run"


class _ClientOptions(usage.Options):
    """
    The options of a client command: options may come before or after its
    arguments (C{req FILTER --relay URL}).
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse C{options}, its options first whatever their place.
        """
        assert options is not None
        try:
            found, arguments = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for option, value in found:
            takesValue = (
                option[2:] + "=" in self.longOpt
                if option.startswith("--")
                else option[1:] + ":" in self.shortOpt
            )
            ordered += [option, value] if takesValue else [option]
        super().parseOptions([*ordered, "--", *arguments])  # type: ignore[no-untyped-call]

    def opt_version(self) -> None:
        """print relaypool's version and exit"""
        print(f"relaypool {__version__}")
        raise SystemExit(0)


class _PoolOptions(_ClientOptions):
    """
    The options of the commands that talk to relays through a L{RelayPool}.
    """

    optParameters: list[list[str | None]] = [
        ["timeout", "t", "10", "seconds to wait for the relays to connect, and again to answer"],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["relays"] = []

    def opt_relay(self, url: str) -> None:
        """a relay URL (ws:// or wss://); repeatable, at least one"""
        try:
            url = validateRelayURL(url)
        except InvalidRelayURL as e:
            raise usage.UsageError(f"--relay: {e}") from None
        if url not in self["relays"]:
            self["relays"].append(url)

    opt_r = opt_relay

    def postOptions(self) -> None:
        if not self["relays"]:
            raise usage.UsageError("at least one --relay URL is needed")
        self["timeout"] = _positive("timeout", self["timeout"])


class ReqOptions(_PoolOptions):
    """
    C{relaypool req}.
    """

    synopsis = "FILTER --relay URL [--relay URL ...] [--limit N] [--timeout SECONDS]"
    longdesc = (
        "Print the events matching FILTER (a NIP-01 filter as JSON, or a JSON "
        "array of filters) as JSON lines, one event per line, deduplicated "
        "across relays, as they arrive; stop once every relay sent EOSE, or "
        "after --limit events, or --timeout seconds after connecting."
    )
    optParameters: list[list[str | None]] = [
        ["limit", "n", None, "print at most N events, then stop"]
    ]

    filters: tuple[Filter, ...]

    def parseArgs(self, *arguments: str) -> None:
        self.filters = _parseFilters(*arguments)

    def postOptions(self) -> None:
        super().postOptions()
        if self["limit"] is not None:
            self["limit"] = int(_positive("limit", self["limit"], integer=True))


class CountOptions(_PoolOptions):
    """
    C{relaypool count}.
    """

    synopsis = "FILTER --relay URL [--relay URL ...] [--verbose] [--timeout SECONDS]"
    longdesc = (
        "Print how many events match FILTER, by NIP-45 COUNT: the largest "
        "count a relay gave (or, when no relay supports COUNT, the number of "
        "unique events fetched)."
    )
    optFlags = [["verbose", "v", "print each relay's count too"]]

    filters: tuple[Filter, ...]

    def parseArgs(self, *arguments: str) -> None:
        self.filters = _parseFilters(*arguments)


def _parseTag(text: str) -> list[str]:
    """
    @param text: a tag as a JSON array of strings, or its values separated
        by commas (C{t,nostr}).
    @raise usage.UsageError: if it is not one of these.
    """
    if text.lstrip().startswith("["):
        try:
            tag = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise usage.UsageError(f"--tag: {text!r} is not a JSON array: {e}") from None
        if not tag or not all(isinstance(value, str) for value in tag):
            raise usage.UsageError(f"--tag: {text!r} must be a non-empty array of strings")
        return list(tag)
    tag = text.split(",")
    if not tag[0]:
        raise usage.UsageError(f"--tag: {text!r} has no tag name (try --tag t,nostr)")
    return tag


def _readKey(options: usage.Options) -> str:
    """
    @return: the hex private key of C{--key}, C{--key-file} or
        C{RELAYPOOL_KEY}, in that order.
    @raise usage.UsageError: if there is none, or it cannot be read.
    """
    if options["key"]:
        return str(options["key"]).strip()
    if options["key-file"]:
        path = options["key-file"]
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            raise usage.UsageError(f"--key-file: cannot read {path}: {e.strerror}") from None
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise usage.UsageError(
            f"a key is needed to sign: --key HEX, --key-file PATH or {KEY_VARIABLE}"
            " (or --event FILE with an event signed already)"
        )
    return key


class PublishOptions(_PoolOptions):
    """
    C{relaypool publish}.
    """

    synopsis = (
        "--relay URL [--relay URL ...] (--kind N --content TEXT [--tag T,V ...] "
        "[--key HEX | --key-file PATH] | --event FILE) [--quorum N] [--timeout SECONDS]"
    )
    longdesc = (
        "Publish an event: one built from --kind, --content and --tag and "
        f"signed with the key of --key, --key-file or ${KEY_VARIABLE}, or one "
        "signed already, as JSON in --event FILE (- for standard input). "
        "Prints each relay's answer, one line each, and exits 0 once --quorum "
        "relays accepted it."
    )
    optParameters: list[list[str | None]] = [
        ["kind", "k", "1", "the event's kind"],
        ["content", "c", None, "the event's content"],
        ["key", None, None, f"the author's private key, 64 hex characters (or ${KEY_VARIABLE})"],
        ["key-file", None, None, "a file holding the author's private key in hex"],
        ["event", "e", None, "a signed event as JSON, in this file (- for standard input)"],
        ["quorum", "q", "1", "relays that must accept the event"],
    ]

    event: Event

    def __init__(self) -> None:
        super().__init__()
        self["tags"] = []

    def opt_tag(self, text: str) -> None:
        """a tag: its values separated by commas (t,nostr) or a JSON array; repeatable"""
        self["tags"].append(_parseTag(text))

    def postOptions(self) -> None:
        super().postOptions()
        self["quorum"] = int(_positive("quorum", self["quorum"], integer=True))
        if self["quorum"] > len(self["relays"]):
            raise usage.UsageError(
                f"--quorum: must be at most the number of relays ({len(self['relays'])}),"
                f" got {self['quorum']}"
            )
        self.event = self._signedEvent() if self["event"] else self._newEvent()

    def _signedEvent(self) -> Event:
        if self["content"] is not None or self["tags"]:
            raise usage.UsageError("--event publishes an event as it is: no --content or --tag")
        path = self["event"]
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path) as f:
                    text = f.read()
        except OSError as e:
            raise usage.UsageError(f"--event: cannot read {path}: {e.strerror}") from None
        try:
            event = Event.fromJSON(text)
            event.verify()
        except InvalidEvent as e:
            raise usage.UsageError(f"--event: {str(e).removeprefix('invalid: ')}") from None
        return event

    def _newEvent(self) -> Event:
        if self["content"] is None:
            raise usage.UsageError("--content is needed (or --event FILE)")
        try:
            kind = int(self["kind"])
        except ValueError:
            raise usage.UsageError(f"--kind: must be an integer, got {self['kind']!r}") from None
        if not 0 <= kind <= 65535:
            raise usage.UsageError(f"--kind: must be from 0 to 65535, got {kind}")
        try:
            return Event.sign(_readKey(self), kind, self["content"], self["tags"])
        except InvalidKey as e:
            raise usage.UsageError(f"the key: {e}") from None


def statsURL(url: str) -> str:
    """
    @param url: a daemon's address: C{http://}, C{https://}, C{ws://} or
        C{wss://}, with or without a path.
    @return: the URL of its C{/stats} page.
    @raise ValueError: if C{url} is none of these.
    """
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http://, https://, ws:// or wss:// URL with a host")
    return urlunsplit((scheme, parts.netloc, "/stats", "", ""))


class StatusOptions(_ClientOptions):
    """
    C{relaypool status}.
    """

    synopsis = f"[URL] [--json] [--timeout SECONDS]   (URL default: {DEFAULT_URL})"
    longdesc = (
        "Read the /stats page of a running relaypool (its http:// or ws:// "
        "address) and print a summary: each relay with its state and health, "
        "the clients, the outbox. --json prints the page as it is."
    )
    optFlags = [["json", "j", "print the /stats document as JSON"]]
    optParameters = [["timeout", "t", "10", "seconds to wait for the answer"]]

    url: str

    def parseArgs(self, url: str = DEFAULT_URL) -> None:
        try:
            self.url = statsURL(url)
        except ValueError as e:
            raise usage.UsageError(f"URL: {e}") from None

    def postOptions(self) -> None:
        self["timeout"] = _positive("timeout", self["timeout"])


class RelayPoolCommand(usage.Options):
    """
    The C{relaypool} command line: one subcommand and its options.
    """

    longdesc = (
        "A Nostr relay pool: run the daemon, or talk to Nostr relays and to a "
        "running relaypool. 'relaypool COMMAND --help' describes each command."
    )
    subCommands = [
        ["run", None, RunOptions, "run the daemon in the foreground (as twistd -n relaypool)"],
        ["req", None, ReqOptions, "print the events matching a filter, as JSON lines"],
        ["publish", None, PublishOptions, "sign and publish an event"],
        ["count", None, CountOptions, "count the events matching a filter (NIP-45)"],
        ["status", None, StatusOptions, "summarize a running daemon's /stats"],
    ]

    opt_version = _ClientOptions.opt_version

    def getSynopsis(self) -> str:
        if self.subCommand is None:
            return "Usage: relaypool COMMAND [options]"
        return "Usage: relaypool"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is needed: run, req, publish, count or status")


def _parse(argv: Sequence[str]) -> RelayPoolCommand:
    """
    @raise CommandFailed: with the two lines to print for invalid options.
    """
    command = RelayPoolCommand()  # type: ignore[no-untyped-call]
    try:
        command.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        name = f"relaypool {command.subCommand}" if command.subCommand else "relaypool"
        raise CommandFailed(f"{name}: {e}\nTry '{name} --help'.") from None
    return command


class _Output:
    """
    Where a command writes: its results to C{stdout}, its failures to
    C{stderr}.
    """

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()


def runCommand(
    reactor: Any,
    argv: Sequence[str],
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Deferred[int]:
    """
    Run the C{relaypool} command line C{argv} (without the program name).

    @return: a Deferred firing with the exit status (for C{run}, firing only
        if the daemon could not start).
    """
    output = _Output(stdout or sys.stdout, stderr or sys.stderr)
    try:
        command = _parse(argv)
    except CommandFailed as e:
        output.stderr.write(f"{e}\n")
        return succeed(1)
    name = command.subCommand
    assert name is not None
    options = command.subOptions
    if name == "run":
        return _run(reactor, options)
    commands: dict[str, Callable[[Any, Any, _Output], Deferred[int]]] = {
        "req": _reqCommand,
        "publish": _publishCommand,
        "count": _countCommand,
        "status": _statusCommand,
    }

    def failed(failure: Any) -> int:
        output.stderr.write(f"relaypool {name}: {describeFailure(failure)}\n")
        return 1

    return commands[name](reactor, options, output).addErrback(failed)


def _run(reactor: Any, options: RunOptions) -> Deferred[int]:
    """
    Run the daemon until a signal stops the reactor: as C{twistd -n
    relaypool}, logging to standard output, but ending with status 0 after
    a clean stop on C{SIGTERM} or C{SIGINT}.
    """
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    daemon = makeService(options)
    try:
        daemon.privilegedStartService()
        daemon.startService()
    except StartupError:
        # The reason was logged as one line; stop what did start.
        return daemon.stopService().addCallback(lambda _: 1)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
    return Deferred()


@inlineCallbacks
def _withPool(
    reactor: Any,
    options: _PoolOptions,
    use: Callable[[Any, list[str]], Deferred[int]],
    failures: dict[str, str] | None = None,
) -> Any:
    """
    Start a L{RelayPool} of C{options}' relays, wait until each opened or
    failed (at most C{--timeout} seconds), call C{use(pool, opened)} with
    the relays that opened, and stop the pool.

    @param use: given the pool and the URLs of the relays that opened (as
        the pool spells them, see L{RelayPool.relayURLs}).
    @param failures: filled with each relay's last connection error, by the
        URL as the pool spells it.
    @return: a Deferred firing with what C{use} fired with.
    @raise CommandFailed: if no relay opened.
    """
    from relaypool.upstream.relaypool import RelayPool

    timeout: float = options["timeout"]
    errors: dict[str, str] = {} if failures is None else failures
    settled: Deferred[None] = Deferred()

    def check() -> None:
        if settled.called:
            return
        states = {url: pool.relay(url).state() for url in relays}
        if all(s == "open" or (url in errors and s != "connecting") for url, s in states.items()):
            settled.callback(None)

    def stateChanged(url: str, slot: Any) -> None:
        if slot.state == "backing-off":
            errors[url] = (slot.lastError or "connection failed").rstrip(".")
        reactor.callLater(0, check)

    pool = RelayPool(
        reactor=reactor, eoseTimeout=timeout, publishTimeout=timeout, onStateChange=stateChanged
    )
    for url in options["relays"]:
        pool.addRelay(url)
    relays = pool.relayURLs()
    pool.startService()

    def expired() -> None:
        if not settled.called:
            settled.callback(None)

    deadline = reactor.callLater(timeout, expired)
    try:
        yield settled
        if deadline.active():
            deadline.cancel()
        opened = [url for url in relays if pool.relay(url).state() == "open"]
        if not opened:
            reasons = "; ".join(
                f"{url}: {errors.get(url, f'no connection within {timeout:g} s')}" for url in relays
            )
            raise CommandFailed(f"no relay answered: {reasons}")
        result = yield use(pool, opened)
    finally:
        if deadline.active():
            deadline.cancel()
        yield pool.stopService()
    return result


def _reqCommand(reactor: Any, options: ReqOptions, output: _Output) -> Deferred[int]:
    limit: int | None = options["limit"]

    def use(pool: Any, opened: list[str]) -> Deferred[int]:
        subscription = pool.subscribe(options.filters, closeOnEOSE=True, relays=opened)
        done: Deferred[int] = Deferred()
        printed = 0

        def event(event: Event, relayURL: str) -> None:
            nonlocal printed
            if done.called:
                return
            output.line(event.toJSON().decode())
            printed += 1
            if limit is not None and printed >= limit:
                done.callback(0)
                subscription.close()

        subscription.onEvent(event)

        def eose() -> None:
            if not done.called:
                done.callback(0)

        subscription.onEOSE(eose)
        return done

    return _withPool(reactor, options, use)


def _publishCommand(reactor: Any, options: PublishOptions, output: _Output) -> Deferred[int]:
    event = options.event
    quorum: int = options["quorum"]
    failures: dict[str, str] = {}

    @inlineCallbacks
    def use(pool: Any, opened: list[str]) -> Any:
        for url in pool.relayURLs():
            if url not in opened:
                output.line(f"{url}: not connected ({failures.get(url, 'no connection')})")
        answered: Deferred[None] = Deferred()
        answers: dict[str, bool] = {}

        def answer(url: str, accepted: bool, message: str) -> None:
            output.line(
                f"{url}: OK {'true' if accepted else 'false'} {orjson.dumps(message).decode()}"
            )
            answers[url] = accepted
            if len(answers) == len(opened) and not answered.called:
                answered.callback(None)

        try:
            yield pool.publish(event, quorum, relays=opened, onAnswer=answer)
        except PublishFailed:
            pass
        yield answered
        accepted = sum(answers.values())
        summary = (
            f"{accepted} of {len(options['relays'])} relays accepted {event.id}, quorum {quorum}"
        )
        if accepted < quorum:
            raise CommandFailed(f"quorum not reached: {summary}")
        output.line(f"published: {summary}")
        return 0

    return _withPool(reactor, options, use, failures)


def _countCommand(reactor: Any, options: CountOptions, output: _Output) -> Deferred[int]:
    @inlineCallbacks
    def use(pool: Any, opened: list[str]) -> Any:
        result = yield pool.count(options.filters, timeout=options["timeout"])
        if options["verbose"]:
            for url in pool.relayURLs():
                counted = result.perRelay.get(url)
                output.line(f"{url}: {'no count' if counted is None else counted}")
            if not result.perRelay:
                output.line("no relay counted: the count is of the unique events fetched")
            elif result.approximate:
                output.line("approximate: the largest of the relays' counts")
        output.line(str(result.count))
        return 0

    return _withPool(reactor, options, use)


@inlineCallbacks
def _statusCommand(reactor: Any, options: StatusOptions, output: _Output) -> Any:
    from relaypool.upstream.information import quietHTTPClient

    url = options.url
    client = quietHTTPClient(reactor)
    try:
        response = yield client.get(url, timeout=options["timeout"])
        body = yield response.content()
    except (ConnectError, DNSLookupError, TimeoutError) as e:
        raise CommandFailed(
            f"no relaypool at {url}: is it running? ({describeFailure(e)})"
        ) from None
    if response.code != 200:
        raise CommandFailed(f"{url} answered HTTP {response.code}: is it a relaypool?")
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        raise CommandFailed(f"{url} did not answer a /stats document: is it a relaypool?") from None
    if options["json"]:
        output.line(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in summarize(document):
            output.line(line)
    return 0


def _seconds(value: object) -> str:
    """
    @return: a duration in seconds as a person reads it (C{3h12m}, C{45s}).
    """
    if not isinstance(value, int | float):
        return "-"
    seconds = int(value)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def summarize(stats: dict[str, Any]) -> list[str]:
    """
    @param stats: a daemon's C{/stats} document.
    @return: the lines of C{relaypool status}'s summary of it; a relay
        that is not a plain read and write relay has its roles after its
        URL.
    """
    lines: list[str] = []
    relays: dict[str, dict[str, Any]] = stats.get("relays") or {}
    pool = stats.get("pool") or {}
    if relays:
        lines.append(f"relays: {len(relays)}, {pool.get('activeRelays', '?')} open")
        for url, relay in sorted(relays.items()):
            latency = relay.get("latency")
            roles = list(relay.get("roles") or ("read", "write"))
            shownRoles = "" if roles == ["read", "write"] else f" ({', '.join(roles)})"
            lines.append(
                f"  {url}{shownRoles}  {relay.get('state')}  health {relay.get('healthScore', 0):.0f}"
                f"  up {_seconds(relay.get('connectedFor'))}"
                f"  events {relay.get('eventsReceived', 0)} ({relay.get('eventsUnique', 0)} unique)"
                f"  OK {relay.get('okAccepted', 0)}/{relay.get('okRejected', 0)}"
                f"  latency {'-' if latency is None else f'{latency * 1000:.0f} ms'}"
            )
    else:
        lines.append("relays: none (serving the store alone)")
    registry = stats.get("registry") or {}
    gateway = stats.get("gateway") or {}
    lines.append(
        f"clients: {registry.get('connections', 0)} connections,"
        f" {gateway.get('subscriptions', 0)} subscriptions"
        f" ({gateway.get('sharedSubscriptions', 0)} shared upstream),"
        f" {registry.get('rooms', 0)} rooms"
    )
    if pool:
        lines.append(
            f"events: {pool.get('eventsReceived', 0)} received,"
            f" {pool.get('eventsUnique', 0)} unique, {pool.get('eventsInvalid', 0)} invalid;"
            f" OK {pool.get('okAccepted', 0)} accepted, {pool.get('okRejected', 0)} rejected"
        )
    outbox = stats.get("outbox")
    if outbox is not None:
        oldest = outbox.get("oldestAge")
        lines.append(
            f"outbox: {outbox.get('waiting', 0)} waiting, {outbox.get('retrying', 0)} retrying,"
            f" oldest {_seconds(oldest) if oldest is not None else '-'}"
        )
    cluster = stats.get("cluster")
    if cluster is not None:
        nodes = cluster.get("nodes") or {}
        lines.append(
            f"cluster: node {cluster.get('node')} of {len(nodes)} on {cluster.get('redis')}"
            f" ({'connected' if cluster.get('redisUp') else 'away: serving alone'}),"
            f" {cluster.get('leasesHeld', 0)} of {cluster.get('filterSets', 0)} filter sets"
            f" subscribed upstream, {cluster.get('following', 0)} read from other nodes"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{relaypool} console script.
    """
    from twisted.internet.task import react

    def command(reactor: Any, *args: str) -> Deferred[None]:
        def exit(status: int) -> None:
            if status:
                raise SystemExit(status)

        return runCommand(reactor, args).addCallback(exit)

    react(command, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
