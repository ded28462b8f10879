"""
Calls signed with the proxy's own AWS credentials (SigV4, for the service a dialect's
L{Signing} names: C{--bedrock-sign}), found by botocore's standard chain (environment,
profile, the VM's instance role). botocore is an optional extra (C{modeltrack[aws]}).

The caller's C{Authorization} and C{x-amz-*} headers are dropped, never forwarded: the
caller authenticated to the proxy (a key in keys.json), and the proxy's identity pays.
Signing happens last, over the bytes actually sent (after any body rewrite).
Credentials are resolved off the reactor thread (an instance role is an HTTP call
away) and refreshed there before they expire; a request is signed with the last ones.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from modeltrack.failures import log_failure
from modeltrack.providers.dialect import Signing

log = Logger()

#: How often the credentials are looked at again; botocore refreshes ones that are
#: about to expire (an instance role's last hours), so every few minutes is enough.
REFRESH_SECONDS = 300.0


class NoCredentials(RuntimeError):
    """
    botocore's chain found no AWS credentials.
    """


class SigV4Signer:
    """
    Signs each request of one provider, in one region, for C{signing.service}.
    """

    def __init__(self, signing: Signing, region: str, reactor: Any) -> None:
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        self._auth_type = SigV4Auth
        self._request_type = AWSRequest
        self._region = region
        self._service = signing.service
        self._credentials = botocore.session.get_session().get_credentials()
        if self._credentials is None:
            raise NoCredentials(f"--{signing.option}: botocore found no AWS credentials (environment, profile or instance role)")
        self._frozen = self._credentials.get_frozen_credentials()
        self._refresh = LoopingCall(self._refresh_now)
        self._refresh.clock = reactor

    def start(self) -> None:
        self._refresh.start(REFRESH_SECONDS, now=False)

    def stop(self) -> None:
        if self._refresh.running:
            self._refresh.stop()

    def _refresh_now(self) -> Deferred[None]:
        def got(frozen: Any) -> None:
            self._frozen = frozen

        def failed(failure: Any) -> None:
            log_failure(log, "Could not refresh the AWS credentials; signing with the last ones", failure)

        return deferToThread(self._credentials.get_frozen_credentials).addCallbacks(got, failed)

    def sign(self, method: bytes, url: bytes, headers: Headers, body: bytes | None) -> None:
        """
        Replace the caller's credentials in C{headers} (in place) by the proxy's
        signature for C{method url} with C{body}.
        """
        for name in [name for name, _ in headers.getAllRawHeaders()]:
            lowered = name.lower()
            if lowered == b"authorization" or lowered.startswith(b"x-amz-"):
                headers.removeHeader(name)
        signed = {"content-type": (headers.getRawHeaders(b"content-type") or [b"application/json"])[-1].decode("latin-1")}
        request = self._request_type(method.decode("ascii"), url.decode("ascii"), data=body or b"", headers=signed)
        self._auth_type(self._frozen, self._service, self._region).add_auth(request)
        for name, value in request.headers.items():
            if name.lower() != "content-type":
                headers.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1") if isinstance(value, str) else value])
