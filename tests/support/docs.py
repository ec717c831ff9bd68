"""The documentation as data, for the tests that keep it true: a Markdown file's sections, its fenced code blocks,
and the chart values it names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from support.repo import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
# The user's documentation: the README and docs/ (its sources, the README's template, are checked by test_docs.py).
USER_DOCS = [README, *sorted(DOCS.glob("*.md"))]

HEADING = re.compile(r"^(#{1,6}) (.+)$", re.M)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
# A dotted value path in backticks, optionally with a value: `relay.port` or `tailscale.logUpload: auto`
VALUE_MENTION = re.compile(r"`([a-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)+)(?:: ([^`]*))?`")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language (the word after the fence), its text and the heading it is under."""

    lang: str
    text: str
    section: str


def headings(markdown: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of every heading outside fenced blocks (a shell comment is not a heading)."""
    fenced = [(m.start(), m.end()) for m in FENCE.finditer(markdown)]
    return [
        (m.start(), len(m.group(1)), m.group(2).strip())
        for m in HEADING.finditer(markdown)
        if not any(start <= m.start() < end for start, end in fenced)
    ]


def section(markdown: str, title: str) -> str:
    """The text under heading TITLE, down to the next heading of its level or higher; LookupError naming the headings
    there are when there is none."""
    found = headings(markdown)
    for index, (offset, level, name) in enumerate(found):
        if name == title:
            end = next((o for o, lv, _ in found[index + 1 :] if lv <= level), len(markdown))
            return markdown[offset:end]
    raise LookupError(f"no heading {title!r}; there are: {[name for _, _, name in found]}")


def anchor(title: str) -> str:
    """GitHub's anchor for heading TITLE: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def blocks(markdown: str, lang: str | None = None) -> list[Block]:
    """The fenced blocks of MARKDOWN (of language LANG when given), each with the heading above it."""
    found = headings(markdown)
    result = []
    for m in FENCE.finditer(markdown):
        if lang is not None and m.group(1) != lang:
            continue
        above = [name for offset, _, name in found if offset < m.start()]
        result.append(Block(m.group(1), m.group(2), above[-1] if above else ""))
    return result


def commands(block: Block) -> list[str]:
    """The commands of a shell block: one per line, a trailing backslash joining lines, comments and blank lines
    dropped."""
    joined = re.sub(r"\\\n\s*", "", block.text)
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def mentions(path: Path) -> list[tuple[str, str | None, str]]:
    """Every `value.path` or `value.path: value` in backticks in the file at PATH, as (path, value or None, the 40
    characters after it)."""
    text = path.read_text()
    return [(m.group(1), m.group(2), text[m.end() : m.end() + 40]) for m in VALUE_MENTION.finditer(text)]
