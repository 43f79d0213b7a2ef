"""``/$dashboard`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download is never used: the test launches ``/usr/bin/chromium``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from hyrelay.protocol.sas import build_token, parse_connection_string

from ..integration.wsutil import EchoListener, ws_connect

CHROMIUM = os.environ.get("HYRELAY_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]
SCREENSHOT = "/tmp/dashboard.png"
SIGNIN_SCREENSHOT = "/tmp/dashboard-signin.png"
WAIT_MS = 15_000  # hang guard for DOM waits; they return as soon as the page updates


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser, relay) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=relay.http)
    page = await context.new_page()
    page.requests = []  # type: ignore[attr-defined]
    page.problems = []  # type: ignore[attr-defined]
    page.on("request", lambda r: page.requests.append(r.url))  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.problems.append(str(e)))  # type: ignore[attr-defined]
    page.on("console", lambda m: page.problems.append(m.text)  # type: ignore[attr-defined]
            if m.type == "error" and "status of 40" not in m.text else None)
    try:
        yield page
    finally:
        await context.close()


async def everything_on_page(page: Page) -> str:
    """The page's markup, its visible text and the value of every form field."""
    return await page.evaluate("""() => document.documentElement.outerHTML + document.body.innerText +
        [...document.querySelectorAll('input, textarea, select')].map(e => e.value).join('\\n')""")


async def sign_in(page: Page, secret: str, key_name: str | None = None) -> None:
    await page.fill("#secret", secret)
    if key_name is not None:
        await page.fill("#key-name", key_name)
    await page.click("#signin-button")


async def test_dashboard_sign_in_create_copy_and_watch_a_listener(relay, page):
    root = relay.server.root_rule
    relay.create_hc("existing")
    sender_rule = relay.create_rule("send-listen", ("Send", "Listen"))

    await page.goto(f"{relay.http}/$dashboard")
    assert page.url == f"{relay.http}/$dashboard/"
    await page.wait_for_selector("#signin-form", state="visible")

    # A wrong key: a clear error, nothing of the namespace shown, no key anywhere in the page.
    wrong = base64.b64encode(b"not the key, not even close....").decode()
    await sign_in(page, f"Endpoint=sb://127.0.0.1:{relay.port}/;SharedAccessKeyName={root.name};"
                        f"SharedAccessKey={wrong}")
    error = page.locator("#signin-error")
    await error.wait_for(state="visible", timeout=WAIT_MS)
    assert "Sign-in failed" in await error.inner_text()
    await page.screenshot(path=SIGNIN_SCREENSHOT)
    assert await page.locator("#main-view").is_hidden()
    content = await everything_on_page(page)
    assert wrong not in content and root.primary_key not in content and "existing" not in content

    # A valid key without Manage is turned away too, with a message that says why.
    await sign_in(page, sender_rule.primary_key, "send-listen")
    await page.wait_for_function("() => document.querySelector('#signin-error').innerText.includes('Manage')",
                                 timeout=WAIT_MS)
    assert await page.locator("#main-view").is_hidden()
    content = await everything_on_page(page)
    assert sender_rule.primary_key not in content and "existing" not in content

    # The root Manage connection string signs in; the existing HC is listed.
    await sign_in(page, relay.server.connection_string())
    await page.wait_for_selector("#main-view", state="visible", timeout=WAIT_MS)
    await page.wait_for_selector("tr[data-hc='existing']", timeout=WAIT_MS)
    await page.wait_for_selector("#live.on", timeout=WAIT_MS)
    assert await page.locator("#signin-error").is_hidden()

    # Create a hybrid connection through the form.
    await page.fill("#create-name", "orders")
    await page.click("#create-button")
    await page.wait_for_selector("tr[data-hc='orders']", timeout=WAIT_MS)
    assert relay.store.get_hc("hyrelay", "orders").requires_client_authorization

    # Its details open with a connection string; Copy puts it on the clipboard.
    await page.wait_for_function("() => document.querySelector('#cs-value').value.includes('EntityPath=orders')",
                                 timeout=WAIT_MS)
    shown = await page.input_value("#cs-value")
    await page.click("#cs-copy")
    await page.wait_for_function("() => document.querySelector('#cs-copy').innerText === 'Copied'", timeout=WAIT_MS)
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied == shown

    # A real listener that uses the copied string comes online in the page, live.
    cs = parse_connection_string(copied)
    assert cs.entity_path == "orders" and cs.key_name == root.name
    token = build_token(f"{cs.ws_base}/$hc/orders", cs.key_name, cs.key, int(time.time() + 600))
    control = await ws_connect(f"{cs.ws_base}/$hc/orders?sb-hc-action=listen",
                               {"ServiceBusAuthorization": token})
    listener = EchoListener(control)
    await page.wait_for_function(
        "() => document.querySelector(\"tr[data-hc='orders'] .badge\").innerText === '1'", timeout=WAIT_MS)
    await page.wait_for_selector("#details-listeners li", timeout=WAIT_MS)
    assert "127.0.0.1" in await page.inner_text("#details-listeners")

    # Traffic shows up in the tiles and graphs.
    sender = await ws_connect(f"{cs.ws_base}/$hc/orders?sb-hc-action=connect", {"ServiceBusAuthorization": token})
    async def traffic() -> None:
        for _ in range(100):  # at most about 10 s; cancelled once the screenshot is taken
            await sender.send(b"z" * 50_000)
            assert len(await sender.recv()) == 50_000
            await asyncio.sleep(0.1)

    flowing = asyncio.create_task(traffic())
    await page.wait_for_function("() => document.querySelector('#tile-connections').innerText === '1'",
                                 timeout=WAIT_MS)
    await page.wait_for_function("() => document.querySelector('#tile-throughput').innerText !== '0 B/s'",
                                 timeout=WAIT_MS)
    await page.wait_for_timeout(3000)  # a few stats ticks, so the graphs have a line to draw
    await page.screenshot(path=SCREENSHOT, full_page=True)
    flowing.cancel()
    await asyncio.gather(flowing, return_exceptions=True)

    await sender.close()
    await listener.close()
    await page.wait_for_function(
        "() => document.querySelector(\"tr[data-hc='orders'] .badge\").innerText === '0'", timeout=WAIT_MS)
    await page.wait_for_selector("#details-no-listeners", state="visible", timeout=WAIT_MS)

    # Signing out leaves no key behind.
    await page.click("#sign-out")
    await page.wait_for_selector("#signin-form", state="visible")
    content = await everything_on_page(page)
    assert root.primary_key not in content
    assert await page.evaluate("sessionStorage.length") == 0

    # Nothing came from anywhere but the relay, and the page raised no script errors.
    assert all(url.startswith(relay.http) for url in page.requests), page.requests  # type: ignore[attr-defined]
    assert page.problems == []  # type: ignore[attr-defined]


async def test_reload_keeps_the_session_in_this_tab(relay, page):
    await page.goto(f"{relay.http}/$dashboard/")
    await sign_in(page, relay.server.root_rule.primary_key, relay.server.root_rule.name)
    await page.wait_for_selector("#main-view", state="visible", timeout=WAIT_MS)
    await page.reload()
    await page.wait_for_selector("#main-view", state="visible", timeout=WAIT_MS)
    await page.wait_for_selector("#live.on", timeout=WAIT_MS)


async def test_hmac_fallback_matches_python(relay, page):
    """The plain-JS HMAC that signs where WebCrypto is missing (plain http on a LAN address)."""
    await page.goto(f"{relay.http}/$dashboard/")
    cases = [("k", "m"), ("x" * 64, "y" * 55), ("long key " * 20, "message " * 40), ("ünïcode", "sr\n12345")]
    for key, message in cases:
        expected = base64.b64encode(hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()).decode()
        got = await page.evaluate("""([k, m]) => { const e = new TextEncoder();
            return HyrelaySas.base64(HyrelaySas.hmacSha256Fallback(e.encode(k), e.encode(m))); }""", [key, message])
        webcrypto = await page.evaluate("([k, m]) => HyrelaySas.hmacSha256(k, m).then(HyrelaySas.base64)",
                                        [key, message])
        assert got == expected == webcrypto, (key, message)


async def test_dashboard_assets_are_locked_down(relay, page):
    response = await page.goto(f"{relay.http}/$dashboard/")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    missing = await page.request.get(f"{relay.http}/$dashboard/../admin.py")
    assert missing.status == 404
