r"""
# Reading time of the core path, from the built site

Counts the words a reader reads on each page of the reading path, in the **built** site: the prose of the page
(its introduction and the text beside the code), headings and tables included; the annotated code, code blocks,
maths, figures, the navigation, the header and the footer left out. Folded blocks (`<details>`: "Check
yourself" answers, reference tables) are counted apart: a reader opens them or not. Reading time is words / 200 a
minute.

```text
NO_MKDOCS_2_WARNING=1 mkdocs build -d /tmp/site
python benchmarks/reading_time.py /tmp/site            # the core path, one line a page, and its total
python benchmarks/reading_time.py /tmp/site --all      # every page of the reading path
```

The core path is the first group of `extra: reading_path:` in `mkdocs.yml`.
"""

from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORDS_A_MINUTE = 200


class _Prose(HTMLParser):
    """The words inside `<article>`, outside code, maths, figures, scripts and the per-section tools."""

    SKIP_TAGS = {"pre", "script", "style", "svg", "img", "figure", "nav"}
    SKIP_CLASSES = {"ann-code", "arithmatex", "ann-tools", "ann-meta", "ann-builds-on", "headerlink",
                    "ann-figure-row", "md-source-file"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []   # per open element: does it (or a parent) skip its text?
        self.article = 0
        self.details = 0              # inside a folded block (its summary excepted)
        self.words: list[str] = []
        self.folded: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = (bool(self.stack) and self.stack[-1]) or tag in self.SKIP_TAGS or bool(classes & self.SKIP_CLASSES)
        self.stack.append(skip)
        if tag == "article":
            self.article += 1
        if tag == "details":
            self.details += 1
        if tag == "summary":
            self.details -= 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if tag == "article":
            self.article -= 1
        if tag == "details":
            self.details -= 1
        if tag == "summary":
            self.details += 1
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.article and not (self.stack and self.stack[-1]):
            (self.folded if self.details > 0 else self.words).extend(re.findall(r"[\w'’.,;:()\[\]%/+-]*\w[\w'’.,;:()\[\]%/+-]*", data))


def words_of(page: Path) -> tuple[int, int]:
    """(words read, words folded) of a built page."""
    parser = _Prose()
    parser.feed(page.read_text(encoding="utf-8"))
    return len(parser.words), len(parser.folded)


def page_of(site: Path, path: str) -> Path:
    if path.endswith(".md"):
        return site / path.replace(".md", ".html")
    stem = path[:-3]
    if stem.endswith("/__init__"):
        stem = stem[: -len("__init__")] + "index"
    return site / f"{stem}.html"


def groups(config_file: Path) -> dict[str, list[str]]:
    """The reading path's top-level groups, each the list of its files in order (parts flattened)."""
    raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))["extra"]["reading_path"]

    def files(entries) -> list[str]:
        if isinstance(entries, dict):
            return [f for part in entries.values() for f in files(part)]
        return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]

    return {name: files(entries) for name, entries in raw.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Words and reading time (200 words a minute) of the reading "
                                                 "path's pages in a built site.")
    parser.add_argument("site", type=Path, help="the folder `mkdocs build` wrote")
    parser.add_argument("--all", action="store_true", help="every group of the reading path, not only the first")
    parser.add_argument("--config", type=Path, default=ROOT / "mkdocs.yml", help="mkdocs.yml with the reading path")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"error: {args.site} has no index.html; build the site first (mkdocs build -d {args.site})",
              file=sys.stderr)
        return 2
    chosen = list(groups(args.config).items())
    for name, paths in (chosen if args.all else chosen[:1]):
        total = folded_total = 0
        print(f"{name}")
        for path in paths:
            page = page_of(args.site, path)
            if not page.is_file():
                print(f"  {path:<48} (no page)")
                continue
            n, folded = words_of(page)
            total, folded_total = total + n, folded_total + folded
            print(f"  {path:<48} {n:>6} words  {n / WORDS_A_MINUTE:5.1f} min   (+{folded} folded)")
        print(f"  {'total':<48} {total:>6} words  {total / WORDS_A_MINUTE:5.1f} min   (+{folded_total} folded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
