"""
relaypool: a Twisted-native Nostr relay pool.

The daemon is C{twistd relaypool}; the library's entry point is
L{relaypool.relaypool.RelayPool}.
"""

from __future__ import annotations

__version__ = "0.1.0"
