"""ftpsproxy: an FTP/FTPS reverse proxy and TLS terminator built on Twisted."""

__version__ = "0.1.0"
