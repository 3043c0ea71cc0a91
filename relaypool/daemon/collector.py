"""
The daemon's setting of Python's cyclic garbage collector.

CPython collects its youngest generation of objects every 700 allocations
by default, and every object the process holds once enough of those
collections have passed. A busy daemon holds many objects that live for a
while (client connections and their subscriptions, the store calls waiting
for the writer thread, the events in flight), and with the default it
spends much of its time collecting them, holding the GIL: on the way to a
million stored events, C{bench/store.py} spent 8.4 s in the collector (87
full collections, about 80 ms each) with Python's default, 3.4 s (5 full
ones) with this module's. A larger first threshold makes every collection
rarer; unreachable reference cycles wait longer to be freed.
"""

from __future__ import annotations

import gc

from twisted.application import service

DEFAULT_COLLECTOR_THRESHOLD = 10_000
"""
The daemon's default for the allocations between two collections of
Python's youngest generation (Python's own default: 700).
"""


class CollectorThreshold(service.Service):
    """
    While it runs, Python's cyclic garbage collector collects its youngest
    generation every C{threshold} allocations (L{gc.set_threshold}'s
    first threshold), and the older generations as often as Python does
    after those collections. Stopping it restores the thresholds it found.
    """

    def __init__(self, threshold: int) -> None:
        """
        @param threshold: allocations between two collections of the
            youngest generation; at least 1.
        """
        if threshold < 1:
            raise ValueError(f"the collector threshold must be at least 1, got {threshold}")
        self.threshold = threshold
        self._previous: tuple[int, ...] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._previous = gc.get_threshold()
        gc.set_threshold(self.threshold, *self._previous[1:])

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None


__all__ = ["DEFAULT_COLLECTOR_THRESHOLD", "CollectorThreshold"]
