"""
Verified TLS to the providers: an in-process TLS upstream on 127.0.0.1 with certificates
made in the test. A certificate from the configured CA for the right hostname passes; one
for another hostname, or from a CA nobody trusts, is refused with 502 and an event that
says upstream_tls_error.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.web.server import Site

from tests.conftest import start_proxy
from tests.fakes import FakeUpstream
from tests.test_sdk import in_thread

NOW = datetime.datetime.now(datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(common: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server(ca_key: Any, ca_cert: x509.Certificate, hostname: str, expired: bool = False) -> bytes:
    """
    A server certificate for C{hostname} signed by the CA, with its key, as PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=60))
        .not_valid_after(NOW - datetime.timedelta(days=1) if expired else NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_upstream(reactor: Any, tmp_path: Path) -> Any:
    """
    Four TLS upstreams: trusted for localhost, trusted but for another hostname, signed
    by a CA the proxy does not trust, and trusted but expired. Yields (ports, CA bundle path).
    """
    ca_key, ca_cert = make_ca("modeltrack test CA")
    rogue_key, rogue_cert = make_ca("untrusted CA")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ports = {}
    listening = []
    for name, pem in (
        ("trusted", make_server(ca_key, ca_cert, "localhost")),
        ("wrong-hostname", make_server(ca_key, ca_cert, "api.example.com")),
        ("untrusted", make_server(rogue_key, rogue_cert, "localhost")),
        ("expired", make_server(ca_key, ca_cert, "localhost", expired=True)),
    ):
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        port = reactor.listenSSL(0, Site(FakeUpstream()), options, interface="127.0.0.1")
        ports[name] = port.getHost().port
        listening.append(port)
    yield ports, bundle
    for port in listening:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_only_a_verified_upstream_is_used(reactor: Any, tmp_path: Path, tls_upstream: Any) -> None:
    ports, bundle = tls_upstream
    outcomes = {}
    for name, port in ports.items():
        proxy = start_proxy(reactor, tmp_path / name, f"https://localhost:{port}", ca_bundle=bundle)
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-tls-test", max_retries=0)
        try:
            try:
                completion = await in_thread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
                assert completion.choices[0].message.content == "Hello world"
                # The idle connection kept sends through writethrough under its TLS layer.
                [kept] = [c for upstream in proxy.service.resource.upstreams.values() for c in upstream.agent.connections._idle]
                assert type(kept.transport.transport).__name__ == "_WriteThroughClient"
            except openai.APIStatusError as e:
                assert e.status_code == 502
                assert "could not be verified" in e.body["message"]
            await proxy.flushed()
            [event] = proxy.events()
            outcomes[name] = event["outcome"]
        finally:
            await proxy.service.stopService()
    assert outcomes == {
        "trusted": "ok",
        "wrong-hostname": "upstream_tls_error",
        "untrusted": "upstream_tls_error",
        "expired": "upstream_tls_error",
    }
