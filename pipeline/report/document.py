"""A small document model (sections of paragraphs, lists, tables and figures) and its two emitters.

The report is laid out once as a :class:`Document` (:mod:`pipeline.report.render`) and written by
:func:`to_markdown` and :func:`to_html` (self-contained: figures embedded as base64 PNG), so a section
exists once whichever format shows it. Inline text is a plain string, a :class:`Code` or :class:`Bold`
span, or a tuple of them: the emitters mark it up, and only the HTML one escapes it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Code:
    """Inline code: an id, a path, a hash, a command."""

    text: str


@dataclass(frozen=True)
class Bold:
    """Inline emphasis."""

    text: str


Span = str | Code | Bold
Text = Span | tuple[Span, ...]


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``css`` is its HTML class (markdown has none)."""

    text: Text
    css: str | None = None


@dataclass(frozen=True)
class Bullets:
    """An unordered list."""

    items: list[Text]


@dataclass(frozen=True)
class Table:
    """A table; ``status`` (one per row) is the HTML class of the row's last cell, which colours the verdict."""

    header: list[str]
    rows: list[list[Text]]
    status: list[str] | None = None


@dataclass(frozen=True)
class Figure:
    """A PNG: linked from markdown by ``link`` (relative to the markdown file), embedded into HTML from ``file``."""

    file: Path
    link: str
    alt: str
    caption: Text


Block = Paragraph | Bullets | Table | Figure


@dataclass(frozen=True)
class Section:
    """A heading of ``level`` (1: the document's title) and the blocks under it."""

    title: str
    level: int
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    """The sections in reading order; ``css`` is the HTML page's style sheet."""

    title: str
    sections: list[Section]
    css: str = ""


# ---------------------------------------------------------------------------------------------------
# markdown


def _md(text: Text) -> str:
    if isinstance(text, tuple):
        return "".join(_md(t) for t in text)
    if isinstance(text, Code):
        return f"`{text.text}`"
    if isinstance(text, Bold):
        return f"**{text.text}**"
    return text


def _md_cell(text: Text) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return _md(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md(item)}" for item in block.items)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{block.alt}]({block.link})\n\n{_md(block.caption)}"


def to_markdown(doc: Document) -> str:
    """The document as markdown: headings, paragraphs, lists, tables and figures one blank line apart."""
    blocks = []
    for section in doc.sections:
        blocks.append(f"{'#' * section.level} {section.title}")
        blocks += [_md_block(b) for b in section.blocks]
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------------
# HTML


def _html(text: Text) -> str:
    if isinstance(text, tuple):
        return "".join(_html(t) for t in text)
    if isinstance(text, Code):
        return f"<code>{html.escape(text.text)}</code>"
    if isinstance(text, Bold):
        return f"<b>{html.escape(text.text)}</b>"
    return html.escape(text)


def _html_block(block: Block) -> list[str]:
    if isinstance(block, Paragraph):
        return [f"<p class='{block.css}'>{_html(block.text)}</p>" if block.css else f"<p>{_html(block.text)}</p>"]
    if isinstance(block, Bullets):
        return ["<ul>", *(f"<li>{_html(item)}</li>" for item in block.items), "</ul>"]
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = []
        for i, row in enumerate(block.rows):
            cells = [f"<td>{_html(c)}</td>" for c in row]
            if block.status:
                cells[-1] = f'<td class="s-{block.status[i]}">{_html(row[-1])}</td>'
            body.append(f"<tr>{''.join(cells)}</tr>")
        return [f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"]
    b64 = base64.b64encode(block.file.read_bytes()).decode()
    return [f"<figure><img alt='{html.escape(block.alt)}' src='data:image/png;base64,{b64}'><figcaption>"
            f"{_html(block.caption)}</figcaption></figure>"]


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page (styles inline, figures embedded as base64 PNG)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(doc.title)}</title>",
             f"<style>{doc.css}</style></head><body>"]
    for section in doc.sections:
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            parts += _html_block(block)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
