#!/usr/bin/env python3
"""Set the book's repository address in one place and carry it everywhere it appears.

``_config.yml``'s ``repository.url`` (and ``repository.branch``) is the source of
truth. The site's repository and launch buttons read it directly; this script
writes it into the places that cannot read it:

- every chapter's Colab badge (first markdown cell):
  ``https://colab.research.google.com/github/OWNER/NAME/blob/BRANCH/chapters/NN_x.ipynb``
- every chapter's install line (first code cell):
  ``%pip install -q "segbook @ git+https://github.com/OWNER/NAME"``
- README.md and book/*.md, wherever they name the repository or a Colab link
  (``github.com/OWNER/NAME``, the docs' placeholder, is left alone).

Usage, from anywhere:

    python3 tools/set_repository.py https://github.com/OWNER/NAME [--branch main]
    python3 tools/set_repository.py            # re-apply _config.yml's address
    python3 tools/set_repository.py --check    # exit 1 and list what disagrees

Only files whose text changes are written. Standard library only (it edits
``_config.yml`` as text, so its comments stay).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GITHUB = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(\.git)?/?$")
# A Colab link to a notebook on GitHub, whatever repository/branch it names now.
COLAB = re.compile(r"https://colab\.research\.google\.com/github/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+"
                   r"/blob/[A-Za-z0-9_./-]+?/(?P<path>[A-Za-z0-9_./-]+\.ipynb)")
# pip's "name @ git+URL" (optionally @ref) for segbook.
INSTALL = re.compile(r"segbook @ git\+https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?(?:\.git)?"
                     r"(?P<ref>@[A-Za-z0-9_./-]+)?(?=[\"'\s])")
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"


def read_config(root: Path = ROOT) -> tuple[str, str]:
    """(url, branch) from _config.yml's `repository:` block (read as text, no YAML needed)."""
    text = (root / "_config.yml").read_text(encoding="utf-8")
    block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", text, re.M)
    if not block:
        raise SystemExit(f"{root / '_config.yml'} has no `repository:` block; add one with `url:`.")
    fields = dict(re.findall(r"^[ \t]+(url|branch):[ \t]*[\"']?([^\"'\s#]+)", block.group(1), re.M))
    if "url" not in fields:
        raise SystemExit(f"{root / '_config.yml'}: `repository:` has no `url:`.")
    return fields["url"].rstrip("/"), fields.get("branch", "main")


def write_config(url: str, branch: str, root: Path = ROOT) -> bool:
    path = root / "_config.yml"
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition("\nrepository:")
    if not sep:
        raise SystemExit(f"{path} has no `repository:` block.")
    block_end = re.search(r"^\S", rest[1:], re.M)
    block, tail = (rest, "") if block_end is None else (rest[: block_end.start() + 1],
                                                       rest[block_end.start() + 1:])
    block = re.sub(r"^([ \t]+url:[ \t]*).*$", lambda m: m.group(1) + url, block, count=1, flags=re.M)
    if re.search(r"^[ \t]+branch:", block, re.M):
        block = re.sub(r"^([ \t]+branch:[ \t]*).*$", lambda m: m.group(1) + branch, block,
                       count=1, flags=re.M)
    new = head + sep + block + tail
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def parse_github(url: str) -> tuple[str, str]:
    m = GITHUB.match(url)
    if not m:
        raise SystemExit(f"{url!r} is not a GitHub repository address (https://github.com/OWNER/NAME); "
                         "Colab opens notebooks from GitHub, so the badges need one.")
    return m.group("owner"), m.group("name")


def colab_url(url: str, branch: str, notebook: str) -> str:
    owner, name = parse_github(url)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/{notebook}"


def install_spec(url: str) -> str:
    return f"segbook @ git+{url}"


PLACEHOLDER = "github.com/OWNER/NAME"  # how the docs write "your repository"; left alone


def rewrite_text(text: str, url: str, branch: str, old_urls: tuple[str, ...] = ()) -> str:
    """Colab links and install specs in `text` pointed at `url`/`branch`; old addresses replaced."""
    def keep(m, new):
        return m.group(0) if PLACEHOLDER in m.group(0) else new

    text = COLAB.sub(lambda m: keep(m, colab_url(url, branch, m.group("path"))), text)
    text = INSTALL.sub(lambda m: keep(m, install_spec(url) + (m.group("ref") or "")), text)
    for old in old_urls:
        if old and old != url:
            text = re.sub(re.escape(old) + r"(?![A-Za-z0-9_-])", url, text)
    return text


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "chapters").glob("*.ipynb"))


def rewrite_notebook(path: Path, url: str, branch: str, old_urls: tuple[str, ...], root: Path,
                     write: bool = True) -> bool:
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    changed = False
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new = rewrite_text(src, url, branch, old_urls)
        if new != src:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed and write:
        # nbformat's own layout: one-space indent, UTF-8 kept, final newline.
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def text_files(root: Path = ROOT) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "book").glob("*.md"))] if p.is_file()]


def expected_badge(url: str, branch: str, notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMG})]({colab_url(url, branch, notebook)})"


def problems(root: Path = ROOT) -> list[str]:
    """What disagrees with _config.yml: each chapter's badge and install line, other addresses."""
    url, branch = read_config(root)
    out = []
    for path in notebooks(root):
        rel = path.relative_to(root).as_posix()
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        md = next(("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"), "")
        code = next(("".join(c["source"]) for c in cells if c["cell_type"] == "code"), "")
        if expected_badge(url, branch, rel) not in md:
            out.append(f"{rel}: first markdown cell lacks the badge {expected_badge(url, branch, rel)}")
        if f'"{install_spec(url)}"' not in code:
            out.append(f'{rel}: first code cell lacks the install line %pip install -q "{install_spec(url)}"')
        if rewrite_notebook(path, url, branch, (), root, write=False):
            out.append(f"{rel}: names another repository or branch than _config.yml's {url} ({branch})")
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        if rewrite_text(text, url, branch) != text:
            out.append(f"{path.relative_to(root)}: a Colab link or install line names another "
                       f"repository or branch than _config.yml's {url} ({branch})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="https://github.com/OWNER/NAME (default: _config.yml's)")
    parser.add_argument("--branch", help="branch the Colab badges open (default: _config.yml's)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a mismatch")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()

    if args.check:
        found = problems(root)
        for p in found:
            print(p, file=sys.stderr)
        print(f"set_repository: {'out of step' if found else 'all in step'} with _config.yml")
        return 1 if found else 0

    old_url, old_branch = read_config(root)
    url = (args.url or old_url).rstrip("/")
    branch = args.branch or old_branch
    parse_github(url)
    changed = []
    if write_config(url, branch, root):
        changed.append("_config.yml")
    for path in notebooks(root):
        if rewrite_notebook(path, url, branch, (old_url,), root):
            changed.append(path.relative_to(root).as_posix())
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        new = rewrite_text(text, url, branch, (old_url,))
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path.relative_to(root).as_posix())
    print(f"set_repository: {url} (branch {branch}); "
          + (f"rewrote {', '.join(changed)}" if changed else "everything already agreed"))
    left = problems(root)
    for p in left:
        print(p, file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
