"""SplicePump on real loopback TCP connections, driven by a fresh epoll reactor per test.

Each test listens with Twisted on 127.0.0.1 and connects two plain sockets to it: the
accepted Twisted connections are the pump's source and sink, the plain sockets their
peers, driven by threads (a sender into the source, a receiver out of the sink) while
the test iterates the reactor, always bounded in iterations and time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from ftpsproxy.data import splice
from ftpsproxy.data.splice import SpliceError, SplicePump, splice_supported
from ftpsproxy.net.twisted_internals import pending_output
from tests.support.ci import require


@pytest.fixture(autouse=True, scope="module")
def _kernel_splices() -> None:
    """Every test here needs splice(2): without it they skip, or fail under CI=true."""
    require(splice_supported(), "splice(2) not available here (not Linux, or filtered)")


MiB = 1 << 20


def pipe_fds() -> set[str]:
    """The descriptors of this process that are pipes, as ``fd:inode`` strings."""
    found: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # listdir's own descriptor
        if target.startswith("pipe:"):
            found.add(f"{name}:{target}")
    return found


class Peer(Protocol):
    """The Twisted side of one accepted connection: records, or relays in Python."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.received = bytearray()
        self.lost: Failure | None = None
        self.forward_to: Peer | None = None

    def connectionMade(self) -> None:
        self.harness.accepted.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.forward_to is not None:
            self.forward_to.tcp.write(data)
        else:
            self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason

    @property
    def tcp(self) -> tcp.Connection:
        transport = self.transport
        assert isinstance(transport, tcp.Connection)
        return transport


class Harness:
    """A fresh epoll reactor with a listening port on loopback."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()
        self.accepted: list[Peer] = []
        self.sockets: list[socket.socket] = []
        self.port = self.reactor.listenTCP(
            0, Factory.forProtocol(lambda: Peer(self)), interface="127.0.0.1"
        )

    def connect(self) -> tuple[socket.socket, Peer]:
        """A plain socket connected to the port, and the Twisted protocol it reached."""
        before = len(self.accepted)
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=60)
        self.sockets.append(sock)
        self.run_until(lambda: len(self.accepted) > before, timeout=10)
        return sock, self.accepted[before]

    def run_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 60.0,
        each: Callable[[], None] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(2_000_000):
            if condition():
                return
            if time.monotonic() > deadline:
                break
            self.reactor.iterate(0.01)
            if each is not None:
                each()
        raise AssertionError("condition not reached in time")

    def finish(self, *workers: threading.Thread, timeout: float = 60.0) -> None:
        """Keep the reactor running until the peer threads are done."""
        self.run_until(lambda: not any(w.is_alive() for w in workers), timeout=timeout)
        for worker in workers:
            worker.join(1.0)

    def spin(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.reactor.iterate(0.001)

    def endpoints_registered(self) -> list[object]:
        return [
            x
            for x in self.reactor.getReaders() + self.reactor.getWriters()
            if isinstance(x, splice._Endpoint)
        ]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for peer in self.accepted:
            if peer.lost is None and peer.transport is not None:
                peer.tcp.abortConnection()
        self.port.stopListening()
        self.spin(10)
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        waker = self.reactor.waker
        if waker is not None:
            self.reactor.removeReader(waker)
            waker.connectionLost(None)
        self.reactor._poller.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


class Worker(threading.Thread):
    """A peer thread; any OSError it meets is kept for the test to look at."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.work()
        except OSError as e:
            self.error = e

    def work(self) -> None:
        raise NotImplementedError


class Sender(Worker):
    def __init__(
        self,
        sock: socket.socket,
        chunks: Iterable[bytes],
        *,
        reset: bool = False,
        pause: float = 0.0,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.chunks = chunks
        self.reset = reset
        self.pause = pause

    def work(self) -> None:
        for chunk in self.chunks:
            self.sock.sendall(chunk)
            if self.pause:
                time.sleep(self.pause)
        if self.reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        else:
            self.sock.shutdown(socket.SHUT_WR)


class Receiver(Worker):
    def __init__(
        self,
        sock: socket.socket,
        *,
        keep: bool = False,
        chunk: int = 1 << 18,
        delay: float = 0.0,
        close_after: int | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.keep = keep
        self.chunk = chunk
        self.delay = delay
        self.close_after = close_after
        self.digest = hashlib.sha256()
        self.count = 0
        self.data = bytearray()
        self.eof = False

    def work(self) -> None:
        buf = bytearray(self.chunk)
        view = memoryview(buf)
        while True:
            n = self.sock.recv_into(buf)
            if n == 0:
                self.eof = True
                return
            self.digest.update(view[:n])
            self.count += n
            if self.keep:
                self.data += view[:n]
            if self.close_after is not None and self.count >= self.close_after:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.close()
                return
            if self.delay:
                time.sleep(self.delay)


class Relay:
    """What relay.py would do around a pump: count, and close or abort at the end."""

    def __init__(self, harness: Harness, source: Peer, sink: Peer, **kwargs: Any) -> None:
        self.source = source
        self.sink = sink
        self.progress = 0
        self.reports = 0
        self.done: list[Failure | None] = []
        self.pump = SplicePump(
            harness.reactor, source.tcp, sink.tcp, self.on_progress, self.on_done, **kwargs
        )

    def on_progress(self, n: int) -> None:
        assert n > 0
        self.progress += n
        self.reports += 1

    def on_done(self, reason: Failure | None) -> None:
        self.done.append(reason)
        if reason is None:
            self.sink.tcp.loseConnection()
        else:
            self.source.tcp.abortConnection()
            self.sink.tcp.abortConnection()


def setup_transfer(harness: Harness) -> tuple[socket.socket, Peer, socket.socket, Peer]:
    src_sock, source = harness.connect()
    sink_sock, sink = harness.connect()
    return src_sock, source, sink_sock, sink


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(view[i : i + size])


# -- whole transfers ------------------------------------------------------------------------


def test_64_mib_with_matching_sha256(harness: Harness) -> None:
    data = os.urandom(64 * MiB)
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()

    started = time.monotonic()
    relay.pump.start()
    assert len(pipe_fds() - pipes_before) == 2
    sender = Sender(src_sock, chunks_of(data, MiB))
    receiver = Receiver(sink_sock, chunk=MiB)
    sender.start()
    receiver.start()
    harness.run_until(lambda: bool(relay.done), timeout=120)
    elapsed = time.monotonic() - started
    assert relay.done == [None]
    harness.run_until(lambda: source.lost is not None and sink.lost is not None)
    harness.finish(receiver, sender)

    assert receiver.error is None and sender.error is None
    assert receiver.eof
    assert receiver.count == len(data)
    assert receiver.digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert relay.progress == len(data) == relay.pump.delivered
    assert not source.received and not sink.received  # nothing went through Python
    # Twisted read the EOF itself after the hand-back: a normal, clean connectionLost.
    assert source.lost is not None and source.lost.check(ConnectionDone)
    assert sink.lost is not None and sink.lost.check(ConnectionDone)
    assert pipe_fds() == pipes_before
    assert harness.endpoints_registered() == []
    print(
        f"\nsplice pump: {len(data) / MiB:.0f} MiB in {elapsed:.3f}s = "
        f"{len(data) / MiB / elapsed:.0f} MiB/s ({relay.reports} progress reports, "
        f"pipe {relay.pump.capacity} bytes)"
    )


def test_initial_bytes_and_the_sinks_queued_bytes_come_first(harness: Harness) -> None:
    data = os.urandom(3 * MiB + 17)
    queued = b"queued-in-twisted-" * 100
    initial = os.urandom(300_000)  # more than the pipe holds: fed in several rounds
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink, pipe_size=65536)
    sink.tcp.write(queued)  # still in Twisted's buffer: the reactor has not run since
    assert pending_output(sink.tcp) == len(queued)
    relay.pump.start(initial)
    assert pending_output(sink.tcp) == 0

    receiver = Receiver(sink_sock, keep=True)
    sender = Sender(src_sock, chunks_of(data, 100_000))
    receiver.start()
    sender.start()
    harness.run_until(lambda: bool(relay.done))
    harness.finish(receiver, sender)

    assert relay.done == [None]
    assert bytes(receiver.data) == queued + initial + data
    # The sink's own earlier bytes were counted by whoever wrote them, not by the pump.
    assert relay.progress == len(initial) + len(data)
    assert relay.pump.delivered == len(queued) + len(initial) + len(data)


def test_empty_source_completes(harness: Harness) -> None:
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    relay.pump.start(b"only-initial")
    src_sock.shutdown(socket.SHUT_WR)
    receiver = Receiver(sink_sock, keep=True)
    receiver.start()
    harness.run_until(lambda: bool(relay.done) and source.lost is not None)
    harness.finish(receiver)
    assert relay.done == [None]
    assert bytes(receiver.data) == b"only-initial"
    assert source.lost is not None and source.lost.check(ConnectionDone)


def test_slow_sink_keeps_the_pipe_bounded(harness: Harness) -> None:
    data = os.urandom(8 * MiB)
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    # Small socket buffers, so that the pipe, not the kernel, takes the backlog.
    for sock in (src_sock, sink_sock, source.tcp.socket, sink.tcp.socket):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    relay = Relay(harness, source, sink, pipe_size=65536)
    relay.pump.start()
    receiver = Receiver(sink_sock, chunk=65536, delay=0.004)  # ~16 MB/s at most
    sender = Sender(src_sock, chunks_of(data, MiB))
    receiver.start()
    sender.start()

    most = 0
    paused = 0

    def sample() -> None:
        nonlocal most, paused
        pump = relay.pump
        most = max(most, pump.buffered)
        if pump.running and not pump._reading:
            paused += 1

    harness.run_until(lambda: bool(relay.done), timeout=120, each=sample)
    harness.finish(receiver, sender)
    assert relay.done == [None]
    assert receiver.digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert 0 < most <= relay.pump.capacity
    assert paused > 0, "the source was never paused for the slow sink"
    # The reactor slept while waiting: a few hundred wakeups, not a busy loop.
    assert relay.pump._futile < 10


@pytest.mark.parametrize("fin_right_away", [True, False])
def test_urgent_data_on_the_source_does_not_spin(harness: Harness, fin_right_away: bool) -> None:
    # splice(2) stops at TCP's urgent mark while poll() keeps reporting the socket
    # readable (or, after a FIN, returns 0 as if at EOF); the pump reads past the mark
    # with recv(), as Twisted itself would.
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    relay.pump.start()
    receiver = Receiver(sink_sock, keep=True)
    receiver.start()
    src_sock.sendall(b"a" * 100_000)
    harness.run_until(lambda: relay.progress >= 100_000)
    src_sock.send(b"!", socket.MSG_OOB)
    src_sock.sendall(b"b" * 100_000)
    if not fin_right_away:
        harness.run_until(lambda: relay.progress >= 200_000, timeout=10)
        assert relay.pump._futile < 10
    src_sock.shutdown(socket.SHUT_WR)
    harness.run_until(lambda: bool(relay.done))
    harness.finish(receiver)
    assert relay.done == [None]
    # Without SO_OOBINLINE the urgent byte is out of band: recv() skips it, as in Twisted.
    assert bytes(receiver.data) == b"a" * 100_000 + b"b" * 100_000


# -- failures -------------------------------------------------------------------------------


def test_source_reset_fails_and_releases_everything(harness: Harness) -> None:
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()
    relay.pump.start()
    receiver = Receiver(sink_sock)
    sender = Sender(src_sock, chunks_of(os.urandom(2 * MiB), 65536), reset=True)
    receiver.start()
    sender.start()
    harness.run_until(lambda: bool(relay.done))
    harness.run_until(lambda: source.lost is not None and sink.lost is not None)
    harness.finish(sender, receiver)

    assert len(relay.done) == 1
    reason = relay.done[0]
    assert reason is not None
    error = reason.value
    assert isinstance(error, SpliceError)
    assert error.side == "source"
    assert error.errno == errno.ECONNRESET
    assert pipe_fds() == pipes_before
    assert harness.endpoints_registered() == []
    assert source.lost is not None and sink.lost is not None
    assert sink.lost.check(ConnectionAborted)
    relay.pump.stop()  # no-op after the end
    assert len(relay.done) == 1


def test_sink_closing_early_fails(harness: Harness) -> None:
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()
    relay.pump.start()
    receiver = Receiver(sink_sock, close_after=256 * 1024, chunk=65536)
    sender = Sender(src_sock, chunks_of(os.urandom(32 * MiB), MiB))
    receiver.start()
    sender.start()
    harness.run_until(lambda: bool(relay.done))
    harness.run_until(lambda: source.lost is not None and sink.lost is not None)
    harness.finish(sender, receiver)  # the abort in on_done resets the sender too

    assert len(relay.done) == 1
    reason = relay.done[0]
    assert reason is not None
    error = reason.value
    assert isinstance(error, SpliceError)
    assert error.side == "sink"
    assert error.errno in (errno.EPIPE, errno.ECONNRESET)
    assert pipe_fds() == pipes_before
    assert harness.endpoints_registered() == []


# -- stop() ---------------------------------------------------------------------------------


def test_stop_mid_transfer_hands_back_without_a_gap(harness: Harness) -> None:
    data = os.urandom(16 * MiB)
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()
    relay.pump.start(b"head")
    receiver = Receiver(sink_sock, chunk=65536, delay=0.001)
    sender = Sender(src_sock, chunks_of(data, 256 * 1024))
    receiver.start()
    sender.start()
    harness.run_until(lambda: relay.progress >= 2 * MiB)
    handed_back = relay.pump.stop()
    assert 0 <= handed_back <= relay.pump.capacity
    assert not relay.pump.running
    assert pipe_fds() == pipes_before
    assert harness.endpoints_registered() == []
    # Both are Twisted's again, reading as when the pump took them.
    assert source.tcp in harness.reactor.getReaders()
    assert sink.tcp in harness.reactor.getReaders()
    # Go on relaying in Python, as the relay would after falling back.
    source.forward_to = sink
    harness.run_until(lambda: source.lost is not None)
    sink.tcp.loseConnection()
    harness.run_until(lambda: sink.lost is not None)
    harness.finish(receiver, sender)
    assert relay.done == []
    assert receiver.count == 4 + len(data)
    assert receiver.digest.hexdigest() == hashlib.sha256(b"head" + data).hexdigest()
    assert relay.pump.stop() == 0


def test_stop_then_abort(harness: Harness) -> None:
    src_sock, source, sink_sock, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()
    relay.pump.start()
    receiver = Receiver(sink_sock, chunk=65536, delay=0.002)
    sender = Sender(src_sock, chunks_of(os.urandom(64 * MiB), MiB))
    receiver.start()
    sender.start()
    harness.run_until(lambda: relay.progress >= MiB)
    relay.pump.stop()
    source.tcp.abortConnection()
    sink.tcp.abortConnection()
    harness.run_until(lambda: source.lost is not None and sink.lost is not None)
    harness.finish(sender, receiver)
    assert relay.done == []
    assert source.lost is not None and source.lost.check(ConnectionAborted)
    assert sink.lost is not None and sink.lost.check(ConnectionAborted)
    assert isinstance(sender.error, ConnectionError)  # the peers saw the reset
    assert pipe_fds() == pipes_before
    assert harness.endpoints_registered() == []


def test_stop_before_any_event_and_twice(harness: Harness) -> None:
    _, source, _, sink = setup_transfer(harness)
    relay = Relay(harness, source, sink)
    pipes_before = pipe_fds()
    relay.pump.start(b"x" * 1000)
    assert relay.pump.stop() == 1000  # never delivered: back into Twisted's buffer
    assert pending_output(sink.tcp) == 1000
    assert relay.pump.stop() == 0
    assert pipe_fds() == pipes_before
    with pytest.raises(RuntimeError):
        relay.pump.start()


# -- refusals -------------------------------------------------------------------------------


def test_refuses_what_it_cannot_take(harness: Harness) -> None:
    _, source, _, sink = setup_transfer(harness)
    pipes_before = pipe_fds()

    source.tcp.write(b"pending")
    with pytest.raises(ValueError, match="source has output queued"):
        Relay(harness, source, sink).pump.start()
    harness.spin()  # flushed
    with pytest.raises(ValueError, match="plain TCP"):
        SplicePump(harness.reactor, object(), sink.tcp, print, print).start()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same connection"):
        Relay(harness, source, source).pump.start()
    source.tcp.TLS = True  # as after startTLS()
    with pytest.raises(ValueError, match="plain TCP"):
        Relay(harness, source, sink).pump.start()
    source.tcp.TLS = False
    sink.tcp.loseConnection()
    with pytest.raises(ValueError, match="not open"):
        Relay(harness, source, sink).pump.start()
    assert pipe_fds() == pipes_before
    # Refusals leave Twisted driving the connection.
    assert source.tcp in harness.reactor.getReaders()


def test_splice_supported() -> None:
    assert splice_supported()
    assert splice_supported(EPollReactor.__new__(EPollReactor))
    assert not splice_supported(object())


# -- chunking patterns ----------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(1, 300_000), max_size=12),
    pause=st.sampled_from([0.0, 0.001]),
    initial=st.binary(max_size=5000),
    queued=st.binary(max_size=5000),
    pipe_size=st.sampled_from([4096, 65536, 1 << 20]),
    read_chunk=st.sampled_from([1000, 65536, 1 << 20]),
)
def test_any_chunking_arrives_intact(
    sizes: list[int],
    pause: float,
    initial: bytes,
    queued: bytes,
    pipe_size: int,
    read_chunk: int,
) -> None:
    h = Harness()
    try:
        data = os.urandom(sum(sizes))
        chunks = [data[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
        src_sock, source, sink_sock, sink = setup_transfer(h)
        relay = Relay(h, source, sink, pipe_size=pipe_size)
        if queued:
            sink.tcp.write(queued)
        pipes_before = pipe_fds()
        relay.pump.start(initial)
        receiver = Receiver(sink_sock, keep=True, chunk=read_chunk)
        sender = Sender(src_sock, chunks, pause=pause)
        receiver.start()
        sender.start()
        h.run_until(lambda: bool(relay.done) and source.lost is not None, timeout=60)
        h.finish(receiver, sender)
        assert relay.done == [None]
        assert bytes(receiver.data) == queued + initial + data
        assert relay.progress == len(initial) + len(data)
        assert pipe_fds() == pipes_before
        assert relay.pump.capacity >= min(pipe_size, 65536)
    finally:
        h.close()
