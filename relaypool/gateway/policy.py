"""
The gateway's event policy: which events downstream clients may publish,
and which events are never served to them.

An L{EventPolicy} is an immutable value; the gateway holds one and an
operator replaces it as a whole (L{relaypool.gateway.facade.RelayFacade.setPolicy}),
from the config or through the NIP-86 management API.

What it decides:
  - Publishing (C{EVENT} from a client), in this order: a banned event id,
    a banned author (pubkey) or a disallowed kind is refused with
    C{blocked: ...}; in write-restricted mode an author not on the allowed
    list, and with an allowed-kinds list a kind not on it, is refused with
    C{restricted: ...}.
  - Serving: events with a banned id, by a banned author or of a disallowed
    kind are not delivered to clients, whether they come from the store or
    from the upstream relays. The allow lists and write-restricted mode
    govern publishing only: a relay pool serves what its relays have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from relaypool.nostr.event import Event

__all__ = ["EventPolicy"]


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """
    The pubkey, event and kind lists of the gateway, and whether it is
    write-restricted.

    @ivar bannedPubkeys: authors whose events are refused and not served,
        each with the reason given (may be empty).
    @ivar allowedPubkeys: the authors who may publish in write-restricted
        mode, each with a reason; without C{writeRestricted} this list
        refuses nobody.
    @ivar bannedEvents: event ids refused and not served, with reasons.
    @ivar allowedKinds: if not empty, the only kinds clients may publish.
    @ivar disallowedKinds: kinds refused and not served.
    @ivar writeRestricted: only the authors in C{allowedPubkeys} may
        publish (nobody when it is empty).
    """

    bannedPubkeys: Mapping[str, str] = field(default_factory=dict)
    allowedPubkeys: Mapping[str, str] = field(default_factory=dict)
    bannedEvents: Mapping[str, str] = field(default_factory=dict)
    allowedKinds: frozenset[int] = frozenset()
    disallowedKinds: frozenset[int] = frozenset()
    writeRestricted: bool = False

    def __post_init__(self) -> None:
        # Private copies: a caller's dict changing later must not change
        # the policy.
        for name in ("bannedPubkeys", "allowedPubkeys", "bannedEvents"):
            object.__setattr__(self, name, dict(getattr(self, name)))
        object.__setattr__(self, "allowedKinds", frozenset(self.allowedKinds))
        object.__setattr__(self, "disallowedKinds", frozenset(self.disallowedKinds))

    @classmethod
    def fromLists(
        cls,
        allowPubkeys: Iterable[str] = (),
        denyPubkeys: Iterable[str] = (),
        allowKinds: Iterable[int] = (),
        denyKinds: Iterable[int] = (),
        writeRestricted: bool = False,
    ) -> EventPolicy:
        """
        Build a policy from plain lists, as the config gives them (no
        reasons, no banned events).
        """
        return cls(
            bannedPubkeys=dict.fromkeys(denyPubkeys, ""),
            allowedPubkeys=dict.fromkeys(allowPubkeys, ""),
            allowedKinds=frozenset(allowKinds),
            disallowedKinds=frozenset(denyKinds),
            writeRestricted=writeRestricted,
        )

    # --- decisions -----------------------------------------------------------

    def refusal(self, event: Event) -> str | None:
        """
        Whether a client may publish C{event}.

        @return: the C{OK false} message (C{blocked: ...} or
            C{restricted: ...}) if not, else L{None}.
        """
        if event.id in self.bannedEvents:
            return _because(
                "blocked: this event is banned from this relay", self.bannedEvents[event.id]
            )
        if event.pubkey in self.bannedPubkeys:
            return _because(
                "blocked: this pubkey is banned from this relay", self.bannedPubkeys[event.pubkey]
            )
        if event.kind in self.disallowedKinds:
            return f"blocked: kind {event.kind} events are not accepted by this relay"
        if self.writeRestricted and event.pubkey not in self.allowedPubkeys:
            return "restricted: only allowed pubkeys may publish to this relay"
        if self.allowedKinds and event.kind not in self.allowedKinds:
            return f"restricted: kind {event.kind} events are not allowed on this relay"
        return None

    def hides(self, event: Event) -> bool:
        """
        @return: whether C{event} must not be served to clients: its id or
            its author is banned, or its kind disallowed.
        """
        return (
            event.id in self.bannedEvents
            or event.pubkey in self.bannedPubkeys
            or event.kind in self.disallowedKinds
        )

    # --- changes (each returns a new policy) --------------------------------

    def banPubkey(self, pubkey: str, reason: str = "") -> EventPolicy:
        """
        @return: this policy with C{pubkey} banned.
        """
        return replace(self, bannedPubkeys={**self.bannedPubkeys, pubkey: reason})

    def unbanPubkey(self, pubkey: str) -> EventPolicy:
        """
        @return: this policy with C{pubkey} no longer banned.
        """
        return replace(self, bannedPubkeys=_without(self.bannedPubkeys, pubkey))

    def allowPubkey(self, pubkey: str, reason: str = "") -> EventPolicy:
        """
        @return: this policy with C{pubkey} on the allowed list.
        """
        return replace(self, allowedPubkeys={**self.allowedPubkeys, pubkey: reason})

    def unallowPubkey(self, pubkey: str) -> EventPolicy:
        """
        @return: this policy with C{pubkey} off the allowed list.
        """
        return replace(self, allowedPubkeys=_without(self.allowedPubkeys, pubkey))

    def banEvent(self, eventId: str, reason: str = "") -> EventPolicy:
        """
        @return: this policy with the event C{eventId} banned.
        """
        return replace(self, bannedEvents={**self.bannedEvents, eventId: reason})

    def unbanEvent(self, eventId: str) -> EventPolicy:
        """
        @return: this policy with the event C{eventId} no longer banned.
        """
        return replace(self, bannedEvents=_without(self.bannedEvents, eventId))

    def allowKind(self, kind: int) -> EventPolicy:
        """
        @return: this policy with C{kind} on the allowed kinds and off the
            disallowed ones.
        """
        return replace(
            self,
            allowedKinds=self.allowedKinds | {kind},
            disallowedKinds=self.disallowedKinds - {kind},
        )

    def disallowKind(self, kind: int) -> EventPolicy:
        """
        @return: this policy with C{kind} on the disallowed kinds and off
            the allowed ones.
        """
        return replace(
            self,
            allowedKinds=self.allowedKinds - {kind},
            disallowedKinds=self.disallowedKinds | {kind},
        )


def _because(message: str, reason: str) -> str:
    return f"{message}: {reason}" if reason else message


def _without(entries: Mapping[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in entries.items() if k != key}
