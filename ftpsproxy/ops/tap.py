"""``twistd ftpsproxy``: command-line options and service creation."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from ftpsproxy import __version__
from ftpsproxy.settings.config import Config, build_config, load_toml
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.options import OPTIONS, Option


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
