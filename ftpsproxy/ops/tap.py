"""``twistd ftpsproxy``: command-line options and service creation."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from ftpsproxy import __version__
from ftpsproxy.settings.config import Config, build_config, load_toml
from ftpsproxy.settings.errors import ConfigError, did_you_mean
from ftpsproxy.settings.options import OPTIONS, Option
from ftpsproxy.settings.port_overlaps import ephemeral_overlap_warning
from ftpsproxy.settings.values import PortRange

log = Logger()

#: getopt's words for an option it does not know, needing a value, or given one it takes none.
_UNKNOWN = re.compile(r"^option (?P<option>-\S+) not recognized$")
_NEEDS_VALUE = re.compile(r"^option (?P<option>-\S+) requires argument$")
_TAKES_NO_VALUE = re.compile(r"^option (?P<option>-\S+) must not have an argument$")


def usage_error_line(message: str) -> str:
    """A usage error in the operator's words: the option first, the closest known option
    suggested for a misspelt one (``--idle-timout: unknown option (did you mean
    '--idle-timeout'?)``); other messages (already naming their option) unchanged."""
    if match := _UNKNOWN.match(message):
        given = match["option"]
        names = [f"--{option.name}" for option in OPTIONS] + ["--help", "--version"]
        return f"{given}: unknown option{did_you_mean(given, names)}"
    if match := _NEEDS_VALUE.match(message):
        return f"{match['option']}: needs a value"
    if match := _TAKES_NO_VALUE.match(message):
        return f"{match['option']}: is a flag and takes no value"
    return message


class Options(usage.Options):
    """The command line, derived from the option table (``ftpsproxy.settings.options``).

    Flags and options with a value become ``optFlags`` and ``optParameters``; each
    repeatable option gets an ``opt_`` handler (added below the class) that collects
    its values in a list.
    """

    synopsis = "[options]"
    longdesc = (
        "FTP/FTPS reverse proxy and TLS terminator. Accepts plain FTP, explicit FTPS "
        "(AUTH TLS) and implicit FTPS, relays sessions to one backend FTP server, and "
        "rewrites passive-mode data connections onto a fixed port range. Every option "
        "can also be set in a TOML file (--config), whose keys are the long option "
        "names; command-line options win."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        [option.name, option.short, option.help_text] for option in OPTIONS if option.kind.flag
    ]
    # No default here: an option not given leaves the file's value, or the table's default.
    optParameters: ClassVar[list[list[str | None]]] = [
        [option.name, option.short, None, option.help_text]
        for option in OPTIONS
        if not option.kind.flag and not option.kind.repeated and option.kind.command_line
    ]

    def __init__(self) -> None:
        super().__init__()
        for option in OPTIONS:
            if option.kind.repeated:
                self[option.name] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, turning any usage error into one line on stderr and a non-zero exit.

        twistd would print its whole ``--help`` before the one line that matters.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise SystemExit(f"ftpsproxy: {usage_error_line(str(error))}") from None

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"{args[0]!r}: unexpected argument (options start with --)")

    def opt_version(self) -> None:
        """Print the ftpsproxy version and exit."""
        print(f"ftpsproxy {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        cli: dict[str, Any] = {}
        for option in OPTIONS:
            if option.in_file and option.kind.command_line:
                value = self[option.name]
                cli[option.name] = (True if value else None) if option.kind.flag else value
        self._cli = cli
        try:
            self.config = self.read_config()
        except ConfigError as error:
            raise usage.UsageError(str(error)) from error

    def read_config(self) -> Config:
        """The configuration file (read again on every call) merged with the command line."""
        file_values = load_toml(Path(self["config"])) if self["config"] else {}
        return build_config(file_values, self._cli)


def _collector(option: Option) -> Callable[[Options, str], None]:
    """The ``opt_`` handler of a repeatable option: each value is added to its list."""

    def collect(self: Options, value: str) -> None:
        self[option.name].append(value)

    collect.__doc__ = option.help_text
    return collect


for _option in OPTIONS:
    if _option.kind.repeated:
        setattr(Options, f"opt_{_option.field}", _collector(_option))


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from ftpsproxy.ops.service import ProxyService
    from ftpsproxy.ops.supervisor import WorkerSupervisor

    config = options.config
    _warn_if_ephemeral(config.passive_ports)
    try:
        if config.workers > 1:
            return WorkerSupervisor(
                config,
                reactor,
                options._cli,
                config_file=options["config"],
                reread_config=options.read_config,
            )
        return ProxyService(config, reactor, reread_config=options.read_config)
    except ConfigError as error:
        raise SystemExit(f"ftpsproxy: {error}") from error


def _warn_if_ephemeral(passive_ports: PortRange) -> None:
    """One warning at start-up if outgoing connections may take passive ports (Linux)."""
    try:
        port_range = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    except OSError:
        return  # not Linux, or no /proc: nothing to compare with
    try:
        reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text()
    except OSError:
        reserved = ""
    warning = ephemeral_overlap_warning(passive_ports, port_range, reserved)
    if warning is not None:
        log.warn("{warning}", warning=warning)
