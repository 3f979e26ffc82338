"""A real browser for tests: Debian's chromium, driven by Playwright for Python (its async API,
on the test's event loop, beside an in-process relay).

Import the fixtures into a test module (``from tests.browser import browser, tab``
and list them in ``__all__``). ``browser`` skips the test, saying why, when
Playwright or chromium is missing: ``playwright install`` downloads a browser
build, which this project's machines cannot fetch, so it drives the distribution's
package (``apt-get install chromium``; .ci/run installs it). ``RELAY_TEST_CHROMIUM``
names another binary.

``tab`` is a fresh page in its own context (no cookies or storage shared
between tests) that records the page's uncaught script errors and console
messages; the test fails at teardown if a script error happened and the test
did not look at ``tab.errors``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1000, "height": 900}


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if shutil.which(CHROMIUM) is None:
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set RELAY_TEST_CHROMIUM)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless chromium (playwright.async_api.Browser), closed after the test."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    page: Any  # playwright.async_api.Page
    errors: list[str] = field(default_factory=list)  # uncaught script errors
    console: list[str] = field(default_factory=list)  # "<type>: <text>" of each console message
    errors_seen: bool = False

    def take_errors(self) -> list[str]:
        """The script errors so far (the test looked at them: teardown will not fail on them)."""
        self.errors_seen = True
        return list(self.errors)


@pytest.fixture
async def tab(browser: Any) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport=VIEWPORT, locale="en-US")
    page = await context.new_page()
    opened = Tab(page)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on("console", lambda message: opened.console.append(f"{message.type}: {message.text}"))
    try:
        yield opened
    finally:
        await context.close()
    assert opened.errors_seen or not opened.errors, f"script errors on the page: {opened.errors}"
