"""The one error type the sans-IO layer raises on malformed input."""


class FTPSyntaxError(ValueError):
    """Input from a peer does not follow the FTP grammar (RFC 959, 2428, 4217)."""


class LineTooLong(FTPSyntaxError):
    """A peer sent more bytes than a line may hold without ending the line."""


class ReplyTooLong(FTPSyntaxError):
    """A backend sent a reply with more lines or bytes than we are willing to keep."""
