"""
Leases: which node of a cluster owns each shared upstream subscription.

A lease is a Redis key holding the owner's node id with an expiry
(C{SET key node NX PX ttl}, renewed with C{PEXPIRE} by its owner). Every
node that wants a lease asks for it on each renewal round, one script call
for all of them: it renews the leases it holds and takes those nobody
holds, so when an owner dies or lets go, a node that wants the lease takes
it within the lease time and one round.

A node also keeps its own deadline for each lease it holds: the time it
sent the renewal that succeeded plus the lease time, which is no later than
Redis's expiry. Past it, L{Leases.owns} is false even if Redis cannot be
asked, so a node cut off from Redis stops acting as the owner before
another node can take the lease: no two owners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from relaypool.cluster.link import RedisLink

# Renew the leases this node holds, take those nobody holds, and keep the
# stream of each lease held alive: KEYS are n lease keys then their n
# stream keys; ARGV the node id, the lease time and the streams' time to
# live, in milliseconds. Answers, per lease, 1 if the node holds it now,
# else the holder's id.
_CLAIM = """
local n = #KEYS / 2
local answers = {}
for i = 1, n do
    local holder = redis.call('GET', KEYS[i])
    if holder == ARGV[1] then
        redis.call('PEXPIRE', KEYS[i], ARGV[2])
        answers[i] = 1
    elseif not holder then
        redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
        answers[i] = 1
    else
        answers[i] = holder
    end
    if answers[i] == 1 then
        redis.call('PEXPIRE', KEYS[n + i], ARGV[3])
    end
end
return answers
"""

# Let go of a lease if this node holds it: KEYS[1] the lease, ARGV[1] the
# node id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    """
    The leases one node wants, and which of them it holds.

    @ivar holders: the holder of each wanted lease, as last seen.
    """

    def __init__(
        self,
        link: RedisLink,
        nodeId: str,
        leaseTime: float,
        streamTime: float,
        clock: IReactorTime,
        leaseKey: Callable[[str], str],
        streamKey: Callable[[str], str],
        onChange: Callable[[str, bool], object],
    ) -> None:
        """
        @param leaseTime: seconds a lease lasts without renewal.
        @param streamTime: seconds a lease's stream is kept after its last
            renewal.
        @param leaseKey: the Redis key of a lease's name.
        @param streamKey: the Redis key of the stream of a lease's name.
        @param onChange: called with a name and C{True} when this node took
            the lease, or renewed it after its own deadline had passed
            (L{lapsed}), C{False} when it lost it, and with the first answer
            for a lease wanted (C{False}: another node holds it).
        """
        self._link = link
        self.nodeId = nodeId
        self.leaseTime = leaseTime
        self.streamTime = streamTime
        self._clock = clock
        self._leaseKey = leaseKey
        self._streamKey = streamKey
        self._onChange = onChange
        self._wanted: set[str] = set()
        self._deadlines: dict[str, float] = {}
        self.holders: dict[str, str] = {}
        self._renewing = False

    def want(self, name: str) -> Deferred[None]:
        """
        Ask for a lease now, and on every round until L{drop}.
        """
        self._wanted.add(name)
        return self._claim([name])

    def drop(self, name: str) -> Deferred[Any]:
        """
        Stop asking for a lease, and let go of it if held.
        """
        self._wanted.discard(name)
        self.holders.pop(name, None)
        if self._deadlines.pop(name, None) is None:
            return succeed(0)
        return self._link.command("EVAL", _RELEASE, 1, self._leaseKey(name), self.nodeId)

    def owns(self, name: str) -> bool:
        """
        @return: whether this node holds the lease and its own deadline for
            it has not passed.
        """
        deadline = self._deadlines.get(name)
        return deadline is not None and self._clock.seconds() < deadline

    def lapsed(self, name: str) -> bool:
        """
        @return: whether this node held the lease at its last answer but its
            own deadline passed since: the next answer says whether it still
            holds it.
        """
        return name in self._deadlines and not self.owns(name)

    def held(self) -> list[str]:
        """
        @return: the names of the leases this node holds.
        """
        return [name for name in self._deadlines if self.owns(name)]

    def renew(self) -> Deferred[None]:
        """
        One round: renew the leases held and take the free ones wanted. A
        round does not start while the one before is still waiting.
        """
        if self._renewing or not self._wanted:
            return succeed(None)
        self._renewing = True

        def done(result: object) -> object:
            self._renewing = False
            return result

        return self._claim(sorted(self._wanted)).addBoth(done)

    def lapse(self) -> None:
        """
        Redis is away: every lease held is lost (the node stops acting as
        its owner now, before its deadline), and the first answer for each
        lease once Redis is back is reported as for a new one.
        """
        self.holders.clear()
        for name in list(self._deadlines):
            del self._deadlines[name]
            self._onChange(name, False)

    def _claim(self, names: list[str]) -> Deferred[None]:
        sentAt = self._clock.seconds()
        keys = [self._leaseKey(name) for name in names] + [self._streamKey(name) for name in names]
        d = self._link.command(
            "EVAL",
            _CLAIM,
            len(keys),
            *keys,
            self.nodeId,
            int(self.leaseTime * 1000),
            int(self.streamTime * 1000),
        )
        return d.addCallback(self._claimed, names, sentAt)

    def _claimed(self, answers: list[Any], names: Iterable[str], sentAt: float) -> None:
        for name, answer in zip(names, answers, strict=True):
            if name not in self._wanted:
                continue
            was = name in self._deadlines
            lapsed = was and not self.owns(name)
            first = name not in self.holders
            if answer == 1:
                self._deadlines[name] = sentAt + self.leaseTime
                self.holders[name] = self.nodeId
            else:
                self._deadlines.pop(name, None)
                self.holders[name] = str(answer)
            if first or lapsed or (answer == 1) != was:
                self._onChange(name, answer == 1)


__all__ = ["Leases"]
