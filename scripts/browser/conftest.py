"""The browser tests of the pages (scripts/browser): headless Chromium (Debian's, at CHROMIUM,
default /usr/bin/chromium; nothing is downloaded) driven by Playwright, against the real
functions behind the local gateway, reading mail from MailDev.

Environment:
  API_URL       the API's base URL, which is also the pages' origin (default http://localhost:9000, as `make dev` serves it);
                the mail's links must point there (APP_URL's default)
  MAILDEV_URL   the MailDev the functions deliver to (see ../e2e/mail.py)
  DATABASE_URL  the API's database, through psql: only to age a link past its lifetime
  CHROMIUM      the browser binary (default /usr/bin/chromium)

Every page any test opens is watched for the whole test, and the test fails on: a request to
another origin (it is also refused), a console error or warning (the API's refusals excepted:
Chromium logs every 4xx answer of a fetch, and the pages show those as their detail), an
uncaught exception, or a Content-Security-Policy violation.

The per-address limit: every request a browser makes comes from 127.0.0.1, so scripts/test.sh
serves these tests with IP_RATE_LIMIT_PER_MINUTE=0 (the mail limits stay on: one test meets them).
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import sys
import time
import urllib.parse

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "e2e"))

from mail import require_maildev  # noqa: E402

API_URL = os.environ.get("API_URL", "http://localhost:9000").rstrip("/")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_SECONDS = float(os.environ.get("E2E_WAIT_SECONDS", "180"))
SCREENSHOTS = ROOT / "target" / "screenshots"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"

# Waits are for hangs, not for speed: a busy machine may take seconds over an argon2 hash.
expect.set_options(timeout=30_000)

# Reported by every page to the console as an error, so the watch sees each one.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def call(method: str, path: str, body: dict | None = None, bearer: str | None = None):
    """A request straight to the API (to set up an account faster than through the page)."""
    parts = urllib.parse.urlsplit(API_URL)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None,
                       headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, (json.loads(data) if data else None)


@pytest.fixture(scope="session")
def api_ready() -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    parts = urllib.parse.urlsplit(API_URL)
    while True:
        try:
            connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the pages at {API_URL}/ did not answer 200 within {WAIT_SECONDS:.0f} s",
                        pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="session")
def browser() -> Browser:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no browser at {CHROMIUM}: scripts/test.sh installs Debian's chromium "
                    "(apt-get install -y chromium)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: scripts/maildev.sh installs package.json's tools "
                    "(axe-core among them) with npm ci", pytrace=False)
    return AXE.read_text()


class Watch:
    """What went wrong in the pages of one test."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.requests: list[str] = []

    def attach(self, context: BrowserContext) -> None:
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        context.route("**/*", self._route)
        context.on("console", self._console)
        context.on("weberror", lambda error: self.problems.append(f"uncaught: {error.error}"))

    def _route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if url == API_URL or url.startswith(API_URL + "/"):
            route.continue_()
        else:
            self.problems.append(f"a request to another origin: {url}")
            route.abort()

    def _console(self, message) -> None:
        if message.type not in ("error", "warning"):
            return
        where = urllib.parse.urlsplit(message.location.get("url", ""))
        refused = message.text.startswith("Failed to load resource: the server responded with a status of 4")
        if refused and f"{where.scheme}://{where.netloc}" == API_URL and where.path.startswith("/auth/"):
            return
        self.problems.append(f"console {message.type}: {message.text} ({message.location.get('url')})")


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def new_context(browser: Browser, api_ready, watch: Watch):
    """Opens watched browser contexts (each its own tab storage: its own signed-in person); at
    the end of the test, fails on anything the watch saw."""
    contexts: list[BrowserContext] = []

    def open_context(width: int = 1280, height: int = 900, **options) -> BrowserContext:
        context = browser.new_context(base_url=API_URL, viewport={"width": width, "height": height},
                                      **options)
        context.set_default_timeout(30_000)
        watch.attach(context)
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        context.close()
    assert not watch.problems, "\n".join(watch.problems)


@pytest.fixture
def page(new_context) -> Page:
    return new_context().new_page()


@pytest.fixture
def maildev(api_ready):
    return require_maildev()
