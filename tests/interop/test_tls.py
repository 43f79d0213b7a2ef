"""wss:// and https:// with a self-signed certificate: the relay's TLS listener and hyco-ws/hyco-https."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from hyrelay.protocol.sas import build_token
from hyrelay.server.app import RelayServer

from ..conftest import RelayHandle, make_config
from .nodeproc import NodeProc


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
async def tls_relay(tmp_path: Path, certificate):
    cert, key = certificate
    server = RelayServer(make_config(tmp_path / "data", tls_cert=cert, tls_key=key))
    await server.start()
    try:
        yield RelayHandle(server)
    finally:
        await server.stop()


async def test_hyco_ws_over_wss_and_hyco_https_over_https(tls_relay, certificate):
    relay = tls_relay
    assert relay.server.connection_string().startswith("Endpoint=sb://")
    relay.create_hc("securews")
    relay.create_hc("secureweb")
    rule = relay.server.root_rule
    wss = f"wss://localhost:{relay.port}"
    env = {"NODE_EXTRA_CA_CERTS": str(certificate[0])}
    listener = await NodeProc.start("ws-listener.js", wss, "securews", rule.name, rule.primary_key, env=env)
    await listener.wait_event("listening")
    sender = await NodeProc.start("ws-sender.js", wss, "securews", rule.name, rule.primary_key, "--count=3", env=env)
    assert await sender.wait_exit() == 0, sender.events
    assert all(e["match"] for e in sender.all("echo"))
    assert (await listener.wait_event("connection"))["url"].startswith("wss://localhost:")
    await listener.stop()

    web = await NodeProc.start("https-listener.js", wss, "secureweb", rule.name, rule.primary_key,
                               "--exitOnError=false", env=env)
    await web.wait_event("listening")
    context = ssl.create_default_context(cafile=str(certificate[0]))
    token = build_token(f"https://localhost:{relay.port}/secureweb", rule.name, rule.primary_key,
                        int(time.time()) + 600)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://localhost:{relay.port}/secureweb/x?size=100000", ssl=context,
                            headers={"ServiceBusAuthorization": token}) as r:
            assert r.status == 200 and len(await r.read()) == 100000
    await web.stop()


async def test_python_listener_over_wss_serves_https_requests(tls_relay, certificate, monkeypatch):
    """The SDK's control channel (picows) and its rendezvous sockets (websockets) over TLS."""
    from hyrelay.client import HybridConnectionListener

    relay = tls_relay
    relay.create_hc("pyweb", requires_client_authorization=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # how a user trusts a private CA

    async def handler(request, response):
        size = int(request.query.partition("=")[2] or 0)
        await response.end(b"s" * size)  # small: inline on the control channel; large: a rendezvous

    cs = relay.server.connection_string().replace(f"sb://127.0.0.1:{relay.port}", f"sb://localhost:{relay.port}")
    listener = HybridConnectionListener(cs, entity="pyweb", request_handler=handler)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    async with listener, aiohttp.ClientSession() as http:
        for size in (10, 300_000):
            async with http.get(f"https://localhost:{relay.port}/pyweb/x?size={size}", ssl=context) as r:
                assert r.status == 200 and len(await r.read()) == size
