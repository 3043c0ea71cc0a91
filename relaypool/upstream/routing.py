"""
The outbox model (NIP-65): each author's events are read from the relays the
author writes to, and a published event goes to its author's write relays
and to the read relays of the pubkeys it tags.

An L{OutboxRouter} serves a L{relaypool.upstream.relaypool.RelayPool}. It
keeps the relay lists it learnt (kind 10002 events, from the pool's store,
then from its discovery relays, and from every relay list the pool sees
afterwards), chooses for a subscription's authors a bounded number of their
write relays each (and for the pubkeys a filter without authors names in
C{#p}, of their read relays: where events mentioning them are sent), makes
the pool connect to them as temporary C{outbox} relays (closed once no
subscription or publish has used them for an idle time), and hands the
pool, per relay, the part of the filters it should get. When a relay list
changes, the subscriptions it concerns are routed again.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaypool.errors import InvalidRelayURL, RelayRefused, SubscriptionClosed, TooManyRelays
from relaypool.nostr.event import Event
from relaypool.nostr.filter import Filter
from relaypool.nostr.nip65 import RELAY_LIST_KIND, RelayList
from relaypool.upstream.following import follow
from relaypool.upstream.roles import OUTBOX_ONLY

if TYPE_CHECKING:
    from relaypool.interfaces import IEventStore
    from relaypool.upstream.relaypool import RelayPool
    from relaypool.upstream.subscription import Subscription

__all__ = ["ROUTING", "OutboxRouter", "chooseRelays", "isRoutable"]

log = Logger()

ROUTING = "relaypool:outbox-routing"
"""
What a routed subscription's EOSE waits for while its authors' relay lists
are looked up, besides relays.
"""

AUTHORS_PER_FILTER = 256
"""
The most authors one relay list lookup filter names (a longer list is split
into several filters of the same REQ).
"""

MISSING_RETRY = 600.0
"""
Seconds after which an author whose relay list was not found is looked up
again, and an C{outbox} relay that could not be connected is tried again.
"""

Routes = dict[str, tuple[Filter, ...]]
"""
A routed subscription's filters per relay URL.
"""


def chooseRelays(
    authors: Iterable[str],
    lists: Mapping[str, RelayList],
    perAuthor: int,
    preferred: Collection[str],
    usable: Callable[[str], bool],
    side: str = "write",
) -> tuple[dict[str, set[str]], set[str]]:
    """
    Choose up to C{perAuthor} of each author's write relays (or read
    relays, with C{side="read"}).

    An author's relays are tried in this order: the C{preferred} ones (the
    pool's own read relays, already connected), then those more of the
    C{authors} write to (fewer connections for all of them), then the
    author's own order; a relay C{usable} refuses (the admit policy, a full
    pool) is passed over.

    @return: per relay URL the authors routed to it, and the authors routed
        nowhere (no relay list, or none of its relays usable).
    """
    authors = sorted(set(authors))
    relaysOf: Callable[[RelayList], tuple[str, ...]] = attrgetter(side)
    popularity = Counter(url for author in authors if author in lists for url in relaysOf(lists[author]))
    plan: dict[str, set[str]] = defaultdict(set)
    unrouted: set[str] = set()
    verdicts: dict[str, bool] = {}
    for author in authors:
        relayList = lists.get(author)
        candidates = () if relayList is None else relaysOf(relayList)
        ranked = sorted(
            range(len(candidates)),
            key=lambda i: (candidates[i] not in preferred, -popularity[candidates[i]], i),
        )
        chosen = 0
        for index in ranked:
            if chosen == perAuthor:
                break
            url = candidates[index]
            if url not in verdicts:
                verdicts[url] = usable(url)
            if verdicts[url]:
                plan[url].add(author)
                chosen += 1
        if not chosen:
            unrouted.add(author)
    return dict(plan), unrouted


def _authorsOf(filters: Iterable[Filter]) -> frozenset[str]:
    return frozenset(author for f in filters if f.authors for author in f.authors)


def _mentionsOf(f: Filter) -> frozenset[str]:
    """
    @return: the pubkeys C{f} asks mentions of (its C{#p} values) when it
        names no author, else nothing.
    """
    if f.authors:
        return frozenset()
    return next((values for letter, values in f.tags if letter == "p"), frozenset())


def _withAuthors(f: Filter, pubkeys: frozenset[str]) -> Filter:
    return replace(f, authors=pubkeys)


def _withMentions(f: Filter, pubkeys: frozenset[str]) -> Filter:
    tags = tuple((letter, frozenset(pubkeys) if letter == "p" else values) for letter, values in f.tags)
    return replace(f, tags=tags)


def isRoutable(filters: Iterable[Filter]) -> bool:
    """
    @return: whether the outbox model routes a subscription to C{filters}:
        some filter names authors, or mentions (C{#p}) without authors.
    """
    return any(f.authors or _mentionsOf(f) for f in filters)


def _chunks(values: Iterable[str]) -> list[frozenset[str]]:
    ordered = sorted(values)
    return [
        frozenset(ordered[i : i + AUTHORS_PER_FILTER]) for i in range(0, len(ordered), AUTHORS_PER_FILTER)
    ]


class OutboxRouter:
    """
    Routes a L{RelayPool}'s subscriptions with C{authors} by the authors'
    relay lists, and chooses the relays a publish goes to.

    @ivar relaysPerAuthor: the most relays an author's part of a filter, or
        an event's copies for one author or tagged pubkey, goes to.
    @ivar idleTimeout: seconds an C{outbox} relay stays connected once no
        subscription or publish uses it.
    @ivar lookupTimeout: seconds a relay list lookup on the discovery
        relays waits for their EOSE.
    @ivar capacity: how many authors' relay lists are remembered (least
        recently used go first).
    @ivar maxTagged: how many of an event's C{p} tags a publish follows.
    """

    def __init__(
        self,
        pool: RelayPool,
        reactor: IReactorTime,
        store: IEventStore | None,
        relaysPerAuthor: int,
        idleTimeout: float,
        lookupTimeout: float,
        capacity: int,
        maxTagged: int,
    ) -> None:
        self.relaysPerAuthor = relaysPerAuthor
        self.idleTimeout = idleTimeout
        self.lookupTimeout = lookupTimeout
        self.capacity = capacity
        self.maxTagged = maxTagged
        self._pool = pool
        self._reactor = reactor
        self._store = store
        self._lists: OrderedDict[str, RelayList | float] = OrderedDict()
        self._routed: dict[str, tuple[Subscription, frozenset[str]]] = {}
        self._pending: set[str] = set()
        self._uses: Counter[str] = Counter()
        self._held: dict[str, list[str]] = {}
        self._idle: dict[str, IDelayedCall] = {}
        self._watch: Subscription | None = None
        self._watched: frozenset[str] = frozenset()
        self._stopped = False
        self._claimed: set[str] = set()
        self._lookups: dict[str, Deferred[None]] = {}
        self._unreachable: dict[str, float] = {}

    # --- relay lists --------------------------------------------------------

    def relayList(self, pubkey: str) -> RelayList | None:
        """
        @return: the newest relay list known for C{pubkey}, or L{None}.
        """
        known = self._lists.get(pubkey)
        return known if isinstance(known, RelayList) else None

    def relayListSeen(self, event: Event) -> None:
        """
        The pool saw a verified kind 10002 event: remember it if it is the
        newest of its author, and route again the subscriptions reading
        that author.
        """
        if event.kind != RELAY_LIST_KIND or not self._remember(RelayList.fromEvent(event)):
            return
        for subscriptionId, (subscription, authors) in list(self._routed.items()):
            if event.pubkey in authors and subscriptionId not in self._pending:
                self._apply(subscription, authors)

    def _remember(self, relayList: RelayList) -> bool:
        """
        @return: whether C{relayList} is newer than what was known.
        """
        known = self._lists.get(relayList.pubkey)
        if isinstance(known, RelayList) and known.createdAt >= relayList.createdAt:
            self._lists.move_to_end(relayList.pubkey)
            return False
        self._put(relayList.pubkey, relayList)
        return True

    def _put(self, pubkey: str, entry: RelayList | float) -> None:
        self._lists[pubkey] = entry
        self._lists.move_to_end(pubkey)
        while len(self._lists) > self.capacity:
            self._lists.popitem(last=False)

    def _isKnown(self, pubkey: str, now: float) -> bool:
        known = self._lists.get(pubkey)
        if known is None:
            return False
        return isinstance(known, RelayList) or now - known < MISSING_RETRY

    def lookUp(self, pubkeys: Iterable[str]) -> Deferred[None]:
        """
        Learn the relay lists of C{pubkeys} not known yet: from the pool's
        store, then from the discovery relays (the read relays when none is
        a discovery relay), waiting at most C{lookupTimeout} for them. A
        pubkey without a relay list is looked up again after
        L{MISSING_RETRY} seconds.

        A pubkey whose lookup is already running is not looked up again:
        its lookup is waited for.

        @return: a Deferred firing when they are known, or could not be
            found; it does not fail.
        """
        now = self._reactor.seconds()
        runs: dict[int, Deferred[None]] = {}
        missing = set()
        for pubkey in set(pubkeys):
            if self._isKnown(pubkey, now):
                continue
            running = self._lookups.get(pubkey)
            if running is None:
                missing.add(pubkey)
            else:
                runs[id(running)] = running
        if missing:
            running = Deferred.fromCoroutine(self._lookUp(missing))
            running.addErrback(lambda f: log.failure("outbox: relay list lookup failed", f))
            self._lookups.update(dict.fromkeys(missing, running))
            running.addBoth(self._lookedUp, missing, running)
            runs[id(running)] = running
        if not runs:
            return succeed(None)
        return DeferredList([follow(run) for run in runs.values()]).addCallback(lambda _: None)

    def _lookedUp(self, result: object, pubkeys: set[str], run: Deferred[None]) -> object:
        for pubkey in pubkeys:
            if self._lookups.get(pubkey) is run:
                del self._lookups[pubkey]
        return result

    async def _lookUp(self, missing: set[str]) -> None:
        filters = [Filter(kinds=frozenset({RELAY_LIST_KIND}), authors=chunk) for chunk in _chunks(missing)]
        if self._store is not None:
            stored = await self._store.query(filters)  # type: ignore[no-untyped-call]
            for event in stored:
                self._remember(RelayList.fromEvent(event))
            missing = {p for p in missing if self.relayList(p) is None}
        relays = self._lookupRelays()
        if missing and relays and not self._stopped:
            filters = [Filter(kinds=frozenset({RELAY_LIST_KIND}), authors=chunk) for chunk in _chunks(missing)]
            lookup = self._pool.subscribe(filters, eoseTimeout=self.lookupTimeout, closeOnEOSE=True, relays=relays)
            lookup.onEvent(lambda event, url: self.relayListSeen(event))
            try:
                await lookup.whenEOSE()
            except SubscriptionClosed:
                return  # the pool stopped
        now = self._reactor.seconds()
        for pubkey in missing:
            if self.relayList(pubkey) is None:
                self._put(pubkey, now)

    def _lookupRelays(self) -> list[str]:
        return self._pool.relayURLs("discovery") or self._pool.relayURLs("read")

    # --- subscriptions ------------------------------------------------------

    def route(self, subscription: Subscription) -> None:
        """
        Route a new subscription: look the relay lists of its authors and
        of the pubkeys it asks mentions of up, then
        give each relay its part of the filters and let the subscription's
        EOSE wait for them instead of L{ROUTING}.
        """
        subscriptionId = subscription.subscriptionId
        authors = _authorsOf(subscription.filters).union(*map(_mentionsOf, subscription.filters))
        self._routed[subscriptionId] = (subscription, authors)
        self._pending.add(subscriptionId)
        self._rewatch()

        def routeNow(_: None) -> None:
            self._pending.discard(subscriptionId)
            if subscriptionId not in self._routed:
                return
            self._apply(subscription, authors)
            subscription._relayDone(ROUTING)

        self.lookUp(authors).addCallback(routeNow)

    def forget(self, subscription: Subscription) -> None:
        """
        A routed subscription closed: release its relays.
        """
        self._pending.discard(subscription.subscriptionId)
        if self._routed.pop(subscription.subscriptionId, None) is None:
            return
        self._use(subscription.routes or {}, -1)
        self._rewatch()

    def _apply(self, subscription: Subscription, pubkeys: frozenset[str]) -> None:
        """
        Choose the relays of the subscription's authors (their write
        relays) and mentioned pubkeys (their read relays), and hand the
        pool the subscription's new routes (its EOSE, if not reached, waits
        for the relays added).
        """
        read = self._pool.relayURLs("read")
        lists = {p: known for p in pubkeys if (known := self.relayList(p)) is not None}
        filters = subscription.filters
        mentions = frozenset().union(*map(_mentionsOf, filters))
        try:
            byAuthor = chooseRelays(_authorsOf(filters), lists, self.relaysPerAuthor, set(read), self._acquire)
            byMention = chooseRelays(mentions, lists, self.relaysPerAuthor, set(read), self._acquire, "read")
        finally:
            self._claimed.clear()
        parts: dict[str, list[Filter]] = defaultdict(list)
        for f in filters:
            if f.authors:
                self._split(f, f.authors, byAuthor, read, parts, _withAuthors)
            elif mentioned := _mentionsOf(f):
                self._split(f, mentioned, byMention, read, parts, _withMentions)
            else:
                for url in read:
                    parts[url].append(f)
        routes = {url: tuple(part) for url, part in parts.items()}
        before = subscription.routes or {}
        self._use(routes, +1)
        self._pool._applyRoutes(subscription, routes)
        self._use(before, -1)

    @staticmethod
    def _split(
        f: Filter,
        pubkeys: frozenset[str],
        choice: tuple[dict[str, set[str]], set[str]],
        read: list[str],
        parts: dict[str, list[Filter]],
        narrowed: Callable[[Filter, frozenset[str]], Filter],
    ) -> None:
        """
        Add to C{parts} one part of C{f} per relay, C{narrowed} to the
        pubkeys of C{pubkeys} it gets: those C{choice} routes to it, and on
        a read relay also the unrouted ones.
        """
        plan, unrouted = choice
        perRelay: dict[str, set[str]] = defaultdict(set)
        for url, routed in plan.items():
            perRelay[url] |= pubkeys & routed
        rest = pubkeys & unrouted
        if rest:
            for url in read:
                perRelay[url] |= rest
        for url, part in perRelay.items():
            if part:
                parts[url].append(narrowed(f, frozenset(part)))

    # --- publishing ---------------------------------------------------------

    def publishTargets(self, event: Event, base: Sequence[str]) -> Deferred[list[str]]:
        """
        The relays C{event} goes to: C{base} (the pool's write relays), the
        author's write relays and the read relays of the first C{maxTagged}
        pubkeys it tags in C{p} tags, up to C{relaysPerAuthor} each.
        """
        tagged = [tag[1] for tag in event.tags if len(tag) > 1 and tag[0] == "p" and _isPubkey(tag[1])]
        tagged = list(dict.fromkeys(tagged))[: self.maxTagged]

        def choose(_: None) -> list[str]:
            try:
                return chooseTargets()
            finally:
                self._claimed.clear()

        def chooseTargets() -> list[str]:
            targets = dict.fromkeys(base)
            author = self.relayList(event.pubkey)
            wanted = [(author.write if author is not None else ())]
            for pubkey in tagged:
                relayList = self.relayList(pubkey)
                if relayList is not None:
                    wanted.append(relayList.read)
            for urls in wanted:
                chosen = 0
                for url in urls:
                    if chosen == self.relaysPerAuthor:
                        break
                    if url in targets or self._acquire(url):
                        targets.setdefault(url)
                        chosen += 1
            return list(targets)

        return self.lookUp([event.pubkey, *tagged]).addCallback(choose)

    def hold(self, eventId: str, urls: Iterable[str]) -> None:
        """
        A publish of C{eventId} waits for C{urls}: keep them connected until
        L{release}.
        """
        urls = list(urls)
        self._held.setdefault(eventId, []).extend(urls)
        self._use(dict.fromkeys(urls), +1)

    def release(self, eventId: str) -> None:
        """
        The publishes of C{eventId} finished: their relays may go idle.
        """
        self._use(dict.fromkeys(self._held.pop(eventId, [])), -1)

    # --- temporary relays ---------------------------------------------------

    def _acquire(self, url: str) -> bool:
        """
        Make sure the pool has the relay at C{url}, adding it as an
        C{outbox} relay (after closing an idle one if the pool is full).

        A relay acquired for the plan being made is not closed to make room
        for another of it.

        @return: whether it is in the pool.
        """
        failedAt = self._unreachable.get(url)
        if failedAt is not None:
            if self._reactor.seconds() - failedAt < MISSING_RETRY:
                return False
            del self._unreachable[url]
        if self._pool.hasRelay(url):
            self._claimed.add(url)
            return True
        try:
            self._pool._addRelay(url, OUTBOX_ONLY)
        except TooManyRelays as e:
            if not self._closeOneIdle():
                log.debug("outbox: not using {url}: {why}", url=url, why=str(e))
                return False
            return self._acquire(url)
        except (RelayRefused, InvalidRelayURL) as e:
            log.debug("outbox: not using {url}: {why}", url=url, why=str(e))
            return False
        log.info("outbox: connecting to {url}", url=url)
        self._claimed.add(url)
        self._settle(url)
        return True

    def relayUnreachable(self, url: str) -> None:
        """
        An C{outbox} relay could not be connected: leave it out for
        L{MISSING_RETRY} seconds and route the subscriptions using it
        again (their EOSE, if not reached, waits for the relays chosen
        instead).
        """
        self._unreachable[url] = self._reactor.seconds()
        while len(self._unreachable) > self.capacity:
            del self._unreachable[next(iter(self._unreachable))]
        for subscriptionId, (subscription, pubkeys) in list(self._routed.items()):
            if subscriptionId not in self._pending and url in (subscription.routes or {}):
                log.info("outbox: {url} is unreachable; routing {id} again", url=url, id=subscriptionId)
                self._apply(subscription, pubkeys)

    def _use(self, routes: Mapping[str, Any], change: int) -> None:
        for url in routes:
            self._uses[url] += change
            if self._uses[url] <= 0:
                del self._uses[url]
            self._settle(url)

    def _settle(self, url: str) -> None:
        """
        Start or stop the idle timer of an C{outbox} relay.
        """
        idle = self._idle.pop(url, None)
        if idle is not None and idle.active():
            idle.cancel()
        if self._stopped or self._uses[url] > 0 or not self._isTemporary(url):
            return
        self._idle[url] = self._reactor.callLater(self.idleTimeout, self._closeIdle, url)

    def _isTemporary(self, url: str) -> bool:
        return self._pool.hasRelay(url) and self._pool.relayRoles(url) == OUTBOX_ONLY

    def _closeIdle(self, url: str) -> None:
        self._idle.pop(url, None)
        if self._uses[url] == 0 and self._isTemporary(url):
            log.info("outbox: closing {url}, unused for {idle:.0f} s", url=url, idle=self.idleTimeout)
            self._pool.removeRelay(url)

    def _closeOneIdle(self) -> bool:
        """
        Close an idle C{outbox} relay at once to make room.

        @return: whether one was closed.
        """
        for url in [url for url in self._idle if url not in self._claimed]:
            call = self._idle.pop(url)
            if call.active():
                call.cancel()
            if self._uses[url] == 0 and self._isTemporary(url):
                self._pool.removeRelay(url)
                return True
        return False

    # --- following relay lists ----------------------------------------------

    def _rewatch(self) -> None:
        """
        Keep one live subscription to the relay lists of the routed
        subscriptions' authors on the discovery relays, so that a changed
        list is followed.
        """
        if self._stopped:
            return
        authors = frozenset().union(*(authors for _, authors in self._routed.values()))
        if authors == self._watched:
            return
        self._watched = authors
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        relays = self._lookupRelays()
        if not authors or not relays:
            return
        now = int(self._reactor.seconds())
        filters = [
            Filter(kinds=frozenset({RELAY_LIST_KIND}), authors=chunk, since=now) for chunk in _chunks(authors)
        ]
        self._watch = self._pool.subscribe(filters, relays=relays)
        self._watch.onEvent(lambda event, url: self.relayListSeen(event))

    def stop(self) -> None:
        """
        Cancel the idle timers (the pool is stopping).
        """
        self._stopped = True
        for call in self._idle.values():
            if call.active():
                call.cancel()
        self._idle.clear()


def _isPubkey(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
