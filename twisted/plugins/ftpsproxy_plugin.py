"""Registers ``twistd ftpsproxy``; kept cheap to import: the real work is in ftpsproxy.ops.tap."""

from twisted.application.service import ServiceMaker

ftpsproxy = ServiceMaker(
    "ftpsproxy",
    "ftpsproxy.ops.tap",
    "FTP/FTPS reverse proxy and TLS terminator",
    "ftpsproxy",
)
