"""Relay bytes between two plain TCP connections in the kernel, with ``splice(2)``.

A plain-to-plain transfer need not pass through Python: :class:`SplicePump` moves
bytes from the *source* socket into a pipe and from the pipe into the *sink*
socket, both with non-blocking ``splice``, and lets Python see only readiness
events and byte counts.

While it runs, the pump owns both sockets.  Twisted's reactors keep one
selectable per file descriptor (``epoll``, ``poll``, ``asyncio``), so the pump
first unregisters both Twisted connections (``stopReading``/``stopWriting``),
then registers its own descriptors on the same fds: one reader on the source,
one writer on the sink.  When the pump ends it unregisters its own, and hands
the connections back to Twisted (see :meth:`SplicePump.start` for the contract).

Memory is bounded by the pipe: the source is read only while the pipe has room,
so a slow sink stops the reads and TCP's own flow control holds back the sender.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
from collections.abc import Callable
from typing import Literal

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.data.splice_support import (
    SPLICE_FLAGS,
    Side,
    SpliceError,
    alive,
    hand_back,
    splice_supported,
    spliceable,
)
from ftpsproxy.net.twisted_internals import pending_output, take_pending_output

__all__ = ["SpliceError", "SplicePump", "splice_supported", "spliceable"]

_MAX_ROUNDS = 4  # pipe fills and drains per readiness event, so one transfer cannot hog the loop
_MAX_FUTILE_WAKEUPS = 100  # consecutive readiness events that moved nothing: give up, not spin


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DONE = "done"


@implementer(IReadDescriptor, IWriteDescriptor)
class _Endpoint:
    """The pump's own selectable on one connection's fd (registered as reader or writer).

    ``fileno()`` follows the connection's socket and is ``-1`` once the pump has let
    go of it: the reactor must never be able to remove, by fd number, a registration
    that is no longer ours.
    """

    def __init__(
        self, pump: SplicePump, conn: tcp.Connection, role: Literal["source", "sink"]
    ) -> None:
        self._pump = pump
        self.conn: tcp.Connection | None = conn
        self.role: Literal["source", "sink"] = role

    def fileno(self) -> int:
        conn = self.conn
        return -1 if conn is None else int(conn.fileno())

    def doRead(self) -> None:
        self._pump._readable(self)

    def doWrite(self) -> None:
        self._pump._writable(self)

    def connectionLost(self, reason: Failure) -> None:
        self._pump._endpoint_lost(self, reason)

    def logPrefix(self) -> str:
        return f"SplicePump({self.role})"


class SplicePump:
    """Moves bytes from one plain TCP connection to another in the kernel.

    :param reactor: the reactor both connections run on (an ``IReactorFDSet``).
    :param source: the connection to read from (a plain ``tcp.Connection``).
    :param sink: the connection to write to (a plain ``tcp.Connection``).
    :param on_progress: called with *n* after each splice that delivered *n* > 0
        bytes into the sink's socket (bytes of *initial* included; bytes that were
        already queued in the sink's Twisted buffer before :meth:`start` excluded).
    :param on_done: called exactly once when the pump ends by itself: ``None`` after
        the source's EOF once everything is delivered, or a ``Failure`` wrapping a
        :class:`SpliceError` (whose ``side`` says which connection failed).  Not
        called after :meth:`stop`.
    :param pipe_size: the pipe capacity to ask for (``F_SETPIPE_SZ``); the kernel's
        default (64 KiB) is kept when it refuses.  Bounds the bytes in flight.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        source: tcp.Connection,
        sink: tcp.Connection,
        on_progress: Callable[[int], None],
        on_done: Callable[[Failure | None], None],
        pipe_size: int = 1 << 20,
    ) -> None:
        self._reactor = reactor
        self._source = source
        self._sink = sink
        self._on_progress = on_progress
        self._on_done = on_done
        self._pipe_size = pipe_size
        self._state = _State.NEW
        self._source_ep = _Endpoint(self, source, "source")
        self._sink_ep = _Endpoint(self, sink, "sink")
        self._reading = False  # our source endpoint is registered as a reader
        self._writing = False  # our sink endpoint is registered as a writer
        self._sink_was_reading = False
        self._pipe_r = -1
        self._pipe_w = -1
        self._capacity = 0
        self._pipe_bytes = 0  # bytes in the pipe, not yet in the sink's socket
        self._pipe_full = False  # the last splice into the pipe found no room
        self._prefix = memoryview(b"")  # bytes to pass through the pipe before the source's
        self._uncounted = 0  # leading bytes not to report: the sink's own earlier buffer
        self._eof = False
        self._futile = 0
        self.delivered = 0  # bytes spliced into the sink, all of them

    # -- public -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    @property
    def capacity(self) -> int:
        """The pipe's capacity in bytes (0 before :meth:`start`)."""
        return self._capacity

    @property
    def buffered(self) -> int:
        """Bytes the pump holds: in the pipe, plus any not yet moved into it."""
        return self._pipe_bytes + len(self._prefix)

    def start(self, initial: bytes = b"") -> None:
        """Take both connections from Twisted and start moving bytes.

        *initial* holds bytes Twisted already read from the source; they reach the
        sink first, in order, after whatever the sink still had queued in its own
        Twisted write buffer (that buffer is taken over by the pump, so no byte is
        lost or reordered).

        Contract, from here until ``on_done`` runs or :meth:`stop` returns:
        nobody else reads, writes, pauses, resumes or closes either transport
        (``write``, ``loseConnection``, ``abortConnection``, ``pauseProducing``...):
        call :meth:`stop` first.  The source must have nothing queued for writing.
        Neither connection may be registered as the other's producer.

        Raises ``ValueError`` (connections not plain TCP, not open, or the source
        with queued output), ``RuntimeError`` (started twice) or ``OSError`` (no
        pipe: out of fds); nothing has changed then, Twisted still drives both.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("a SplicePump can only be started once")
        for name, conn in (("source", self._source), ("sink", self._sink)):
            if not spliceable(conn):
                raise ValueError(f"{name} is not a plain TCP connection")
            if not alive(conn) or conn.disconnecting:
                raise ValueError(f"{name} is not open")
        if pending_output(self._source):
            raise ValueError("source has output queued")
        if self._source.fileno() == self._sink.fileno():
            raise ValueError("source and sink are the same connection")

        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                self._capacity = fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, self._pipe_size)
            except OSError:  # EPERM above pipe-max-size or the user's pipe quota
                self._capacity = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)
        except BaseException:
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            self._pipe_r = self._pipe_w = -1
            raise

        self._sink_was_reading = self._sink in self._reactor.getReaders()
        queued = take_pending_output(self._sink)
        self._uncounted = len(queued)
        self._prefix = memoryview(queued + bytes(initial))
        for conn in (self._source, self._sink):
            conn.stopReading()
            conn.stopWriting()
        self._state = _State.RUNNING
        # No I/O here (so no callback from inside start): the first readiness event starts it.
        self._update_interest()

    def stop(self) -> int:
        """Stop pumping and give both connections back to Twisted, ``on_done`` not called.

        The pipe is closed.  Bytes the pump had taken from the source (or from
        *initial*) but not yet delivered are written to the sink with
        ``sink.write()``, ahead of anything written after, so the relay may go on in
        Python without a gap; an abort simply drops them with the rest.  The source
        is handed back reading, the sink reading if it was when :meth:`start` ran.
        Returns how many bytes were so handed back that ``on_progress`` has not
        counted.  A no-op after the pump has ended; safe even after a connection was
        closed under the pump.
        """
        if self._state is _State.NEW:
            self._state = _State.DONE
            return 0
        if self._state is not _State.RUNNING:
            return 0
        self._state = _State.DONE
        leftover = bytes(self._prefix) if self._prefix else b""
        self._prefix = memoryview(b"")
        leftover = self._read_pipe() + leftover
        self._release()
        hand_back(self._source, reading=True)
        hand_back(self._sink, reading=self._sink_was_reading)
        uncounted = max(len(leftover) - self._uncounted, 0)
        if leftover and alive(self._sink) and not self._sink.disconnecting:
            self._sink.write(leftover)
        return uncounted

    # -- readiness events -------------------------------------------------------------------

    def _readable(self, endpoint: _Endpoint) -> None:
        if self._state is not _State.RUNNING or endpoint is not self._source_ep:
            return
        room = self._capacity - self._pipe_bytes
        if self._eof or self._prefix or room <= 0:
            self._update_interest()
            return
        progress = True
        try:
            count = os.splice(self._source.fileno(), self._pipe_w, room, flags=SPLICE_FLAGS)
        except BlockingIOError:
            if self._pipe_bytes:
                # No room for the socket's next segment, or nothing to read: either
                # way wait for the sink to drain the pipe, which reading resumes.
                self._pipe_full = True
            else:
                # An empty pipe cannot be full, yet the socket polled readable: TCP
                # urgent data stops splice (not recv) at its mark.  recv() gets past it.
                progress = self._recv_instead(room)
        except OSError as e:
            self._fail("source", e)
            return
        else:
            if count:
                self._pipe_bytes += count
            else:
                # Zero is EOF, or the peer's FIN behind TCP urgent data that splice will
                # not pass: only recv() can tell (and gets past the urgent mark).
                self._recv_instead(room)
        if self._state is _State.RUNNING:
            self._note(progress)
            self._step()

    def _writable(self, endpoint: _Endpoint) -> None:
        if self._state is not _State.RUNNING or endpoint is not self._sink_ep:
            return
        before = (self.delivered, len(self._prefix))
        self._step()
        if self._state is _State.RUNNING:
            self._note((self.delivered, len(self._prefix)) != before)

    def _endpoint_lost(self, endpoint: _Endpoint, reason: Failure) -> None:
        """The reactor dropped one of our descriptors (hang-up or error without data)."""
        if endpoint is self._source_ep:
            self._reading = False
        elif endpoint is self._sink_ep:
            self._writing = False
        if self._state is not _State.RUNNING:
            return
        if endpoint is self._source_ep and reason.check(ConnectionDone):
            self._eof = True  # a hang-up with nothing left to read
            self._step()
            return
        self._finish(Failure(SpliceError(endpoint.role, f"lost: {reason.getErrorMessage()}")))

    # -- the work ---------------------------------------------------------------------------

    def _recv_instead(self, room: int) -> bool:
        try:
            data = self._source.socket.recv(room)
        except BlockingIOError:
            return False
        except OSError as e:
            self._fail("source", e)
            return True
        if data:
            self._prefix = memoryview(data)
        else:
            self._eof = True
        return True

    def _step(self) -> None:
        """Feed the pipe from the prefix, drain it into the sink, then finish or re-arm."""
        for _ in range(_MAX_ROUNDS):
            if self._prefix:
                self._fill_from_prefix()
                if self._state is not _State.RUNNING:
                    return
            if not self._pipe_bytes:
                break
            requested = self._pipe_bytes
            moved = self._drain()
            if self._state is not _State.RUNNING:
                return
            if moved < requested:
                break  # the sink's socket buffer is full (or the pipe had less in it)
        if self._eof and not self._pipe_bytes and not self._prefix:
            self._finish(None)
            return
        self._update_interest()

    def _fill_from_prefix(self) -> None:
        room = self._capacity - self._pipe_bytes
        if room <= 0:
            return
        try:
            written = os.write(self._pipe_w, self._prefix[:room])
        except BlockingIOError:
            return
        except OSError as e:
            self._fail("pipe", e)
            return
        self._prefix = self._prefix[written:]
        self._pipe_bytes += written

    def _drain(self) -> int:
        """One splice from the pipe into the sink; how many bytes it moved."""
        try:
            count = os.splice(
                self._pipe_r, self._sink.fileno(), self._pipe_bytes, flags=SPLICE_FLAGS
            )
        except BlockingIOError:
            return 0
        except OSError as e:
            self._fail("sink", e)
            return 0
        if count <= 0:
            return 0
        self._pipe_bytes -= count
        self._pipe_full = False
        self.delivered += count
        report = count
        if self._uncounted:
            skip = min(self._uncounted, report)
            self._uncounted -= skip
            report -= skip
        if report:
            self._on_progress(report)
        return count

    def _note(self, progress: bool) -> None:
        """Count readiness events that moved nothing; too many in a row is a bug, not load."""
        if progress:
            self._futile = 0
            return
        self._futile += 1
        if self._futile >= _MAX_FUTILE_WAKEUPS:
            self._finish(Failure(SpliceError("pipe", "no progress on repeated readiness")))

    def _update_interest(self) -> None:
        want_read = (
            not self._eof
            and not self._prefix
            and not self._pipe_full
            and self._pipe_bytes < self._capacity
        )
        want_write = bool(self._pipe_bytes or self._prefix)
        if want_read and not self._reading:
            self._reading = True
            self._reactor.addReader(self._source_ep)
        elif not want_read and self._reading:
            self._reading = False
            self._reactor.removeReader(self._source_ep)
        if want_write and not self._writing:
            self._writing = True
            self._reactor.addWriter(self._sink_ep)
        elif not want_write and self._writing:
            self._writing = False
            self._reactor.removeWriter(self._sink_ep)

    # -- ending -----------------------------------------------------------------------------

    def _fail(self, side: Side, error: OSError) -> None:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        exc = SpliceError(side, f"{name}: {error.strerror}", error.errno)
        exc.__cause__ = error
        self._finish(Failure(exc))

    def _finish(self, reason: Failure | None) -> None:
        if self._state is not _State.RUNNING:
            return
        self._state = _State.DONE
        self._release()
        hand_back(self._source, reading=True)
        hand_back(self._sink, reading=self._sink_was_reading)
        self._on_done(reason)

    def _read_pipe(self) -> bytes:
        """What is left in the pipe (at most its capacity)."""
        chunks: list[bytes] = []
        for _ in range(self._capacity // 4096 + 2):
            try:
                chunk = os.read(self._pipe_r, self._capacity)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _release(self) -> None:
        """Unregister our descriptors and close the pipe; the connections stay as they are."""
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self._source_ep)
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self._sink_ep)
        self._source_ep.conn = None
        self._sink_ep.conn = None
        for fd in (self._pipe_r, self._pipe_w):
            if fd != -1:
                os.close(fd)
        self._pipe_r = self._pipe_w = -1
        self._pipe_bytes = 0
