"""tools/check_site.py's page-width check, on pages made here: it must fail on a page that
scrolls sideways on a phone, name the box to fix, and pass a page whose wide boxes scroll
inside themselves. Needs Chromium (Debian's `chromium`); skipped where there is none, as
on a machine that has not run .ci/run's browser step yet."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_site", ROOT / "tools" / "check_site.py")
check_site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_site)

CHROMIUM = next((c for c in (os.environ.get("CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if c and Path(c).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")

HEAD = ('<!DOCTYPE html><html><head><meta name="viewport" '
        'content="width=device-width, initial-scale=1"><style>body{margin:0 16px;'
        'font:16px sans-serif}</style></head><body><section id="s"><p>Some text.</p>')
PAGES = {
    # An unbreakable inline-code path, as chapter 2 had: 600 px of text on a 390 px phone.
    "wide": HEAD + '<p><code class="literal" style="white-space:nowrap">'
                   + "Segmentation/" * 8 + "</code></p></section></body></html>",
    # A fixed-width figure.
    "figure": HEAD + '<div class="figure" style="width:500px;height:10px"></div></section>',
    # Wider than a laptop's window.
    "desktop": HEAD + '<img id="big" style="width:1400px;height:10px" alt=""></section>',
    # Wide boxes that scroll inside themselves, and a closed drawer waiting off screen.
    "contained": HEAD + '<div style="overflow-x:auto"><table><tr><td style="min-width:900px">'
                        "wide</td></tr></table></div><pre style=\"overflow-x:auto\">"
                        + "x" * 200 + '</pre><nav style="position:fixed;left:100%;width:300px">'
                        "menu</nav></section></body></html>",
}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def phone(browser):
    context = browser.new_context(viewport=check_site.PHONE, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    yield context
    context.close()


def overflow(context, name: str, device: int | None = check_site.PHONE["width"]):
    page = context.new_page()
    page.set_content(PAGES[name])
    try:
        return check_site.page_overflow(page, device)
    finally:
        page.close()


def test_a_page_wider_than_the_phone_fails_and_names_the_box(phone):
    excess, message = overflow(phone, "wide")
    assert excess > 200, message
    assert "code.literal" in message and "in section #s" in message
    assert "Segmentation/Segmentation/" in message, "the box's text helps find it"


def test_a_fixed_width_figure_fails(phone):
    excess, message = overflow(phone, "figure")
    assert excess == 500 + 16 - 390, message
    assert "div.figure (500 px wide" in message


def test_boxes_that_scroll_inside_themselves_pass(phone):
    assert overflow(phone, "contained") == (0, "")


def test_a_page_wider_than_a_laptop_fails_at_desktop_width(browser):
    context = browser.new_context(viewport=check_site.DESKTOP)
    try:
        excess, message = overflow(context, "desktop", device=None)
        assert overflow(context, "figure", device=None) == (0, "")
    finally:
        context.close()
    assert excess >= 1400 + 16 - check_site.DESKTOP["width"], message
    assert "img#big (1400 px wide" in message
