"""What a delivery looks like to its receiver: the webhook body, a title, the email text
and HTML, and the readable reason. Pure functions of a :class:`Delivery` (no I/O).

The webhook body is a CloudEvent in JSON structured mode, so any CloudEvents parser
reads it: for one event, the enriched event itself plus the extension attributes
``subscription`` (the subscription id) and ``reason`` (why it was sent, readable); for a
digest, an ``anting.digest`` CloudEvent whose ``data`` holds the events and the reason
for each. Every value taken from an event into a line-based format (a subject, a line
of text) is made one line first (:func:`one_line`).
"""

from __future__ import annotations

import html as _html
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from services.notify.matching import Event, Reason
from services.notify.notification import SOURCE, Delivery

#: The CloudEvents ``type`` of a digest.
DIGEST_TYPE = "anting.digest"

_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# "@all", "@channel", "@here", "@everyone" as a word: what Slack, Discord and Mattermost
# turn into a notification of everyone in the room
_MASS_MENTION = re.compile(r"(?<!\w)@(?=(?:all|channel|here|everyone)\b)", re.IGNORECASE)
# what starts Markdown (CommonMark, Discord's, Mattermost's) inside a line: emphasis, code,
# strike-through, spoilers and tables, links and images, autolinks, HTML and mentions
# (<@id>, <!channel>), headings; and the backslash itself
_MARKDOWN = re.compile(r"([\\`*_~|<>\[\]()#])")
ZERO_WIDTH_SPACE = "\u200b"


def describe(reasons: list[Reason]) -> str:
    """One readable line of provenance, e.g. for an email or the CloudEvent ``reason`` attribute."""
    parts = []
    for r in reasons:
        if r["filter"] == "organizations":
            target = r["organization"] or "(unresolved)"
            parts.append(f"organizations: {r['value']!r} -> {target} ({r['matched_on']}, {r['field']})")
        elif r["filter"] == "all":
            parts.append("no filter: every event")
        else:
            parts.append(f"{r['filter']}: {r['value']!r} at {r['field']}")
    return "; ".join(parts)


def one_line(text: str) -> str:
    """``text`` with every control character and line separator (CR, LF, NEL, U+2028, ...:
    everything ``str.splitlines`` breaks at) turned into one space: an event's value put
    into a line of a message (a subject, a title, a line of the email text) stays one line."""
    return _LINE_BREAKS.sub(" ", text)


def headline(event: Event) -> str:
    """The event's headline (or title, or type) as one line."""
    data = event.get("data") or {}
    return one_line(str(data.get("headline") or data.get("title") or event.get("type") or "event"))


def with_attributes(obj: bytes, attributes: dict[str, Any]) -> bytes | None:
    """The JSON object ``obj`` (bytes) with ``attributes`` added as its last members, by
    splicing bytes; ``None`` when ``obj`` does not end as a non-empty object does. The
    caller makes sure ``obj`` has none of those names already (no duplicate members)."""
    end = obj.rstrip()
    if not end.endswith(b"}") or end[:-1].rstrip().endswith(b"{"):
        return None
    return b"%s,%s}" % (end[:-1], orjson.dumps(attributes)[1:-1])


def cloudevent(delivery: Delivery) -> dict[str, Any]:
    """The CloudEvent the delivery is, as a JSON object (see the module)."""
    events = delivery.decoded()
    if not delivery.digest:
        return {**events[0], "subscription": delivery.subscription_id, "reason": describe(delivery.reasons[0])}
    return {
        "specversion": "1.0",
        "id": delivery.key,
        "source": SOURCE,
        "type": DIGEST_TYPE,
        "time": delivery.created_at or datetime.now(UTC).isoformat(),
        "subject": delivery.subscription_id,
        "datacontenttype": "application/json",
        "subscription": delivery.subscription_id,
        "reason": f"digest of {len(events)} events",
        "data": {
            "count": len(events),
            "events": [{**e, "reason": describe(r)} for e, r in zip(events, delivery.reasons, strict=True)],
        },
    }


def body(delivery: Delivery) -> bytes:
    """The webhook body (UTF-8 JSON). One event held as its record's bytes is those bytes
    with ``subscription`` and ``reason`` spliced in at the end, not the event decoded and
    encoded again (see :meth:`Delivery.of_record`)."""
    if delivery.source is not None and not delivery.digest:
        spliced = with_attributes(delivery.source, {"subscription": delivery.subscription_id,
                                                    "reason": describe(delivery.reasons[0])})
        if spliced is not None:
            return spliced
    return orjson.dumps(cloudevent(delivery))


def title(delivery: Delivery) -> str:
    """One line (an email subject, a chat title): the headline, or what a digest holds."""
    if delivery.digest:
        return f"Anting digest: {len(delivery.decoded())} events"
    return headline(delivery.decoded()[0])


def text(delivery: Delivery) -> str:
    """Plain text, one block per event: headline, type, id, source, time, summary,
    organizations and why it was sent; every value from the event made one line (a line
    break in it cannot make a line of its own, such as a forged "why:")."""
    lines = []
    for event, reasons in zip(delivery.decoded(), delivery.reasons, strict=True):
        data = event.get("data") or {}
        lines.append(f"* {headline(event)}")
        lines.append(one_line(f"  {event.get('type')} {event.get('id')} from {event.get('source')}"
                              f" at {event.get('time') or '-'}"))
        if data.get("summary"):
            lines.append(f"  {one_line(str(data['summary']))}")
        orgs = [o.get("name") for o in data.get("organizations") or []]
        if orgs:
            lines.append(one_line(f"  organizations: {', '.join(str(o) for o in orgs)}"))
        lines.append(one_line(f"  why: {describe(reasons)}"))
        lines.append("")
    return "\n".join(lines)


def no_mass_mentions(text: str) -> str:
    """``text`` with every ``@all``, ``@channel``, ``@here`` and ``@everyone`` broken by a
    zero-width space after the ``@`` (how Discord's own bots quote them): it reads the
    same and notifies no one."""
    return _MASS_MENTION.sub("@" + ZERO_WIDTH_SPACE, text)


def markdown_escaped(text: str) -> str:
    """``text`` with every character that could start Markdown backslash-escaped, so a
    service that renders Markdown in any message (Discord, Mattermost) shows it as
    written: no bold, links, mentions (``<@id>``) or HTML from a publisher."""
    return _MARKDOWN.sub(r"\\\1", text)


def html(delivery: Delivery) -> str:
    """An HTML document of the same content as :func:`text`, every value escaped."""
    items = []
    for event, reasons in zip(delivery.decoded(), delivery.reasons, strict=True):
        data = event.get("data") or {}
        items.append(
            f"<li><strong>{_html.escape(headline(event))}</strong><br>"
            f"{_html.escape(str(event.get('type')))} · {_html.escape(str(event.get('time') or '-'))}"
            + (f"<br>{_html.escape(str(data['summary']))}" if data.get("summary") else "")
            + f"<br><small>why: {_html.escape(describe(reasons))}</small></li>"
        )
    return f"<html><body><h3>{_html.escape(title(delivery))}</h3><ul>{''.join(items)}</ul></body></html>"


__all__ = ["DIGEST_TYPE", "ZERO_WIDTH_SPACE", "body", "cloudevent", "describe", "headline", "html",
           "markdown_escaped", "no_mass_mentions", "one_line", "text", "title", "with_attributes"]
