"""
Admit policies: which relay URLs a L{relaypool.upstream.relaypool.RelayPool}
may connect to. A policy is a callable taking a normalized relay URL and
returning whether it may be connected; the pool asks it for every relay,
configured or found in a relay list by the outbox model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from relaypool.nostr.url import parseRelayURL

AdmitPolicy = Callable[[str], bool]
"""
Decides whether the pool may connect to a normalized relay URL.
"""


def denyOnion(url: str) -> bool:
    """
    An admit policy refusing Tor onion services (a C{.onion} host), which
    need a Tor proxy the pool does not use.
    """
    return not parseRelayURL(url).host.endswith(".onion")


class RelayPatterns:
    """
    An admit policy from shell-style patterns (C{*}, C{?}, C{[...]}), each
    matched against the normalized URL (C{wss://nos.lol/}) and against its
    host alone (C{*.onion}), case-insensitively.

    A URL matching a C{deny} pattern is refused; when there are C{allow}
    patterns, a URL must also match one of them.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = tuple(p.lower() for p in allow)
        self.deny = tuple(p.lower() for p in deny)

    def __call__(self, url: str) -> bool:
        return self.refusal(url) is None

    def refusal(self, url: str) -> str | None:
        """
        @return: why C{url} is refused (naming the pattern), or L{None} if
            it is admitted.
        """
        subjects = (url.lower(), parseRelayURL(url).host.lower())
        for pattern in self.deny:
            if any(fnmatchcase(subject, pattern) for subject in subjects):
                return f"it matches the deny pattern {pattern!r}"
        if self.allow and not any(
            fnmatchcase(subject, pattern) for pattern in self.allow for subject in subjects
        ):
            return f"it matches no allow pattern ({', '.join(repr(p) for p in self.allow)})"
        return None

    def __repr__(self) -> str:
        return f"RelayPatterns(allow={list(self.allow)!r}, deny={list(self.deny)!r})"


def refusal(policy: AdmitPolicy, url: str) -> str | None:
    """
    @return: why C{policy} refuses C{url}, or L{None} if it admits it.
    """
    explain = getattr(policy, "refusal", None)
    if explain is not None:
        reason: str | None = explain(url)
        return reason
    if policy(url):
        return None
    name = getattr(policy, "__name__", None) or repr(policy)
    return f"the admit policy {name} refuses it"


__all__ = ["AdmitPolicy", "RelayPatterns", "denyOnion", "refusal"]
