"""Open a self-contained HTML page in headless Chromium: its visible text, JavaScript errors and a screenshot.

Only the Chromium binary is used (Debian's `chromium`; `.ci/run` installs it), driven over the DevTools
protocol on `--remote-debugging-pipe` with the standard library. The pipe, not `--enable-logging=stderr`,
because the log (tried: it does show an inline `throw` and an onload ReferenceError as "Uncaught ...")
prints console.log and console.error alike, with no level, so a page's own log line can pass for an
uncaught error, and it does not show failed loads (a missing image). Errors thrown later than a frame
after the load event (a 500 ms timer) are missed either way.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

# Each flag keeps Chromium off the network or off this machine's state: the background-networking ones
# because the closed network here refuses (and stalls on) Chromium's own connections; the resolver rule
# so a page's http(s) reference fails at once instead of reaching anything.
FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
    "--window-size=1280,2400",
    "--remote-debugging-pipe",
)
WIDTH, HEIGHT = 1280, 2400

# Waits for two animation frames and a task after the load event, so timers of 0 ms, promise rejections
# and the first paint have happened before the text and the screenshot are taken.
_SETTLE_JS = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 0))))"
_TEXT_JS = "document.body ? document.body.innerText : ''"


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
    chrome = chromium_path()
    if chrome is None:
        raise FileNotFoundError(MISSING)
    if not html.is_file():
        raise FileNotFoundError(f"no page to open: {html}")
    deadline = time.monotonic() + timeout
    to_read, to_chrome = os.pipe()
    from_chrome, to_write = os.pipe()
    to_read, to_write = _high_fd(to_read), _high_fd(to_write)
    with tempfile.TemporaryDirectory(prefix="cvae-chromium-") as tmp:
        log = Path(tmp) / "stderr.log"  # a file, not a pipe: Chromium's chatter cannot fill it and stall it
        # Chromium reads commands on fd 3 and writes replies on fd 4; the shell puts the pipe ends there.
        # bash, not sh: dash refuses fd numbers above 9.
        redirect = f"3<&{to_read} 4>&{to_write} {to_read}<&- {to_write}>&-"
        command = ["/bin/bash", "-c", f'exec "$0" "$@" {redirect}', chrome, *FLAGS,
                   f"--user-data-dir={tmp}/profile", "about:blank"]
        with log.open("wb") as stderr:
            proc = subprocess.Popen(command, pass_fds=(to_read, to_write), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        os.close(to_read)
        os.close(to_write)
        try:
            pipe = _Pipe(to_chrome, from_chrome, deadline)
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session)
            pipe.call("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                      deviceScaleFactor=1, mobile=False)
            pipe.events.clear()  # about:blank's own events
            navigated = pipe.call("Page.navigate", session, url=html.resolve().as_uri())
            if navigated.get("errorText"):
                raise RuntimeError(f"could not open the page: {navigated['errorText']}")
            pipe.wait_for("Page.loadEventFired")
            pipe.call("Runtime.evaluate", session, expression=_SETTLE_JS, awaitPromise=True)
            text = pipe.call("Runtime.evaluate", session, expression=_TEXT_JS, returnByValue=True)
            shot = pipe.call("Page.captureScreenshot", session, format="png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            pipe.close_browser()
            return Page(text=text["result"].get("value", ""), console_errors=_errors(pipe.events),
                        screenshot=screenshot)
        except (TimeoutError, RuntimeError) as err:
            _stop(proc)
            tail = log.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"Chromium on {html}: {err}; its stderr ends:\n{tail}") from err
        finally:
            _stop(proc)
            os.close(to_chrome)
            os.close(from_chrome)


def external_references(html_text: str) -> list[str]:
    """Each src/href/srcset/poster/data or CSS url()/@import value that is neither a data: URI nor an #anchor."""
    parser = _References()
    parser.feed(html_text)
    parser.close()
    return list(dict.fromkeys(v for v in parser.values if not _inside(v)))


# helpers


class _Pipe:
    """The DevTools protocol over a pair of pipes: NUL-terminated JSON messages, one command at a time."""

    def __init__(self, to_chrome: int, from_chrome: int, deadline: float) -> None:
        self.to_chrome, self.from_chrome, self.deadline = to_chrome, from_chrome, deadline
        self.ids = itertools.count(1)
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_chrome], [], [], left)
            if ready:
                chunk = os.read(self.from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in order."""
        id_ = next(self.ids)
        message: dict[str, Any] = {"id": id_, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == id_:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        """Read until an event named `method` arrives (or one already did)."""
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read())

    def close_browser(self) -> None:
        """Ask Chromium to quit and give it a moment; whatever is left is killed afterwards."""
        os.write(self.to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            while self._read().get("id") != 0:
                pass
        except (TimeoutError, RuntimeError):
            pass  # the pipe closes as it quits


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of fd numbered 10 or above, so the redirections onto 3 and 4 cannot clobber it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill Chromium's whole process group (its own session: renderers and helpers go too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Uncaught exceptions, console.error/assert calls and browser error entries (failed loads), in order."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            described = details.get("exception", {}).get("description", "").split("\n")[0]
            where = f" ({details.get('url', '')}:{details.get('lineNumber', 0) + 1})" if details.get("url") else ""
            errors.append(f"{details.get('text', 'Uncaught')} {described}".strip() + where)
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
    return errors


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
