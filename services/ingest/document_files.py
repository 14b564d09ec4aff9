"""Articles from files (``anting publish``, ``--watch``): a ``.txt``, ``.md`` or
``.html`` file is one document, published to ``documents`` exactly as ``POST
/v1/documents`` publishes a body of that media type — the same codec
(:func:`~services.ingest.documents.decode_document`), the same id (``doc-`` and a hash
of its text), the same ``source`` (``ANTING_INGEST_SOURCE`` unless one is given) and the
same refusals: an empty file, binary content, bytes not of the charset (UTF-8 unless
one is named), too large. A refused file publishes nothing, and its summary says why.

The suffix says what a file is: :data:`DOCUMENT_SUFFIXES` are articles; ``.json``,
``.ndjson`` and ``.jsonl`` (and, when named one by one, any other file) are events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import TypeAdapter, ValidationError

from services.ingest.documents import decode_document, document_record
from services.ingest.files import Summary
from services.ingest.settings import IngestSettings
from shared.documents import Document
from shared.events import Uri
from shared.http import Problem
from shared.metrics import INGEST_EVENTS
from shared.settings import AntingSettings
from shared.topics import DOCUMENT_MAX_MESSAGE_BYTES

__all__ = [
    "DOCUMENT_PRODUCER",
    "DOCUMENT_SUFFIXES",
    "EVENT_SUFFIXES",
    "DocumentOptions",
    "check_source",
    "document_media_type",
    "expand",
    "publish_document_file",
    "read_document",
]

#: File suffixes read as articles, and the media type each is published as.
DOCUMENT_SUFFIXES: dict[str, str] = {
    ".txt": "text/plain", ".text": "text/plain",
    ".md": "text/markdown", ".markdown": "text/markdown",
    ".html": "text/html", ".htm": "text/html",
}
#: File suffixes read as events (what a folder given to ``anting publish`` holds).
EVENT_SUFFIXES = (".json", ".ndjson", ".jsonl")
# the same producer settings as POST /v1/documents' (services/ingest/main.py): a
# document's record is up to a thousand times an event's, text compresses to a third
DOCUMENT_PRODUCER: dict[str, Any] = {
    "compression_type": "gzip", "max_batch_size": DOCUMENT_MAX_MESSAGE_BYTES,
    "max_request_size": DOCUMENT_MAX_MESSAGE_BYTES, "request_timeout_ms": 30000,
}
# names still being written by convention (as watch mode has them), never read
_PARTIAL = (".tmp", ".part", ".partial", ".swp")
_SOURCE: TypeAdapter[str] = TypeAdapter(Uri)


def document_media_type(path: Path | str) -> str | None:
    """The media type a file is published as when it is an article (by its suffix,
    case-insensitive), else None (a file of events)."""
    return DOCUMENT_SUFFIXES.get(Path(path).suffix.lower())


def check_source(source: str) -> str:
    """``source`` when the contract takes it as a document's source (a URI reference, a
    visible line); raises ``ValueError`` saying why not."""
    try:
        return _SOURCE.validate_python(source)
    except ValidationError as exc:
        raise ValueError(f"{source!r} is not a valid source: "
                         f"{exc.errors(include_url=False)[0]['msg']}") from None


@dataclass(frozen=True)
class DocumentOptions:
    """How files are read as documents: their ``source``, the most bytes a file may have
    (``ANTING_INGEST_MAX_DOCUMENT_BODY_BYTES``, as a POST body) and its ``charset`` (None:
    UTF-8, a byte order mark skipped)."""

    source: str = "/anting/ingest"
    max_bytes: int = 4 * 1024 * 1024
    charset: str | None = None

    @classmethod
    def of(cls, settings: IngestSettings, *, source: str | None = None,
           charset: str | None = None) -> DocumentOptions:
        """The options of ingest's settings, with ``source`` (else ``ANTING_INGEST_SOURCE``)."""
        return cls(source or settings.source, settings.max_document_body_bytes, charset)


def read_document(path: Path | str, options: DocumentOptions) -> Document:
    """The document a file holds, as ``POST /v1/documents`` would publish its bytes.
    Raises :class:`~shared.http.Problem` (the status POST would answer, a detail that
    speaks of the file) and ``OSError`` for a file that cannot be read."""
    media = document_media_type(path) or "text/plain"
    with open(path, "rb") as f:
        body = f.read(options.max_bytes + 1)
    if len(body) > options.max_bytes:
        raise Problem(413, f"the file is over {options.max_bytes} bytes "
                      "(ANTING_INGEST_MAX_DOCUMENT_BODY_BYTES); split it into articles")
    content_type = media + (f"; charset={options.charset}" if options.charset else "")
    try:
        doc, _ = decode_document(body, content_type, source=options.source)
    except Problem as exc:
        # the same refusal, said of a file rather than of a request's body
        detail = exc.detail.replace("the body", "the file", 1)
        if exc.errors and exc.errors[0].type == "charset":
            detail = (detail.split(";")[0] + "; save the file as UTF-8, or name its charset "
                      "with --charset (gb18030, big5, shift_jis, iso-8859-1…)")
        raise Problem(exc.status, detail, exc.errors) from None
    return doc


async def publish_document_file(settings: AntingSettings, path: Path | str, *,
                                producer: AIOKafkaProducer, options: DocumentOptions,
                                name: str | None = None) -> Summary:
    """Publish one article file to ``documents`` and wait for the broker: a summary of one
    accepted ``document``, or of one rejected with :attr:`Summary.refused` saying why
    (nothing published). Raises ``OSError`` for a file that cannot be read and what the
    producer raises (a broker that failed)."""
    summary = Summary(name or str(path))
    # a local file of at most a few MiB, read once
    size = await asyncio.to_thread(lambda: Path(path).stat().st_size)
    try:
        doc = await asyncio.to_thread(read_document, path, options)
    except Problem as exc:
        INGEST_EVENTS.labels("document", "rejected").inc()
        summary.rejected, summary.refused, summary.bytes_read = 1, exc.detail, size
        return summary
    rec = document_record(doc, settings)
    await (await producer.send(rec.topic, rec.value, key=rec.key, headers=rec.headers))
    INGEST_EVENTS.labels("document", "accepted").inc()
    summary.accepted, summary.bytes_read = 1, size
    summary.by_type["document"] += 1
    summary.document_id = doc.id
    return summary


def _readable(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(_PARTIAL)


def expand(names: list[str]) -> tuple[list[str], list[str]]:
    """The files ``anting publish`` reads for ``names``: a file as given (``-`` for stdin),
    a folder as the events and articles in it and its subfolders (by suffix, sorted;
    hidden names and names still being written skipped). Returns the files and the
    folders that held none."""
    files: list[str] = []
    empty: list[str] = []
    for name in names:
        path = Path(name)
        if name == "-" or not path.is_dir():
            files.append(name)
            continue
        found = sorted(
            str(p) for p in path.rglob("*")
            if p.is_file() and all(_readable(Path(part)) for part in p.relative_to(path).parts)
            and (p.suffix.lower() in DOCUMENT_SUFFIXES or p.suffix.lower() in EVENT_SUFFIXES))
        files.extend(found)
        if not found:
            empty.append(name)
    return files, empty
