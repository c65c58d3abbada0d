"""Turn help pages and translation catalogs into clean, one-line paragraphs.

Formats: HTML (LibreOffice help, Debian handbook, installation guide), LibreOffice ``.xhp`` help
XML, DocBook XML, GNOME Mallard ``.page`` files, and gettext catalogs (``.po`` text and compiled
``.mo``). Everything here is pure Python and works on bytes already in memory, so it is tested
offline on small inline samples.
"""

from __future__ import annotations

import codecs
import re
import struct
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser

MIN_WORDS = 4

# A paragraph holding any of these characters is markup, code, a placeholder ("$name", "{X}",
# "[b]") or a path/e-mail that escaped extraction; the reference corpus has none of them.
_MARKUP_CHARS = frozenset("<>{}[]$@\\|#_=")
# An entity the parser could not decode (DocBook's "&product;") is unfinished markup too.
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z][A-Za-z0-9.-]*);")
# Control characters other than whitespace, or U+FFFD from undecodable bytes, mean binary junk
# or a broken file.
# Catalog-only rules (see clean_paragraphs).
_PANGO_TAG = re.compile(r"</?(?:b|i|u|s|tt|big|small|sub|sup|span)(?:\s[^<>]*)?>")
_PRINTF = re.compile(
    r"%(?:\d+\$)?[-+#0]*(?:\d+|\*)?(?:\.\d+)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcsp]"
    r"|%\([A-Za-z_]\w*\)[sd]"
)
_QUALIFIER = re.compile(r"^\?[\w-]+:")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")


def normalize_space(text: str) -> str:
    """Collapse every run of whitespace (including NBSP and newlines) to one space."""
    return " ".join(text.split())


def has_markup(paragraph: str) -> bool:
    return (
        not _MARKUP_CHARS.isdisjoint(paragraph)
        or _ENTITY.search(paragraph) is not None
        or _CONTROL.search(paragraph) is not None
    )


def keep_paragraph(paragraph: str) -> bool:
    """The corpus rule: at least MIN_WORDS words and no markup left in it."""
    return len(paragraph.split()) >= MIN_WORDS and not has_markup(paragraph)


def clean_paragraphs(chunks: Iterable[str], *, catalog: bool = False) -> Iterator[str]:
    """Normalize whitespace and keep only paragraphs that pass :func:`keep_paragraph`.

    ``catalog`` marks gettext strings: each line is its own paragraph (they separate dialogue
    and help paragraphs by newlines), Pango inline tags (<i>, <b>, <span ...>) are removed as
    formatting, and a string with a printf placeholder ("%s", "%2$d") or a Freeciv qualifier
    ("?female:") is dropped: its text is incomplete until the program fills it in.
    """
    for chunk in chunks:
        if catalog:
            chunk = _PANGO_TAG.sub("", chunk)
        for piece in chunk.splitlines() if catalog else [chunk]:
            paragraph = normalize_space(piece)
            if not paragraph or not keep_paragraph(paragraph):
                continue
            if catalog and (_PRINTF.search(paragraph) or _QUALIFIER.match(paragraph)):
                continue
            yield paragraph


def dedupe(paragraphs: Iterable[str], seen: set[str] | None = None) -> Iterator[str]:
    """Drop exact duplicates, keeping the first occurrence; ``seen`` may be shared."""
    seen = set() if seen is None else seen
    for paragraph in paragraphs:
        if paragraph not in seen:
            seen.add(paragraph)
            yield paragraph


# --- markup ---------------------------------------------------------------------------------


class BlockTextParser(HTMLParser):
    """Collect the text of block elements; ``skip`` elements and their content are ignored.

    html.parser is lenient enough for both HTML and the XML formats here (it lowercases tag
    names, keeps namespace prefixes, and treats ``<x/>`` as start + end), so one parser serves
    all of them with a different choice of block and skip tags.
    """

    def __init__(self, blocks: frozenset[str], skip: frozenset[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks = blocks
        self.skip = skip
        self.chunks: list[str] = []
        self._buffer: list[str] = []
        self._skip_depth = 0

    def _flush(self) -> None:
        if self._buffer:
            self.chunks.append("".join(self._buffer))
            self._buffer = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.skip:
            self._flush()
            self._skip_depth += 1
        elif tag in self.blocks:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skip:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in self.blocks:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_depth == 0:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


_HTML_BLOCKS = _tags(
    "p div h1 h2 h3 h4 h5 h6 li dt dd td th tr caption blockquote title section article "
    "figure figcaption table ul ol dl br hr"
)
# Page chrome (LibreOffice's navigation and "Title is: ..." debug footer), code and scripts.
_HTML_SKIP = _tags("head script style noscript pre header footer nav aside")

# LibreOffice .xhp: <paragraph> and <title> carry text; bookmarks, comments, and the file's
# metadata do not.
_XHP_BLOCKS = _tags("paragraph title h1 h2 h3 h4 h5 h6 item tablecell listitem")
_XHP_SKIP = _tags("bookmark_value comment filename history embedvar image sort object")

_DOCBOOK_BLOCKS = _tags(
    "para simpara formalpara title subtitle term listitem entry glossdef "
    "caption note tip warning important caution"
)
_DOCBOOK_SKIP = _tags(
    "programlisting screen synopsis cmdsynopsis literallayout indexterm remark "
    "info bookinfo articleinfo address"
)

# Mallard: <info> holds credits, licenses and links, not prose; <screen> is terminal text.
# (<code> stays: it is mostly inline, and dropping it would leave holes in sentences.)
_MALLARD_BLOCKS = _tags("p title subtitle desc item td th tr section list terms tree")
_MALLARD_SKIP = _tags("info screen synopsis comment media")


def _parse_blocks(text: str, blocks: frozenset[str], skip: frozenset[str]) -> list[str]:
    parser = BlockTextParser(blocks, skip)
    parser.feed(text)
    parser.close()
    return parser.chunks


def html_chunks(text: str) -> list[str]:
    return _parse_blocks(text, _HTML_BLOCKS, _HTML_SKIP)


def xhp_chunks(text: str) -> list[str]:
    return _parse_blocks(text, _XHP_BLOCKS, _XHP_SKIP)


def docbook_chunks(text: str) -> list[str]:
    return _parse_blocks(text, _DOCBOOK_BLOCKS, _DOCBOOK_SKIP)


def mallard_chunks(text: str) -> list[str]:
    return _parse_blocks(text, _MALLARD_BLOCKS, _MALLARD_SKIP)


# --- gettext catalogs -------------------------------------------------------------------------

_MO_MAGIC_LE = 0x950412DE
_MO_MAGIC_BE = 0xDE120495
_CHARSET = re.compile(r"charset=([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def _catalog_charset(header: str) -> str:
    match = _CHARSET.search(header)
    try:  # "CHARSET" is gettext's unfilled template value
        return codecs.lookup(match.group(1)).name if match else "utf-8"
    except LookupError:
        return "utf-8"


CatalogEntry = tuple[tuple[str, ...], tuple[str, ...]]  # (source forms, translated forms)


def mo_entries(data: bytes) -> list[CatalogEntry]:
    """(source forms, translated forms) of each entry of a compiled gettext catalog (.mo).

    Layout (GNU gettext manual, "The Format of GNU MO Files"): magic, revision, count, offset
    of the original-strings table, offset of the translations table; each table entry is a
    (length, offset) pair. Plural forms are NUL-separated, a context precedes the source
    string and an EOT byte. The header entry (empty source) only gives the charset.
    """
    if len(data) < 20:
        raise ValueError("not a .mo file (too short)")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == _MO_MAGIC_LE:
        order = "<"
    elif magic == _MO_MAGIC_BE:
        order = ">"
    else:
        raise ValueError("not a .mo file (bad magic number)")
    _, count, orig_offset, trans_offset = struct.unpack(order + "4I", data[4:20])

    def string(table: int, index: int) -> bytes:
        start = table + 8 * index
        if start + 8 > len(data):
            raise ValueError("not a .mo file (table past the end)")
        length, offset = struct.unpack(order + "2I", data[start : start + 8])
        if offset + length > len(data):
            raise ValueError("not a .mo file (string past the end)")
        return data[offset : offset + length]

    charset = "utf-8"
    out: list[CatalogEntry] = []
    for index in range(count):
        msgid = string(orig_offset, index)
        msgstr = string(trans_offset, index)
        if msgid == b"":
            charset = _catalog_charset(msgstr.decode("ascii", "replace"))
            continue
        source = msgid.decode(charset, "replace").split("\x04")[-1]  # drop the context
        out.append(
            (tuple(source.split("\x00")), tuple(msgstr.decode(charset, "replace").split("\x00")))
        )
    return out


def translations(entries: Iterable[CatalogEntry]) -> Iterator[str]:
    """Translated strings, leaving out forms that are just copies of the source string:
    those are untranslated (English) text, not text in the catalog's language."""
    for sources, translated in entries:
        for form in translated:
            if form and form not in sources:
                yield form


_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b"}
_PO_ESCAPE = re.compile(r"\\(.)")
_PO_KEYWORD = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+(\".*\")\s*$")


def _po_string(quoted: str) -> str:
    body = quoted.strip()[1:-1]
    return _PO_ESCAPE.sub(lambda m: _PO_ESCAPES.get(m.group(1), m.group(1)), body)


def po_entries(text: str) -> list[CatalogEntry]:
    """(source forms, translated forms) of a gettext .po catalog; the header, fuzzy and
    obsolete ("#~") entries are skipped."""
    out: list[CatalogEntry] = []
    fields: dict[str, str] = {}
    fuzzy = False
    current: str | None = None

    def finish() -> None:
        if fields.get("msgid") and not fuzzy:
            sources = (
                fields["msgid"],
                *([fields["msgid_plural"]] if "msgid_plural" in fields else []),
            )
            forms = tuple(v for k, v in sorted(fields.items()) if k.startswith("msgstr"))
            out.append((sources, forms))

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#,") and "fuzzy" in line:
            finish()
            fields, fuzzy, current = {}, True, None
        elif not line or line.startswith("#"):  # comments, and "#~" obsolete entries
            continue
        elif match := _PO_KEYWORD.match(line):
            keyword, quoted = match.groups()
            if keyword in ("msgctxt", "msgid") and any(k.startswith("msgstr") for k in fields):
                finish()  # a new entry starts
                fields, fuzzy = {}, False
            current = keyword
            fields[keyword] = _po_string(quoted)
        elif line.startswith('"') and current is not None:
            fields[current] += _po_string(line)
    finish()
    return out


def paragraphs_from_file(path: str, data: bytes) -> list[str]:
    """Clean paragraphs of one file, the format chosen by its suffix ([] for other files)."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == "mo":
        return list(clean_paragraphs(translations(mo_entries(data)), catalog=True))
    if suffix == "po":
        return list(clean_paragraphs(translations(po_entries(_decode(data))), catalog=True))
    parsers = {
        "html": html_chunks,
        "htm": html_chunks,
        "xhtml": html_chunks,
        "xhp": xhp_chunks,
        "page": mallard_chunks,
        "xml": docbook_chunks,
        "dbk": docbook_chunks,
    }
    parse = parsers.get(suffix)
    return list(clean_paragraphs(parse(_decode(data)))) if parse else []


def _decode(data: bytes) -> str:
    # All sources here are UTF-8; a stray bad byte should cost one paragraph (has_markup drops
    # any paragraph holding U+FFFD), not the whole file.
    return data.decode("utf-8", "replace")
