"""FEAT merging: the proxy's own features first, the backend's that survive the proxy after."""

from ftpsproxy.ftp.features import backend_features, merge_features, proxy_features
from ftpsproxy.ftp.replies import ReplyParser


def _backend_feat() -> list[str]:
    [reply] = ReplyParser().feed(
        b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPRT\r\n EPSV\r\n MODE Z\r\n"
        b" CCC\r\n SIZE\r\n MDTM\r\n REST STREAM\r\n MLST type*;size*;\r\n UTF8\r\n211 End\r\n"
    )
    return backend_features(reply)


def test_backend_features_the_proxy_would_break_are_hidden() -> None:
    reply = merge_features(proxy_features(tls=False), _backend_feat())
    text = reply.encode().decode()
    for hidden in ("AUTH", "PBSZ", "PROT", "EPRT", "MODE Z", "CCC"):
        assert hidden not in text
    for kept in ("SIZE", "MDTM", "REST STREAM", "MLST type*;size*;", "EPSV", "UTF8"):
        assert f" {kept}\r\n" in text
    assert text.count(" EPSV\r\n") == 1 and text.count(" UTF8\r\n") == 1


def test_tls_features_come_from_the_proxy() -> None:
    text = merge_features(proxy_features(tls=True), []).encode().decode()
    assert " AUTH TLS\r\n" in text and " PBSZ\r\n" in text and " PROT\r\n" in text
    assert text.startswith("211-") and text.endswith("211 End\r\n")


def test_backend_without_feat_gives_no_features() -> None:
    [reply] = ReplyParser().feed(b"500 FEAT not understood\r\n")
    assert backend_features(reply) == []
