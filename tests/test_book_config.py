"""The book's configuration and the chapters' conventions a reader of the site relies on.

Fast checks on files only (no Sphinx build, no browser; tools/check_site.py does
the browser part in CI).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_LINE = 88


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


set_repository = _load("set_repository", ROOT / "tools" / "set_repository.py")


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if isinstance(cell["source"], list):
            cell["source"] = "".join(cell["source"])
    return cells


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/*.ipynb found"


# --- The repository address: one setting, _config.yml's repository.url ------------------

@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_badge_and_install_line_follow_config(path):
    config = _config()["repository"]
    url, branch = config["url"].rstrip("/"), config.get("branch", "main")
    owner_name = url.removeprefix("https://github.com/")
    rel = path.relative_to(ROOT).as_posix()
    cells = _cells(path)
    first_md = next(c["source"] for c in cells if c["cell_type"] == "markdown")
    first_code = next(c["source"] for c in cells if c["cell_type"] == "code")
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{owner_name}/blob/{branch}/{rel})")
    assert badge in first_md, (
        f"{rel}: the Colab badge in the first markdown cell must be {badge}; "
        "run `python3 tools/set_repository.py` to write _config.yml's address everywhere")
    assert f'%pip install -q "segbook @ git+{url}"' in first_code, (
        f"{rel}: the first code cell must install segbook from {url} (_config.yml); "
        "run `python3 tools/set_repository.py`")


def test_nothing_names_another_repository():
    assert set_repository.problems(ROOT) == []


def test_set_repository_rewrites_every_copy(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "_config.yml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    for path in CHAPTERS:
        shutil.copy(path, tmp_path / "chapters")
    for path in (ROOT / "book").glob("*.md"):
        shutil.copy(path, tmp_path / "book")
    old_url = _config()["repository"]["url"]
    new_url = "https://github.com/someone-else/their-segbook"

    assert set_repository.main([new_url, "--branch", "pages", "--root", str(tmp_path)]) == 0

    config = yaml.safe_load((tmp_path / "_config.yml").read_text(encoding="utf-8"))
    assert config["repository"]["url"] == new_url
    assert config["repository"]["branch"] == "pages"
    assert config == {**_config(), "repository": config["repository"]}, "only the address changed"
    for path in [tmp_path / "README.md", *tmp_path.glob("chapters/*.ipynb"), *tmp_path.glob("book/*.md")]:
        assert old_url not in path.read_text(encoding="utf-8"), path.name
    assert set_repository.problems(tmp_path) == []
    # Notebooks keep nbformat's layout: only the address lines differ.
    for path in CHAPTERS:
        before = path.read_text(encoding="utf-8").splitlines()
        after = (tmp_path / "chapters" / path.name).read_text(encoding="utf-8").splitlines()
        assert len(before) == len(after)
        assert all(a == b or "their-segbook" in b for a, b in zip(before, after))
    # A second run with the same address changes nothing.
    assert set_repository.main(["--root", str(tmp_path), "--check"]) == 0


def test_set_repository_refuses_non_github_address(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path)
    with pytest.raises(SystemExit, match="not a GitHub repository"):
        set_repository.main(["https://gitlab.com/a/b", "--root", str(tmp_path)])


# --- The site's configuration ------------------------------------------------------------

def test_virtual_environments_are_not_read_as_pages(tmp_path):
    """README: `python3 -m venv .venv` in the clone; its site-packages hold .md files."""
    from sphinx.util.matching import get_matching_files

    patterns = list(_config()["exclude_patterns"])
    for rel in [".venv/lib/python3.12/site-packages/pkg/README.md", "venv/lib/x.md",
                "env/lib/x.md", "book/intro.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# x\n")
    found = set(get_matching_files(tmp_path, include_patterns=["**"], exclude_patterns=patterns))
    assert found == {"book/intro.md"}


def test_reading_comfort_settings():
    sphinx_config = _config()["sphinx"]["config"]
    assert sphinx_config["nb_merge_streams"] is True, "one output box per training run"
    assert "custom.css" in sphinx_config["html_css_files"]
    css = (ROOT / "book" / "_static" / "custom.css").read_text(encoding="utf-8")
    assert "pre-wrap" in css, "long output lines wrap instead of being cut"


def test_bibliography_labels_are_author_year():
    """The list's labels read like the text's citations: [Long et al., 2015]."""
    import pybtex.database

    assert _config()["sphinx"]["config"]["bibtex_default_style"] == "segbook"
    ext = _load("segbook_sphinx", ROOT / "book" / "_ext" / "segbook_sphinx.py")
    bib = pybtex.database.parse_file(str(ROOT / "book" / "references.bib"))
    style = ext.AuthorYearStyle()
    entries = list(style.sort(bib.entries.values()))
    labels = dict(zip((e.key for e in entries), style.format_labels(entries)))
    assert labels["long2015fcn"] == "Long et al., 2015"
    if "dumoulin2016guide" in labels:
        assert labels["dumoulin2016guide"] == "Dumoulin and Visin, 2016"
    assert len(set(labels.values())) == len(labels), "labels must be unique"
    assert all(label.split(", ")[-1][:4].isdigit() for label in labels.values()), labels


def test_inline_code_gets_break_hints_only_where_a_reader_expects_them():
    """A path breaks after a slash, a dotted name before a dot; never inside a suffix."""
    ext = _load("segbook_sphinx", ROOT / "book" / "_ext" / "segbook_sphinx.py")

    def hints(word: str) -> str:
        html = ext.add_break_hints(f'<code class="docutils literal notranslate">'
                                   f'<span class="pre">{word}</span></code>')
        return html.split('"pre">')[1].split("</span>")[0].replace("<wbr>", "|")

    assert hints("ImageSets/Segmentation/{train,val,trainval}.txt") == \
        "ImageSets/|Segmentation/|{train,val,trainval}.txt"
    assert hints("segbook.data.voc.voc_colormap2label()") == \
        "segbook|.data|.voc|.voc_colormap2label()"
    assert hints("Image.open(path).convert(&quot;RGB&quot;).save(...)") == \
        "Image|.open(path)|.convert(&quot;RGB&quot;)|.save(...)"
    for word in ("label_decode.py", "F.cross_entropy", "~/.cache", "https://", "--batch-size"):
        assert hints(word) == word
    # Only inline code: a code cell's highlighted spans are left alone.
    assert ext.add_break_hints('<span class="n">a/b/c.d()</span>') == \
        '<span class="n">a/b/c.d()</span>'
    css = (ROOT / "book" / "_static" / "custom.css").read_text(encoding="utf-8")
    assert "overflow-wrap: anywhere" in css, "a word wider than a phone breaks anywhere"


# --- The chapters' code cells ------------------------------------------------------------

@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_lines_fit_the_page(path):
    """88 characters fit the site's code boxes at desktop width without a scroll bar."""
    long = [f"cell {i}: {len(line)} chars: {line[:60]}..."
            for i, cell in enumerate(_cells(path)) if cell["cell_type"] == "code"
            for line in cell["source"].splitlines() if len(line) > MAX_LINE]
    assert not long, f"{path.name}: {len(long)} code lines over {MAX_LINE} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_nbval_comment_markers(path):
    """nbval's cell tags (`nbval-ignore-output`) say it; a comment in the code shows on the page."""
    marked = [i for i, cell in enumerate(_cells(path))
              if cell["cell_type"] == "code" and "NBVAL_" in cell["source"]]
    assert not marked, (f"{path.name}: cells {marked} use a `# NBVAL_...` comment; "
                        "tag the cell `nbval-ignore-output` (or `nbval-skip`) instead")
