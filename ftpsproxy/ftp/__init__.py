"""The FTP grammar without I/O: command lines, replies, address codecs, FEAT and policy.

Everything here takes bytes or values and returns bytes or values.  Hostile
input raises only :class:`ftpsproxy.ftp.errors.FTPSyntaxError` (or a subclass).
"""
