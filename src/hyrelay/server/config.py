"""Settings of a running relay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class RelayConfig:
    """Everything ``hyrelay serve`` can be told; defaults are the embedded single-machine relay."""

    host: str = "127.0.0.1"
    port: int = 9000
    data_dir: Path = Path("hyrelay-data")
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_listeners: int = 25
    log_level: str = "INFO"
    namespace: str = "hyrelay"
    #: Seconds a listener's control channel outlives its token's expiry (spec §2.7).
    token_grace: float = 300.0
    #: Seconds of clock skew tolerated on token expiry (spec §5.8).
    clock_skew: float = 300.0
    #: Seconds a sender waits for the listener to open its rendezvous (spec §2.3: 30 s).
    accept_timeout: float = 30.0
    max_header_size: int = 16 * 1024
    #: Seconds a new connection has to send its first request head (slow-loris guard).
    head_timeout: float = 30.0
    max_frame_size: int = 16 << 20
    #: Seconds of silence before an idle control channel is pinged.
    ping_interval: float = 60.0
    #: Seconds a listener has to answer a relayed HTTP request (0: no limit); per-HC settings override it.
    request_timeout: float = 60.0
    #: Largest relayed HTTP request body in bytes (None: no limit).
    max_request_body: int | None = None
    #: Seconds between checks of the store for changes made by the CLI or another process.
    reload_interval: float = 1.0

    @property
    def secure(self) -> bool:
        return self.tls_cert is not None
