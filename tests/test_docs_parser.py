"""
Tests of the parser behind the website (`docs/hooks/source_parser.py`), on sources that broke Pycco-style
annotators: `tests/fixtures/docs/project/labml_nn/neox/tricky.py` and small strings.
"""

from __future__ import annotations

import html as html_lib
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs_site import TRICKY, load_hook  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# The parser, on sources that broke Pycco-style annotators
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tricky():
    return load_hook().parse(TRICKY.read_text(encoding="utf-8"))


def _section(annotated, qualname):
    found = [s for s in annotated.sections if s.qualname == qualname]
    assert len(found) == 1, f"{qualname}: {len(found)} sections"
    return found[0]


def _code(annotated, section) -> list[str]:
    return [annotated.lines[n - 1] for n in section.code]


def _all_code(annotated) -> str:
    return "\n".join(line for s in annotated.sections for line in _code(annotated, s))


def test_module_docstring_is_the_introduction_and_keeps_its_latex(tricky):
    assert tricky.intro.startswith("# Tricky module")
    assert r"$$\operatorname{softmax}\left(\frac{q k^\top}{\sqrt{D}}\right) v$$" in tricky.intro
    assert "\\begin{align}\na &= b + c \\\\\nd &= e\n\\end{align}" in tricky.intro
    assert "# A Markdown heading inside a docstring is prose" in tricky.intro
    assert "Tricky module" not in _all_code(tricky)


def test_shebang_and_encoding_lines_stay_in_the_code(tricky):
    first = tricky.sections[0]
    assert first.prose == ""
    assert _code(tricky, first)[:2] == ["#!/usr/bin/env python3", "# -*- coding: utf-8 -*-"]


def test_comments_at_the_end_of_a_code_line_stay_in_the_code(tricky):
    assert "import re  # a comment at the end of a code line stays in the code" in _code(tricky, tricky.sections[0])
    assert not any("a comment at the end" in s.prose for s in tricky.sections)


def test_strings_that_look_like_comments_stay_in_the_code(tricky):
    code = _all_code(tricky)
    assert "# not a heading: this line is inside a string" in code
    assert 'HASH = "# not a comment"' in code
    assert 'URL = "http://example.com/#fragment"' in code
    assert 'PATTERN = f"{URL}#{HASH}"' in code
    assert not any("not a heading" in s.prose or "not a comment" in s.prose for s in tricky.sections)


def test_a_comment_run_is_one_paragraphed_prose_block(tricky):
    rules = [s for s in tricky.sections if s.prose.startswith("The merge rules")]
    assert len(rules) == 1
    assert rules[0].prose == ("The merge rules, one per tensor.\n\nA blank comment line is a paragraph break; "
                              "the comment inside the brackets below stays in the code.")
    assert _code(tricky, rules[0]) == ["RULES = {", "    # concatenated on dim 0",
                                       '    "word_embeddings.weight": 0,', "}"]


def test_decorators_stay_with_their_def_and_the_docstring_is_its_prose(tricky):
    s = _section(tricky, "decorated")
    assert s.prose == ("A comment block right above a decorated function\njoins the function's docstring in one "
                       "section.\n\n" r"The docstring of `decorated`, with $\theta_i = b^{-2i/d}$.")
    assert _code(tricky, s) == ["@staticmethod", "@decorator(", "    option=1,  # inside the decorator's brackets",
                                ")", "def decorated(x):", "    return x"]
    assert s.code == [38, 39, 40, 41, 42, 44], "real line numbers, with the docstring's line left out"
    assert s.api_path == "decorated"


def test_closing_quotes_on_a_text_line_end_the_docstring(tricky):
    s = _section(tricky, "closing_on_text_line")
    assert s.prose == "First line.\n\nThe closing quotes are on this text line."
    code = _code(tricky, s)
    assert code[0] == "def closing_on_text_line():"
    assert code[1] == '    return "not a docstring" + \'"""\''
    assert not any("closing quotes" in line for line in code)


def test_a_docstring_on_the_def_line_stays_in_the_code(tricky):
    assert 'def one_liner(): "stays in the code column"' in _all_code(tricky)
    assert not any("stays in the code column" in s.prose for s in tricky.sections)


def test_nested_classes_and_functions_get_their_own_sections(tricky):
    assert _section(tricky, "Outer").prose.startswith("## The outer class")
    assert _code(tricky, _section(tricky, "Outer")) == ["class Outer:"]
    assert _code(tricky, _section(tricky, "Outer.Inner")) == ["    class Inner:"]
    prop = _section(tricky, "Outer.Inner.value")
    assert prop.prose == "A property's docstring belongs to the property."
    assert _code(tricky, prop) == ["        @property", "        def value(self):"]
    helper = _section(tricky, "Outer.Inner.method.helper")
    assert helper.prose == "The nested helper."
    assert helper.api_path is None, "functions inside functions are not in the API reference"
    assert _section(tricky, "Outer.__init__").api_path == "Outer"
    assert _section(tricky, "Outer._private").api_path is None
    assert _section(tricky, "fetch").api_path == "fetch"


def test_comments_inside_a_method_are_prose_beside_the_following_lines(tricky):
    s = [s for s in tricky.sections if s.prose == "a comment inside a method is prose beside the lines that follow"]
    assert len(s) == 1 and _code(tricky, s[0]) == ["            result = 1"]
    s = [s for s in tricky.sections if s.prose == "two comment blocks separated by code are two sections"]
    assert len(s) == 1 and _code(tricky, s[0]) == ["            return result"]


def test_a_string_that_is_not_the_first_statement_is_code(tricky):
    s = _section(tricky, "Outer._private")
    assert '        "a second string statement is not a docstring"' in _code(tricky, s)


def test_the_last_comment_of_a_file_is_a_section_without_code(tricky):
    last = tricky.sections[-1]
    assert last.prose == "The last comment of the file, with nothing after it." and last.code == []


def test_every_source_line_is_shown_once_or_is_prose(tricky):
    hook = load_hook()
    shown = [n for s in tricky.sections for n in s.code]
    assert len(shown) == len(set(shown)) and shown == sorted(shown)
    highlighted = hook.highlight_lines(tricky.lines)
    assert len(highlighted) == len(tricky.lines)
    for n, line_html in enumerate(highlighted, 1):
        assert html_lib.unescape(re.sub(r"<[^>]+>", "", line_html)) == tricky.lines[n - 1]


def test_section_anchors_are_unique(tricky):
    anchors = [s.anchor for s in tricky.sections]
    assert len(anchors) == len(set(anchors))


def test_non_raw_docstring_and_tabs_and_crlf():
    hook = load_hook()
    source = 'def f():\r\n    """Tab\\there."""\r\n\treturn 1\r\n'
    parsed = hook.parse(source)
    assert parsed.sections[0].prose == "Tab     here.", "the string's value, tabs expanded like inspect.cleandoc"
    assert parsed.lines[parsed.sections[0].code[-1] - 1] == "    return 1"


def test_a_file_that_does_not_parse_still_gets_a_page_of_code():
    parsed = load_hook().parse("def broken(:\n    pass\n")
    assert parsed.syntax_error and [s.code for s in parsed.sections] == [[1, 2]]


def test_public_members_follow_all_and_skip_private_names():
    hook = load_hook()
    assert hook.public_members("class A: pass\ndef _b(): pass\ndef c(): pass\n") == ["A", "c"]
    assert hook.public_members("__all__ = ['c']\nclass A: pass\ndef c(): pass\n") == ["c"]
    assert hook.public_members("from x import A\n") == []
