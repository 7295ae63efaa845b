"""Small Sphinx additions for the segbook site (loaded through `_config.yml`'s `local_extensions`).

1. A pybtex style, ``segbook``, whose bibliography labels read like the text's
   citations: ``[Long et al., 2015]``, ``[Dumoulin and Visin, 2016]``. The text
   cites author-year (``bibtex_reference_style: author_year``); pybtex's own label
   styles only give numbers (``[1]``) or alpha keys (``[LSD15]``).
2. One copy of each inline script per page. Sphinx 7.4 writes a script that an
   extension adds with ``app.add_js_file(None, body=...)`` twice (once as ``None``,
   once as ``''``), so sphinx-thebe's ``const THEBE_JS_URL`` is declared twice and
   every page logs "Identifier 'THEBE_JS_URL' has already been declared".
3. Break hints in inline code: ``<wbr>`` after a ``/`` and before the ``.`` of a dotted
   name or call (``segbook.data|.voc|.voc_colormap2label()``), so that a path or name
   wider than a phone's text column breaks where a reader expects. Sphinx keeps each
   word of inline code on one line (``span.pre { white-space: nowrap }``), which
   ignores the hints; ``book/_static/custom.css`` lifts that rule on narrow screens
   only. A ``<wbr>`` adds no character to copied text.
"""
from __future__ import annotations

import re
from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _last_name(person) -> str:
    """"Van Gool" for Luc Van Gool, "Arbeláez" for Arbel{\\'a}ez (LaTeX decoded)."""
    parts = person.prelast_names + person.last_names
    return " ".join(Text.from_latex(part).render_as("text") for part in parts)


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels as sphinxcontrib-bibtex's author_year citations print them."""

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:  # "He et al., 2016a", "He et al., 2016b"
                yield label + chr(ord("a") + seen[label])
                seen[label] += 1

    def format_label(self, entry):
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_last_name(p) for p in persons]
        if not names:
            who = Text.from_latex(entry.fields.get("organization", entry.key)).render_as("text")
        elif len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        year = entry.fields.get("year", "n.d.")
        return f"{who}, {year}"


class AuthorYearStyle(PlainStyle):
    """pybtex's ``plain`` entries, sorted by author and year, with author-year labels."""

    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def dedupe_inline_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


INLINE_CODE_WORD = re.compile(r'(<span class="pre">)([^<]+)(</span>)')
# After a slash that ends a path component ("ImageSets/|Segmentation/|..."); before a dot
# that starts a name followed by a call or another dot ("Image|.open(path)|.save()",
# "segbook|.data|.voc"), never before a file suffix. At least two characters stay before
# a break ("F.cross_entropy", "~/.cache" keep their heads).
BREAK_HINT = re.compile(r"(?<=[^/]{2}/)(?=[^/])|(?<=[^./\s]{2})(?=\.[A-Za-z_]\w*[.(])")


def add_break_hints(html: str) -> str:
    """``<wbr>`` at the break hints of every inline-code word in a page's HTML body."""
    return INLINE_CODE_WORD.sub(
        lambda m: m.group(1) + BREAK_HINT.sub("<wbr>", m.group(2)) + m.group(3), html)


def break_hints_in_inline_code(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = add_break_hints(context["body"])


def setup(app):
    register_plugin("pybtex.style.labels", "segbook_author_year", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "segbook", AuthorYearStyle)
    app.connect("html-page-context", dedupe_inline_scripts, priority=900)
    app.connect("html-page-context", break_hints_in_inline_code)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
