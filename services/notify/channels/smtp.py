"""Email over SMTP (stdlib ``smtplib`` in a worker thread): a stable ``Message-ID``
``<idempotency-key@anting>``, a text and an HTML part. Header values are built
from data only after every control character and line separator is made a space
(CR and LF, and also NEL, U+2028 and U+2029, at which :mod:`email` splits a value
and which it would refuse), and :mod:`email` refuses any that remain, so header
injection is impossible and an event's headline cannot make its message unsendable.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from email.message import EmailMessage
from email.policy import SMTP

from shared.subscriptions import Subscription

from ..notification import Delivery
from ..rendering import html, text, title
from . import Result, Verdict

# C0 and C1 controls, DEL, and the line and paragraph separators: everything
# str.splitlines breaks at, which is what the email policy checks a value with
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header_value(text: str, limit: int = 200) -> str:
    """Any control character or line separator (CR, LF, NEL, U+2028, ...) becomes a
    space: one line, always."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def message_id(key: str) -> str:
    """The ``Message-ID`` of a delivery: ``<idempotency-key@anting>``."""
    return f"<{key}@anting>"


def build_message(sender: str, sub: Subscription, delivery: Delivery) -> EmailMessage:
    """The email of ``delivery`` to ``sub``'s addresses; raises ``ValueError`` or
    ``TypeError`` when :mod:`email` refuses a value."""
    assert sub.channel.type == "email"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = header_value(sender)
    msg["To"] = ", ".join(header_value(a) for a in sub.channel.to)
    msg["Subject"] = header_value(title(delivery))
    msg["Message-ID"] = message_id(delivery.key)
    msg["X-Anting-Subscription"] = header_value(sub.id)
    # an event is its (source, id) pair: both, never cut short
    msg["X-Anting-Event-Id"] = header_value(delivery.event_id, 2048)
    msg["X-Anting-Event-Source"] = header_value(delivery.event_source, 2048)
    msg.set_content(text(delivery))
    msg.add_alternative(html(delivery), subtype="html")
    return msg


class EmailSender:
    def __init__(
        self, host: str, port: int, sender: str, *, username: str | None = None,
        password: str | None = None, starttls: bool = False, timeout: float = 15.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls, self.timeout = username, password, starttls, timeout

    def _send_sync(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg)

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        try:
            msg = build_message(self.sender, sub, delivery)
        except (ValueError, TypeError) as exc:
            return Result("permanent", None, f"cannot build message: {exc}")
        try:
            await asyncio.to_thread(self._send_sync, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            if codes and all(400 <= c < 500 for c in codes):
                return Result("retry", codes[0], f"recipients refused: {exc.recipients}")
            return Result("permanent", codes[0] if codes else None, f"recipients refused: {exc.recipients}")
        except smtplib.SMTPResponseException as exc:
            verdict: Verdict = "retry" if 400 <= exc.smtp_code < 500 else "permanent"
            return Result(verdict, exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
        except (OSError, smtplib.SMTPException) as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return Result("ok", 250)

    async def aclose(self) -> None:
        return None


__all__ = ["EmailSender", "build_message", "header_value", "message_id"]
