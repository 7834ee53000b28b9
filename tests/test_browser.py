"""The headless-Chromium harness behind the report's acceptance test, on pages written here.

Browser tests skip when Chromium is missing, but fail under CI (`.ci/run` installs Debian's chromium).
"""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import pytest
from browser import Page, external_references, needs_chromium, open_page

# helpers


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, made by hand so the test needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# A figure embedded as the report embeds them: a data: URI.
PNG = base64.b64encode(png(64, 32, (200, 40, 40))).decode()


def render(tmp_path: Path, name: str, body: str) -> Page:
    """Write an HTML page around `body` and open it; the screenshot lands beside it."""
    page = tmp_path / f"{name}.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset=utf-8><title>{name}</title></head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return open_page(page, tmp_path / f"{name}.png", timeout=30)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# browser


@needs_chromium
def test_normal_page_renders_text_and_a_screenshot(tmp_path: Path) -> None:
    body = (
        f"<h1>Comparison report</h1><p style='display:none'>hidden</p>"
        f"<img alt=fig src='data:image/png;base64,{PNG}'>"
        "<div id=out></div><script>document.getElementById('out').textContent = 'filled by script';</script>"
    )
    page = render(tmp_path, "normal", body)
    assert page.console_errors == []
    assert not page.is_empty
    assert "Comparison report" in page.text and "filled by script" in page.text  # the DOM after scripts ran
    assert "hidden" not in page.text  # visible text only
    assert png_size(page.screenshot) == (1280, 2400)
    assert page.screenshot.stat().st_size > 5_000  # the heading drawn, not a blank or truncated file


@needs_chromium
def test_script_errors_are_reported(tmp_path: Path) -> None:
    body = (
        "<h1>Broken</h1><script>throw new Error('inline boom');</script>"
        "<img src='data:image/png;base64," + PNG + "' onload='notDefinedAnywhere()'>"
        "<script>Promise.reject(new Error('rejected')); console.error('logged error');"
        " console.log('just a log line')</script>"
    )
    page = render(tmp_path, "throws", body)
    errors = "\n".join(page.console_errors)
    assert "Uncaught Error: inline boom" in errors
    assert "ReferenceError: notDefinedAnywhere is not defined" in errors  # thrown in an onload handler
    assert "rejected" in errors and "logged error" in errors
    assert "just a log line" not in errors  # console.log is not an error
    assert page.text.strip() == "Broken" and page.screenshot.is_file()


@needs_chromium
def test_empty_page_is_detected(tmp_path: Path) -> None:
    page = render(tmp_path, "empty", "<div>  </div><script>/* renders nothing */</script><style>p{}</style>")
    assert page.is_empty and page.console_errors == []
    assert page.screenshot.is_file()


@needs_chromium
def test_external_reference_fails_without_network(tmp_path: Path) -> None:
    html = "<h1>Leaky</h1><img src='https://example.com/fig.png'><img src='fig.png'>"
    page = render(tmp_path, "external", html)
    assert external_references(html) == ["https://example.com/fig.png", "fig.png"]
    errors = "\n".join(page.console_errors)
    assert "https://example.com/fig.png" in errors and "ERR_NAME_NOT_RESOLVED" in errors  # no network reached
    assert "fig.png" in errors and "ERR_FILE_NOT_FOUND" in errors


@needs_chromium
def test_missing_page_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no page to open"):
        open_page(tmp_path / "nowhere.html", tmp_path / "nowhere.png")


# external_references (pure)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (f"<img src='data:image/png;base64,{PNG}'><a href='#results'>r</a><img src=''>", []),
        ("<IMG SRC=' DATA:image/svg+xml;utf8,<svg/>'><use href='#p1'/>", []),
        ("<script src='https://cdn.example.com/plotly.js'></script>", ["https://cdn.example.com/plotly.js"]),
        (
            "<link rel=stylesheet href='style.css'><a href='https://optuna.org'>o</a>",
            ["style.css", "https://optuna.org"],
        ),
        ("<img src='figs/loss.png'><img src='figs/loss.png'>", ["figs/loss.png"]),
        ("<img srcset='data:image/png;base64,AA,BB 1x, big.png 2x,small.png'>", ["big.png", "small.png"]),
        (
            "<style>body{background:url('bg.png')} i{background:url(data:image/png;base64,AA==)}"
            ' @import "x.css";</style>',
            ["bg.png", "x.css"],
        ),
        ("<div style='background-image: url( &quot;q.png&quot; )'></div>", ["q.png"]),
        ("<svg><rect fill='url(#grad)' clip-path='url(#c1)'/><image xlink:href='fig.svg'/></svg>", ["fig.svg"]),
        ("<object data='o.pdf'></object><div data-src='x.png' data='not-a-url'></div>", ["o.pdf"]),
        ("<video poster='p.jpg'></video><iframe src='file:///etc/passwd'></iframe>", ["p.jpg", "file:///etc/passwd"]),
        ("<p>url(in-text.png) is prose, not a reference</p>", []),
    ],
)
def test_external_references(html: str, expected: list[str]) -> None:
    assert external_references(html) == expected
