"""The document codec of ingest, with no I/O: a body's bytes and ``Content-Type`` → a
:class:`~shared.documents.Document` (text, its id and source), or a :class:`Problem`
saying what is wrong; a document → its record for the ``documents`` topic.

``text/plain`` and ``text/markdown`` are kept as they are (line ends made LF);
``text/html`` is reduced to its text here, before it is published, because every
offset read out of a document counts code points of the text on the topic: scripts,
styles and other content that is not shown are dropped, block elements end a line,
runs of white space inside a line are one space. The charset is the header's
(``charset=``), UTF-8 when it names none; a byte order mark is skipped.

What is refused, publishing nothing: a media type other than the three (415), a
charset Python does not know (415), binary content — a file signature such as
``%PDF`` or PNG's, a NUL byte, or control characters that text does not hold (415),
bytes that are not of the charset (400), no text at all once reduced (422), more text
than :data:`~shared.documents.MAX_DOCUMENT_TEXT_BYTES` (413), an ``id`` or ``source``
the contract refuses (422).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser

from pydantic import TypeAdapter, ValidationError

from services.ingest.codec import OutRecord
from shared.documents import (
    DOCUMENT_MEDIA_TYPES,
    MAX_DOCUMENT_TEXT_BYTES,
    Document,
    DocumentId,
    dump_document,
)
from shared.events import Uri, error_paths
from shared.http import ErrorItem, Problem, media_type
from shared.settings import AntingSettings
from shared.topics import DOCUMENTS

__all__ = [
    "BINARY_SIGNATURES",
    "DocumentText",
    "content_id",
    "decode_document",
    "document_record",
    "html_to_text",
    "read_text",
]

# the first bytes of formats that are not text (a file sent with the wrong type)
BINARY_SIGNATURES: dict[bytes, str] = {
    b"%PDF-": "a PDF file", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
    b"\xff\xd8\xff": "a JPEG image", b"PK\x03\x04": "a ZIP archive (or a .docx, .xlsx)",
    b"\x1f\x8b": "gzip data", b"\xd0\xcf\x11\xe0": "an old Office document",
    b"\x7fELF": "an executable", b"RIFF": "a RIFF file (audio, video, WebP)",
}
# C0 controls text does not hold (tab, LF, VT, FF, CR are line layout), DEL and C1
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_LINE_ENDS = re.compile(r"\r\n?|[\x0b\x0c\u2028\u2029\x85]")
_ID: TypeAdapter[str] = TypeAdapter(DocumentId)
_SOURCE: TypeAdapter[str] = TypeAdapter(Uri)

_UNSUPPORTED_TYPES = ", ".join(DOCUMENT_MEDIA_TYPES)


def _params(content_type: str | None) -> dict[str, str]:
    """The parameters of a ``Content-Type`` value, names lower-case, quotes removed."""
    out: dict[str, str] = {}
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip():
            out[name.strip().lower()] = value.strip().strip('"').strip()
    return out


def read_text(body: bytes, charset: str | None) -> str:
    """``body`` decoded as ``charset`` (UTF-8 when None), without a byte order mark, line
    ends made LF. Raises :class:`Problem` 415 for an unknown charset or binary content,
    400 for bytes that are not of the charset."""
    for signature, what in BINARY_SIGNATURES.items():
        if body.startswith(signature):
            raise _binary(f"the body is {what}, not text")
    name = (charset or "utf-8").lower()
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise Problem(415, f"charset {charset!r} is not one this service knows; send UTF-8 "
                      "(or name a charset such as gb18030, big5, shift_jis, iso-8859-1)",
                      [ErrorItem("header.content-type", f"unknown charset {charset!r}",
                                 "charset")]) from None
    wide = codec.name.startswith(("utf-16", "utf-32"))
    if not wide and b"\x00" in body:
        at = body.index(b"\x00")
        raise _binary(f"the body holds a NUL byte at {at}: binary data, not text")
    if codec.name == "utf-8":
        codec = codecs.lookup("utf-8-sig")  # a BOM is no part of the text
    try:
        text = codec.decode(body)[0]
    except UnicodeDecodeError as exc:
        raise Problem(400, f"the body is not {codec.name} text: byte {exc.start} "
                      f"({body[exc.start:exc.start + 1]!r}) cannot be decoded; send it in the "
                      "charset its Content-Type names (UTF-8 when it names none)",
                      [ErrorItem("$", f"not {codec.name} at byte {exc.start}",
                                 "charset")]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    control = _CONTROL.search(text)
    if control is not None:
        raise _binary(f"the text holds the control character U+{ord(control.group()):04X} at "
                      f"{control.start()}: binary data, not text")
    return _LINE_ENDS.sub("\n", text)


def _binary(detail: str) -> Problem:
    return Problem(415, f"{detail}; a document is text/plain, text/markdown or text/html",
                   [ErrorItem("$", "binary content", "binary")])


# --- HTML → text -------------------------------------------------------------------

# elements whose content is not shown (or is not the article's text)
_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe",
                     "object", "canvas", "head", "select", "button"})
# elements that end a line before and after
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hgroup", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
})
# elements without an end tag: never opened on the stack
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr"})
_SPACES = re.compile(r"[ \t\n\r\f\v]+")


@dataclass
class DocumentText:
    """A body reduced to its text: the ``text``, an HTML page's ``title``, and what was
    dropped (element name → how many), e.g. ``{"script": 2}``."""

    text: str
    title: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)


class _Reducer(HTMLParser):
    """The visible text of an HTML document, one block a line (see :func:`html_to_text`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.hidden = 0  # depth inside hidden elements
        self.pre = 0
        self.in_title = False
        self.title: list[str] = []
        self.dropped: dict[str, int] = {}
        self.stack: list[str] = []

    def _break(self) -> None:
        text = "".join(self.line)
        self.line = []
        text = text if self.pre else _SPACES.sub(" ", text).strip()
        if text:
            self.lines.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":  # inside <head>, which is otherwise dropped
            self.in_title = True
            return
        if tag in _VOID:
            if tag in _BLOCKS:
                self._break()
            return
        self.stack.append(tag)
        if tag in _HIDDEN:
            if tag != "head":
                self.dropped[tag] = self.dropped.get(tag, 0) + 1
            self.hidden += 1
        elif not self.hidden and tag in _BLOCKS:
            self._break()
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS and not self.hidden:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
            return
        if tag not in self.stack:
            return  # a stray end tag
        while self.stack:  # an end tag closes what was left open inside it
            open_tag = self.stack.pop()
            if open_tag in _HIDDEN:
                self.hidden -= 1
            elif not self.hidden and open_tag in _BLOCKS:
                self._break()
                if open_tag == "pre":
                    self.pre -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.hidden:
            self.line.append(data)

    def result(self) -> DocumentText:
        self._break()
        title = _SPACES.sub(" ", "".join(self.title)).strip() or None
        return DocumentText("\n\n".join(self.lines), title, self.dropped)


def html_to_text(html: str) -> DocumentText:
    """The text a reader sees of an HTML page: ``<script>``, ``<style>``, ``<noscript>``,
    ``<template>``, ``<head>`` (but for its ``<title>``) and embedded objects dropped;
    each block element (``p``, ``div``, ``li``, ``h1``…, ``br``) its own paragraph,
    separated by a blank line; white space inside a paragraph one space (not inside
    ``<pre>``); character references decoded. Never raises: broken HTML is read as
    browsers read it, roughly."""
    reducer = _Reducer()
    reducer.feed(html)
    reducer.close()
    return reducer.result()


# --- the document ------------------------------------------------------------------


def content_id(text: str) -> str:
    """The default document id: ``doc-`` and the first 32 hex digits of the text's SHA-256
    (the same text published twice is the same document)."""
    return "doc-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _checked(adapter: TypeAdapter[str], value: str, where: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        errors = [ErrorItem(where, e["message"], e["type"]) for e in error_paths(exc)]
        raise Problem(422, f"{where} is not valid: {errors[0].message}", errors) from None


def decode_document(body: bytes, content_type: str | None, *, source: str,
                    doc_id: str | None = None, now: datetime | None = None) -> tuple[Document, DocumentText]:
    """A ``POST /v1/documents`` body → the document to publish and its reduced text (with
    what was dropped). ``doc_id`` defaults to :func:`content_id`; ``source`` is the
    publisher's. Raises :class:`Problem` (see the module docstring for which status)."""
    mtype = media_type(content_type)
    if mtype not in DOCUMENT_MEDIA_TYPES:
        raise Problem(415, f"a document is {_UNSUPPORTED_TYPES}; got {mtype or 'no Content-Type'}",
                      [ErrorItem("header.content-type", "unsupported media type", "media_type")])
    text = read_text(body, _params(content_type).get("charset"))
    reduced = html_to_text(text) if mtype == "text/html" else DocumentText(text)
    if not reduced.text.strip():
        what = "no text once its markup is removed" if mtype == "text/html" else "no text"
        raise Problem(422, f"the document has {what}; nothing was published",
                      [ErrorItem("$", "empty document", "empty")])
    size = len(reduced.text.encode())
    if size > MAX_DOCUMENT_TEXT_BYTES:
        raise Problem(413, f"the document's text is {size} bytes of UTF-8; the limit is "
                      f"{MAX_DOCUMENT_TEXT_BYTES}; split it into articles",
                      [ErrorItem("$", "document too large", "too_large")])
    doc_id = _checked(_ID, doc_id, "query.id") if doc_id is not None else content_id(reduced.text)
    source = _checked(_SOURCE, source, "query.source")
    title = reduced.title[:1000] if reduced.title else None
    doc = Document(id=doc_id, source=source, media_type=mtype,  # type: ignore[arg-type]
                   title=title, text=reduced.text, received_at=now or datetime.now(UTC))
    return doc, reduced


def document_record(doc: Document, settings: AntingSettings) -> OutRecord:
    """The record of ``doc`` on ``documents``: keyed by its id, the JSON document as value."""
    return OutRecord(settings.topic(DOCUMENTS), doc.id.encode(), dump_document(doc),
                     [("content-type", b"application/json")], doc.id, "document")
