"""
NIP-65 relay lists: the kind 10002 event in which a user names the relays
they write to and the relays they read their mentions from.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaypool.errors import InvalidRelayURL
from relaypool.nostr.event import Event
from relaypool.nostr.url import parseRelayURL

RELAY_LIST_KIND = 10002


@dataclass(frozen=True, slots=True)
class RelayList:
    """
    One user's relay list.

    @ivar pubkey: the user.
    @ivar createdAt: the C{created_at} of the event it came from (a newer
        list replaces it).
    @ivar write: the normalized URLs of the relays the user writes to, in
        the list's order: where their events are found.
    @ivar read: the normalized URLs of the relays the user reads: where
        events mentioning them are sent.
    @ivar skipped: the C{r} tags left out, because their URL is not a
        C{ws://} or C{wss://} URL or their marker is unknown.
    """

    pubkey: str
    createdAt: int
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    skipped: int = 0

    @classmethod
    def fromEvent(cls, event: Event) -> RelayList:
        """
        Read the C{r} tags of a kind 10002 event: C{["r", url]} is a read
        and write relay, C{["r", url, "read"]} or C{["r", url, "write"]}
        only one of them. A URL named twice keeps its first place.

        @raise ValueError: if the event is not of kind 10002.
        """
        if event.kind != RELAY_LIST_KIND:
            raise ValueError(f"a relay list is a kind {RELAY_LIST_KIND} event, not kind {event.kind}")
        write: dict[str, None] = {}
        read: dict[str, None] = {}
        skipped = 0
        for tag in event.tags:
            if len(tag) < 2 or tag[0] != "r":
                continue
            marker = tag[2] if len(tag) > 2 else ""
            try:
                url = parseRelayURL(tag[1]).url
            except InvalidRelayURL:
                skipped += 1
                continue
            if marker not in ("", "read", "write"):
                skipped += 1
                continue
            if marker != "read":
                write.setdefault(url, None)
            if marker != "write":
                read.setdefault(url, None)
        return cls(event.pubkey, event.createdAt, tuple(write), tuple(read), skipped)


__all__ = ["RELAY_LIST_KIND", "RelayList"]
