"""Fixtures of the web console tests: a ``hookpost server`` (API + console) on a free port in this event loop,
a token per role, and real headless Chromium through Playwright.

When Chromium cannot be launched the browser tests skip with the reason — except under CI (``CI`` set), where
that is a failure: ``.ci/run`` installs Chromium.
"""

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest

from hookpost.admin import Admin
from hookpost.common.records import Role
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer

CHROMIUM = os.environ.get("HOOKPOST_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


@dataclass
class Console:
    """A running server with the console, the shared Admin, and an API token per role (plus a revoked one)."""

    server: ApiServer
    admin: Admin
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    async def sign_in(self, page, role: str = "admin", path: str = "/"):  # type: ignore[no-untyped-def]
        """Sign in through the form, then open ``path``."""
        await page.goto(self.url + "/sign-in?" + urlencode({"next": path}))
        await page.get_by_label("API token").fill(self.tokens[role])
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(re.compile(re.escape(self.url + path) + r"(\?.*)?$"))
        return page


@pytest.fixture
async def settings(settings_factory):  # type: ignore[no-untyped-def]
    """Settings with a short retry schedule (three attempts) so a failing endpoint is Failed in well under a
    second, and a fixed session secret."""
    return settings_factory(max_attempts=3, retry_delays="50ms,50ms", session_secret="s" * 40)


@pytest.fixture
async def console(settings, store) -> AsyncIterator[Console]:  # type: ignore[no-untyped-def]
    """``hookpost server`` (the API and the console) on a free port."""
    server = ApiServer(settings, host="127.0.0.1", port=0)
    await server.start()
    admin = server.app[ADMIN_KEY]
    c = Console(server, admin)
    for role in Role:
        made = await admin.tokens.create(f"console-{role.value}", role, actor="test")
        c.tokens[role.value], c.token_ids[role.value] = made.token, made.record.id
    try:
        yield c
    finally:
        await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    """Headless Chromium (skips, or fails under CI, when it cannot be launched)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        _unavailable(f"playwright is not installed ({exc}); pip install -e '.[test]'")
    pw = await async_playwright().start()
    try:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:
        await pw.stop()
        _unavailable(f"cannot launch Chromium at {CHROMIUM} ({str(exc).splitlines()[0]}); "
                     "apt-get install -y chromium chromium-driver")
    try:
        yield b
    finally:
        await b.close()
        await pw.stop()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


class PageWatch:
    """What a page did that it should not: dialogs opened, script errors, CSP violations reported."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []

    def attach(self, page) -> None:  # type: ignore[no-untyped-def]
        async def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))


@pytest.fixture
async def new_page(browser):  # type: ignore[no-untyped-def]
    """Open a page in a fresh browser context: ``page, watch = await new_page(viewport=PHONE)``."""
    contexts = []

    async def make(viewport: dict[str, int] | None = None, **kwargs):  # type: ignore[no-untyped-def]
        ctx = await browser.new_context(viewport=viewport or LAPTOP, **kwargs)
        ctx.set_default_timeout(15000)
        contexts.append(ctx)
        page = await ctx.new_page()
        watch = PageWatch()
        watch.attach(page)
        return page, watch

    yield make
    for ctx in contexts:
        await ctx.close()
