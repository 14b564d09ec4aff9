"""Server-Sent Events, written so that no value can add a line of its own.

An event stream ends a line at CR, LF or CRLF, and a line is a field (``id:``,
``event:``, ``data:``) or a comment (WHATWG HTML, "Server-sent events", "Parsing an
event stream" and "Interpreting an event stream"). A value written into a line that
still held one of those characters would end the line early, and the rest would be
read as fields chosen by whoever wrote the value: an event whose id is
``"x\\nevent: agreement.signed\\ndata: {...}\\n\\nid: y"`` would be two messages, the
second forged. Events reach notify from Kafka, where a record may have been written
by any producer (kcat included) and not checked by ingest, so every line notify
streams is made here, by :func:`message` and :func:`comment`:

- ``id`` and ``event`` holding CR, LF or NUL are refused (``ValueError``). NUL too:
  a browser ignores an ``id`` field that contains one, so resuming would break.
- ``data`` is split at its line breaks into one ``data:`` line each; the receiver
  joins them with LF. The stream sends each event as one line of compact JSON, in
  which JSON has already escaped every CR and LF, so the split never happens there.
- a comment's line breaks and NUL become spaces (a comment is only read by people).

U+2028 and U+2029 (and NEL) are not line breaks in an event stream: they pass as they
are, inside the JSON of ``data`` too.

An event is its (source, id) pair (CloudEvents 1.0: two publishers may use the same
id), so the SSE ``id`` is :func:`event_id`: both, percent-encoded and joined by a
space. It holds no CR, LF, NUL, space or non-ASCII character of its own, so it is a
valid field value and a valid ``Last-Event-ID`` request header, and
:func:`parse_event_id` reads the pair back from that header.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

# printable ASCII that may stay as it is in an encoded id: RFC 3986's unreserved
# characters (always kept by quote) and its delimiters, so that URIs stay readable;
# "%" and space are always encoded, so the encoding can be read back
_ID_SAFE = "/:@!$&'()*+,;=?#[]"
_FORBIDDEN = re.compile(r"[\r\n\0]")
_DATA_LINES = re.compile(rb"\r\n|\r|\n")
_COMMENT_BREAKS = re.compile(r"[\r\n\0]")


def event_id(source: str, id_: str) -> str:
    """The SSE ``id`` of the event (``source``, ``id_``): both percent-encoded (UTF-8),
    joined by one space, e.g. ``/press/a same-1``; a different pair never gives the same
    string."""
    return f"{quote(source, safe=_ID_SAFE)} {quote(id_, safe=_ID_SAFE)}"


def parse_event_id(value: str | None) -> tuple[str, str] | None:
    """The (source, id) pair an SSE id made by :func:`event_id` names; ``None`` for
    anything else (no value, not two parts, an encoding that is not UTF-8)."""
    if not value:
        return None
    parts = value.split(" ")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        return unquote(parts[0], errors="strict"), unquote(parts[1], errors="strict")
    except UnicodeDecodeError:
        return None


def _field(name: bytes, value: str) -> bytes:
    if _FORBIDDEN.search(value):
        raise ValueError(f"an SSE {name.decode()} must not contain CR, LF or NUL: {value!r}")
    return b"%s: %s\n" % (name, value.encode())


def message(data: bytes | str, *, id: str | None = None, event: str | None = None) -> bytes:
    """One SSE message: its ``id:``, ``event:`` and ``data:`` lines and the blank line
    that dispatches it, as UTF-8 bytes.

    Raises ``ValueError`` when ``id`` or ``event`` holds CR, LF or NUL, or ``data``
    holds NUL; ``data`` with line breaks (CR, LF, CRLF) goes as several ``data:``
    lines, which the receiver joins with LF (so a CR or CRLF in it arrives as LF).
    """
    out = b""
    if id is not None:
        out += _field(b"id", id)
    if event is not None:
        out += _field(b"event", event)
    raw = data.encode() if isinstance(data, str) else data
    if b"\0" in raw:
        raise ValueError("SSE data must not contain NUL")
    if b"\r" in raw or b"\n" in raw:
        out += b"".join(b"data: %s\n" % line for line in _DATA_LINES.split(raw))
    else:
        out += b"data: " + raw + b"\n"
    return out + b"\n"


def comment(text: str) -> bytes:
    """One SSE comment line (and a blank line, as the stream's other comments have):
    CR, LF and NUL in ``text`` become spaces, so it stays one comment."""
    return f": {_COMMENT_BREAKS.sub(' ', text)}\n\n".encode()


__all__ = ["comment", "event_id", "message", "parse_event_id"]
