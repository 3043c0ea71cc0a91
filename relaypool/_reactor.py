"""
The reactor a part uses when it is given none.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

_R = TypeVar("_R")


def defaultReactor(reactor: _R | None) -> _R:
    """
    @return: C{reactor}, or the global reactor if it is L{None}. The global
        reactor is imported only then, so that importing relaypool never
        installs one (C{twistd -r} chooses it later).
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as globalReactor

    return cast(_R, cast(Any, globalReactor))


__all__ = [
    "defaultReactor",
]
