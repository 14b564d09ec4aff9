"""A document: an article as it was published (a press release, a news story), as text,
on the ``documents`` topic, before anything is read out of it.

ingest writes one record per ``POST /v1/documents``; enrich's documents stage reads it
and writes the events the text reports (``conference.announcement``,
``agreement.signed``), each naming the document in its ``documentid`` extension
attribute and every organization with the places the text names it (``mentions``:
start and end in Unicode code points of :attr:`Document.text`). So the text on the
topic is the one the offsets count in: an HTML page is reduced to its text *before*
it is published, never after.

Bytes in and out go through :func:`parse_document` and :func:`dump_document`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import ConfigDict, Field, StringConstraints

from shared.events import Headline, Model, Name, Timestamp, Uri

#: The most text one document carries (bytes of UTF-8). A long feature article is tens
#: of KiB; the bound keeps a document's record, JSON-escaped, within the 1 MiB a
#: producer sends in one request.
MAX_DOCUMENT_TEXT_BYTES = 512 * 1024

#: The media types a document may be published as.
DOCUMENT_MEDIA_TYPES: tuple[str, ...] = ("text/plain", "text/markdown", "text/html")

#: A document id: as a CloudEvent id (visible, no control characters, at most 256).
DocumentId = Name


class Document(Model):
    """One article, whole. ``id`` with ``source`` is its identity (as a CloudEvent's): the
    events read from it carry both. ``text`` is what offsets count in (code points)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)

    id: DocumentId
    source: Uri
    media_type: Literal["text/plain", "text/markdown", "text/html"] = Field(
        description="what the publisher sent; text/html was reduced to its text")
    title: Headline | None = Field(None, description="an HTML page's <title>, when it had one")
    text: Annotated[str, StringConstraints(min_length=1)]
    received_at: Timestamp


def parse_document(raw: bytes | str) -> Document:
    """A document from its JSON (a record's value). Raises ``pydantic.ValidationError``."""
    return Document.model_validate_json(raw)


def dump_document(doc: Document) -> bytes:
    """The document's canonical JSON (UTF-8 text as it is, not ``\\u`` escapes)."""
    return orjson.dumps(doc.model_dump(mode="json", exclude_none=True))


__all__ = ["DOCUMENT_MEDIA_TYPES", "MAX_DOCUMENT_TEXT_BYTES", "Document", "DocumentId",
           "dump_document", "parse_document"]
