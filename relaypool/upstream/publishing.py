"""
The publish quorum: one event's publish, waiting for enough relays to have it.

A L{PublishQuorum} knows nothing of connections: the pool tells it which
relays it sent the event to (L{PublishQuorum.sendTo}) and then what they
answered (L{PublishQuorum.relayAnswered}) or that they left
(L{PublishQuorum.relayGone}). It fires its callers once, as soon as the
outcome is known, and goes on listening for the other relays' answers (for
its answer hooks) until every relay answered or its timeout passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaypool.errors import PublishFailed
from relaypool.nostr.event import Event
from relaypool.upstream.results import PublishResult

__all__ = ["NO_ANSWER", "NOT_QUEUED", "POOL_STOPPED", "AnswerHook", "PublishQuorum"]

log = Logger()

AnswerHook = Callable[[str, bool, str], object]
"""
A publish's per-relay answer hook: called with a relay's URL, whether it has
the event (C{OK true}, or any C{duplicate:} answer) and its message.
"""

NO_ANSWER = "error: relaypool: no OK from this relay before the publish timed out"
"""
The message an L{AnswerHook} gets for a relay still silent when its publish
timed out.
"""

NOT_QUEUED = "error: relaypool: could not queue the event for this relay"
"""
The rejection recorded for a relay that could not take the event.
"""

POOL_STOPPED = "error: relaypool: the relay pool stopped"
"""
The message an L{AnswerHook} gets for a relay still silent when the pool
stopped.
"""


@dataclass(eq=False)
class _Listener:
    hook: AnswerHook
    waiting: set[str]

    def tell(self, url: str, accepted: bool, message: str) -> None:
        """
        Call the hook for C{url} if it waits for that relay, at most once.
        """
        if url not in self.waiting:
            return
        self.waiting.discard(url)
        try:
            self.hook(url, accepted, message)
        except Exception:
            log.failure("A publish answer hook failed for {url}", url=url)


class PublishQuorum:
    """
    One event's publish: the relays it waits for, their answers, the callers
    waiting for the outcome and the answer hooks.

    It fires (every L{whenDecided} Deferred, once) when C{quorum} relays
    accepted, or when that became impossible, or at the timeout; it
    finishes (calls C{onFinish}, then tells each hook L{NO_ANSWER} for the
    relays still silent) when every relay answered or at the timeout.

    @ivar event: the event published.
    @ivar quorum: how many relays must accept it.
    @ivar fired: whether the outcome was given to the callers.
    @ivar finished: whether it stopped listening.
    """

    def __init__(
        self,
        clock: IReactorTime,
        event: Event,
        quorum: int,
        timeout: float,
        onFinish: Callable[[PublishQuorum], object],
    ) -> None:
        """
        @param clock: schedules the timeout.
        @param timeout: seconds after which it stops waiting.
        @param onFinish: called with this quorum once, when it stops
            listening; L{outstanding} then names the relays that stayed
            silent.
        """
        if not isinstance(quorum, int) or quorum < 1:
            raise ValueError(f"quorum must be a positive integer, got {quorum!r}")
        self.event = event
        self.quorum = quorum
        self.fired = False
        self.finished = False
        self._decided: PublishResult | None = None
        self._outstanding: set[str] = set()
        self._accepted: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._waiters: list[Deferred[PublishResult]] = []
        self._listeners: list[_Listener] = []
        self._onFinish = onFinish
        self._timeoutCall: IDelayedCall | None = clock.callLater(timeout, self.finish)

    @property
    def outstanding(self) -> frozenset[str]:
        """
        The relays it still waits for.
        """
        return frozenset(self._outstanding)

    def isWaitingFor(self, url: str) -> bool:
        """
        @return: whether an answer from C{url} is still news to it.
        """
        return not self.finished and url in self._outstanding

    def knows(self, url: str) -> bool:
        """
        @return: whether C{url} was sent the event (answered or not).
        """
        return url in self._outstanding or url in self._accepted or url in self._rejected

    def result(self) -> PublishResult:
        """
        @return: the L{PublishResult} as it stands.
        """
        return PublishResult(
            self.event.id,
            self.quorum,
            dict(self._accepted),
            dict(self._rejected),
            frozenset(self._outstanding),
        )

    def whenDecided(self) -> Deferred[PublishResult]:
        """
        @return: a Deferred firing with the L{PublishResult} once C{quorum}
            relays accepted, or failing with L{PublishFailed} once that
            became impossible or the timeout passed; asked after it fired,
            at once with the same result as the others.
        """
        waiter: Deferred[PublishResult] = Deferred()
        if self._decided is not None:
            self._give(waiter, self._decided)
        else:
            self._waiters.append(waiter)
        return waiter

    def listen(self, targets: Iterable[str], hook: AnswerHook | None) -> None:
        """
        Call C{hook} once for each relay of C{targets}: at once for those
        that answered already, later for the others (with L{NO_ANSWER} for
        those still silent when it finishes).
        """
        if hook is None:
            return
        targets = list(targets)
        listener = _Listener(hook, set(targets))
        self._listeners.append(listener)
        for url in targets:
            if url in self._accepted:
                listener.tell(url, True, self._accepted[url])
            elif url in self._rejected:
                listener.tell(url, False, self._rejected[url])

    def sendTo(self, targets: Sequence[str], send: Callable[[str], bool]) -> None:
        """
        Wait for C{targets}, sending each the event with C{send}; a relay
        C{send} refuses counts as rejecting it with L{NOT_QUEUED}. Then fire
        or finish if the outcome is known.
        """
        self._outstanding.update(targets)
        for url in targets:
            if not send(url):
                self._record(url, False, NOT_QUEUED)
        self._check()

    def takeOver(self, earlier: PublishQuorum) -> None:
        """
        Take over the relays C{earlier} (a publish of the same event that
        fired) still waits for, and its answer hooks; C{earlier} finishes
        without telling anyone.
        """
        earlier._cancelTimeout()
        earlier.finished = True
        self._outstanding |= earlier._outstanding
        earlier._outstanding = set()
        self._listeners.extend(earlier._listeners)
        earlier._listeners = []

    def relayAnswered(self, url: str, accepted: bool, message: str) -> None:
        """
        C{url} answered: it has the event (C{accepted}) or not. An answer
        from a relay it does not wait for is ignored.
        """
        if not self.isWaitingFor(url):
            return
        self._record(url, accepted, message)
        self._check()

    def relayGone(self, url: str, reason: str) -> None:
        """
        C{url} will not answer (it left the pool): it counts as rejecting
        the event with C{reason}.
        """
        self.relayAnswered(url, False, reason)

    def finish(self, message: str = NO_ANSWER) -> None:
        """
        Stop listening (every relay answered, the timeout passed, or the pool
        stops): call C{onFinish}, tell the hooks C{message} for the relays
        still silent, and fire if it has not fired.
        """
        if self.finished:
            return
        self.finished = True
        self._cancelTimeout()
        self._onFinish(self)
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            for url in sorted(listener.waiting):
                listener.tell(url, False, message)
        if not self.fired:
            self._fire()

    def _record(self, url: str, accepted: bool, message: str) -> None:
        self._outstanding.discard(url)
        if accepted:
            self._accepted[url] = message
        else:
            self._rejected[url] = message
        for listener in self._listeners:
            listener.tell(url, accepted, message)

    def _check(self) -> None:
        if not self.fired:
            accepted = len(self._accepted)
            if accepted >= self.quorum or accepted + len(self._outstanding) < self.quorum:
                self._fire()
        if not self._outstanding:
            self.finish()

    def _fire(self) -> None:
        self.fired = True
        self._decided = result = self.result()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._give(waiter, result)

    def _give(self, waiter: Deferred[PublishResult], result: PublishResult) -> None:
        if result.succeeded:
            waiter.callback(result)
        else:
            waiter.errback(
                PublishFailed(
                    f"event {self.event.id} accepted by {len(result.accepted)} of "
                    f"quorum {self.quorum}: {result.reasons() or 'no relays'}",
                    result,
                )
            )

    def _cancelTimeout(self) -> None:
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None
