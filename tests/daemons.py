"""
The daemon in the test's own process, on 127.0.0.1, for tests that talk to
it as clients do.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from relaypool.daemon.config import buildConfig
from relaypool.daemon.service import RelayPoolService

__all__ = ["startDaemon"]


async def startDaemon(
    testCase: TestCase, relayURLs: list[str], **overrides: Any
) -> tuple[RelayPoolService, int]:
    """
    Start a L{RelayPoolService} with a memory store on a free port, stopped
    when C{testCase} ends; status lines are off.

    @param overrides: settings by key (C{"sync-interval": "0.2"}).
    @return: the service and its port, once it listens (its relays may
        still be connecting).
    """
    daemon = RelayPoolService(
        buildConfig(
            overrides={
                "listen": "tcp:0:interface=127.0.0.1",
                "store": ":memory:",
                "relays": relayURLs,
                "status-interval": "0",
                **overrides,
            }
        )
    )
    daemon.startService()
    testCase.addCleanup(daemon.stopService)
    port = await daemon.gateway.whenListening()
    return daemon, port.getHost().port
