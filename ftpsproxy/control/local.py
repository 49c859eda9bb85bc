"""The commands the proxy answers itself: ``AUTH``, ``PBSZ``, ``PROT``, ``FEAT``, ``OPTS``,
``SYST``, ``NOOP``, ``QUIT`` (and, before login, ``HELP`` and the refusals).

TLS is the proxy's own on both sides, so the security commands never reach the backend;
``FEAT`` before login lists only the proxy's features, since the backend's would name the
server software behind the proxy.
"""

from __future__ import annotations

from typing import Protocol

from ftpsproxy.control.links import ClientLink, SessionCore
from ftpsproxy.control.states import State
from ftpsproxy.ftp import features
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.policy import PRE_LOGIN, REFUSALS
from ftpsproxy.ftp.replies import Reply
from ftpsproxy.settings.config import Config

ANSWERED_BEFORE_LOGIN = frozenset({"AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "NOOP", "SYST", "QUIT"})


class LocalHost(SessionCore, Protocol):
    """What the local answers need of the session beyond :class:`SessionCore`."""

    state: State
    protect_data: bool
    has_tls: bool  # the proxy has a certificate: AUTH can succeed

    @property
    def backend_ready(self) -> bool:
        """Logged in, with a backend to ask."""

    def start_tls(self) -> None:
        """Upgrade the control connection, dropping what was pipelined behind AUTH."""

    def quit(self) -> None:
        """QUIT: relayed to the backend if there is one, then the session ends."""


class LocalCommands:
    """The locally answered commands of one session."""

    def __init__(self, session: LocalHost, client: ClientLink, config: Config) -> None:
        self._session = session
        self._client = client
        self._config = config

    def before_login(self, command: Command) -> bool:
        """Answer a command that needs no login; False when it is not one of those."""
        verb = command.verb
        if verb in ANSWERED_BEFORE_LOGIN:
            self.answer(command)
        elif verb in REFUSALS:
            self._session.reply(*REFUSALS[verb])
        elif verb == "HELP":
            self._session.reply(214, "Log in; then the server's own HELP is relayed.")
        elif verb in PRE_LOGIN:
            self._session.reply(502, f"{verb} not available before login.")
        else:
            return False
        return True

    def answer(self, command: Command) -> None:
        session = self._session
        verb = command.verb
        argument = command.argument.strip().upper()
        ready = session.backend_ready
        if verb == "AUTH":
            self._auth(argument)
        elif verb == "PBSZ":
            if not self._client.tls_active:
                session.reply(503, "PBSZ requires an active TLS session (AUTH TLS).")
            elif not argument.isdigit():
                session.reply(501, "PBSZ needs a number.")
            else:
                session.reply(200, "PBSZ=0")
        elif verb == "PROT":
            self._prot(argument)
        elif verb == "FEAT" and ready:
            session.request(b"FEAT\r\n", self._feat_reply)
        elif verb == "FEAT":
            session.send(features.merge_features(self._own_features(), []))
        elif verb == "OPTS" and argument.startswith(b"UTF8"):
            session.reply(200, "UTF8 mode is always on.")
        elif verb == "OPTS" and ready:
            session.relay(command)
        elif verb == "OPTS":
            session.reply(501, "Option not understood before login.")
        elif verb == "SYST" and not ready:
            session.reply(215, "UNIX Type: L8")
        elif verb == "NOOP" and not ready:
            session.reply(200, "NOOP ok.")
        elif verb == "QUIT":
            session.quit()
        elif verb in ("USER", "PASS"):
            session.reply(503, "Already logged in.")
        else:
            session.relay(command)

    def _auth(self, mechanism: bytes) -> None:
        session = self._session
        if not session.has_tls:
            session.reply(502, "TLS is not configured on this server.")
        elif self._client.tls_active:
            session.reply(503, "TLS is already active.")
        elif session.state is not State.AWAITING_USER:
            session.reply(503, "AUTH must come before USER.")
        elif mechanism not in (b"TLS", b"TLS-C", b"SSL", b"TLS-P"):
            session.reply(504, "Only AUTH TLS and AUTH SSL are supported.")
        else:
            session.reply(234, f"AUTH {mechanism.decode()} successful.")
            session.start_tls()

    def _prot(self, level: bytes) -> None:
        session = self._session
        if not self._client.tls_active:
            session.reply(503, "PROT requires an active TLS session (AUTH TLS).")
        elif level == b"P":
            session.protect_data = True
            session.reply(200, "Protection level set to Private.")
        elif level == b"C":
            if self._config.require_tls:
                session.reply(534, "Clear data connections are refused by policy; use PROT P.")
            else:
                session.protect_data = False
                session.reply(200, "Protection level set to Clear.")
        elif level in (b"S", b"E"):
            session.reply(536, "Only PROT P and PROT C are supported.")
        else:
            session.reply(504, "Unknown protection level.")

    def _own_features(self) -> list[str]:
        return features.proxy_features(tls=self._session.has_tls, active_mode=True)

    def _feat_reply(self, reply: Reply) -> None:
        if reply.is_preliminary:
            return
        backend = features.backend_features(reply)
        self._session.send(features.merge_features(self._own_features(), backend))
        self._session.done()
