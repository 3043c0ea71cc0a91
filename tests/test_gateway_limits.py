"""
Tests for L{relaypool.gateway.limits}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import ConfigError
from relaypool.gateway.limits import DEFAULT_LIMITS, GatewayLimits, TokenBucket


class GatewayLimitsTests(SynchronousTestCase):
    """
    L{GatewayLimits} holds sane defaults and refuses nonsense.
    """

    def test_defaults(self) -> None:
        """
        The defaults are the documented ones.
        """
        limits = GatewayLimits()
        self.assertEqual(
            (
                limits.maxSubscriptions,
                limits.maxFilters,
                limits.maxLimit,
                limits.maxMessageSize,
                limits.eventsPerSecond,
                limits.eventBurst,
                limits.reqsPerSecond,
                limits.reqBurst,
                limits.maxConnectionsPerIP,
                limits.maxSubscriptionIdLength,
            ),
            (20, 10, 500, 128 * 1024, 10.0, 20, 20.0, 40, 50, 64),
        )
        self.assertEqual(DEFAULT_LIMITS, limits)

    def test_nonPositive(self) -> None:
        """
        A zero or negative value raises L{ConfigError} naming the field.
        """
        error = self.assertRaises(ConfigError, GatewayLimits, maxFilters=0)
        self.assertEqual(error.key, "maxFilters")
        self.assertRaises(ConfigError, GatewayLimits, maxIdle=-1.0)

    def test_wrongType(self) -> None:
        """
        A bool, a string, or a float where an integer is needed raises
        L{ConfigError}.
        """
        self.assertRaises(ConfigError, GatewayLimits, maxLimit=True)
        self.assertRaises(ConfigError, GatewayLimits, maxLimit="5")  # type: ignore[arg-type]
        self.assertRaises(ConfigError, GatewayLimits, maxSubscriptions=2.5)  # type: ignore[arg-type]

    def test_subscriptionIdBound(self) -> None:
        """
        Subscription ids cannot be allowed longer than NIP-01's 64
        characters.
        """
        error = self.assertRaises(ConfigError, GatewayLimits, maxSubscriptionIdLength=65)
        self.assertEqual(error.key, "maxSubscriptionIdLength")

    def test_floatRates(self) -> None:
        """
        Rates and intervals may be fractional.
        """
        limits = GatewayLimits(eventsPerSecond=0.5, pingInterval=0.25)
        self.assertEqual((limits.eventsPerSecond, limits.pingInterval), (0.5, 0.25))


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket} allows a burst, then the sustained rate, computed from
    the clock without timers.
    """

    def test_burst(self) -> None:
        """
        A full bucket gives C{burst} tokens at once, then refuses.
        """
        bucket = TokenBucket(1.0, 3, Clock())
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])

    def test_refill(self) -> None:
        """
        Tokens come back at C{rate} per second of the clock.
        """
        clock = Clock()
        bucket = TokenBucket(2.0, 2, clock)
        bucket.take()
        bucket.take()
        self.assertFalse(bucket.take())
        clock.advance(0.5)
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())

    def test_refillCapped(self) -> None:
        """
        A long quiet time refills the bucket up to C{burst}, no more.
        """
        clock = Clock()
        bucket = TokenBucket(10.0, 2, clock)
        clock.advance(3600)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])

    def test_reconfigure(self) -> None:
        """
        L{TokenBucket.reconfigure} keeps the tokens earned, up to the new
        burst, and refills at the new rate from then on.
        """
        clock = Clock()
        bucket = TokenBucket(1.0, 5, clock)
        bucket.reconfigure(0.5, 2)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])
        clock.advance(1)
        self.assertFalse(bucket.take())
        clock.advance(1)
        self.assertTrue(bucket.take())

    def test_noTimers(self) -> None:
        """
        The bucket schedules nothing on the clock.
        """
        clock = Clock()
        bucket = TokenBucket(1.0, 1, clock)
        bucket.take()
        bucket.take()
        self.assertEqual(clock.getDelayedCalls(), [])
