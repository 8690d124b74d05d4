"""The client authenticates the gateway before it sends the token (issue 13): the connection
file pins the gateway's own TLS certificate, so whatever else answers on the gateway's port
(another user who took it after the gateway died, a plain listener, a TLS server with another
certificate) fails the handshake: the call says so, and the token never reaches it.

Real sockets and real TLS on 127.0.0.1; certificates made with openssl as the job makes them.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.errors import GatewayImpostorError
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.jupyter.rest import GatewayClient

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the certificates"),
]

TOKEN = "the-token-must-not-leak-0123456789"


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    argv += ["-subj", "/CN=jlabgw gateway", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class Impostor:
    """A listener on 127.0.0.1 that records every byte it is sent; with ``tls``, it speaks TLS
    with a certificate of its own (and answers 200 to anything)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        for _ in range(300):  # bounded: ~60 s at most
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    if self._tls is None:
                        self._answer(conn)
                    else:
                        with self._tls.wrap_socket(conn, server_side=True) as tls:
                            self._answer(tls)
                except (OSError, ssl.SSLError):
                    continue

    def _answer(self, conn: socket.socket) -> None:
        for _ in range(100):
            data = conn.recv(65536)
            if not data:
                return
            self.received += data
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def pinned(tmp_path: Path) -> str:
    """The certificate the (real) gateway's job made: what the connection file carries."""
    cert, _ = certificate(tmp_path, "gateway")
    return cert.read_text()


@pytest.fixture(params=["plain", "other-cert"])
def impostor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Impostor]:
    tls = certificate(tmp_path, "impostor") if request.param == "other-cert" else None
    server = Impostor(tls)
    yield server
    server.close()


async def test_rest_calls_refuse_an_impostor_before_the_token(
    impostor: Impostor, pinned: str
) -> None:
    endpoint = GatewayEndpoint(f"https://127.0.0.1:{impostor.port}", TOKEN, cert=pinned)
    client = GatewayClient(endpoint, timeout=10)
    try:
        with pytest.raises(GatewayImpostorError, match="not the gateway jlabgw started"):
            await client.kernelspecs()
    finally:
        await client.aclose()
    impostor.close()  # all it received is in: a token sent late would be seen
    assert TOKEN.encode() not in impostor.received
    assert b"Authorization" not in impostor.received


async def test_the_kernel_websocket_refuses_an_impostor_before_the_token(
    impostor: Impostor, pinned: str
) -> None:
    endpoint = GatewayEndpoint(f"https://127.0.0.1:{impostor.port}", TOKEN, cert=pinned)
    conn = KernelConnection(endpoint, "00000000-0000-0000-0000-000000000000")
    try:
        with pytest.raises(GatewayImpostorError, match="nothing was sent to it"):
            await conn.connect()
    finally:
        await conn.close()
    impostor.close()
    assert TOKEN.encode() not in impostor.received


def test_without_a_pinned_certificate_the_token_would_go(tmp_path: Path) -> None:
    """The control: plain HTTP (no certificate pinned) sends the token to whoever answers,
    which is what the pinning prevents."""
    import httpx

    impostor = Impostor()
    try:
        httpx.get(
            f"http://127.0.0.1:{impostor.port}/api/kernelspecs",
            headers={"Authorization": f"token {TOKEN}"},
            timeout=5,
        )
    finally:
        impostor.close()
    assert TOKEN.encode() in impostor.received


def dated_certificate(directory: Path, days_from_now: int) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 valid for one day starting ``days_from_now`` (negative: in
    the past), made with cryptography (paramiko's dependency) to set the dates."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jlabgw gateway")])
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days_from_now)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = (
        directory / f"dated{days_from_now}.pem",
        directory / f"k{days_from_now}.pem",
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("days", [1, -400], ids=["node-clock-ahead", "expired"])
async def test_the_pin_is_the_identity_not_the_dates(tmp_path: Path, days: int) -> None:
    """A laptop whose clock is behind the node's (the certificate "not yet valid"), or a job
    that outlives its certificate: still our gateway, so the handshake succeeds."""
    import httpx

    cert, key = dated_certificate(tmp_path, days)
    server = Impostor((cert, key))  # here: the real gateway's certificate, pinned
    try:
        endpoint = GatewayEndpoint(f"https://127.0.0.1:{server.port}", TOKEN, cert=cert.read_text())
        async with httpx.AsyncClient(verify=endpoint.ssl_context, timeout=10) as http:
            response = await http.get(f"{endpoint.url}/api/kernelspecs")
        assert response.status_code == 200
    finally:
        server.close()


async def test_a_port_that_closes_is_an_outage_not_an_impostor(pinned: str) -> None:
    """The gateway restarting: the tunnel accepts and closes at once. That is a lost
    connection (retried), not a security alarm."""
    from jlabgw.errors import ConnectionLostError

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def close_each() -> None:
        sock.settimeout(0.2)
        for _ in range(100):  # bounded
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=close_each, daemon=True)
    thread.start()
    endpoint = GatewayEndpoint(f"https://127.0.0.1:{port}", TOKEN, cert=pinned)
    client = GatewayClient(endpoint, timeout=10)
    try:
        with pytest.raises(ConnectionLostError):
            await client.kernelspecs()
    finally:
        await client.aclose()
        sock.close()
        thread.join(timeout=5)
