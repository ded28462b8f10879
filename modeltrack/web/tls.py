"""
TLS on the listening side: one certificate and key (plus chain) for every listener,
TLS 1.2 at least, Twisted's modern cipher list, and a context rebuilt from the files on
SIGHUP, so a renewed certificate is served to new connections while open ones go on.
"""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    def __init__(self, certificate: Path, key: Path) -> None:
        self._certificate = certificate
        self._key = key
        self._context = self._build()

    def _build(self) -> SSL.Context:
        pem = self._certificate.read_bytes()
        end = b"-----END CERTIFICATE-----"
        blocks = [b.strip() + b"\n" + end + b"\n" for b in pem.split(end)[:-1]]
        if not blocks:
            raise ValueError(f"{self._certificate}: no PEM certificate in it")
        certificates = [Certificate.loadPEM(block) for block in blocks]
        key = KeyPair.load(self._key.read_bytes(), 1)  # 1: FILETYPE_PEM
        options = CertificateOptions(
            privateKey=key.original,
            certificate=certificates[0].original,
            extraCertChain=[c.original for c in certificates[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        # Built once per load, not per connection.
        return options.getContext()

    def reload(self) -> None:
        """
        Re-read the certificate and key; a pair that does not load keeps the old one.
        """
        try:
            self._context = self._build()
        except Exception as e:
            log.error("TLS certificate not reloaded, the old one stays: {error}", error=str(e))
            return
        log.info("TLS certificate reloaded from {path}", path=str(self._certificate))

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)
