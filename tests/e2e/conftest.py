"""Fixtures for the browser tests: a real server with the demo model, and Debian's Chromium
driven by Playwright. A missing browser fails the tests (``make e2e`` installs it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from src.core.settings import DEFAULT_CHECKPOINT
from tests.helpers import REPO_ROOT
from tests.helpers.server import served

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "tests" / "e2e" / "screenshots"


# Package scope, not session: Playwright's sync API runs an event loop on the main thread while
# it is open, and the async tests that run after this package need the thread to themselves.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium, or "
        "`make e2e`, which does it)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m src.serve`` with the committed demo model, as ``make run`` serves it."""
    with served(
        REPO_ROOT / DEFAULT_CHECKPOINT,
        DFD_TORCH_THREADS="2",
        DFD_STORE="off",
        DFD_LOG_LEVEL="WARNING",
    ) as (base, _, _):
        yield base


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (its own session storage); its screenshot is kept after the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    unexpected = [e for e in errors if "401" not in e and "Failed to load resource" not in e]
    assert not unexpected, f"the page logged errors: {unexpected}"
