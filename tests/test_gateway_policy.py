"""
Tests for L{relaypool.gateway.policy.EventPolicy}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaypool.gateway.policy import EventPolicy
from relaypool.nostr.event import Event, generatePrivateKey, publicKeyFor

KEY = generatePrivateKey()
PUBKEY = publicKeyFor(KEY)
EVENT = Event.sign(KEY, 1, "hello", createdAt=1_700_000_000)


class RefusalTests(SynchronousTestCase):
    """
    L{EventPolicy.refusal} gives the C{OK false} message for an event a
    client may not publish.
    """

    def test_nothingRefused(self) -> None:
        """
        The default policy refuses nothing.
        """
        self.assertIsNone(EventPolicy().refusal(EVENT))

    def test_bannedPubkey(self) -> None:
        """
        A banned author is refused with C{blocked:} and the reason.
        """
        self.assertEqual(
            EventPolicy().banPubkey(PUBKEY, "spam").refusal(EVENT),
            "blocked: this pubkey is banned from this relay: spam",
        )

    def test_bannedEvent(self) -> None:
        """
        A banned event id is refused with C{blocked:}, without a reason when
        none was given.
        """
        self.assertEqual(
            EventPolicy().banEvent(EVENT.id).refusal(EVENT),
            "blocked: this event is banned from this relay",
        )

    def test_disallowedKind(self) -> None:
        """
        A disallowed kind is refused with C{blocked:}.
        """
        self.assertEqual(
            EventPolicy.fromLists(denyKinds=[1]).refusal(EVENT),
            "blocked: kind 1 events are not accepted by this relay",
        )

    def test_notAllowedKind(self) -> None:
        """
        With an allowed-kinds list, another kind is refused with
        C{restricted:}.
        """
        self.assertEqual(
            EventPolicy.fromLists(allowKinds=[7]).refusal(EVENT),
            "restricted: kind 1 events are not allowed on this relay",
        )
        self.assertIsNone(EventPolicy.fromLists(allowKinds=[1, 7]).refusal(EVENT))

    def test_writeRestricted(self) -> None:
        """
        In write-restricted mode, only the allowed authors may publish;
        others are refused with C{restricted:}.
        """
        restricted = EventPolicy(writeRestricted=True)
        self.assertEqual(
            restricted.refusal(EVENT), "restricted: only allowed pubkeys may publish to this relay"
        )
        self.assertIsNone(restricted.allowPubkey(PUBKEY).refusal(EVENT))

    def test_allowListAloneRestrictsNothing(self) -> None:
        """
        Without write-restricted mode, the allowed-pubkeys list refuses
        nobody.
        """
        self.assertIsNone(EventPolicy.fromLists(allowPubkeys=["ab" * 32]).refusal(EVENT))

    def test_banBeatsAllow(self) -> None:
        """
        A banned author is refused even when allowed.
        """
        policy = EventPolicy(writeRestricted=True).allowPubkey(PUBKEY).banPubkey(PUBKEY)
        self.assertEqual(policy.refusal(EVENT), "blocked: this pubkey is banned from this relay")


class HidesTests(SynchronousTestCase):
    """
    L{EventPolicy.hides}: what is not served to clients.
    """

    def test_denyListsHide(self) -> None:
        """
        Banned ids, banned authors and disallowed kinds are hidden.
        """
        for policy in (
            EventPolicy().banEvent(EVENT.id),
            EventPolicy().banPubkey(PUBKEY),
            EventPolicy().disallowKind(1),
        ):
            self.assertTrue(policy.hides(EVENT), policy)

    def test_allowListsDoNotHide(self) -> None:
        """
        The allow lists and write-restricted mode govern publishing only.
        """
        policy = EventPolicy.fromLists(
            allowPubkeys=["ab" * 32], allowKinds=[7], writeRestricted=True
        )
        self.assertFalse(policy.hides(EVENT))


class ChangeTests(SynchronousTestCase):
    """
    The changes return new policies and leave the old one as it was.
    """

    def test_immutable(self) -> None:
        """
        Banning gives a new policy; the original still refuses nothing.
        """
        original = EventPolicy()
        original.banPubkey(PUBKEY)
        self.assertEqual(original.bannedPubkeys, {})

    def test_ownCopy(self) -> None:
        """
        A policy keeps its own copy of the mappings it was given.
        """
        banned = {PUBKEY: ""}
        policy = EventPolicy(bannedPubkeys=banned)
        banned.clear()
        self.assertTrue(policy.hides(EVENT))

    def test_unban(self) -> None:
        """
        Unbanning a pubkey or an event, and unallowing a pubkey, take them
        off their lists.
        """
        policy = EventPolicy().banPubkey(PUBKEY).banEvent(EVENT.id).allowPubkey(PUBKEY)
        policy = policy.unbanPubkey(PUBKEY).unbanEvent(EVENT.id).unallowPubkey(PUBKEY)
        self.assertEqual(
            (policy.bannedPubkeys, policy.bannedEvents, policy.allowedPubkeys), ({}, {}, {})
        )

    def test_kindMovesBetweenLists(self) -> None:
        """
        Allowing a kind takes it off the disallowed kinds, and disallowing
        it off the allowed ones.
        """
        policy = EventPolicy().disallowKind(1).allowKind(1)
        self.assertEqual((policy.allowedKinds, policy.disallowedKinds), ({1}, set()))
        policy = policy.disallowKind(1)
        self.assertEqual((policy.allowedKinds, policy.disallowedKinds), (set(), {1}))
