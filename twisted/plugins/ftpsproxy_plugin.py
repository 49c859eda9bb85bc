"""Registers ``twistd ftpsproxy``; kept cheap to import: the real work is in ftpsproxy.tap."""

from twisted.application.service import ServiceMaker

ftpsproxy = ServiceMaker(
    "ftpsproxy",
    "ftpsproxy.tap",
    "FTP/FTPS reverse proxy and TLS terminator",
    "ftpsproxy",
)
