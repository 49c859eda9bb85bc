"""A session's data connections: PASV/EPSV/PORT/EPRT carried out, and each transfer run.

The decisions are :mod:`ftpsproxy.data.setup`'s (what the client asks for, how the
backend's side is prepared) and :mod:`ftpsproxy.control.transfer`'s (which final reply
the client hears); this part does what they say: listens, connects, sends the backend
its lines, and reports each finished transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory

from ftpsproxy.control.backend import BackendLink
from ftpsproxy.control.context import ProxyContext
from ftpsproxy.control.links import ClientLink, SessionCore
from ftpsproxy.control.proxy_rules import announced_host
from ftpsproxy.control.routing import Route
from ftpsproxy.control.states import State
from ftpsproxy.control.transfer import Result, Step, Transfer
from ftpsproxy.data.passive import BackendDataListener, PassiveListener
from ftpsproxy.data.relay import DataChannel
from ftpsproxy.data.setup import (
    Accepted,
    BackendDataPlan,
    BackendStep,
    Connect,
    EpsvAll,
    Failed,
    Listen,
    Refuse,
    Send,
    UsePort,
    client_request,
)
from ftpsproxy.ftp.addresses import format_epsv_reply, format_pasv_reply
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.policy import TRANSFER_DIRECTIONS, Direction
from ftpsproxy.ftp.replies import Reply, make_reply
from ftpsproxy.net.factories import PrebuiltFactory
from ftpsproxy.observe.session_events import TransferDone
from ftpsproxy.observe.xferlog import TransferRecord
from ftpsproxy.settings.values import BackendDataMode
from ftpsproxy.tls.bulk import BulkTLSFactory
from ftpsproxy.tls.server import ServerTLS


class DataHost(SessionCore, Protocol):
    """What the data part needs of the session beyond :class:`SessionCore`."""

    state: State
    protect_data: bool
    binary: bool
    user: str | None
    server_tls: ServerTLS | None
    backend: BackendLink | None
    route: Route | None

    def goto(self, state: State) -> None: ...


class DataConnections:
    """The data-connection part of one session: at most one prepared channel and one
    running transfer."""

    def __init__(self, session: DataHost, context: ProxyContext, client: ClientLink) -> None:
        self._session = session
        self._context = context
        self._config = context.config
        self._client = client
        self._plan = BackendDataPlan()
        self.epsv_all = False
        self.prepared: DataChannel | None = None  # by PASV/EPSV/PORT/EPRT, not yet used
        self.transfer: Transfer | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    # -- PASV, EPSV, PORT, EPRT -------------------------------------------------------------

    def prepare(self, command: Command) -> None:
        session = self._session
        decision = client_request(
            command,
            epsv_all=self.epsv_all,
            client_host=self._client.peer_host,
            local_host=self._client.local_host,
        )
        if isinstance(decision, EpsvAll):
            self.epsv_all = True
            session.reply(200, "EPSV ALL accepted.")
        elif isinstance(decision, Refuse):
            if decision.bounce is not None:
                self._context.events.bounce_refused(
                    session.id, f"{command.verb} to {decision.bounce}", self._client.peer_host
                )
            session.reply(decision.code, decision.text)
        elif isinstance(decision, Listen):
            self._listen(decision.extended)
        else:
            self._connect_later(command.verb, decision)

    def _listen(self, extended: bool) -> None:
        channel = self._new_channel()
        listener = PassiveListener(
            self._context.reactor,
            self._context.allocator,
            self._context.metrics,
            self._client.peer_host,
            lambda: channel.client,
            self._session.server_tls if self._session.protect_data else None,
            headers=self._context.data_headers if self._data_headers_expected() else None,
            owner=self._client.counted_as,
        )
        if not listener.start(self._client.local_host):
            channel.abort()
            self._session.reply(425, "No passive port available; try again later.")
            return
        channel.on_close(listener.close)
        self.prepared = channel
        port = listener.port
        assert port is not None

        def answer() -> None:
            if extended:
                self._session.send(Reply(229, (b"229 " + format_epsv_reply(port),)))
            else:
                host = announced_host(
                    self._context.config, self._client.local_host, self._client.proxied_destination
                )
                self._session.send(Reply(227, (b"227 " + format_pasv_reply(host, port),)))

        self._prepare_backend(channel, answer)

    def _connect_later(self, verb: str, target: Connect) -> None:
        channel = self._new_channel()
        channel.active_target = (target.host, target.port)
        self.prepared = channel
        self._prepare_backend(
            channel, lambda: self._session.reply(200, f"{verb} command successful.")
        )

    def _data_headers_expected(self) -> bool:
        """With ``--proxy-protocol-data``, the sessions that came through a balancer (a
        PROXY header on their control connection) get their data connections through it
        too; a client straight on an unproxied listener connects straight."""
        return self._config.proxy_protocol_data and self._client.proxied_destination is not None

    def _new_channel(self) -> DataChannel:
        """A data channel for the next transfer, replacing any prepared one."""
        self.drop_prepared()
        backend = self._session.backend
        return DataChannel(
            self._context.reactor,
            self._context.metrics,
            self._channel_finished,
            client_tls=self._session.protect_data,
            backend_tls=backend is not None and backend.tls is not None and backend.protect_data,
            connect_timeout=self._config.passive_timeout,
            handshake_timeout=self._config.tls_handshake_timeout,
            require_session_reuse=self._config.require_session_reuse,
            stall_timeout=self._config.data_stall_timeout,
            close_timeout=self._config.close_timeout,
            splice=self._context.splice,
        )

    def drop_prepared(self) -> None:
        if self.prepared is not None:
            channel, self.prepared = self.prepared, None
            channel.abort()

    # -- the backend's side -----------------------------------------------------------------

    def _prepare_backend(self, channel: DataChannel, answer: Callable[[], None]) -> None:
        """Prepare the backend side of *channel*, then call *answer* to reply to the client.

        Passive (default): ask the backend for a port (EPSV, falling back to PASV).  Active
        (``backend-data-mode = active``): listen where the backend control connection
        comes from, and tell the backend with EPRT/PORT.
        """
        backend = self._session.backend
        assert backend is not None
        if self._config.backend_data_mode == BackendDataMode.ACTIVE:
            creator = None
            if backend.tls is not None and backend.protect_data:
                creator = backend.tls.for_data()
            listener = BackendDataListener(
                self._context.reactor, backend.peer_host, lambda: channel.backend, creator
            )
            try:
                host, port = listener.start(backend.local_host)
            except CannotListenError as error:
                self._backend_failed(channel, Failed(f"cannot listen for the backend: {error}"))
                return
            channel.on_close(listener.close)
            first: BackendStep = self._plan.active(host, port)
        else:
            first = self._plan.passive()
        self._carry_out(channel, first, answer)

    def _carry_out(
        self, channel: DataChannel, step: BackendStep, answer: Callable[[], None]
    ) -> None:
        if isinstance(step, Send):

            def on_reply(reply: Reply) -> None:
                if self._session.state is State.CLOSED:
                    self._session.done()
                elif channel.finished:
                    self._backend_failed(channel, Failed("data channel ended"))
                else:
                    self._carry_out(channel, self._plan.on_reply(reply), answer)

            self._session.request(step.line, on_reply)
        elif isinstance(step, Failed):
            self._backend_failed(channel, step)
        else:
            if isinstance(step, UsePort):
                channel.backend_port = step.port
            assert isinstance(step, UsePort | Accepted)
            answer()
            self._session.done()

    def _backend_failed(self, channel: DataChannel, failure: Failed) -> None:
        self._context.events.backend_data_failed(
            self._session.id, failure.why, privileged_port=failure.privileged_port
        )
        channel.abort()
        if self.prepared is channel:
            self.prepared = None
        self._session.reply(425, "Can't open data connection: the backend refused it.")
        self._session.done()

    # -- transfers --------------------------------------------------------------------------

    def start(self, command: Command) -> None:
        session = self._session
        if self._config.require_tls and not session.protect_data:
            session.reply(521, "Data connections must be protected: use PROT P.")
            return
        channel = self.prepared
        if channel is not None and channel.refusal is not None:
            self.prepared = None
            session.reply(*channel.refusal)
            return
        if channel is None or channel.finished:
            session.reply(425, "Use PASV or EPSV first.")
            return
        self.prepared = None
        transfer = self.transfer = Transfer(channel)
        session.goto(State.TRANSFERRING)
        channel.begin(TRANSFER_DIRECTIONS[command.verb], self._context.reactor.seconds())
        channel.filename = command.text() or "-"
        backend, route = session.backend, session.route
        if channel.backend_port is not None and backend is not None and route is not None:
            # Connect only now, as a client would after sending the command: a TLS
            # ClientHello waiting in a backend's socket from PASV time until the transfer
            # command can find the server's ticket state changed in between.
            connecting = route.connector.data(backend, channel.backend_port, channel.backend)
            connecting.addErrback(channel.backend_connect_failed)
        if channel.active_target is not None:
            self._connect_client(channel)

        def on_reply(reply: Reply) -> None:
            if self.transfer is not transfer:
                session.send(reply)  # the transfer was aborted; pass late replies on as they are
                return
            step = transfer.backend_reply(reply)
            if step is Step.PASS_ON:
                session.send(reply)
            elif step is Step.FINISH and self.transfer is transfer:
                self._finish()

        session.request(command.encode(), on_reply)

    def _connect_client(self, channel: DataChannel) -> None:
        """Active mode: connect to the client; the proxy stays the TLS server (RFC 4217 §7)."""
        assert channel.active_target is not None
        host, port = channel.active_target
        factory: IProtocolFactory = PrebuiltFactory(channel.client)
        if self._session.protect_data and self._session.server_tls is not None:
            factory = BulkTLSFactory(self._session.server_tls, False, factory)
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_type(
            self._context.reactor,
            host,
            port,
            timeout=self._config.passive_timeout,
            bindAddress=(self._client.local_host, 0),
        )
        endpoint.connect(factory).addErrback(channel.client_connect_failed)

    def _channel_finished(self, channel: DataChannel) -> None:
        if self.prepared is channel and channel.refusal is None:
            self.prepared = None  # a refusal stays, to answer the transfer command
        transfer = self.transfer
        if transfer is not None and transfer.channel is channel:
            self._account_bytes(channel)
            if transfer.channel_ended() is Step.FINISH:
                self._finish()

    def _finish(self) -> None:
        """Pass the backend's final reply on, now that the client's data connection is closed."""
        transfer = self.transfer
        assert transfer is not None and transfer.held is not None
        self.transfer = None
        self._report(transfer, transfer.result())
        reply = transfer.client_reply()
        self._session.goto(State.READY)
        self._session.send(reply)
        self._session.done()

    def status(self) -> None:
        """STAT during a transfer: answered here (relaying it would put a reply between the
        transfer's 1xx and its final reply that could not be told apart from the final one)."""
        assert self.transfer is not None
        self._context.events.command("STAT")
        self._session.send(self.transfer.status())

    def abort(self) -> None:
        """ABOR while a transfer runs: close its data connections and let the backend answer."""
        assert self.transfer is not None
        self._context.events.command("ABOR")
        self.transfer.aborting = True
        self.transfer.channel.abort_for_abor()
        if self._session.backend is not None:
            self._session.backend.request(b"ABOR\r\n", self._session.send)

    def end(self) -> None:
        """The session ends: close every data connection; a running transfer is counted."""
        transfer, self.transfer = self.transfer, None
        self.drop_prepared()
        if transfer is not None:
            transfer.channel.abort()
            # Cut off by the session's end: counted, with the bytes relayed so far.
            self._account_bytes(transfer.channel)
            self._report(transfer, transfer.result(make_reply(426, "Session ended.")))

    # -- accounting -------------------------------------------------------------------------

    def _account_bytes(self, channel: DataChannel) -> None:
        if channel.accounted:
            return
        channel.accounted = True
        if channel.direction is not None and channel.direction.to_client:
            self.bytes_down += channel.bytes
        else:
            self.bytes_up += channel.bytes

    def _report(self, transfer: Transfer, result: Result) -> None:
        channel = transfer.channel
        now = self._context.reactor.seconds()
        seconds = max(0.0, now - channel.started_at)
        direction = transfer.direction
        record = TransferRecord(
            finished=now,
            seconds=seconds,
            client=self._client.peer_host,
            size=channel.bytes,
            filename=channel.filename,
            binary=self._session.binary,
            upload=direction is Direction.UPLOAD,
            user=self._session.user or "-",
            complete=result is Result.COMPLETE,
        )
        self._context.events.transfer_done(TransferDone(direction.value, result.value, record))
