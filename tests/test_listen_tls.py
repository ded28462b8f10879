"""
TLS on the listening side: the official SDK over TLS with a CA made in the test, and a
certificate renewed on disk served to new connections after a SIGHUP, without dropping
the connection already open.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from cryptography import x509
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.conftest import start_proxy
from tests.test_upstream_tls import make_ca, make_server


def write_pair(pem: bytes, directory: Path) -> tuple[Path, Path]:
    key, _, cert = pem.partition(b"-----END PRIVATE KEY-----\n")
    (directory / "key.pem").write_bytes(key + b"-----END PRIVATE KEY-----\n")
    (directory / "cert.pem").write_bytes(cert)
    return directory / "cert.pem", directory / "key.pem"


def served_serial(port: int, context: ssl.SSLContext) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der).serial_number, tls.version()


def ca_and_server(directory: Path, ca_name: str) -> tuple[Path, Path, Path, Any, Any]:
    """
    A CA made for a test (its certificate in C{ca.pem}) and a certificate and key for
    C{localhost} signed by it: (bundle, cert, key, CA key, CA certificate).
    """
    from cryptography.hazmat.primitives import serialization

    ca_key, ca_cert = make_ca(ca_name)
    bundle = directory / "ca.pem"
    bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert, key = write_pair(make_server(ca_key, ca_cert, "localhost"), directory)
    return bundle, cert, key, ca_key, ca_cert


@pytest_twisted.ensureDeferred
async def test_tls_listener_and_reload(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    bundle, cert, key, ca_key, ca_cert = ca_and_server(tmp_path, "listen CA")
    proxy = start_proxy(
        reactor, tmp_path / "data", upstream.url, tls_cert=cert, tls_key=key,
        listen_tls=("tcp:0:interface=127.0.0.1",),
    )
    plain, tls_port = proxy.service.ports
    port = tls_port.getHost().port
    # The plain listener beside it still speaks plain HTTP.
    import urllib.request

    health = await deferToThread(urllib.request.urlopen, f"http://127.0.0.1:{plain.getHost().port}/healthz")
    assert health.status == 200
    context = ssl.create_default_context(cafile=str(bundle))
    try:
        client = openai.OpenAI(
            base_url=f"https://localhost:{port}/v1",
            api_key="sk-x",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=context),
        )
        completion = await deferToThread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "Hello world"
        first, version = await deferToThread(served_serial, port, context)
        assert version in ("TLSv1.2", "TLSv1.3")
        write_pair(make_server(ca_key, ca_cert, "localhost"), tmp_path)  # renewed on disk
        os.kill(os.getpid(), signal.SIGHUP)
        await deferLater(reactor, 0, lambda: None)
        await deferLater(reactor, 0, lambda: None)
        second, _ = await deferToThread(served_serial, port, context)
        assert second != first
        # Calls keep working across the reload.
        again = await deferToThread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert again.usage.total_tokens == 1500
    finally:
        await proxy.service.stopService()
