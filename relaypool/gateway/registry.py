"""
The gateway's registry of downstream WebSocket connections and their rooms.

A room is the set of connections that share one upstream subscription; a
frame sent to a room is built once (an Autobahn prepared message) and written
to every member. The frames a connection gets in one reactor turn are handed
to its transport in one write at the end of the turn (one C{callLater(0)} for
all connections; the transport would not send before then anyway), or as
soon as they reach L{DRAIN_CHUNK_BYTES}; a transport write costs more than
the rest of a recipient's share of a fan-out. They go to the transport
directly, not through Autobahn's C{sendData} (which formats a debug log line
per frame; its C{trafficStats} do not count them), unless the connection
uses a WebSocket extension. One L{LoopingCall} pings every connection and
reaps the idle ones, and one timer aborts the connections that do not finish
closing in time: no timer is kept per connection.

Slow readers
============

Frames are written to a connection's transport while its write buffer is
below the transport's high-water mark (64 KiB for TCP). Once the transport
reports a full buffer, further frames wait in the connection's backlog, which
holds the prepared frames (shared with the other recipients, not copied) and
is written out when the transport drains, L{DRAIN_CHUNK_BYTES} at a time. A
burst therefore never costs a client that keeps up: its backlog empties as
fast as it reads. A transport holds at most L{DRAIN_CHUNK_BYTES} over its
high-water mark, and a connection at most that much written in the current
turn and not yet handed to the transport.

A client is evicted (close code 1008) when it stays behind the live stream:
its backlog has held more than C{maxPendingBytes} for C{maxLag} seconds, or
it reached C{maxBacklogBytes} (the memory guard, whatever the time). Senders
that can wait, such as a subscription's stored answer, do not add to the
backlog: they write while L{ConnectionRegistry.isWritable} and ask
L{ConnectionRegistry.notifyWritable} to call them back when the connection
drained.

How a facade protocol uses the registry:

    - serve it from a L{WebSocketServerFactory} with C{autoPingInterval=0}
      (Autobahn's default; the registry pings from its sweep) and without
      permessage-deflate (Autobahn's default: a compressed connection cannot
      use the prepared frame and is framed again for each member);
    - call L{ConnectionRegistry.register} from C{onOpen};
    - call L{ConnectionRegistry.touch} from C{onMessage}, C{onPing} and
      C{onPong};
    - call L{ConnectionRegistry.leaveRoom} when a member leaves a room: it
      says whether the room is now empty, so the facade can close its
      upstream subscription (the registry is the one home of rooms'
      members);
    - call L{ConnectionRegistry.unregister} from C{onClose}. Unregistering
      leaves every room. Connections the registry closes itself (slow clients,
      idle ones, shutdown) also end in C{onClose}; those that do not close
      within C{closeTimeout} are aborted and unregistered by the registry.
      Autobahn's own C{closeHandshakeTimeout} is then redundant for them;
      its timer outlives an aborted connection until it fires (harmless, but
      trial reports it as a dirty reactor), so tests set it to 0.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaypool._reactor import defaultReactor
from relaypool.errors import ConfigError, UnknownConnection

ConnId = int

_log = Logger()

DRAIN_CHUNK_BYTES = 1 << 16
"""
How many bytes of backlog frames a drained transport gets in one write (the
last frame may go past it): a backlog is written in a few writes, not one per
frame, and a transport holds at most this much over its high-water mark.
"""

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSE_NORMAL = 1000
_CLOSE_GOING_AWAY = 1001
_CLOSE_POLICY_VIOLATION = 1008


def _payload(text: bytes | str) -> bytes:
    """
    @return: C{text} as a text frame's UTF-8 payload.
    @raise TypeError: if C{text} is neither L{bytes} nor L{str}.
    """
    if isinstance(text, bytes):
        return text
    if isinstance(text, str):
        return text.encode("utf-8")
    raise TypeError(f"a text frame is bytes (UTF-8) or str, not {type(text).__name__}")


@dataclass(slots=True)
class Claims:
    """
    What a downstream connection proved about itself, for policy code.

    Mutable: NIP-42 authentication happens after the connection opened.

    @ivar ip: the client's IP address.
    @ivar pubkey: the hex public key the client authenticated as (NIP-42),
        or L{None}.
    """

    ip: str | None = None
    pubkey: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """
    A snapshot of a L{ConnectionRegistry}'s state and counters.

    @ivar connections: registered connections (open or closing).
    @ivar closing: connections the registry is closing and will abort if they
        do not finish in time.
    @ivar rooms: rooms with at least one member.
    @ivar evictedSlow: connections closed for staying behind: their backlog
        held more than C{maxPendingBytes} for C{maxLag} seconds, or reached
        C{maxBacklogBytes}.
    @ivar reapedIdle: connections closed because they were silent for longer
        than the idle window.
    @ivar droppedDead: frames not written because their connection was
        already closed or closing.
    @ivar framesSent: frames written.
    @ivar bytesPending: the bytes of the frames waiting in the connections'
        backlogs (their transports' buffers were full).
    """

    connections: int
    closing: int
    rooms: int
    evictedSlow: int
    reapedIdle: int
    droppedDead: int
    framesSent: int
    bytesPending: int


@implementer(IPushProducer)
@dataclass(slots=True, eq=False)
class _Connection:
    """
    A registered connection. It is its transport's streaming producer, so
    that the transport tells it when its write buffer is over its high-water
    mark (paused) and when the buffer drained (resumed: the registry then
    writes the connection's backlog).
    """

    connId: ConnId
    protocol: Any
    # Where its frames are written: the protocol's transport, or None if a
    # WebSocket extension (permessage-deflate) must frame each message itself.
    transport: Any
    claims: Claims
    registry: ConnectionRegistry
    lastSeen: float
    paused: bool = False
    # Made when first needed: an idle connection has none of these.
    rooms: set[Hashable] | None = None
    closing: bool = False
    backlog: deque[tuple[Any, int]] | None = None
    backlogBytes: int = 0
    # The frames written in this reactor turn, handed to the transport in one
    # write at the end of the turn (or once they reach DRAIN_CHUNK_BYTES).
    pending: list[bytes] | None = None
    pendingBytes: int = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.registry._drained(self.connId)

    def stopProducing(self) -> None:
        # The connection is lost; unregister() forgets its backlog.
        self.paused = True
    behindSince: float | None = None
    drainWaiters: list[Callable[[], None]] | None = None


class ConnectionRegistry(service.Service):
    """
    The registry of downstream WebSocket connections, their rooms and claims.
    """

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        maxPendingBytes: int = 1 << 20,
        pingInterval: float = 30.0,
        maxIdle: float = 90.0,
        closeTimeout: float = 5.0,
        maxLag: float = 10.0,
        maxBacklogBytes: int = 8 << 20,
    ) -> None:
        """
        @param reactor: an L{IReactorTime}; the global reactor if L{None}.
        @param maxPendingBytes: how many bytes may wait in a connection's
            backlog (its transport's buffer being full) before the connection
            counts as behind.
        @param maxLag: seconds a connection may stay behind (over
            C{maxPendingBytes}) before it is evicted (code 1008).
        @param maxBacklogBytes: the memory guard: a connection whose backlog
            reaches this many bytes is evicted at once.
        @param pingInterval: seconds between two sweeps; each sweep reaps the
            idle connections and pings every other one.
        @param maxIdle: seconds without an inbound frame after which the
            sweep closes a connection.
        @param closeTimeout: seconds a connection the registry closes gets to
            finish the close handshake before its transport is aborted.
        """
        reactor = defaultReactor(reactor)
        self._reactor = reactor
        self._sweeper: LoopingCall | None = None
        self._pingInterval = pingInterval
        self.setBounds(maxPendingBytes, pingInterval, maxIdle, maxLag, maxBacklogBytes)
        self._closeTimeout = closeTimeout
        self._ids = itertools.count(1)
        self._conns: dict[ConnId, _Connection] = {}
        self._rooms: dict[Hashable, dict[ConnId, _Connection]] = {}
        # Deadlines in insertion order, which is deadline order: the timeout
        # is the same for every connection.
        self._closing: dict[ConnId, float] = {}
        self._abortCall: IDelayedCall | None = None
        self._overflowing: list[tuple[_Connection, str]] = []
        self._dirty: list[_Connection] = []
        self._flushCall: IDelayedCall | None = None
        self._emptyWaiters: list[Deferred[None]] = []
        self._evictedSlow = 0
        self._reapedIdle = 0
        self._droppedDead = 0
        self._framesSent = 0

    # --- connections --------------------------------------------------------

    def register(self, protocol: Any, claims: Claims | None = None) -> ConnId:
        """
        Register an open WebSocket server protocol; call it from C{onOpen}.

        @param protocol: an open
            L{autobahn.twisted.websocket.WebSocketServerProtocol}.
        @param claims: what the connection proved; by default a L{Claims}
            holding the transport's peer host as its IP.
        @return: the connection's new id.
        @raise ConfigError: if the protocol runs Autobahn's own auto-ping,
            which would add two timers per connection.
        """
        if protocol.autoPingInterval:
            raise ConfigError(
                "autoPingInterval",
                "must be 0: the connection registry pings every connection from one sweep",
            )
        transport = protocol.transport
        if claims is None:
            claims = Claims(ip=getattr(transport.getPeer(), "host", None))
        conn = _Connection(
            next(self._ids),
            protocol,
            None if protocol.websocket_extensions_in_use else transport,
            claims,
            self,
            self._reactor.seconds(),
        )
        try:
            transport.registerProducer(conn, True)
        except RuntimeError:
            # twisted.web's HTTPChannel stays registered as the producer of
            # a transport that Autobahn's WebSocketResource took over.
            transport.unregisterProducer()
            transport.registerProducer(conn, True)
        self._conns[conn.connId] = conn
        return conn.connId

    def unregister(self, connId: ConnId) -> None:
        """
        Forget a connection and take it out of every room it had joined;
        call it from C{onClose}. Idempotent.
        """
        conn = self._conns.pop(connId, None)
        if conn is None:
            return
        conn.pending = None
        for room in conn.rooms or ():
            members = self._rooms[room]
            del members[connId]
            if not members:
                del self._rooms[room]
        if self._closing.pop(connId, None) is not None and not self._closing:
            self._cancelAbortCall()
        if not self._conns:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def touch(self, connId: ConnId) -> None:
        """
        Record inbound activity on a connection, for the idle sweep; call it
        on every inbound frame, pongs included. Unknown ids are ignored.
        """
        conn = self._conns.get(connId)
        if conn is not None:
            conn.lastSeen = self._reactor.seconds()

    def connectionCount(self) -> int:
        """
        @return: the number of registered connections. O(1).
        """
        return len(self._conns)

    def claims(self, connId: ConnId) -> Claims:
        """
        @return: the connection's L{Claims}, which the caller may update.
        @raise UnknownConnection: if C{connId} is not registered.
        """
        conn = self._conns.get(connId)
        if conn is None:
            raise UnknownConnection(f"connection {connId} is not registered")
        return conn.claims

    # --- rooms --------------------------------------------------------------

    def joinRoom(self, connId: ConnId, room: Hashable) -> None:
        """
        Add a connection to a room. A connection that is not registered or is
        closing (it left meanwhile) joins nothing.
        """
        conn = self._conns.get(connId)
        if conn is None or conn.closing:
            return
        if conn.rooms is None:
            conn.rooms = set()
        conn.rooms.add(room)
        self._rooms.setdefault(room, {})[connId] = conn

    def leaveRoom(self, connId: ConnId, room: Hashable) -> bool:
        """
        Take a connection out of a room.

        @return: C{True} if the room has no member left, so that the caller
            can close the upstream subscription behind it.
        """
        conn = self._conns.get(connId)
        members = self._rooms.get(room)
        if conn is not None and members is not None and conn.rooms and room in conn.rooms:
            conn.rooms.discard(room)
            del members[connId]
            if not members:
                del self._rooms[room]
        return room not in self._rooms

    def roomSize(self, room: Hashable) -> int:
        """
        @return: the number of members of C{room}.
        """
        return len(self._rooms.get(room, ()))

    def roomCount(self) -> int:
        """
        @return: the number of rooms with at least one member.
        """
        return len(self._rooms)

    def roomsOf(self, connId: ConnId) -> frozenset[Hashable]:
        """
        @return: the rooms the connection is in (none if it is unknown).
        """
        conn = self._conns.get(connId)
        return frozenset(conn.rooms or ()) if conn is not None else frozenset()

    # --- sending ------------------------------------------------------------

    def sendText(self, connId: ConnId, text: bytes | str) -> bool:
        """
        Send one text frame to one connection, without waiting: it is written
        now, or queued in the connection's backlog if its transport's buffer
        is full.

        @param text: the frame payload: UTF-8 encoded L{bytes}, or a L{str}
            (encoded as UTF-8 here).
        @return: C{False} if it was neither written nor queued: the
            connection is unknown, closed or closing, or was evicted for
            staying behind.
        @raise TypeError: if C{text} is neither L{bytes} nor L{str}.
        """
        text = _payload(text)
        conn = self._conns.get(connId)
        if conn is None:
            return False
        return self._broadcast((conn,), text) == 1

    def broadcastText(self, text: bytes | str) -> int:
        """
        Send one text frame to every registered connection; see
        L{broadcastRoomText}.

        @return: the number of connections it was written or queued to.
        @raise TypeError: if C{text} is neither L{bytes} nor L{str}.
        """
        return self._broadcast(tuple(self._conns.values()), _payload(text))

    def broadcastRoomText(self, room: Hashable, text: bytes | str) -> int:
        """
        Send one text frame to every member of a room. The frame is built
        once; a member that is closed is skipped silently; a member whose
        transport's buffer is full gets it in its backlog; a member that
        stays behind (see the module docstring) is closed with code 1008 once
        every other member got the frame.

        @param text: the frame payload: UTF-8 encoded L{bytes}, or a L{str}
            (encoded as UTF-8 here).
        @return: the number of members it was written or queued to.
        @raise TypeError: if C{text} is neither L{bytes} nor L{str}.
        """
        text = _payload(text)
        members = self._rooms.get(room)
        if members is None:
            return 0
        return self._broadcast(tuple(members.values()), text)

    def isWritable(self, connId: ConnId) -> bool:
        """
        @return: whether a frame sent to the connection now goes straight to
            its transport: the connection is open, its backlog is empty and
            its transport's buffer is below the high-water mark.
        """
        conn = self._conns.get(connId)
        return (
            conn is not None
            and not conn.closing
            and not conn.backlog
            and not conn.paused
            and conn.protocol.state == _STATE_OPEN
        )

    def notifyWritable(self, connId: ConnId, callback: Callable[[], None]) -> bool:
        """
        Call C{callback} once, the next time the connection's transport
        drained and its backlog is written out: a sender that can wait (a
        stored answer) writes while L{isWritable} and then waits for this.

        @return: C{False} if the connection is unknown or closing: nothing is
            registered and C{callback} will not be called.
        """
        conn = self._conns.get(connId)
        if conn is None or conn.closing:
            return False
        if conn.drainWaiters is None:
            conn.drainWaiters = []
        conn.drainWaiters.append(callback)
        return True

    def _broadcast(self, conns: tuple[_Connection, ...], text: bytes) -> int:
        if not conns:
            return 0
        prepared = conns[0].protocol.factory.prepareMessage(text)
        frame = prepared.payloadHybi
        frameSize = len(frame)
        size = len(text)
        written = sent = 0
        dirty = self._dirty
        # The hot loop of a fan-out. A frame is not handed to each transport
        # at once (a transport write costs more than the rest of this loop):
        # it joins the frames written to the connection in this reactor turn,
        # which _flush writes in one piece at the end of the turn, when the
        # transport would have sent it anyway.
        for conn in conns:
            if conn.closing or conn.protocol.state != _STATE_OPEN:
                continue
            written += 1
            pending = conn.pending
            if pending is not None:
                # Whatever the transport said since: it gets these first.
                pending.append(frame)
                conn.pendingBytes += frameSize
                if conn.pendingBytes >= DRAIN_CHUNK_BYTES:
                    self._writePending(conn)
            elif conn.backlog or conn.paused:
                self._queue(conn, prepared, size)
                continue
            elif conn.transport is None:
                self._send(conn, [prepared])
                continue
            else:
                conn.pending = [frame]
                conn.pendingBytes = frameSize
                dirty.append(conn)
            sent += 1
        if dirty and self._flushCall is None:
            self._flushCall = self._reactor.callLater(0, self._flush)
        self._droppedDead += len(conns) - written
        self._framesSent += sent
        self._evictOverflowing()
        return written

    def _writePending(self, conn: _Connection) -> None:
        """
        Hand the frames written to C{conn} in this turn to its transport, in
        one write.
        """
        pending = conn.pending
        conn.pending = None
        conn.pendingBytes = 0
        if pending and conn.protocol.state == _STATE_OPEN:
            conn.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _flush(self) -> None:
        """
        The end of a reactor turn: write what each connection got in it.
        """
        self._flushCall = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn.pending is not None:
                self._writePending(conn)

    def _queue(self, conn: _Connection, prepared: Any, size: int) -> None:
        """
        Queue a frame in the backlog of C{conn}, whose transport's buffer is
        full.
        """
        if conn.pending is not None:
            # Written before the transport filled (an Autobahn control
            # frame filled it): they go first.
            self._writePending(conn)
        if conn.backlog is None:
            conn.backlog = deque()
        conn.backlog.append((prepared, size))
        conn.backlogBytes += size
        if conn.backlogBytes > self._maxPendingBytes:
            self._checkLag(conn, self._reactor.seconds())

    def _send(self, conn: _Connection, frames: list[Any]) -> None:
        """
        Write prepared frames to the transport of C{conn} in one write, or
        through Autobahn when an extension frames each message.
        """
        if conn.transport is not None:
            conn.transport.write(b"".join([prepared.payloadHybi for prepared in frames]))
        else:
            for prepared in frames:
                conn.protocol.sendPreparedMessage(prepared)
        self._framesSent += len(frames)

    def _checkLag(self, conn: _Connection, now: float) -> None:
        """
        Mark C{conn} for eviction if it stays behind; see the module
        docstring.
        """
        if conn.backlogBytes <= self._maxPendingBytes:
            conn.behindSince = None
            return
        if conn.behindSince is None:
            conn.behindSince = now
        if conn.backlogBytes >= self._maxBacklogBytes:
            reason = f"slow client: {conn.backlogBytes} bytes waiting to be read"
        elif now - conn.behindSince >= self._maxLag:
            reason = (
                f"slow client: more than {self._maxPendingBytes} bytes behind "
                f"for {self._maxLag:g} s"
            )
        else:
            return
        self._overflowing.append((conn, reason))

    def _drained(self, connId: ConnId) -> None:
        """
        The connection's transport wrote out its buffer: write its backlog,
        L{DRAIN_CHUNK_BYTES} at a time, until the transport is full again,
        then, if the backlog is empty, call the senders waiting for it.
        """
        conn = self._conns.get(connId)
        if conn is None or conn.closing:
            return
        backlog = conn.backlog
        while backlog and not conn.paused:
            frames = []
            chunkBytes = 0
            while backlog and chunkBytes < DRAIN_CHUNK_BYTES:
                prepared, size = backlog.popleft()
                frames.append(prepared)
                chunkBytes += size
            conn.backlogBytes -= chunkBytes
            self._send(conn, frames)
        self._checkLag(conn, self._reactor.seconds())
        if conn.backlog or conn.paused:
            return
        conn.backlog = None
        waiters, conn.drainWaiters = conn.drainWaiters or [], None
        for waiter in waiters:
            waiter()

    def _evictOverflowing(self) -> None:
        overflowing, self._overflowing = self._overflowing, []
        for conn, reason in overflowing:
            if conn.closing:
                continue
            self._evictedSlow += 1
            _log.warn(
                "Evicting connection {connId} from {peer}: {reason}",
                connId=conn.connId,
                peer=conn.protocol.peer,
                reason=reason,
            )
            self._beginClose(conn, _CLOSE_POLICY_VIOLATION, reason)

    # --- closing ------------------------------------------------------------

    def sweepIdle(self, maxIdle: float) -> list[ConnId]:
        """
        Close the connections with no inbound frame for more than C{maxIdle}
        seconds: dead links (NAT timeouts, vanished mobile clients) never
        send a Close frame.

        @return: the ids of the connections it closed.
        """
        cutoff = self._reactor.seconds() - maxIdle
        reaped = []
        for conn in tuple(self._conns.values()):
            if not conn.closing and conn.lastSeen < cutoff:
                reaped.append(conn.connId)
                self._reapedIdle += 1
                _log.info(
                    "Closing connection {connId} from {peer}: idle for more than {maxIdle} s",
                    connId=conn.connId,
                    peer=conn.protocol.peer,
                    maxIdle=maxIdle,
                )
                self._beginClose(conn, _CLOSE_NORMAL, f"idle for more than {maxIdle:g} s")
        return reaped

    def closeAll(self) -> int:
        """
        Send a Close frame (code 1001) to every open connection. Connections
        that do not finish closing within C{closeTimeout} are aborted.

        @return: the number of Close frames sent.
        """
        sent = 0
        for conn in tuple(self._conns.values()):
            if not conn.closing:
                sent += self._beginClose(conn, _CLOSE_GOING_AWAY, "server shutting down")
        return sent

    def _beginClose(self, conn: _Connection, code: int, reason: str) -> bool:
        if conn.pending is not None:
            self._writePending(conn)
        conn.closing = True
        conn.backlog = None
        conn.backlogBytes = 0
        conn.drainWaiters = None
        self._closing[conn.connId] = self._reactor.seconds() + self._closeTimeout
        self._scheduleAbort()
        if conn.protocol.state != _STATE_OPEN:
            return False
        # sendClose only accepts codes 1000 and 3000-4999.
        conn.protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"))
        return True

    def _abortStragglers(self) -> None:
        self._abortCall = None
        now = self._reactor.seconds()
        expired = [
            connId
            for connId, _ in itertools.takewhile(lambda item: item[1] <= now, self._closing.items())
        ]
        for connId in expired:
            transport = self._conns[connId].protocol.transport
            if transport is not None:
                transport.abortConnection()
            self.unregister(connId)
        self._scheduleAbort()

    def _scheduleAbort(self) -> None:
        if self._abortCall is None and self._closing:
            deadline = next(iter(self._closing.values()))
            delay = max(0.0, deadline - self._reactor.seconds())
            self._abortCall = self._reactor.callLater(delay, self._abortStragglers)

    def _cancelAbortCall(self) -> None:
        if self._abortCall is not None:
            self._abortCall.cancel()
            self._abortCall = None

    def setBounds(
        self,
        maxPendingBytes: int,
        pingInterval: float,
        maxIdle: float,
        maxLag: float,
        maxBacklogBytes: int,
    ) -> None:
        """
        Change the bounds given to L{__init__} (but C{closeTimeout}), for
        every connection, open or new, from now on; a new C{pingInterval}
        restarts the running sweep with it.

        @raise ConfigError: if C{maxBacklogBytes} is under C{maxPendingBytes}.
        """
        if maxBacklogBytes < maxPendingBytes:
            raise ConfigError(
                "maxBacklogBytes",
                f"must be at least maxPendingBytes ({maxPendingBytes}), got {maxBacklogBytes}",
            )
        self._maxPendingBytes = maxPendingBytes
        self._maxLag = maxLag
        self._maxBacklogBytes = maxBacklogBytes
        self._maxIdle = maxIdle
        if pingInterval != self._pingInterval:
            self._pingInterval = pingInterval
            if self._sweeper is not None and self._sweeper.running:
                self._sweeper.stop()
                self._startSweep()

    # --- service ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the sweep: every C{pingInterval} seconds, close the connections
        idle for more than C{maxIdle}, evict those that stay behind, and
        ping the others.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._startSweep()

    def _startSweep(self) -> None:
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self._reactor
        self._sweeper.start(self._pingInterval, now=False).addErrback(self._sweepFailed)

    def _sweep(self) -> None:
        self.sweepIdle(self._maxIdle)
        now = self._reactor.seconds()
        for conn in tuple(self._conns.values()):
            if conn.backlog:
                # Behind and getting no new frames: judged here instead.
                self._checkLag(conn, now)
        self._evictOverflowing()
        for conn in tuple(self._conns.values()):
            if not conn.closing:
                conn.protocol.sendPing()

    def _sweepFailed(self, failure: Failure) -> None:
        _log.failure("The connection sweep stopped", failure)

    def stopService(self) -> Deferred[None]:
        """
        Stop the sweep and close every connection (L{closeAll}).

        @return: a Deferred that fires once every connection is unregistered:
            at the latest after C{closeTimeout}, when the stragglers are
            aborted.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.closeAll()
        if self._flushCall is not None:
            # closeAll wrote every connection's frames.
            self._flushCall.cancel()
            self._flushCall = None
            self._dirty = []
        if not self._conns:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._emptyWaiters.append(waiter)
        return waiter

    def stats(self) -> RegistryStats:
        """
        @return: a snapshot of the registry's state and counters.
        """
        return RegistryStats(
            connections=len(self._conns),
            closing=len(self._closing),
            rooms=len(self._rooms),
            evictedSlow=self._evictedSlow,
            reapedIdle=self._reapedIdle,
            droppedDead=self._droppedDead,
            framesSent=self._framesSent,
            bytesPending=sum(conn.backlogBytes for conn in self._conns.values()),
        )


__all__ = ["DRAIN_CHUNK_BYTES", "Claims", "ConnId", "ConnectionRegistry", "RegistryStats"]
