"""Logging in: USER is routed (``user_routing``) and opens the backend session,
USER/PASS/ACCT are relayed, and a refused password is paid for.

Every ``530`` is answered late (``--login-failure-delay``); failures and passwords still
at the backend count per client address across all its sessions (:class:`LoginGuard`),
so parallel sessions do not multiply guesses; an address past the limit is locked out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ftpsproxy.control.backend import BackendControl, BackendSetupError, BackendTLSError
from ftpsproxy.control.context import LOCKED_OUT, ProxyContext
from ftpsproxy.control.links import ClientLink, SessionCore
from ftpsproxy.control.routing import NoBackendAvailable, Route
from ftpsproxy.control.states import State
from ftpsproxy.control.user_routing import UNMAPPED_TEXT, Decision, NoRoute
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.replies import Reply, make_reply
from ftpsproxy.net.timers import cancel_call
from ftpsproxy.observe.logs import printable


class LoginHost(SessionCore, Protocol):
    """What logging in needs of the session beyond :class:`SessionCore`."""

    state: State
    user: str | None
    route: Route | None

    def goto(self, state: State) -> None: ...

    def hold(self) -> None:
        """Mark a command as in flight without a backend request (commands wait)."""

    def attach_backend(self, backend: BackendControl, route: Route) -> None: ...


class Login:
    """The login part of one session."""

    def __init__(self, session: LoginHost, context: ProxyContext, client: ClientLink) -> None:
        self._session = session
        self._context = context
        self._client = client
        self._virtual_host: Command | None = None
        self._guess_in_flight = False  # our PASS is at the backend, counted by the guard
        self._waiter: Callable[[], None] | None = None  # our PASS waits for a place
        self.penalty_timer: IDelayedCall | None = None  # a failed login's late answer

    def _now(self) -> float:
        return float(self._context.reactor.seconds())

    def tls_refused(self) -> bool:
        return self._context.config.require_tls and not self._client.tls_active

    # -- commands before login --------------------------------------------------------------

    def host(self, command: Command) -> None:
        """RFC 7151: the virtual host, before USER; passed on to the backend before USER."""
        if self._session.state is not State.AWAITING_USER:
            self._session.reply(503, "HOST must come before USER.")
        elif not command.has_argument:
            self._session.reply(501, "HOST needs a host name.")
        else:
            self._virtual_host = command
            self._session.reply(220, "HOST accepted.")

    def user(self, command: Command) -> None:
        session = self._session
        if self.tls_refused():
            session.reply(530, "TLS required: use AUTH TLS before logging in.")
            return
        if not command.has_argument:
            session.reply(501, "USER needs a user name.")
            return
        session.user = printable(command.text())
        if self._context.config.client_certificate_user_match:
            if command.text() not in (self._client.certificate_names or []):
                self._context.events.certificate_mismatch(session.id, session.user)
                session.reply(530, "User name does not match the client certificate.")
                return
        session.hold()  # commands wait while the user's backends are decided
        deciding = self._context.user_routing.decide(session.id, command.text())
        deciding.addCallback(self._routed, command).addErrback(self._routing_broke)

    def _routed(self, decision: Decision, command: Command) -> None:
        """Refuse, or connect to a backend the decision allows and send it the USER it names.

        A second ``USER`` (the session already has its backend) goes there only if the
        decision allows that backend: otherwise one login could pick the backend for
        another user's name.
        """
        session = self._session
        if session.state is State.CLOSED:
            return
        if isinstance(decision, NoRoute):
            self._refuse(decision)
            return
        sent = Command("USER", decision.user.encode("utf-8", "surrogateescape"))
        if session.state is State.LOGGING_IN:
            route = session.route
            assert route is not None  # LOGGING_IN: attached
            if decision.among is not None and route.backend.name not in decision.among:
                self._refuse(NoRoute(530, UNMAPPED_TEXT, "its backend is another session's"))
                return
            self.relay(sent)
            return
        session.goto(State.CONNECTING)
        connecting = self._context.router.connect(
            session.id,
            user=command.text(),
            client=self._client.peer_host,
            among=decision.among,
            why=decision.why,
            facts=self._client.facts(str(session.id)),
        )
        connecting.addCallbacks(
            lambda routed: self._backend_ready(routed[0], routed[1], sent),
            self._backend_failed,
        )

    def _refuse(self, refusal: NoRoute) -> None:
        """``530`` is a failed login like the backend's (late, counted); ``421`` ends.

        Both were logged where they were decided."""
        if refusal.code != 530:
            self._session.close(refusal.code, refusal.text)
            return
        locked = self._answered(failed=True)
        self._failed(make_reply(530, refusal.text), locked)

    def _routing_broke(self, reason: Failure) -> None:
        """A bug in deciding: end the session as a backend failure would, logged."""
        self._context.events.backend_failed(self._session.id, reason.getErrorMessage())
        self._session.close(421, "Service not available: local error in routing.")

    def password(self, command: Command) -> None:
        if self._session.state is State.AWAITING_USER:
            self._session.reply(503, "Login with USER first.")
        elif self.tls_refused():
            self._session.reply(530, "TLS required: use AUTH TLS before logging in.")
        else:
            self.relay(command)

    # -- the backend session ----------------------------------------------------------------

    def _backend_ready(self, route: Route, backend: BackendControl, user: Command) -> None:
        if self._session.state is State.CLOSED:
            backend.close()
            self._context.router.release(route)
            return
        self._session.attach_backend(backend, route)
        self._session.goto(State.LOGGING_IN)
        if self._virtual_host is not None:
            # Backends without HOST answer 500/502: the login goes on regardless.
            self._session.request(self._virtual_host.encode(), lambda reply: self.relay(user))
            return
        self.relay(user)

    def _backend_failed(self, reason: Failure) -> None:
        """Every candidate backend failed (each failure is counted where it happened)."""
        error = reason.value
        if isinstance(error, NoBackendAvailable):
            why = f"no backend: {error}"
            text = "Service not available: no backend server is available."
        elif isinstance(error, BackendTLSError):
            why = f"backend TLS failed: {error}"
            text = "Service not available: TLS to the backend server failed."
        elif isinstance(error, BackendSetupError):
            why = f"backend refused the session: {error}"
            text = "Service not available: the backend server refused the session."
        else:
            why = f"backend unreachable: {reason.getErrorMessage()}"
            text = "Service not available: the backend server cannot be reached."
        self._context.events.backend_failed(self._session.id, why)
        self._session.close(421, text)

    # -- relaying USER, PASS, ACCT ----------------------------------------------------------

    def relay(self, command: Command) -> None:
        """Like the session's relay, but a refused login is paid for.

        An address locked out meanwhile (by its other sessions) may not go on guessing
        here.  A password goes to the backend only while the address has fewer than the
        allowed failures plus guesses under way (in all its sessions); otherwise it waits.
        """
        guard = self._context.login_guard
        host = self._client.counted_as
        if guard.locked(host, self._now()):
            self._session.close(421, LOCKED_OUT)
            return
        guess = command.verb == "PASS"
        if guess and not guard.try_begin(host, self._now()):
            self._session.hold()  # pipelined commands wait behind the password
            self._waiter = lambda: self._turn(command)
            guard.wait(host, self._waiter)
            return
        self._guess_in_flight = guess

        def handler(reply: Reply) -> None:
            if reply.is_preliminary:
                self._session.send(reply)
                return
            locked = self._answered(failed=reply.code == 530)
            if reply.code == 530:
                self._failed(reply, locked)
                return
            self._session.send(reply)
            if reply.code in (230, 202):
                self._succeeded()
            self._session.done()

        self._session.request(command.encode(), handler)

    def _turn(self, command: Command) -> None:
        """Another session's guess was answered: this session's password may go now."""
        self._waiter = None
        if self._session.state is not State.CLOSED:
            self.relay(command)

    def _answered(self, *, failed: bool) -> bool:
        """Free this session's place among its address's guesses; True when now locked out.

        The sessions that were waiting for a place try again in a later turn of the
        reactor, not inside this session's reply handler.
        """
        guard, host, now = self._context.login_guard, self._client.counted_as, self._now()
        if not self._guess_in_flight:  # a 530 to USER or ACCT
            return guard.failed(host, now) if failed else False
        self._guess_in_flight = False
        locked, woken = guard.finish(host, now, failed=failed)
        for waiter in woken:
            self._context.reactor.callLater(0, waiter)
        return locked

    def _succeeded(self) -> None:
        self._context.events.login(ok=True)
        if self._session.state is State.LOGGING_IN:
            self._session.goto(State.READY)

    def _failed(self, reply: Reply, locked: bool) -> None:
        """Answer late; lock out past the limit.  The session stays busy meanwhile, so
        pipelined guesses wait their turn too."""
        config = self._context.config
        self._context.events.login_failed(
            self._session.id, self._client.peer_host, self._session.user or "-"
        )
        if locked:
            self._context.events.locked_out(
                self._session.id,
                self._client.counted_as,
                config.login_lockout,
                config.max_login_failures,
            )

        def answer() -> None:
            self.penalty_timer = None
            self._session.send(reply)
            if locked:
                self._session.close(421, LOCKED_OUT)
            else:
                self._session.done()

        if config.login_failure_delay > 0:
            self.penalty_timer = self._context.reactor.callLater(config.login_failure_delay, answer)
        else:
            answer()

    def end(self) -> None:
        """The session ends: give up a place in line, and count a password left at the
        backend as failed (we will never know how it went)."""
        cancel_call(self.penalty_timer)
        if self._waiter is not None:
            self._context.login_guard.cancel(self._client.counted_as, self._waiter)
            self._waiter = None
        if self._guess_in_flight:
            self._answered(failed=True)
