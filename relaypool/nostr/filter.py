"""
NIP-01 filters: validation, matching against events, and canonical keys
that identify a filter set whatever the order it was written in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from relaypool.errors import InvalidFilter
from relaypool.nostr.event import MAX_CREATED_AT, Event

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAG_KEY = re.compile(r"#[a-zA-Z]")
_HEX_TAGS = frozenset({"e", "p"})


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """
    Bounds applied by L{Filter.fromDict}.

    @ivar maxValues: the most values one list (C{ids}, C{authors}, C{kinds},
        each C{#x}) may hold; a longer list is rejected.
    @ivar maxValueLength: the longest tag value or C{search} string, in
        characters; a longer one is rejected.
    @ivar maxLimit: the largest C{limit}; a larger one is lowered to this.
        C{None} keeps C{limit} as given.
    """

    maxValues: int = 1000
    maxValueLength: int = 4096
    maxLimit: int | None = None


DEFAULT_FILTER_LIMITS = FilterLimits()


@dataclass(frozen=True, slots=True)
class Filter:
    """
    A NIP-01 filter. Every condition that is not C{None} must hold for an
    event to match; an empty set matches nothing.

    @ivar ids: event ids.
    @ivar authors: author pubkeys.
    @ivar kinds: event kinds.
    @ivar tags: C{(letter, values)} pairs for C{#letter} conditions, sorted
        by letter (the constructor sorts them).
    @ivar since: the oldest C{created_at} matched (inclusive).
    @ivar until: the newest C{created_at} matched (inclusive).
    @ivar limit: how many stored events to ask for; not used for matching.
    @ivar search: a NIP-50 search query, passed on but not used for
        matching.
    """

    ids: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    kinds: frozenset[int] | None = None
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    since: int | None = None
    until: int | None = None
    limit: int | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if any(a[0] > b[0] for a, b in zip(self.tags, self.tags[1:], strict=False)):
            object.__setattr__(self, "tags", tuple(sorted(self.tags, key=_letter)))

    @classmethod
    def fromDict(cls, obj: object, limits: FilterLimits = DEFAULT_FILTER_LIMITS) -> Filter:
        """
        Validate a decoded JSON filter and build a L{Filter}.

        Unknown keys that do not start with C{#} are ignored; a C{null}
        value counts as absent.

        @raise InvalidFilter: with a message starting with C{invalid: }.
        """
        if type(obj) is not dict:
            raise InvalidFilter("invalid: a filter must be a JSON object")
        tags = []
        for key, value in obj.items():
            if type(key) is str and key.startswith("#"):
                if not _TAG_KEY.fullmatch(key):
                    raise InvalidFilter(
                        f"invalid: filter key {key!r} must be '#' followed by one letter a-z or A-Z"
                    )
                letter = key[1]
                if letter in _HEX_TAGS:
                    tags.append((letter, _hexList(value, key, limits)))
                else:
                    tags.append((letter, _stringList(value, key, limits)))
        tags.sort()
        search = obj.get("search")
        if search is not None and (type(search) is not str or len(search) > limits.maxValueLength):
            raise InvalidFilter(
                f"invalid: filter 'search' must be a string of at most"
                f" {limits.maxValueLength} characters"
            )
        limit = _nonNegative(obj, "limit")
        if limit is not None and limits.maxLimit is not None:
            limit = min(limit, limits.maxLimit)
        ids = obj.get("ids")
        authors = obj.get("authors")
        kinds = obj.get("kinds")
        return cls(
            ids=None if ids is None else _hexList(ids, "ids", limits),
            authors=None if authors is None else _hexList(authors, "authors", limits),
            kinds=None if kinds is None else _kindList(kinds, "kinds", limits),
            tags=tuple(tags),
            since=_nonNegative(obj, "since"),
            until=_nonNegative(obj, "until"),
            limit=limit,
            search=search,
        )

    def toDict(self) -> dict[str, Any]:
        """
        The filter as a JSON-ready dict with every list sorted, so that
        equal filters give identical JSON.
        """
        result: dict[str, Any] = {}
        if self.ids is not None:
            result["ids"] = sorted(self.ids)
        if self.authors is not None:
            result["authors"] = sorted(self.authors)
        if self.kinds is not None:
            result["kinds"] = sorted(self.kinds)
        for letter, values in self.tags:
            result["#" + letter] = sorted(values)
        if self.since is not None:
            result["since"] = self.since
        if self.until is not None:
            result["until"] = self.until
        if self.limit is not None:
            result["limit"] = self.limit
        if self.search is not None:
            result["search"] = self.search
        return result

    def matches(self, event: Event) -> bool:
        """
        Whether C{event} meets every condition of this filter (C{limit}
        and C{search} are ignored).
        """
        if self.ids is not None and event.id not in self.ids:
            return False
        if self.authors is not None and event.pubkey not in self.authors:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.since is not None and event.createdAt < self.since:
            return False
        if self.until is not None and event.createdAt > self.until:
            return False
        for letter, values in self.tags:
            for tag in event.tags:
                if len(tag) > 1 and tag[0] == letter and tag[1] in values:
                    break
            else:
                return False
        return True

    def withSince(self, since: int) -> Filter:
        """
        A copy of this filter with C{since} replaced.
        """
        return replace(self, since=since)

    def withLimit(self, limit: int | None) -> Filter:
        """
        A copy of this filter with C{limit} replaced (C{None} removes it).
        """
        return replace(self, limit=limit)

    def tagValues(self, letter: str) -> frozenset[str] | None:
        """
        The values of the C{#letter} condition, or C{None} if there is none.
        """
        for key, values in self.tags:
            if key == letter:
                return values
        return None


def _list(value: object, key: str, limits: FilterLimits) -> list[Any]:
    if type(value) is not list:
        raise InvalidFilter(f"invalid: filter {key!r} must be a list")
    if len(value) > limits.maxValues:
        raise InvalidFilter(f"invalid: filter {key!r} may hold at most {limits.maxValues} values")
    return value


def _hexList(value: object, key: str, limits: FilterLimits) -> frozenset[str]:
    values = _list(value, key, limits)
    for item in values:
        if type(item) is not str or not _HEX64.fullmatch(item):
            raise InvalidFilter(
                f"invalid: filter {key!r} values must be 64 lowercase hex characters"
            )
    return frozenset(values)


def _stringList(value: object, key: str, limits: FilterLimits) -> frozenset[str]:
    values = _list(value, key, limits)
    for item in values:
        if type(item) is not str or len(item) > limits.maxValueLength:
            raise InvalidFilter(
                f"invalid: filter {key!r} values must be strings of at most"
                f" {limits.maxValueLength} characters"
            )
    return frozenset(values)


def _kindList(value: object, key: str, limits: FilterLimits) -> frozenset[int]:
    values = _list(value, key, limits)
    for item in values:
        if type(item) is not int or not 0 <= item <= 65535:
            raise InvalidFilter(
                f"invalid: filter {key!r} values must be integers between 0 and 65535"
            )
    return frozenset(values)


def _nonNegative(obj: dict[Any, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_CREATED_AT:
        raise InvalidFilter(f"invalid: filter {key!r} must be a non-negative integer")
    return value


def matchesAny(filters: Sequence[Filter], event: Event) -> bool:
    """
    Whether C{event} matches at least one of C{filters}.
    """
    return any(f.matches(event) for f in filters)


def filtersKey(filters: Sequence[Filter]) -> bytes:
    """
    Canonical bytes for a filter set: equal for the same filters in any
    order, with lists in any order and duplicates removed, so identical
    subscriptions from different clients map to the same key.
    """
    parts = sorted({orjson.dumps(f.toDict(), option=orjson.OPT_SORT_KEYS) for f in filters})
    return b"[" + b",".join(parts) + b"]"


def _letter(condition: tuple[str, frozenset[str]]) -> str:
    return condition[0]


def limitEvents(filters: Sequence[Filter], events: Iterable[Event]) -> list[Event]:
    """
    Apply NIP-01 C{limit}s to a union of events: each filter keeps its newest
    C{limit} matches (all of them without a limit).

    @return: the unique kept events, newest first, ties by lowest id.
    """
    ordered = sorted(events, key=lambda e: (-e.createdAt, e.id))
    kept: dict[str, Event] = {}
    for f in filters:
        matched = (e for e in ordered if f.matches(e))
        for index, event in enumerate(matched):
            if f.limit is not None and index >= f.limit:
                break
            kept[event.id] = event
    return sorted(kept.values(), key=lambda e: (-e.createdAt, e.id))


__all__ = [
    "DEFAULT_FILTER_LIMITS",
    "Filter",
    "FilterLimits",
    "filtersKey",
    "limitEvents",
    "matchesAny",
]
