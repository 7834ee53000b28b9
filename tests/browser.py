"""Open a self-contained HTML page in headless Chromium: its visible text, JavaScript errors and a screenshot.

Playwright for Python drives Debian's Chromium (`executable_path`; `.ci/run` installs it, no browser is
downloaded). Errors are what a person would see in the console: uncaught exceptions and promise rejections
("pageerror"), console.error/assert calls, and loads that failed (a missing image, a URL outside the page).
The browser gets no network: every host resolves nowhere, so a reference outside the page fails at once.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

# keeps Chromium off the network and this machine's state (the closed network here stalls on its own calls)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
]
WIDTH, HEIGHT = 1280, 2400


@dataclass(frozen=True)
class Page:
    """What a rendered page showed: its visible text, its JavaScript errors, and where its screenshot is."""

    text: str
    console_errors: list[str]
    screenshot: Path

    @property
    def is_empty(self) -> bool:
        """True when the page shows no visible text."""
        return not self.text.strip()


def ci() -> bool:
    """True when `CI` is set (to anything but an empty/false value): a missing browser is then a failure."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


MISSING = "Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"

# Skips a test when Chromium is missing, except under CI, where open_page then fails with MISSING.
needs_chromium = pytest.mark.skipif(chromium_path() is None and not ci(), reason=MISSING)


def open_page(html: Path, screenshot: Path, timeout: float = 60) -> Page:
    """Render `html` in headless Chromium (no network, fresh profile); save a PNG screenshot to `screenshot`."""
    if not html.is_file():
        raise FileNotFoundError(f"no page to open: {html}")
    return _render(html.resolve().as_uri(), screenshot, timeout)


def open_url(url: str, screenshot: Path, wait_for_text: str, timeout: float = 90) -> Page:
    """Render a page served here (e.g. the MLflow UI on 127.0.0.1) once `wait_for_text` shows; screenshot it."""
    return _render(url, screenshot, timeout, wait_for_text, loopback=True)


def _render(
    url: str, screenshot: Path, timeout: float, wait_for_text: str | None = None, loopback: bool = False
) -> Page:
    from playwright.sync_api import sync_playwright

    chrome = chromium_path()
    if chrome is None:
        raise FileNotFoundError(MISSING)
    errors: list[str] = []
    with sync_playwright() as pw:
        # a served page may reach this machine's loopback (127.0.0.1), nothing else
        args = [a + ", EXCLUDE 127.0.0.1" if loopback and a.startswith("--host-resolver-rules") else a for a in ARGS]
        browser = pw.chromium.launch(executable_path=chrome, args=args, timeout=timeout * 1000)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.on("pageerror", lambda e: errors.append(f"Uncaught {e.name}: {e.message}"))
            page.on(
                "console",
                lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "assert") else None,
            )
            page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}: {r.failure}"))
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            if wait_for_text:  # an app that renders after load
                page.get_by_text(wait_for_text).first.wait_for(timeout=timeout * 1000)
            # two animation frames and a task after load: 0 ms timers, rejections and the first paint are in
            page.evaluate(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 0))))"
            )
            text = page.inner_text("body") if page.query_selector("body") else ""
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return Page(text=text, console_errors=errors, screenshot=screenshot)


def external_references(html_text: str) -> list[str]:
    """Each src/href/srcset/poster/data or CSS url()/@import value that is neither a data: URI nor an #anchor."""
    parser = _References()
    parser.feed(html_text)
    parser.close()
    return list(dict.fromkeys(v for v in parser.values if not _inside(v)))


# helpers


_URL_ATTRS = frozenset({"src", "href", "xlink:href", "poster", "data", "action", "background"})
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)|@import\s+(?:"([^"]*)"|'([^']*)')""", re.I)


def _inside(value: str) -> bool:
    """True for what the page holds itself: an empty value, a data: URI or an in-page #anchor."""
    value = value.strip()
    return not value or value.startswith("#") or value[:5].lower() == "data:"


def _css_urls(css: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _CSS_URL.finditer(css)]


def _srcset_urls(srcset: str) -> list[str]:
    """The URLs of a srcset, split as the HTML standard does (a data: URI keeps its commas)."""
    urls, pos = [], 0
    while pos < len(srcset):
        while pos < len(srcset) and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        end = pos
        while end < len(srcset) and not srcset[end].isspace():
            end += 1
        url = srcset[pos:end]
        if url.endswith(","):
            pos = end
        else:
            comma = srcset.find(",", end)  # skip the descriptors ("2x", "640w")
            pos = len(srcset) if comma < 0 else comma
        if url.rstrip(","):
            urls.append(url.rstrip(","))
    return urls


class _References(HTMLParser):
    """Collects every value by which the page points at something: URL attributes, srcset, inline CSS."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "style":
            self.in_style = True
        for name, value in attrs:
            if value is None:
                continue
            if name in _URL_ATTRS and not (name == "data" and tag != "object"):
                self.values.append(value)
            elif name in ("srcset", "imagesrcset"):
                self.values.extend(_srcset_urls(value))
            else:  # style="background: url(...)", SVG's fill="url(#grad)" and the like
                self.values.extend(_css_urls(value))

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.values.extend(_css_urls(data))
