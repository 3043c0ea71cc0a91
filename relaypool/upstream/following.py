"""
Following a Deferred without taking its result: see L{follow}.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_T = TypeVar("_T")


def follow(source: Deferred[_T]) -> Deferred[_T]:
    """
    @return: a new Deferred firing with C{source}'s result (or failure),
        leaving C{source}'s own result to its other followers.
    """
    follower: Deferred[_T] = Deferred()

    def passOn(result: _T | Failure) -> _T | Failure:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    source.addBoth(passOn)
    return follower


__all__ = ["follow"]
