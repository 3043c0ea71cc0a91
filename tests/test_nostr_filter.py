"""
Tests for L{relaypool.nostr.filter}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaypool.errors import InvalidFilter
from relaypool.nostr.event import Event
from relaypool.nostr.filter import (
    DEFAULT_FILTER_LIMITS,
    Filter,
    FilterLimits,
    filtersKey,
    matchesAny,
)

ID = "1" * 64
OTHER_ID = "2" * 64
AUTHOR = "a" * 64
OTHER_AUTHOR = "b" * 64


def makeEvent(
    id: str = ID,
    pubkey: str = AUTHOR,
    createdAt: int = 100,
    kind: int = 1,
    tags: tuple[tuple[str, ...], ...] = (("e", OTHER_ID), ("t", "nostr"), ("t", "py")),
) -> Event:
    """
    An unsigned event for matching.
    """
    return Event(id, pubkey, createdAt, kind, tags, "", "0" * 128)


def parse(obj: dict[str, Any]) -> Filter:
    """
    L{Filter.fromDict} with the default limits.
    """
    return Filter.fromDict(obj)


class FromDictTests(SynchronousTestCase):
    """
    Tests for L{Filter.fromDict} and L{Filter.toDict}.
    """

    def assertInvalid(
        self, obj: object, message: str, limits: FilterLimits = DEFAULT_FILTER_LIMITS
    ) -> None:
        """
        Assert that C{obj} is rejected with an C{invalid: } message holding
        C{message}.
        """
        exc = self.assertRaises(InvalidFilter, Filter.fromDict, obj, limits)
        self.assertTrue(str(exc).startswith("invalid: "), str(exc))
        self.assertIn(message, str(exc))

    def test_allFields(self) -> None:
        """
        Every NIP-01 field, NIP-50 C{search} and tag conditions are read.
        """
        f = parse(
            {
                "ids": [ID],
                "authors": [AUTHOR],
                "kinds": [1, 7],
                "#t": ["x"],
                "#e": [OTHER_ID],
                "since": 10,
                "until": 20,
                "limit": 5,
                "search": "cats",
            }
        )
        self.assertEqual(
            f,
            Filter(
                ids=frozenset([ID]),
                authors=frozenset([AUTHOR]),
                kinds=frozenset([1, 7]),
                tags=(("e", frozenset([OTHER_ID])), ("t", frozenset(["x"]))),
                since=10,
                until=20,
                limit=5,
                search="cats",
            ),
        )

    def test_empty(self) -> None:
        """
        An empty object is a filter with no conditions.
        """
        self.assertEqual(parse({}), Filter())

    def test_unknownKeysIgnored(self) -> None:
        """
        Unknown keys not starting with C{#} are ignored, and C{null} counts
        as absent.
        """
        self.assertEqual(parse({"kinds": [1], "foo": [1], "since": None}), parse({"kinds": [1]}))

    def test_toDictCanonical(self) -> None:
        """
        C{toDict} sorts every list, so equal filters give equal dicts.
        """
        f = parse({"kinds": [7, 1], "#t": ["b", "a"], "authors": [OTHER_AUTHOR, AUTHOR]})
        self.assertEqual(
            f.toDict(), {"kinds": [1, 7], "#t": ["a", "b"], "authors": [AUTHOR, OTHER_AUTHOR]}
        )

    def test_roundTrip(self) -> None:
        """
        C{fromDict} reads back what C{toDict} writes.
        """
        f = parse({"ids": [ID], "#p": [AUTHOR], "until": 3, "limit": 0, "search": "x"})
        self.assertEqual(parse(f.toDict()), f)

    def test_hashable(self) -> None:
        """
        Equal filters hash equal, whatever the order of their lists.
        """
        self.assertEqual(
            {
                parse({"kinds": [1, 2], "#t": ["a", "b"]}),
                parse({"#t": ["b", "a"], "kinds": [2, 1]}),
            },
            {parse({"kinds": [1, 2], "#t": ["a", "b"]})},
        )

    def test_constructorSortsTags(self) -> None:
        """
        Tag conditions given out of order are sorted by letter.
        """
        f = Filter(tags=(("t", frozenset("x")), ("e", frozenset())))
        self.assertEqual([letter for letter, _ in f.tags], ["e", "t"])

    def test_notAnObject(self) -> None:
        """
        A filter must be an object.
        """
        self.assertInvalid([], "JSON object")

    def test_badTagKey(self) -> None:
        """
        C{#} keys must be C{#} and a single ASCII letter.
        """
        for key in ("#", "#ab", "#1", "#\u00e9"):
            self.assertInvalid({key: ["x"]}, "one letter")

    def test_hexLists(self) -> None:
        """
        ids, authors, #e and #p values must be 64 lowercase hex characters.
        """
        for key in ("ids", "authors", "#e", "#p"):
            for bad in ("A" * 64, "a" * 10, 5):
                self.assertInvalid({key: [bad]}, "64 lowercase hex")

    def test_otherTagValues(self) -> None:
        """
        Other tag values may be any string, but must be strings.
        """
        self.assertEqual(parse({"#P": ["x"]}).tagValues("P"), frozenset(["x"]))
        self.assertInvalid({"#t": [1]}, "strings")

    def test_notALists(self) -> None:
        """
        List fields must be lists.
        """
        for key in ("ids", "authors", "kinds", "#t"):
            self.assertInvalid({key: "x"}, "must be a list")

    def test_badKinds(self) -> None:
        """
        kinds must be integers between 0 and 65535.
        """
        for bad in (-1, 65536, True, "1", 1.0):
            self.assertInvalid({"kinds": [bad]}, "between 0 and 65535")

    def test_badNumbers(self) -> None:
        """
        since, until and limit must be non-negative integers.
        """
        for key in ("since", "until", "limit"):
            for bad in (-1, True, 1.5, "1"):
                self.assertInvalid({key: bad}, "non-negative integer")

    def test_badSearch(self) -> None:
        """
        search must be a string.
        """
        self.assertInvalid({"search": 1}, "'search'")

    def test_tooManyValues(self) -> None:
        """
        Each list holds at most C{maxValues} values.
        """
        self.assertInvalid({"kinds": [1, 2, 3]}, "at most 2 values", FilterLimits(maxValues=2))

    def test_valueTooLong(self) -> None:
        """
        Tag values and search are at most C{maxValueLength} characters.
        """
        limits = FilterLimits(maxValueLength=3)
        self.assertInvalid({"#t": ["abcd"]}, "at most 3 characters", limits)
        self.assertInvalid({"search": "abcd"}, "at most 3 characters", limits)

    def test_limitClamped(self) -> None:
        """
        A limit above C{maxLimit} is lowered to it.
        """
        self.assertEqual(Filter.fromDict({"limit": 900}, FilterLimits(maxLimit=500)).limit, 500)


class MatchTests(SynchronousTestCase):
    """
    Tests for L{Filter.matches}.
    """

    def test_emptyMatchesAll(self) -> None:
        """
        A filter with no conditions matches any event.
        """
        self.assertTrue(Filter().matches(makeEvent()))

    def test_ids(self) -> None:
        """
        ids matches events whose id is listed.
        """
        self.assertTrue(parse({"ids": [OTHER_ID, ID]}).matches(makeEvent()))
        self.assertFalse(parse({"ids": [OTHER_ID]}).matches(makeEvent()))

    def test_authors(self) -> None:
        """
        authors matches events whose pubkey is listed.
        """
        self.assertTrue(parse({"authors": [AUTHOR]}).matches(makeEvent()))
        self.assertFalse(parse({"authors": [OTHER_AUTHOR]}).matches(makeEvent()))

    def test_kinds(self) -> None:
        """
        kinds matches events whose kind is listed.
        """
        self.assertTrue(parse({"kinds": [0, 1]}).matches(makeEvent()))
        self.assertFalse(parse({"kinds": [0]}).matches(makeEvent()))

    def test_emptyListsMatchNothing(self) -> None:
        """
        An empty list matches no event.
        """
        for key in ("ids", "authors", "kinds", "#t"):
            self.assertFalse(parse({key: []}).matches(makeEvent()))

    def test_sinceInclusive(self) -> None:
        """
        since matches events created at or after it.
        """
        self.assertTrue(parse({"since": 100}).matches(makeEvent()))
        self.assertFalse(parse({"since": 101}).matches(makeEvent()))

    def test_untilInclusive(self) -> None:
        """
        until matches events created at or before it.
        """
        self.assertTrue(parse({"until": 100}).matches(makeEvent()))
        self.assertFalse(parse({"until": 99}).matches(makeEvent()))

    def test_tagIntersection(self) -> None:
        """
        A tag condition matches when one of the event's values for that tag
        is listed.
        """
        self.assertTrue(parse({"#t": ["py", "rust"]}).matches(makeEvent()))
        self.assertFalse(parse({"#t": ["rust"]}).matches(makeEvent()))

    def test_tagFirstValueOnly(self) -> None:
        """
        Only the second element of a tag (its value) is matched, and tags
        without a value never match.
        """
        event = makeEvent(tags=(("t", "a", "b"), ("x",)))
        self.assertFalse(parse({"#t": ["b"]}).matches(event))
        self.assertFalse(parse({"#x": [""]}).matches(event))

    def test_tagLetterCaseMatters(self) -> None:
        """
        C{#T} and C{#t} are different conditions.
        """
        self.assertFalse(parse({"#T": ["nostr"]}).matches(makeEvent()))

    def test_allConditions(self) -> None:
        """
        Every condition must hold.
        """
        f = parse({"kinds": [1], "authors": [AUTHOR], "#e": [OTHER_ID], "#t": ["nostr"]})
        self.assertTrue(f.matches(makeEvent()))
        self.assertFalse(f.matches(makeEvent(kind=2)))
        self.assertFalse(f.matches(makeEvent(tags=(("t", "nostr"),))))

    def test_limitAndSearchIgnored(self) -> None:
        """
        limit and search do not affect matching.
        """
        self.assertTrue(parse({"limit": 0, "search": "nothing like it"}).matches(makeEvent()))

    def test_matchesAny(self) -> None:
        """
        L{matchesAny} is true when at least one filter matches.
        """
        event = makeEvent()
        self.assertTrue(matchesAny([parse({"kinds": [2]}), parse({"kinds": [1]})], event))
        self.assertFalse(matchesAny([parse({"kinds": [2]})], event))
        self.assertFalse(matchesAny([], event))


class HelperTests(SynchronousTestCase):
    """
    Tests for the filter helpers.
    """

    def test_withSince(self) -> None:
        """
        C{withSince} replaces since only.
        """
        f = parse({"kinds": [1], "since": 5})
        self.assertEqual(f.withSince(9), parse({"kinds": [1], "since": 9}))

    def test_withLimit(self) -> None:
        """
        C{withLimit} replaces or removes limit.
        """
        f = parse({"kinds": [1], "limit": 5})
        self.assertEqual(f.withLimit(1).limit, 1)
        self.assertEqual(f.withLimit(None), parse({"kinds": [1]}))

    def test_tagValues(self) -> None:
        """
        C{tagValues} gives a tag condition's values, or C{None}.
        """
        f = parse({"#t": ["a"], "#e": [ID]})
        self.assertEqual(f.tagValues("t"), frozenset(["a"]))
        self.assertIsNone(f.tagValues("p"))


class FiltersKeyTests(SynchronousTestCase):
    """
    Tests for L{filtersKey}.
    """

    def test_orderInsensitive(self) -> None:
        """
        Filters in another order, with lists and keys in another order,
        give the same key.
        """
        first = [parse({"kinds": [1, 7], "#t": ["a", "b"]}), parse({"authors": [AUTHOR]})]
        second = [parse({"authors": [AUTHOR]}), parse({"#t": ["b", "a"], "kinds": [7, 1]})]
        self.assertEqual(filtersKey(first), filtersKey(second))

    def test_duplicatesIgnored(self) -> None:
        """
        A repeated filter does not change the key.
        """
        f = parse({"kinds": [1]})
        self.assertEqual(filtersKey([f, f]), filtersKey([f]))

    def test_differentFilters(self) -> None:
        """
        Different filter sets give different keys.
        """
        self.assertNotEqual(
            filtersKey([parse({"kinds": [1]})]), filtersKey([parse({"kinds": [1], "limit": 1})])
        )

    def test_isJSON(self) -> None:
        """
        The key is a JSON array of the canonical filters.
        """
        self.assertEqual(filtersKey([parse({"kinds": [2, 1]})]), b'[{"kinds":[1,2]}]')
