"""
Per-connection request metrics and the health score derived from them.

Pure bookkeeping: callers pass the current time in, so the same class serves
a connection of a L{relaypool.transport.pool.Pool} and a relay of the Nostr layer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConnectionMetrics", "HealthPolicy"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """
    When a connection counts as unhealthy, and how latency is averaged.

    @ivar minScore: a connection whose health score is at most this is
        unhealthy.
    @ivar maxConsecutiveErrors: a connection with this many errors in a row
        is unhealthy.
    @ivar maxErrors: a connection with this many errors in all (in a row or
        not; seed 002's stale rule, which uses 5) is unhealthy; 0 (the
        default) sets no such limit.
    @ivar latencyTarget: seconds; a latency average above it lowers the
        score.
    @ivar ewmaAlpha: weight of the newest latency in the moving average.
    """

    minScore: float = 50.0
    maxConsecutiveErrors: int = 5
    latencyTarget: float = 0.5
    ewmaAlpha: float = 0.2
    maxErrors: int = 0

    def __post_init__(self) -> None:
        if self.maxErrors < 0:
            raise ValueError(f"maxErrors must be 0 (no limit) or more, not {self.maxErrors}")

    def isUnhealthy(self, metrics: ConnectionMetrics) -> bool:
        """
        @return: whether C{metrics} describe an unhealthy connection: at
            least C{maxConsecutiveErrors} errors in a row, at least
            C{maxErrors} errors in all (unless 0), or a health score of at
            most C{minScore}.
        """
        return (
            metrics.consecutiveErrors >= self.maxConsecutiveErrors
            or 0 < self.maxErrors <= metrics.errors
            or metrics.healthScore() <= self.minScore
        )


class ConnectionMetrics:
    """
    Counts and latencies of one connection's requests.

    @ivar created: when the metrics started.
    @ivar lastUsed: when the last request finished (C{created} before).
    @ivar successes: requests that got a reply.
    @ivar errors: requests that failed.
    @ivar consecutiveErrors: requests that failed since the last success.
    @ivar latencyEwma: the exponentially weighted moving average of reply
        latencies in seconds, L{None} before the first reply.
    @ivar lastLatency: the latest reply latency, L{None} before the first.
    """

    __slots__ = (
        "policy",
        "created",
        "lastUsed",
        "successes",
        "errors",
        "consecutiveErrors",
        "latencyEwma",
        "lastLatency",
    )

    def __init__(self, now: float, policy: HealthPolicy = HealthPolicy()) -> None:
        self.policy = policy
        self.created = now
        self.lastUsed = now
        self.successes = 0
        self.errors = 0
        self.consecutiveErrors = 0
        self.latencyEwma: float | None = None
        self.lastLatency: float | None = None

    def recordSuccess(self, latency: float, now: float) -> None:
        """
        Count a reply that took C{latency} seconds.
        """
        self.successes += 1
        self.consecutiveErrors = 0
        self.lastLatency = latency
        ewma = self.latencyEwma
        if ewma is None:
            self.latencyEwma = latency
        else:
            self.latencyEwma = ewma + self.policy.ewmaAlpha * (latency - ewma)
        self.lastUsed = now

    def recordError(self, now: float) -> None:
        """
        Count a failed request.
        """
        self.errors += 1
        self.consecutiveErrors += 1
        self.lastUsed = now

    def errorRate(self) -> float:
        """
        @return: the fraction of requests that failed, 0.0 before any.
        """
        total = self.successes + self.errors
        return self.errors / total if total else 0.0

    def healthScore(self) -> float:
        """
        The health score, from 100 (healthy) down to 0::

            100 - 40 * errorRate
                - 10 * min(consecutiveErrors, 5)
                - min(30, 30 * (latencyEwma - latencyTarget) / latencyTarget)
                  (only when latencyEwma exceeds latencyTarget)

        clamped to [0, 100]. So errors alone cost up to 40, a streak of
        errors up to 50, and a latency average of twice the target 30.
        """
        score = 100.0 - 40.0 * self.errorRate() - 10.0 * min(self.consecutiveErrors, 5)
        target = self.policy.latencyTarget
        if self.latencyEwma is not None and self.latencyEwma > target > 0:
            score -= min(30.0, 30.0 * (self.latencyEwma - target) / target)
        return max(0.0, min(100.0, score))
