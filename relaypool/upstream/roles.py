"""
Relay roles (NIP-65's read and write, and discovery): what a
L{relaypool.upstream.relaypool.RelayPool} uses each relay for.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE_NAMES = ("read", "write", "discovery", "outbox")


@dataclass(frozen=True, slots=True)
class RelayRoles:
    """
    What the pool uses a relay for.

    @ivar read: subscriptions, queries and counts go to it.
    @ivar write: publishes go to it (and count towards their quorum).
    @ivar discovery: relay lists (NIP-65 kind 10002) are looked up on it by
        the outbox model.
    @ivar outbox: the outbox model added it for some authors' events (not
        configured; it is closed once idle).
    """

    read: bool = True
    write: bool = True
    discovery: bool = False
    outbox: bool = False

    def names(self) -> tuple[str, ...]:
        """
        @return: the names of the roles it has, in the order of
            L{ROLE_NAMES}.
        """
        return tuple(name for name in ROLE_NAMES if getattr(self, name))

    def configured(self) -> bool:
        """
        @return: whether it has a role of its own (not only C{outbox}).
        """
        return self.read or self.write or self.discovery


OUTBOX_ONLY = RelayRoles(read=False, write=False, discovery=False, outbox=True)
"""
The roles of a relay the outbox model added.
"""


__all__ = ["OUTBOX_ONLY", "ROLE_NAMES", "RelayRoles"]
