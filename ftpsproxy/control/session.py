"""One client session: the state machine between the client's and the backend's control channels.

The session greets the client itself, answers what needs no backend (``AUTH``,
``PBSZ``, ``PROT``, ``FEAT``, …) and connects to the backend only when ``USER``
arrives.  From then on commands are relayed one at a time: a command is sent
to the backend only when the previous one has its final reply, so replies can
be matched to commands without guessing.  ``ABOR`` is the one command that
passes while a transfer runs (RFC 959 §4.1.3).

States (``State``) and their allowed transitions (``TRANSITIONS``) are one
table; an impossible transition raises instead of corrupting the session.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpsproxy.control.backend import (
    BackendConnector,
    BackendControl,
    BackendLoss,
    BackendSetupError,
    BackendTLSError,
    ReplyHandler,
)
from ftpsproxy.control.loginguard import LoginGuard
from ftpsproxy.data.passive import BackendDataListener, PassiveListener, same_host
from ftpsproxy.data.ports import PortAllocator
from ftpsproxy.data.relay import DataChannel, Outcome
from ftpsproxy.data.splice import splice_supported
from ftpsproxy.ftp import features
from ftpsproxy.ftp.addresses import (
    UnsupportedFamily,
    format_eprt_argument,
    format_epsv_reply,
    format_pasv_reply,
    format_port_argument,
    parse_eprt_argument,
    parse_epsv_reply,
    parse_pasv_reply,
    parse_port_argument,
)
from ftpsproxy.ftp.errors import FTPSyntaxError
from ftpsproxy.ftp.lines import Command, parse_command
from ftpsproxy.ftp.policy import (
    PRE_LOGIN,
    REFUSALS,
    TRANSFER_DIRECTIONS,
    Direction,
    Handling,
    classify,
    refuses_mode,
    verb_label,
)
from ftpsproxy.ftp.relayed import AddressMask, strip_controls
from ftpsproxy.ftp.replies import Reply, make_reply
from ftpsproxy.net.factories import PrebuiltFactory
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.xferlog import TransferRecord, XferLog
from ftpsproxy.settings.config import Config
from ftpsproxy.tls.bulk import BulkTLSFactory
from ftpsproxy.tls.server import ReloadableServerTLS, ServerTLS

log = Logger()

LOCKED_OUT = "Too many failed logins from your address; try again later."  # with 421

# The 421 that ends a session when the backend connection ends: the class, no detail.
LOSS_TEXTS = {
    BackendLoss.CLOSED: "Service not available: the backend closed the connection.",
    BackendLoss.TIMEOUT: "Service not available: the backend did not answer in time.",
    BackendLoss.INVALID_REPLY: "Service not available: the backend sent an invalid reply.",
    BackendLoss.ENDED: "Service not available: the backend ended the session.",
}

MAX_PIPELINED = 64
_session_ids = itertools.count(1)


class State(enum.Enum):
    AWAITING_USER = "awaiting-user"  # greeted; no backend yet
    CONNECTING = "connecting"  # USER received; connecting to the backend
    LOGGING_IN = "logging-in"  # USER/PASS relayed, not yet accepted
    READY = "ready"  # logged in: commands relayed
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAITING_USER: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.LOGGING_IN, State.CLOSED}),
    State.LOGGING_IN: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


class ClientLink(TypingProtocol):
    """What the session needs from the client-facing control connection."""

    peer_host: str
    local_host: str
    tls_active: bool
    certificate_names: list[str] | None  # None: no client certificate presented

    def send(self, data: bytes) -> None: ...

    def start_tls(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class ProxyContext:
    """What all sessions of a service share."""

    reactor: Any  # provides IReactorTCP and IReactorTime
    config: Config
    metrics: Metrics
    allocator: PortAllocator
    server_tls: ReloadableServerTLS | None
    backend: BackendConnector
    open_sessions: set[Session] = field(default_factory=set)
    sessions_per_ip: Counter[str] = field(default_factory=Counter)
    xferlog: XferLog | None = None
    login_guard: LoginGuard = field(init=False)
    splice: bool = field(init=False)  # plain-to-plain transfers may move in the kernel

    def __post_init__(self) -> None:
        self.splice = self.config.data_path == "splice" and splice_supported(self.reactor)
        self.login_guard = LoginGuard(self.config.max_login_failures, self.config.login_lockout)
        self.metrics.locked_out_addresses.set_function(
            lambda: self.login_guard.locked_count(self.reactor.seconds())
        )

    def admission_refusal(self, client_host: str) -> tuple[str, str] | None:
        """Why a new connection from *client_host* must be refused (421): (reason, text)."""
        if self.login_guard.locked(client_host, self.reactor.seconds()):
            return "lockout", LOCKED_OUT
        if len(self.open_sessions) >= self.config.max_sessions:
            return "limit", "Too many sessions; try again later."
        if self.sessions_per_ip[client_host] >= self.config.max_sessions_per_ip:
            return "limit", "Too many sessions from your address."
        return None


class Session:
    def __init__(self, context: ProxyContext, client: ClientLink, *, listener: str, mode: str):
        self.id = next(_session_ids)
        self.context = context
        self.config = context.config
        self.metrics = context.metrics
        self.client = client
        self.listener = listener
        self.mode = mode
        self.state = State.AWAITING_USER
        # The TLS context this session started with; its data connections use it too.
        self.server_tls: ServerTLS | None = (
            context.server_tls.current if context.server_tls is not None else None
        )
        self.user: str | None = None
        self.backend: BackendControl | None = None
        self.protect_data = False
        self.epsv_all = False
        self.binary = False  # TYPE A until the client says TYPE I (RFC 959 §3.1.1.1)
        self.virtual_host: Command | None = None
        self._draining_service = False
        self._backend_epsv = True
        self._backend_eprt = True
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._output_blocked = False  # the client is not reading our replies
        self._draining = False
        self._channel: DataChannel | None = None  # prepared by PASV/EPSV, not yet used
        self._transfer: DataChannel | None = None  # the running transfer
        self._held_reply: Reply | None = None
        self._aborting = False  # the client sent ABOR during the running transfer
        self._started = time.monotonic()
        self._connect_started = 0.0
        self._login_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._penalty_timer: IDelayedCall | None = None  # a failed login's late answer
        self._guess_in_flight = False  # our PASS is at the backend, counted by the guard
        self._login_waiter: Callable[[], None] | None = None  # our PASS waits for a place
        self._mask: AddressMask | None = None  # set once the backend is connected
        self.bytes_up = 0
        self.bytes_down = 0

    # -- life cycle -------------------------------------------------------------------------

    def _goto(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {state.value}")
        self.state = state

    def start(self) -> None:
        self.context.open_sessions.add(self)
        self.context.sessions_per_ip[self.client.peer_host] += 1
        clock = self.context.reactor
        self._login_timer = clock.callLater(self.config.login_timeout, self._login_timed_out)
        self._idle_timer = clock.callLater(self.config.idle_timeout, self._idle_timed_out)
        self.metrics.sessions_total.labels(listener=self.listener, mode=self.mode).inc()
        self.metrics.sessions_active.labels(listener=self.listener, mode=self.mode).inc()
        log.info(
            "session {session} start client={client} mode={mode}",
            session=self.id,
            client=self.client.peer_host,
            mode=self.mode,
        )
        self._reply(220, "ftpsproxy ready.")

    def _login_timed_out(self) -> None:
        log.info("session {session} login timeout", session=self.id)
        self._close(421, "Login timeout.")

    def _idle_timed_out(self) -> None:
        if (self._transfer is not None or self._busy) and not self._output_blocked:
            # A transfer, or a command the backend is working on, is not idleness.
            self._idle_timer = self.context.reactor.callLater(
                self.config.idle_timeout, self._idle_timed_out
            )
            return
        log.info("session {session} idle timeout", session=self.id)
        self._close(421, "Idle timeout.")

    def drain(self) -> None:
        """The proxy is stopping: end now if idle, else right after the running command."""
        self._draining_service = True
        if not self._busy and self._transfer is None:
            self._close(421, "Service shutting down.")

    def force_close(self) -> None:
        self._close(421, "Service shutting down.")

    def _cancel_timers(self) -> None:
        for timer in (self._login_timer, self._idle_timer, self._penalty_timer):
            if timer is not None and timer.active():
                timer.cancel()

    def client_lost(self) -> None:
        self._shutdown("client closed the connection")

    def _close(self, code: int, text: str) -> None:
        """End the session with a final reply to the client (421 and friends)."""
        if self.state is State.CLOSED:
            return
        self._reply(code, text)
        self._shutdown(text)

    def _shutdown(self, why: str) -> None:
        if self.state is State.CLOSED:
            return
        self._goto(State.CLOSED)
        self._cancel_timers()
        self._queue.clear()
        if self._login_waiter is not None:
            self.context.login_guard.cancel(self.client.peer_host, self._login_waiter)
            self._login_waiter = None
        if self._guess_in_flight:
            # The password reached the backend; we will never know how it went.
            self._guess_answered(failed=True)
        for channel in (self._channel, self._transfer):
            if channel is not None:
                channel.abort()
        if self._transfer is not None:
            # Cut off by the session's end: counted, with the bytes relayed so far.
            self._account_bytes(self._transfer)
            self._count_transfer(self._transfer, make_reply(426, "Session ended."))
        self._channel = self._transfer = None
        if self.backend is not None:
            self.backend.close()
        self.client.close()
        self.context.open_sessions.discard(self)
        self.context.sessions_per_ip[self.client.peer_host] -= 1
        if self.context.sessions_per_ip[self.client.peer_host] <= 0:
            del self.context.sessions_per_ip[self.client.peer_host]
        self.metrics.sessions_active.labels(listener=self.listener, mode=self.mode).dec()
        duration = time.monotonic() - self._started
        self.metrics.session_duration.observe(duration)
        log.info(
            "session {session} end client={client} user={user} backend={backend} "
            "bytes_up={up} bytes_down={down} duration={duration:.3f}s reason={why}",
            session=self.id,
            client=self.client.peer_host,
            user=self.user,
            backend=self.config.backend.url,
            up=self.bytes_up,
            down=self.bytes_down,
            duration=duration,
            why=why,
        )

    # -- client input -----------------------------------------------------------------------

    def client_line(self, line: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.config.idle_timeout)
        if self._busy:
            verb = _verb_of(line) if self._transfer is not None else None
            if verb == "ABOR":
                self._abort_transfer()
                return
            if verb == "STAT":
                self._transfer_status()
                return
            if len(self._queue) >= MAX_PIPELINED:
                self.too_many_pipelined()
                return
            self._queue.append(line)
            return
        self._execute(line)
        self._drain()

    def client_line_too_long(self) -> None:
        self._close(500, "Command line too long.")

    def too_many_pipelined(self) -> None:
        self._close(421, "Too many pipelined commands.")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def client_output_blocked(self) -> None:
        """The client leaves our replies unread: produce no more of them until it reads.

        Queued commands wait, and so do the backend's replies (its connection is not read).
        """
        self._output_blocked = True
        if self.backend is not None:
            self.backend.pause_reading()

    def client_output_unblocked(self) -> None:
        self._output_blocked = False
        if self.backend is not None:
            self.backend.resume_reading()
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while (
                self._queue
                and not self._busy
                and not self._output_blocked
                and self.state is not State.CLOSED
            ):
                self._execute(self._queue.popleft())
        finally:
            self._draining = False

    def _done(self) -> None:
        """The command in flight has its final reply: run what the client pipelined."""
        self._busy = False
        if self._draining_service and self._transfer is None:
            self._close(421, "Service shutting down.")
            return
        self._drain()

    def _execute(self, line: bytes) -> None:
        try:
            command = parse_command(line)
        except FTPSyntaxError:
            self.metrics.commands_total.labels(verb="other").inc()
            self._reply(500, "Syntax error, command unrecognized.")
            return
        self.metrics.commands_total.labels(verb=verb_label(command.verb)).inc()
        if self.state in (State.AWAITING_USER, State.LOGGING_IN):
            self._before_login(command)
        else:
            self._logged_in(command)

    # -- before login -----------------------------------------------------------------------

    def _before_login(self, command: Command) -> None:
        verb = command.verb
        if verb == "USER":
            self._user(command)
        elif verb == "PASS":
            if self.state is State.AWAITING_USER:
                self._reply(503, "Login with USER first.")
            elif self._tls_refused():
                self._reply(530, "TLS required: use AUTH TLS before logging in.")
            else:
                self._relay_login(command)
        elif verb == "HOST":
            self._host(command)
        elif verb == "ACCT" and self.state is State.LOGGING_IN:
            self._relay_login(command)
        elif verb in ("AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "NOOP", "SYST", "QUIT"):
            self._local(command)
        elif verb in REFUSALS:
            self._reply(*REFUSALS[verb])
        elif verb == "HELP":
            self._reply(214, "Log in; then the server's own HELP is relayed.")
        elif verb in PRE_LOGIN:
            self._reply(502, f"{verb} not available before login.")
        else:
            self._reply(530, "Please login with USER and PASS.")

    def _host(self, command: Command) -> None:
        """RFC 7151: the virtual host, before USER; passed on to the backend before USER."""
        if self.state is not State.AWAITING_USER:
            self._reply(503, "HOST must come before USER.")
        elif not command.has_argument:
            self._reply(501, "HOST needs a host name.")
        else:
            self.virtual_host = command
            self._reply(220, "HOST accepted.")

    def _tls_refused(self) -> bool:
        return self.config.require_tls and not self.client.tls_active

    def _user(self, command: Command) -> None:
        if self._tls_refused():
            self._reply(530, "TLS required: use AUTH TLS before logging in.")
            return
        if not command.has_argument:
            self._reply(501, "USER needs a user name.")
            return
        self.user = _printable(command.text())
        if self.config.client_certificate_user_match:
            names = self.client.certificate_names or []
            if command.text() not in names:
                log.warn(
                    "session {session} user {user} does not match the client certificate",
                    session=self.id,
                    user=self.user,
                )
                self._reply(530, "User name does not match the client certificate.")
                return
        if self.state is State.LOGGING_IN:
            self._relay_login(command)
            return
        self._goto(State.CONNECTING)
        self._busy = True
        started = self.context.backend.control()
        self._connect_started = time.monotonic()
        started.addCallbacks(
            lambda backend: self._backend_ready(backend, command), self._backend_failed
        )

    def _backend_ready(self, backend: BackendControl, user: Command) -> None:
        self.metrics.backend_connects_total.labels(result="success").inc()
        self.metrics.backend_connect_seconds.observe(time.monotonic() - self._connect_started)
        if backend.tls_version is not None:
            self.metrics.tls_handshakes.labels(
                side="backend", channel="control", version=backend.tls_version
            ).inc()
        if self.state is State.CLOSED:
            backend.close()
            return
        self.backend = backend
        self._mask = self._inside_addresses(backend)
        backend.watch_replies(
            self.context.reactor, self.config.backend_reply_timeout, self.config.close_timeout
        )
        backend.on_lost = self._backend_lost
        backend.on_unsolicited = self._backend_unsolicited
        if self._output_blocked:
            backend.pause_reading()
        self._goto(State.LOGGING_IN)
        self._busy = False
        if self.virtual_host is not None:
            # Backends without HOST answer 500/502: the login goes on regardless.
            self._request(
                self.virtual_host.encode(),
                lambda reply: self._relay_login(user),
            )
            return
        self._relay_login(user)

    def _inside_addresses(self, backend: BackendControl) -> AddressMask:
        """The backend's address (and name) read as the proxy's, the proxy's own address on
        the backend's network as the client's: what the client sees of the same link."""
        proxy = self.config.public_address or self.client.local_host
        inside = {backend.peer_host: proxy, backend.local_host: self.client.peer_host}
        if not _is_ip(self.config.backend.host):
            inside[self.config.backend.host] = proxy
        return AddressMask(inside)

    def _backend_failed(self, reason: Failure) -> None:
        error = reason.value
        if isinstance(error, BackendTLSError):
            why = f"backend TLS failed: {error}"
            self.metrics.tls_handshake_failures.labels(
                side="backend", channel="control", reason=error.kind
            ).inc()
            text = "Service not available: TLS to the backend server failed."
            result = "tls"
        elif isinstance(error, BackendSetupError):
            why = f"backend refused the session: {error}"
            text = "Service not available: the backend server refused the session."
            result = error.kind
        else:
            why = f"backend unreachable: {reason.getErrorMessage()}"
            text = "Service not available: the backend server cannot be reached."
            result = "unreachable"
        self.metrics.backend_connects_total.labels(result=result).inc()
        log.warn("session {session} {why}", session=self.id, why=why)
        self._close(421, text)

    def _relay_login(self, command: Command) -> None:
        """USER/PASS/ACCT: like ``_relay``, but a refused login is paid for (``_login_failed``).

        An address locked out meanwhile (by its other sessions) may not go on guessing here.
        A password goes to the backend only while the address has fewer than the allowed
        failures plus guesses under way (in all its sessions); otherwise it waits its turn.
        """
        guard = self.context.login_guard
        host = self.client.peer_host
        if guard.locked(host, self.context.reactor.seconds()):
            self._close(421, LOCKED_OUT)
            return
        guess = command.verb == "PASS"
        if guess and not guard.try_begin(host, self.context.reactor.seconds()):
            self._busy = True  # pipelined commands wait behind the password
            self._login_waiter = lambda: self._login_turn(command)
            guard.wait(host, self._login_waiter)
            return
        self._guess_in_flight = guess

        def handler(reply: Reply) -> None:
            if reply.is_preliminary:
                self._send(reply)
                return
            locked = self._guess_answered(failed=reply.code == 530)
            if reply.code == 530:
                self._login_failed(reply, locked)
                return
            self._send(reply)
            if reply.code in (230, 202):
                self._logged_in_now()
            self._done()

        self._request(command.encode(), handler)

    def _login_turn(self, command: Command) -> None:
        """Another session's guess was answered: this session's password may go now."""
        self._login_waiter = None
        if self.state is State.CLOSED:
            return
        self._relay_login(command)

    def _guess_answered(self, *, failed: bool) -> bool:
        """Free this session's place among its address's guesses; True when now locked out.

        The sessions that were waiting for a place try again (in a later turn of the
        reactor, not inside this session's reply handler).
        """
        guard, host, now = (
            self.context.login_guard,
            self.client.peer_host,
            self.context.reactor.seconds(),
        )
        if not self._guess_in_flight:  # a 530 to USER or ACCT
            return guard.failed(host, now) if failed else False
        self._guess_in_flight = False
        locked, woken = guard.finish(host, now, failed=failed)
        for waiter in woken:
            self.context.reactor.callLater(0, waiter)
        return locked

    def _logged_in_now(self) -> None:
        self.metrics.logins_total.labels(result="success").inc()
        if self.state is State.LOGGING_IN:
            self._goto(State.READY)
            if self._login_timer is not None and self._login_timer.active():
                self._login_timer.cancel()

    def _login_failed(self, reply: Reply, locked: bool) -> None:
        """Count the failure against the client's address; answer late; lock out past the limit.

        The session stays busy meanwhile, so pipelined guesses wait their turn too.
        """
        self.metrics.logins_total.labels(result="failure").inc()
        host = self.client.peer_host
        if locked:
            self.metrics.login_lockouts.inc()
            log.warn(
                "session {session} client {client} locked out for {seconds:g}s after "
                "{count} failed logins",
                session=self.id,
                client=host,
                seconds=self.config.login_lockout,
                count=self.config.max_login_failures,
            )

        def answer() -> None:
            self._penalty_timer = None
            self._send(reply)
            if locked:
                self._close(421, LOCKED_OUT)
            else:
                self._done()

        if self.config.login_failure_delay > 0:
            self._penalty_timer = self.context.reactor.callLater(
                self.config.login_failure_delay, answer
            )
        else:
            answer()

    # -- logged in --------------------------------------------------------------------------

    def _logged_in(self, command: Command) -> None:
        handling = classify(command.verb)
        if handling is Handling.LOCAL:
            self._local(command)
        elif handling is Handling.PASSIVE:
            self._passive(command)
        elif handling is Handling.ACTIVE:
            self._active(command)
        elif handling is Handling.TRANSFER:
            self._start_transfer(command)
        elif handling is Handling.REFUSED:
            self._reply(*REFUSALS[command.verb])
        elif command.verb == "MODE" and refuses_mode(command.argument):
            self._reply(504, "Only MODE S is supported.")
        elif command.verb == "TYPE":
            binary = not command.argument.strip().upper().startswith(b"A")

            def set_type(reply: Reply) -> None:
                if reply.code // 100 == 2:
                    self.binary = binary

            self._relay(command, on_final=set_type)
        else:
            if handling is Handling.ABORT:
                self._drop_channel()
            self._relay(command)

    # -- commands the proxy answers itself ----------------------------------------------------

    def _local(self, command: Command) -> None:
        verb = command.verb
        argument = command.argument.strip().upper()
        backend_ready = self.state is State.READY and self.backend is not None
        if verb == "AUTH":
            self._auth(argument)
        elif verb == "PBSZ":
            if not self.client.tls_active:
                self._reply(503, "PBSZ requires an active TLS session (AUTH TLS).")
            elif not argument.isdigit():
                self._reply(501, "PBSZ needs a number.")
            else:
                self._reply(200, "PBSZ=0")
        elif verb == "PROT":
            self._prot(argument)
        elif verb == "FEAT":
            if backend_ready:
                self._request(b"FEAT\r\n", self._feat_reply)
            else:
                # Before login, only the proxy's own: the backend's list would tell anyone
                # which server software runs behind the proxy.
                self._send(features.merge_features(self._own_features(), []))
        elif verb == "OPTS" and argument.startswith(b"UTF8"):
            self._reply(200, "UTF8 mode is always on.")
        elif verb == "OPTS" and backend_ready:
            self._relay(command)
        elif verb == "OPTS":
            self._reply(501, "Option not understood before login.")
        elif verb == "SYST" and not backend_ready:
            self._reply(215, "UNIX Type: L8")
        elif verb == "NOOP" and not backend_ready:
            self._reply(200, "NOOP ok.")
        elif verb == "QUIT":
            if self.backend is not None:
                self._relay(command, on_final=lambda reply: self._shutdown("client quit"))
            else:
                self._close(221, "Goodbye.")
        elif verb in ("USER", "PASS"):
            self._reply(503, "Already logged in.")
        else:
            self._relay(command)

    def _auth(self, mechanism: bytes) -> None:
        if self.server_tls is None:
            self._reply(502, "TLS is not configured on this server.")
        elif self.client.tls_active:
            self._reply(503, "TLS is already active.")
        elif self.state is not State.AWAITING_USER:
            self._reply(503, "AUTH must come before USER.")
        elif mechanism not in (b"TLS", b"TLS-C", b"SSL", b"TLS-P"):
            self._reply(504, "Only AUTH TLS and AUTH SSL are supported.")
        else:
            self._reply(234, f"AUTH {mechanism.decode()} successful.")
            self._queue.clear()  # nothing pipelined behind AUTH may run (CVE-2011-0411)
            self.client.start_tls()

    def _prot(self, level: bytes) -> None:
        if not self.client.tls_active:
            self._reply(503, "PROT requires an active TLS session (AUTH TLS).")
        elif level == b"P":
            self.protect_data = True
            self._reply(200, "Protection level set to Private.")
        elif level == b"C":
            if self.config.require_tls:
                self._reply(534, "Clear data connections are refused by policy; use PROT P.")
            else:
                self.protect_data = False
                self._reply(200, "Protection level set to Clear.")
        elif level in (b"S", b"E"):
            self._reply(536, "Only PROT P and PROT C are supported.")
        else:
            self._reply(504, "Unknown protection level.")

    def _own_features(self) -> list[str]:
        return features.proxy_features(tls=self.server_tls is not None, active_mode=True)

    def _feat_reply(self, reply: Reply) -> None:
        if reply.is_preliminary:
            return
        self._send(features.merge_features(self._own_features(), features.backend_features(reply)))
        self._done()

    # -- passive mode -----------------------------------------------------------------------

    def _passive(self, command: Command) -> None:
        extended = command.verb == "EPSV"
        argument = command.argument.strip().upper()
        if extended and argument == b"ALL":
            self.epsv_all = True
            self._reply(200, "EPSV ALL accepted.")
            return
        if not extended and self.epsv_all:
            self._reply(503, "PASV is not allowed after EPSV ALL.")
            return
        client_v6 = ipaddress.ip_address(self.client.local_host).version == 6
        if extended and argument not in (b"", b"1", b"2"):
            self._reply(522, "Network protocol not supported, use (1,2).")
            return
        if extended and argument and (argument == b"2") != client_v6:
            self._reply(522, "Network protocol not supported on this connection.")
            return
        if not extended and client_v6:
            # RFC 2428 §3: PASV cannot name an IPv6 address, and the data listener
            # is on the IPv6 address the client used.
            self._reply(425, "PASV is not available on an IPv6 connection; use EPSV.")
            return
        channel = self._new_channel()
        listener = PassiveListener(
            self.context.reactor,
            self.context.allocator,
            self.metrics,
            self.client.peer_host,
            lambda: channel.client,
            self.server_tls if self.protect_data else None,
        )
        if not listener.start(self.client.local_host):
            channel.abort()
            self._reply(425, "No passive port available; try again later.")
            return
        channel.on_close(listener.close)
        self._channel = channel
        self._busy = True
        port = listener.port
        assert port is not None

        def answer() -> None:
            if extended:
                self._send(Reply(229, (b"229 " + format_epsv_reply(port),)))
            else:
                host = self.config.public_address or self.client.local_host
                self._send(Reply(227, (b"227 " + format_pasv_reply(host, port),)))

        self._backend_passive(channel, answer)

    def _new_channel(self) -> DataChannel:
        """A data channel for the next transfer, replacing any prepared one."""
        self._drop_channel()
        return DataChannel(
            self.context.reactor,
            self.metrics,
            self._channel_finished,
            client_tls=self.protect_data,
            backend_tls=self.backend is not None
            and self.backend.tls is not None
            and self.backend.protect_data,
            connect_timeout=self.config.passive_timeout,
            handshake_timeout=self.config.tls_handshake_timeout,
            require_session_reuse=self.config.require_session_reuse,
            stall_timeout=self.config.data_stall_timeout,
            close_timeout=self.config.close_timeout,
            splice=self.context.splice,
        )

    # -- active mode (PORT / EPRT) ----------------------------------------------------------

    def _active(self, command: Command) -> None:
        if self.epsv_all:
            self._reply(503, f"{command.verb} is not allowed after EPSV ALL.")
            return
        try:
            if command.verb == "PORT":
                target = parse_port_argument(command.argument)
            else:
                target = parse_eprt_argument(command.argument)
        except UnsupportedFamily:
            self._reply(522, "Network protocol not supported, use (1,2).")
            return
        except FTPSyntaxError:
            self._reply(501, f"Syntax error in {command.verb} argument.")
            return
        # RFC 2577 §3: no bounce attacks. Data goes only to the client itself, never to
        # a privileged port.
        if not same_host(target.host, self.client.peer_host) or target.port < 1024:
            self.metrics.data_connections_refused.labels(reason="bounce").inc()
            log.warn(
                "session {session} refused {verb} to {host}:{port} (client {client})",
                session=self.id,
                verb=command.verb,
                host=target.host,
                port=target.port,
                client=self.client.peer_host,
            )
            self._reply(504, "Data connections go only to your own address, ports >= 1024.")
            return
        channel = self._new_channel()
        channel.active_target = (target.host, target.port)
        self._channel = channel
        self._busy = True
        verb = command.verb
        self._backend_passive(channel, lambda: self._reply(200, f"{verb} command successful."))

    def _connect_client_data(self, channel: DataChannel) -> None:
        """Active mode: connect to the client; the proxy stays the TLS server (RFC 4217 §7)."""
        assert channel.active_target is not None
        host, port = channel.active_target
        factory: IProtocolFactory = PrebuiltFactory(channel.client)
        if self.protect_data and self.server_tls is not None:
            factory = BulkTLSFactory(self.server_tls, False, factory)
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_type(
            self.context.reactor,
            host,
            port,
            timeout=self.config.passive_timeout,
            bindAddress=(self.client.local_host, 0),
        )
        endpoint.connect(factory).addErrback(channel.client_connect_failed)

    def _backend_passive(self, channel: DataChannel, answer: Callable[[], None]) -> None:
        """Prepare the backend side of *channel*, then *answer* the client.

        Passive (default): ask the backend for a port (EPSV, falling back to PASV) and
        connect to it.  Active (``backend-data-mode = active``): listen on the address
        the backend control connection uses, and tell the backend with EPRT/PORT.
        """
        if self.config.backend_data_mode == "active":
            self._backend_active(channel, answer)
            return
        use_epsv = self._backend_epsv

        def on_reply(reply: Reply) -> None:
            nonlocal use_epsv
            if self._backend_data_failed(channel, None):
                return
            try:
                if use_epsv and reply.code == 229:
                    port = parse_epsv_reply(reply.lines[0])
                elif not use_epsv and reply.code == 227:
                    port = parse_pasv_reply(reply.lines[0]).port
                elif use_epsv and reply.code in (500, 501, 502, 504, 522):
                    self._backend_epsv = use_epsv = False
                    self._request(b"PASV\r\n", on_reply)
                    return
                else:
                    raise FTPSyntaxError(f"backend answered {reply.code}")
            except FTPSyntaxError as error:
                self._backend_data_failed(channel, str(error))
                return
            if port < 1024:
                # Never a privileged port: the backend's own FTP port, or another service.
                self.metrics.data_connections_refused.labels(reason="backend_port").inc()
                self._backend_data_failed(channel, f"backend named privileged data port {port}")
                return
            channel.backend_port = port
            answer()
            self._done()

        self._request(b"EPSV\r\n" if use_epsv else b"PASV\r\n", on_reply)

    def _backend_data_failed(self, channel: DataChannel, error: str | None) -> bool:
        """End a PASV/EPSV/PORT/EPRT whose backend side failed (*error*) or whose channel
        ended meanwhile; True when the command has been answered."""
        if self.state is State.CLOSED:
            self._done()
            return True
        if error is None and not channel.finished:
            return False
        log.warn(
            "session {session} backend data connection set-up failed: {error}",
            session=self.id,
            error=error or "data channel ended",
        )
        channel.abort()
        if self._channel is channel:
            self._channel = None
        self._reply(425, "Can't open data connection: the backend refused it.")
        self._done()
        return True

    def _backend_active(self, channel: DataChannel, answer: Callable[[], None]) -> None:
        assert self.backend is not None
        creator = None
        if self.backend.tls is not None and self.backend.protect_data:
            creator = self.backend.tls.for_data()
        listener = BackendDataListener(
            self.context.reactor, self.backend.peer_host, lambda: channel.backend, creator
        )
        try:
            host, port = listener.start(self.backend.local_host)
        except CannotListenError as error:
            self._backend_data_failed(channel, f"cannot listen for the backend: {error}")
            return
        channel.on_close(listener.close)
        use_eprt = self._backend_eprt

        def on_reply(reply: Reply) -> None:
            nonlocal use_eprt
            if self._backend_data_failed(channel, None):
                return
            if reply.code // 100 == 2:
                answer()
                self._done()
            elif use_eprt and reply.code in (500, 501, 502, 504, 522) and ":" not in host:
                self._backend_eprt = use_eprt = False
                self._request(b"PORT " + format_port_argument(host, port) + b"\r\n", on_reply)
            else:
                self._backend_data_failed(channel, f"backend answered {reply.code}")

        try:
            if use_eprt:
                line = b"EPRT " + format_eprt_argument(host, port) + b"\r\n"
            else:
                line = b"PORT " + format_port_argument(host, port) + b"\r\n"
        except (FTPSyntaxError, ValueError) as error:
            self._backend_data_failed(channel, f"cannot announce {host}:{port}: {error}")
            return
        self._request(line, on_reply)

    def _connect_backend_data(self, channel: DataChannel, port: int) -> None:
        assert self.backend is not None
        # Connect to the backend control peer, never to an address in a 227 reply.
        connecting = self.context.backend.data(self.backend, port, channel.backend)
        connecting.addErrback(channel.backend_connect_failed)

    def _drop_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.abort()

    def _channel_finished(self, channel: DataChannel) -> None:
        if self._channel is channel and channel.refusal is None:
            self._channel = None  # a refusal stays, to answer the transfer command
        if self._transfer is channel:
            self._account_bytes(channel)
            if self._held_reply is not None:
                self._finish_transfer()

    def _account_bytes(self, channel: DataChannel) -> None:
        if channel.accounted:
            return
        channel.accounted = True
        if channel.direction is not None and channel.direction.to_client:
            self.bytes_down += channel.bytes
        else:
            self.bytes_up += channel.bytes

    # -- transfers --------------------------------------------------------------------------

    def _start_transfer(self, command: Command) -> None:
        if self.config.require_tls and not self.protect_data:
            self._reply(521, "Data connections must be protected: use PROT P.")
            return
        channel = self._channel
        if channel is not None and channel.refusal is not None:
            self._channel = None
            self._reply(*channel.refusal)
            return
        if channel is None or channel.finished:
            self._reply(425, "Use PASV or EPSV first.")
            return
        self._channel = None
        self._transfer = channel
        self._held_reply = None
        channel.begin(TRANSFER_DIRECTIONS[command.verb])
        channel.filename = command.text() or "-"
        if channel.backend_port is not None:
            # Connect only now, as a client would after sending the command: a TLS
            # ClientHello waiting in a backend's socket from PASV time until the transfer
            # command can find the server's ticket state changed in between.
            self._connect_backend_data(channel, channel.backend_port)
        if channel.active_target is not None:
            self._connect_client_data(channel)

        def on_reply(reply: Reply) -> None:
            if self._transfer is not channel:
                self._send(reply)  # the transfer was aborted; pass late replies on as they are
                return
            if reply.is_preliminary:
                self._send(reply)
                return
            self._held_reply = reply
            if reply.is_error:
                channel.abort()  # may end the transfer at once (nothing was connected)
            if self._transfer is channel and (reply.is_error or channel.reported):
                self._finish_transfer()

        self._request(command.encode(), on_reply)

    def _finish_transfer(self) -> None:
        """Pass the backend's final reply on, now that the client's data connection is closed."""
        channel, reply = self._transfer, self._held_reply
        assert channel is not None and reply is not None
        self._transfer = None
        self._held_reply = None
        self._count_transfer(channel, reply)
        if channel.refusal is not None:
            reply = make_reply(*channel.refusal)
        elif reply.is_success and channel.outcome is not Outcome.COMPLETE:
            if channel.outcome is Outcome.CLIENT_FAILED and not channel.client.connected_:
                reply = make_reply(425, "Can't open data connection.")
            else:
                reply = make_reply(426, "Connection closed; transfer aborted.")
        self._send(reply)
        self._done()

    def _transfer_status(self) -> None:
        """STAT during a transfer (RFC 959 §4.1.3): answered here, from what the proxy relays.

        Relaying it would put a reply between the transfer's 1xx and its final reply
        that could not be told apart from the final one.
        """
        channel = self._transfer
        assert channel is not None and channel.direction is not None
        self.metrics.commands_total.labels(verb="STAT").inc()
        self._reply(
            213,
            f"Status: {channel.direction.value} in progress, {channel.bytes} bytes relayed.",
        )

    def _count_transfer(self, channel: DataChannel, reply: Reply) -> None:
        assert channel.direction is not None
        if channel.outcome is Outcome.ABORTED and self._aborting:
            result = "aborted"
        elif reply.is_success and channel.outcome is Outcome.COMPLETE:
            result = "complete"
        else:
            result = "failed"
        self._aborting = False
        self.metrics.transfers_total.labels(direction=channel.direction.value, result=result).inc()
        now = time.time()
        seconds = max(0.0, now - channel.started_at)
        self.metrics.transfer_duration.labels(channel.direction.value).observe(seconds)
        if self.context.xferlog is not None and channel.direction is not Direction.LISTING:
            self.context.xferlog.record(
                TransferRecord(
                    finished=now,
                    seconds=seconds,
                    client=self.client.peer_host,
                    size=channel.bytes,
                    filename=channel.filename,
                    binary=self.binary,
                    upload=channel.direction is Direction.UPLOAD,
                    user=self.user or "-",
                    complete=result == "complete",
                )
            )

    def _abort_transfer(self) -> None:
        """ABOR while a transfer runs: close its data connections and let the backend answer."""
        assert self._transfer is not None
        self.metrics.commands_total.labels(verb="ABOR").inc()
        self._aborting = True
        self._transfer.abort_for_abor()
        if self.backend is not None:
            self.backend.request(b"ABOR\r\n", self._send)

    # -- the backend ------------------------------------------------------------------------

    def _relay(self, command: Command, on_final: ReplyHandler | None = None) -> None:
        """Send *command* to the backend and pass every reply back; then run *on_final*."""

        def handler(reply: Reply) -> None:
            self._send(reply)
            if not reply.is_preliminary:
                if on_final is not None:
                    on_final(reply)
                self._done()

        self._request(command.encode(), handler)

    def _request(self, line: bytes, handler: ReplyHandler) -> None:
        """Send a line to the backend; *handler* gets its replies and calls ``_done``."""
        if self.backend is None:
            self._reply(503, "Login with USER first.")
            return
        self._busy = True
        self.backend.request(line, handler)

    def _backend_lost(self, kind: BackendLoss, why: str) -> None:
        log.warn("session {session} backend connection lost: {why}", session=self.id, why=why)
        if self._transfer is not None and self.state is not State.CLOSED:
            # The transfer's own answer first (RFC 959: 426), then the session's end.
            self._reply(426, "Connection closed; transfer aborted: the backend went away.")
        self._close(421, LOSS_TEXTS[kind])

    def _backend_unsolicited(self, reply: Reply) -> None:
        """A reply with no command outstanding (unasked, or a second final reply) answers
        nothing the client asked: it is dropped, and a 421 ends the session."""
        self.metrics.backend_replies_dropped.inc()
        log.warn(
            "session {session} dropped a backend reply with no command outstanding: {code}",
            session=self.id,
            code=reply.code,
        )
        if reply.code == 421:
            self._backend_lost(BackendLoss.ENDED, "backend sent 421")

    # -- output -----------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if self.state is not State.CLOSED:
            if self._mask is not None:  # the backend's replies, and our own alike
                reply = self._mask.apply(strip_controls(reply))
            self.metrics.replies_total.labels(f"{reply.code // 100}xx").inc()
            self.client.send(reply.encode())

    def _reply(self, code: int, text: str) -> None:
        self._send(make_reply(code, text))


def _verb_of(line: bytes) -> str | None:
    try:
        return parse_command(line).verb
    except FTPSyntaxError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _printable(text: str) -> str:
    """A user name fit for a log line: no control characters, bounded length."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:128]
