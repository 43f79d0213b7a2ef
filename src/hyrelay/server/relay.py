"""The relay service: listen, connect and accept handshakes, wired to the router and the store."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

from ..protocol.addresses import RENDEZVOUS_PARAM, build_address, filter_query, path_segments
from ..protocol.errors import (BadGateway, BadRequest, EndpointNotFound, Forbidden, GatewayTimeout, Gone,
                               InternalError, QuotaExceeded, RelayError, ServerBusy, close_reason, format_reason,
                               new_tracking_id, safe_reason)
from ..protocol.headers import connect_headers
from ..protocol.messages import accept_message
from ..protocol.rights import Rights
from ..protocol.sas import RuleKeys, SasToken, VerifiedTokens
from ..store import HybridConnection, Snapshot, Store
from .config import RelayConfig
from .control import ControlChannel
from .dispatch import Upgrade
from .engine import send_close
from .exchange import HttpExchange
from .httprelay import HttpRelay
from .observe import Observer
from .publish import Publisher
from .pump import PumpEnd, pair
from .router import Router

__all__ = ["Relay"]

_log = logging.getLogger("hyrelay.server")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(slots=True)
class Pending:
    """A sender waiting for its listener to open the rendezvous."""

    upgrade: Upgrade
    hc_key: str
    connection_id: str
    listener: ControlChannel
    offered: list[str]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class Counters:
    """Live state the observer does not keep: the relayed connections per hybrid connection."""

    active: dict[str, set[PumpEnd]] = field(default_factory=dict)


class Relay:
    """Hybrid Connections over WebSockets for one namespace."""

    def __init__(self, config: RelayConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.namespace = config.namespace
        self.snapshot: Snapshot = store.snapshot()
        self.router: Router[ControlChannel, Pending | HttpExchange] = Router()
        self.counters = Counters()
        self.tokens = VerifiedTokens()
        self.observer = Observer()
        self.http = HttpRelay(self)

    # -- entry point ----------------------------------------------------------------------------
    def on_upgrade(self, up: Upgrade) -> None:
        """Handle a ``$hc`` upgrade; every failure is answered with the status the spec names."""
        tracker = f"{self.namespace}:{up.target.decoded_path}"
        try:
            action = up.target.action
            if action == "listen":
                self._listen(up)
            elif action == "connect":
                self._connect(up)
            elif action == "accept":
                self._accept(up)
            elif action == "request":
                self._request_rendezvous(up)
            else:
                raise BadRequest(f"Unknown sb-hc-action '{safe_reason(action, 40)}'; use listen, connect or accept")
        except RelayError as err:
            up.reject(err, tracker)
            self._failed(up, err)
        except Exception:
            internal = InternalError("The relay failed to handle the request")
            _log.exception("event=internal_error tracking_id=%s", internal.tracking_id)
            up.reject(internal, tracker)
            self._failed(up, internal)

    def _failed(self, up: Upgrade, err: RelayError) -> None:
        found = self.snapshot.find_hc(self.namespace, up.target.decoded_path)
        self.observer.upgrade_failed(up.target.action, found[0].name if found else None, err.status,
                                     err.reason())

    # -- helpers --------------------------------------------------------------------------------
    def _resolve(self, up: Upgrade) -> tuple[HybridConnection, str]:
        found = self.snapshot.find_hc(self.namespace, up.target.decoded_path)
        if found is None:
            raise EndpointNotFound(f"Endpoint does not exist: no hybrid connection matches "
                                   f"'{safe_reason(up.target.decoded_path, 200)}'")
        hc, _ = found
        return hc, up.target.raw_suffix(hc.name.count("/") + 1)

    def authorize_manage(self, token: str | None, target: tuple[str, ...]) -> SasToken:
        """Check a token for Manage, signed with a namespace-level rule (the admin API).

        Raises:
            Unauthorized, Forbidden: as for any other token (401/403).
        """
        return self.tokens.authorize(token, scope="", target=target, lookup=self._lookup(None),
                                     needed=Rights.MANAGE, now=time.time(), skew=self.config.clock_skew,
                                     entity="$admin")

    def _lookup(self, hc: HybridConnection | None):
        def lookup(key_name: str) -> RuleKeys | None:
            rule = self.snapshot.rules_for(self.namespace, hc.name if hc else None, key_name)
            if rule is None:
                return None
            return RuleKeys(rule.name, rule.primary_key, rule.secondary_key, Rights.parse(rule.rights))
        return lookup

    def authorize_sender(self, token: str | None, hc: HybridConnection, target: tuple[str, ...]) -> None:
        """Check a sender's token for Send on *target* (the HC name plus any suffix)."""
        self._authorize(token, hc, target, Rights.SEND)

    def authorize_read(self, token: str | None, hc: HybridConnection) -> SasToken:
        """Check a token for reading *hc*'s description (spec §6.2): any of Listen, Send or Manage."""
        # Rights.NONE asks for no particular right; every rule holds at least one, so any rule will do.
        return self._authorize(token, hc, path_segments(hc.name), Rights.NONE)

    def _authorize(self, token: str | None, hc: HybridConnection, target: tuple[str, ...],
                   needed: Rights) -> SasToken:
        return self.tokens.authorize(token, scope=hc.name.lower(), target=target, lookup=self._lookup(hc),
                                     needed=needed, now=time.time(), skew=self.config.clock_skew,
                                     entity=hc.name)

    @staticmethod
    def _token(up: Upgrade) -> str | None:
        return up.head.header("ServiceBusAuthorization") or up.target.params.get("sb-hc-token")

    def hc_key(self, name: str) -> str:
        return _hc_key(self.namespace, name)

    def _base_url(self, up: Upgrade) -> str:
        if self.config.public_url:
            parts = urlsplit(self.config.public_url)
            scheme = "wss" if parts.scheme in ("https", "wss", "sb") else "ws"
            return f"{scheme}://{parts.netloc}"
        host = up.head.header("Host") or f"{self.config.host}:{self.config.port}"
        return f"{'wss' if up.secure else 'ws'}://{host}"

    # -- listen ---------------------------------------------------------------------------------
    def _listen(self, up: Upgrade) -> None:
        hc, _ = self._resolve(up)
        token = self._authorize(self._token(up), hc, path_segments(hc.name), Rights.LISTEN)
        given = up.target.params.get("sb-hc-id", "").split("_", 1)[0]
        listener_id = given if _SAFE_ID.fullmatch(given or "") else str(uuid.uuid4())
        key = self.hc_key(hc.name)
        channel = ControlChannel(self, key, hc.name, listener_id, up.peer, self._base_url(up),
                                 self.config.max_frame_size)
        limit = hc.max_listeners or self.config.max_listeners
        if not self.router.add_listener(key, channel, limit):
            raise QuotaExceeded(f"MaximumListenersPerEndpoint: '{hc.name}' already has "
                                f"{limit} listeners, the most it allows")
        if not up.accept(channel, None, self.config.ping_interval, self.config.max_frame_size, coalesce=True):
            self.router.remove_listener(key, channel)
            return
        channel.expire_at(token.expires_at + self.config.token_grace)
        self.observer.listener_online(hc.name, listener_id, up.peer)
        _log.info("event=listener_online hc=%s listener=%s peer=%s:%s", hc.name, listener_id, *up.peer)

    def renew_token(self, channel: ControlChannel, token_text: str) -> None:
        """Apply a ``renewToken``; an invalid token closes the channel with 1008 (spec §2.7)."""
        found = self.snapshot.find_hc(self.namespace, channel.hc_name)
        try:
            if found is None:
                raise EndpointNotFound(f"Endpoint does not exist: '{channel.hc_name}'")
            token = self._authorize(token_text, found[0], path_segments(channel.hc_name), Rights.LISTEN)
        except RelayError as err:
            _log.info("event=renew_failed hc=%s listener=%s tracking_id=%s reason=%r",
                      channel.hc_name, channel.listener_id, err.tracking_id, err.message)
            channel.close(1008, err.close_reason())
            return
        channel.expire_at(token.expires_at + self.config.token_grace)
        _log.info("event=token_renewed hc=%s listener=%s", channel.hc_name, channel.listener_id)

    def listener_gone(self, channel: ControlChannel) -> None:
        self.router.remove_listener(channel.hc_key, channel)
        self.observer.listener_offline(channel.hc_name, channel.listener_id)
        _log.info("event=listener_offline hc=%s listener=%s", channel.hc_name, channel.listener_id)

    # -- connect --------------------------------------------------------------------------------
    def _connect(self, up: Upgrade) -> None:
        hc, raw_suffix = self._resolve(up)
        if hc.requires_client_authorization:
            target = path_segments(hc.name) + path_segments(raw_suffix)
            self._authorize(self._token(up), hc, target, Rights.SEND)
        key = self.hc_key(hc.name)
        if hc.multicast:
            self._publisher(up, hc, key)
            return
        allowed = self.id_set(up.head.header("Microsoft-Relay-AllowedListeners"))
        disallowed = self.id_set(up.head.header("Microsoft-Relay-DisallowedListeners"))
        candidates = self.choose(key, hc.name, allowed, disallowed, EndpointNotFound)
        given = up.target.params.get("sb-hc-id", "")
        connection_id = given if _SAFE_ID.fullmatch(given) else str(uuid.uuid4())
        secret = secrets.token_urlsafe(24)  # 192 bits: the address is the only credential
        headers = connect_headers(up.head.headers)
        offered = [p.strip() for p in (up.head.header("Sec-WebSocket-Protocol") or "").split(",") if p.strip()]
        for channel in candidates:
            address = build_address(channel.base_url, up.target.raw_path, filter_query(up.target.query),
                                    action="accept", id=connection_id, **{RENDEZVOUS_PARAM: secret})
            if channel.send_text(accept_message(address, connection_id, headers, *up.peer)):
                break
        else:
            raise EndpointNotFound(f"No listeners connected for endpoint '{hc.name}'")
        pending = Pending(up, key, connection_id, channel, offered)
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(self.config.accept_timeout, self._accept_timed_out, secret)
        self.router.add_pending(secret, pending)
        up.on_lost = lambda: self._sender_gone(secret)
        _log.info("event=accept_sent hc=%s connection=%s listener=%s", hc.name, connection_id, channel.listener_id)

    def _publisher(self, up: Upgrade, hc: HybridConnection, key: str) -> None:
        """A sender on a multicast hybrid connection publishes to every listener instead."""
        query = filter_query(up.target.query)
        raw_path = "/" + up.target.raw_path.lstrip("/")
        target = raw_path + ("?" + query if query else "")

        def published(reached: int, nbytes: int) -> None:
            self.observer.http_request(hc.name, "PUBLISH", 202, 0.0, nbytes * reached)

        publisher = Publisher(lambda: self.router.listeners(key), raw_path, target, up.peer, published)
        if up.accept(publisher, max_frame_size=self.config.max_frame_size):
            _log.info("event=publisher_opened hc=%s peer=%s:%s", hc.name, *up.peer)

    def _accept_timed_out(self, secret: str) -> None:
        pending = self.router.take_pending(secret)
        if isinstance(pending, Pending):
            err = GatewayTimeout(f"The listener did not accept the connection within "
                                 f"{self.config.accept_timeout:g} seconds")
            pending.upgrade.reject(err, pending.hc_key)

    def _sender_gone(self, secret: str) -> None:
        pending = self.router.take_pending(secret)
        if isinstance(pending, Pending) and pending.timer is not None:
            pending.timer.cancel()
            _log.info("event=sender_gone_before_accept connection=%s", pending.connection_id)

    # -- accept (the listener's rendezvous) -----------------------------------------------------
    def _accept(self, up: Upgrade) -> None:
        params = up.target.params
        pending = self._take_pending(up, Pending)
        if pending.timer is not None:
            pending.timer.cancel()
        status = params.get("sb-hc-statuscode") or params.get("statuscode")
        if status is not None:
            self._reject_sender(up, pending, status,
                                params.get("sb-hc-statusdescription") or params.get("statusdescription"))
            return
        chosen = (up.head.header("Sec-WebSocket-Protocol") or "").split(",")[0].strip()
        sender_end, listener_end = pair(self.config.max_frame_size)
        if not up.accept(listener_end, {"Sec-WebSocket-Protocol": chosen} if chosen else None,
                         max_frame_size=self.config.max_frame_size):
            pending.upgrade.reject(BadGateway("The listener dropped its rendezvous before it completed"))
            return
        to_sender = {"Sec-WebSocket-Protocol": chosen} if chosen and chosen in pending.offered else None
        if not pending.upgrade.accept(sender_end, to_sender, max_frame_size=self.config.max_frame_size):
            sender_end.gone = True
            if listener_end.transport is not None and not listener_end.gone:
                listener_end.close_received = True
                send_close(listener_end.transport, 1001,
                           close_reason("The sender disconnected before the connection was accepted"))
                listener_end.transport.disconnect()
            return
        active = self.counters.active.setdefault(pending.hc_key, set())
        active.add(sender_end)
        hc_name, connection_id = pending.listener.hc_name, pending.connection_id

        def finished(end: PumpEnd) -> None:
            active.discard(end)
            self.observer.connection_closed(hc_name, connection_id, end.nbytes + listener_end.nbytes)
            _log.info("event=connection_closed connection=%s bytes=%s", connection_id,
                      end.nbytes + listener_end.nbytes)

        sender_end.on_finished = finished
        self.observer.connection_opened(hc_name, connection_id, pending.listener.listener_id)
        _log.info("event=connection_opened connection=%s listener=%s protocol=%s",
                  pending.connection_id, pending.listener.listener_id, chosen or "-")

    def _take_pending(self, up: Upgrade, kind: type):
        secret = up.target.params.get(f"sb-hc-{RENDEZVOUS_PARAM}", "")
        pending = self.router.take_pending(secret) if secret else None
        if pending is not None and not isinstance(pending, kind):
            self.router.add_pending(secret, pending)  # an address of the other kind: leave it be
            pending = None
        if pending is None:
            raise Forbidden("The URL is not valid: the rendezvous address is unknown, expired or already used")
        return pending

    def _request_rendezvous(self, up: Upgrade) -> None:
        exchange = self._take_pending(up, HttpExchange)
        self.http.on_rendezvous(up, exchange)

    def _reject_sender(self, up: Upgrade, pending: Pending, status: str, description: str | None) -> None:
        try:
            code = int(status)
        except ValueError:
            code = 400
        if not 400 <= code <= 599:
            code = 400
        try:
            default = HTTPStatus(code).phrase
        except ValueError:
            default = "Rejected by the listener"
        tracking = new_tracking_id()
        reason = format_reason(safe_reason(description or default, 400) or default, tracking)
        err = Gone("The connection was rejected by the listener", tracking_id=tracking)
        pending.upgrade.reject_raw(code, reason, err)
        up.reject(err)
        _log.info("event=connection_rejected connection=%s status=%s tracking_id=%s",
                  pending.connection_id, code, tracking)

    def _announce_changes(self, old: Snapshot, new: Snapshot) -> None:
        before = {hc.name: hc for hc in old.hcs(self.namespace)}
        after = {hc.name: hc for hc in new.hcs(self.namespace)}
        for name in after.keys() - before.keys():
            self.observer.store_changed("hc_created", name)
        for name in before.keys() - after.keys():
            self.observer.stats.pop(name, None)
            self.observer.store_changed("hc_deleted", name)
        for name in after.keys() & before.keys():
            if after[name] != before[name]:
                self.observer.store_changed("hc_updated", name)
        if old.rule_digest() != new.rule_digest():
            self.observer.store_changed("rules_changed")

    def choose(self, key: str, hc_name: str, allowed: set[str] | None, disallowed: set[str] | None,
               nobody: type[RelayError]) -> list[ControlChannel]:
        """Listeners to try, the first chosen at random among those not too far behind.

        The rest follow as fallbacks in case the first turns out to be gone; their backlog is
        not looked at (most requests never need them).

        Raises:
            EndpointNotFound: the Allowed/DisallowedListeners headers leave nobody (spec §1.6).
            *nobody*: no listener is online (404 for WebSockets, 502 for HTTP).
            ServerBusy: every listener's socket is full (503).
        """
        candidates = self.router.choose(key, allowed, disallowed)
        if not candidates:
            if (allowed is not None or disallowed) and self.router.listeners(key):
                raise EndpointNotFound("None of the connected listeners meet the "
                                       "AllowedListeners/DisallowedListeners criteria")
            if nobody is EndpointNotFound:
                raise EndpointNotFound(f"No listeners connected for endpoint '{hc_name}'")
            raise nobody(f"No listener is online for '{hc_name}': the request could not be routed")
        for i, channel in enumerate(candidates):
            if not channel.backed_up:
                return candidates[i:] + candidates[:i]
        raise ServerBusy(f"Every listener of '{hc_name}' is too far behind to take more; try again later")

    @staticmethod
    def id_set(header: str | None) -> set[str] | None:
        """Listener ids from an Allowed/DisallowedListeners header (None if absent)."""
        if header is None:
            return None
        return {part.strip().lower() for part in header.split(",") if part.strip()}

    # -- store changes --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up changes made through the store (CLI, API); close what was deleted."""
        if self.store.version() == self.snapshot.version:
            return
        old, self.snapshot = self.snapshot, self.store.snapshot()
        self.tokens.clear()  # a key may have been regenerated or a rule removed
        self._announce_changes(old, self.snapshot)

        def deleted(key: str) -> bool:
            name = key.split("/", 1)[1]
            found = self.snapshot.find_hc(self.namespace, name)
            return found is None or found[0].name.lower() != name

        # Senders and HTTP requests still waiting for a listener get their answer now, not at a timeout.
        for secret, pending in self.router.pending_items():
            key = pending.hc_key if isinstance(pending, Pending) else self.hc_key(pending.hc_name)
            if not deleted(key):
                continue
            self.router.drop_pending(secret)
            err = EndpointNotFound("Endpoint does not exist: the hybrid connection was deleted")
            if isinstance(pending, Pending):
                if pending.timer is not None:
                    pending.timer.cancel()
                pending.upgrade.reject(err, key)
            else:
                pending.fail(err)
        for key in set(self.router.hc_keys()) | set(self.counters.active):
            if not deleted(key):
                continue
            reason = close_reason("The hybrid connection was deleted")
            for channel in self.router.listeners(key):
                channel.close(1001, reason)
            for end in list(self.counters.active.pop(key, ())):
                for side in (end, end.peer):
                    if side is not None and side.transport is not None and not side.gone:
                        side.close_received = True
                        send_close(side.transport, 1001, reason)
                        side.transport.disconnect()


@functools.lru_cache(maxsize=4096)
def _hc_key(namespace: str, name: str) -> str:
    """The router's key for a hybrid connection (asked for every relayed request)."""
    return f"{namespace}/{name.lower()}"
