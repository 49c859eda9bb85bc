"""One client session: the state machine between the client's and the backend's control channels.

The session greets the client itself, answers what needs no backend (``AUTH``,
``PBSZ``, ``PROT``, ``FEAT``, …) and connects to the backend only when ``USER``
arrives.  From then on commands are relayed one at a time: a command is sent to the
backend only when the previous one has its final reply, so replies can be matched to
commands without guessing.  ``ABOR`` and ``STAT`` are the commands that pass while a
transfer runs (RFC 959 §4.1.3).

The session is a composition: :class:`Login`, :class:`LocalCommands` and
:class:`DataConnections` do the work of their commands through the small
:class:`SessionCore` seam; the session keeps the state table (:mod:`.states`), the
command queue, the timers, and both control links.  What it reports goes to one
:class:`SessionEvents`.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall

from ftpsproxy.control.backend import BackendLink, BackendLoss, ReplyHandler
from ftpsproxy.control.context import ProxyContext
from ftpsproxy.control.data_connections import DataConnections
from ftpsproxy.control.links import ClientLink
from ftpsproxy.control.local import LocalCommands
from ftpsproxy.control.login import Login
from ftpsproxy.control.proxy_rules import announced_host
from ftpsproxy.control.queue import CommandQueue
from ftpsproxy.control.routing import Route
from ftpsproxy.control.states import InvalidTransition, State, check_transition
from ftpsproxy.ftp.errors import FTPSyntaxError
from ftpsproxy.ftp.lines import Command, parse_command
from ftpsproxy.ftp.policy import REFUSALS, Handling, classify, refuses_mode, verb_label
from ftpsproxy.ftp.relayed import AddressMask, client_view, strip_controls
from ftpsproxy.ftp.replies import Reply, make_reply
from ftpsproxy.net.timers import cancel_call
from ftpsproxy.observe.session_events import SessionFacts
from ftpsproxy.tls.server import ServerTLS

# The 421 that ends a session when the backend connection ends: the class, no detail.
LOSS_TEXTS = {
    BackendLoss.CLOSED: "Service not available: the backend closed the connection.",
    BackendLoss.TIMEOUT: "Service not available: the backend did not answer in time.",
    BackendLoss.INVALID_REPLY: "Service not available: the backend sent an invalid reply.",
    BackendLoss.ENDED: "Service not available: the backend ended the session.",
}


class Session:
    def __init__(self, context: ProxyContext, client: ClientLink, *, listener: str, mode: str):
        self.id = next(context.session_ids)
        self.context = context
        self.config = context.config
        self.client = client
        self.events = context.events
        self.facts = SessionFacts(self.id, client.peer_host, listener, mode)
        self.state = State.AWAITING_USER
        # The TLS context this session started with; its data connections use it too.
        self.server_tls: ServerTLS | None = (
            context.server_tls.current if context.server_tls is not None else None
        )
        self.has_tls = self.server_tls is not None
        self.user: str | None = None
        self.backend: BackendLink | None = None
        self.route: Route | None = None  # the pool's backend this session got, at USER
        self.protect_data = False
        self.binary = False  # TYPE A until the client says TYPE I (RFC 959 §3.1.1.1)
        self._queue = CommandQueue(self._execute)
        self._service_draining = False
        self._mask: AddressMask | None = None  # set once the backend is connected
        self._started = context.reactor.seconds()
        self._login_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self.login = Login(self, context, client)
        self.local = LocalCommands(self, client, self.config)
        self.data = DataConnections(self, context, client)

    def goto(self, state: State) -> None:
        self.state = check_transition(self.state, state)
        if state is State.READY:
            cancel_call(self._login_timer)
            self._login_timer = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def transferring(self) -> bool:
        return self.state is State.TRANSFERRING

    @property
    def backend_ready(self) -> bool:
        return self.state is State.READY and self.backend is not None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.context.open_sessions.add(self)
        self.context.sessions_per_ip[self.client.counted_as] += 1
        clock = self.context.reactor
        self._login_timer = clock.callLater(self.config.login_timeout, self._login_timed_out)
        self._idle_timer = clock.callLater(self.config.idle_timeout, self._idle_timed_out)
        self.events.session_started(self.facts)
        self.reply(220, "ftpsproxy ready.")

    def _login_timed_out(self) -> None:
        self.events.timed_out(self.id, "login")
        self.close(421, "Login timeout.")

    def _idle_timed_out(self) -> None:
        working = self._queue.busy or self.state is State.TRANSFERRING
        if working and not self._queue.blocked:
            # A transfer, or a command the backend is working on, is not idleness.
            self._idle_timer = self.context.reactor.callLater(
                self.config.idle_timeout, self._idle_timed_out
            )
            return
        self.events.timed_out(self.id, "idle")
        self.close(421, "Idle timeout.")

    def drain(self) -> None:
        """The proxy is stopping: end now if idle, else right after the running command."""
        self._service_draining = True
        if not self._queue.busy and self.state is not State.TRANSFERRING:
            self.close(421, "Service shutting down.")

    def force_close(self) -> None:
        self.close(421, "Service shutting down.")

    def client_lost(self) -> None:
        self._shutdown("client closed the connection")

    def close(self, code: int, text: str) -> None:
        """End the session with a final reply to the client (421 and friends)."""
        if self.state is State.CLOSED:
            return
        self.reply(code, text)
        self._shutdown(text)

    def _shutdown(self, why: str) -> None:
        if self.state is State.CLOSED:
            return
        self.goto(State.CLOSED)
        self._queue.stopped = True
        cancel_call(self._login_timer)
        cancel_call(self._idle_timer)
        self._queue.clear()
        self.login.end()
        self.data.end()
        if self.backend is not None:
            self.backend.close()
        if self.route is not None:
            self.context.router.release(self.route)
        self.client.close()
        self.context.open_sessions.discard(self)
        self.context.sessions_per_ip[self.client.counted_as] -= 1
        if self.context.sessions_per_ip[self.client.counted_as] <= 0:
            del self.context.sessions_per_ip[self.client.counted_as]
        self.events.session_ended(
            self.facts,
            user=self.user,
            backend=self.route.backend.name if self.route is not None else "-",
            bytes_up=self.data.bytes_up,
            bytes_down=self.data.bytes_down,
            seconds=self.context.reactor.seconds() - self._started,
            why=why,
        )

    # -- client input -----------------------------------------------------------------------

    def client_line(self, line: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.config.idle_timeout)
        if self.state is State.TRANSFERRING:
            verb = _verb_of(line)
            if verb == "ABOR":
                self.data.abort()
                return
            if verb == "STAT":
                self.data.status()
                return
        if self._queue.busy:
            if not self._queue.add(line):
                self.too_many_pipelined()
            return
        self._execute(line)
        self._queue.run()

    def client_line_too_long(self) -> None:
        self.close(500, "Command line too long.")

    def too_many_pipelined(self) -> None:
        self.close(421, "Too many pipelined commands.")

    def client_output_blocked(self) -> None:
        """The client leaves our replies unread: produce no more of them until it reads.

        Queued commands wait, and so do the backend's replies (its connection is not read).
        """
        self._queue.blocked = True
        if self.backend is not None:
            self.backend.pause_reading()

    def client_output_unblocked(self) -> None:
        self._queue.blocked = False
        if self.backend is not None:
            self.backend.resume_reading()
        self._queue.run()

    def done(self) -> None:
        """The command in flight has its final reply: run what the client pipelined."""
        self._queue.busy = False
        if self._service_draining and self.state is not State.TRANSFERRING:
            self.close(421, "Service shutting down.")
            return
        self._queue.run()

    def hold(self) -> None:
        self._queue.busy = True

    def _execute(self, line: bytes) -> None:
        if self.state in (State.CONNECTING, State.TRANSFERRING, State.CLOSED):
            raise InvalidTransition(f"a command to run in state {self.state.value}")
        try:
            command = parse_command(line)
        except FTPSyntaxError:
            self.events.command("other")
            self.reply(500, "Syntax error, command unrecognized.")
            return
        self.events.command(verb_label(command.verb))
        if self.state is State.READY:
            self._logged_in(command)
            return
        verb = command.verb
        if verb == "USER":
            self.login.user(command)
        elif verb == "PASS":
            self.login.password(command)
        elif verb == "HOST":
            self.login.host(command)
        elif verb == "ACCT" and self.state is State.LOGGING_IN:
            self.login.relay(command)
        elif not self.local.before_login(command):
            self.reply(530, "Please login with USER and PASS.")

    def _logged_in(self, command: Command) -> None:
        handling = classify(command.verb)
        if handling is Handling.LOCAL:
            self.local.answer(command)
        elif handling in (Handling.PASSIVE, Handling.ACTIVE):
            self.data.prepare(command)
        elif handling is Handling.TRANSFER:
            self.data.start(command)
        elif handling is Handling.REFUSED:
            self.reply(*REFUSALS[command.verb])
        elif command.verb == "MODE" and refuses_mode(command.argument):
            self.reply(504, "Only MODE S is supported.")
        elif command.verb == "TYPE":
            binary = not command.argument.strip().upper().startswith(b"A")

            def set_type(reply: Reply) -> None:
                if reply.code // 100 == 2:
                    self.binary = binary

            self.relay(command, on_final=set_type)
        else:
            if handling is Handling.ABORT:
                self.data.drop_prepared()
            self.relay(command)

    def start_tls(self) -> None:
        self._queue.clear()  # nothing pipelined behind AUTH may run (CVE-2011-0411)
        self.client.start_tls()

    def quit(self) -> None:
        if self.backend is not None:
            self.relay(Command("QUIT"), on_final=lambda reply: self._shutdown("client quit"))
        else:
            self.close(221, "Goodbye.")

    # -- the backend ------------------------------------------------------------------------

    def attach_backend(self, backend: BackendLink, route: Route) -> None:
        self.backend = backend
        self.route = route
        self._mask = client_view(
            backend_address=backend.peer_host,
            backend_name=route.backend.address.host,
            proxy_inside=backend.local_host,
            proxy_outside=announced_host(
                self.config, self.client.local_host, self.client.proxied_destination
            ),
            client=self.client.peer_host,
        )
        backend.watch_replies(
            self.context.reactor, self.config.backend_reply_timeout, self.config.close_timeout
        )
        backend.on_lost = self._backend_lost
        backend.on_unsolicited = self._backend_unsolicited
        if self._queue.blocked:
            backend.pause_reading()
        self._queue.busy = False

    def relay(self, command: Command, on_final: ReplyHandler | None = None) -> None:
        """Send *command* to the backend and pass every reply back; then run *on_final*."""

        def handler(reply: Reply) -> None:
            self.send(reply)
            if not reply.is_preliminary:
                if on_final is not None:
                    on_final(reply)
                self.done()

        self.request(command.encode(), handler)

    def request(self, line: bytes, handler: ReplyHandler) -> None:
        """Send a line to the backend; *handler* gets its replies and calls ``done``."""
        if self.backend is None:
            self.reply(503, "Login with USER first.")
            return
        self._queue.busy = True
        self.backend.request(line, handler)

    def _backend_lost(self, kind: BackendLoss, why: str) -> None:
        self.events.backend_lost(self.id, why)
        if self.state is State.TRANSFERRING:
            # The transfer's own answer first (RFC 959: 426), then the session's end.
            self.reply(426, "Connection closed; transfer aborted: the backend went away.")
        self.close(421, LOSS_TEXTS[kind])

    def _backend_unsolicited(self, reply: Reply) -> None:
        """A reply with no command outstanding (unasked, or a second final reply) answers
        nothing the client asked: it is dropped, and a 421 ends the session."""
        self.events.backend_reply_dropped(self.id, reply.code)
        if reply.code == 421:
            self._backend_lost(BackendLoss.ENDED, "backend sent 421")

    # -- output -----------------------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        if self.state is not State.CLOSED:
            if self._mask is not None:  # the backend's replies, and our own alike
                reply = self._mask.apply(strip_controls(reply))
            self.events.reply(reply.code)
            self.client.send(reply.encode())

    def reply(self, code: int, text: str) -> None:
        self.send(make_reply(code, text))


def _verb_of(line: bytes) -> str | None:
    try:
        return parse_command(line).verb
    except FTPSyntaxError:
        return None
