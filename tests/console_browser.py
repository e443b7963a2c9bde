"""Debian's chromium, headless, driven by selenium through Debian's chromedriver, for the
console's browser tests and its screenshots (``python -m tests.console_browser DIR``).

Selenium's calls block, and the gateway under test answers on the test's own event loop:
every call goes through a thread (:meth:`Browser.call`) so the loop keeps serving the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

T = TypeVar("T")
LAPTOP = (1280, 900)
PHONE = (390, 844)


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return browser, driver


class Browser:
    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def size(self, width: int, height: int) -> None:
        await self.call(self.driver.set_window_size, width, height)

    async def source(self) -> str:
        return await self.call(lambda: self.driver.page_source)

    async def url(self) -> str:
        return await self.call(lambda: self.driver.current_url)

    async def find(self, css: str) -> Any:
        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def find_all(self, css: str) -> list[Any]:
        return await self.call(self.driver.find_elements, By.CSS_SELECTOR, css)

    async def text(self, css: str) -> str:
        element = await self.find(css)
        return await self.call(lambda: element.text)

    async def attribute(self, element: Any, name: str) -> str:
        return await self.call(element.get_attribute, name)

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self.call(element.send_keys, text)

    async def click(self, css: str) -> None:
        element = await self.find(css)
        await self.call(element.click)

    async def cookies(self) -> list[dict[str, Any]]:
        return await self.call(self.driver.get_cookies)

    async def screenshot(self, path: Path) -> None:
        """The whole page (as tall as its content), as a PNG."""
        height = await self.call(self.driver.execute_cdp_cmd, "Page.getLayoutMetrics", {})
        width = self.driver.get_window_size()["width"]
        full = int(height["cssContentSize"]["height"]) + 20
        await self.size(width, max(full, 400))
        await self.call(self.driver.save_screenshot, str(path))

    async def sign_in(self, base: str, secret: str) -> None:
        await self.get(f"{base}/console")
        await self.type("#secret", secret)
        await self.click("form[action='/console/sign-in'] button[type=submit]")
        await self.wait_for(lambda url: "/console/" in url and not url.endswith("/sign-in"))

    async def wait_for(self, good: Callable[[str], bool], within: float = 30.0) -> str:
        """The page's URL once ``good`` says so (polled; fails after ``within`` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            url = await self.url()
            ready = await self.call(self.driver.execute_script, "return document.readyState")
            if good(url) and ready == "complete":
                return url
            if loop.time() > deadline:
                raise AssertionError(f"the browser is still at {url}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def browser(size: tuple[int, int] = LAPTOP) -> AsyncIterator[Browser]:
    """A headless chromium with a profile of its own, quit (with its driver) at the end."""
    binary, driver_path = chromium_paths()
    profile = tempfile.mkdtemp(prefix="console-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]  # fmt: skip
    for argument in arguments:
        options.add_argument(argument)
    service = Service(executable_path=driver_path)
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
    try:
        yield Browser(driver)
    finally:
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(profile, ignore_errors=True)


# --- the README's screenshots ------------------------------------------------------------------


async def screenshots(folder: Path) -> None:
    """The console's pages, with a month and a half of made-up usage, as PNGs in ``folder``."""
    from decimal import Decimal

    from aiohttp.test_utils import TestServer

    from fake_nomic import FakeNomic
    from gateway.app import create_app
    from gateway.appkeys import LEDGER
    from tests.conftest import ADMIN_TOKEN, gateway_settings, make_team

    fake = FakeNomic()
    upstream = TestServer(fake.app, host="127.0.0.1")
    await upstream.start_server()
    fake.url = str(upstream.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    settings = gateway_settings(
        fake, None, admin_token=ADMIN_TOKEN, prices=(("*", Decimal("0.10")),)
    )
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            keys = {}
            research = {"tokens_per_day": 3_000_000, "tokens_per_month": 60_000_000,
                        "requests_per_minute": 600}  # fmt: skip
            for team, name, limits in (
                ("research", "Research", research),
                ("search", "Search", {"tokens_per_month": 40_000_000}),
                ("marketing", "Marketing", {"tokens_per_month": 5_000_000}),
            ):
                keys[team] = await make_team(session, base, team, name=name, limits=limits)
        ledger = app[LEDGER]
        today = datetime.datetime.now(datetime.UTC).date()
        for i in range(45):
            day = today - datetime.timedelta(days=44 - i)
            for n, team in enumerate(("research", "search", "marketing")):
                billed = (900_000 + 40_000 * ((i * 7 + n * 5) % 11)) // (n + 1)
                saved = billed * (i % 6 + 2) // 5
                usage = {"requests": billed // 900, "images": billed // 1200,
                         "texts": billed // 400, "hits": saved // 300, "misses": billed // 300,
                         "saved_tokens": saved}  # fmt: skip
                for share, job in ((6, "nightly-reindex"), (3, "search-backfill"), (1, "adhoc")):
                    part = {field: amount * share // 10 for field, amount in usage.items()}
                    await ledger.settle(team, day.isoformat(), day.strftime("%Y-%m"),
                                        f"seed-{team}-{i}-{job}", billed * share // 10, part,
                                        job)  # fmt: skip
        async with browser() as chrome:
            await chrome.sign_in(base, keys["research"])
            await chrome.screenshot(folder / "console-team.png")
            await chrome.size(*PHONE)
            await chrome.get(f"{base}/console/team")
            await chrome.screenshot(folder / "console-team-phone.png")
        async with browser() as chrome:
            await chrome.sign_in(base, ADMIN_TOKEN)
            await chrome.screenshot(folder / "console-operator.png")
    finally:
        await server.close()
        await upstream.close()


if __name__ == "__main__":
    asyncio.run(screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
