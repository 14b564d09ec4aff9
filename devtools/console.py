"""What ``anting run`` prints: one labelled line per message, coloured per source.

The supervised services, the demo receiver and the stack itself all write through one
``Printer`` so that their lines interleave whole, each prefixed with where it came
from (``ingest │ ...``). The services log JSON lines when not on a terminal
(shared.logs); ``readable`` turns each back into one line, and the records the stack
tails (enriched events, delivery records) get a one-line summary each here too.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

__all__ = ["COLOURS", "Printer", "describe_delivery", "describe_enriched", "readable"]

COLOURS = {
    "run": "bold white", "kafka": "bright_black", "ingest": "cyan", "enrich": "magenta",
    "notify": "green", "prometheus": "yellow", "catalog": "blue", "webhook": "bright_green",
    "event": "bright_cyan", "delivery": "bright_magenta",
}
"""The rich style of each label's prefix; any other label is white."""


class Printer:
    """One line per message, labelled and (on a terminal) coloured per source.

    Thread-safe: the demo receiver prints from its server's threads. Children log JSON
    lines when not on a terminal (shared.logs); they are rendered back into one
    readable line each here.
    """

    def __init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True)
        self.lock = threading.Lock()

    def say(self, label: str, message: str, style: str | None = None) -> None:
        """Print ``message`` after ``label`` (right-aligned in 10 columns), in ``style``
        (a rich style such as ``"bold red"``) when given. Never raises for a closed output."""
        # a numbered source (kafka-2, a node of the cluster) takes its kind's colour
        colour = COLOURS.get(label) or COLOURS.get(label.rsplit("-", 1)[0], "white")
        line = Text.assemble((f"{label:>10} │ ", colour), (message, style or ""))
        # a closed terminal or pipe (the shell that ran `make run` is gone) must not stop
        # the shutdown half-way: the line is lost, the children are still stopped
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.console.print(line)

    def child_line(self, label: str, raw: str) -> None:
        """Print a line a child wrote, made ``readable``."""
        self.say(label, readable(raw))


def readable(raw: str) -> str:
    """A JSON log line from shared.logs as ``level msg k=v ...`` (its traceback, if any,
    on the lines after); a log-channel notification as one sentence; anything else as is."""
    raw = raw.rstrip()
    if not raw.startswith("{"):
        return raw
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(doc, dict):
        return raw
    if "msg" not in doc:
        event = doc.get("event")
        if isinstance(event, dict) and "subscription" in doc:  # a log-channel notification
            return (f"log channel: {event.get('type')} {event.get('id')} for subscription "
                    f"{doc['subscription']} ({_title(event)!r})")
        return raw
    level = str(doc.pop("level", "info"))
    msg = str(doc.pop("msg"))
    for k in ("ts", "service", "logger", "color_message"):
        doc.pop(k, None)
    exc = doc.pop("exc", None)
    extras = " ".join(f"{k}={v}" for k, v in doc.items())
    line = f"{level:<5} {msg}" + (f"  {extras}" if extras else "")
    return f"{line}\n{exc}" if exc else line


def describe_enriched(doc: Any) -> str:
    """An enriched event (decoded JSON) as one line: type, id, title, how many
    organizations were resolved, and the first six names with what each resolved to."""
    if not isinstance(doc, dict):
        return repr(doc)[:200]
    data = doc.get("data") or {}
    title = _title(doc)
    orgs = data.get("organizations") or []
    shown = []
    for o in orgs[:6]:
        resolved = o.get("resolved") if isinstance(o, dict) else None
        name = o.get("name", "?") if isinstance(o, dict) else str(o)
        shown.append(f"{name} → {resolved.get('id')}" if isinstance(resolved, dict) else f"{name} → ?")
    more = f" (+{len(orgs) - 6})" if len(orgs) > 6 else ""
    enrichment = data.get("enrichment") or {}
    resolved = enrichment.get("resolved")
    n_resolved = len(resolved) if isinstance(resolved, list) else resolved
    stats = f"{n_resolved} resolved, {len(enrichment.get('unresolved') or [])} unresolved"
    names = "; ".join(shown) + more
    return f"enriched {doc.get('type')} {doc.get('id')}: {title!r}; {stats}" + (f"; {names}" if names else "")


def _title(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    title = str(data.get("headline") or data.get("title") or "") if isinstance(data, dict) else ""
    return title if len(title) <= 80 else title[:77] + "..."


def describe_delivery(doc: Any) -> str:
    """A delivery record of the notifications topic (decoded JSON) as one line: outcome,
    channel, event, subscription, attempt, and the status code or error when there is one."""
    if not isinstance(doc, dict):
        return repr(doc)[:200]
    extra = f" status={doc['status_code']}" if doc.get("status_code") else ""
    if doc.get("error"):
        extra += f" error={str(doc['error'])[:120]}"
    return (f"{doc.get('outcome')} via {doc.get('channel')} event={doc.get('event_id')} "
            f"subscription={doc.get('subscription_id')} attempt={doc.get('attempt')}{extra}")
