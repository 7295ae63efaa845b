#!/usr/bin/env python3
"""Open the built book in headless Chromium, page by page, and fail on what a reader would see.

Usage (after `jupyter-book build .`):

    python3 tools/check_site.py [--site _build/html] [--mathjax DIR] [--chapter PAGE]

It serves the site on 127.0.0.1 (a local http.server thread), opens every HTML page
in it and fails on:

- a console error or an uncaught JavaScript exception;
- an image that did not load (``naturalWidth == 0``) or a site file that answers 4xx/5xx;
- an internal link (``href``/``src`` of ``a``, ``img``, ``link``, ``script``,
  ``source``) whose file is not in the site, or whose ``#anchor`` is not an id on
  the target page;
- math left raw: a page with math must have MathJax's ``mjx-container`` elements,
  no ``mjx-merror`` and no ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` left in its prose;
- a page that scrolls sideways, on a phone (390 x 844, every page) or at desktop
  width (1280 x 900): the ``scrollWidth`` of ``html`` and ``body`` (and on the phone
  the layout viewport, which its browser widens to fit a wide page) must not exceed
  the viewport's width. The message names the outermost boxes that stick out (tag,
  id, classes, width, section, text), the ones to fix. A box that scrolls inside
  itself (a wide table or code cell) is fine; one that pushes the page sideways is not;
- a sidebar toggle that does nothing: at phone width (390 x 844) the menu button
  must open the chapter list and the "On this page" button the page's contents; at
  desktop width (1280 x 900) the menu button must hide the chapter list.

It lists (and with ``--strict-layout`` fails on) display equations and code cells
wider than the text column at desktop width (1280 px), which a reader must scroll.

Nothing leaves the machine. MathJax is loaded by the pages from a CDN; the check
answers those requests from a local copy (npm's ``mathjax`` 3 package; ``--mathjax``
or ``SEGBOOK_MATHJAX_DIR`` names the unpacked folder that holds ``es5/``). Images
from other hosts (the Colab badge) are answered with a stand-in and not checked;
external links are never followed. Any other request to another host fails the check.

Screenshots of the landing page and one chapter, at desktop and phone width, are
written to ``_build/screenshots/``.

Chromium comes from the system (Debian's ``chromium`` package; ``CHROMIUM`` names
another binary) and is driven by Playwright's Python package.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import mimetypes
import os
import re
import shutil
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_CDN = re.compile(r"^https://cdn\.jsdelivr\.net/npm/mathjax@3[^/]*/(?P<path>[^?#]*)")
DESKTOP = {"width": 1280, "height": 900}  # a common laptop; the layout's narrowest desktop case
PHONE = {"width": 390, "height": 844}
NAV_LINKS = "nav.bd-docs-nav a.reference.internal, .bd-links a.reference"  # the chapter list
TOC_LINKS = ".bd-toc-nav a, .page-toc a"  # the page's contents
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
PLACEHOLDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20">'
    '<rect width="117" height="20" rx="3" fill="#bbb"/>'
    '<text x="58" y="14" font-size="11" text-anchor="middle" fill="#fff" '
    'font-family="sans-serif">external image</text></svg>'
)

# Runs in the page: links, images, math state, ids. Returns plain JSON.
INSPECT_JS = r"""
async () => {
  // Images: force lazy ones to load, then wait (bounded) for all of them.
  const imgs = Array.from(document.images);
  imgs.forEach(img => { if (img.loading === "lazy") img.loading = "eager"; });
  await Promise.race([
    Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); }))),
    new Promise(r => setTimeout(r, 10000)),
  ]);
  const brokenImages = imgs.filter(img => !(img.complete && img.naturalWidth > 0))
                           .map(img => img.currentSrc || img.src || img.outerHTML.slice(0, 120));

  // Math: wait for MathJax when the page has math.
  const mathNodes = document.querySelectorAll(".math, span.math, div.math");
  let mathjax = "none";
  if (mathNodes.length) {
    const t0 = Date.now();
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 15000)
      await new Promise(r => setTimeout(r, 100));
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      await Promise.race([MathJax.startup.promise, new Promise(r => setTimeout(r, 20000))]);
      mathjax = "loaded";
    } else {
      mathjax = "missing";
    }
  }
  const main = document.querySelector("main") || document.body;
  const prose = main.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight, " +
                         ".output, .cell_output, .MathJax_Preview").forEach(n => n.remove());
  const text = prose.textContent;
  const raw = [];
  for (const re of [/\$\$[\s\S]+?\$\$/g, /(^|[^\\\w])\$[^\s$][^$\n]*?\$/g, /\\\([\s\S]+?\\\)/g, /\\\[[\s\S]+?\\\]/g]) {
    for (const m of text.matchAll(re)) raw.push(m[0].trim().slice(0, 80));
  }
  const merrors = Array.from(document.querySelectorAll("mjx-merror"))
                       .map(n => (n.getAttribute("data-mjx-error") || n.textContent).slice(0, 120));

  // Links and resources, as the browser resolved them.
  const refs = [];
  const add = (kind, el, attr) => {
    const v = el.getAttribute(attr);
    if (v === null || v === "") return;
    refs.push({kind, raw: v, url: el[attr] || v});
  };
  document.querySelectorAll("a[href]").forEach(el => add("a", el, "href"));
  document.querySelectorAll("img[src]").forEach(el => add("img", el, "src"));
  document.querySelectorAll("link[href]").forEach(el => add("link", el, "href"));
  document.querySelectorAll("script[src]").forEach(el => add("script", el, "src"));
  document.querySelectorAll("source[src]").forEach(el => add("source", el, "src"));
  // Layout: display equations and code cells wider than their box (a scroll bar).
  const overflow = [];
  document.querySelectorAll('mjx-container[display="true"]').forEach(el => {
    if (el.scrollWidth > el.clientWidth + 1)
      overflow.push(`display equation ${el.scrollWidth} px wide in a ${el.clientWidth} px column: ` +
                    (el.querySelector("mjx-assistive-mml, math")?.textContent || "").slice(0, 60));
  });
  document.querySelectorAll(".cell_input pre").forEach(el => {
    if (el.scrollWidth > el.clientWidth + 1)
      overflow.push(`code cell scrolls (${el.scrollWidth} px in ${el.clientWidth} px): ` +
                    el.textContent.split("\n").reduce((a, b) => b.length > a.length ? b : a, "").slice(0, 60));
  });
  const ids = Array.from(document.querySelectorAll("[id]"), el => el.id)
    .concat(Array.from(document.querySelectorAll("a[name]"), el => el.getAttribute("name")));
  return {brokenImages, mathCount: mathNodes.length, mathjax,
          mjxCount: document.querySelectorAll("mjx-container").length,
          raw, merrors, refs, ids, overflow};
}
"""

# Runs in the page: how far the document is wider than the viewport, and the elements
# that make it so. The viewport is html's clientWidth (the window less its scroll bar),
# and at most `device` px when given: a phone's browser widens its layout viewport to
# fit a wide page, which window.innerWidth then reports. An element counts when its
# right edge is past the viewport, no ancestor clips or scrolls it sideways (overflow-x
# other than visible), it is not fixed (a fixed box does not widen the document; the
# closed sidebars wait off screen that way) and its parent does not stick out too (the
# outermost such box is the one to fix). Returns plain JSON.
PAGE_OVERFLOW_JS = r"""
(device) => {
  const html = document.documentElement, body = document.body;
  const width = device ? Math.min(html.clientWidth, device) : html.clientWidth;
  const docWidth = Math.max(html.scrollWidth, body ? body.scrollWidth : 0,
                            device ? window.innerWidth : 0);
  const result = {width, docWidth, htmlScrollWidth: html.scrollWidth,
                  bodyScrollWidth: body ? body.scrollWidth : 0,
                  innerWidth: window.innerWidth, offenders: []};
  if (docWidth <= width) return result;
  const edge = width + 0.5;
  const sticksOut = new Map();  // element -> its box, for those that widen the page
  const contained = el => {     // an ancestor clips or scrolls it sideways, or it is fixed
    for (let a = el; a && a !== body && a !== html; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.position === "fixed") return true;
      if (a !== el && cs.overflowX !== "visible") return true;
    }
    return false;
  };
  const describe = el => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    if (el.classList.length) s += "." + Array.from(el.classList).join(".");
    return s;
  };
  for (const el of body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    const right = r.right + window.scrollX;
    if (r.width === 0 || right <= edge) continue;
    if (contained(el)) continue;
    sticksOut.set(el, {right, width: r.width});
  }
  for (const [el, box] of sticksOut) {
    const parent = el.parentElement;
    if (parent && sticksOut.has(parent)) continue;  // report the outermost box only
    const section = el.closest("section[id]");
    const text = el.textContent || el.getAttribute("src") || "";
    result.offenders.push({
      element: describe(el), width: Math.round(box.width), right: Math.round(box.right),
      section: section ? section.id : "", text: text.replace(/\s+/g, " ").trim().slice(0, 60),
    });
  }
  result.offenders.sort((a, b) => b.right - a.right || b.width - a.width);
  return result;
}
"""

# Runs in the page at phone width: is this element on screen and visible?
VISIBLE_JS = r"""
(sel) => {
  const out = [];
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    const onScreen = r.width > 0 && r.height > 0 && r.right > 0 && r.bottom > 0 &&
                     r.left < innerWidth && r.top < innerHeight;
    if (onScreen && s.visibility !== "hidden" && s.display !== "none" && el.checkVisibility())
      out.push(el.textContent.trim().slice(0, 60));
  }
  return out;
}
"""


class IdParser(HTMLParser):
    """Ids (and a[name]) of a page that the check did not open in the browser."""

    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the check's output readable
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def find_chromium() -> str:
    candidates = [os.environ.get("CHROMIUM"), shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    sys.exit("check_site: no Chromium found. Install Debian's package "
             "(`apt-get install -y chromium`) or set CHROMIUM=/path/to/chrome.")


def find_mathjax(arg: str | None) -> Path:
    cache = Path(os.environ.get("SEGBOOK_CI_CACHE", Path.home() / ".cache" / "segbook-ci"))
    candidates = [arg, os.environ.get("SEGBOOK_MATHJAX_DIR"),
                  *map(str, sorted(cache.glob("mathjax*/package"), reverse=True))]
    for c in candidates:
        if c and (Path(c) / "es5" / "tex-mml-chtml.js").is_file():
            return Path(c)
    sys.exit("check_site: no local MathJax 3 found (a folder holding es5/tex-mml-chtml.js). "
             "Get it with `npm pack mathjax@3` and unpack it, then pass --mathjax DIR or set "
             "SEGBOOK_MATHJAX_DIR; .ci/run does this into ~/.cache/segbook-ci/mathjax-VERSION.")


REFRESH = re.compile(r'<meta[^>]+http-equiv="refresh"[^>]+url=([^"]+)"', re.I)


def site_pages(site: Path) -> tuple[list[str], dict[str, str]]:
    """Pages of the site, and its redirect stubs (Jupyter Book's index.html) with their targets."""
    pages, redirects = [], {}
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site)
        if rel.parts[0] in SKIP_DIRS:
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:2000]
        m = REFRESH.search(head)
        if m:
            redirects[rel.as_posix()] = (rel.parent / m.group(1).strip()).as_posix()
        else:
            pages.append(rel.as_posix())
    return pages, redirects


def resolve_local(site: Path, url: str) -> tuple[Path | None, str]:
    """The file in the site a same-origin URL points to (None if missing), and its fragment."""
    parts = urlsplit(url)
    target = site / unquote(parts.path).lstrip("/")
    if target.is_dir():
        target = target / "index.html"
    try:
        target.resolve().relative_to(site.resolve())
    except ValueError:
        return None, parts.fragment
    return (target if target.is_file() else None), unquote(parts.fragment)


def check(site: Path, mathjax_dir: Path, chapter: str | None, shots: Path,
          verbose: bool = False, strict_layout: bool = False) -> list[str]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    pages, redirects = site_pages(site)
    failures: list[str] = [f"{src} redirects to {dst}, which is not a page of the site"
                           for src, dst in redirects.items() if dst not in pages]
    if failures:
        return failures
    landing = redirects.get("index.html", "index.html")
    server, base = serve(site)
    notices: list[str] = []  # layout at desktop width; failures only with strict_layout
    external_seen: set[str] = set()
    stub_images: set[str] = set()

    def route(route, request):
        url = request.url
        if url.startswith(base + "/") or url == base:
            return route.continue_()
        m = MATHJAX_CDN.match(url)
        if m:
            local = mathjax_dir / m.group("path")
            if local.is_file():
                ctype = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
                return route.fulfill(path=str(local), content_type=ctype)
            failures.append(f"MathJax asks for {url}, which the local copy lacks ({local})")
            return route.abort()
        if url.startswith(("data:", "blob:")):
            return route.continue_()
        if request.resource_type == "image":
            stub_images.add(url)
            return route.fulfill(body=PLACEHOLDER_SVG, content_type="image/svg+xml")
        external_seen.add(f"{request.resource_type} {url}")
        return route.abort()

    ids_by_page: dict[str, set[str]] = {}
    refs_by_page: dict[str, list[dict]] = {}
    pages_with_math = 0
    t0 = time.perf_counter()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        except PlaywrightError as e:
            server.shutdown()
            return [f"Chromium did not start: {e}".splitlines()[0]]
        desktop = browser.new_context(viewport=DESKTOP)
        desktop.route("**/*", route)
        events: list[str] = []

        def open_page(context, url):
            page = context.new_page()
            page.on("console", lambda m: events.append(
                f"console {m.type}: {m.text} ({m.location.get('url', '')}:{m.location.get('lineNumber', '')})")
                if m.type == "error" else None)
            page.on("pageerror", lambda e: events.append(f"uncaught exception: {e}"))
            page.on("response", lambda r: events.append(f"HTTP {r.status} for {r.url}")
                    if r.url.startswith(base) and r.status >= 400 else None)
            page.goto(url, wait_until="load", timeout=30000)
            return page

        for rel in pages:
            events.clear()
            t_page = time.perf_counter()
            try:
                page = open_page(desktop, f"{base}/{rel}")
                info = page.evaluate(INSPECT_JS)
                excess, message = page_overflow(page)
                page.wait_for_timeout(50)  # let late console messages arrive
                page.close()
            except PlaywrightError as e:
                failures.append(f"{rel}: the page did not load: {str(e).splitlines()[0]}")
                continue
            if verbose:
                print(f"  {rel}: {time.perf_counter() - t_page:.1f} s")
            failures += [f"{rel}: {e}" for e in events]
            if excess:
                failures.append(f"{rel} ({DESKTOP['width']}x{DESKTOP['height']}): {message}")
            failures += [f"{rel}: image did not load (naturalWidth 0): {src}"
                         for src in info["brokenImages"]]
            if info["mathCount"]:
                pages_with_math += 1
                if info["mathjax"] != "loaded":
                    failures.append(f"{rel}: {info['mathCount']} math elements but MathJax never started")
                elif info["mjxCount"] < info["mathCount"]:
                    failures.append(f"{rel}: MathJax rendered {info['mjxCount']} of "
                                    f"{info['mathCount']} math elements")
                failures += [f"{rel}: MathJax error: {e}" for e in info["merrors"]]
            failures += [f"{rel}: raw math left in the text: {r!r}" for r in info["raw"]]
            notices += [f"{rel}: {o}" for o in info["overflow"]]
            ids_by_page[rel] = set(info["ids"])
            refs_by_page[rel] = info["refs"]

        if chapter is None:
            chapter = next((p_ for p_ in pages if p_.startswith("chapters/")), pages[0])
        shots.mkdir(parents=True, exist_ok=True)
        for name, rel in (("landing", landing), ("chapter", chapter)):
            events.clear()
            page = open_page(desktop, f"{base}/{rel}")
            page.evaluate(INSPECT_JS)
            page.screenshot(path=str(shots / f"{name}-desktop.png"))
            if rel == chapter:  # the menu button hides and shows the chapter list
                failures += sidebar_toggle(page, f"{rel} ({DESKTOP['width']}x{DESKTOP['height']})",
                                           "primary", "Toggle primary sidebar", NAV_LINKS,
                                           shots / f"{name}-desktop-menu.png")
            failures += [f"{rel} (desktop): {e}" for e in events]
            page.close()
        desktop.close()

        # Phone width: no page may scroll sideways; the menu buttons must open their sidebars.
        phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True,
                                    device_scale_factor=2)
        phone.route("**/*", route)
        t_phone = time.perf_counter()
        for rel in pages:
            events.clear()
            where = f"{rel} (phone, {PHONE['width']}x{PHONE['height']})"
            try:
                page = open_page(phone, f"{base}/{rel}")
                page.evaluate(INSPECT_JS)  # images and math laid out, as a reader sees them
                excess, message = page_overflow(page, PHONE["width"])
                page.close()
            except PlaywrightError as e:
                failures.append(f"{where}: the page did not load: {str(e).splitlines()[0]}")
                continue
            if excess:
                failures.append(f"{where}: {message}")
            failures += [f"{where}: {e}" for e in events]
            if verbose:
                print(f"  {rel} at {PHONE['width']} px: {excess} px wider than the screen")
        if verbose:
            print(f"  phone-width pass: {time.perf_counter() - t_phone:.1f} s")
        for name, rel in (("landing", landing), ("chapter", chapter)):
            events.clear()
            page = open_page(phone, f"{base}/{rel}")
            page.evaluate(INSPECT_JS)
            page.screenshot(path=str(shots / f"{name}-phone.png"))
            where = f"{rel} (phone, {PHONE['width']}x{PHONE['height']})"
            if page.evaluate(VISIBLE_JS, NAV_LINKS):
                failures.append(f"{where}: the chapter list covers the page before any click")
            failures += sidebar_toggle(page, where, "primary", "Site navigation", NAV_LINKS,
                                       shots / f"{name}-phone-menu.png")
            if rel != landing:
                failures += sidebar_toggle(page, where, "secondary", "On this page", TOC_LINKS,
                                           shots / f"{name}-phone-toc.png")
            failures += [f"{rel} (phone): {e}" for e in events]
            page.close()
        phone.close()
        browser.close()
    server.shutdown()

    # Internal links and resources: the file exists, the anchor is an id there.
    static_ids: dict[Path, set[str]] = {}
    n_refs = n_external = 0
    for rel, refs in refs_by_page.items():
        for ref in refs:
            url = ref["url"]
            if url.startswith(("mailto:", "javascript:", "data:", "tel:")):
                continue
            if not url.startswith(base):
                n_external += 1
                continue
            n_refs += 1
            target, fragment = resolve_local(site, url)
            if target is None:
                failures.append(f"{rel}: broken {ref['kind']} link {ref['raw']!r} "
                                "(no such file in the site)")
                continue
            if not fragment or ref["kind"] != "a" or target.suffix != ".html":
                continue
            trel = target.relative_to(site).as_posix()
            ids = ids_by_page.get(trel)
            if ids is None:
                if target not in static_ids:
                    parser = IdParser()
                    parser.feed(target.read_text(encoding="utf-8", errors="replace"))
                    static_ids[target] = parser.ids
                ids = static_ids[target]
            if fragment not in ids:
                failures.append(f"{rel}: link {ref['raw']!r} points to #{fragment}, "
                                f"which {trel} does not have")
    failures += [f"request to another host at page load (blocked; serve it locally): {e}"
                 for e in sorted(external_seen)]
    print(f"check_site: {len(pages)} pages (at {DESKTOP['width']} and {PHONE['width']} px) "
          f"and {len(redirects)} redirect(s), "
          f"{n_refs} internal links/resources checked, "
          f"{n_external} external links not followed, {pages_with_math} pages with math, "
          f"{len(stub_images)} external images stubbed; {time.perf_counter() - t0:.1f} s")
    print(f"check_site: screenshots in {shots}")
    if notices:
        print(f"check_site: {len(notices)} box(es) wider than the text column at "
              f"{DESKTOP['width']} px{'' if strict_layout else ' (notice; --strict-layout fails on them)'}:")
        for n in notices:
            print("  ~ " + n)
        if strict_layout:
            failures += notices
    return sorted(dict.fromkeys(failures))


def page_overflow(page, device: int | None = None, shown: int = 3) -> tuple[int, str]:
    """How many px the open page is wider than its viewport (0 if it fits), and what sticks out.

    `device`: the device's width in CSS px (a phone), which the viewport cannot exceed.
    """
    info = page.evaluate(PAGE_OVERFLOW_JS, device)
    width = info["width"]
    excess = info["docWidth"] - width
    if excess <= 0:
        return 0, ""
    boxes = [f"{o['element']} ({o['width']} px wide, right edge at {o['right']} px"
             + (f", in section #{o['section']}" if o["section"] else "")
             + (f": {o['text']!r}" if o["text"] else "") + ")"
             for o in info["offenders"][:shown]]
    more = len(info["offenders"]) - shown
    what = "; ".join(boxes) + (f"; and {more} more" if more > 0 else "") if boxes else \
        "no single element found (look for a negative margin or a transform)"
    return excess, (f"the page is {info['docWidth']} px wide in a {width} px viewport, "
                    f"{excess} px of sideways scrolling (scrollWidth: html "
                    f"{info['htmlScrollWidth']}, body {info['bodyScrollWidth']}; "
                    f"window.innerWidth {info['innerWidth']}); wider than the screen: {what}")


def sidebar_toggle(page, where: str, which: str, label: str, links: str, shot: Path) -> list[str]:
    """Click the visible `which` sidebar toggle; its links must appear (or, if shown, disappear)."""
    page.reload(wait_until="load")
    before = page.evaluate(VISIBLE_JS, links)
    buttons = page.locator(f"button.{which}-toggle:visible")
    if buttons.count() == 0:
        return [f"{where}: no visible {which} sidebar toggle ({label!r})"]
    buttons.first.click()
    page.wait_for_timeout(400)  # the sidebar's open/close animation
    after = page.evaluate(VISIBLE_JS, links)
    page.screenshot(path=str(shot))
    page.keyboard.press("Escape")
    if bool(before) == bool(after):
        state = "shown" if after else "hidden"
        return [f"{where}: the {which} sidebar toggle ({label!r}) was clicked but did nothing "
                f"(its links stayed {state})"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default=str(ROOT / "_build" / "html"), help="the built site")
    parser.add_argument("--mathjax", help="unpacked npm mathjax@3 package (holds es5/)")
    parser.add_argument("--chapter", help="page to screenshot, relative to the site "
                        "(default: the first chapter)")
    parser.add_argument("--screenshots", default=str(ROOT / "_build" / "screenshots"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print each page's time")
    parser.add_argument("--strict-layout", action="store_true",
                        help="fail when a display equation or code cell is wider than the text "
                             f"column at {DESKTOP['width']} px (otherwise listed as a notice)")
    args = parser.parse_args()
    site = Path(args.site)
    if not (site / "index.html").is_file():
        print(f"check_site: {site}/index.html not found; build the book first "
              "(jupyter-book build .)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ModuleNotFoundError:
        print("check_site: Playwright is missing: python3 -m pip install -r requirements.txt",
              file=sys.stderr)
        return 2
    from playwright.sync_api import Error as PlaywrightError

    try:
        failures = check(site, find_mathjax(args.mathjax), args.chapter, Path(args.screenshots),
                         args.verbose, args.strict_layout)
    except PlaywrightError as e:
        print(f"check_site: the browser session failed: {e}", file=sys.stderr)
        return 1
    if failures:
        print(f"check_site: FAILED, {len(failures)} problem(s):", file=sys.stderr)
        for f in failures:
            print("  - " + f, file=sys.stderr)
        return 1
    print("check_site: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
