"""
Tests for the daemon's use of NIP-77 sync: the settings (C{outage-sync},
C{outage-lookback}, C{sync-filters}/C{--sync}, C{sync-interval},
C{sync-direction}, C{sync-max-records}), the outage sync seen by a
downstream client, and the periodic sync, with the daemon in-process on
127.0.0.1 against fake relays.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaypool.daemon.config import buildConfig, environmentValues
from relaypool.daemon.service import Options, RelayPoolService
from relaypool.errors import ConfigError
from relaypool.nostr.event import generatePrivateKey
from relaypool.nostr.filter import Filter
from relaypool.nostr.messages import ClientNegOpen
from relaypool.testing import FakeRelay, makeEvent
from tests.daemons import startDaemon
from tests.test_gateway_protocol import TIMEOUT, waitUntil
from tests.wsclient import NostrClient


class SyncSettingTests(SynchronousTestCase):
    """
    The sync settings from a TOML file, the command line and the
    environment.
    """

    def test_defaults(self) -> None:
        """
        Outage sync is on with a one-hour lookback; no periodic sync.
        """
        config = buildConfig()
        self.assertEqual(
            (config.outageSync, config.outageLookback, config.syncFilters, config.syncDirection),
            (True, 3600.0, (), "down"),
        )

    def test_filtersFromFileAndText(self) -> None:
        """
        Filters are TOML tables in a file, JSON on the command line (the
        repeatable C{--sync}) and one JSON filter per line in
        C{RELAYPOOL_SYNC_FILTERS}.
        """
        relays = {"relays": ["ws://127.0.0.1:1"]}
        config = buildConfig({**relays, "sync-filters": [{"kinds": [0, 3]}]})
        self.assertEqual(config.syncFilters, (Filter(kinds=frozenset({0, 3})),))
        options = Options()
        options.parseOptions(
            ["--relay", "ws://127.0.0.1:1", "--sync", '{"kinds": [1, 7]}', "--sync", "{}"]
        )
        self.assertEqual(options.config.syncFilters, (Filter(kinds=frozenset({1, 7})), Filter()))
        environment = environmentValues(
            {"RELAYPOOL_SYNC_FILTERS": '{"kinds": [0, 3]}\n{"authors": ["' + "a" * 64 + '"]}'}
        )
        config = buildConfig(relays, environment=environment)
        self.assertEqual(len(config.syncFilters), 2)

    def test_badFilter(self) -> None:
        """
        A filter that is not JSON, or not a valid filter, is refused with a
        line naming the setting.
        """
        error = self.assertRaises(ConfigError, buildConfig, overrides={"sync-filters": ["{kinds"]})
        self.assertIn("must be a JSON filter", str(error))
        error = self.assertRaises(
            ConfigError,
            buildConfig,
            {"relays": ["ws://127.0.0.1:1"], "sync-filters": [{"kinds": "x"}]},
        )
        self.assertIn("is not a valid filter", str(error))
        options = Options()
        error = self.assertRaises(UsageError, options.parseOptions, ["--sync", "nope"])
        self.assertIn("--sync", str(error))

    def test_filtersNeedRelays(self) -> None:
        """
        Sync filters without relays are refused: there is nothing to sync
        with.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"sync-filters": [{}]})
        self.assertIn("needs relays", str(error))

    def test_direction(self) -> None:
        """The direction is down, up or both."""
        self.assertEqual(buildConfig(overrides={"sync-direction": "both"}).syncDirection, "both")
        error = self.assertRaises(ConfigError, buildConfig, overrides={"sync-direction": "left"})
        self.assertIn('"down", "up", "both"', str(error))


class DaemonSyncTests(TestCase):
    """
    The daemon syncs with its relays after an outage and periodically.
    """

    timeout = 60

    async def startRelay(self) -> FakeRelay:
        relay = FakeRelay(reactor)
        await relay.start()
        self.addCleanup(relay.stop, True)
        return relay

    async def startDaemon(self, relay: FakeRelay, **overrides: Any) -> tuple[RelayPoolService, int]:
        daemon, port = await startDaemon(self, [relay.url], **overrides)
        await waitUntil(lambda: len(daemon.pool.activeRelayURLs()) == 1)
        return daemon, port

    async def test_outageDeliversLateEvent(self) -> None:
        """
        A client subscribed through the daemon gets an event that reached
        the relay while the daemon was away from it, with a C{created_at}
        older than the newest event it had seen (which the resubscription's
        C{since} asks for).
        """
        relay = await self.startRelay()
        now = int(time.time())
        key = generatePrivateKey()
        relay.store(makeEvent(1, "before", createdAt=now - 10, privateKey=key))
        daemon, port = await self.startDaemon(relay)
        client = NostrClient(reactor, TIMEOUT)
        await client.connect(port)
        self.addCleanup(client.close)
        client.send("REQ", "feed", {"kinds": [1]})
        await client.waitForVerb("EOSE", "feed")
        await relay.stop(True)
        await waitUntil(lambda: not daemon.pool.activeRelayURLs())
        late = makeEvent(1, "late", createdAt=now - 60, privateKey=key)
        relay.store(late)
        await relay.start()
        frame = await client.waitFor(lambda f: f[0] == "EVENT" and f[2]["id"] == late.id)
        self.assertEqual(frame[1], "feed")
        self.assertTrue(any(isinstance(m, ClientNegOpen) for m in relay.received))

    async def test_periodicSync(self) -> None:
        """
        With C{sync-filters}, the daemon's store gets the relay's matching
        events every C{sync-interval}, without any client asking.
        """
        relay = await self.startRelay()
        wanted = [makeEvent(0, f"profile {n}", privateKey=generatePrivateKey()) for n in range(3)]
        relay.store(*wanted, makeEvent(1, "not wanted"))
        daemon, _ = await self.startDaemon(
            relay, **{"sync-filters": ['{"kinds": [0]}'], "sync-interval": "0.2"}
        )
        store = daemon.store
        found: list[Any] = []

        async def stored() -> bool:
            found[:] = await store.fetch([e.id for e in wanted])
            return len(found) == 3

        for _ in range(int(TIMEOUT / 0.1)):
            if await stored():
                break
            await _sleep(0.1)
        self.assertEqual({e.id for e in found}, {e.id for e in wanted})


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
