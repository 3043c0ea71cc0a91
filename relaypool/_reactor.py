"""
The reactor types relaypool's parts take, and L{defaultReactor}, the one
way a part falls back to the global reactor when it is given none.

A part that needs one reactor interface takes that Twisted interface:
L{IReactorTime} for a part that only reads the time and schedules calls
(the connection pool, the gateway's registry and facade, the outbox),
L{IReactorFromThreads} for the store. A part that needs several at once
takes one of these protocols:

    L{TimeTCPReactor}       IReactorTime and IReactorTCP: the multiplexer,
                            a relay, the gateway, the fake relay
    L{TimeResolverReactor}  IReactorTime and IReactorPluggableNameResolver:
                            the DNS name service
    L{ClientReactor}        both of the above, what connecting to a host
                            name needs: the relay pool, NIP-11 fetches, the
                            try-it client
    L{DaemonReactor}        a client reactor that is also
                            IReactorFromThreads and can be stopped: the
                            daemon

Python's typing has no intersection type, and a zope interface inheriting
from the ones it combines would be nominal: neither Twisted's reactors nor
L{twisted.internet.testing.MemoryReactorClock} declare it, so neither would
be accepted. So each combination is a L{typing.Protocol}, which they match
structurally, listing every member of the interfaces it combines; and it is
declared C{@implementer} of those interfaces, which mypy-zope reads as "a
subtype of them" (and checks against their signatures), so a value typed
with it is handed on unchanged to anything typed with one of the interfaces
(a L{LoopingCall}'s clock, L{Deferred.addTimeout}, the
L{relaypool.transport.pool.Pool}). The declaration is true because the
protocol lists every member of each interface it declares. L{DaemonReactor}
also lists the two L{IReactorCore} methods the daemon calls, without
declaring L{IReactorCore}.

Twisted's real reactors match every protocol here; C{MemoryReactorClock}
matches all but L{DaemonReactor} (it has no C{callFromThread}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IHostnameResolver,
    IListeningPort,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

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


@implementer(IReactorTime)
class _TimeReactor(Protocol):
    """
    L{IReactorTime}, structurally: the base of the combinations below.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def getDelayedCalls(self) -> Sequence[IDelayedCall]: ...


@implementer(IReactorTCP)
class TimeTCPReactor(_TimeReactor, Protocol):
    """
    An L{IReactorTime} and L{IReactorTCP}.
    """

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort: ...

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory[Any],
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector: ...


@implementer(IReactorPluggableNameResolver)
class TimeResolverReactor(_TimeReactor, Protocol):
    """
    An L{IReactorTime} and L{IReactorPluggableNameResolver}.
    """

    @property
    def nameResolver(self) -> IHostnameResolver: ...

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver: ...


class ClientReactor(TimeTCPReactor, TimeResolverReactor, Protocol):
    """
    An L{IReactorTime}, L{IReactorTCP} and L{IReactorPluggableNameResolver}:
    what connecting to a host name needs (L{HostnameEndpoint}, L{Agent}).
    """


@implementer(IReactorFromThreads)
class DaemonReactor(ClientReactor, Protocol):
    """
    A L{ClientReactor} that is also an L{IReactorFromThreads} (for the
    store's threads), and has the two L{IReactorCore} methods the daemon
    calls to stop the process (it is not declared an L{IReactorCore}: it
    does not list the rest).
    """

    def addSystemEventTrigger(
        self,
        phase: str,
        eventType: str,
        callable: Callable[..., Any],
        *args: object,
        **kwargs: object,
    ) -> Any: ...

    def stop(self) -> None: ...

    # Gradual: Twisted's reactors name the first parameter f (ReactorBase)
    # or callable (the interface, the asyncio reactor), and a protocol
    # member taking **kwargs cannot accept both names.
    def callFromThread(self, *args: Any, **kwargs: Any) -> None: ...


__all__ = [
    "ClientReactor",
    "DaemonReactor",
    "TimeResolverReactor",
    "TimeTCPReactor",
    "defaultReactor",
]
