"""
The C{twistd relaypool} dropin. Import-light on purpose: no reactor, no
relaypool import; twistd loads L{relaypool.daemon.service} only when it runs.
"""

from __future__ import annotations

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "relaypool",
    "relaypool.daemon.service",
    "A Nostr relay pool: one WebSocket endpoint in front of many relays.",
    "relaypool",
)
